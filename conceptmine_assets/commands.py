"""The commands that need no Dagster: `conceptmine sql`, `search` and `synth-dataroot`."""

from __future__ import annotations

import sys

from conceptmine_assets.cli import UsageError


def sql_command(query: str) -> int:
    import duckdb

    from conceptmine_assets.resources.store_sql import open_store_views, stored_tables
    from conceptmine_assets.settings import load_settings

    store = load_settings().store
    views = stored_tables(store)
    if not views:
        raise UsageError(f"nothing is stored under {store} yet: run `conceptmine run` first")
    try:
        with open_store_views(store) as views_con:  # read-only: resources/store_query.py
            df = views_con.execute(query).df()
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise UsageError(f"SQL error: {first} (views: {', '.join(sorted(views))})") from None
    sys.stdout.write(df.to_string(max_rows=200, max_colwidth=60) + "\n")
    return 0


def search_command(text: str, k: int) -> int:
    """Print the ``k`` best crops for ``text`` from the search index, and which mode ranked them."""
    from conceptmine_assets.resources.search_index import SearchIndexFiles, search_crops
    from conceptmine_assets.resources.text_query import query_encoder
    from conceptmine_assets.settings import Settings

    settings = Settings.from_env()
    # offline profile: the NumPy MiniLM query encoder (no torch, transformers or Dagster import)
    result, stale = search_crops(SearchIndexFiles(settings.store), query_encoder(settings), text, k)
    for line in stale:
        sys.stdout.write(f"warning: the search index is older than the store ({line}); re-materialise search_index\n")
    table = result.hits.to_string(index=False, max_colwidth=50, float_format=lambda v: f"{v:.3f}")
    sys.stdout.write(f"{result.describe()}\n{table}\n")
    return 0


def synth_command(sources: list[str], out: str, copies: int) -> int:
    from pathlib import Path

    from conceptmine_assets.lib.synth import synth_dataroot

    names = synth_dataroot([Path(s) for s in sources], Path(out), copies)
    sys.stdout.write(f"{out}: {len(names)} scenes ({', '.join(names[:8])}{' ...' if len(names) > 8 else ''})\n")
    return 0
