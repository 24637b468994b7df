"""Shared test fixtures: paths to the repository's own data/fixtures, a tmp store, an ephemeral instance."""

import os
import tempfile
from pathlib import Path

import dagster as dg
import pytest

# Hub look-ups hang offline; every model in the tests is local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-config-"))

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "data" / "fixtures"  # committed with the repository (provenance: data/fixtures/README.md)
REAL_SLICE = FIXTURES / "nuscenes-real-slice"
HIGHWAY = FIXTURES / "nuscenes-udacity-highway"
YOLO_TFLITE = FIXTURES / "models" / "yolov8n_int8.tflite"
REAL_SCENE = "scene-0061"
HIGHWAY_SCENES = ["scene-udacity-0001", "scene-udacity-0002", "scene-udacity-0003"]


def require(path: Path) -> Path:
    """The path of a committed fixture; its absence is a broken checkout, not a reason to skip."""
    if not path.exists():
        raise FileNotFoundError(f"fixture {path} is missing: it is committed under data/fixtures/ (see its README)")
    return path


@pytest.fixture
def real_slice() -> Path:
    return require(REAL_SLICE)


@pytest.fixture
def highway() -> Path:
    return require(HIGHWAY)


@pytest.fixture
def yolo_tflite() -> Path:
    return require(YOLO_TFLITE)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


def materialize_scene(assets, scene: str, instance: dg.DagsterInstance, resources: dict, **kwargs):
    """Materialise ``assets`` for one scene partition, registering the partition first."""
    from conceptmine_assets.partitions import SCENE_PARTITIONS_NAME

    if not instance.has_dynamic_partition(SCENE_PARTITIONS_NAME, scene):
        instance.add_dynamic_partitions(SCENE_PARTITIONS_NAME, [scene])
    return dg.materialize(assets, partition_key=scene, instance=instance, resources=resources, **kwargs)


def copy_dataroot(src: Path, dst: Path, version: str = "v1.0-mini") -> Path:
    """A writable nuScenes dataroot under ``dst``: tables copied, sensor files copied per file.

    Tests corrupt or delete files in the copy; the shared fixture is never touched.
    """
    import shutil

    shutil.copytree(src / version, dst / version)
    shutil.copytree(src / "maps", dst / "maps")
    shutil.copytree(src / "samples", dst / "samples")
    return dst


def deployment_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dataroot: Path, weights: Path) -> Path:
    """Select a deployment through the environment, as the command line sees one: ``dataroot``,
    a store and a Dagster home under ``tmp_path``, the offline profile with ``weights``; the
    current directory is ``tmp_path``. Returns the store path (not created)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    for key, value in {
        "DAGSTER_HOME": str(home), "NUSCENES_DATAROOT": str(dataroot), "CONCEPTMINE_STORE": str(tmp_path / "store"),
        "CONCEPTMINE_YOLO_WEIGHTS": str(weights), "CONCEPTMINE_PROFILE": "offline",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("CONCEPTMINE_CAPTIONER", "CONCEPTMINE_VOCABULARY", "CONCEPTMINE_DETECTOR", "CONCEPTMINE_EXECUTOR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "store"
