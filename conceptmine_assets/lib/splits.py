"""The mined training split (sample-token grain), its side files and the GT-coverage report.

Budgets are fractions of the **whole training set** N = all distinct sample tokens of the
scenes in ``frames``. (The paper's script took them over its results file, i.e. over the
samples that had crops, which shrinks the budget as detection gets pickier; we fix that.)
Each budget is ``floor(frac * N)`` (a 1e-9 tolerance keeps ``0.29 * 100`` at 29), so a
split never exceeds its fractions. Three strategies:

``ranked`` (default; :mod:`conceptmine_assets.lib.evidence` defines the score,
:mod:`conceptmine_assets.lib.diverse` the picking; reviews apply: a rejected crop never qualifies
a sample, confirmed ones come first with reason ``confirmed``, a relabel replaces the concept):

1. rare reserve (``rare_frac``): rare-group candidates only, ranked and diverse;
2. mined budget (``target_frac`` plus what the rare reserve left): every target or rare
   candidate, samples with outlier evidence (``target_outlier`` / ``rare_outlier``) before the
   rest (``target`` / ``rare``), each tier by evidence score, near-duplicates deferred; slots that
   no candidate can fill go to seeded random samples (``random_fill``), so the split always has
   its configured size;
3. random budget: seeded random samples of the rest (the control share, never ranked).

The reason is the tier and the group of the sample's best evidence crop. Unlike the paper, the
budget never goes to a frequent target class while a rarer, stronger candidate waits, and a
near-copy of a chosen crop only gets a slot when nothing new is left.

``priority`` (the previous default, kept for comparison): target budget from ``target_outlier``
then ``target`` samples, rare budget from ``rare_outlier`` then ``rare``, then random; within a
tier samples are ordered by :func:`~conceptmine_assets.lib.sampling.unit_hash` of
``(seed, sample_token)``, i.e. not by evidence. The total is
``min(B_t, |T|) + min(B_r, |R \\ chosen|) + min(B_rand, N - chosen)``.

``paper`` follows the original research code: the random share is drawn first (from all
samples), then the target budget is filled with ``target_outlier``, ``target``,
``rare_outlier`` and ``rare`` samples in that order (hash order within a tier) and, if
candidates run out, with random leftovers (reason ``random_fill``). It has no separate rare
budget (``rare_frac`` must be 0); its total is ``min(B_rand, N) + min(B_t, N - B_rand)``.

``priority`` and ``paper`` reproduce their originals and ignore reviews; they only need one row per sample with its tier flags (:data:`TIERS`):
the asset aggregates them in SQL (:data:`TIERS_SQL`), :func:`sample_tiers` is the same on a crop
table. ``ranked`` streams its candidates from DuckDB (:func:`select_ranked`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import ConfigDict, Field, model_validator

from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.lib.diverse import DiversePicker, candidates
from conceptmine_assets.lib.evidence import EvidenceParams, candidates_sql
from conceptmine_assets.lib.outliers import IS_OUTLIER_SQL
from conceptmine_assets.lib.sampling import unit_hash

REASONS: tuple[str, ...] = ("confirmed", "target_outlier", "target", "rare_outlier", "rare", "random", "random_fill")
TIERS: tuple[str, ...] = ("target_outlier", "target", "rare_outlier", "rare")
STRATEGIES: tuple[str, ...] = ("ranked", "priority", "paper")
# per sample, about the crops that qualified it (best evidence score first):
WHY_COLUMNS = ["detection_ids", "top_concepts", "top_scores", "captions", "outlier_detectors",
               "crop_scores", "crop_outlier", "crop_rarity", "crop_confidence", "crop_detector_confidence"]
SPLIT_COLUMNS = ["sample_token", "scene_name", "reason", "rank", "score", "duplicate_of", *WHY_COLUMNS]
# columns of the per-crop table select_split and add_why read (the last four: lib/evidence.py)
CROP_COLUMNS = [
    "detection_id", "sample_token", "group", "is_outlier", "top_concept", "top_score", "caption", "outlier_detectors",
    "outlier", "rarity", "confidence", "detector_confidence", "score",
]
# One row per sample with a concept-scored crop: its tier flags (views concept_scores, outlier_flags).
TIERS_SQL = f"""
SELECT c.sample_token,
       coalesce(bool_or(c."group" = 'target' AND {IS_OUTLIER_SQL}), false) AS target_outlier,
       coalesce(bool_or(c."group" = 'target'), false) AS target,
       coalesce(bool_or(c."group" = 'rare' AND {IS_OUTLIER_SQL}), false) AS rare_outlier,
       coalesce(bool_or(c."group" = 'rare'), false) AS rare
FROM concept_scores c LEFT JOIN outlier_flags o ON o.detection_id = c.detection_id
GROUP BY c.sample_token ORDER BY c.sample_token
"""


class SplitParams(EvidenceParams):
    """The selection's budgets, order and strategy (and, inherited, the evidence score's weights
    and the diversity rule): the one statement of these settings.

    ``mined_split``'s ``dg.Config`` inherits these fields (with their descriptions and bounds),
    so the launchpad shows them and an invalid combination never reaches :func:`select_from_tiers`."""

    model_config = ConfigDict(frozen=True)

    random_frac: float = Field(0.10, ge=0.0, le=1.0, description="Random share of all training samples.")
    target_frac: float = Field(0.10, ge=0.0, le=1.0, description="Target share: samples with a target-group crop.")
    rare_frac: float = Field(0.0, ge=0.0, le=1.0, description="Rare share: ranked: a reserve only rare-group "
                             "candidates fill, before the target share; priority: the rare tiers' budget; paper: 0.")
    seed: int = Field(0, description="Seed of the random share (and of the order within a tier for priority/paper).")
    strategy: Literal["ranked", "priority", "paper"] = Field(
        "ranked", description="ranked: evidence-scored, outliers first, near-duplicates deferred, rare reserve, then "
        "random; priority: target, rare, then random, hash order within a tier; paper: random first, then "
        "target∧outlier, target, rare, random leftovers in the target budget (the original research code).")

    @model_validator(mode="after")
    def _budgets_fit(self) -> SplitParams:
        fracs = (self.random_frac, self.target_frac, self.rare_frac)
        if sum(fracs) > 1.0 + 1e-9:
            raise ValueError(f"split fractions must sum to at most 1, got {fracs}")
        if self.strategy == "paper" and self.rare_frac > 0:
            raise ValueError("strategy 'paper' has no rare budget (rare samples fill the target budget); "
                             f"set rare_frac to 0, got {self.rare_frac}")
        return self


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


def sample_tiers(crops: pd.DataFrame) -> pd.DataFrame:
    """One row per sample of ``crops`` with a boolean column per tier (what :data:`TIERS_SQL` gives)."""
    missing = [c for c in CROP_COLUMNS if c not in crops.columns]
    if missing:
        raise ConceptmineError(f"the crop table for the split lacks columns {missing}")
    flags = pd.DataFrame({"sample_token": crops["sample_token"].astype(object)})
    for tier in TIERS:
        flags[tier] = _qualifies(crops, tier).fillna(False).astype(bool).to_numpy()
    return flags.groupby("sample_token", sort=True).any().reset_index()


class _Picker:
    """Takes samples tier by tier in hash order, never one twice."""

    def __init__(self, tiers: pd.DataFrame, seed: int):
        self.tiers, self.seed = tiers, seed
        self.chosen: list[tuple[str, str]] = []
        self.taken: set[str] = set()

    def take(self, candidates: set[str], reason: str, limit: int) -> int:
        picked = _hash_order(candidates - self.taken, self.seed)[: max(limit, 0)]
        self.chosen += [(t, reason) for t in picked]
        self.taken.update(picked)
        return limit - len(picked)

    def tier(self, name: str, limit: int) -> int:
        return self.take(set(self.tiers.loc[self.tiers[name], "sample_token"]), name, limit)


def select_from_tiers(
    universe: pd.DataFrame, tiers: pd.DataFrame, params: SplitParams
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Selected samples (``sample_token, scene_name, reason, rank``) and the budgets, from one
    row per sample with tier flags (:func:`sample_tiers`); tier rows outside the universe are
    ignored (the caller reports them)."""
    if universe["sample_token"].duplicated().any():
        raise ConceptmineError("the training-set sample tokens are not unique")
    if params.strategy == "ranked":
        raise ConceptmineError("the ranked strategy reads the store: use select_ranked")
    tokens = set(universe["sample_token"])
    caps = budgets(params, len(tokens))
    picker = _Picker(tiers[tiers["sample_token"].isin(tokens)], params.seed)
    if params.strategy == "paper":
        picker.take(tokens, "random", caps["random"])
        left = caps["target"]
        for tier in TIERS:
            left = picker.tier(tier, left)
        picker.take(tokens, "random_fill", left)
    else:
        for cap, names in (("target", TIERS[:2]), ("rare", TIERS[2:])):
            left = caps[cap]
            for tier in names:
                left = picker.tier(tier, left)
        picker.take(tokens, "random", caps["random"])
    return _split_frame(universe, [(t, r, None, None) for t, r in picker.chosen]), caps


def _split_frame(universe: pd.DataFrame, picks: list[tuple[str, str, float | None, str | None]]) -> pd.DataFrame:
    scene_of = dict(zip(universe["sample_token"], universe["scene_name"]))
    return pd.DataFrame(
        {
            "sample_token": pd.Series([p[0] for p in picks], dtype=object),
            "scene_name": pd.Series([scene_of[p[0]] for p in picks], dtype=object),
            "reason": pd.Series([p[1] for p in picks], dtype=object),
            "rank": np.arange(len(picks), dtype=np.int64),
            "score": pd.Series([p[2] for p in picks], dtype="float64"),
            "duplicate_of": pd.Series([p[3] for p in picks], dtype=object),
        }
    )


def select_ranked(con: Any, universe: pd.DataFrame, params: SplitParams,
                  batch_rows: int = 8192) -> tuple[pd.DataFrame, dict[str, int]]:
    """The ``ranked`` strategy over a DuckDB connection with the views ``evidence``
    (:func:`~conceptmine_assets.lib.evidence.evidence_sql`) and ``embeddings``; the candidates
    stream in ``batch_rows`` batches on a cursor of their own (closed when the budget is full),
    so memory follows the budget, not the store."""
    import pyarrow as pa

    if universe["sample_token"].duplicated().any():
        raise ConceptmineError("the training-set sample tokens are not unique")
    caps = budgets(params, len(universe))
    con.register("_universe", pa.table({"sample_token": pa.array(universe["sample_token"].tolist(), pa.string())}))
    con.execute("CREATE OR REPLACE TABLE universe AS SELECT * FROM _universe")
    con.unregister("_universe")
    picker = DiversePicker(params.duplicate_cosine)

    def pick(groups: tuple[str, ...], limit: int) -> int:
        if limit <= 0:
            return max(limit, 0)
        with con.cursor() as cur:
            reader = cur.sql(candidates_sql(params, groups)).to_arrow_reader(batch_rows)
            return picker.pick(candidates(batch.to_pandas() for batch in reader), limit, params.duplicate_penalty)

    left = pick(("rare",), caps["rare"])
    left = pick(("target", "rare"), caps["target"] + left)
    order = _hash_order(set(universe["sample_token"]), params.seed)
    picker.fill(order, "random_fill", left)
    picker.fill(order, "random", caps["random"])
    picks = [(p.sample_token, p.reason, p.score, p.duplicate_of) for p in picker.chosen]
    return _split_frame(universe, picks), caps


def select_split(universe: pd.DataFrame, crops: pd.DataFrame, params: SplitParams) -> tuple[pd.DataFrame, dict[str, int]]:
    """:func:`select_from_tiers` on a per-crop table with ``CROP_COLUMNS`` (``is_outlier``
    boolean, no nulls): the exact path the SQL-aggregated tiers must agree with."""
    return select_from_tiers(universe, sample_tiers(crops), params)


def _qualifying(rows: pd.DataFrame, reason: str, strategy: str) -> pd.Series:
    """The crops that qualified a sample for ``reason``: ranked: every target or rare crop of its
    tier that no review rejects (confirmed crops for ``confirmed``, outliers for an ``*_outlier``
    reason); priority/paper: the reason's own group."""
    if strategy != "ranked":
        return _qualifies(rows, reason)
    review = rows["review"] if "review" in rows else pd.Series(None, index=rows.index, dtype=object)
    if reason == "confirmed":
        return review == "confirmed"
    mask = rows["group"].isin(["target", "rare"]) & (review != "reject")
    return mask & rows["is_outlier"] if reason.endswith("_outlier") else mask


def add_why(split: pd.DataFrame, crops: pd.DataFrame, strategy: str = "priority", limit: int | None = None) -> pd.DataFrame:
    """Add the *why* lists: the crops that qualified each sample for its reason, best evidence
    score first (at most ``limit``), with the score's parts (:data:`CROP_COLUMNS`)."""
    why: dict[str, list] = {c: [] for c in WHY_COLUMNS}
    by_sample = dict(tuple(crops.groupby("sample_token", sort=False))) if len(crops) else {}
    for token, reason in zip(split["sample_token"], split["reason"]):
        rows = by_sample.get(token)
        if reason.startswith("random") or rows is None:
            rows = crops.iloc[0:0]
        else:
            rows = rows[_qualifying(rows, reason, strategy)].sort_values(["score", "detection_id"],
                                                                         ascending=[False, True])
            rows = rows if limit is None else rows.iloc[:limit]
        why["detection_ids"].append([str(x) for x in rows["detection_id"]])
        why["top_concepts"].append([None if pd.isna(x) else str(x) for x in rows["top_concept"]])
        why["top_scores"].append([float(x) for x in rows["top_score"]])
        why["captions"].append([None if pd.isna(x) else str(x) for x in rows["caption"]])
        why["outlier_detectors"].append(["+".join(d) for d in rows["outlier_detectors"]])
        for column, part in (("crop_scores", "score"), ("crop_outlier", "outlier"), ("crop_rarity", "rarity"),
                             ("crop_confidence", "confidence"), ("crop_detector_confidence", "detector_confidence")):
            why[column].append([round(float(x), 6) for x in rows[part]])
    out = split.copy()
    for column, values in why.items():
        out[column] = pd.Series(values, index=out.index, dtype=object)
    return out[SPLIT_COLUMNS]
