"""``conceptmine verify``: every stored file against its content record; non-zero on a mismatch.

Two records are checked (``lib/integrity.py``): the one written beside each file
(``.<name>.sha256``: sha256 and size), and, with ``$DAGSTER_HOME`` set, the ``content_sha256``
metadata of each asset partition's latest materialisation in the Dagster instance (held outside
the store: a file replaced together with its record beside it still differs from this one). Each
file is read in full (no size/mtime shortcut). One line per problem, then a summary.

Not recorded, by design: the search index's vector and table files (``search_index/<build>/``;
the build is named by the hash of its manifest and published whole), and hidden temporaries.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from conceptmine_assets.lib.integrity import damage, is_record, read_record, record_target

UNRECORDED = ("search_index/",)  # relative folders whose files carry no record (see above)
IGNORED_NAMES = (".conceptmine-run.lock",)


def _skipped(relative: str, name: str) -> bool:
    return name in IGNORED_NAMES or ".tmp-" in name or name.startswith(".conceptmine-probe-")


def check_files(base: Path) -> tuple[int, list[str]]:
    """(files checked, problems) for every file under ``base`` against the record beside it."""
    checked, problems = 0, []
    for folder, dirs, names in os.walk(base):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            relative = str(path.relative_to(base))
            if _skipped(relative, name):
                continue
            if is_record(path):
                if not record_target(path).exists():
                    problems.append(f"missing: {record_target(path)} (its record {path} remains)")
                continue
            if name.startswith("."):
                continue
            record = read_record(path)
            if record is None:
                if not relative.startswith(UNRECORDED):
                    problems.append(f"no record: {path} (written by hand or before records existed; "
                                    "`conceptmine run --force` rewrites it with one)")
                continue
            checked += 1
            why = damage(path, record.sha256, record.size)
            if why:
                problems.append(f"damaged: {path} ({why})")
    return checked, problems


def check_instance(base: Path) -> tuple[int, list[str]]:
    """(files checked, problems) against the digests the Dagster instance recorded."""
    import dagster as dg

    from conceptmine_assets.cli.staleness import _latest_per_partition

    checked, problems = 0, []
    with dg.DagsterInstance.get() as instance:
        keys = sorted(instance.get_asset_keys(), key=lambda k: k.to_user_string())
        for key in keys:
            expected: dict[str, tuple[str, int | None]] = {}
            for latest in _latest_per_partition(instance, key).values():
                expected.update(latest.content)
            for relative, (sha256, size) in sorted(expected.items()):
                path = base / relative
                checked += 1
                why = damage(path, sha256, size)
                if why:
                    problems.append(f"{why.split(':')[0]}: {path} (the Dagster instance recorded another file: {why})")
    return checked, problems


def verify(store: str, use_instance: bool, out: Callable[[str], object] = sys.stdout.write) -> int:
    """Print the problems and a summary; 0 when every file matches its records, else 1."""
    from conceptmine_assets.cli.runlock import is_local, local_path
    from conceptmine_assets.errors import ConceptmineError

    if not is_local(store):
        raise ConceptmineError(f"conceptmine verify checks a local store; {store} is not one")
    base = local_path(store)
    if not base.is_dir():
        raise ConceptmineError(f"nothing is stored under {base} yet; run `conceptmine run` first")
    checked, problems = check_files(base)
    instance_checked = 0
    if use_instance:
        instance_checked, more = check_instance(base)
        named = {q.split(" (")[0].split(": ", 1)[1] for q in problems}  # each path once
        problems += [p for p in more if p.split(" (")[0].split(": ", 1)[1] not in named]
    for line in problems:
        out(f"{line}\n")
    where = f"; {instance_checked} against the Dagster instance's records" if use_instance else ""
    if problems:
        out(f"verify: {len(problems)} problem(s) in {base} ({checked} files checked against their records{where}); "
            "`conceptmine run` recomputes damaged or missing files\n")
        return 1
    out(f"verify: all {checked} stored files under {base} match their records{where}\n")
    return 0
