"""Checks ``conceptmine run`` makes before it registers a partition or writes a file.

Settings (the typed model), the dataroot and every one of its tables (the devkit loads them;
loaded once per process, so the runs that follow reuse it), the model files named by the
settings and the concept vocabulary. Each failure is a :class:`ConceptmineError` with one line
naming the setting, file or table and what to do.
"""

from __future__ import annotations

from pathlib import Path

from conceptmine_assets.errors import ConceptmineError, DatasetError, ModelLoadError
from conceptmine_assets.settings import Settings, config_path, load_settings


def _looks_like_path(value: str) -> bool:
    """A local file name rather than a hub model name (``yolov8l.pt``) or a URL."""
    return "://" not in value and ("/" in value or Path(value).suffix in (".tflite", ".onnx", ".engine"))


def check_models(settings: Settings) -> None:
    """Model files named by the settings exist and are not empty (hub names are left to the run)."""
    if settings.detector == "yolo" and settings.profile == "offline":
        weights = settings.yolo_weights
        if not weights:
            raise ModelLoadError(
                "the offline profile's detector needs weights: set CONCEPTMINE_YOLO_WEIGHTS or `yolo_weights` "
                f"in {config_path() or 'conceptmine.yaml'} (or CONCEPTMINE_DETECTOR=annotations)"
            )
        path = Path(weights)
        if _looks_like_path(weights) and (not path.is_file() or path.stat().st_size == 0):
            state = "is empty" if path.is_file() else "does not exist"
            raise ModelLoadError(f"detector weights {path} {state}: fix `yolo_weights` / CONCEPTMINE_YOLO_WEIGHTS")


def check_vocabulary(settings: Settings) -> None:
    from conceptmine_assets.resources.vocabulary import VocabularyResource

    if settings.vocabulary and not Path(settings.vocabulary).is_file():
        raise ConceptmineError(f"concept vocabulary {settings.vocabulary} does not exist: fix `vocabulary` / CONCEPTMINE_VOCABULARY")
    VocabularyResource(path=settings.vocabulary).load()


def check_dataroot(settings: Settings):
    """The dataroot resource after loading every table (a DatasetError naming the bad one)."""
    from conceptmine_assets.resources.nuscenes import NuScenesResource

    if not settings.dataroot:
        raise DatasetError(f"no nuScenes dataroot: set NUSCENES_DATAROOT or `dataroot` in {config_path() or 'conceptmine.yaml'}")
    nuscenes = NuScenesResource(dataroot=settings.dataroot, version=settings.nuscenes_version)
    names = nuscenes.scene_names()
    if not names:
        raise DatasetError(f"{nuscenes.table_dir / 'scene.json'} lists no scenes")
    nuscenes.nusc  # noqa: B018 - loads and validates every table once
    return nuscenes


def preflight() -> tuple[Settings, object]:
    """(settings, nuscenes resource) once everything checks; raises on the first problem."""
    settings = load_settings()
    nuscenes = check_dataroot(settings)
    check_models(settings)
    check_vocabulary(settings)
    from conceptmine_assets.runner import definitions_for

    definitions_for(settings)  # executor and resources resolve (built once; the runs reuse them)
    return settings, nuscenes
