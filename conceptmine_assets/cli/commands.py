"""What `conceptmine` does without Dagster: `sql`, `search`, `synth-dataroot`, the no-change memo's answer and the closing lines."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from conceptmine_assets.cli import UsageError

if TYPE_CHECKING:
    from conceptmine_assets.cli.uptodate import UpToDate


def sql_command(query: str) -> int:
    import duckdb

    from conceptmine_assets.resources.store_query import views_for
    from conceptmine_assets.resources.store_sql import open_store_views, stored_tables
    from conceptmine_assets.settings import load_settings

    store = load_settings().store
    views = stored_tables(store)
    if not views:
        raise UsageError(f"nothing is stored under {store} yet: run `conceptmine run` first")
    try:
        # read-only (resources/store_query.py), with views for just the assets the query names
        with open_store_views(store, only=views_for(query, list(views))) as views_con:
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


def remembered_up_to_date(memo: "UpToDate") -> int | None:
    """Exit code 0 when the last no-change plan still holds, else None."""
    held = memo.holds()
    if held is None:
        return None
    sys.stdout.write(
        "nothing to do: every asset is up to date (use --force to recompute); nothing the last plan "
        f"was computed from has changed since {held['recorded']}\n"
    )
    return done(held["store"])


def done(store: str) -> int:
    sys.stdout.write(
        f"\ndone. Outputs: {store}/<asset>/<scene>.parquet\n"
        f"Mined split: {store}/splits/mined.txt   Gallery: {store}/gallery/index.html (open in a browser)\n"
        "Browse lineage and metadata: make ui  (then open http://127.0.0.1:3000)\n"
        "Explore, search and review the crops: .venv/bin/conceptmine serve  (then open http://127.0.0.1:8765)\n"
        'Query: .venv/bin/conceptmine sql "SELECT * FROM mined_split"   '
        '.venv/bin/conceptmine search "a parked truck"\n'
    )
    return 0
