"""A no-change ``conceptmine run`` answered from the last plan, before Dagster is even imported.

What needs work is Dagster's answer, computed by :mod:`conceptmine_assets.cli.runner` from the
instance's records, the definitions (code, settings, config file) and the models' identities.
Computing it costs about 3 s of imports and instance start-up before any question is asked
(``bench/pipeline.py`` measures it). So when a plan finds nothing to do, ``conceptmine run``
also remembers everything that plan was computed from, in ``$DAGSTER_HOME/conceptmine/uptodate.json``:

- the command (``--scenes``), the working directory, the interpreter, ``sys.path`` and the
  environment variables that settings, hub caches and Dagster read (:data:`ENV_PREFIXES`);
- a stamp (size, mtime) of every file of this package, of the config file and what it
  ``extends``, of the files every model identity hashes and of a hub model's cache folder, of the
  dataroot's tables and of the vocabulary (:mod:`conceptmine_assets.lib.watched`);
- the names in every ``sys.path`` folder (an install or upgrade adds or removes a dist-info);
- a stamp of every file of a local store (its run lock aside);
- a stamp of every file of the Dagster instance under ``$DAGSTER_HOME`` (runs, event log,
  partitions, schedules): any run, materialisation or new partition, from the UI, automation or
  another command, rewrites one of them.

The next ``conceptmine run`` compares these first. All equal: the plan would be the same, so it
prints "nothing to do" without importing Dagster. Anything different, a damaged memo aside, and
the run plans through Dagster as usual. ``--force`` never reads it. The memo is only written
when the stamps did not move while the plan was computed, and only once every stamped file is
older than the file system's clock (a write in the same clock tick as the stamp could otherwise
go unseen: git's "racily clean" case). An instance whose ``dagster.yaml`` puts storage
elsewhere (Postgres, another folder) cannot be stamped here: it gets no memo.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.lib.watched import listing_stamp, newest_mtime, tree_stamp, watched

MEMO = Path("conceptmine") / "uptodate.json"
CLOCK = Path("conceptmine") / ".clock"
ENV_PREFIXES = ("CONCEPTMINE_", "NUSCENES_", "DAGSTER_", "HF_", "HUGGINGFACE_", "YOLO_", "XDG_")
ENV_NAMES = ("HOME", "PYTHONPATH", "VIRTUAL_ENV", "TORCH_HOME", "TRANSFORMERS_CACHE")
STORAGE_KEYS = ("storage", "run_storage", "event_log_storage", "schedule_storage")
PACKAGE = Path(__file__).resolve().parents[1]  # conceptmine_assets/, not just cli/
# A store is stamped file by file (a truncated or altered stored file changes its size or mtime,
# so the next run plans, and planning checks its digest); its run lock, rewritten by every run, is not.
SKIP = {"store": frozenset({".conceptmine-run.lock"})}
INSTANCE = "<instance>"  # the stamp of $DAGSTER_HOME's files (our own folder left out)
FORMAT = 1


class UpToDate:
    """The memo of one Dagster instance (``home``) for one command (``scenes``)."""

    def __init__(self, home: str | os.PathLike, scenes: list[str] | None = None) -> None:
        self.home = Path(home).absolute()
        self.path = self.home / MEMO
        env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES) or k in ENV_NAMES}
        self.key = json.loads(json.dumps({
            "format": FORMAT, "scenes": sorted(scenes) if scenes else None, "cwd": os.getcwd(),
            "python": sys.executable, "sys_path": sys.path, "env": dict(sorted(env.items())),
        }))

    def usable(self) -> bool:
        """Whether the instance keeps its storage under ``home`` (Dagster's default)."""
        config = self.home / "dagster.yaml"
        if not config.is_file():
            return True
        import yaml

        try:
            data = yaml.load(config.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
        except (OSError, yaml.YAMLError):
            return False  # Dagster itself reports a bad dagster.yaml, on the planned path
        return isinstance(data, dict) and not any(key in data for key in STORAGE_KEYS)

    def paths(self) -> dict[str, str]:
        """What a plan in this process depended on: ``{path: kind}``."""
        listed = {str(Path(p).absolute()): "listing" for p in sys.path if p and os.path.isdir(p)}
        return {**listed, **watched(), str(PACKAGE): "tree"}

    def stamps(self, paths: dict[str, str]) -> dict:
        stamps = {p: (listing_stamp(p) if kind == "listing" else tree_stamp(p, skip=SKIP.get(kind, frozenset())))
                  for p, kind in sorted(paths.items())}
        stamps[INSTANCE] = tree_stamp(self.home, skip=frozenset({MEMO.parts[0]}))
        return json.loads(json.dumps(stamps))

    def recorded(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            memo = json.loads(self.path.read_text())
            _ = memo["key"], memo["paths"], memo["stamps"], memo["store"]
        except (ValueError, KeyError, TypeError) as exc:  # replaced whole only, so someone edited it
            raise ConceptmineError(f"{self.path} is not a conceptmine run memo ({exc}): delete it") from None
        return memo

    def holds(self) -> dict | None:
        """The remembered no-change plan (``store``, ``recorded``: when) if nothing it depended on has changed."""
        if not self.usable():
            return None
        memo = self.recorded()
        if memo is None or memo["key"] != self.key:
            return None
        return memo if self.stamps(memo["paths"]) == memo["stamps"] else None

    def snapshot(self, attempts: int = 200) -> dict | None:
        """Stamps of :meth:`paths` once every stamped file is older than the file system's
        clock (touching ``CLOCK`` reads it); None if files keep changing."""
        clock = self.home / CLOCK
        clock.parent.mkdir(parents=True, exist_ok=True)
        paths = self.paths()
        for _ in range(attempts):
            clock.touch()
            now = clock.stat().st_mtime_ns
            stamps = self.stamps(paths)
            if newest_mtime(stamps) < now:
                return {"paths": paths, "stamps": stamps}
            time.sleep(0.005)
        return None

    def save(self, before: dict | None, store: str) -> bool:
        """Remember the plan made between ``before`` (:meth:`snapshot`) and now when nothing it
        depended on moved in between; written whole (temp file + rename). Whether it was saved."""
        if before is None or not self.usable() or self.snapshot() != before:
            return False
        memo = {"key": self.key, **before, "store": store, "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".uptodate.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(memo, fh, sort_keys=True)
        os.replace(tmp, self.path)
        return True
