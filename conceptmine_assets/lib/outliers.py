"""Embedding-space outlier detection against a reference fitted once, and image-quality flags.

Three detectors, as in the paper (arXiv 2512.05482), all oriented so that a higher score is
more anomalous:

- ``iforest``: ``IsolationForest`` (``contamination`` 0.1 by default, the paper uses 0.1-0.2);
  score ``-score_samples``, threshold ``-offset_`` (exactly ``predict``'s decision).
- ``lof``: ``LocalOutlierFactor(n_neighbors=k, novelty=True)`` (paper k = 20); score = the LOF,
  threshold = the LOF at the ``1 - contamination`` quantile of the reference (``-offset_``).
- ``knn``: mean Euclidean distance to the ``knn_k`` nearest reference embeddings (the paper's
  script: k = 10, mean distance); flagged above the ``knn_percentile`` of the reference's own
  leave-one-out scores: 90 (the paper's script used 80 on its t-SNE map in a union of three
  detectors; in a union of four, 80 flagged a third of all crops on the planted benchmark). It
  reuses the LOF's fitted neighbour index.
- ``small_cluster`` (ours): the distance to the k-th nearest reference embedding, k =
  ``small_cluster_share`` (0.2 %) of the reference (100 of 50,000; at least ``knn_k`` + 1),
  flagged above its ``small_cluster_percentile`` (90). LOF and kNN with k = 10-20 see a tight
  group of more than k look-alikes (ten frames of one cat, a batch of cargo bikes) as dense, so
  they cannot flag it; the k-th neighbour of a member of a group smaller than k lies outside the
  group. (The *mean* over 100 neighbours does not work: a third of them inside
  the group pull it back to ordinary.) On the planted benchmark (``bench/mining_quality.py``,
  40 scenes, 50,000-row reference, planted clusters of ~33 reference rows) at an equal flag
  budget of 10 %: kNN (k = 10) and LOF recall 0-18 % of the planted crops, IsolationForest 44 %,
  k-means small-cluster mass 28 %, distance to the class centroid 29 %, the mean distance to
  100 neighbours 0-4 %, the 50th to 200th neighbour's distance 100 %. knn and small_cluster
  share one neighbour query.

Every detector's score is also given as a **percentile** of the reference members' own scores
(:func:`percentiles`, 0..1): the calibrated outlier evidence that the mining score combines
(``lib/evidence.py``), comparable across detectors whose raw scores are not.

The paper ran the kNN detector on a t-SNE of baseline + new crops and took the percentile over
the new crops. t-SNE is transductive (it has no ``transform``), so a new scene could only be
scored by refitting the whole map. Here the kNN detector runs in the embedding space against
the reference sample, so a new scene is scored with the stored thresholds and no refit; the
t-SNE of the reference is kept only for plots (:attr:`OutlierReference.tsne`) and never scores.

Reference members scored again (a scene that was in the reservoir sample) get their
leave-one-out LOF and kNN scores from the fit: ``LocalOutlierFactor.score_samples`` would
count the point as its own neighbour and under-score it (see the scikit-learn docstring).

Small references: fewer than :data:`MIN_REFERENCE_ROWS` rows is an error; with fewer than
``k + 1`` rows a neighbour count is reduced to ``n - 1`` and a warning is recorded in
:attr:`OutlierReference.warnings` (the asset logs it and puts it in the metadata).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from conceptmine_assets.errors import ConceptmineError

if TYPE_CHECKING:  # scikit-learn is imported where a detector is fitted, not with the code location
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import LocalOutlierFactor

DETECTORS: tuple[str, ...] = ("iforest", "lof", "knn", "small_cluster")
# A crop without an `outlier_flags` row (not scored yet) counts as not an outlier: the one
# statement of that rule, for queries that LEFT JOIN outlier_flags AS o.
IS_OUTLIER_SQL = "coalesce(o.is_outlier, false)"


def outlier_or_false(values: pd.Series) -> np.ndarray:
    """:data:`IS_OUTLIER_SQL` for a left-joined pandas column: a missing flag is not an outlier."""
    return values.astype("boolean").fillna(False).astype(bool).to_numpy()
MIN_REFERENCE_ROWS = 3
QUALITY_FLAGS: tuple[str, ...] = ("glare", "dark", "blur")


class OutlierParams(BaseModel):
    """Fit-time settings of the three detectors: the one statement of these settings
    (``outlier_reference``'s ``dg.Config`` inherits them, descriptions and bounds included)."""

    model_config = ConfigDict(frozen=True)

    seed: int = Field(0, description="Seed of the reservoir sample, IsolationForest and t-SNE.")
    contamination: float = Field(0.1, gt=0.0, le=0.5, description="IsolationForest and LOF contamination (the paper uses 0.1-0.2).")
    lof_k: int = Field(20, ge=1, description="Neighbours of the LOF detector (the paper: 20).")
    knn_k: int = Field(10, ge=1, description="Neighbours of the mean-kNN-distance detector (the paper's script: 10).")
    knn_percentile: float = Field(90.0, gt=0.0, lt=100.0, description="kNN flag above this percentile of the reference's "
                                  "own scores (the paper's script: 80, on a t-SNE map, in a union of three detectors).")
    small_cluster_share: float = Field(0.002, gt=0.0, lt=1.0, description="Small-cluster detector: a tight group "
                                       "holding less than this share of the reference is flagged (its k-th neighbour, "
                                       "k = share x reference rows, at least knn_k + 1, lies outside it); LOF and kNN "
                                       "at k = 10-20 miss such groups.")
    small_cluster_percentile: float = Field(90.0, gt=0.0, lt=100.0, description="Small-cluster flag above this "
                                            "percentile of the reference's own scores.")
    n_estimators: int = Field(100, ge=1, description="Trees of the IsolationForest.")


@dataclass
class OutlierReference:
    """Fitted detectors, their score thresholds and the reference sample they were fitted on."""

    model_id: str
    dim: int
    params: OutlierParams
    lof_k: int  # effective neighbour counts (reduced for tiny references)
    knn_k: int
    small_cluster_k: int
    iforest: IsolationForest
    lof: LocalOutlierFactor
    thresholds: dict[str, float]
    member_ids: np.ndarray  # detection_id of each reference row
    member_scenes: np.ndarray
    embeddings: np.ndarray  # (n, dim) float32, the reference sample
    member_scores: dict[str, np.ndarray]  # per detector, leave-one-out scores of the members
    tsne: np.ndarray | None = None  # (m, 2) t-SNE of members tsne_index; plots only
    tsne_index: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.member_ids)


def small_cluster_k(n: int, params: OutlierParams) -> int:
    """The small-cluster detector's neighbour rank for a reference of ``n`` rows."""
    return max(params.knn_k + 1, math.ceil(params.small_cluster_share * n))


def effective_k(n: int, k: int, name: str) -> tuple[int, str | None]:
    """``k`` if the reference has at least ``k + 1`` rows, else ``n - 1`` and a warning."""
    if n < MIN_REFERENCE_ROWS:
        raise ConceptmineError(
            f"the outlier reference needs at least {MIN_REFERENCE_ROWS} embeddings, found {n}; "
            "materialise more scenes of `embeddings` first"
        )
    if k + 1 <= n:
        return k, None
    return n - 1, f"{name}: only {n} reference embeddings, k reduced from {k} to {n - 1}"


def knn_distances(lof: LocalOutlierFactor, X: np.ndarray | None, mean_k: int, kth: int) -> tuple[np.ndarray, np.ndarray]:
    """From one neighbour query against the reference (``X=None``: the members, each leaving
    itself out): the mean distance to the ``mean_k`` nearest rows (``knn``) and the distance to
    the ``kth`` nearest (``small_cluster``)."""
    distances, _ = lof.kneighbors(X, n_neighbors=max(mean_k, kth))
    return distances[:, :mean_k].mean(axis=1), distances[:, kth - 1]


def knn_distance(lof: LocalOutlierFactor, X: np.ndarray | None, k: int) -> np.ndarray:
    """Mean distance to the ``k`` nearest reference rows; ``X=None``: members, leaving themselves out."""
    return knn_distances(lof, X, k, k)[0]


def percentiles(reference: OutlierReference, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per detector, each score as the share of reference members scoring at most as high (0..1)."""
    out = {}
    for d in DETECTORS:
        ranked = np.sort(np.asarray(reference.member_scores[d], dtype=np.float64))
        out[d] = np.searchsorted(ranked, np.asarray(scores[d], dtype=np.float64), side="right") / max(len(ranked), 1)
    return out


def tsne_map(X: np.ndarray, max_points: int, perplexity: float, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """2-D t-SNE of at most ``max_points`` seeded-random rows of ``X`` (for plots); None if too few."""
    n = len(X)
    m = min(n, max_points)
    if m < 4:
        return None
    from sklearn.manifold import TSNE

    index = np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False))
    perplexity = min(perplexity, (m - 1) / 3)
    coords = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(X[index])
    return coords.astype(np.float32), index


def fit_reference(
    X: np.ndarray,
    ids: np.ndarray,
    model_id: str,
    params: OutlierParams = OutlierParams(),
    scenes: np.ndarray | None = None,
    tsne_max_points: int = 0,
    tsne_perplexity: float = 30.0,
) -> OutlierReference:
    """Fit the three detectors on the reference sample ``X`` (rows = embeddings, ids = detection_id)."""
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import LocalOutlierFactor

    params = OutlierParams(**params.model_dump(include=set(OutlierParams.model_fields)))  # never a caller's subclass
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2 or len(X) != len(ids):
        raise ConceptmineError(f"reference embeddings must be (n, dim) with one id per row, got {X.shape}, {len(ids)} ids")
    n = len(X)
    lof_k, lof_warn = effective_k(n, params.lof_k, "lof")
    knn_k, knn_warn = effective_k(n, params.knn_k, "knn")
    wide_k, wide_warn = effective_k(n, small_cluster_k(n, params), "small_cluster")
    iforest = IsolationForest(
        n_estimators=params.n_estimators, contamination=params.contamination, random_state=params.seed
    ).fit(X)
    lof = LocalOutlierFactor(n_neighbors=lof_k, contamination=params.contamination, novelty=True).fit(X)
    knn, wide = knn_distances(lof, None, knn_k, wide_k)
    member_scores = {"iforest": -iforest.score_samples(X), "lof": -lof.negative_outlier_factor_, "knn": knn,
                     "small_cluster": wide}
    thresholds = {
        "iforest": float(-iforest.offset_),
        "lof": float(-lof.offset_),
        "knn": float(np.percentile(member_scores["knn"], params.knn_percentile)),
        "small_cluster": float(np.percentile(wide, params.small_cluster_percentile)),
    }
    tsne = tsne_map(X, tsne_max_points, tsne_perplexity, params.seed) if tsne_max_points > 0 else None
    return OutlierReference(
        model_id=model_id,
        dim=X.shape[1],
        params=params,
        lof_k=lof_k,
        knn_k=knn_k,
        small_cluster_k=wide_k,
        iforest=iforest,
        lof=lof,
        thresholds=thresholds,
        member_ids=np.asarray(ids, dtype=object),
        member_scenes=np.asarray(scenes if scenes is not None else [None] * n, dtype=object),
        embeddings=X,
        member_scores=member_scores,
        tsne=None if tsne is None else tsne[0],
        tsne_index=None if tsne is None else tsne[1],
        warnings=[w for w in (lof_warn, knn_warn, wide_warn) if w],
    )


def _member_rows(reference: OutlierReference, X: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row positions in X, member positions) of rows that are reference members, unchanged."""
    position = {d: i for i, d in enumerate(reference.member_ids)}
    rows, members = [], []
    for r, d in enumerate(ids):
        m = position.get(d)
        if m is not None and np.allclose(X[r], reference.embeddings[m], atol=1e-6):
            rows.append(r)
            members.append(m)
    return np.asarray(rows, dtype=int), np.asarray(members, dtype=int)


def score(reference: OutlierReference, X: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of new rows per detector (higher = more anomalous), without refitting anything."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    if len(X) == 0:
        return {d: np.zeros(0, dtype=np.float64) for d in DETECTORS}
    if X.ndim != 2 or X.shape[1] != reference.dim:
        raise ConceptmineError(f"embeddings have shape {X.shape}, the outlier reference expects dim {reference.dim}")
    knn, wide = knn_distances(reference.lof, X, reference.knn_k, reference.small_cluster_k)
    scores = {"iforest": -reference.iforest.score_samples(X), "lof": -reference.lof.score_samples(X), "knn": knn,
              "small_cluster": wide}
    rows, members = _member_rows(reference, X, np.asarray(ids, dtype=object))
    for name in ("lof", "knn", "small_cluster"):
        scores[name][rows] = reference.member_scores[name][members]
    return scores


def apply_thresholds(scores: dict[str, np.ndarray], thresholds: dict[str, float]) -> dict[str, np.ndarray]:
    """Per detector: score strictly above its threshold."""
    return {d: np.asarray(scores[d]) > thresholds[d] for d in DETECTORS}


def combine(
    flags: dict[str, np.ndarray], rule: Literal["union", "vote"] = "union", min_votes: int = 2
) -> tuple[np.ndarray, list[list[str]]]:
    """``is_outlier`` (union: any detector; vote: at least ``min_votes``) and which detectors fired."""
    if rule not in ("union", "vote"):
        raise ConceptmineError(f"combine rule must be 'union' or 'vote', got {rule!r}")
    if rule == "vote" and not 1 <= min_votes <= len(DETECTORS):
        raise ConceptmineError(f"min_votes must be in 1..{len(DETECTORS)}, got {min_votes}")
    stacked = np.column_stack([np.asarray(flags[d], dtype=bool) for d in DETECTORS])
    votes = stacked.sum(axis=1)
    is_outlier = votes >= (1 if rule == "union" else min_votes)
    fired = [[d for d, f in zip(DETECTORS, row) if f] for row in stacked]
    return is_outlier, fired


def flag_columns(reference: OutlierReference, X: np.ndarray, ids: np.ndarray, rule: Literal["union", "vote"] = "union",
                 min_votes: int = 2) -> dict[str, object]:
    """The detector columns of ``outlier_flags`` for rows ``X``: per detector its score, flag and
    percentile, ``outlier_evidence`` (the highest percentile: the crop is more anomalous than that
    share of the reference by its most telling detector), ``is_outlier`` and which fired."""
    scores = score(reference, X, ids)
    flags = apply_thresholds(scores, reference.thresholds)
    pct = percentiles(reference, scores)
    is_outlier, fired = combine(flags, rule, min_votes)
    columns: dict[str, object] = {}
    for d in DETECTORS:
        columns[f"{d}_score"] = np.asarray(scores[d]).astype(np.float32)
        columns[f"{d}_flag"] = np.asarray(flags[d], dtype=bool)
    for d in DETECTORS:
        columns[f"{d}_pct"] = pct[d].astype(np.float32)
    columns["outlier_evidence"] = (np.max([pct[d] for d in DETECTORS], axis=0) if len(X) else np.zeros(0)).astype(np.float32)
    columns["is_outlier"] = is_outlier.astype(bool)
    columns["outlier_detectors"] = fired
    return columns


class QualityThresholds(BaseModel):
    """Image-quality limits on a crop (columns of ``crops``); ``outlier_flags``' ``dg.Config`` inherits them."""

    model_config = ConfigDict(frozen=True)

    glare_overexposed_frac: float = Field(0.10, ge=0.0, le=1.0, description="Glare if the crop's overexposed_frac is above this.")
    dark_frac: float = Field(0.50, ge=0.0, le=1.0, description="Dark if the crop's dark_frac is above this.")
    blur_laplacian_var: float = Field(50.0, ge=0.0, description="Blur if the crop's Laplacian variance is below this (resolution-dependent).")


def quality_flags(crops: pd.DataFrame, limits: QualityThresholds = QualityThresholds()) -> tuple[list[list[str]], int]:
    """Per row the quality flags that apply, and how many rows had a null quality value.

    A null value raises no flag for that measure; the count lets the caller report it.
    """
    over = crops["overexposed_frac"].to_numpy(dtype=float)
    dark = crops["dark_frac"].to_numpy(dtype=float)
    blur = crops["blur_laplacian_var"].to_numpy(dtype=float)
    checks = {
        "glare": over > limits.glare_overexposed_frac,
        "dark": dark > limits.dark_frac,
        "blur": blur < limits.blur_laplacian_var,
    }
    unknown = int((np.isnan(over) | np.isnan(dark) | np.isnan(blur)).sum())
    flags = [[name for name in QUALITY_FLAGS if checks[name][i]] for i in range(len(crops))]
    return flags, unknown


__all__ = [
    "DETECTORS",
    "IS_OUTLIER_SQL",
    "outlier_or_false",
    "MIN_REFERENCE_ROWS",
    "OutlierParams",
    "OutlierReference",
    "QualityThresholds",
    "apply_thresholds",
    "combine",
    "effective_k",
    "fit_reference",
    "flag_columns",
    "knn_distance",
    "knn_distances",
    "percentiles",
    "quality_flags",
    "score",
    "tsne_map",
]
