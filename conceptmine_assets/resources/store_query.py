"""The read-only query path: SQL over the store that can read the store's files and nothing else.

``conceptmine sql``, the asset checks (:class:`~conceptmine_assets.resources.store_sql.StoreViews`)
and the server open the store through :func:`open_read_only`. Two independent locks:

1. **Statements.** Only ``SELECT`` (with ``SHOW``, ``DESCRIBE``, ``SUMMARIZE``, which DuckDB
   parses as one) and ``EXPLAIN`` run; ``COPY``, ``ATTACH``, ``CREATE``, ``INSERT``, ``SET``,
   ``PRAGMA``, ``CALL``, ``INSTALL``/``LOAD``, ``EXPORT``, ... are refused before anything runs
   (DuckDB's own parser: ``extract_statements``).
2. **DuckDB's sandbox.** ``allowed_paths`` is exactly the store's Parquet files, then
   ``enable_external_access`` is switched off, extension autoinstall/autoload are off, and
   ``lock_configuration`` is on, so no ``SET`` can undo any of it. DuckDB then opens no other
   file (no ``read_text``/``read_csv``/``glob`` elsewhere, no ``ATTACH``, no extension, no Python
   replacement scan). Measured with DuckDB 2.0.1: ``allowed_directories`` = the store would let
   ``COPY ... TO`` and ``ATTACH`` create or replace files inside the store, and even with
   ``allowed_paths`` a ``COPY ... TO`` one of those files with ``USE_TMP_FILE false`` rewrites
   it; hence exact files and lock 1.

A query that fails because a writer replaced a file between the views' binding and the read
(an atomic rename: the view then reads the new file with the old file's layout) is run again
on fresh views, at most twice; any other error is the query's.

A view per stored asset. An asset whose files cannot be read (truncated, garbage, not Parquet)
does not break the connection: its view is replaced by one that fails with the reader's error,
and a query that names it is refused up front with that error, which names the file; queries of
other assets work.
"""

from __future__ import annotations

import os

import json
import re
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pandas as pd

from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.resources.store_sql import StoredTable, open_connection, sql_literal, stored_tables
from conceptmine_assets.schemas import SCHEMAS

ALLOWED_STATEMENTS = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})


class QueryRefused(ConceptmineError):
    """A statement the read-only query path does not run (it would write or reach outside the store)."""


class UnreadableAsset(ConceptmineError):
    """A query names an asset whose stored files cannot be read."""


class StoreChanged(ConceptmineError):
    """A file the views were opened over is gone: the store was rewritten under the query."""


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def view_error(con: duckdb.DuckDBPyConnection, table: StoredTable) -> str | None:
    """Create the view of ``table`` on ``con``; None, or the reader's error (it names the file)."""
    try:
        con.execute(f'CREATE VIEW "{table.name}" AS SELECT * FROM {table.source_sql()}')
    except duckdb.Error as exc:
        return first_line(exc)
    return None


def _placeholder(con: duckdb.DuckDBPyConnection, name: str, message: str) -> None:
    """A view with the asset's declared columns that raises ``message`` when its rows are read."""
    fail = f"error({sql_literal(message)})"
    if name in SCHEMAS:
        con.register(f"_empty_{name}", SCHEMAS[name].empty_table())
        con.execute(f'CREATE VIEW "{name}" AS SELECT e.* FROM range(1) AS one '  # one row of typed NULLs
                    f'LEFT JOIN "_empty_{name}" AS e ON true WHERE {fail}')
    else:
        con.execute(f'CREATE VIEW "{name}" AS SELECT NULL AS unreadable FROM range(1) WHERE {fail}')


def referenced_tables(con: duckdb.DuckDBPyConnection, sql: str, names: list[str]) -> set[str]:
    """Which of ``names`` the statement ``sql`` reads, from DuckDB's parse tree (no binding);
    where DuckDB cannot serialise the statement (``EXPLAIN``), any of ``names`` it mentions."""
    tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
    wanted = {n.lower(): n for n in names}
    if tree.get("error"):
        return {n for n in names if re.search(rf"\b{re.escape(n)}\b", sql, re.IGNORECASE)}
    found: set[str] = set()
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == "BASE_TABLE" and str(node.get("table_name", "")).lower() in wanted:
                found.add(wanted[str(node["table_name"]).lower()])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


@dataclass
class ReadOnlyStore:
    """A locked connection over the store (see the module docstring); use :meth:`execute`."""

    con: duckdb.DuckDBPyConnection
    base_path: str
    tables: dict[str, StoredTable]
    unreadable: dict[str, str] = field(default_factory=dict)  # asset -> the reader's error
    storage_options: dict[str, Any] = field(default_factory=dict)
    stamps: dict[str, tuple[int, int] | None] = field(default_factory=dict)  # local file -> (size, mtime_ns)
    only: frozenset[str] | None = None  # the assets given views (None: every stored asset)

    def changed(self) -> bool:
        """Whether a stored file was replaced since the views were made (a writer renamed a new
        version over it: a view bound to the old one may then read the new one's bytes)."""
        return bool(self.stamps) and _stamps(self.tables) != self.stamps

    def check(self, sql: str) -> list[str]:
        """The statements of ``sql`` if each may run here, else QueryRefused / UnreadableAsset."""
        statements = self.con.extract_statements(sql)  # a syntax error raises duckdb.ParserException
        for statement in statements:
            if statement.type not in ALLOWED_STATEMENTS:
                words = statement.query.split()  # the statement as written: INSTALL, not LOAD
                kind = words[0].upper() if words else statement.type.name
                raise QueryRefused(
                    f"refused: {kind} statements do not run here; queries of the store are read-only (SELECT, EXPLAIN)"
                )
        queries = [s.query for s in statements]
        for query in queries:
            for name in sorted(referenced_tables(self.con, query, list(self.unreadable))):
                raise UnreadableAsset(f"`{name}` cannot be read: {self.unreadable[name]}")
        return queries

    def execute(self, sql: str, params: list[Any] | None = None) -> duckdb.DuckDBPyConnection:
        """Run ``sql`` (one or more statements; the last one's result) after :meth:`check`."""
        queries = self.check(sql)
        for attempt in range(3):
            try:
                for query in queries[:-1]:
                    self.con.execute(query)
                return self.con.execute(queries[-1] if queries else sql, params or [])
            except duckdb.PermissionException as exc:
                # a file the views name was removed (the sandbox refuses the reader's fallback glob),
                # or the query reached outside the store
                if attempt == 2 or not self.changed():
                    if any(f in str(exc) for f in self.stamps if not os.path.exists(f)):
                        raise StoreChanged(f"the store changed while it was read ({first_line(exc)[:200]})") from None
                    raise QueryRefused(f"refused: {first_line(exc)} (queries read only the store's files)") from None
                self._reopen()
            except duckdb.Error:
                if attempt == 2 or not self.changed():
                    raise
                self._reopen()  # a writer replaced a file between binding and reading: read it afresh
        raise AssertionError("unreachable")

    def _reopen(self) -> None:
        fresh = open_read_only(self.base_path, self.storage_options, self.only)
        self.con.close()
        self.con, self.tables, self.unreadable, self.stamps = fresh.con, fresh.tables, fresh.unreadable, fresh.stamps

    def df(self, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
        return self.execute(sql, params).df()

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> ReadOnlyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stamps(tables: dict[str, StoredTable]) -> dict[str, tuple[int, int] | None]:
    """(size, mtime_ns) of every local stored file; {} for a remote store."""
    import os

    stamps: dict[str, tuple[int, int] | None] = {}
    for table in tables.values():
        for path in table.files:
            if "://" in path:
                return {}
            try:
                st = os.stat(path)
                stamps[path] = (st.st_size, st.st_mtime_ns)
            except FileNotFoundError:
                stamps[path] = None
    return stamps


def open_read_only(
    base_path: str, storage_options: dict[str, Any] | None = None, only: frozenset[str] | None = None
) -> ReadOnlyStore:
    """The store's assets as views on a locked, read-only connection (empty store: no views).

    ``only``: views (and readable files) for just these assets. Binding a view reads the footer
    of every file of its asset, so a one-off query that names one asset of an 850-scene store
    opens in a fraction of the time of all of them (:func:`views_for`)."""
    tables = stored_tables(base_path, storage_options)
    if only is not None:
        tables = {name: table for name, table in tables.items() if name in only}
    con = open_connection(storage_options, base_path)
    files = sorted(f for t in tables.values() for f in t.files)
    # footers read once, when the views bind, not again by every query (halves a count at 850
    # scenes); the cache lives with this connection, which is reopened when a file changes
    con.execute("LOAD parquet")
    con.execute("SET parquet_metadata_cache = true")
    con.execute(f"SET allowed_paths = [{', '.join(sql_literal(f) for f in files)}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    store = ReadOnlyStore(con, base_path, tables, storage_options=dict(storage_options or {}), stamps=_stamps(tables),
                          only=only)
    for table in tables.values():
        error = view_error(con, table)
        if error is not None:
            store.unreadable[table.name] = error
            _placeholder(con, table.name, f"`{table.name}` cannot be read: {error}")
    return store


def views_for(sql: str, names: list[str]) -> frozenset[str] | None:
    """The stored assets ``sql`` reads, from DuckDB's parse tree; None (every asset) when it
    names none of them (``SHOW TABLES``, ``information_schema``, ``duckdb_views()``) or does
    not parse (the locked connection then reports the syntax error)."""
    with duckdb.connect(":memory:", config={"enable_external_access": False}) as con:
        try:
            statements = con.extract_statements(sql)
        except duckdb.Error:
            return None
        found = set().union(*(referenced_tables(con, s.query, names) for s in statements)) if statements else set()
    return frozenset(found) or None
