"""The persisted search index: faiss indexes and Arrow metadata under ``<store>/search_index/``.

Layout: ``search_index/CURRENT`` names the live build folder ``search_index/<build>/``, which
holds ``manifest.json`` and, per mode, ``<mode>.faiss`` (the vectors) and ``<mode>.arrow`` (one
metadata row per index row, Arrow IPC); caption mode adds ``caption_text_crops.arrow`` (the
crops of each distinct caption). A build is written whole into a fresh folder and published by
atomically replacing ``CURRENT``, so readers never see half an index; older builds are then
removed. Local indexes are memory-mapped (loading costs milliseconds whatever the size);
object-store ones are downloaded.

The manifest records the (size, mtime) of every scene file the index was built from
(:func:`fingerprint`); :meth:`LoadedIndex.stale` compares it with the store.

This module imports no Dagster (``conceptmine search`` and ``conceptmine serve`` start without
it): :class:`SearchIndexFiles` reads and publishes; the Dagster resource
:class:`~conceptmine_assets.resources.search_index_resource.SearchIndexResource` (also importable
from here) wraps it for the ``search_index`` asset.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
from upath import UPath

from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.lib.search import (
    SearchMode,
    SearchResult,
    check_query,
    expand_captions,
    hits_frame,
    mode_for,
    top_rows,
)
from conceptmine_assets.resources.store_sql import StoredTable, is_local, stored_tables

if TYPE_CHECKING:  # faiss is imported where an index is read or written, not with the definitions
    import faiss

FOLDER = "search_index"
FORMAT = 1


def _local(path: UPath) -> str:
    return os.fspath(path.path if hasattr(path, "path") else path)


@dataclass
class IndexBuild:
    """What one build writes: the manifest, faiss indexes and Arrow tables by file stem."""

    manifest: dict[str, Any]
    indexes: dict[str, faiss.Index] = field(default_factory=dict)
    tables: dict[str, pa.Table] = field(default_factory=dict)

    def build_id(self) -> str:
        """Content address of the build (same inputs and settings, same folder name)."""
        return hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class LoadedIndex:
    """A published build: the manifest, and its indexes and tables loaded on first use."""

    manifest: dict[str, Any]
    folder: UPath
    _cache: dict[str, Any] = field(default_factory=dict)

    def index(self, stem: str) -> faiss.Index:
        if stem not in self._cache:
            import faiss

            path = self.folder / f"{stem}.faiss"
            if is_local(path):
                flat = self.manifest["modes"].get(stem, {}).get("index") == "Flat"
                # flat: the codes mapped; IVF: the inverted lists mapped
                flags = faiss.IO_FLAG_MMAP_IFC if flat else faiss.IO_FLAG_MMAP
                self._cache[stem] = faiss.read_index(_local(path), flags | faiss.IO_FLAG_READ_ONLY)
            else:
                self._cache[stem] = faiss.deserialize_index(bytearray(path.read_bytes()))
        return self._cache[stem]

    def table(self, stem: str) -> pa.Table:
        key = f"{stem}.arrow"
        if key not in self._cache:
            path = self.folder / key
            source = pa.memory_map(_local(path)) if is_local(path) else pa.BufferReader(path.read_bytes())
            self._cache[key] = pa.ipc.open_file(source).read_all()
        return self._cache[key]

    def rows(self, stem: str, positions) -> pd.DataFrame:
        """Metadata rows at ``positions`` (in that order), reading only those rows."""
        return self.table(stem).take(pa.array(positions, type=pa.int64())).to_pandas()

    def entry(self, mode: SearchMode) -> dict[str, Any]:
        """The manifest entry of ``mode``; a clear error when the build has none."""
        if mode not in self.manifest["modes"]:
            raise ConceptmineError(
                f"the search index at {self.folder} has no {mode} index (it has {sorted(self.manifest['modes'])}); "
                "re-materialise `search_index` with this profile's embedder"
            )
        return self.manifest["modes"][mode]

    def search(self, mode: SearchMode, query: np.ndarray, k: int) -> pd.DataFrame:
        """The ``k`` best crops for a query vector (HIT_COLUMNS, best first)."""
        entry, index = self.entry(mode), self.index(mode)
        if mode == "image_embedding":
            rows, scores = top_rows(index, query, k, entry["nprobe"])
            return hits_frame(self.rows(mode, rows), scores)
        offsets = self.table(mode).column("offset").to_numpy()
        wanted = k
        while True:  # enough texts to cover k distinct crops (a crop is listed under each of its texts)
            rows, caption_scores = top_rows(index, query, wanted, entry["nprobe"])
            positions, scores = expand_captions(rows, caption_scores, offsets, 3 * k)
            hits = self.rows("caption_text_crops", positions).assign(_score=scores)
            hits = hits.drop_duplicates("detection_id", keep="first").iloc[:k]  # a crop's best text
            if len(hits) >= k or wanted >= index.ntotal:
                return hits_frame(hits.drop(columns="_score"), hits["_score"].to_numpy())
            wanted *= 4

    def stale(self, current: dict[str, dict[str, list[int]]]) -> list[str]:
        """One line per source asset whose scene files changed since the build (empty: fresh)."""
        lines = []
        for asset, then in self.manifest["sources"].items():
            now = current.get(asset, {})
            changed = sum(1 for s in then if s in now and now[s] != then[s])
            added, removed = len(set(now) - set(then)), len(set(then) - set(now))
            if changed or added or removed:
                lines.append(f"{asset}: {changed} scene file(s) changed, {added} added, {removed} removed")
        return lines


class SearchIndexFiles:
    """Reads and publishes the search index of the store at ``base_path`` (path or fsspec URL)."""

    def __init__(self, base_path: str, storage_options: dict[str, Any] | None = None):
        self.base_path = base_path
        self.storage_options = dict(storage_options or {})

    def _root(self) -> UPath:
        return UPath(self.base_path, **self.storage_options)

    def fingerprint(self, assets: list[str]) -> dict[str, dict[str, list[int]]]:
        """The store's current :func:`fingerprint` of these assets (an asset with no files: empty)."""
        tables = stored_tables(self.base_path, self.storage_options)
        return {name: fingerprint([tables[name]])[name] if name in tables else {} for name in assets}

    def publish(self, build: IndexBuild) -> str:
        """Write ``build`` into a fresh folder and make it current; returns the folder's name."""
        from conceptmine_assets.resources.storage import atomic_write  # imports Dagster: only where a build is written

        root = self._root() / FOLDER
        build_id = build.build_id()
        folder = root / build_id
        current = root / "CURRENT"
        if current.exists() and current.read_text().strip() == build_id:
            return build_id  # the same inputs and settings are already published (builds are deterministic)
        if folder.exists():  # left by a build that died before publishing
            _remove_tree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for stem, index in build.indexes.items():
            _write_faiss(index, folder / f"{stem}.faiss")
        for stem, table in build.tables.items():
            _write_arrow(table, folder / f"{stem}.arrow")
        manifest = json.dumps(build.manifest, sort_keys=True, indent=1).encode()
        atomic_write(folder / "manifest.json", lambda fh: fh.write(manifest))
        atomic_write(current, lambda fh: fh.write(build_id.encode()))
        for old in root.iterdir():
            if old.is_dir() and old.name != build_id:
                _remove_tree(old)
        return build_id

    def load(self) -> LoadedIndex:
        """The current build; a clear error when none has been published."""
        root = self._root() / FOLDER
        current = root / "CURRENT"
        if not current.exists():
            raise ConceptmineError(
                f"no search index under {root}; materialise the `search_index` asset first "
                "(e.g. in mining_global_job, or `dagster asset materialize --select search_index`)"
            )
        folder = root / current.read_text().strip()
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest.get("format") != FORMAT:
            raise ConceptmineError(f"search index at {folder} has format {manifest.get('format')}, "
                                   f"this version reads {FORMAT}; re-materialise `search_index`")
        return LoadedIndex(manifest, folder)


def fingerprint(tables: list[StoredTable]) -> dict[str, dict[str, list[int]]]:
    """Per asset, per scene file: [size, mtime in ns] (what the index's staleness is judged by)."""
    out: dict[str, dict[str, list[int]]] = {}
    for table in tables:
        out[table.name] = {}
        for scene, file in zip(table.partitions, table.files):
            path = UPath(file, **table.storage_options)
            if is_local(path):
                st = os.stat(_local(path))
                out[table.name][scene] = [st.st_size, st.st_mtime_ns]
            else:
                info = path.fs.info(path.path)
                mtime = info.get("mtime") or info.get("LastModified") or info.get("updated") or 0
                out[table.name][scene] = [int(info["size"]), int(pd.Timestamp(mtime).value)]
    return out


def search_crops(store: SearchIndexFiles, embedder, text: str, k: int = 10) -> tuple[SearchResult, list[str]]:
    """The ``k`` crops that best match ``text`` from the published index, and one line per source
    asset that changed since it was built (empty when the index is current).

    The mode follows the embedder (see :mod:`conceptmine_assets.lib.search`); the index's vectors
    must come from the embedder's model of that mode."""
    text = check_query(text, k)
    loaded = store.load()
    mode = mode_for(embedder.shared_space)
    entry = loaded.entry(mode)
    model = embedder.image_model_id if mode == "image_embedding" else embedder.text_model_id
    if entry["model_id"] != model:
        raise ConceptmineError(
            f"the {mode} index under {store.base_path} holds vectors of {entry['model_id']!r}, but the embedder is "
            f"{model!r}; search with the embedder that made them (or re-materialise embeddings/captions and search_index)"
        )
    hits = loaded.search(mode, embedder.encode_texts([text])[0], k)
    stale = loaded.stale(store.fingerprint(list(loaded.manifest["sources"])))
    result = SearchResult(mode, embedder.text_model_id, int(entry.get("crops", entry["rows"])), hits, entry["index"])
    return result, stale


def __getattr__(name: str):
    if name == "SearchIndexResource":  # the Dagster resource, imported only by who asks for it
        from conceptmine_assets.resources.search_index_resource import SearchIndexResource

        return SearchIndexResource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _write_faiss(index: faiss.Index, path: UPath) -> None:
    import faiss

    if is_local(path):
        faiss.write_index(index, _local(path))
        return
    data = faiss.serialize_index(index).tobytes()
    with path.open("wb") as fh:
        fh.write(data)


def _write_arrow(table: pa.Table, path: UPath) -> None:
    def write(fh) -> None:
        with pa.ipc.new_file(fh, table.schema) as writer:
            writer.write_table(table, max_chunksize=65_536)

    if is_local(path):
        with open(_local(path), "wb") as fh:
            write(fh)
        return
    with tempfile.TemporaryFile() as tmp:
        write(tmp)
        tmp.seek(0)
        with path.open("wb") as fh:
            shutil.copyfileobj(tmp, fh)


def _remove_tree(folder: UPath) -> None:
    if is_local(folder):
        shutil.rmtree(_local(folder), ignore_errors=False)
    else:
        with contextlib.suppress(FileNotFoundError):  # another publisher removed it first
            folder.fs.rm(folder.path, recursive=True)
