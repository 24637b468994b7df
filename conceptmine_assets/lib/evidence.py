"""The mining score: why one crop outranks another, and the ranked, diverse selection built on it.

**Per crop** (every concept-scored crop; columns of :data:`EVIDENCE_COLUMNS`, all kept so the split
rows, the gallery and ``conceptmine sql`` can say why)::

    outlier    = outlier_evidence                        calibrated outlier evidence, 0..1
    rarity     = ln(N / n_concept) / ln(N)               how rare the top concept is, 0..1
    confidence = clip(top_score, 0, 1)                   how well the top concept fits
    score      = group_weight * sqrt(detector_confidence)
                 * (w_o*outlier + w_r*rarity + w_c*confidence) / (w_o + w_r + w_c)

- ``outlier_evidence`` (``outlier_flags``) is the highest, over the outlier detectors, of the
  crop's score as a percentile of the reference's own scores: comparable across detectors whose
  raw scores are not, and a crop only one detector can see (a tight rare group: small_cluster)
  keeps its full evidence. Which detectors fired decides the tier (below) and is listed with
  every crop. (Measured on ``bench/mining_quality.py``'s planted benchmark, 40 scenes: the mean
  percentile with the share of detectors that fired put 47 % of the planted crops' samples in the
  split, the highest percentile 65 %, and with the square root of the detector's confidence
  below, 72 %; random splits of the same size, 20 %.) A crop without an ``outlier_flags`` row has
  no outlier evidence (0).
- ``N`` is the number of concept-scored crops in the whole store and ``n_concept`` how many of
  them share this crop's top concept (inverse document frequency, normalised to 0..1): the only
  cat among 1.4M crops scores ~0.95, a concept on a third of them ~0.08.
- ``detector_confidence`` is the detection's confidence (1 for dataset annotations or a crop
  without a detections row). Its square root scales everything: a detection the detector
  half-believes has a doubtful class, so its concept's rarity is doubtful too (seen on real
  pixels: a highway barrier detected as a 0.46 "train", the only train in the store, outranked a
  0.95 cat before this factor); the square root keeps a true but faint detection in the race.
- ``group_weight``: ``rare_weight`` (1.0) for group rare, ``target_weight`` (0.9) for group
  target, 0 for common, so at equal evidence a rare concept ranks first.

**Per sample**: its score is the best score of the crops that qualify it (see below), and those
crops, best first, are its *evidence* (at most ``max_evidence_crops``).

**Ranked selection** (``strategy: ranked``, the default): samples with a target or rare crop
that is an outlier (tier 0) come before samples with only a target or rare crop (tier 1); within
a tier, by score (ties: sample token), each when what it *adds* is the best on offer. An evidence
crop with an embedding cosine of at least ``duplicate_cosine`` with a crop already chosen is a
near-duplicate (six augmented copies of one truck, the same cone in consecutive frames) and
counts ``duplicate_penalty`` less; a sample is worth its best crop so counted. A sample whose
best crop repeats a chosen one therefore waits at its lowered value and is taken once that beats
the next candidate, or when the candidates run out (``duplicate_of`` names the chosen crop its
best crop repeats). So a second view of a strong rare object (0.9 - 0.25) still comes before a
fresh frequent one (0.6), while copies of the frequent one (0.6 - 0.25) wait behind every new
candidate. A waiting sample loses its tier: it competes with the later candidates of either tier
by its value. Memory is bounded by the budget and the duplicates: candidates stream from DuckDB
in score order (at most ``max_evidence_crops`` vectors per sample); the chosen crops' vectors and
the waiting samples' few vectors are all that is held.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator


EVIDENCE_COLUMNS = ["outlier", "rarity", "confidence", "detector_confidence", "group_weight", "score"]


class EvidenceParams(BaseModel):
    """The mining score's weights and the diversity rule (``SplitParams`` inherits them)."""

    model_config = ConfigDict(frozen=True)

    weight_outlier: float = Field(0.4, ge=0.0, le=1.0, description="Weight of the calibrated outlier evidence "
                                  "(detector percentiles on the reference, and how many detectors fired).")
    weight_rarity: float = Field(0.4, ge=0.0, le=1.0, description="Weight of the top concept's rarity across the "
                                 "whole store (normalised inverse frequency).")
    weight_confidence: float = Field(0.2, ge=0.0, le=1.0, description="Weight of the concept score itself (top_score). "
                                     "(The detector's confidence scales the whole score.)")
    rare_weight: float = Field(1.0, ge=0.0, le=1.0, description="Multiplier of a rare-group crop's score.")
    target_weight: float = Field(0.9, ge=0.0, le=1.0, description="Multiplier of a target-group crop's score "
                                 "(below rare: at equal evidence the rare concept is mined first).")
    duplicate_cosine: float = Field(0.92, gt=0.0, le=1.0, description="A sample whose evidence crops all have an "
                                    "embedding cosine at least this with crops already chosen is a near-duplicate. "
                                    "1.0: only exact copies.")
    duplicate_penalty: float = Field(0.25, ge=0.0, le=1.0, description="A near-duplicate competes with its score "
                                     "minus this: a strong rare object may still be taken twice, a copy of a "
                                     "frequent one waits behind every new candidate. 1.0: duplicates always last.")
    max_evidence_crops: int = Field(3, ge=1, le=16, description="Evidence crops per sample (best first) that the "
                                    "split lists and the diversity rule compares.")

    @model_validator(mode="after")
    def _some_weight(self) -> EvidenceParams:
        if self.weight_outlier + self.weight_rarity + self.weight_confidence <= 0:
            raise ValueError("weight_outlier, weight_rarity and weight_confidence are all 0: nothing ranks the crops")
        return self


def _lit(x: float) -> str:
    return repr(float(x))


def evidence_sql(params: EvidenceParams) -> str:
    """One row per concept-scored crop (views ``concept_scores``, ``outlier_flags`` and
    ``detections``) with its group, concept, caption, outlier facts and the score's parts
    (:data:`EVIDENCE_COLUMNS`)."""
    total = params.weight_outlier + params.weight_rarity + params.weight_confidence
    return f"""
WITH freq AS (SELECT top_concept, count(*) AS n FROM concept_scores GROUP BY ALL),
total AS (SELECT greatest(count(*), 2) AS n FROM concept_scores),
parts AS (
  SELECT c.detection_id, c.sample_token, c.scene_name, c.class_name, c."group" AS "group", c.top_concept,
         c.top_score, c.caption,
         coalesce(o.is_outlier, false) AS is_outlier,
         coalesce(o.outlier_detectors, []::VARCHAR[]) AS outlier_detectors,
         coalesce(o.outlier_evidence, 0.0) AS outlier,
         greatest(ln(total.n / coalesce(freq.n, 1)) / ln(total.n), 0.0) AS rarity,
         least(greatest(coalesce(c.top_score, 0.0), 0.0), 1.0) AS confidence,
         least(greatest(coalesce(d.confidence, 1.0), 0.0), 1.0) AS detector_confidence,
         CASE c."group" WHEN 'rare' THEN {_lit(params.rare_weight)} WHEN 'target' THEN {_lit(params.target_weight)}
              ELSE 0.0 END AS group_weight
  FROM concept_scores c
  LEFT JOIN outlier_flags o ON o.detection_id = c.detection_id
  LEFT JOIN detections d ON d.detection_id = c.detection_id
  LEFT JOIN freq ON freq.top_concept IS NOT DISTINCT FROM c.top_concept
  CROSS JOIN total
)
SELECT *, group_weight * sqrt(detector_confidence) * ({_lit(params.weight_outlier)} * outlier
       + {_lit(params.weight_rarity)} * rarity + {_lit(params.weight_confidence)} * confidence) / {_lit(total)} AS score
FROM parts
"""


def candidates_sql(params: EvidenceParams, groups: tuple[str, ...] = ("target", "rare")) -> str:
    """The ranked candidates (view ``evidence`` = :func:`evidence_sql`, table ``universe`` of
    training-set sample tokens, view ``embeddings``): per sample with a crop of ``groups``, its
    tier, score and evidence crops (best first, with their embedding), in selection order."""
    in_groups = ", ".join(f"'{g}'" for g in groups)
    return f"""
WITH cand AS (
  SELECT e.* FROM evidence e SEMI JOIN universe u ON u.sample_token = e.sample_token
  WHERE e."group" IN ({in_groups})
),
tiered AS (
  SELECT sample_token, CASE WHEN bool_or(is_outlier) THEN 0 ELSE 1 END AS tier FROM cand GROUP BY ALL
),
qualifying AS (
  SELECT c.*, t.tier FROM cand c JOIN tiered t USING (sample_token) WHERE t.tier = 1 OR c.is_outlier
),
ranked AS (
  SELECT *, row_number() OVER (PARTITION BY sample_token ORDER BY score DESC, detection_id) AS k,
         max(score) OVER (PARTITION BY sample_token) AS sample_score
  FROM qualifying
)
SELECT r.sample_token, r.tier, r.sample_score, r.k, r.detection_id, r."group" AS "group", r.score, emb.embedding
FROM ranked r LEFT JOIN embeddings emb ON emb.detection_id = r.detection_id
WHERE r.k <= {int(params.max_evidence_crops)}
ORDER BY r.tier, r.sample_score DESC, r.sample_token, r.k
"""


@dataclass
class Candidate:
    """One sample as the ranked stream gives it: tier, score and its evidence crops (best first)."""

    sample_token: str
    tier: int
    score: float
    group: str  # of its best evidence crop
    detection_ids: list[str]
    crop_scores: np.ndarray  # (m,) evidence score of each crop
    vectors: np.ndarray  # (m, d) L2-normalised embeddings (zero rows where a crop has none)
    has_vector: np.ndarray  # (m,) which crops have an embedding

    @property
    def reason(self) -> str:
        return f"{self.group}_outlier" if self.tier == 0 else self.group


def candidates(batches: Iterable[pd.DataFrame]) -> Iterator[Candidate]:
    """:class:`Candidate` per sample from the rows of :func:`candidates_sql` (in its order, in
    batches of any size: a sample's rows may straddle two batches)."""
    pending: list[pd.DataFrame] = []
    token = None
    for batch in batches:
        if batch.empty:
            continue
        tokens = batch["sample_token"].to_numpy()
        starts = np.flatnonzero(np.r_[True, tokens[1:] != tokens[:-1]])
        bounds = list(starts) + [len(batch)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            part = batch.iloc[a:b]
            if token is not None and part["sample_token"].iat[0] != token:
                yield _candidate(pd.concat(pending))
                pending = []
            pending.append(part)
            token = part["sample_token"].iat[0]
    if pending:
        yield _candidate(pd.concat(pending))


def _candidate(rows: pd.DataFrame) -> Candidate:
    has = np.array([v is not None and len(v) > 0 for v in rows["embedding"]], dtype=bool)
    dim = next((len(v) for v, h in zip(rows["embedding"], has) if h), 0)
    matrix = np.zeros((len(rows), dim), dtype=np.float32)
    for i, (v, h) in enumerate(zip(rows["embedding"], has)):
        if h:
            matrix[i] = np.asarray(v, dtype=np.float32)
    if dim:
        matrix /= np.clip(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12, None)
    first = rows.iloc[0]
    return Candidate(str(first["sample_token"]), int(first["tier"]), float(first["sample_score"]), str(first["group"]),
                     [str(d) for d in rows["detection_id"]], rows["score"].to_numpy(dtype=np.float64), matrix, has)


@dataclass
class Pick:
    sample_token: str
    reason: str
    score: float | None = None
    duplicate_of: str | None = None


@dataclass
class DiversePicker:
    """Greedy, diversity-aware picking from ranked candidates (see the module docstring)."""

    threshold: float
    taken: set[str] = field(default_factory=set)
    chosen: list[Pick] = field(default_factory=list)
    _vectors: np.ndarray | None = None  # (capacity, d) evidence vectors of the chosen samples
    _ids: list[str] = field(default_factory=list)
    _n: int = 0

    def _nearest(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row of ``vectors``: the best cosine with a chosen evidence crop and its index."""
        if self._n == 0 or not len(vectors) or not vectors.shape[1]:
            return np.full(len(vectors), -np.inf), np.zeros(len(vectors), dtype=int)
        sims = vectors @ self._vectors[: self._n].T
        best = sims.argmax(axis=1)
        return sims[np.arange(len(vectors)), best], best

    def value(self, cand: Candidate, penalty: float) -> tuple[float, str | None]:
        """What ``cand`` adds now: its best evidence crop's score, a crop that is a near-duplicate
        of a chosen one counting ``penalty`` less; and the chosen crop its best crop repeats."""
        sims, nearest = self._nearest(cand.vectors)
        duplicate = cand.has_vector & (sims >= self.threshold)
        values = cand.crop_scores - penalty * duplicate
        repeats = self._ids[int(nearest[0])] if len(duplicate) and duplicate[0] else None
        return (float(values.max()) if len(values) else cand.score), repeats

    def _remember(self, cand: Candidate) -> None:
        rows = cand.vectors[cand.has_vector]
        if not len(rows):
            return
        if self._vectors is None:
            self._vectors = np.zeros((max(64, len(rows)), rows.shape[1]), dtype=np.float32)
        if self._n + len(rows) > len(self._vectors):
            grown = np.zeros((max(2 * len(self._vectors), self._n + len(rows)), rows.shape[1]), dtype=np.float32)
            grown[: self._n] = self._vectors[: self._n]
            self._vectors = grown
        self._vectors[self._n : self._n + len(rows)] = rows
        self._ids += [d for d, h in zip(cand.detection_ids, cand.has_vector) if h]
        self._n += len(rows)

    def pick(self, stream: Iterable[Candidate], limit: int, penalty: float = 1.0) -> int:
        """Take up to ``limit`` new samples from ``stream`` (best score first), each when what it
        adds (:meth:`value`) is the best on offer: a sample whose best crop repeats a chosen one
        waits with its lowered value (re-valued when it comes up: lazy greedy, exact because a
        value only ever drops) until it beats the next candidate or the candidates run out.
        Returns the slots left."""
        waiting: list[tuple[float, int, Candidate]] = []  # (-value, arrival, candidate): a heap
        arrival = 0

        def take_best_waiting() -> None:
            nonlocal limit
            stored, order, cand = heapq.heappop(waiting)
            value, repeats = self.value(cand, penalty)
            if value < -stored - 1e-12:  # more was chosen since: re-queue at its new value
                heapq.heappush(waiting, (-value, order, cand))
                return
            self._take(Pick(cand.sample_token, cand.reason, cand.score, repeats))
            self._remember(cand)
            limit -= 1

        for cand in stream:
            while waiting and limit > 0 and -waiting[0][0] > cand.score:
                take_best_waiting()
            if limit <= 0:
                return 0
            if cand.sample_token in self.taken:
                continue
            value, repeats = self.value(cand, penalty)
            if value < cand.score - 1e-12:
                heapq.heappush(waiting, (-value, arrival, cand))
                arrival += 1
                continue
            self._take(Pick(cand.sample_token, cand.reason, cand.score, repeats))
            self._remember(cand)
            limit -= 1
        while waiting and limit > 0:
            take_best_waiting()
        return max(limit, 0)

    def _take(self, pick: Pick) -> None:
        self.chosen.append(pick)
        self.taken.add(pick.sample_token)

    def fill(self, tokens: list[str], reason: str, limit: int) -> int:
        """Take up to ``limit`` of ``tokens`` (already in their order) not taken yet; slots left."""
        for t in tokens:
            if limit <= 0:
                break
            if t not in self.taken:
                self._take(Pick(t, reason))
                limit -= 1
        return max(limit, 0)
