"""Tests of the detector resource, the class map and the `detections` asset."""

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conceptmine_assets.assets import detections as detections_module
from conceptmine_assets.assets.crops import crops
from conceptmine_assets.assets.detections import detections
from conceptmine_assets.assets.frames import CAMERAS, frames
from conceptmine_assets.errors import ModelLoadError
from conceptmine_assets.lib.images import read_rgb
from conceptmine_assets.resources.detector import (
    CLASS_NAMES,
    AnnotationsDetector,
    YoloDetector,
    class_map,
    normalise_class,
)
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.schemas import CROPS, DETECTIONS
from conceptmine_assets_tests.helpers import HIGHWAY_SCENES, REAL_SCENE, copy_dataroot, frames_config, gt_truck
from conceptmine_assets_tests.helpers import box_iou, materialize_scene, metadata, stored, truncate_image
from conceptmine_assets_tests.helpers import perception_resources as resources

COCO80 = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
    "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie "
    "suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
    "tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
    "hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard "
    "cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear hair_drier toothbrush"
)
COCO_NAMES = [n.replace("_", " ") for n in COCO80.split()]


# ---------------------------------------------------------------- class map


def test_class_map_covers_coco_and_nuscenes_categories(real_slice):
    mapping = class_map()
    nusc = NuScenesResource(dataroot=str(real_slice)).nusc
    assert len(COCO_NAMES) == 80
    assert set(COCO_NAMES) <= set(mapping)
    assert {c["name"] for c in nusc.category} <= set(mapping)
    assert set(mapping.values()) <= set(CLASS_NAMES)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("person", "pedestrian"),
        ("traffic light", "traffic_light"),
        ("stop sign", "traffic_sign"),
        ("giraffe", "animal"),
        ("toothbrush", "others"),
        ("vehicle.truck", "truck"),
        ("vehicle.bus.bendy", "bus"),
        ("vehicle.construction", "construction_vehicle"),
        ("human.pedestrian.police_officer", "pedestrian"),
        ("movable_object.trafficcone", "traffic_cone"),
        ("movable_object.debris", "others"),
        ("not a listed class", "others"),
    ],
)
def test_normalise_class(source, expected):
    assert normalise_class(source) == expected


# ---------------------------------------------------------------- resource


def test_missing_weights_file_is_a_model_load_error_naming_it(tmp_path):
    missing = tmp_path / "models" / "yolov8x_missing.pt"
    detector = YoloDetector(weights=str(missing))  # lazy: constructing does not load
    with pytest.raises(ModelLoadError, match="yolov8x_missing.pt"):
        detector.load()
    with pytest.raises(ModelLoadError, match="nowhere.tflite"):
        YoloDetector(weights="nowhere.tflite").predict([np.zeros((32, 32, 3), np.uint8)])


def test_missing_weights_fail_the_run_naming_the_file(highway, store, instance, tmp_path):
    missing = tmp_path / "absent" / "weights.onnx"
    result = materialize_scene(
        [frames, detections],
        HIGHWAY_SCENES[1],
        instance,
        resources(highway, store, weights=str(missing)),
        raise_on_error=False,
    )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert "ModelLoadError" in failure.to_string() and str(missing) in failure.to_string()


def test_model_is_loaded_once_per_process(yolo_tflite):
    first = YoloDetector(weights=str(yolo_tflite)).load()
    assert YoloDetector(weights=str(yolo_tflite), conf=0.5).load() is first
    assert YoloDetector(weights=str(yolo_tflite)).model_id.startswith("yolo:yolov8n_int8.tflite@")
    assert AnnotationsDetector().model_id.startswith("annotations@")


def test_torch_model_plumbing_with_a_random_yaml_model():
    """``.pt``-style loading path (torch backend); a random model, so nothing about accuracy."""
    detector = YoloDetector(weights="yolov8n.yaml", device="cpu", batch_size=2)
    boxes = detector.predict([np.zeros((64, 96, 3), np.uint8), np.full((48, 48, 3), 200, np.uint8)])
    assert len(boxes) == 2 and all(isinstance(b, list) for b in boxes)


@pytest.mark.real_model
def test_yolo_finds_the_parked_truck_and_cars(real_slice, yolo_tflite):
    nusc = NuScenesResource(dataroot=str(real_slice)).nusc
    image = read_rgb(nusc.get_sample_data_path(nusc.sample[0]["data"]["CAM_FRONT"]))
    boxes = YoloDetector(weights=str(yolo_tflite)).predict([image])[0]
    _, truth = gt_truck(real_slice)
    trucks = [b for b in boxes if normalise_class(b.source_class) == "truck"]
    assert max(box_iou((b.x1, b.y1, b.x2, b.y2), truth) for b in trucks) >= 0.5
    assert truth[0] < 800  # it is the one on the left
    assert sum(normalise_class(b.source_class) == "car" for b in boxes) >= 3


@pytest.mark.parametrize(
    ("visibility", "min_visibility", "expected"),
    [("any", 1, 47), ("all", 1, 44)],
)
def test_annotations_backend_counts_match_the_devkit(real_slice, visibility, min_visibility, expected):
    nusc = NuScenesResource(dataroot=str(real_slice)).nusc
    detector = AnnotationsDetector(box_visibility=visibility, min_visibility=min_visibility)
    assert len(detector.annotation_boxes(nusc, nusc.sample[0]["data"]["CAM_FRONT"]).boxes) == expected


def test_annotations_backend_filters_by_visibility_and_keeps_all_with_none(real_slice):
    nusc = NuScenesResource(dataroot=str(real_slice)).nusc
    token = nusc.sample[0]["data"]["CAM_FRONT"]
    everything = AnnotationsDetector(box_visibility="none").annotation_boxes(nusc, token)
    assert len(everything.boxes) + everything.behind_camera == len(nusc.sample[0]["anns"])
    visible = AnnotationsDetector(min_visibility=4).annotation_boxes(nusc, token)
    assert 0 < len(visible.boxes) < 47 and {b.visibility for b in visible.boxes} == {"4"}
    assert visible.below_min_visibility == 47 - len(visible.boxes)


# ---------------------------------------------------------------- asset


def test_detections_with_annotations_on_all_real_cameras(real_slice, store, instance):
    res = resources(real_slice, store)
    result = materialize_scene([frames, detections], REAL_SCENE, instance, res, run_config=frames_config(list(CAMERAS)))
    df = stored(store, "detections", REAL_SCENE)
    front = df[df["channel"] == "CAM_FRONT"]
    assert len(front) == 47
    assert Counter(front["class_name"]) == {
        "barrier": 19, "pedestrian": 17, "car": 7, "truck": 2, "bicycle": 1, "construction_vehicle": 1
    }
    assert set(df["channel"]) == set(CAMERAS) and df["detection_id"].is_unique
    assert (df["detector"] == AnnotationsDetector().model_id).all() and (df["confidence"] == 1.0).all()
    truck_token, _ = gt_truck(real_slice)
    truck = front[front["annotation_token"] == truck_token].iloc[0]
    assert (truck["category"], truck["visibility"]) == ("vehicle.truck", "4")
    assert list(truck["attributes"]) == ["vehicle.parked"]
    meta = metadata(result, "detections")
    assert (meta["num_frames_in"], meta["num_frames_out"], meta["num_boxes"]) == (6, 6, len(df))
    assert sum(meta["boxes_per_class"].values()) == len(df)

    materialize_scene([frames, detections], REAL_SCENE, instance, res, run_config=frames_config(list(CAMERAS)))
    pd.testing.assert_frame_equal(stored(store, "detections", REAL_SCENE), df)


@pytest.mark.real_model
def test_detections_with_yolo_on_real_front_camera(real_slice, yolo_tflite, store, instance):
    res = resources(real_slice, store, weights=str(yolo_tflite), batch_size=4)
    result = materialize_scene([frames, detections], REAL_SCENE, instance, res)
    df = stored(store, "detections", REAL_SCENE)
    assert (df["channel"] == "CAM_FRONT").all() and (df["detector"] == res["detector"].model_id).all()
    assert df["annotation_token"].isna().all() and df["attributes"].isna().all()
    _, truth = gt_truck(real_slice)
    trucks = df[df["class_name"] == "truck"]
    assert max(box_iou(tuple(r), truth) for r in trucks[["x1", "y1", "x2", "y2"]].itertuples(index=False)) >= 0.5
    assert (df["class_name"] == "car").sum() >= 3
    meta = metadata(result, "detections")
    assert meta["model_id"] == res["detector"].model_id and meta["ms_per_frame"] > 0

    materialize_scene([frames, detections], REAL_SCENE, instance, res)
    pd.testing.assert_frame_equal(stored(store, "detections", REAL_SCENE), df)


@pytest.mark.real_model
@pytest.mark.parametrize("scene", HIGHWAY_SCENES)
def test_detections_and_crops_with_yolo_on_highway_scenes(highway, yolo_tflite, store, instance, scene):
    res = resources(highway, store, weights=str(yolo_tflite))
    materialize_scene([frames, detections, crops], scene, instance, res)
    df = stored(store, "detections", scene)
    frame_tokens = set(stored(store, "frames", scene)["sample_data_token"])
    assert set(df["sample_data_token"]) == frame_tokens  # both sedans ahead are found in every frame
    assert (df.groupby("sample_data_token")["class_name"].apply(lambda c: (c == "car").sum()) >= 1).all()
    cropped = stored(store, "crops", scene)
    assert len(cropped) == len(df) and cropped["lidar_points"].isna().all()
    assert cropped["lidar_median_depth"].isna().all()


@pytest.mark.real_model
def test_batched_inference_decodes_each_image_once(real_slice, yolo_tflite, store, instance, monkeypatch):
    detector = YoloDetector(weights=str(yolo_tflite), batch_size=2)
    model = detector.load()
    batches, decoded = [], []
    predict, read = model.predict, detections_module.read_rgb
    monkeypatch.setattr(model, "predict", lambda images, **kw: batches.append(len(images)) or predict(images, **kw))
    monkeypatch.setattr(detections_module, "read_rgb", lambda path, *limit: decoded.append(path) or read(path, *limit))
    res = {**resources(real_slice, store), "detector": detector}
    cameras = ["CAM_FRONT", "CAM_BACK", "CAM_BACK_LEFT"]
    materialize_scene([frames, detections], REAL_SCENE, instance, res, run_config=frames_config(cameras))
    assert batches == [2, 1]
    assert len(decoded) == len(set(decoded)) == 3


@pytest.mark.real_model
def test_corrupt_image_is_a_counted_skip_naming_the_file(highway, yolo_tflite, store, instance, tmp_path):
    dataroot = copy_dataroot(highway, tmp_path / "dataroot")
    scene = HIGHWAY_SCENES[0]
    nuscenes = NuScenesResource(dataroot=str(dataroot))
    nusc = nuscenes.nusc
    first = nusc.get("sample", nuscenes.scene(scene)["first_sample_token"])
    bad = nusc.get("sample_data", first["data"]["CAM_FRONT"])
    truncate_image(dataroot, bad["filename"])
    res = resources(dataroot, store, weights=str(yolo_tflite))
    result = materialize_scene([frames, detections], scene, instance, res)
    meta = metadata(result, "detections")
    assert (meta["num_frames_in"], meta["num_frames_out"], meta["num_skipped_frames"]) == (2, 1, 1)
    assert Path(bad["filename"]).name in meta["skipped_frames"]
    df = stored(store, "detections", scene)
    assert len(df) > 0 and bad["token"] not in set(df["sample_data_token"])


@pytest.mark.real_model
def test_zero_detections_give_an_empty_partition_with_the_schema(highway, yolo_tflite, store, instance):
    scene = HIGHWAY_SCENES[1]
    res = resources(highway, store, weights=str(yolo_tflite), conf=0.99)
    result = materialize_scene([frames, detections, crops], scene, instance, res)
    assert metadata(result, "detections")["num_boxes"] == 0
    for asset, schema in (("detections", DETECTIONS), ("crops", CROPS)):
        table = pq.read_table(store / asset / f"{scene}.parquet")
        assert table.num_rows == 0 and table.schema.equals(schema, check_metadata=False)
