"""Tests of the `crops` asset: JPEG crops, LiDAR support, image quality and counted skips."""

import io

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conceptmine_assets.assets.crops import crops
from conceptmine_assets.assets.detections import detections
from conceptmine_assets.assets.frames import CAMERAS, frames
from conceptmine_assets.partitions import scene_partitions
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.schemas import DETECTIONS
from conceptmine_assets_tests.helpers import HIGHWAY_SCENES, REAL_SCENE, copy_dataroot, frames_config, gt_truck
from conceptmine_assets_tests.helpers import materialize_scene, metadata, stored, truncate_image
from conceptmine_assets_tests.helpers import perception_resources as resources


def decoded_size(jpeg: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(jpeg)) as im:
        assert im.format == "JPEG"
        return im.size


def devkit_points_in_box(real_slice, box) -> tuple[int, float]:
    """LiDAR points in a CAM_FRONT box by the devkit's own ``map_pointcloud_to_image`` (reference)."""
    nusc = NuScenesResource(dataroot=str(real_slice)).nusc
    sample = nusc.sample[0]
    uv, depth, image = nusc.explorer.map_pointcloud_to_image(sample["data"]["LIDAR_TOP"], sample["data"]["CAM_FRONT"])
    image.close()  # the devkit returns the camera image opened (lazily, its file still open)
    x1, y1, x2, y2 = box
    inside = (uv[0] >= x1) & (uv[0] < x2) & (uv[1] >= y1) & (uv[1] < y2)
    return int(inside.sum()), float(np.median(depth[inside]))


def hand_made_detections(boxes: list[tuple[float, float, float, float]]):
    """A stand-in `detections` asset giving ``boxes`` on every frame of the scene (with the stage's
    backfill policy: a job over assets of different policies makes Dagster warn)."""

    @dg.asset(name="detections", partitions_def=scene_partitions, backfill_policy=detections.backfill_policy)
    def fixed_detections(frames: pd.DataFrame) -> pd.DataFrame:
        rows = [
            {
                **dict.fromkeys(DETECTIONS.names),
                **{k: f[k] for k in ("scene_name", "sample_token", "sample_data_token", "channel")},
                "detection_id": f"{f['sample_data_token']}-{i}",
                "class_name": "car",
                "detector": "test",
                "source_class": "car",
                "confidence": 0.9,
                **dict(zip(("x1", "y1", "x2", "y2"), box, strict=True)),
            }
            for f in frames.to_dict("records")
            for i, box in enumerate(boxes)
        ]
        return pd.DataFrame(rows, columns=DETECTIONS.names)

    return fixed_detections


def test_crops_of_all_real_cameras_with_lidar(real_slice, store, instance):
    res = resources(real_slice, store)
    config = frames_config(list(CAMERAS))
    result = materialize_scene([frames, detections, crops], REAL_SCENE, instance, res, run_config=config)
    dets, df = stored(store, "detections", REAL_SCENE), stored(store, "crops", REAL_SCENE)
    meta = metadata(result, "crops")
    assert len(df) == meta["num_crops"] and len(df) + meta["num_skipped_too_small"] == len(dets)
    assert meta["num_frames_with_lidar"] == 6 and df["lidar_points"].notna().all()
    assert set(df["detection_id"]) <= set(dets["detection_id"])

    for row in df.itertuples():
        assert decoded_size(row.image_jpeg) == (row.crop_x2 - row.crop_x1, row.crop_y2 - row.crop_y1)
        assert row.crop_x1 <= row.x1 < row.x2 <= row.crop_x2 and row.crop_y1 <= row.y1 < row.y2 <= row.crop_y2
        assert min(row.x2 - row.x1, row.y2 - row.y1) >= 16
    for column in ("brightness", "overexposed_frac", "dark_frac"):
        assert df[column].between(0, 1).all()
    assert (df["blur_laplacian_var"] > 0).all()

    truck_token, truck_box = gt_truck(real_slice)
    in_front = (dets["annotation_token"] == truck_token) & (dets["channel"] == "CAM_FRONT")
    truck_id = dets.loc[in_front, "detection_id"].item()
    truck = df.set_index("detection_id").loc[truck_id]
    expected_points, expected_depth = devkit_points_in_box(real_slice, truck_box)
    assert truck["lidar_points"] > 0
    assert abs(int(truck["lidar_points"]) - expected_points) <= 0.01 * expected_points
    assert truck["lidar_median_depth"] == pytest.approx(expected_depth, abs=0.05)

    materialize_scene([frames, detections, crops], REAL_SCENE, instance, res, run_config=config)
    pd.testing.assert_frame_equal(stored(store, "crops", REAL_SCENE), df)


def test_crop_window_is_padded_by_pad_frac(real_slice, store, instance):
    boxes = [(700.0, 400.0, 800.0, 450.0)]
    run_config = {"ops": {"crops": {"config": {"pad_frac": 0.2, "jpeg_quality": 50}}}}
    assets = [frames, hand_made_detections(boxes), crops]
    materialize_scene(assets, REAL_SCENE, instance, resources(real_slice, store), run_config=run_config)
    row = stored(store, "crops", REAL_SCENE).iloc[0]
    assert (row.crop_x1, row.crop_y1, row.crop_x2, row.crop_y2) == (680, 390, 820, 460)


def test_small_zero_area_and_outside_boxes_are_counted_skips(real_slice, store, instance):
    boxes = [
        (100.0, 200.0, 300.0, 400.0),  # usable
        (500.0, 500.0, 500.0, 560.0),  # zero area
        (10.0, 10.0, 20.0, 40.0),  # 10 px wide < min_size
        (1590.0, 100.0, 1700.0, 200.0),  # 10 px wide once clipped to the 1600 px image
    ]
    result = materialize_scene(
        [frames, hand_made_detections(boxes), crops], REAL_SCENE, instance, resources(real_slice, store)
    )
    meta = metadata(result, "crops")
    assert (meta["num_detections_in"], meta["num_crops"], meta["num_skipped_too_small"]) == (4, 1, 3)
    row = stored(store, "crops", REAL_SCENE).iloc[0]
    assert (row.x1, row.y1, row.x2, row.y2) == (100, 200, 300, 400) and row.lidar_points >= 0


def test_corrupt_image_skips_its_crops_naming_the_file(highway, store, instance, tmp_path):
    dataroot = copy_dataroot(highway, tmp_path / "dataroot")
    scene = HIGHWAY_SCENES[0]
    nuscenes = NuScenesResource(dataroot=str(dataroot))
    first = nuscenes.nusc.get("sample", nuscenes.scene(scene)["first_sample_token"])
    bad = nuscenes.nusc.get("sample_data", first["data"]["CAM_FRONT"])
    truncate_image(dataroot, bad["filename"])
    assets = [frames, hand_made_detections([(800.0, 400.0, 950.0, 500.0)]), crops]
    result = materialize_scene(assets, scene, instance, resources(dataroot, store))
    meta = metadata(result, "crops")
    assert (meta["num_crops"], meta["num_skipped_bad_image"]) == (1, 1)
    assert bad["filename"].split("/")[-1] in meta["bad_images"]
    df = stored(store, "crops", scene)
    assert bad["token"] not in set(df["sample_data_token"]) and df["lidar_points"].isna().all()
