"""Free-text search and "more like this" over the persisted ``search_index``, kept loaded.

The index is memory-mapped once and reused; each request compares the identity (inode, mtime,
size) of ``search_index/CURRENT``, which a rematerialisation replaces atomically, and reloads
the build it names when it changed. Ranking is :func:`~conceptmine_assets.resources.search_index.search_crops`'s
(the same code as ``conceptmine search``); the index's staleness against the store is
recomputed only when the store's files change.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.resources.search_index import FOLDER, LoadedIndex, SearchIndexFiles, search_crops
from conceptmine_assets.resources.store_sql import is_local
from conceptmine_assets.serve.browse import hit_rows
from conceptmine_assets.serve.store import ApiError, StoreReader, bad_request, parse_count
from upath import UPath


class HeldIndex:
    """The published index build, reloaded when ``CURRENT`` changes; duck-types the
    ``SearchIndexFiles`` that :func:`search_crops` reads (``load``, ``fingerprint``, ``base_path``)."""

    def __init__(self, reader: StoreReader):
        self.reader = reader
        self.files = SearchIndexFiles(reader.base_path, reader.storage_options)
        self.base_path = reader.base_path
        self._lock = threading.Lock()
        self._key: Any = None
        self._loaded: LoadedIndex | None = None
        self._fingerprints: dict[tuple, dict] = {}
        self.reloads = 0

    def _identity(self) -> Any:
        current = UPath(self.base_path, **self.reader.storage_options) / FOLDER / "CURRENT"
        if is_local(current):
            try:
                st = os.stat(os.fspath(current.path if hasattr(current, "path") else current))
            except FileNotFoundError:
                return None
            return (st.st_ino, st.st_mtime_ns, st.st_size)
        return current.read_text().strip() if current.exists() else None

    def load(self) -> LoadedIndex:
        """The current build (a ConceptmineError naming what to do when none is published)."""
        key = self._identity()
        with self._lock:
            if self._loaded is None or key != self._key:
                self._loaded = self.files.load()
                self._key = key
                self.reloads += 1
            return self._loaded

    def fingerprint(self, assets: list[str]) -> dict[str, dict[str, list[int]]]:
        """The store's fingerprint of ``assets``, recomputed only when the store changed."""
        key = (self.reader.signature(), tuple(assets))
        if key not in self._fingerprints:
            self._fingerprints = {key: self.files.fingerprint(assets)}
        return self._fingerprints[key]


def search(held: HeldIndex, encoder, text: str, k: int) -> dict[str, Any]:
    if not (text or "").strip():
        raise bad_request("the search query q is empty; give a free-text description, e.g. q=a person pushing a cart")
    try:
        result, stale = search_crops(held, encoder, text, k)
    except ConceptmineError as exc:
        raise _index_error(exc) from None
    return {"mode": result.mode, "describe": result.describe(), "candidates": result.num_candidates,
            "stale": stale, "hits": hit_rows(result.hits)}


def more_like_this(held: HeldIndex, reader: StoreReader, crop: dict[str, Any], k: int) -> dict[str, Any]:
    """The ``k`` nearest crops to ``crop`` in the index: by image embedding where the index has
    that mode, else by caption text embedding (crops with the same or a similar caption)."""
    try:
        loaded = held.load()
    except ConceptmineError as exc:
        raise _index_error(exc) from None
    mode = "image_embedding" if "image_embedding" in loaded.manifest["modes"] else "caption_text"
    asset, column, model_column = (("embeddings", "embedding", "model_id") if mode == "image_embedding"
                                   else ("captions", "caption_embedding", "text_model_id"))
    src = reader.source(asset, [crop["scene_name"]])
    rows = reader.query(f"SELECT {column} AS v, {model_column} AS m FROM {src} WHERE detection_id = ?",
                        [crop["detection_id"]]) if src else None
    if rows is None or rows.empty or rows["v"].iloc[0] is None:
        what = "image embedding" if mode == "image_embedding" else "caption (only captioned crops are in the index)"
        raise ApiError(409, f"crop {crop['detection_id']!r} has no stored {what}, so it has no neighbours")
    entry = loaded.entry(mode)
    if rows["m"].iloc[0] != entry["model_id"]:
        raise ApiError(409, f"crop {crop['detection_id']!r} was embedded by {rows['m'].iloc[0]!r}, the index holds "
                            f"{entry['model_id']!r}; re-materialise search_index")
    vector = np.asarray(rows["v"].iloc[0], dtype=np.float32)
    hits = loaded.search(mode, vector, k + 1)
    hits = hits[hits["detection_id"] != crop["detection_id"]].head(k)
    hits["rank"] = np.arange(1, len(hits) + 1)
    return {"mode": mode, "of": crop["detection_id"], "hits": hit_rows(hits)}


def parse_k(text: str | None, default: int = 24, most: int = 200) -> int:
    return parse_count("k", text, default, most)


def _index_error(exc: ConceptmineError) -> ApiError:
    """The index is missing (503) or does not fit the encoder or the store (409)."""
    message = str(exc)
    return ApiError(503 if message.startswith("no search index") else 409, message)
