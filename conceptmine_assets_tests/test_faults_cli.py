"""Faults of `conceptmine run`, through the real command line in subprocesses: each ends with one
line naming the cause and the path (no traceback), leaves no Dagster run in progress, and a
re-run gives a store byte-identical to a clean run's (see fault_helpers.UNSTABLE for the few
files that are not byte-stable between two clean runs).

Faults: SIGINT / SIGTERM / SIGKILL at three points of a run, two runs at once, a run lock held,
a full disk, a read-only store (before and during a run), a read-only DAGSTER_HOME, too little
free space, and stored files truncated, filled with garbage, bit-flipped, deleted or replaced
together with their record (`conceptmine verify` names each; `run` recomputes it). The full disk and read-only cases mount a small tmpfs (they skip, saying why, where
mounting is not permitted).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest

from conceptmine_assets.cli.runlock import run_lock
from conceptmine_assets_tests.fault_helpers import (
    Deployment,
    demo_dataroot,
    new_deployment,
    one_line_error,
    outputs,
    send,
    the_error_line,
    wait_for_line,
)


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory) -> Path:
    return demo_dataroot(tmp_path_factory.mktemp("faults") / "dataroot")


@pytest.fixture(scope="module")
def clean(dataroot, tmp_path_factory) -> Deployment:
    """One uninterrupted run on a fresh instance: the reference every recovery is compared with."""
    dep = new_deployment(tmp_path_factory.mktemp("clean"), dataroot)
    proc = dep.cli("run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dep


def runs_by_status(dep: Deployment) -> dict[str, list[str]]:
    """Run ids of the deployment's instance by status name."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(dep.home))
        with dg.DagsterInstance.get() as instance:
            found: dict[str, list[str]] = {}
            for run in instance.get_runs():
                found.setdefault(run.status.value, []).append(run.run_id)
            return found


def assert_recovers(dep: Deployment, clean: Deployment) -> subprocess.CompletedProcess:
    """A plain re-run succeeds, nothing is left in progress, `verify` accepts the store, and the
    store equals the clean run's."""
    proc = dep.cli("run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    statuses = runs_by_status(dep)
    assert not set(statuses) & {"STARTED", "STARTING", "NOT_STARTED", "CANCELING"}, statuses
    verified = dep.cli("verify")
    assert verified.returncode == 0 and "match their records" in verified.stdout, verified.stdout + verified.stderr
    assert outputs(dep.store) == outputs(clean.store)
    return proc


# ---------------------------------------------------------------- the run lock


def test_a_held_lock_stops_a_second_run_with_one_line_naming_the_holder(dataroot, tmp_path):
    dep = new_deployment(tmp_path / "dep", dataroot)
    with run_lock(dep.home, str(dep.store), out=lambda _: None):
        line = one_line_error(dep.cli("run"))
    assert "another conceptmine run is writing here" in line and f"pid {os.getpid()}" in line, line
    assert str(dep.home / "conceptmine" / "run.lock") in line
    assert [p.name for p in dep.store.iterdir()] == [".conceptmine-run.lock"]  # nothing else written
    assert not (dep.home / "storage").exists()  # the instance was not even opened


def test_wait_waits_for_the_lock_then_runs(dataroot, tmp_path):
    dep = new_deployment(tmp_path / "dep", dataroot)
    with run_lock(dep.home, str(dep.store), out=lambda _: None):
        proc, out = dep.start("run", "--wait")
        wait_for_line(out, proc, "waiting for the run lock")
        time.sleep(0.5)
        assert proc.poll() is None and "registered" not in out.read_text()  # still waiting
    wait_for_line(out, proc, "registered")  # it went on once the lock was free ...
    assert send(proc, "SIGINT") == 130  # ... (and stops cleanly when asked)
    assert "interrupted by SIGINT" in the_error_line(Path(f"{out}.err").read_text())


@pytest.mark.slow
def test_two_runs_at_once_on_a_fresh_instance(dataroot, clean, tmp_path):
    dep = new_deployment(tmp_path / "dep", dataroot)
    first, out1 = dep.start("run", out="a.txt")
    second, out2 = dep.start("run", out="b.txt")
    codes = sorted([first.wait(timeout=600), second.wait(timeout=600)])
    assert codes == [0, 1], (out1.read_text(), out2.read_text())
    errors = Path(f"{out1}.err").read_text() + Path(f"{out2}.err").read_text()
    assert "another conceptmine run is writing here" in the_error_line(errors)
    assert "IntegrityError" not in errors and "already exists" not in errors
    assert outputs(dep.store) == outputs(clean.store)


# ---------------------------------------------------------------- signals at three points

POINTS = {  # what the run is doing when the signal arrives: (line of stdout to wait for, occurrences)
    "perception": ("registered", 1),  # the first run (observe, then perception) is executing
    "scenes": ("perception_job", 1),  # perception done: the outlier reference and scene stages
    "global": ("mining_scene_job", 1),  # the global stages (split, clusters, gallery, index)
}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("point", list(POINTS))
def test_a_signal_mid_run_ends_cleanly_and_a_re_run_recovers(clean, tmp_path, how, point):
    dep = clean.copy_to(tmp_path / "dep")
    proc, out = dep.start("run", "--force")
    wait_for_line(out, proc, *POINTS[point])
    code = send(proc, how)
    stderr = Path(f"{out}.err").read_text()
    if how == "SIGKILL":
        assert code == -9
        left = runs_by_status(dep)
        recovered = assert_recovers(dep, clean)
        if "STARTED" in left:  # killed inside a run: the next run marks it failed, saying so
            assert "was left STARTED by a killed conceptmine run" in recovered.stdout
            assert set(left["STARTED"]) <= set(runs_by_status(dep).get("FAILURE", []))
        return
    assert code == (130 if how == "SIGINT" else 143), stderr[-3000:]
    line = the_error_line(stderr)
    assert f"interrupted by {how}" in line and "re-run resumes" in line, line
    statuses = runs_by_status(dep)
    assert not set(statuses) & {"STARTED", "STARTING", "CANCELING"}, statuses
    if "cancelled" in line:  # stopped inside a run: that run is CANCELED, not FAILURE
        run = line.split("run ")[1].split(" cancelled")[0]
        assert any(r.startswith(run) for r in statuses.get("CANCELED", [])), (line, statuses)
    assert_recovers(dep, clean)


# ---------------------------------------------------------------- full disk, read-only store and home


@contextlib.contextmanager
def tmpfs(path: Path, size_kb: int, read_only: bool = False):
    """A tmpfs of ``size_kb`` KiB mounted on ``path`` for the block (skip where not permitted)."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size_kb}k" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, read_only: bool) -> None:
    """Remount ``path`` read-only or read-write (retried: it fails while a file is open for writing)."""
    for _ in range(200):
        done = subprocess.run(["mount", "-o", f"remount,{'ro' if read_only else 'rw'}", str(path)], capture_output=True)
        if done.returncode == 0:
            return
        time.sleep(0.02)
    raise AssertionError(f"cannot remount {path}: {done.stderr.decode()}")


@pytest.mark.slow
def test_a_full_disk_is_one_line_naming_the_file_and_a_re_run_recovers(clean, tmp_path):
    dep = clean.copy_to(tmp_path / "dep")
    for child in list(dep.store.iterdir()):
        subprocess.run(["rm", "-rf", str(child)], check=True)
    with tmpfs(dep.store, 4096):
        size = sum(p.stat().st_size for p in (clean.store).rglob("*") if p.is_file())
        filler = dep.store / ".filler"
        filler.write_bytes(b"\0" * (4096 * 1024 - size // 2))  # room for about half the store
        proc = dep.cli("run", "--force", CONCEPTMINE_MIN_FREE_MB="0")  # let it start: the disk fills mid-run
        line = the_error_line(proc.stderr)
        assert proc.returncode == 1 and "No space left on device (ENOSPC)" in line and str(dep.store) in line, line
        assert "free space" in line and "re-run" in line, line
        assert not [p for p in dep.store.rglob(".*.tmp-*")]  # no half-written temporary left
        filler.unlink()
        assert_recovers(dep, clean)


@pytest.mark.slow
def test_a_read_only_store_stops_before_any_work(dataroot, tmp_path):
    dep = new_deployment(tmp_path / "dep", dataroot)
    with tmpfs(dep.store, 1024, read_only=True):
        line = one_line_error(dep.cli("run"))
    assert f"the store {dep.store} is not writable: Read-only file system (EROFS)" in line, line
    assert not (dep.home / "storage").exists()  # no partition registered, no run recorded


@pytest.mark.slow
def test_a_store_turned_read_only_mid_run_is_one_line_and_a_re_run_recovers(clean, tmp_path):
    dep = clean.copy_to(tmp_path / "dep")
    for child in list(dep.store.iterdir()):
        subprocess.run(["rm", "-rf", str(child)], check=True)
    with tmpfs(dep.store, 64 * 1024):
        subprocess.run(["cp", "-a", f"{clean.store}/.", str(dep.store)], check=True)
        proc, out = dep.start("run", "--force")
        wait_for_line(out, proc, "perception_job")
        remount(dep.store, read_only=True)
        code = proc.wait(timeout=600)
        line = the_error_line(Path(f"{out}.err").read_text())
        assert code == 1 and "Read-only file system (EROFS)" in line and str(dep.store) in line, line
        remount(dep.store, read_only=False)
        assert_recovers(dep, clean)


@pytest.mark.slow
def test_a_read_only_dagster_home_stops_before_any_work(dataroot, tmp_path):
    dep = new_deployment(tmp_path / "dep", dataroot)
    config = (dep.home / "dagster.yaml").read_text()
    with tmpfs(dep.home, 1024):
        (dep.home / "dagster.yaml").write_text(config)
        remount(dep.home, read_only=True)
        line = one_line_error(dep.cli("run"))
    assert f"DAGSTER_HOME {dep.home} is not writable: Read-only file system (EROFS)" in line, line


def test_too_little_free_space_stops_before_any_work(dataroot, tmp_path):
    dep = new_deployment(tmp_path / "dep", dataroot)
    line = one_line_error(dep.cli("run", CONCEPTMINE_MIN_FREE_MB=str(10**12)))
    assert f"DAGSTER_HOME {dep.home} has" in line and "MB free, under the" in line, line  # checked first
    assert not (dep.home / "storage").exists() and not dep.store.exists()


# ---------------------------------------------------------------- damaged stored files


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:3000])


def _garbage(path: Path) -> None:
    path.write_bytes(b"garbage!" * 100)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for offset in range(len(data) // 3, len(data) // 3 + 4):  # 4 bytes inside the data pages
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _delete(path: Path) -> None:
    path.unlink()


def _forge(path: Path) -> None:
    """Replace the file and rewrite its record beside it to match (only the instance's record differs)."""
    import hashlib
    import json

    from conceptmine_assets.lib.integrity import record_path

    data = path.read_bytes()[:-8] + b"PAR1PAR1"
    path.write_bytes(data)
    record_path(path).write_text(json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}))


DAMAGE = {
    "truncated": ("embeddings/scene-0061.parquet", _truncate, "truncated"),
    "garbage": ("detections/scene-0061.parquet", _garbage, "truncated"),
    "bit_flip": ("concept_scores/scene-0061.parquet", _flip, "altered"),
    "deleted": ("crops/scene-udacity-0001.parquet", _delete, "missing"),
    "split_list": ("splits/mined.txt", _garbage, "grown"),
    "forged_with_record": ("outlier_flags/scene-0061.parquet", _forge, "altered"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_file_is_named_by_verify_and_recomputed_by_run(clean, tmp_path, case):
    relative, spoil, said = DAMAGE[case]
    dep = clean.copy_to(tmp_path / "dep")
    path = dep.store / relative
    spoil(path)
    verified = dep.cli("verify")
    assert verified.returncode == 1, verified.stdout
    assert any(str(path) in line and said in line for line in verified.stdout.splitlines()), verified.stdout
    ran = dep.cli("run")
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert f"stale: {path} does not match its record ({said}" in ran.stdout, ran.stdout
    assert_recovers(dep, clean)
