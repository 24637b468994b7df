"""Crops cut from the real slice for the embedding tests: the ``crops`` rows that `embeddings` reads,
with 2D boxes projected from the slice's 3D annotations, plus a few road patches."""

import io

import numpy as np
import pandas as pd
from PIL import Image

from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.schemas import CROPS
from conceptmine_assets_tests.helpers import REAL_SCENE, REAL_SLICE, require

CLASS_NAMES = {"vehicle.car": "car", "vehicle.truck": "truck", "human.pedestrian.adult": "pedestrian"}
MIN_SIDE_PX = 30  # smaller boxes say little about the object
# Hand-picked asphalt patches (x1, y1, x2, y2) with no object in them.
ROAD_PATCHES = {"CAM_FRONT": [(900, 700, 1300, 860), (100, 760, 500, 880)], "CAM_BACK": [(400, 650, 900, 800)]}


def to_jpeg(image: Image.Image) -> bytes:
    """``image`` as JPEG bytes (quality 95)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _crop_row(sd: dict, sample_token: str, det_id: str, class_name: str, box: tuple, image: Image.Image) -> dict:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    return {
        "detection_id": det_id,
        "scene_name": REAL_SCENE,
        "sample_token": sample_token,
        "sample_data_token": sd["token"],
        "channel": sd["channel"],
        "class_name": class_name,
        "confidence": 1.0,
        "x1": float(box[0]),
        "y1": float(box[1]),
        "x2": float(box[2]),
        "y2": float(box[3]),
        "crop_x1": x1,
        "crop_y1": y1,
        "crop_x2": x2,
        "crop_y2": y2,
        "image_jpeg": to_jpeg(image.crop((x1, y1, x2, y2))),
        "lidar_points": None,
        "lidar_median_depth": None,
        "brightness": None,
        "overexposed_frac": None,
        "dark_frac": None,
        "blur_laplacian_var": None,
    }


def real_slice_crops() -> pd.DataFrame:
    """Crops-shaped rows: fully visible cars/trucks/pedestrians of CAM_FRONT and CAM_BACK
    (2D boxes = projected 3D annotation corners) plus a few road patches (class ``road``)."""
    from nuscenes.utils.geometry_utils import BoxVisibility, view_points

    nusc = NuScenesResource(dataroot=str(require(REAL_SLICE))).nusc
    sample = nusc.sample[0]
    rows = []
    for channel in ("CAM_FRONT", "CAM_BACK"):
        sd = nusc.get("sample_data", sample["data"][channel])
        path, boxes, intrinsic = nusc.get_sample_data(sd["token"], box_vis_level=BoxVisibility.ANY)
        image = Image.open(path).convert("RGB")
        for box in boxes:
            ann = nusc.get("sample_annotation", box.token)
            if box.name not in CLASS_NAMES or ann["visibility_token"] != "4":
                continue
            corners = view_points(box.corners(), np.asarray(intrinsic), normalize=True)[:2]
            x1, y1 = np.maximum(corners.min(axis=1), 0)
            x2, y2 = np.minimum(corners.max(axis=1), image.size)
            if min(x2 - x1, y2 - y1) >= MIN_SIDE_PX:
                rows.append(_crop_row(sd, sample["token"], box.token, CLASS_NAMES[box.name], (x1, y1, x2, y2), image))
        for i, patch in enumerate(ROAD_PATCHES[channel]):
            rows.append(_crop_row(sd, sample["token"], f"{sd['token']}-road{i}", "road", patch, image))
    return pd.DataFrame(rows, columns=CROPS.names)
