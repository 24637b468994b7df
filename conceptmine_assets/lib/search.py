"""Free-text search over the stored crops ("a person pushing a cart").

Two modes, chosen by the embedder:

- ``image_embedding`` (CLIP, ``embedder.shared_space``): cosine of the query's text embedding
  with every crop's stored image embedding. The stored embeddings must come from the
  embedder's image model (otherwise the two vectors are not comparable: an error).
- ``caption_text`` (image and text spaces differ, e.g. the offline profile): cosine of the
  query's text embedding with the embedding of each crop's caption (``concept_scores.caption``),
  encoded with the same text encoder, each distinct caption once, in batches.

Ties (many crops share a caption) are broken by ``detection_id`` so results are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from conceptmine_assets.errors import ConceptmineError

if TYPE_CHECKING:
    from conceptmine_assets.resources.embedder import EmbedderResource
    from conceptmine_assets.resources.storage import StoreViews

SearchMode = Literal["image_embedding", "caption_text"]
HIT_COLUMNS = [
    "rank", "score", "detection_id", "scene_name", "sample_token", "class_name", "group", "top_concept", "caption",
]

_INFO = 'c.class_name AS cs_class, c."group" AS "group", c.top_concept, c.caption'
_IMAGE_SQL = f"""
SELECT e.detection_id, e.scene_name, e.sample_token, e.class_name, e.model_id, e.embedding, {_INFO}
FROM embeddings e LEFT JOIN concept_scores c ON c.detection_id = e.detection_id
"""
_IMAGE_SQL_NO_SCORES = """
SELECT detection_id, scene_name, sample_token, class_name, model_id, embedding,
       NULL AS cs_class, NULL AS "group", NULL AS top_concept, NULL AS caption
FROM embeddings
"""
_CAPTION_SQL = """
SELECT detection_id, scene_name, sample_token, class_name, "group", top_concept, caption
FROM concept_scores WHERE caption IS NOT NULL AND trim(caption) <> ''
"""


@dataclass(frozen=True)
class SearchResult:
    """The ranked hits, how they were ranked, and over how many candidates."""

    mode: SearchMode
    model_id: str  # the text model that encoded the query (and the captions)
    num_candidates: int
    hits: pd.DataFrame  # HIT_COLUMNS, best first

    def describe(self) -> str:
        """One line saying which mode ranked the crops and why."""
        if self.mode == "image_embedding":
            why = "text and image share one space: query text vs crop image embeddings"
        else:
            why = "text and image spaces differ: query text vs caption text embeddings"
        return f"mode: {self.mode} ({why}; model {self.model_id}; {self.num_candidates} candidates)"


def rank_by_similarity(query: np.ndarray, matrix: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(row positions, cosines) of the ``k`` rows of ``matrix`` most similar to ``query``.

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


def _check_query(text: str, k: int) -> str:
    text = (text or "").strip()
    if not text:
        raise ConceptmineError("the search query is empty; give a free-text description, e.g. 'a person pushing a cart'")
    if k < 1:
        raise ConceptmineError(f"k must be at least 1, got {k}")
    return text


def _image_candidates(duckdb: StoreViews, embedder: EmbedderResource) -> tuple[pd.DataFrame, np.ndarray]:
    stored = duckdb.tables()
    if "embeddings" not in stored:
        raise ConceptmineError(f"no `embeddings` stored under {duckdb.base_path}; materialise some scenes first")
    df = duckdb.query(_IMAGE_SQL if "concept_scores" in stored else _IMAGE_SQL_NO_SCORES)
    models = sorted(set(df["model_id"].dropna()))
    if models and models != [embedder.image_model_id]:
        raise ConceptmineError(
            f"stored embeddings under {duckdb.base_path} come from {models}, but the embedder is "
            f"{embedder.image_model_id!r}; search with the embedder that made them"
        )
    matrix = np.stack(df["embedding"].to_numpy()).astype(np.float32) if len(df) else np.zeros((0, 1), np.float32)
    return df.drop(columns=["embedding", "model_id", "cs_class"]), matrix


def _caption_candidates(duckdb: StoreViews, embedder: EmbedderResource) -> tuple[pd.DataFrame, np.ndarray]:
    if "concept_scores" not in duckdb.tables():
        raise ConceptmineError(
            f"no `concept_scores` stored under {duckdb.base_path}; caption search needs the captions it holds"
        )
    df = duckdb.query(_CAPTION_SQL)
    unique = list(dict.fromkeys(df["caption"].astype(str)))
    vectors = embedder.encode_texts(unique)  # batched by the embedder's batch_size
    position = {c: i for i, c in enumerate(unique)}
    index = np.array([position[c] for c in df["caption"].astype(str)], dtype=int)
    matrix = vectors[index] if len(index) else np.zeros((0, vectors.shape[1] if vectors.ndim == 2 else 1))
    return df, matrix


def search_crops(duckdb: StoreViews, embedder: EmbedderResource, text: str, k: int = 10) -> SearchResult:
    """The ``k`` crops that best match ``text``; see the module docstring for the two modes."""
    text = _check_query(text, k)
    mode: SearchMode = "image_embedding" if embedder.shared_space else "caption_text"
    if mode == "image_embedding":
        candidates, matrix = _image_candidates(duckdb, embedder)
    else:
        candidates, matrix = _caption_candidates(duckdb, embedder)
    query = embedder.encode_texts([text])[0]
    order, scores = rank_by_similarity(query, matrix, candidates["detection_id"].to_numpy(dtype=object), k)
    hits = candidates.iloc[order].reset_index(drop=True)
    hits.insert(0, "score", scores.astype(float))
    hits.insert(0, "rank", np.arange(1, len(hits) + 1))
    return SearchResult(mode, embedder.text_model_id, len(candidates), hits[HIT_COLUMNS])
