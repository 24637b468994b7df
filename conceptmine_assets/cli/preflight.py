"""Checks ``conceptmine run`` makes before it registers a partition or writes a file.

Settings (the typed model), the dataroot and every one of its tables (the devkit loads them;
loaded once per process, so the runs that follow reuse it), the model files named by the
settings (they exist, load and run on a probe input) and the concept vocabulary. Each failure is
a :class:`ConceptmineError` with one line naming the setting, file or table and what to do.

The two expensive checks — loading every table, loading every model — are remembered in the
Dagster instance's folder (``<DAGSTER_HOME>/conceptmine/preflight.json``) by what they checked:
the tables' (name, size, mtime) digest and the models' identities (content hashes, settings).
A re-run with nothing changed skips them; a rewritten table or another weights file is checked again.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from conceptmine_assets.errors import ConceptmineError, DatasetError, ModelLoadError
from conceptmine_assets.settings import Settings, config_path, load_settings

RECORD = Path("conceptmine") / "preflight.json"


class CheckedRecord:
    """What earlier pre-flight checks found good, as ``{what: identity}``; ``root=None`` remembers nothing."""

    def __init__(self, root: str | os.PathLike | None) -> None:
        self.path = Path(root) / RECORD if root is not None else None
        self.entries: dict[str, str] = {}
        if self.path is not None and self.path.is_file():
            try:
                self.entries = {str(k): str(v) for k, v in json.loads(self.path.read_text()).items()}
            except (ValueError, AttributeError) as exc:  # it is only ever replaced whole, so someone edited it
                raise ConceptmineError(f"{self.path} is not a pre-flight record ({exc}): delete it") from None

    def holds(self, what: str, identity: str) -> bool:
        return self.entries.get(what) == identity

    def add(self, what: str, identity: str) -> None:
        self.entries[what] = identity

    def save(self) -> None:
        """Written whole (temp file + rename) after every check passed."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".preflight.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(self.entries, fh, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


def _looks_like_path(value: str) -> bool:
    """A local file name rather than a hub model name (``yolov8l.pt``) or a URL."""
    return "://" not in value and ("/" in value or Path(value).suffix in (".tflite", ".onnx", ".engine"))


def check_model_files(settings: Settings) -> None:
    """Model files named by the settings exist and are not empty (hub names are left to loading)."""
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


def check_models_load(resources: dict, record: CheckedRecord) -> None:
    """The deployment's models (``detector``, ``embedder``, ``captioner`` of its resources) each
    load and run on a probe input, unless a model of this identity already did."""
    for name in ("detector", "embedder", "captioner"):
        resource = resources[name]
        identity = resource.model_id
        if record.holds(f"model {name}", identity):
            continue
        try:
            resource.verify()
        except ConceptmineError:
            raise
        except Exception as exc:  # loaders raise anything (OSError, RuntimeError, ValueError, ...)
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise ModelLoadError(
                f"the {name} ({identity.split('@')[0]}) does not load or run: {type(exc).__name__}: {first}; "
                "check its weights / model settings"
            ) from exc
        record.add(f"model {name}", identity)


def check_vocabulary(settings: Settings) -> None:
    from conceptmine_assets.resources.vocabulary import VocabularyResource

    if settings.vocabulary and not Path(settings.vocabulary).is_file():
        raise ConceptmineError(f"concept vocabulary {settings.vocabulary} does not exist: fix `vocabulary` / CONCEPTMINE_VOCABULARY")
    VocabularyResource(path=settings.vocabulary).load()


def check_dataroot(settings: Settings, record: CheckedRecord):
    """The dataroot resource after loading every table (a DatasetError naming the bad one)."""
    from conceptmine_assets.resources.nuscenes import NuScenesResource

    if not settings.dataroot:
        raise DatasetError(f"no nuScenes dataroot: set NUSCENES_DATAROOT or `dataroot` in {config_path() or 'conceptmine.yaml'}")
    nuscenes = NuScenesResource(dataroot=settings.dataroot, version=settings.nuscenes_version)
    names = nuscenes.scene_names()
    if not names:
        raise DatasetError(f"{nuscenes.table_dir / 'scene.json'} lists no scenes")
    what, stamp = f"dataroot {nuscenes.table_dir.resolve()}", nuscenes.tables_stamp()
    if not record.holds(what, stamp):
        nuscenes.nusc  # noqa: B018 - loads and validates every table once
        record.add(what, stamp)
    return nuscenes


def watch_store(store: str) -> None:
    """Stamp a local store's files in the no-change memo (``uptodate.py``, kind ``store``)."""
    from conceptmine_assets.cli.runlock import is_local, local_path
    from conceptmine_assets.lib.watched import watch

    if is_local(store):
        watch(local_path(store), "store")


def preflight(instance_root: str | os.PathLike | None = None, load_models: bool = True) -> tuple[Settings, object]:
    """(settings, nuscenes resource) once everything checks; raises on the first problem.
    ``instance_root``: the Dagster instance's folder, where passed checks are remembered;
    ``load_models=False`` (registering scenes) checks model files exist but loads none."""
    settings = load_settings()
    watch_store(settings.store)  # a plan depends on the stored files too (their records are checked)
    record = CheckedRecord(instance_root)
    nuscenes = check_dataroot(settings, record)
    check_model_files(settings)
    check_vocabulary(settings)
    from conceptmine_assets.cli.runner import definitions_for

    defs = definitions_for(settings)  # executor and resources resolve (built once; the runs reuse them)
    if load_models:
        check_models_load(defs.resources, record)
    record.save()
    return settings, nuscenes
