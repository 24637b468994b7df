"""Free-text search over the crops ("a person pushing a cart"): pure ranking, no I/O.

Two modes, chosen by the embedder:

- ``image_embedding`` (CLIP, ``embedder.shared_space``): cosine of the query's text embedding
  with every crop's stored image embedding.
- ``caption_text`` (image and text spaces differ, e.g. the offline profile): cosine of the
  query's text embedding with the stored embedding of each crop's caption. Many crops share a
  caption ("car"), so the index holds each distinct caption once and a hit caption expands to
  its crops.

:func:`rank_by_similarity` is the exact brute-force ranking (the reference the tests compare the
index with); :func:`new_index` / :func:`top_rows` build and query a faiss index (exact
``IndexFlatIP`` up to ``exact_max_rows`` vectors, ``IVF<nlist>`` with a scalar-quantised codec
above). Ties are broken by row position (rows are stored in scene, detection_id order; caption
crops by detection_id), so results are reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from conceptmine_assets.errors import ConceptmineError

if TYPE_CHECKING:  # faiss is imported where an index is built or searched, not with the code location
    import faiss

SearchMode = Literal["image_embedding", "caption_text"]
MODES: tuple[SearchMode, ...] = ("image_embedding", "caption_text")
HIT_COLUMNS = [
    "rank", "score", "detection_id", "scene_name", "sample_token", "class_name", "group", "top_concept", "caption",
]
TIE_SLACK = 16  # extra neighbours fetched so that ties at the k-th place are ordered by position
MIN_POINTS_PER_LIST = 39  # faiss k-means wants at least this many training points per IVF list


class IndexParams(BaseModel):
    """How a vector index is built and probed: the one statement of these settings
    (``search_index``'s ``dg.Config`` inherits them, descriptions and bounds included)."""

    model_config = ConfigDict(frozen=True)

    exact_max_rows: int = Field(default=200_000, ge=1, description="Up to this many vectors the index is exact (flat).")
    codec: Literal["SQfp16", "SQ8", "Flat"] = Field(default="SQfp16", description="IVF vector codec above exact_max_rows.")
    nlist: int | None = Field(default=None, ge=1, description="IVF lists; None: 2*sqrt(rows), at most train_rows/39.")
    train_rows: int = Field(default=100_000, ge=100, le=2_000_000, description="Seeded IVF training sample size.")
    nprobe: int = Field(default=32, ge=1, description="IVF lists visited per query (recall vs speed).")
    seed: int = Field(default=0, ge=0, description="Seed of the training sample and of k-means.")

    def lists_for(self, n: int) -> int:
        wanted = self.nlist if self.nlist is not None else round(2 * math.sqrt(n))
        return max(1, min(wanted, self.train_rows // MIN_POINTS_PER_LIST, n))

    def is_exact(self, n: int) -> bool:
        return n <= self.exact_max_rows


@dataclass(frozen=True)
class SearchResult:
    """The ranked hits, how they were ranked, and over how many candidates."""

    mode: SearchMode
    model_id: str  # the text model that encoded the query
    num_candidates: int
    hits: pd.DataFrame  # HIT_COLUMNS, best first
    index_kind: str = "brute force"

    def describe(self) -> str:
        """One line saying which mode ranked the crops and why."""
        if self.mode == "image_embedding":
            why = "text and image share one space: query text vs crop image embeddings"
        else:
            why = "text and image spaces differ: query text vs caption text embeddings"
        return (f"mode: {self.mode} ({why}; model {self.model_id}; {self.num_candidates} candidates; "
                f"index {self.index_kind})")


def check_query(text: str, k: int) -> str:
    """The stripped query; an error for an empty query or k < 1."""
    text = (text or "").strip()
    if not text:
        raise ConceptmineError("the search query is empty; give a free-text description, e.g. 'a person pushing a cart'")
    if k < 1:
        raise ConceptmineError(f"k must be at least 1, got {k}")
    return text


def mode_for(shared_space: bool) -> SearchMode:
    return "image_embedding" if shared_space else "caption_text"


def rank_by_similarity(query: np.ndarray, matrix: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(row positions, cosines) of the ``k`` rows of ``matrix`` most similar to ``query``, exactly.

    Rows and the query are L2-normalised here (so unnormalised inputs rank correctly); ties are
    broken by ``ids`` in ascending order.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    query = np.asarray(query, dtype=np.float64).reshape(-1)
    if len(matrix) == 0:
        return np.zeros(0, dtype=int), np.zeros(0)
    if matrix.ndim != 2 or matrix.shape[1] != query.shape[0]:
        raise ConceptmineError(f"query has dim {query.shape[0]}, the candidates have shape {matrix.shape}")
    norms = np.clip(np.linalg.norm(matrix, axis=1), 1e-12, None)
    scores = matrix @ query / norms / max(float(np.linalg.norm(query)), 1e-12)
    order = np.lexsort((np.asarray(ids, dtype=str), -scores))[: max(int(k), 0)]
    return order, scores[order]


def normalised(vectors: np.ndarray) -> np.ndarray:
    """float32, C-contiguous, rows L2-normalised (zero rows stay zero)."""
    import faiss

    out = np.ascontiguousarray(vectors, dtype=np.float32).copy()
    if out.size:
        faiss.normalize_L2(out)
    return out


def new_index(dim: int, n: int, params: IndexParams, sample: np.ndarray | None = None) -> tuple[faiss.Index, str]:
    """An empty inner-product index for ``n`` vectors of ``dim`` and its faiss factory string.

    Exact (``Flat``) for ``n <= exact_max_rows``; else ``IVF<nlist>,<codec>`` trained on
    ``sample`` (normalised rows; required then)."""
    import faiss

    if params.is_exact(n):
        return faiss.IndexFlatIP(dim), "Flat"
    if sample is None or len(sample) == 0:
        raise ConceptmineError(f"an IVF index over {n} vectors needs a training sample")
    nlist = min(params.lists_for(n), len(sample))
    spec = f"IVF{nlist},{params.codec}"
    index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = params.seed
    index.train(normalised(sample))
    ivf.nprobe = min(params.nprobe, nlist)
    return index, spec


def top_rows(index: faiss.Index, query: np.ndarray, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(row positions, cosines) of the ``k`` best rows of ``index`` for one query vector, best
    first, ties by position (``k`` is capped at the index size)."""
    import faiss

    k = min(int(k), index.ntotal)
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    if nprobe is not None and not isinstance(index, faiss.IndexFlat):
        faiss.extract_index_ivf(index).nprobe = nprobe
    q = normalised(np.asarray(query).reshape(1, -1))
    if q.shape[1] != index.d:
        raise ConceptmineError(f"query has dim {q.shape[1]}, the index holds vectors of dim {index.d}")
    scores, rows = index.search(q, min(k + TIE_SLACK, index.ntotal))
    keep = rows[0] >= 0
    rows, scores = rows[0][keep], scores[0][keep]
    order = np.lexsort((rows, -scores))[:k]
    return rows[order], scores[order]


def expand_captions(
    caption_rows: np.ndarray, caption_scores: np.ndarray, offsets: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Crop positions and scores of the ``k`` best crops, given captions ranked best first:
    caption ``c``'s crops are positions ``offsets[c]:offsets[c + 1]`` (in detection_id order)."""
    positions: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    taken = 0
    for row, score in zip(caption_rows, caption_scores):
        crops = np.arange(offsets[row], min(offsets[row + 1], offsets[row] + k - taken))
        positions.append(crops)
        scores.append(np.full(len(crops), score, dtype=np.float32))
        taken += len(crops)
        if taken >= k:
            break
    if not positions:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    return np.concatenate(positions), np.concatenate(scores)


def hits_frame(meta: pd.DataFrame, scores: np.ndarray) -> pd.DataFrame:
    """The hit table (HIT_COLUMNS) from the hits' metadata rows, best first."""
    hits = meta.reset_index(drop=True).copy()
    hits.insert(0, "score", np.asarray(scores, dtype=float))
    hits.insert(0, "rank", np.arange(1, len(hits) + 1))
    return hits.reindex(columns=HIT_COLUMNS)
