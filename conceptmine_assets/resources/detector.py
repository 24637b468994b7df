"""2D object detection behind one resource: an ultralytics YOLO model, or nuScenes 3D boxes
projected into the camera (``annotations``, ground truth for checks and for annotated data).

Class names are normalised through one table, ``conceptmine_assets/data/class_map.csv``
(COCO names and nuScenes categories → nuScenes-style names; anything not listed → ``others``).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import dagster as dg
import numpy as np

from conceptmine_assets.errors import DatasetError, ModelLoadError
from conceptmine_assets.lib.geometry import project_corners

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


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda:0`` when a GPU is visible, else ``cpu``; anything else unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


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
    from ultralytics import YOLO

    try:
        return YOLO(weights, task="detect")
    except Exception as exc:  # ultralytics raises many types (FileNotFoundError, ConnectionError, RuntimeError, ...)
        raise ModelLoadError(f"could not load YOLO weights {weights}: {type(exc).__name__}: {exc}") from exc


class DetectorResource(dg.ConfigurableResource):
    """2D detector: ``yolo`` runs ultralytics weights (.pt/.onnx/.tflite, bare names download where
    there is internet); ``annotations`` projects the sample's 3D boxes with the nuscenes-devkit."""

    backend: Literal["yolo", "annotations"] = "yolo"
    weights: str = "yolov8l.pt"  # the paper's detector
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["fp32", "fp16"] = "fp32"
    batch_size: int = 16
    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 100
    imgsz: int = 640
    box_visibility: Literal["any", "all", "none"] = "any"  # annotations: devkit BoxVisibility
    min_visibility: int = 1  # annotations: lowest nuScenes visibility token kept (1..4)

    @property
    def model_id(self) -> str:
        """Identity of the detector, stored with every box: ``yolo:<weights file name>`` or ``annotations``."""
        return "annotations" if self.backend == "annotations" else f"yolo:{Path(self.weights).name}"

    def load(self) -> Any:
        """The ultralytics model (loaded on first use, then shared by the process)."""
        if self.backend != "yolo":
            raise ModelLoadError(f"detector backend {self.backend!r} has no model to load")
        return _load_yolo(self.weights)

    def predict(self, images: list[np.ndarray]) -> list[list[Box]]:
        """Boxes per image for one batch of ``(h, w, 3)`` uint8 RGB images, in one ultralytics call."""
        if not images:
            return []
        model = self.load()
        results = model.predict(
            [np.ascontiguousarray(im[..., ::-1]) for im in images],  # ultralytics takes BGR arrays
            conf=self.conf,
            iou=self.iou,
            max_det=self.max_det,
            imgsz=self.imgsz,
            device=resolve_device(self.device),
            quantize=16 if self.precision == "fp16" else None,
            verbose=False,
        )
        return [_result_boxes(r) for r in results]

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
            boxes.append(
                Box(
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
            )
        return AnnotationBoxes(boxes=boxes, behind_camera=behind, below_min_visibility=low)


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
