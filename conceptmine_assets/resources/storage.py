"""Storage: one Parquet file per (asset, scene) on any fsspec path; global stages read it lazily.

Layout under ``base_path`` (the IO manager below is its one owner): ``<asset>/<scene>.parquet``
for scene-partitioned assets, ``<asset>.parquet`` for global ones, ``<asset>.pkl`` for
non-tabular outputs (fitted reference models, :class:`PickleIOManager`), and side files of the
global stages under ``splits/`` and ``gallery/`` (:func:`side_path`). Writes are atomic: on a
local filesystem the file is written to a hidden temporary sibling and ``os.replace``-d into
place; object stores (``s3://``, ``gs://``, ...) publish a PUT only when it completes. A re-run
of a scene replaces that scene's file and touches nothing else.

Reads across scenes: an asset input annotated :class:`~conceptmine_assets.resources.store_sql.StoredTable`
(with ``AllPartitionMapping``) is handed the files of every partition, not their rows; the
asset queries them through DuckDB (:func:`~conceptmine_assets.resources.store_sql.connect`),
reading only the columns and rows it needs. Any other input is loaded as a DataFrame.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import time
import uuid
from collections.abc import Callable
from typing import IO, Any

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

from conceptmine_assets.errors import IntegrityError, SchemaError, StoreWriteError
from conceptmine_assets.lib.integrity import HashingWriter, Record, damage, read_record, record_path
from conceptmine_assets.lib.tables import to_arrow
from conceptmine_assets.resources.store_sql import StoredTable, StoreViews, is_local, open_store_views

__all__ = [
    "ParquetIOManager", "PickleIOManager", "StoreViews", "StoredTable", "atomic_write", "location_metadata",
    "open_store_views",
    "side_path", "to_arrow",
]

STALE_TEMP_SECONDS = 3600.0


def _remove_stale_temps(final: str) -> None:
    """Delete temporary siblings of ``final`` left by writers killed over an hour ago.

    Readers never see them (they do not end in the target's name), but they would pile up; a
    younger one may belong to a concurrent writer and is left alone.
    """
    folder, prefix = os.path.dirname(final), f".{os.path.basename(final)}.tmp-"
    cutoff = time.time() - STALE_TEMP_SECONDS
    for entry in os.scandir(folder) if os.path.isdir(folder) else []:
        if entry.name.startswith(prefix) and entry.stat().st_mtime < cutoff:
            with contextlib.suppress(FileNotFoundError):  # another writer cleaned it first
                os.remove(entry.path)


def atomic_write(path: UPath, write: Callable[[IO[bytes]], None]) -> Record:
    """Write ``path`` so that readers see either the old file or the complete new one, then its
    content record beside it (``lib/integrity.py``); returns the record (sha256, size)."""
    if not is_local(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:  # an object-store PUT is published only when complete
            hashing = HashingWriter(fh)
            write(hashing)
        record = Record(hashing.hexdigest(), hashing.size)
        record_upath = path.parent / record_path(path.name).name
        with record_upath.open("w") as fh:
            fh.write(record.dumps())
        return record
    final = os.fspath(path.path if hasattr(path, "path") else path)
    try:
        os.makedirs(os.path.dirname(final), exist_ok=True)
        _remove_stale_temps(final)
        record = _replace(final, write)
        _replace(os.fspath(record_path(final)), lambda fh: fh.write(record.dumps().encode()))
        return record
    except OSError as exc:  # full disk, read-only store, permissions: one line naming the file
        name = errno.errorcode.get(exc.errno or 0, "")
        raise StoreWriteError(f"cannot write {final}: {exc.strerror or exc}{f' ({name})' if name else ''}") from exc


def _replace(final: str, write: Callable[[IO[bytes]], None]) -> Record:
    """Write a hidden temporary sibling, sync it and rename it over ``final``."""
    tmp = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as fh:
            hashing = HashingWriter(fh)
            write(hashing)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        return Record(hashing.hexdigest(), hashing.size)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def side_path(table: StoredTable, folder: str | None, default: str, *parts: str) -> UPath:
    """Where a global stage writes a side file: ``<store>/<default>/...`` unless ``folder`` is set.

    A relative ``folder`` is taken under the store (never the current directory); an absolute
    path or a URL is used as it is. Local results are absolute, so metadata can link them.
    """
    root = UPath(table.store, **table.storage_options)
    if folder is None:
        base = root / default
    elif "://" in folder or os.path.isabs(folder):
        base = UPath(folder, **(table.storage_options if "://" in folder else {}))
    else:
        base = root / folder
    path = base.joinpath(*parts)
    return UPath(os.path.abspath(str(path))) if is_local(path) else path


def location_metadata(path: UPath) -> dg.MetadataValue:
    """A side file for the metadata: a local path, or the URL of an object store."""
    return dg.MetadataValue.url(str(path)) if "://" in str(path) else dg.MetadataValue.path(str(path))


def _where(context: dg.OutputContext | dg.InputContext) -> str:
    name = "/".join(context.asset_key.path)
    if context.has_asset_partitions:
        keys = context.asset_partition_keys
        return f"asset {name!r}, scene {keys[0] if len(keys) == 1 else keys}"
    return f"asset {name!r}"


def _write_batches(path: UPath, batches: pa.RecordBatchReader, asset: str, where: str) -> tuple[int, Record]:
    """Stream record batches into one Parquet file (a global table too big to hold at once)."""
    rows = 0

    def write(fh: IO[bytes]) -> None:
        nonlocal rows
        with pq.ParquetWriter(fh, batches.schema, compression="zstd") as writer:
            for batch in batches:
                writer.write_table(to_arrow(pa.Table.from_batches([batch], batches.schema), asset, where))
                rows += batch.num_rows

    record = atomic_write(path, write)
    return rows, record


CONTENT_KEY = "content_sha256"  # output metadata: {path relative to the store: sha256}
SIZE_KEY = "content_size"  # output metadata: {path relative to the store: bytes}


def relative_to_store(base: UPath, path: UPath) -> str:
    return str(path)[len(str(base)):].lstrip("/")


def content_metadata(base: UPath, records: dict[UPath, Record]) -> dict[str, dg.MetadataValue]:
    """The digests and sizes of the files a materialisation wrote, as output metadata."""
    named = {relative_to_store(base, p): r for p, r in sorted(records.items(), key=lambda kv: str(kv[0]))}
    return {CONTENT_KEY: dg.MetadataValue.json({k: r.sha256 for k, r in named.items()}),
            SIZE_KEY: dg.MetadataValue.json({k: r.size for k, r in named.items()})}


def check_intact(path: UPath) -> None:
    """Refuse to load a local stored file that no longer matches its record (a missing record, as
    for a file written before records existed, is not checked here: ``conceptmine verify`` says so)."""
    if not is_local(path):
        return
    local = os.fspath(path.path if hasattr(path, "path") else path)
    record = read_record(local)
    if record is None:
        return
    why = damage(local, record.sha256, record.size)
    if why:
        raise IntegrityError(f"stored file {local} does not match its record ({why}); "
                             "`conceptmine run` recomputes it")


def _wants_stored_table(context: dg.InputContext) -> bool:
    """Whether the input is annotated :class:`StoredTable` (a context built without a type, as
    ``dg.build_input_context`` does by default, asks for the rows)."""
    try:
        return context.dagster_type.typing_type is StoredTable
    except dg.DagsterInvariantViolationError:  # no dagster_type on this context: a plain load
        return False


class _ParquetUPathIOManager(dg.UPathIOManager):
    extension: str = ".parquet"

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        """One file per scene, also when a run covers several scenes (``{scene: table}``)."""
        if not (context.has_asset_partitions and len(context.asset_partition_keys) > 1):
            return super().handle_output(context, obj)
        paths = self._get_paths_for_partitions(context)
        if not isinstance(obj, dict) or set(obj) != set(paths):
            got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise SchemaError(f"{_where(context)}: a multi-scene run must return one table per scene, got {got}")
        rows, records = 0, {}
        for scene, path in sorted(paths.items()):
            written, record = self._write(context, obj[scene], path, f"asset {context.asset_key.path[-1]!r}, scene {scene}")
            rows, records[path] = rows + written, record
        context.add_output_metadata({"dagster/row_count": rows, "num_scenes": len(paths),
                                     **content_metadata(self._base_path, records)})

    def _write(self, context: dg.OutputContext, obj: Any, path: UPath, where: str) -> tuple[int, Record]:
        asset = context.asset_key.path[-1]
        if isinstance(obj, pa.RecordBatchReader):
            return _write_batches(path, obj, asset, where)
        if not isinstance(obj, (pd.DataFrame, pa.Table)):
            raise SchemaError(f"{where}: expected a DataFrame, Arrow table or batch reader, got {type(obj).__name__}")
        table = to_arrow(obj, asset, where)
        record = atomic_write(path, lambda fh: pq.write_table(table, fh, compression="zstd"))
        return table.num_rows, record

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        rows, record = self._write(context, obj, path, _where(context))
        context.add_output_metadata({"dagster/row_count": rows, **content_metadata(self._base_path, {path: record})})

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pd.DataFrame:
        check_intact(path)
        with path.open("rb") as fh:
            return pq.read_table(fh).to_pandas()

    def load_input(self, context: dg.InputContext) -> Any:
        """A :class:`StoredTable` for inputs annotated so (no rows read), else DataFrames."""
        if _wants_stored_table(context):
            return self.stored_table(context)
        return super().load_input(context)

    def stored_table(self, context: dg.InputContext) -> StoredTable:
        """The files of the input's partitions (all, under ``AllPartitionMapping``) that exist."""
        name = context.asset_key.path[-1]
        if context.has_asset_partitions:
            paths = self._get_paths_for_partitions(context)
        else:
            paths = {"": self._get_path(context)}
        present: dict[str, set[str]] = {}
        for path in {p.parent for p in paths.values()}:
            present[str(path)] = {p.name for p in path.iterdir()} if path.exists() else set()
        found = {k: p for k, p in sorted(paths.items()) if p.name in present[str(p.parent)]}
        return StoredTable(
            name=name,
            files=tuple(str(p) for p in found.values()),
            partitions=tuple(k for k in found if k),
            missing=tuple(sorted(k for k in paths if k not in found and k)),
            store=str(self._base_path),
            storage_options=dict(self._base_path.storage_options),
        )


class _PickleUPathIOManager(dg.UPathIOManager):
    extension: str = ".pkl"

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        record = atomic_write(path, lambda fh: pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL))
        context.add_output_metadata(content_metadata(self._base_path, {path: record}))

    def load_from_path(self, context: dg.InputContext, path: UPath) -> Any:
        check_intact(path)
        with path.open("rb") as fh:
            return pickle.load(fh)


class ParquetIOManager(dg.ConfigurableIOManagerFactory):
    """Stores tables as ``<base_path>/<asset>/<scene>.parquet`` (local path or fsspec URL) and
    hands global assets :class:`StoredTable` inputs over them."""

    base_path: str
    storage_options: dict[str, Any] = {}

    def create_io_manager(self, context: dg.InitResourceContext) -> _ParquetUPathIOManager:
        return _ParquetUPathIOManager(base_path=UPath(self.base_path, **self.storage_options))


class PickleIOManager(dg.ConfigurableIOManagerFactory):
    """Stores non-tabular outputs (fitted models) as ``<base_path>/<asset>.pkl``."""

    base_path: str
    storage_options: dict[str, Any] = {}

    def create_io_manager(self, context: dg.InitResourceContext) -> _PickleUPathIOManager:
        return _PickleUPathIOManager(base_path=UPath(self.base_path, **self.storage_options))
