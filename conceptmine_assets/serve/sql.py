"""The SQL endpoint: read-only statements over the store's views, results as JSON rows."""

from __future__ import annotations

from typing import Any

import duckdb

from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.serve.store import StoreReader, bad_request, records

SQL_MAX_ROWS = 1000  # rows returned; row_count says how many the query had


READ_STATEMENTS = ("SELECT", "EXPLAIN")


def refuse_writes(text: str) -> None:
    """Only SELECT / EXPLAIN statements (DuckDB's parser; a throwaway connection parses, nothing
    runs). The store's connection is read-only by itself (``store_sql``); this also keeps a
    COPY or ATTACH from reaching it at all."""
    with duckdb.connect(":memory:") as parser:
        try:
            statements = parser.extract_statements(text)
        except duckdb.Error as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise bad_request(f"SQL error: {first[:500]}") from None
    for statement in statements:
        if statement.type.name not in READ_STATEMENTS:
            raise bad_request(f"refused: {statement.type.name} statements do not run here; the SQL API is read-only "
                              "(SELECT, EXPLAIN)")


def run_sql(reader: StoreReader, text: str) -> dict[str, Any]:
    """Columns and at most :data:`SQL_MAX_ROWS` rows of ``text``; a 400 naming the error."""
    refuse_writes(text)
    try:
        df = reader.query(text, strict=True)
    except (duckdb.Error, ConceptmineError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise bad_request(f"SQL error: {first[:500]}") from None
    return {"columns": [str(c) for c in df.columns], "rows": records(df.head(SQL_MAX_ROWS)), "row_count": len(df),
            "truncated": len(df) > SQL_MAX_ROWS}
