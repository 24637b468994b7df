"""`detections`: one row per 2D box found in a scene's camera frames."""

import time
from collections import Counter
from collections.abc import Iterator

import dagster as dg
import pandas as pd

from conceptmine_assets.errors import DatasetError
from conceptmine_assets.lib.images import FRAME_LIMIT, ImageDecodeError, frame_pixel_limit, read_rgb
from conceptmine_assets.lib.scenes import MODEL_SCENES_PER_RUN, SceneTables, concat_scenes, split_scenes
from conceptmine_assets.partitions import scene_partitions
from conceptmine_assets.resources.detector import (
    AnnotationsDetector,
    Box,
    DetectorResource,
    YoloDetector,
    class_map,
    normalise_class,
    stable_id,
)
from conceptmine_assets.resources.devices import steady_heap
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.schemas import DETECTIONS, column_schema


def detection_id(frame: dict, box: Box, model_id: str) -> str:
    """Stable across re-runs: the annotation for ground truth, else frame + model + class + box."""
    if box.annotation_token is not None:
        return stable_id(model_id, box.annotation_token, frame["channel"])
    rounded = ",".join(f"{v:.0f}" for v in (box.x1, box.y1, box.x2, box.y2))
    return stable_id(frame["sample_data_token"], model_id, box.source_class, rounded)


def box_rows(frame: dict, boxes: list[Box], model_id: str) -> list[dict]:
    """Detection rows of one frame; duplicate ids (identical boxes) get an ordinal suffix."""
    rows, seen = [], Counter()
    for box in boxes:
        det_id = detection_id(frame, box, model_id)
        seen[det_id] += 1
        rows.append(
            {
                "detection_id": det_id if seen[det_id] == 1 else f"{det_id}-{seen[det_id] - 1}",
                "scene_name": frame["scene_name"],
                "sample_token": frame["sample_token"],
                "sample_data_token": frame["sample_data_token"],
                "channel": frame["channel"],
                "class_name": normalise_class(box.source_class),
                "detector": model_id,
                "source_class": box.source_class,
                "confidence": box.confidence,
                "x1": box.x1,
                "y1": box.y1,
                "x2": box.x2,
                "y2": box.y2,
                "annotation_token": box.annotation_token,
                "category": box.category,
                "attributes": list(box.attributes) if box.attributes is not None else None,
                "visibility": box.visibility,
            }
        )
    return rows


def _by_scene(frames: list[dict]) -> list[list[dict]]:
    """The frames of each scene, in order: a batch never mixes scenes, so a scene's boxes do not
    depend on which scenes shared its run (batched inference can change the last bits)."""
    groups: dict[str, list[dict]] = {}
    for frame in frames:
        groups.setdefault(frame["scene_name"], []).append(frame)
    return list(groups.values())


def _batches(items: list[dict], size: int) -> Iterator[list[dict]]:
    for start in range(0, len(items), max(1, size)):
        yield items[start : start + size]


def _run_yolo(
    context: dg.AssetExecutionContext, frames: list[dict], detector: YoloDetector, nuscenes: NuScenesResource
) -> tuple[list[dict], list[str], int, float]:
    """Rows, skipped images (with why), frames processed and seconds spent in the model: each image
    is decoded once and each batch of ``batch_size`` frames goes to the model in one call."""
    rows, skipped, done, model_seconds = [], [], 0, 0.0
    model_id = detector.model_id
    for batch in (b for scene in _by_scene(frames) for b in _batches(scene, detector.batch_size)):
        kept, images = [], []
        for frame in batch:
            try:
                limit = frame_pixel_limit(frame["width"], frame["height"])  # what `frames` checked
                images.append(read_rgb(nuscenes.path(frame["image_path"]), limit, FRAME_LIMIT))
                kept.append(frame)
            except ImageDecodeError as exc:
                skipped.append(str(exc))
                context.log.warning(f"scene {frame['scene_name']}: skipping frame: {exc}")
        started = time.perf_counter()
        boxes_per_image = detector.predict(images)
        model_seconds += time.perf_counter() - started
        for frame, boxes in zip(kept, boxes_per_image, strict=True):
            rows.extend(box_rows(frame, boxes, model_id))
        done += len(kept)
    return rows, skipped, done, model_seconds


def _run_annotations(
    context: dg.AssetExecutionContext, frames: list[dict], detector: AnnotationsDetector, nuscenes: NuScenesResource
) -> tuple[list[dict], dict[str, int]]:
    rows, dropped = [], Counter()
    if not nuscenes.nusc.sample_annotation:
        raise DatasetError(
            f"nuScenes at {nuscenes.dataroot} has no annotations (sample_annotation.json is empty, e.g. made by "
            "import-images): the annotations detector has nothing to project; set CONCEPTMINE_DETECTOR=yolo"
        )
    model_id = detector.model_id
    for frame in frames:
        found = detector.annotation_boxes(nuscenes.nusc, frame["sample_data_token"])
        dropped["behind_camera"] += found.behind_camera
        dropped["below_min_visibility"] += found.below_min_visibility
        rows.extend(box_rows(frame, found.boxes, model_id))
    return rows, dict(dropped)


@dg.asset(
    deps=["detector_model"],
    partitions_def=scene_partitions,
    code_version="2",  # 2: images of any mode decoded to their 8-bit picture (16-bit grey was white)
    kinds={"ultralytics", "nuscenes", "parquet"},
    group_name="perception",
    metadata=column_schema("detections"),
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=MODEL_SCENES_PER_RUN),
)
def detections(
    context: dg.AssetExecutionContext,
    frames: SceneTables,
    detector: DetectorResource,
    nuscenes: NuScenesResource,
) -> SceneTables:
    """One row per 2D box in the scene's frames (key ``detection_id``, stable across re-runs), with
    sample_data_token, channel, the detector's ``source_class``, the normalised ``class_name``
    (``data/class_map.csv``), confidence and the box ``x1, y1, x2, y2`` in original pixels. The
    ``annotations`` backend also fills annotation_token, category, attributes and visibility.
    Frames with ``image_ok = False`` or an image that does not decode are skipped and listed."""
    started, cpu = time.perf_counter(), time.process_time()
    records = concat_scenes(frames).to_dict("records")
    usable = [f for f in records if f["image_ok"]]
    skipped = [f"{f['image_path']}: {f['image_error']}" for f in records if not f["image_ok"]]
    dropped: dict[str, int] = {}
    if isinstance(detector, YoloDetector):
        with steady_heap():  # one batch's pages (decoded frames, activations) serve the next: resources/devices.py
            rows, decode_failures, done, model_seconds = _run_yolo(context, usable, detector, nuscenes)
        skipped += decode_failures
    elif isinstance(detector, AnnotationsDetector):
        rows, dropped = _run_annotations(context, usable, detector, nuscenes)
        done, model_seconds = len(usable), time.perf_counter() - started
    else:
        raise TypeError(f"unknown detector resource {type(detector).__name__}")
    df = pd.DataFrame(rows, columns=DETECTIONS.names)
    unmapped = sorted(set(df["source_class"]) - set(class_map()))
    if unmapped:
        context.log.warning(f"classes not in class_map.csv, stored as 'others': {unmapped}")
    context.add_output_metadata(
        {
            "model_id": detector.model_id,
            "num_frames_in": len(records),
            "num_frames_out": done,
            "num_skipped_frames": len(skipped),
            "skipped_frames": dg.MetadataValue.md("\n".join(f"- {s}" for s in skipped) or "none"),
            "num_boxes": len(df),
            "boxes_per_class": dg.MetadataValue.json(
                {k: int(v) for k, v in df["class_name"].value_counts().sort_index().items()}
            ),
            "unmapped_source_classes": ", ".join(unmapped) or "none",
            **{f"num_annotations_{k}": v for k, v in dropped.items()},
            "seconds": round(time.perf_counter() - started, 3),  # includes a first model load
            "cpu_seconds": round(time.process_time() - cpu, 3),  # of the whole process: every thread's
            "ms_per_frame": round(1000 * model_seconds / done, 1) if done else 0.0,  # detector time only
        }
    )
    return split_scenes(df, context.partition_keys)
