"""Faults and bad inputs across stages: each ends in a clear error naming the file or scene, or in
a counted, logged skip, and never changes another scene's stored data or exposes half a file.

Cases tested elsewhere (not repeated here):

- corrupt / zero-byte / wrong-size image with ``on_bad_image="fail"``:
  test_foundation::test_bad_image_fails_when_asked
- missing image file flagged by `frames`: test_foundation::test_missing_image_is_flagged_and_named
- truncated image skipped by `detections` / `crops`:
  test_detections::test_corrupt_image_is_a_counted_skip_naming_the_file,
  test_crops::test_corrupt_image_skips_its_crops_naming_the_file
- truncated JSON table, missing table (resource level):
  test_foundation::test_malformed_table_is_named, test_missing_table_is_named
- unknown scene name: test_foundation::test_unknown_scene_names_the_scene
- crop of zero area: test_crops::test_small_zero_area_and_outside_boxes_are_counted_skips
- NaN / inf embedding: test_embeddings::test_non_finite_vectors_are_refused,
  test_nan_vector_fails_naming_scene_and_detection
- caption server refusing / timing out / answering malformed JSON:
  test_captions::test_openai_refused_connection_is_survived, test_openai_failing_server_is_survived,
  test_captions_asset_survives_a_down_server
- missing weights: test_detections::test_missing_weights_*,
  test_embeddings::test_missing_checkpoint_path_names_it, test_captions::test_qwen2_vl_missing_model_is_a_load_error
- two runs at once of different scenes and of one scene (both succeed):
  test_foundation::test_parallel_scene_runs_do_not_conflict

Here: bad images through the whole perception job, a scene without samples, malformed tables
in a run, failing stages leaving other scenes untouched, SIGKILL mid-write, and last writer wins.
"""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conceptmine_assets.assets.crops import crops
from conceptmine_assets.assets.detections import detections
from conceptmine_assets.assets.embeddings import embeddings
from conceptmine_assets.assets.frames import frames
from conceptmine_assets.errors import ConceptmineError, DatasetError, ModelLoadError
from conceptmine_assets.lib.synth import synth_dataroot
from conceptmine_assets.resources.detector import YoloDetector
from conceptmine_assets.resources.embedder import EmbedderResource
from conceptmine_assets.resources.open_clip_embedder import OpenClipEmbedder
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.resources.storage import StoreViews, ParquetIOManager
from conceptmine_assets.schemas import SCHEMAS
from conceptmine_assets_tests.helpers import HIGHWAY_SCENES, REAL_SCENE, REPO, materialize_scene, tiny_clip_config_path

PERCEPTION = [frames, detections, crops, embeddings]
GOOD, BAD = HIGHWAY_SCENES[0], HIGHWAY_SCENES[1]  # 2 frames and 1 frame, different image files


# ---------------------------------------------------------------- helpers


def tiny_embedder() -> EmbedderResource:
    config_path = tiny_clip_config_path()
    return OpenClipEmbedder(model="tiny_clip", pretrained=None, model_config_path=config_path, device="cpu")


def perception_resources(root: Path, store: Path, weights: Path) -> dict:
    return {
        "nuscenes": NuScenesResource(dataroot=str(root)),
        "detector": YoloDetector(weights=str(weights), device="cpu"),
        "embedder": tiny_embedder(),
        "io_manager": ParquetIOManager(base_path=str(store)),
    }


def snapshot(store: Path, scene: str) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime of every stored file of ``scene``."""
    return {str(p.relative_to(store)): (p.read_bytes(), p.stat().st_mtime_ns) for p in store.rglob(f"{scene}.parquet")}


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.materialization.asset_key.path[-1] == asset]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def warnings_logged(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [e.user_message for e in instance.all_logs(run_id) if e.level == logging.WARNING]


def frame_file(root: Path, scene: str) -> Path:
    """The CAM_FRONT image of the scene's first sample, in the private dataroot ``root``."""
    nuscenes = NuScenesResource(dataroot=str(root))
    sample = nuscenes.nusc.get("sample", nuscenes.scene(scene)["first_sample_token"])
    return root / nuscenes.nusc.get("sample_data", sample["data"]["CAM_FRONT"])["filename"]


def corrupt(path: Path, how: str) -> None:
    """Replace the symlink ``path`` by a bad file (never write through it into the fixture)."""
    data = path.read_bytes()
    path.unlink()
    if how == "truncated":
        path.write_bytes(data[: len(data) * 4 // 10])  # header intact, scan data cut
    elif how == "garbage":
        path.write_bytes(b"not a jpeg at all " * 64)
    elif how == "zero_bytes":
        path.write_bytes(b"")
    elif how == "wrong_size":
        Image.new("RGB", (640, 360), "gray").save(path, format="JPEG")
    elif how != "missing":
        raise ValueError(how)


@pytest.fixture
def highway_root(highway, tmp_path) -> Path:
    """A private copy of the highway clip (tables written, files symlinked)."""
    synth_dataroot([highway], tmp_path / "root")
    return tmp_path / "root"


# ---------------------------------------------------------------- bad images through the perception job


@pytest.mark.real_model
@pytest.mark.parametrize("how", ["truncated", "garbage", "zero_bytes", "missing", "wrong_size"])
def test_bad_image_is_a_counted_skip_through_perception(highway_root, yolo_tflite, store, instance, how):
    res = perception_resources(highway_root, store, yolo_tflite)
    assert materialize_scene(PERCEPTION, GOOD, instance, res).success
    good_before = snapshot(store, GOOD)
    assert len(good_before) == 4  # frames, detections, crops, embeddings
    image = frame_file(highway_root, BAD)
    corrupt(image, how)

    result = materialize_scene(PERCEPTION, BAD, instance, res)
    assert result.success
    frame = pq.read_table(store / "frames" / f"{BAD}.parquet").to_pylist()[0]
    assert frame["image_ok"] is False  # a truncated file too: frames checks the JPEG end marker
    assert str(image) in frame["image_error"] and metadata(result, "frames")["num_bad_images"] == 1
    if how == "truncated":
        assert "truncated" in frame["image_error"]
    det = metadata(result, "detections")
    assert (det["num_frames_in"], det["num_frames_out"], det["num_skipped_frames"]) == (1, 0, 1)
    assert image.name in det["skipped_frames"]
    assert any(image.name in w for w in warnings_logged(instance, result.run_id))
    for asset in ("detections", "crops", "embeddings"):
        table = pq.read_table(store / asset / f"{BAD}.parquet")
        assert table.num_rows == 0, asset
    assert snapshot(store, GOOD) == good_before


# ---------------------------------------------------------------- a scene without samples


def test_scene_without_samples_gives_empty_typed_partitions(highway_root, store, instance):
    table = highway_root / "v1.0-mini" / "scene.json"
    scenes = json.loads(table.read_text())
    empty = dict(scenes[0], token="e" * 32, name="scene-empty", nbr_samples=0)
    empty.update(first_sample_token="", last_sample_token="")
    table.write_text(json.dumps([*scenes, empty]))
    # no detector is loaded: with no frames there is nothing to predict (weights need not exist)
    res = perception_resources(highway_root, store, highway_root / "never-loaded.tflite")

    result = materialize_scene(PERCEPTION, "scene-empty", instance, res)
    assert result.success
    for asset in ("frames", "detections", "crops", "embeddings"):
        stored = pq.read_table(store / asset / "scene-empty.parquet")
        assert stored.num_rows == 0, asset
        assert stored.schema.names == SCHEMAS[asset].names, asset
    assert (metadata(result, "frames")["num_frames"], metadata(result, "frames")["num_samples"]) == (0, 0)
    assert metadata(result, "embeddings")["num_embeddings"] == 0
    logged = warnings_logged(instance, result.run_id)
    assert any("scene-empty: no keyframes" in w for w in logged) and any("no crops to embed" in w for w in logged)


# ---------------------------------------------------------------- malformed tables in a run


def _records(change):
    """A text → text table change from a change of the parsed records."""
    return lambda text: json.dumps(change(json.loads(text)))


def _truncate(text: str) -> str:
    return text[: len(text) // 2]


def _empty(text: str) -> str:
    return ""


def _drop_all(field: str):
    def change(records: list[dict]) -> list[dict]:
        for record in records:
            del record[field]
        return records

    return _records(change)


def _dangling_next(records: list[dict]) -> list[dict]:
    for record in records:
        record["next"] = "0" * 32  # a sample that does not exist
    return records


@pytest.mark.parametrize(
    "table, change",
    [
        ("sample_data", _truncate),
        ("ego_pose", _empty),
        ("sample_data", _records(lambda r: {"records": r})),
        ("sample", _drop_all("token")),
        ("sample_data", _drop_all("filename")),
        ("sample", _records(_dangling_next)),
    ],
    ids=["truncated", "empty_file", "object_not_list", "record_without_token", "record_without_field",
         "dangling_reference"],
)
def test_malformed_table_fails_the_run_naming_it(highway, tmp_path, store, instance, table, change):
    good_root = tmp_path / "good"
    synth_dataroot([highway], good_root)
    res = {"nuscenes": NuScenesResource(dataroot=str(good_root)), "io_manager": ParquetIOManager(base_path=str(store))}
    assert materialize_scene([frames], GOOD, instance, res).success
    before = snapshot(store, GOOD)
    assert len(before) == 1
    bad_root = tmp_path / "bad"  # another dataroot path: the devkit is cached per dataroot and process
    synth_dataroot([highway], bad_root)
    path = bad_root / "v1.0-mini" / f"{table}.json"
    path.write_text(change(path.read_text()))

    bad_res = {**res, "nuscenes": NuScenesResource(dataroot=str(bad_root))}
    with pytest.raises(DatasetError, match=re.escape(f"{table}.json")):
        materialize_scene([frames], BAD, instance, bad_res, raise_on_error=True)
    assert path.exists() and not (store / "frames" / f"{BAD}.parquet").exists()
    assert snapshot(store, GOOD) == before


# ---------------------------------------------------------------- a failing stage leaves other scenes alone


class NaNEmbedder(OpenClipEmbedder):
    """Returns NaN vectors (a model gone numerically wrong)."""

    def encode_images(self, images):
        return np.full((len(images), self.load().image_dim), np.nan, dtype=np.float32)


@pytest.mark.real_model
@pytest.mark.parametrize("fault", ["missing_weights", "nan_embedding"])
def test_failing_stage_writes_nothing_for_its_scene_and_keeps_others(
    highway_root, yolo_tflite, store, instance, tmp_path, fault
):
    res = perception_resources(highway_root, store, yolo_tflite)
    assert materialize_scene(PERCEPTION, GOOD, instance, res).success
    before = snapshot(store, GOOD)
    assert len(before) == 4
    if fault == "missing_weights":
        missing = tmp_path / "models" / "absent.tflite"
        bad_res = perception_resources(highway_root, store, missing)
        failing, error, named = "detections", ModelLoadError, str(missing)
    else:
        bad_res = {**res, "embedder": NaNEmbedder(**tiny_embedder().model_dump())}
        failing, error, named = "embeddings", ConceptmineError, f"scene {BAD}: "

    result = materialize_scene(PERCEPTION, BAD, instance, bad_res, raise_on_error=False)
    assert not result.success
    [failure] = result.get_step_failure_events()
    assert failure.step_key == failing
    assert error.__name__ in failure.step_failure_data.error.to_string()
    assert named in failure.step_failure_data.error.to_string()
    assert not (store / failing / f"{BAD}.parquet").exists()
    assert (store / "frames" / f"{BAD}.parquet").exists()  # the stages before it did their part
    assert snapshot(store, GOOD) == before


# ---------------------------------------------------------------- SIGKILL mid-write, concurrent writers

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
        partial = [p for p in (store / "frames").iterdir() if p.name != target.name]
        assert len(partial) == 1 and partial[0].name.startswith(f".{GOOD}.parquet.tmp-")  # being written
        assert (target.read_bytes() if target.exists() else None) == old
        assert _frames_rows(store) == (1 if existing else None)  # readers see the old version only
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
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
            if proc.poll() is None:
                proc.kill()
    assert pq.read_table(target).num_rows == 1  # the last rename wins
    assert not errors, errors[:3]
    assert seen and set(seen) <= {1, 6}  # every read saw one complete version
    assert [p.name for p in (store / "frames").iterdir()] == [target.name]  # no temp file left
