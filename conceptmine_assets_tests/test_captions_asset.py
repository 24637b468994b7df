"""The `captions` asset: which crops go to the VLM within the budget, the template / openai /
qwen2_vl backends in a run, a down server, missing flags, an empty scene, several scenes in a run."""

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conceptmine_assets.assets.captions import CaptionsConfig, captions, crop_table, select_for_vlm
from conceptmine_assets.lib.vocabulary import load_vocabulary
from conceptmine_assets.partitions import scene_partitions
from conceptmine_assets.resources.captioner import CaptionerResource, TemplateCaptioner
from conceptmine_assets.resources.offline_embedder import OfflineEmbedder
from conceptmine_assets.resources.qwen2_vl_captioner import Qwen2VLCaptioner
from conceptmine_assets.resources.storage import ParquetIOManager
from conceptmine_assets.resources.vocabulary import VocabularyResource
from conceptmine_assets.schemas import CAPTIONS, CROPS, DETECTIONS, OUTLIER_FLAGS
from conceptmine_assets_tests.fake_openai import closed_port_url, openai, server_url
from conceptmine_assets_tests.helpers import jpeg, materialize_scene, write_table

SCENE = "scene-test-0001"


KEYS = dict(scene_name=SCENE, sample_token="s0", sample_data_token="sd0", channel="CAM_FRONT")
# detection_id, class_name, confidence, is_outlier, detectors, category, attributes
CROP_SPECS = [
    ("d-car", "car", 0.9, False, [], "vehicle.car", ["vehicle.moving"]),
    ("d-truck", "truck", 0.8, False, [], "vehicle.truck", ["vehicle.parked"]),
    ("d-odd-car", "car", 0.7, True, ["iforest", "lof"], "vehicle.car", ["vehicle.stopped"]),
    ("d-ped", "pedestrian", 0.95, False, [], "human.pedestrian.adult", ["pedestrian.moving"]),
    ("d-other", "others", 0.6, False, [], "movable_object.pushable_pullable", []),
    ("d-bus", "bus", 0.5, True, ["knn"], "vehicle.bus.rigid", []),
]


def _write_table(store: Path, asset: str, df: pd.DataFrame) -> None:
    write_table(store, asset, df, SCENE)


def _upstream_frames(specs=CROP_SPECS) -> dict[str, pd.DataFrame]:
    crops, dets, flags = [], [], []
    for i, (det, cls, conf, out, detectors, cat, attrs) in enumerate(specs):
        base = {**KEYS, "detection_id": det, "class_name": cls}
        box = dict(x1=10.0, y1=10.0, x2=50.0, y2=40.0)
        crops.append({**base, **box, "confidence": conf, "crop_x1": 5, "crop_y1": 5, "crop_x2": 55, "crop_y2": 45,
                      "image_jpeg": jpeg(50, 40, i), "lidar_points": None, "lidar_median_depth": None,
                      "brightness": 0.5, "overexposed_frac": 0.0, "dark_frac": 0.0, "blur_laplacian_var": 100.0})
        dets.append({**base, **box, "detector": "annotations", "source_class": cat, "confidence": conf,
                     "annotation_token": f"ann-{det}", "category": cat, "attributes": attrs, "visibility": "4"})
        flags.append({**base, "iforest_score": 0.1, "iforest_flag": "iforest" in detectors, "lof_score": 0.1,
                      "lof_flag": "lof" in detectors, "knn_score": 0.1, "knn_flag": "knn" in detectors,
                      "is_outlier": out, "outlier_detectors": detectors, "quality_flags": [],
                      "is_quality_outlier": False})
    return {
        "crops": pd.DataFrame(crops, columns=CROPS.names),
        "detections": pd.DataFrame(dets, columns=DETECTIONS.names),
        "outlier_flags": pd.DataFrame(flags, columns=OUTLIER_FLAGS.names),
    }


@pytest.fixture
def upstream_store(store: Path) -> Path:
    for name, df in _upstream_frames().items():
        _write_table(store, name, df)
    return store


OFFLINE_EMBEDDER = OfflineEmbedder(device="cpu")  # caption text embeddings (MiniLM)
UPSTREAM = [dg.AssetSpec(n, partitions_def=scene_partitions) for n in ("crops", "detections", "outlier_flags")]


def _without_vectors(schema):
    """The schema less caption_embedding (stored as a fixed-size list, declared as a list)."""
    return schema.remove(schema.get_field_index("caption_embedding"))


def _materialize(store: Path, instance, captioner: CaptionerResource, config: dict | None = None):
    result = materialize_scene(
        [captions, *UPSTREAM], SCENE, instance,
        {"io_manager": ParquetIOManager(base_path=str(store)), "captioner": captioner,
         "vocabulary": VocabularyResource(), "embedder": OFFLINE_EMBEDDER},
        run_config={"ops": {"captions": {"config": config or {}}}},
        selection=[captions],
    )
    assert result.success
    md = result.asset_materializations_for_node("captions")[0].metadata
    return pq.read_table(store / "captions" / f"{SCENE}.parquet"), md


def test_selection_order_and_budget():
    frames = _upstream_frames()
    table = crop_table(frames["crops"], frames["detections"], frames["outlier_flags"])
    chosen, over, why = select_for_vlm(table, load_vocabulary(), CaptionsConfig(max_per_scene=3))
    ids = table["detection_id"].tolist()
    # outliers first (2 detectors before 1), then target, then rare, then unknown; common inliers never
    assert [ids[p] for p in chosen] == ["d-odd-car", "d-bus", "d-truck"]
    assert [ids[p] for p in over] == ["d-other"]
    assert dict(why) == {"outlier": 2, "target": 1}
    chosen, _, _ = select_for_vlm(table, load_vocabulary(), CaptionsConfig(max_per_scene=None, caption_outliers=False))
    assert [ids[p] for p in chosen] == ["d-truck", "d-bus", "d-other"]


def test_captions_asset_template_backend(upstream_store, instance):
    table, md = _materialize(upstream_store, instance, TemplateCaptioner(), {"max_per_scene": 3})
    assert _without_vectors(table.schema) == _without_vectors(CAPTIONS)
    df = table.to_pandas().set_index("detection_id")
    assert df.index.tolist() == [s[0] for s in CROP_SPECS]  # one row per crop, crop order
    assert df["status"].to_dict() == {"d-car": "class_name", "d-truck": "ok", "d-odd-car": "ok",
                                      "d-ped": "class_name", "d-other": "class_name", "d-bus": "ok"}
    assert df.loc["d-truck", "caption"] == "a parked truck"
    assert df.loc["d-odd-car", "caption"] == "a stopped car"
    assert df.loc["d-ped", "caption"] == "pedestrian"
    assert df.loc["d-other", "caption"] == "pushable or pullable object"  # "others": its category's noun
    assert df.loc["d-truck", "backend"] == "template" and pd.isna(df.loc["d-car", "backend"])
    assert (md["num_ok"].value, md["num_class_name"].value, md["num_failed"].value) == (3, 3, 0)
    # every caption is stored with its text embedding, as the embedder encodes it
    expected = OFFLINE_EMBEDDER.encode_texts(df["caption"].tolist())
    assert np.allclose(np.stack(df["caption_embedding"].to_numpy()), expected, atol=1e-5)
    assert set(df["text_model_id"]) == {OFFLINE_EMBEDDER.text_model_id}
    assert md["num_over_budget"].value == 1 and md["num_sent_to_captioner"].value == 3
    # idempotent: a re-run rewrites the same table
    again, _ = _materialize(upstream_store, instance, TemplateCaptioner(), {"max_per_scene": 3})
    assert again.equals(table)  # no timings in stored rows


def test_captions_asset_survives_a_down_server(upstream_store, instance):
    captioner = openai(closed_port_url(), max_attempts=2)
    table, md = _materialize(upstream_store, instance, captioner, {"max_per_scene": 10})
    df = table.to_pandas().set_index("detection_id")
    sent = ["d-truck", "d-odd-car", "d-other", "d-bus"]
    assert set(df.loc[sent, "status"]) == {"failed"} and set(df.loc[sent, "attempts"]) == {2}
    assert all("cannot reach" in e for e in df.loc[sent, "error"])
    assert df.loc["d-bus", "caption"] == "bus"  # failed crops keep their class name as caption
    assert md["num_failed"].value == 4 and "cannot reach" in md["failures"].value


def test_captions_asset_with_openai_server(upstream_store, instance, server):
    table, md = _materialize(upstream_store, instance, openai(server_url(server)), {"max_per_scene": 2})
    df = table.to_pandas().set_index("detection_id")
    assert df.loc["d-odd-car", "vlm_class"] == "construction_vehicle"
    assert df.loc["d-bus", "description"] == "a yellow excavator"
    assert md["num_ok"].value == 2 and len(server.requests) == 2
    assert md["captions_per_s"].value > 0


def test_captions_asset_with_qwen2_vl_twin(upstream_store, instance, tiny_qwen):
    captioner = Qwen2VLCaptioner(model=str(tiny_qwen), device="cpu", max_new_tokens=8)
    table, md = _materialize(upstream_store, instance, captioner, {"max_per_scene": 2})
    df = table.to_pandas().set_index("detection_id")
    sent = df.loc[["d-odd-car", "d-bus"]]
    assert set(sent["backend"]) == {"qwen2_vl"} and set(sent["model_id"]) == {captioner.model_id}
    assert sent["raw_answer"].map(len).min() > 0
    assert md["num_ok"].value + md["num_failed"].value == 2


def test_captions_asset_crop_without_flags_is_an_inlier_and_counted(store, instance):
    frames = _upstream_frames()
    frames["outlier_flags"] = frames["outlier_flags"][frames["outlier_flags"]["detection_id"] != "d-odd-car"]
    for name, df in frames.items():
        _write_table(store, name, df)
    table, md = _materialize(store, instance, TemplateCaptioner(), {"max_per_scene": None})
    df = table.to_pandas().set_index("detection_id")
    assert df.loc["d-odd-car", "status"] == "class_name"  # a car with no flags row is a common inlier
    assert md["num_without_outlier_flags"].value == 1


def test_captions_asset_empty_scene(store, instance):
    for name, df in _upstream_frames(specs=[]).items():
        _write_table(store, name, df)
    table, md = _materialize(store, instance, TemplateCaptioner())
    assert table.num_rows == 0 and _without_vectors(table.schema) == _without_vectors(CAPTIONS)
    assert md["num_crops"].value == 0 and md["captions_per_s"].value is None


def test_captions_over_several_scenes_in_one_run(store, instance):
    """A multi-scene run keeps the per-scene budget and stores one file per scene."""
    scenes = [SCENE, "scene-test-0002"]
    for scene in scenes:
        for name, df in _upstream_frames().items():
            df = df.assign(scene_name=scene, detection_id=df["detection_id"] + f"@{scene}")
            write_table(store, name, df, scene)
    instance.add_dynamic_partitions("nuscenes_scenes", scenes)
    result = dg.materialize(
        [captions, *UPSTREAM], selection=[captions], instance=instance,
        resources={"io_manager": ParquetIOManager(base_path=str(store)), "captioner": TemplateCaptioner(),
                   "vocabulary": VocabularyResource(), "embedder": OFFLINE_EMBEDDER},
        run_config={"ops": {"captions": {"config": {"max_per_scene": 2}}}},
        tags={"dagster/asset_partition_range_start": scenes[0], "dagster/asset_partition_range_end": scenes[1]},
    )
    assert result.success and len(result.asset_materializations_for_node("captions")) == 2
    for scene in scenes:
        table = pq.read_table(store / "captions" / f"{scene}.parquet").to_pandas()
        assert set(table["scene_name"]) == {scene} and len(table) == len(CROP_SPECS)
        assert (table["status"] == "ok").sum() == 2  # the budget holds per scene, not per run
