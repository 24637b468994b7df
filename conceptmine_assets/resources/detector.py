"""2D object detection behind one resource type, one class per backend: :class:`YoloDetector`
(an ultralytics model) or :class:`AnnotationsDetector` (nuScenes 3D boxes projected into the
camera: ground truth for checks and for annotated data).

Class names are normalised through one table, ``conceptmine_assets/data/class_map.csv``
(COCO names and nuScenes categories → nuScenes-style names; anything not listed → ``others``).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import importlib.resources
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import dagster as dg
import numpy as np
from pydantic import Field

from conceptmine_assets.errors import DatasetError, ModelLoadError
from conceptmine_assets.lib.geometry import project_corners
from conceptmine_assets.lib.identity import ModelIdentity, model_identity
from conceptmine_assets.lib.versions import require
from conceptmine_assets.resources.devices import DEVICE_PATTERN, fixed_torch_threads, resolve_device, steady_heap

if TYPE_CHECKING:
    from nuscenes.nuscenes import NuScenes

CLASS_NAMES = (
    "car",
    "truck",
    "bus",
    "bicycle",
    "motorcycle",
    "pedestrian",
    "traffic_light",
    "traffic_sign",
    "train",
    "construction_vehicle",
    "trailer",
    "barrier",
    "traffic_cone",
    "static_object",
    "animal",
    "others",
)
OTHERS = "others"
# Weights formats that ultralytics cannot download by bare name: such a name must be a local file.
_LOCAL_ONLY_SUFFIXES = {".tflite", ".onnx", ".engine", ".torchscript", ".mlpackage", ".xml"}


@dataclass(frozen=True)
class Box:
    """One 2D box in original image pixels, as a detector or the dataset names it."""

    source_class: str
    confidence: float
    x1: float
    y1: float
    x2: float
    y2: float
    annotation_token: str | None = None
    category: str | None = None
    attributes: tuple[str, ...] | None = None
    visibility: str | None = None


@dataclass(frozen=True)
class AnnotationBoxes:
    boxes: list[Box]
    behind_camera: int  # boxes left out: no corner in front of the camera (box_visibility="none" only)
    below_min_visibility: int


@functools.lru_cache(maxsize=1)
def class_map() -> dict[str, str]:
    """``source_class → class_name`` from ``data/class_map.csv`` (validated: unique keys, known names)."""
    resource = importlib.resources.files("conceptmine_assets") / "data" / "class_map.csv"
    mapping: dict[str, str] = {}
    with resource.open("r", encoding="utf-8", newline="") as fh:
        for line, row in enumerate(csv.DictReader(fh), start=2):
            source_class, class_name = row["source_class"], row["class_name"]
            if class_name not in CLASS_NAMES:
                raise DatasetError(f"{resource}:{line}: unknown class_name {class_name!r}; choose from {CLASS_NAMES}")
            if source_class in mapping:
                raise DatasetError(f"{resource}:{line}: duplicate source_class {source_class!r}")
            mapping[source_class] = class_name
    return mapping


def normalise_class(source_class: str) -> str:
    """The nuScenes-style class of a detector/dataset class name; ``others`` when unlisted."""
    return class_map().get(source_class, OTHERS)


def stable_id(*parts: object) -> str:
    """A short id that is the same on every re-run for the same parts."""
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:16]


def check_local_weights(weights: str) -> None:
    """Fail, naming the file, on a weights path that must be local and is absent.

    A bare hub name (``yolov8l.pt``) or a URL is left for ultralytics to download; a path with a
    directory part, or a format ultralytics cannot download, must exist before loading starts.
    """
    if "://" in weights:
        return
    path = Path(weights).expanduser()
    local = path.parent != Path(".") or path.suffix.lower() in _LOCAL_ONLY_SUFFIXES
    if local and not path.exists():
        raise ModelLoadError(f"YOLO weights file {path} does not exist")


@functools.lru_cache(maxsize=4)
def _load_yolo(weights: str) -> Any:
    """Load an ultralytics detector once per process per weights file."""
    check_local_weights(weights)
    require("ultralytics")
    from ultralytics import YOLO

    try:
        return YOLO(weights, task="detect")
    except Exception as exc:  # ultralytics raises many types (FileNotFoundError, ConnectionError, RuntimeError, ...)
        raise ModelLoadError(f"could not load YOLO weights {weights}: {type(exc).__name__}: {exc}") from exc


class DetectorResource(dg.ConfigurableResource, ABC):
    """A 2D detector (resource key ``detector``); assets declare this base type and get one of
    :class:`YoloDetector` or :class:`AnnotationsDetector`."""

    backend: ClassVar[str]

    @abstractmethod
    def identity(self) -> ModelIdentity:
        """What makes this detector's boxes what they are, computed without loading anything."""

    @property
    def model_id(self) -> str:
        """Stored with every box (``detections.detector``) and observed as ``detector_model``'s version."""
        return self.identity().model_id

    def verify(self) -> None:
        """Load the model and run it once (pre-flight of ``conceptmine run``); nothing to load here."""


class YoloDetector(DetectorResource):
    """An ultralytics YOLO model (.pt/.onnx/.tflite). A bare hub name (``yolov8l.pt``) is looked
    up in the working directory and downloaded where there is internet; air-gapped hosts give a path."""

    backend: ClassVar[str] = "yolo"
    weights: str = Field(description="weights file path (or a bare ultralytics hub name such as yolov8l.pt)")
    device: str = Field(default="auto", pattern=DEVICE_PATTERN, description="auto, cpu, cuda or cuda:<n>")
    precision: Literal["fp32", "fp16"] = Field(default="fp32", description="fp16: ultralytics quantize=16 (GPU)")
    batch_size: int = Field(default=16, ge=1, description="frames per predict call")
    conf: float = Field(default=0.25, ge=0.0, le=1.0, description="minimum box confidence")
    iou: float = Field(default=0.45, ge=0.0, le=1.0, description="NMS IoU threshold")
    max_det: int = Field(default=100, ge=1, description="most boxes per image")
    imgsz: int = Field(default=640, ge=32, description="inference image size in pixels")
    cpu_threads: int = Field(
        default=0, ge=0, description="torch CPU threads while detecting (0: every available CPU): the model's "
        "forward pass for .pt weights, pre- and post-processing (NMS) for all. A .tflite model runs on LiteRT's "
        "own pool, which ultralytics sizes to min(8, CPUs - 1)",
    )

    def identity(self) -> ModelIdentity:
        settings = self.model_dump(include={"conf", "iou", "max_det", "imgsz", "precision"})
        return model_identity(f"yolo:{Path(self.weights).name}", settings, [self.weights], ["ultralytics"])

    def load(self) -> Any:
        """The ultralytics model (loaded on first use, then shared by the process)."""
        return _load_yolo(self.weights)

    def verify(self) -> None:
        """Load the weights and detect on one blank frame: a file that exists but does not load
        or run (truncated, another task, another format) fails here, before any work is done."""
        self.load()  # imports ultralytics, which sets its logger's level; a file that is no model fails here
        quiet = logging.getLogger("ultralytics")  # its "Loading ... for inference" lines: not for a pre-flight
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            self.predict([np.zeros((64, 64, 3), dtype=np.uint8)])
        except ModelLoadError:
            raise
        except Exception as exc:  # ultralytics and its backends raise many types
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise ModelLoadError(
                f"YOLO weights {self.weights} do not load or run: {type(exc).__name__}: {first}; "
                "fix `yolo_weights` / CONCEPTMINE_YOLO_WEIGHTS"
            ) from exc
        finally:
            quiet.setLevel(level)

    def predict(self, images: list[np.ndarray]) -> list[list[Box]]:
        """Boxes per image for one batch of ``(h, w, 3)`` uint8 RGB images, in one ultralytics call."""
        if not images:
            return []
        model = self.load()
        if model.predictor is None:  # ultralytics sets torch's thread count as it sets its predictor up: before ours
            self._predict(model, [np.zeros((64, 64, 3), dtype=np.uint8)])
        with fixed_torch_threads(self.cpu_threads), steady_heap():
            results = self._predict(model, images)
        return [_result_boxes(r) for r in results]

    def _predict(self, model: Any, images: list[np.ndarray]) -> list[Any]:
        return model.predict(
            [np.ascontiguousarray(im[..., ::-1]) for im in images],  # ultralytics takes BGR arrays
            conf=self.conf,
            iou=self.iou,
            max_det=self.max_det,
            imgsz=self.imgsz,
            device=resolve_device(self.device),
            quantize=16 if self.precision == "fp16" else None,
            verbose=False,
        )


class AnnotationsDetector(DetectorResource):
    """The sample's annotated nuScenes 3D boxes projected into the camera (ground truth)."""

    backend: ClassVar[str] = "annotations"
    box_visibility: Literal["any", "all", "none"] = Field(
        default="any", description="devkit BoxVisibility: keep boxes with any / all corners in the image, or all"
    )
    min_visibility: int = Field(default=1, ge=1, le=4, description="lowest nuScenes visibility token kept (1..4)")

    def identity(self) -> ModelIdentity:
        return model_identity("annotations", self.model_dump(include={"box_visibility", "min_visibility"}))

    def annotation_boxes(self, nusc: NuScenes, sample_data_token: str) -> AnnotationBoxes:
        """The sample's annotated 3D boxes projected into this camera image, filtered by visibility."""
        from nuscenes.utils.geometry_utils import BoxVisibility

        level = {"any": BoxVisibility.ANY, "all": BoxVisibility.ALL, "none": BoxVisibility.NONE}[self.box_visibility]
        sd = nusc.get("sample_data", sample_data_token)
        _, boxes3d, intrinsic = nusc.get_sample_data(sample_data_token, box_vis_level=level)
        boxes, behind, low = [], 0, 0
        for box3d in boxes3d:
            ann = nusc.get("sample_annotation", box3d.token)
            if _visibility_level(ann) < self.min_visibility:
                low += 1
                continue
            extent = project_corners(box3d.corners(), np.asarray(intrinsic), sd["width"], sd["height"])
            if extent is None:
                behind += 1
                continue
            boxes.append(_annotation_box(nusc, ann, extent))
        return AnnotationBoxes(boxes=boxes, behind_camera=behind, below_min_visibility=low)


def _annotation_box(nusc: NuScenes, ann: dict, extent: tuple[float, float, float, float]) -> Box:
    return Box(
        source_class=ann["category_name"],
        confidence=1.0,
        x1=extent[0],
        y1=extent[1],
        x2=extent[2],
        y2=extent[3],
        annotation_token=ann["token"],
        category=ann["category_name"],
        attributes=tuple(nusc.get("attribute", t)["name"] for t in ann["attribute_tokens"]),
        visibility=ann["visibility_token"],
    )


def _visibility_level(ann: dict) -> int:
    token = ann.get("visibility_token")
    try:
        return int(token)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"sample_annotation {ann['token']} has visibility_token {token!r}, expected 1..4") from exc


def _result_boxes(result: Any) -> list[Box]:
    """Boxes of one ultralytics ``Results`` in original pixels."""
    xyxy = result.boxes.xyxy.cpu().numpy()
    conf = result.boxes.conf.cpu().numpy()
    cls = result.boxes.cls.cpu().numpy().astype(int)
    return [
        Box(result.names[c], float(s), float(b[0]), float(b[1]), float(b[2]), float(b[3]))
        for b, s, c in zip(xyxy, conf, cls, strict=True)
    ]
