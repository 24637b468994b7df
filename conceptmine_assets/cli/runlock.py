"""One writer at a time: ``conceptmine run`` checks where it writes, then holds a run lock.

Before any work: ``$DAGSTER_HOME`` and, once the input checks passed (nothing is written for
bad input), the store (local) exist or can be created, accept a file, and have at least
``min_free_mb`` free (one line naming the path otherwise). Then an
exclusive ``fcntl.flock`` on ``$DAGSTER_HOME/conceptmine/run.lock`` and, for a local store, on
``<store>/.conceptmine-run.lock`` (hidden: never read as a table), taken before the Dagster
instance is opened, so first-time instance set-up (SQLite schema creation) never races. A second
``run`` exits with one line naming the holder (pid, host, start time) or, with ``--wait``, says
so and waits. The kernel drops a lock with its process, so a SIGKILLed run never leaves one
behind; what it leaves is a Dagster run in STARTED, which :func:`reap_orphaned_runs` marks failed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from conceptmine_assets.errors import ConceptmineError

if TYPE_CHECKING:
    import dagster as dg

LOCK_NAME = "run.lock"
STORE_LOCK_NAME = ".conceptmine-run.lock"
PID_TAG, HOST_TAG = "conceptmine/pid", "conceptmine/host"
LAUNCHED_BY_TAG = "conceptmine/launched_by"


class NotWritable(ConceptmineError):
    """A place ``conceptmine run`` writes to cannot take a file, or is (nearly) full."""


class LockHeld(ConceptmineError):
    """Another ``conceptmine run`` holds the run lock."""


def describe_os_error(exc: OSError) -> str:
    """``No space left on device (ENOSPC)``: the reason and the errno's name."""
    name = errno.errorcode.get(exc.errno or 0, "")
    return f"{exc.strerror or exc}{f' ({name})' if name else ''}"


def check_writable(path: Path, what: str, min_free_mb: float, probe_in: str = "") -> None:
    """``path`` takes a file (written, synced, removed; in its sub-folder ``probe_in`` if that
    exists) and has room. A folder that does not exist yet is not created (nothing is written
    before the run's input checks): its nearest existing ancestor must take the file."""
    target = path / probe_in if (path / probe_in).is_dir() else path
    while not target.exists() and target != target.parent:
        target = target.parent
    path = target
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".conceptmine-probe-") as probe:
            probe.write(b"x")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise NotWritable(f"{what} {path} is not writable: {describe_os_error(exc)}; "
                          "fix its permissions or mount, or point it elsewhere") from None
    free_mb = shutil.disk_usage(path).free / 2**20
    if free_mb < min_free_mb:
        raise NotWritable(f"{what} {path} has {free_mb:.1f} MB free, under the {min_free_mb:g} MB a run needs "
                          "(min_free_mb); free some space or point it elsewhere")


def is_local(store: str) -> bool:
    return "://" not in store or store.startswith("file://")


def local_path(store: str) -> Path:
    return Path(store.removeprefix("file://")).expanduser().resolve()


def check_home(home: Path, min_free_mb: float) -> None:
    """``$DAGSTER_HOME`` takes a file and has room (probed in its ``conceptmine/`` folder, which
    the no-change memo ignores)."""
    check_writable(home, "DAGSTER_HOME", min_free_mb, probe_in="conceptmine")


def check_store(store: str, min_free_mb: float) -> None:
    """A local store exists or is created, takes a file and has room (call once the input is
    known to be good: it creates the store's folder)."""
    if is_local(store):
        check_writable(local_path(store), "the store", min_free_mb)


def preflight_writable(home: Path, store: str, min_free_mb: float) -> None:
    """Both checks of the module docstring."""
    check_home(home, min_free_mb)
    check_store(store, min_free_mb)


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "a process that has not written its details yet"
    started = dt.datetime.fromisoformat(info["started"])
    age = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
    return (f"pid {info.get('pid')} on {info.get('host')}, started {started.astimezone():%Y-%m-%d %H:%M:%S} "
            f"({age:.0f} s ago): {info.get('command', 'conceptmine run')}")


def _acquire(path: Path, wait: bool, out: Callable[[str], object]) -> int:
    """Lock ``path`` through a read-only descriptor (flock needs no write access, and a file
    held open for writing would keep its file system from being remounted read-only), then
    write the holder's details with a short-lived one."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise LockHeld(f"another conceptmine run is writing here (lock {path}, held by {_holder(path)}); "
                               "wait for it to finish or stop it, or re-run with --wait") from None
            out(f"waiting for the run lock {path} (held by {_holder(path)}) ...\n")
            fcntl.flock(fd, fcntl.LOCK_EX)
        details = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(["conceptmine", *sys.argv[1:]]),
                   "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        path.write_text(json.dumps(details))
        return fd
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def run_lock(home: Path, store: str, wait: bool = False, out: Callable[[str], object] = sys.stdout.write) -> Iterator[None]:
    """Hold the instance's and the (local) store's run locks for the block (taken after the input
    checks, so creating the store's folder here writes nothing a bad input should have stopped)."""
    paths = [home / "conceptmine" / LOCK_NAME] + ([local_path(store) / STORE_LOCK_NAME] if is_local(store) else [])
    held: list[tuple[Path, int]] = []
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            held.append((path, _acquire(path, wait, out)))
        yield
    finally:
        for path, fd in reversed(held):
            with contextlib.suppress(OSError):
                path.write_text("")  # no stale details for the next reader
            os.close(fd)  # closing drops the flock


def run_tags() -> dict[str, str]:
    """Tags of every Dagster run ``conceptmine run`` launches: who runs it, for the next run."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def reap_orphaned_runs(instance: dg.DagsterInstance, out: Callable[[str], object] = sys.stdout.write) -> list[str]:
    """Mark failed the runs a killed ``conceptmine run`` on this host left in progress.

    Call with the run lock held: no other ``conceptmine run`` of this instance is alive then, so
    such a run can only be left over by a process that died (SIGKILL, power loss). Runs launched
    otherwise (the UI, automation) or on another host are left alone."""
    import dagster as dg

    host = socket.gethostname()
    live = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.CANCELING,
            dg.DagsterRunStatus.NOT_STARTED]
    runs = instance.get_runs(dg.RunsFilter(statuses=live, tags={LAUNCHED_BY_TAG: "conceptmine run", HOST_TAG: host}))
    reaped = []
    for run in runs:
        pid = run.tags.get(PID_TAG, "?")
        instance.report_run_failed(
            run, message=f"left {run.status.value} by conceptmine run pid {pid} on {host}, which died without "
            "finishing it (e.g. SIGKILL); marked failed by the next conceptmine run",
        )
        out(f"run {run.run_id[:8]} ({run.job_name}) was left {run.status.value} by a killed conceptmine run "
            f"(pid {pid}); marked failed\n")
        reaped.append(run.run_id)
    return reaped


def cancel_own_runs(instance: dg.DagsterInstance, why: str) -> list[str]:
    """Mark CANCELED the runs this process launched that are still in progress or were just
    failed by an interruption (Dagster marks an interrupted run FAILURE unless a termination
    was requested first; nothing could request it while its signal handler ran)."""
    import dagster as dg

    mine = run_tags()
    statuses = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.FAILURE]
    runs = instance.get_runs(dg.RunsFilter(statuses=statuses, tags={PID_TAG: mine[PID_TAG], HOST_TAG: mine[HOST_TAG]}))
    canceled = []
    for run in runs:
        if run.status == dg.DagsterRunStatus.FAILURE and run.tags.get("dagster/failure_reason") != "UNEXPECTED_TERMINATION":
            continue  # a real failure stays one
        instance.report_run_canceled(run, message=why)
        canceled.append(run.run_id)
    return canceled
