"""The Dagster resource for SQL over the store (asset checks, tools); the SQL itself is
``store_sql.py``'s, which imports no Dagster."""

from __future__ import annotations

from typing import Any

import dagster as dg
import pandas as pd

from conceptmine_assets.resources.store_sql import StoredTable, stored_tables


class StoreViews(dg.ConfigurableResource):
    """SQL over all scenes of the store for asset checks and tools: one view per stored asset."""

    base_path: str
    storage_options: dict[str, Any] = {}

    def tables(self) -> dict[str, StoredTable]:
        return stored_tables(self.base_path, self.storage_options)

    def missing(self, names: list[str]) -> list[str]:
        """Which of the named assets have no stored file yet."""
        stored = self.tables()
        return [n for n in names if n not in stored]

    def connect(self):
        """The read-only store (``store_query.open_read_only``): a view per stored asset."""
        from conceptmine_assets.resources.store_query import open_read_only

        return open_read_only(self.base_path, self.storage_options)

    def query(self, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
        """Run one read-only query against the views and return a DataFrame; a query naming an
        asset whose files cannot be read fails with the reader's error (naming the file)."""
        with self.connect() as store:
            return store.df(sql, params)
