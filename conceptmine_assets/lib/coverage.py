"""Ground-truth coverage of a split against random splits of the same size (the quality report)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from conceptmine_assets.errors import ConceptmineError


def coverage(
    gt: pd.DataFrame, universe: list[str], split: list[str], n_random: int = 20, seed: int = 0
) -> pd.DataFrame:
    """Per class: GT instances in the training set, in the split, and over ``n_random`` random
    splits of the same size drawn without replacement from ``universe`` (mean, population std),
    and ``ratio = mined / random_mean`` (NaN when ``random_mean`` is 0).

    ``gt`` has one row per annotation (``sample_token, class_name``) or, with a column ``n``,
    one row per (sample, class) with its number of annotations.
    """
    columns = ["class_name", "gt_total", "mined", "random_mean", "random_std", "ratio"]
    universe_index = pd.Index(pd.unique(pd.Series(universe, dtype=object)))
    outside = sorted(set(split) - set(universe_index))
    if outside:
        raise ConceptmineError(f"{len(outside)} split samples are not in the training set, e.g. {outside[:3]}")
    if n_random < 1:
        raise ConceptmineError(f"n_random must be >= 1, got {n_random}")
    gt = gt[gt["sample_token"].isin(universe_index)]
    if gt.empty:
        return pd.DataFrame({c: pd.Series(dtype=object if c == "class_name" else float) for c in columns})
    weights = gt["n"] if "n" in gt else pd.Series(1, index=gt.index)
    counts = pd.crosstab(gt["sample_token"], gt["class_name"], values=weights, aggfunc="sum")
    counts = counts.fillna(0).reindex(universe_index, fill_value=0)
    matrix = counts.to_numpy(dtype=np.int64)
    in_split = universe_index.isin(pd.Index(split))
    k = int(in_split.sum())
    rng = np.random.default_rng(seed)
    draws = np.stack([matrix[rng.choice(len(universe_index), size=k, replace=False)].sum(axis=0) for _ in range(n_random)])
    mined = matrix[in_split].sum(axis=0)
    random_mean = draws.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(random_mean > 0, mined / np.where(random_mean > 0, random_mean, 1), np.nan)
    return pd.DataFrame(
        {
            "class_name": counts.columns.astype(str),
            "gt_total": matrix.sum(axis=0),
            "mined": mined,
            "random_mean": random_mean,
            "random_std": draws.std(axis=0),
            "ratio": ratio,
        }
    ).sort_values("class_name", ignore_index=True)
