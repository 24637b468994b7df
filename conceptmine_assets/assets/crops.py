"""`crops`: one padded JPEG crop per usable detection, with LiDAR support and image quality."""

import time
from collections import Counter
from dataclasses import dataclass

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from conceptmine_assets.errors import DatasetError
from conceptmine_assets.lib.geometry import (
    box_point_stats,
    clip_box,
    crop_window,
    lidar_to_camera_matrix,
    project_points,
)
from conceptmine_assets.lib.images import FRAME_LIMIT, ImageDecodeError, frame_pixel_limit, encode_jpeg, read_rgb
from conceptmine_assets.lib.quality import image_quality
from conceptmine_assets.lib.scenes import SCENES_PER_RUN, SceneTables, concat_scenes, split_scenes
from conceptmine_assets.partitions import scene_partitions
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.schemas import CROPS, KEY_COLUMNS, column_schema
from conceptmine_assets.settings import stage_config

_BOX = ["x1", "y1", "x2", "y2"]


@stage_config("crops")
class CropsConfig(dg.Config):
    """How detections become crops."""

    pad_frac: float = Field(0.1, ge=0.0, le=1.0, description="Padding per side as a share of the box size.")
    min_size: int = Field(16, ge=1, description="px: boxes narrower or lower than this (after clipping) are skipped.")
    jpeg_quality: int = Field(90, ge=1, le=95, description="JPEG quality of the stored crops (Pillow: 1-95).")
    lidar_min_depth: float = Field(1.0, ge=0.0, description="Metres in front of the camera for a LiDAR point to count.")


@dataclass
class LidarSweep:
    """A LIDAR_TOP sweep in its sensor frame with the poses to move it to any camera."""

    points: np.ndarray  # (3, n) xyz in the LiDAR frame
    sensor2ego: tuple[list[float], list[float]]
    ego2global: tuple[list[float], list[float]]


def load_lidar(nuscenes: NuScenesResource, token: str) -> LidarSweep:
    """Points and poses of one LiDAR sample_data; a DatasetError naming the file if it cannot be read."""
    from nuscenes.utils.data_classes import LidarPointCloud

    nusc = nuscenes.nusc
    sd = nusc.get("sample_data", token)
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    path = nuscenes.path(sd["filename"])
    try:
        cloud = LidarPointCloud.from_file(str(path))
    except (OSError, ValueError, AssertionError) as exc:  # the devkit asserts on the suffix, reshape fails on size
        raise DatasetError(f"cannot read LiDAR file {path}: {exc}") from exc
    return LidarSweep(
        points=cloud.points[:3].astype(float),
        sensor2ego=(cs["translation"], cs["rotation"]),
        ego2global=(pose["translation"], pose["rotation"]),
    )


def lidar_box_stats(
    sweep: LidarSweep, frame: dict, boxes: np.ndarray, min_depth: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per box: LiDAR points projected inside it and their median depth, in one vectorised pass per frame."""
    matrix = lidar_to_camera_matrix(
        sweep.sensor2ego,
        sweep.ego2global,
        (frame["ego2global_translation"], frame["ego2global_rotation"]),
        (frame["sensor2ego_translation"], frame["sensor2ego_rotation"]),
    )
    points_cam = matrix[:3, :3] @ sweep.points + matrix[:3, 3:4]
    intrinsic = np.asarray(frame["camera_intrinsic"], dtype=float).reshape(3, 3)
    uv, depth = project_points(points_cam, intrinsic, int(frame["width"]), int(frame["height"]), min_depth)
    return box_point_stats(uv, depth, boxes)


def frame_crops(
    rgb: np.ndarray, dets: pd.DataFrame, config: CropsConfig, lidar: tuple[np.ndarray, np.ndarray] | None
) -> tuple[list[dict], int]:
    """Crop rows of one decoded frame and the number of boxes too small to crop; ``lidar`` holds the
    per-box point counts and median depths (None for a frame without LiDAR)."""
    height, width = rgb.shape[:2]
    rows, small = [], 0
    for i, det in enumerate(dets.to_dict("records")):
        box = clip_box([det[c] for c in _BOX], width, height)
        if min(box[2] - box[0], box[3] - box[1]) < config.min_size:
            small += 1
            continue
        cx1, cy1, cx2, cy2 = crop_window(box, config.pad_frac, width, height)
        crop = rgb[cy1:cy2, cx1:cx2]
        quality = image_quality(crop)
        points = depth = None
        if lidar is not None:
            points = int(lidar[0][i])
            depth = None if np.isnan(lidar[1][i]) else float(lidar[1][i])
        rows.append(
            {
                **{c: det[c] for c in KEY_COLUMNS},
                "confidence": det["confidence"],
                **dict(zip(_BOX, box, strict=True)),
                "crop_x1": cx1,
                "crop_y1": cy1,
                "crop_x2": cx2,
                "crop_y2": cy2,
                "image_jpeg": encode_jpeg(crop, config.jpeg_quality),
                "lidar_points": points,
                "lidar_median_depth": depth,
                "brightness": quality.brightness,
                "overexposed_frac": quality.overexposed_frac,
                "dark_frac": quality.dark_frac,
                "blur_laplacian_var": quality.blur_laplacian_var,
            }
        )
    return rows, small


def _frame_lidar(
    nuscenes: NuScenesResource, frame: dict, dets: pd.DataFrame, sweeps: dict, min_depth: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-box LiDAR point counts and median depths of a frame (None without a LIDAR_TOP sweep);
    ``sweeps`` caches each sweep read in this run (frames of one sample share it)."""
    token = frame["lidar_sample_data_token"]
    if not (isinstance(token, str) and token):
        return None
    if token not in sweeps:
        sweeps[token] = load_lidar(nuscenes, token)
    return lidar_box_stats(sweeps[token], frame, dets[_BOX].to_numpy(float), min_depth)


def _frame_image(frame: dict, nuscenes: NuScenesResource) -> np.ndarray:
    """The decoded RGB image of a frame; ImageDecodeError for a frame flagged bad upstream or one that fails."""
    if not frame["image_ok"]:
        raise ImageDecodeError(f"{frame['image_path']}: {frame['image_error']}")
    return read_rgb(nuscenes.path(frame["image_path"]), frame_pixel_limit(frame["width"], frame["height"]),
                    FRAME_LIMIT)


def _crops_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=CROPS.names)
    df["lidar_points"] = df["lidar_points"].astype("Int32")
    df["lidar_median_depth"] = df["lidar_median_depth"].astype("Float32")
    return df


@dg.asset(
    partitions_def=scene_partitions,
    code_version="2",  # 2: images of any mode decoded to their 8-bit picture (16-bit grey was white)
    kinds={"nuscenes", "parquet"},
    group_name="perception",
    metadata=column_schema("crops"),
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=SCENES_PER_RUN),
)
def crops(
    context: dg.AssetExecutionContext, config: CropsConfig, frames: SceneTables, detections: SceneTables,
    nuscenes: NuScenesResource,
) -> SceneTables:
    """One row per detection that yields a usable crop (key ``detection_id``): the box clipped to the
    image, the padded crop window and the crop as JPEG bytes (``image_jpeg``), the LIDAR_TOP
    points projected inside the box and their median depth (null without LiDAR), and the crop's
    brightness, glare, darkness and blur. Boxes under ``min_size`` px and boxes of frames whose
    image is unusable are counted skips."""
    started = time.perf_counter()
    frames, detections = concat_scenes(frames), concat_scenes(detections)
    by_token = {f["sample_data_token"]: f for f in frames.to_dict("records")}
    unknown = sorted(set(detections["sample_data_token"]) - set(by_token))
    if unknown:
        raise DatasetError(
            f"scene {', '.join(context.partition_keys)}: detections reference frames not in `frames` {unknown[:5]}; "
            "re-materialise detections"
        )
    rows, skips, bad_files, sweeps = [], Counter(), [], {}
    lidar_frames = 0
    for token, dets in detections.groupby("sample_data_token", sort=False):
        frame = by_token[token]
        try:
            rgb = _frame_image(frame, nuscenes)
        except ImageDecodeError as exc:
            skips["bad_image"] += len(dets)
            bad_files.append(str(exc))
            context.log.warning(f"scene {frame['scene_name']}: skipping {len(dets)} detections: {exc}")
            continue
        lidar = _frame_lidar(nuscenes, frame, dets, sweeps, config.lidar_min_depth)
        lidar_frames += lidar is not None
        frame_rows, small = frame_crops(rgb, dets, config, lidar)
        rows.extend(frame_rows)
        skips["too_small"] += small
    df = _crops_frame(rows)
    context.add_output_metadata(
        {
            "num_detections_in": len(detections),
            "num_crops": len(df),
            "num_skipped_too_small": skips["too_small"],
            "num_skipped_bad_image": skips["bad_image"],
            "bad_images": dg.MetadataValue.md("\n".join(f"- {b}" for b in bad_files) or "none"),
            "num_frames_with_lidar": lidar_frames,
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
    return split_scenes(df, context.partition_keys)
