"""The mined training split (sample-token grain), its side files and the GT-coverage report.

Budgets are fractions of the **whole training set** N = all distinct sample tokens of the
scenes in ``frames``. (The paper's script took them over its results file, i.e. over the
samples that had crops, which shrinks the budget as detection gets pickier; we fix that.)
Each budget is ``floor(frac * N)`` (a 1e-9 tolerance keeps ``0.29 * 100`` at 29), so a
split never exceeds its fractions. Selection, in order, all from samples not yet chosen:

1. target budget: ``target_outlier`` samples (a crop that is in group ``target`` *and* an
   embedding outlier), then ``target`` samples (any crop in group ``target``);
2. rare budget: ``rare_outlier`` then ``rare`` samples, likewise for group ``rare``;
3. random budget: any remaining sample of the training set.

Within a tier samples are ordered by :func:`~conceptmine_assets.lib.sampling.unit_hash` of
``(seed, sample_token)``, never by input order. The total is therefore exactly
``min(B_t, |T|) + min(B_r, |R \\ chosen|) + min(B_rand, N - chosen)``.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.lib.sampling import unit_hash

REASONS: tuple[str, ...] = ("target_outlier", "target", "rare_outlier", "rare", "random")
WHY_COLUMNS = ["detection_ids", "top_concepts", "top_scores", "captions", "outlier_detectors"]
SPLIT_COLUMNS = ["sample_token", "scene_name", "reason", "rank", *WHY_COLUMNS]
# columns of the per-crop table select_split reads
CROP_COLUMNS = [
    "detection_id", "sample_token", "group", "is_outlier", "top_concept", "top_score", "caption", "outlier_detectors",
]


@dataclass(frozen=True)
class SplitParams:
    random_frac: float = 0.10
    target_frac: float = 0.10
    rare_frac: float = 0.0
    seed: int = 0

    def validate(self) -> None:
        fracs = (self.random_frac, self.target_frac, self.rare_frac)
        if any(not 0.0 <= f <= 1.0 for f in fracs) or sum(fracs) > 1.0 + 1e-9:
            raise ConceptmineError(f"split fractions must be in [0, 1] and sum to at most 1, got {fracs}")


def budget(frac: float, n: int) -> int:
    """``floor(frac * n)``, robust to binary rounding (0.29 * 100 -> 29)."""
    return math.floor(frac * n + 1e-9)


def budgets(params: SplitParams, n: int) -> dict[str, int]:
    return {
        "target": budget(params.target_frac, n),
        "rare": budget(params.rare_frac, n),
        "random": budget(params.random_frac, n),
    }


def _qualifies(crops: pd.DataFrame, reason: str) -> pd.Series:
    group = reason.removesuffix("_outlier")
    mask = crops["group"] == group
    return mask & crops["is_outlier"] if reason.endswith("_outlier") else mask


def _hash_order(tokens: set[str] | pd.Index, seed: int) -> list[str]:
    return sorted(tokens, key=lambda t: (unit_hash(seed, t), t))


def select_split(universe: pd.DataFrame, crops: pd.DataFrame, params: SplitParams) -> tuple[pd.DataFrame, dict[str, int]]:
    """Selected samples (``sample_token, scene_name, reason, rank``) and the budgets.

    ``universe``: one row per training sample (``sample_token, scene_name``); ``crops``: one row
    per crop with ``CROP_COLUMNS`` (``is_outlier`` boolean, no nulls). Crops of samples outside
    the universe are ignored (the caller reports them).
    """
    params.validate()
    missing = [c for c in CROP_COLUMNS if c not in crops.columns]
    if missing:
        raise ConceptmineError(f"the crop table for the split lacks columns {missing}")
    if universe["sample_token"].duplicated().any():
        raise ConceptmineError("the training-set sample tokens are not unique")
    tokens = set(universe["sample_token"])
    crops = crops[crops["sample_token"].isin(tokens)]
    caps = budgets(params, len(tokens))
    chosen: list[tuple[str, str]] = []
    taken: set[str] = set()
    for cap_name, tiers in (("target", ("target_outlier", "target")), ("rare", ("rare_outlier", "rare"))):
        left = caps[cap_name]
        for reason in tiers:
            candidates = set(crops.loc[_qualifies(crops, reason), "sample_token"]) - taken
            for token in _hash_order(candidates, params.seed)[: max(left, 0)]:
                chosen.append((token, reason))
                taken.add(token)
                left -= 1
    for token in _hash_order(tokens - taken, params.seed)[: caps["random"]]:
        chosen.append((token, "random"))
    scene_of = dict(zip(universe["sample_token"], universe["scene_name"]))
    split = pd.DataFrame(
        {
            "sample_token": pd.Series([t for t, _ in chosen], dtype=object),
            "scene_name": pd.Series([scene_of[t] for t, _ in chosen], dtype=object),
            "reason": pd.Series([r for _, r in chosen], dtype=object),
            "rank": np.arange(len(chosen), dtype=np.int64),
        }
    )
    return split, caps


def explain(split: pd.DataFrame, crops: pd.DataFrame) -> pd.DataFrame:
    """Add the *why* lists: the crops that qualified each sample for its reason (best score first)."""
    why: dict[str, list] = {c: [] for c in WHY_COLUMNS}
    by_sample = dict(tuple(crops.groupby("sample_token", sort=False))) if len(crops) else {}
    for token, reason in zip(split["sample_token"], split["reason"]):
        rows = by_sample.get(token)
        if reason == "random" or rows is None:
            rows = crops.iloc[0:0]
        else:
            rows = rows[_qualifies(rows, reason)].sort_values(["top_score", "detection_id"], ascending=[False, True])
        why["detection_ids"].append([str(x) for x in rows["detection_id"]])
        why["top_concepts"].append([None if pd.isna(x) else str(x) for x in rows["top_concept"]])
        why["top_scores"].append([float(x) for x in rows["top_score"]])
        why["captions"].append([None if pd.isna(x) else str(x) for x in rows["caption"]])
        why["outlier_detectors"].append(["+".join(d) for d in rows["outlier_detectors"]])
    out = split.copy()
    for column, values in why.items():
        out[column] = pd.Series(values, index=out.index, dtype=object)
    return out[SPLIT_COLUMNS]


def filter_mmdet3d_infos(infos: Any, tokens: set[str], where: str) -> tuple[Any, int]:
    """A copy of an mmdetection3d info dict with only the samples in ``tokens``, and how many kept.

    mmdet3d >= 1.1: ``{"metainfo": ..., "data_list": [{"token": ...}, ...]}``; older:
    ``{"infos": [{"token": ...}, ...], "metadata": ...}``. Other keys are kept as they are.
    """
    if isinstance(infos, dict) and isinstance(infos.get("data_list"), list):
        key = "data_list"
    elif isinstance(infos, dict) and isinstance(infos.get("infos"), list):
        key = "infos"
    else:
        keys = sorted(infos) if isinstance(infos, dict) else type(infos).__name__
        raise ConceptmineError(
            f"{where}: not an mmdetection3d nuScenes info file (expected a dict with a 'data_list' "
            f"(mmdet3d >= 1.1) or 'infos' list; found {keys})"
        )
    items = infos[key]
    missing = sum(1 for item in items if not isinstance(item, dict) or "token" not in item)
    if missing:
        raise ConceptmineError(f"{where}: {missing} of {len(items)} entries in {key!r} have no 'token'")
    kept = [item for item in items if item["token"] in tokens]
    return {**infos, key: kept}, len(kept)


def load_pickle(path: Any) -> Any:
    """Unpickle ``path`` (a pathlib/UPath), naming the file on failure."""
    try:
        with path.open("rb") as fh:
            return pickle.load(fh)
    except FileNotFoundError as exc:
        raise ConceptmineError(f"mmdet3d info file {path} does not exist") from exc
    except (pickle.UnpicklingError, EOFError, AttributeError, ModuleNotFoundError) as exc:
        raise ConceptmineError(f"mmdet3d info file {path} could not be unpickled: {exc}") from exc


def filtered_infos_name(split_name: str, infos_path: str) -> str:
    """``<split>_<original file name>``, e.g. ``mined_nuscenes_infos_train.pkl``."""
    return f"{split_name}_{PurePosixPath(str(infos_path)).name}"


def coverage(
    gt: pd.DataFrame, universe: list[str], split: list[str], n_random: int = 20, seed: int = 0
) -> pd.DataFrame:
    """Per class: GT instances in the training set, in the split, and over ``n_random`` random
    splits of the same size drawn without replacement from ``universe`` (mean, population std),
    and ``ratio = mined / random_mean`` (NaN when ``random_mean`` is 0).

    ``gt`` has one row per annotation: ``sample_token, class_name``.
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
    counts = pd.crosstab(gt["sample_token"], gt["class_name"]).reindex(universe_index, fill_value=0)
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


def markdown_table(df: pd.DataFrame) -> str:
    """A plain Markdown table (no tabulate dependency)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "n/a" if math.isnan(v) else f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
