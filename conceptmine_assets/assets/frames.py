"""`frames`: one row per camera keyframe of a scene, with what later stages need to project."""

import time
from typing import Literal

import dagster as dg
import pandas as pd
from pydantic import Field, field_validator
from PIL import UnidentifiedImageError

from conceptmine_assets.errors import DatasetError
from conceptmine_assets.lib.images import DEFAULT_MAX_PIXELS, open_unguarded, too_large
from conceptmine_assets.lib.sampling import keep
from conceptmine_assets.lib.scenes import SCENES_PER_RUN, SceneTables, concat_scenes
from conceptmine_assets.partitions import scene_partitions
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.schemas import FRAMES, column_schema
from conceptmine_assets.settings import stage_config

CAMERAS = (
    "CAM_FRONT",
    "CAM_FRONT_LEFT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)


@stage_config("frames")
class FramesConfig(dg.Config):
    """Which keyframes of a scene enter the pipeline."""

    cameras: list[str] = Field(
        default=["CAM_FRONT"], min_length=1,
        description=f"camera channels to mine (the paper mines CAM_FRONT), any of {', '.join(CAMERAS)}",
    )
    sampling_rate: float = Field(
        default=1.0, gt=0.0, le=1.0, description="share of keyframes kept, seeded per sample (the paper's --sampling-rate)"
    )
    seed: int = Field(default=0, description="seed of the keyframe sampling")
    max_frames: int | None = Field(
        default=None, ge=1, description="at most this many samples per scene after sampling, earliest first; none: all"
    )
    max_image_pixels: int = Field(
        default=DEFAULT_MAX_PIXELS, ge=1,
        description="an image whose header says more pixels than this is a bad image (not decoded: a "
        "decompression bomb is an error row, not an out-of-memory kill); nuScenes frames are 1600x900",
    )
    on_bad_image: Literal["flag", "fail"] = Field(
        default="flag", description="flag: keep a bad image's row with image_ok=False; fail: fail the run"
    )

    @field_validator("cameras")
    @classmethod
    def _known_cameras(cls, cameras: list[str]) -> list[str]:
        unknown = sorted(set(cameras) - set(CAMERAS))
        if unknown:
            raise ValueError(f"unknown camera channels {unknown}; choose from {list(CAMERAS)}")
        return cameras


# Bytes a complete file of the format ends with (trailing padding aside): a truncated download or
# copy lacks them. Checking the tail costs one small read, not a decode of the image.
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}
_TAIL_BYTES = 1024


def truncated(path: str, image_format: str | None) -> bool:
    """Whether a JPEG/PNG file lacks its end marker (within the last KiB, padding ignored)."""
    marker = _END_MARKERS.get(image_format or "")
    if marker is None:
        return False
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        fh.seek(max(0, fh.tell() - _TAIL_BYTES))
        tail = fh.read().rstrip(b"\x00\r\n ")
    return not tail.endswith(marker)


def check_image(path: str, width: int, height: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Why the image at ``path`` is unusable, or None if its header reads, its size is within
    ``max_pixels`` and matches the table, and the file is complete (a JPEG/PNG ends with its end
    marker). Only the header and the last KiB are read; nothing is decoded."""
    try:
        with open_unguarded(path) as im:  # the header only; the limit is ours, below
            size, image_format = im.size, im.format
        cut = truncated(path, image_format)
    except FileNotFoundError:
        return f"missing image file {path}"
    except (UnidentifiedImageError, OSError) as exc:
        return f"unreadable image file {path}: {exc}"
    over = too_large(path, size, max_pixels, " (stages.frames.max_image_pixels)")
    if over:
        return over
    if width and height and size != (width, height):
        return f"image file {path} is {size[0]}x{size[1]}, the table says {width}x{height}"
    if cut:
        return f"truncated image file {path}: no {image_format} end marker (re-copy the file)"
    return None


def _frame_rows(nuscenes: NuScenesResource, scene: dict, config: FramesConfig) -> tuple[list[dict], int]:
    nusc = nuscenes.nusc
    rows, absent = [], 0
    for sample_token in nuscenes.sample_tokens(scene):
        if not keep(config.seed, sample_token, config.sampling_rate):
            continue
        sample = nusc.get("sample", sample_token)
        lidar = sample["data"].get("LIDAR_TOP")
        for channel in config.cameras:
            sd_token = sample["data"].get(channel)
            if sd_token is None:
                absent += 1
                continue
            try:
                rows.append(_frame_row(nusc, scene, sample_token, channel, sd_token, lidar))
            except KeyError as exc:
                raise DatasetError(
                    f"scene {scene['name']}: sample_data {sd_token} in {nuscenes.table_dir / 'sample_data.json'} "
                    f"lacks field {exc} (or points at a missing record)"
                ) from exc
    rows.sort(key=lambda r: (r["timestamp"], r["channel"]))
    return rows, absent


def _frame_row(nusc, scene: dict, sample_token: str, channel: str, sd_token: str, lidar: str | None) -> dict:
    sd = nusc.get("sample_data", sd_token)
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    return {
        "scene_name": scene["name"],
        "scene_token": scene["token"],
        "sample_token": sample_token,
        "sample_data_token": sd_token,
        "channel": channel,
        "timestamp": sd["timestamp"],
        "image_path": sd["filename"],
        "width": sd.get("width") or 0,
        "height": sd.get("height") or 0,
        "camera_intrinsic": [float(v) for row in cs["camera_intrinsic"] for v in row],
        "sensor2ego_translation": cs["translation"],
        "sensor2ego_rotation": cs["rotation"],
        "ego2global_translation": pose["translation"],
        "ego2global_rotation": pose["rotation"],
        "lidar_sample_data_token": lidar,
    }


def _scene_frames(
    context: dg.AssetExecutionContext, config: FramesConfig, nuscenes: NuScenesResource, name: str
) -> tuple[pd.DataFrame, list[str], int]:
    """(table, bad-image errors, channels absent) of one scene."""
    scene = nuscenes.scene(name)
    rows, absent = _frame_rows(nuscenes, scene, config)
    if config.max_frames is not None:
        keep_samples = sorted({r["sample_token"]: r["timestamp"] for r in rows}.items(), key=lambda kv: kv[1])
        chosen = {tok for tok, _ in keep_samples[: config.max_frames]}
        rows = [r for r in rows if r["sample_token"] in chosen]
    bad: list[str] = []
    for row in rows:
        error = check_image(str(nuscenes.path(row["image_path"])), row["width"], row["height"], config.max_image_pixels)
        row["image_ok"], row["image_error"] = error is None, error
        if error:
            if config.on_bad_image == "fail":
                raise DatasetError(f"scene {name}: {error}")
            bad.append(error)
            context.log.warning(f"scene {name}: {error}")
    if not rows:
        context.log.warning(f"scene {name}: no keyframes selected for cameras {config.cameras}")
    return pd.DataFrame(rows, columns=FRAMES.names), bad, absent


@dg.asset(
    partitions_def=scene_partitions,
    code_version="2",
    kinds={"nuscenes", "parquet"},
    group_name="perception",
    metadata=column_schema("frames"),
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=SCENES_PER_RUN),
)
def frames(context: dg.AssetExecutionContext, config: FramesConfig, nuscenes: NuScenesResource) -> SceneTables:
    """One row per camera keyframe of the scene (key: sample_data_token; plus scene_name,
    sample_token, channel, image_path relative to the dataroot, size, intrinsic and the
    sensor→ego and ego→global poses). A frame whose image is missing, unreadable, truncated (no
    JPEG/PNG end marker), over ``max_image_pixels`` or of the wrong size is kept with ``image_ok = False`` and listed in the
    metadata (or fails the run with ``on_bad_image = "fail"``). Several scenes per run in a
    backfill; one file per scene."""
    started = time.perf_counter()
    tables, bad, absent = {}, [], 0
    for name in context.partition_keys:
        tables[name], scene_bad, scene_absent = _scene_frames(context, config, nuscenes, name)
        bad, absent = bad + scene_bad, absent + scene_absent
    df = concat_scenes(tables)
    context.add_output_metadata(
        {
            "num_frames": len(df),
            "num_samples": int(df["sample_token"].nunique()) if len(df) else 0,
            "num_bad_images": len(bad),
            "bad_images": dg.MetadataValue.md("\n".join(f"- {b}" for b in bad) or "none"),
            "num_channel_absent": absent,
            "cameras": ", ".join(config.cameras),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
    return tables[context.partition_keys[0]] if len(tables) == 1 else tables
