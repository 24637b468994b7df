"""Storage: one Parquet file per (asset, scene) on any fsspec path, plus DuckDB views over them.

Layout under ``base_path``: ``<asset>/<scene>.parquet`` for scene-partitioned assets and
``<asset>.parquet`` for global ones; non-tabular outputs (fitted reference models) go to
``<asset>.pkl`` through :class:`PickleIOManager`. Writes are atomic: on a local filesystem the
file is written to a hidden temporary sibling and ``os.replace``-d into place; object stores
(``s3://``, ``gs://``, ...) publish a PUT only when it completes. A re-run of a scene replaces
that scene's file and touches nothing else.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import time
import uuid
from collections.abc import Callable
from typing import IO, Any

import dagster as dg
import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from upath import UPath

from conceptmine_assets.errors import ConceptmineError, SchemaError
from conceptmine_assets.schemas import SCHEMAS, VECTOR_COLUMNS


def _is_local(path: UPath) -> bool:
    return path.protocol in ("", "file", "local")


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


def atomic_write(path: UPath, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` so that readers see either the old file or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not _is_local(path):
        with path.open("wb") as fh:  # an object-store PUT is published only when complete
            write(fh)
        return
    final = os.fspath(path.path if hasattr(path, "path") else path)
    _remove_stale_temps(final)
    tmp = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fix_vector_columns(table: pa.Table, dims: dict[str, int], where: str) -> pa.Table:
    """Store declared vector columns as ``fixed_size_list<float32>[dim]``."""
    for name in VECTOR_COLUMNS & set(table.column_names):
        col = table.column(name).combine_chunks()
        lengths = pc.unique(pc.list_value_length(col)).to_pylist()
        if len(lengths) > 1:
            raise SchemaError(f"{where}: column {name!r} holds vectors of different lengths {lengths}")
        dim = lengths[0] if lengths else dims.get(name)
        if dim is None:
            raise SchemaError(f"{where}: empty table needs df.attrs['vector_dims'][{name!r}]")
        if col.null_count:
            raise SchemaError(f"{where}: column {name!r} has {col.null_count} null vectors")
        values = col.flatten()
        if len(values) and not pc.all(pc.is_finite(values)).as_py():
            raise SchemaError(f"{where}: column {name!r} contains NaN or inf")
        fixed = pa.FixedSizeListArray.from_arrays(values, dim)
        idx = table.column_names.index(name)
        table = table.set_column(idx, pa.field(name, fixed.type), fixed)
    return table


def to_arrow(df: pd.DataFrame | pa.Table, asset_name: str, where: str) -> pa.Table:
    """Conform a stage output to its declared schema (see :mod:`conceptmine_assets.schemas`)."""
    if isinstance(df, pa.Table):
        table, dims = df, {}
    else:
        schema = SCHEMAS.get(asset_name)
        dims = dict(df.attrs.get("vector_dims", {}))
        if schema is None:
            table = pa.Table.from_pandas(df, preserve_index=False)
        else:
            missing = [c for c in schema.names if c not in df.columns]
            extra = [c for c in df.columns if c not in schema.names]
            if missing or extra:
                raise SchemaError(f"{where}: missing columns {missing}, unexpected columns {extra}")
            frame = df[schema.names]
            if frame.empty:  # pandas gives empty columns float64/object dtypes; let the schema decide
                frame = frame.astype(object)
            try:
                table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(f"{where}: does not match the {asset_name} schema: {exc}") from exc
    return _fix_vector_columns(table, dims, where)


def _where(context: dg.OutputContext | dg.InputContext) -> str:
    name = "/".join(context.asset_key.path)
    if context.has_asset_partitions:
        keys = context.asset_partition_keys
        return f"asset {name!r}, scene {keys[0] if len(keys) == 1 else keys}"
    return f"asset {name!r}"


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
        rows = 0
        for scene, path in sorted(paths.items()):
            rows += self._write(context, obj[scene], path, f"asset {context.asset_key.path[-1]!r}, scene {scene}")
        context.add_output_metadata({"dagster/row_count": rows, "num_scenes": len(paths)})

    def _write(self, context: dg.OutputContext, obj: Any, path: UPath, where: str) -> int:
        if not isinstance(obj, (pd.DataFrame, pa.Table)):
            raise SchemaError(f"{where}: expected a DataFrame or Arrow table, got {type(obj).__name__}")
        table = to_arrow(obj, context.asset_key.path[-1], where)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda fh: pq.write_table(table, fh, compression="zstd"))
        return table.num_rows

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        rows = self._write(context, obj, path, _where(context))
        context.add_output_metadata({"dagster/row_count": rows})

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pd.DataFrame:
        with path.open("rb") as fh:
            return pq.read_table(fh).to_pandas()


class _PickleUPathIOManager(dg.UPathIOManager):
    extension: str = ".pkl"

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        atomic_write(path, lambda fh: pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL))

    def load_from_path(self, context: dg.InputContext, path: UPath) -> Any:
        with path.open("rb") as fh:
            return pickle.load(fh)


class ParquetIOManager(dg.ConfigurableIOManagerFactory):
    """Stores tables as ``<base_path>/<asset>/<scene>.parquet`` (local path or fsspec URL)."""

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


class DuckDBResource(dg.ConfigurableResource):
    """SQL over all scenes: one view per stored asset, in a fresh in-memory database.

    Each connection is private and in memory, so concurrent scene runs never compete for a
    DuckDB file lock (DuckDB allows one writer per database file); the Parquet files are the
    only shared state. Remote ``base_path``s are read through DuckDB's fsspec support.
    """

    base_path: str
    storage_options: dict[str, Any] = {}

    def _root(self) -> UPath:
        return UPath(self.base_path, **self.storage_options)

    def stored_assets(self) -> dict[str, str]:
        """Map of asset name to the glob of its Parquet files, for assets with at least one file."""
        root = self._root()
        if not root.exists():
            return {}
        found: dict[str, str] = {}
        for child in sorted(root.iterdir(), key=lambda p: p.name):
            if child.is_dir() and any(p.name.endswith(".parquet") for p in child.iterdir()):
                found[child.name] = f"{child}/*.parquet"
            elif child.name.endswith(".parquet") and not child.name.startswith("."):
                found.setdefault(child.name[: -len(".parquet")], str(child))
        return found

    def missing(self, names: list[str]) -> list[str]:
        """Which of the named assets have no stored file yet."""
        stored = self.stored_assets()
        return [n for n in names if n not in stored]

    def require(self, names: list[str], reader: str) -> None:
        """Fail clearly when ``reader`` needs assets that nothing has stored yet."""
        missing = self.missing(names)
        if missing:
            raise ConceptmineError(
                f"{reader} reads {missing} but nothing is stored under {self.base_path}; materialise them first"
            )

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory connection with a view per asset (``SELECT * FROM frames``)."""
        con = duckdb.connect(":memory:")
        root = self._root()
        if not _is_local(root):
            con.register_filesystem(root.fs)
        for name, glob in self.stored_assets().items():
            literal = glob.replace("'", "''")
            con.execute(f"CREATE VIEW \"{name}\" AS SELECT * FROM read_parquet('{literal}', union_by_name = true)")
        return con

    def query(self, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
        """Run one query against the views and return a DataFrame."""
        with self.connect() as con:
            return con.execute(sql, params or []).df()
