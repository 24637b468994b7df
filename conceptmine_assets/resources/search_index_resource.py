"""The Dagster resource over the persisted search index (``search_index_store``): configuration
only; reading and publishing are :class:`~conceptmine_assets.resources.search_index.SearchIndexFiles`'s,
which imports no Dagster (so ``conceptmine search`` and ``conceptmine serve`` start fast)."""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import Field

from conceptmine_assets.resources.search_index import IndexBuild, LoadedIndex, SearchIndexFiles


class SearchIndexResource(dg.ConfigurableResource):
    """Reads and publishes the search index of the store at ``base_path`` (path or fsspec URL)."""

    base_path: str = Field(description="The store root (CONCEPTMINE_STORE); the index lives in <base_path>/search_index/.")
    storage_options: dict[str, Any] = Field(default={}, description="fsspec options for a remote store.")

    def files(self) -> SearchIndexFiles:
        return SearchIndexFiles(self.base_path, self.storage_options)

    def fingerprint(self, assets: list[str]) -> dict[str, dict[str, list[int]]]:
        return self.files().fingerprint(assets)

    def publish(self, build: IndexBuild) -> str:
        return self.files().publish(build)

    def load(self) -> LoadedIndex:
        return self.files().load()
