"""`conceptmine run`'s check of the store's files against their content records (lib/integrity.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dagster as dg

from conceptmine_assets.cli.staleness import StoreFiles


def store_files(store: str, instance: dg.DagsterInstance) -> StoreFiles | None:
    """The integrity check of a local store's files (digests cached under ``$DAGSTER_HOME``)."""
    from conceptmine_assets.cli.preflight import watch_store
    from conceptmine_assets.cli.runlock import is_local, local_path
    from conceptmine_assets.lib.integrity import DigestCache

    if not is_local(store):
        return None
    watch_store(store)  # the no-change memo stamps the store's files too
    return StoreFiles(str(local_path(store)), DigestCache(Path(instance.root_directory) / "conceptmine" / "digests.json"))


def report_damaged(files: StoreFiles | None, out: Callable[[str], object]) -> None:
    """One line per damaged stored file found so far (each once); the digest cache saved."""
    if files is None:
        return
    for path, why in sorted(files.found.items()):
        out(f"stale: {path} does not match its record ({why}); recomputing it\n")
    files.found.clear()
    files.cache.save()
