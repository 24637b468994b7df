"""SQL over the store through DuckDB: lazy table handles for global assets, views for checks and the CLI.

A :class:`StoredTable` names the Parquet files of one asset (the IO manager builds it from the
partitions of a declared input); :func:`connect` opens a private in-memory DuckDB connection
with one view per handle, so a query reads only the columns and row groups it needs and large
results can be streamed as Arrow batches. Each connection is private and in memory, so
concurrent runs never compete for a DuckDB file lock; the Parquet files are the only shared
state. DuckDB's memory is capped (:data:`MEMORY_LIMIT`); it spills to a temporary directory
under the system temp folder, never the current directory. No connection installs or loads a
DuckDB extension by itself. A view that cannot be created (a truncated or garbage file) is an
error naming the asset and the file.

Queries written by people (``conceptmine sql``, the server) and the asset checks go through the
locked read-only path of :mod:`conceptmine_assets.resources.store_query` instead.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, replace
from typing import Any

import duckdb
import pandas as pd
from upath import UPath

from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.schemas import SCHEMAS

MEMORY_LIMIT = "2GB"  # DuckDB's buffer cap per connection (joins and sorts spill beyond it)
THREADS = 2


def is_local(path: UPath) -> bool:
    return path.protocol in ("", "file", "local")


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class StoredTable:
    """The stored files of one asset (all its partitions that have a file), not their rows."""

    name: str
    files: tuple[str, ...]
    partitions: tuple[str, ...] = ()  # partitions that have a file, in the order of ``files``
    missing: tuple[str, ...] = ()  # requested partitions without a file (not materialised yet)
    store: str = ""  # the store's base path (messages, side files)
    storage_options: dict[str, Any] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.files

    def require(self, reader: str) -> StoredTable:
        """Fail clearly when ``reader`` needs this table and nothing has stored it yet."""
        if self.empty:
            raise ConceptmineError(
                f"{reader} reads `{self.name}` but nothing is stored under {self.store}; materialise it first"
            )
        return self

    def only(self, partitions: list[str] | tuple[str, ...]) -> StoredTable:
        """The same table restricted to some of its partitions (e.g. one scene at a time)."""
        keep = set(partitions)
        pairs = [(f, p) for f, p in zip(self.files, self.partitions) if p in keep]
        return replace(self, files=tuple(f for f, _ in pairs), partitions=tuple(p for _, p in pairs), missing=())

    def source_sql(self) -> str:
        """``read_parquet([...])`` over the files (``union_by_name``: older files may lack new columns)."""
        return f"read_parquet([{', '.join(sql_literal(f) for f in self.files)}], union_by_name = true)"


def open_connection(storage_options: dict[str, Any] | None = None, store: str = "") -> duckdb.DuckDBPyConnection:
    """A private in-memory connection with bounded memory; remote stores read through fsspec."""
    spill = os.path.join(tempfile.gettempdir(), "conceptmine-duckdb")
    con = duckdb.connect(":memory:", config={
        "memory_limit": MEMORY_LIMIT, "threads": THREADS, "temp_directory": spill,
        "autoinstall_known_extensions": False, "autoload_known_extensions": False,
    })
    root = UPath(store or ".", **(storage_options or {}))
    if store and not is_local(root):
        con.register_filesystem(root.fs)
    return con


def connect(*tables: StoredTable) -> duckdb.DuckDBPyConnection:
    """A connection with one view per table, named after its asset (``SELECT ... FROM frames``).

    A table without files becomes an empty view with its declared columns, so queries still
    bind; call :meth:`StoredTable.require` first where an empty input is an error.
    """
    con = open_connection(tables[0].storage_options if tables else None, tables[0].store if tables else "")
    for table in tables:
        if table.files:
            try:
                con.execute(f'CREATE VIEW "{table.name}" AS SELECT * FROM {table.source_sql()}')
            except duckdb.Error as exc:
                con.close()
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ConceptmineError(f"`{table.name}` cannot be read: {first}") from None
        elif table.name in SCHEMAS:
            # a table, not a view over the registered Arrow object: cursors (con.cursor()) see it too
            con.register(f"_empty_{table.name}", SCHEMAS[table.name].empty_table())
            con.execute(f'CREATE TABLE "{table.name}" AS SELECT * FROM "_empty_{table.name}"')
            con.unregister(f"_empty_{table.name}")
        else:
            raise ConceptmineError(f"nothing is stored for `{table.name}` under {table.store}; materialise it first")
    return con


def stored_tables(base_path: str, storage_options: dict[str, Any] | None = None) -> dict[str, StoredTable]:
    """Every asset with at least one stored Parquet file, as a table over all its files."""
    options = dict(storage_options or {})
    if "://" not in base_path and not options:
        return _local_tables(base_path)
    root = UPath(base_path, **options)
    if not root.exists():
        return {}
    found: dict[str, StoredTable] = {}
    for child in sorted(root.iterdir(), key=lambda p: p.name):
        if child.is_dir():
            files = sorted(p for p in child.iterdir() if p.name.endswith(".parquet") and not p.name.startswith("."))
            if files:
                found[child.name] = StoredTable(child.name, tuple(str(p) for p in files),
                                                tuple(p.name[: -len(".parquet")] for p in files), (), base_path, options)
        elif child.name.endswith(".parquet") and not child.name.startswith("."):
            name = child.name[: -len(".parquet")]
            found.setdefault(name, StoredTable(name, (str(child),), (), (), base_path, options))
    return found


def _local_tables(base_path: str) -> dict[str, StoredTable]:
    """:func:`stored_tables` of a local store by ``os.scandir`` (an 850-scene store lists ~8,000
    files: 0.1 s through ``UPath``, a few ms this way)."""
    base = os.path.normpath(base_path)
    if not os.path.isdir(base):
        return {}
    found: dict[str, StoredTable] = {}
    for entry in sorted(os.scandir(base), key=lambda e: e.name):
        if entry.is_dir():
            names = sorted(e.name for e in os.scandir(entry.path) if e.name.endswith(".parquet")
                           and not e.name.startswith(".") and not e.is_dir())
            if names:
                found[entry.name] = StoredTable(entry.name, tuple(os.path.join(entry.path, n) for n in names),
                                                tuple(n[: -len(".parquet")] for n in names), (), base_path, {})
        elif entry.name.endswith(".parquet") and not entry.name.startswith("."):
            name = entry.name[: -len(".parquet")]
            found.setdefault(name, StoredTable(name, (entry.path,), (), (), base_path, {}))
    return found


def open_store_views(base_path: str, storage_options: dict[str, Any] | None = None, only: frozenset[str] | None = None):
    """The read-only store with a view per stored asset (``conceptmine sql``, the server:
    ``.execute(sql).df()``; see ``store_query.py``); an error on an empty store."""
    from conceptmine_assets.resources.store_query import open_read_only

    if not stored_tables(base_path, storage_options):
        raise ConceptmineError(f"nothing is stored under {base_path} yet; run the pipeline first (conceptmine demo)")
    return open_read_only(base_path, storage_options, only)


def reservoir_sample(con: duckdb.DuckDBPyConnection, sql: str, n: int, seed: int) -> pd.DataFrame:
    """A seeded reservoir sample of at most ``n`` rows of ``sql`` (which has a ``detection_id``
    column), streamed by DuckDB and ordered by detection_id; reproducible (one thread)."""
    con.execute("SET threads = 1")  # the seeded sample is reproducible on one thread
    try:
        return con.execute(
            f"SELECT * FROM (SELECT * FROM ({sql}) USING SAMPLE reservoir({int(n)} ROWS) REPEATABLE ({int(seed)})) "
            "ORDER BY detection_id"
        ).df()
    finally:
        con.execute(f"SET threads = {THREADS}")


def __getattr__(name: str):
    if name == "StoreViews":  # the Dagster resource lives in store_views.py: `conceptmine sql` starts without Dagster
        from conceptmine_assets.resources.store_views import StoreViews

        return StoreViews
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
