"""Faults and bad inputs in a run: each ends in a clear error naming the file or scene, or in a
counted, logged skip, and never changes another scene's stored data.

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
- NaN / inf embedding: test_embeddings_asset::test_non_finite_vectors_are_refused,
  test_nan_vector_fails_naming_scene_and_detection
- caption server refusing / timing out / answering malformed JSON:
  test_captioner_openai::test_openai_refused_connection_is_survived, test_openai_failing_server_is_survived,
  test_captions_asset::test_captions_asset_survives_a_down_server
- missing weights: test_detections::test_missing_weights_*, test_embedder::test_missing_checkpoint_path_names_it,
  test_captioner_qwen2_vl::test_qwen2_vl_missing_model_is_a_load_error
- two runs at once of different scenes and of one scene (both succeed):
  test_foundation::test_parallel_scene_runs_do_not_conflict
- SIGKILL mid-write, last writer wins: test_faults_atomic_writes

Here: bad images through the whole perception job, a scene without samples, malformed tables
in a run, and failing stages leaving other scenes untouched.
"""

import json
import logging
import re
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
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.resources.open_clip_embedder import OpenClipEmbedder
from conceptmine_assets.resources.storage import ParquetIOManager
from conceptmine_assets.schemas import SCHEMAS
from conceptmine_assets_tests.helpers import HIGHWAY_SCENES, materialize_scene, tiny_clip_config_path

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
