"""Stored files are never half-written: a writer SIGKILLed mid-write leaves the old version (or
nothing) for readers, and of two concurrent writers of one scene the last rename wins atomically.

Each writer is a subprocess materialising `frames` with ``pq.write_table`` slowed down, so the test
can act while a file is being written.
"""

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conceptmine_assets.assets.frames import frames
from conceptmine_assets.lib.integrity import is_record, read_record
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.resources.storage import ParquetIOManager, StoreViews
from conceptmine_assets_tests.helpers import HIGHWAY_SCENES, REAL_SCENE, REPO, materialize_scene

GOOD = HIGHWAY_SCENES[0]  # 2 frames


# Materialises `frames` of one scene; pq.write_table is slowed down so the parent can act mid-write:
#   half: write half the Parquet bytes, signal, then hang (to be SIGKILLed)
#   hold: write the whole file, signal, then wait for <flags>/go before the atomic rename
#   none: write normally
_WRITER = """
import io, sys, time
from pathlib import Path
import dagster as dg
import pyarrow.parquet as pq
from conceptmine_assets.assets.frames import frames
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.resources.storage import ParquetIOManager

dataroot, store, scene, cameras, mode, flags = sys.argv[1:]
real_write = pq.write_table

def slow_write(table, where, **kwargs):
    buf = io.BytesIO()
    real_write(table, buf, **kwargs)
    data = buf.getvalue()
    if mode == "half":
        where.write(data[: len(data) // 2])
        where.flush()
        Path(flags, "ready").touch()
        time.sleep(600)
    where.write(data)
    if mode == "hold":
        where.flush()
        Path(flags, "ready").touch()
        while not Path(flags, "go").exists():
            time.sleep(0.02)

pq.write_table = slow_write
with dg.DagsterInstance.ephemeral() as instance:
    instance.add_dynamic_partitions("nuscenes_scenes", [scene])
    result = dg.materialize(
        [frames], partition_key=scene, instance=instance,
        resources={"nuscenes": NuScenesResource(dataroot=dataroot), "io_manager": ParquetIOManager(base_path=store)},
        run_config={"ops": {"frames": {"config": {"cameras": cameras.split(",")}}}},
    )
sys.exit(0 if result.success else 1)
"""


def start_writer(dataroot: Path, store: Path, scene: str, cameras: list[str], mode: str, flags: Path):
    flags.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-c", _WRITER, str(dataroot), str(store), scene, ",".join(cameras), mode, str(flags)]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"writer exited early: {proc.stdout.read().decode()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"writer never reached {path.name}")
        time.sleep(0.05)


def reap(proc: subprocess.Popen) -> None:
    """``proc`` killed if still running, waited for, its output pipe closed."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
    proc.stdout.close()


def all_parquet_files_open(store: Path) -> list[Path]:
    """Every ``*.parquet`` under the store (what DuckDB's views glob) reads completely."""
    files = sorted(store.rglob("*.parquet"))
    for path in files:
        pq.read_table(path)
    return files


def _frames_rows(store: Path) -> int | None:
    duck = StoreViews(base_path=str(store))
    if "frames" not in duck.tables():
        return None
    return int(duck.query("SELECT count(*) AS n FROM frames")["n"][0])


@pytest.mark.slow
@pytest.mark.parametrize("existing", [True, False], ids=["overwrite", "first_write"])
def test_sigkill_mid_write_never_exposes_a_half_written_file(highway_root, tmp_path, store, instance, existing):
    nuscenes = NuScenesResource(dataroot=str(highway_root))
    res = {"nuscenes": nuscenes, "io_manager": ParquetIOManager(base_path=str(store))}
    target = store / "frames" / f"{GOOD}.parquet"
    if existing:  # an old, complete version: one of the scene's two keyframes
        run_config = {"ops": {"frames": {"config": {"max_frames": 1}}}}
        assert materialize_scene([frames], GOOD, instance, res, run_config=run_config).success
    old = target.read_bytes() if existing else None

    proc = start_writer(highway_root, store, GOOD, ["CAM_FRONT"], "half", tmp_path / "flags")
    try:
        wait_for(tmp_path / "flags" / "ready", proc)
        partial = [p for p in (store / "frames").iterdir() if p.name != target.name and not is_record(p)]
        assert len(partial) == 1 and partial[0].name.startswith(f".{GOOD}.parquet.tmp-")  # being written
        assert (target.read_bytes() if target.exists() else None) == old
        assert _frames_rows(store) == (1 if existing else None)  # readers see the old version only
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        reap(proc)
    assert proc.returncode == -signal.SIGKILL

    assert (target.read_bytes() if target.exists() else None) == old
    assert all_parquet_files_open(store) == ([target] if existing else [])
    assert _frames_rows(store) == (1 if existing else None)

    assert materialize_scene([frames], GOOD, instance, res).success  # the re-run
    clean_store = tmp_path / "clean"
    clean = {**res, "io_manager": ParquetIOManager(base_path=str(clean_store))}
    assert materialize_scene([frames], GOOD, instance, clean).success
    assert pq.read_table(target).equals(pq.read_table(clean_store / "frames" / f"{GOOD}.parquet"))
    assert all_parquet_files_open(store) == [target] and _frames_rows(store) == 2


@pytest.mark.slow
def test_concurrent_writers_of_one_scene_last_writer_wins_atomically(real_slice, tmp_path, store):
    target = store / "frames" / f"{REAL_SCENE}.parquet"
    seen, errors, stop = [], [], threading.Event()
    duck = StoreViews(base_path=str(store))

    def read_once(i: int) -> int:
        """Rows of the scene's file, read as the pipeline reads it: one open file (the IO manager)
        or a DuckDB view. (``pq.read_table(path)`` may open the path twice and mix two versions.)"""
        if i % 2:
            with target.open("rb") as fh:
                return pq.read_table(fh).num_rows
        return int(duck.query("SELECT count(*) AS n, sum(length(image_path)) AS s FROM frames")["n"][0])

    def reader():
        i = 0
        while not stop.is_set():
            i += 1
            existed = target.exists()  # before the first rename there is neither file nor view
            try:
                seen.append(read_once(i))
            except Exception as exc:  # noqa: BLE001 - once the file exists, any failure is a torn read
                if existed:
                    errors.append(repr(exc))
            time.sleep(0.01)  # leave the two cores to the writers

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    procs = []
    try:
        # A writes 1 camera and holds before its rename; B writes all 6 and finishes first.
        slow = start_writer(real_slice, store, REAL_SCENE, ["CAM_FRONT"], "hold", tmp_path / "a")
        procs.append(slow)
        wait_for(tmp_path / "a" / "ready", slow)
        cameras = ["CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"]
        fast = start_writer(real_slice, store, REAL_SCENE, cameras, "none", tmp_path / "b")
        procs.append(fast)
        assert fast.wait(timeout=120) == 0, fast.stdout.read().decode()[-3000:]
        assert pq.read_table(target).num_rows == 6
        (tmp_path / "a" / "go").touch()
        assert slow.wait(timeout=120) == 0, slow.stdout.read().decode()[-3000:]
    finally:
        stop.set()
        thread.join(timeout=10)
        for proc in procs:
            reap(proc)
    assert pq.read_table(target).num_rows == 1  # the last rename wins
    assert not errors, errors[:3]
    assert seen and set(seen) <= {1, 6}  # every read saw one complete version
    assert [p.name for p in (store / "frames").iterdir() if not is_record(p)] == [target.name]  # no temp file left
    assert read_record(target).sha256 == hashlib.sha256(target.read_bytes()).hexdigest()  # the winner's record
