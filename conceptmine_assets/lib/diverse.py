"""Ranked, diverse picking of samples from the evidence-ranked candidates (``strategy: ranked``).

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
        return ("confirmed", f"{self.group}_outlier", self.group)[self.tier]


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
