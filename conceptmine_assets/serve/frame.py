"""The whole camera frame of a crop with every detection box drawn and the crop's own highlighted."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw

from conceptmine_assets.lib.images import ImageDecodeError, read_rgb
from conceptmine_assets.serve.store import ApiError, StoreReader, records

MAX_WIDTH = 1280  # frames are scaled down to this width (nuScenes frames are 1600 px)
OTHER = (255, 214, 0)  # every other box
CHOSEN = (255, 0, 160)  # the crop's own box


def draw_boxes(image: Image.Image, boxes: list[dict], chosen: str, max_width: int = MAX_WIDTH) -> Image.Image:
    """``image`` scaled to at most ``max_width`` with ``boxes`` (x1, y1, x2, y2, detection_id,
    class_name in original pixels) drawn; the box of detection ``chosen`` last, thicker, labelled."""
    scale = min(1.0, max_width / image.width)
    if scale < 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    draw = ImageDraw.Draw(image)
    ordered = sorted(boxes, key=lambda b: b["detection_id"] == chosen)  # the chosen box on top
    for box in ordered:
        mine = box["detection_id"] == chosen
        xy = [box["x1"] * scale, box["y1"] * scale, box["x2"] * scale, box["y2"] * scale]
        draw.rectangle(xy, outline=CHOSEN if mine else OTHER, width=5 if mine else 2)
        if mine:
            label = str(box.get("class_name") or "")
            left, top = xy[0], max(0.0, xy[1] - 14)
            draw.rectangle([left, top, left + 7 * len(label) + 6, top + 14], fill=CHOSEN)
            draw.text((left + 3, top + 1), label, fill=(255, 255, 255))
    return image


def frame_jpeg(reader: StoreReader, dataroot: str | None, crop: dict, quality: int = 85) -> bytes:
    """JPEG bytes of the crop's camera frame with the boxes of all its detections."""
    scene, token = crop["scene_name"], crop["sample_data_token"]
    frames = reader.source("frames", [scene])
    if frames is None:
        raise ApiError(404, f"no frames are stored for scene {scene!r}")
    rows = reader.query(f"SELECT image_path FROM {frames} WHERE sample_data_token = ?", [token])
    if rows.empty:
        raise ApiError(404, f"frame {token!r} of crop {crop['detection_id']!r} is not in the stored frames")
    if not dataroot:
        raise ApiError(409, "no dataroot is configured (NUSCENES_DATAROOT or `dataroot` in conceptmine.yaml), so "
                            "the frame image cannot be read")
    path = Path(dataroot) / rows["image_path"].iloc[0]
    try:
        image = Image.fromarray(read_rgb(path))
    except ImageDecodeError as exc:
        raise ApiError(409, str(exc)) from None
    detections = reader.source("detections", [scene])
    boxes = records(reader.query(
        f"SELECT detection_id, class_name, x1, y1, x2, y2 FROM {detections} WHERE sample_data_token = ?", [token]
    )) if detections else []
    if not any(b["detection_id"] == crop["detection_id"] for b in boxes):
        boxes.append({k: crop[k] for k in ("detection_id", "class_name", "x1", "y1", "x2", "y2")})
    out = io.BytesIO()
    draw_boxes(image, boxes, crop["detection_id"]).save(out, format="JPEG", quality=quality)
    return out.getvalue()
