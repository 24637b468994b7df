"""Helpers shared by the test modules: fixture paths, private dataroots, running and reading assets.

Test modules import from here (never from each other, never from ``conftest.py``, which only
holds pytest fixtures built on these helpers).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "data" / "fixtures"  # committed with the repository (provenance: data/fixtures/README.md)
REAL_SLICE = FIXTURES / "nuscenes-real-slice"
HIGHWAY = FIXTURES / "nuscenes-udacity-highway"
YOLO_TFLITE = FIXTURES / "models" / "yolov8n_int8.tflite"
REAL_SCENE = "scene-0061"
HIGHWAY_SCENES = ["scene-udacity-0001", "scene-udacity-0002", "scene-udacity-0003"]
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
SCENE_ASSETS = ["frames", "detections", "crops", "embeddings", "outlier_flags", "captions", "concept_scores"]
GLOBAL_ASSETS = ["outlier_reference", "mined_split", "mining_quality_report", "embedding_clusters", "gallery", "search_index"]
DERIVED = sorted(set(GLOBAL_ASSETS) - {"outlier_reference"})  # cheap global views, refreshed after scenes


def require(path: Path) -> Path:
    """The path of a committed fixture; its absence is a broken checkout, not a reason to skip."""
    if not path.exists():
        raise FileNotFoundError(f"fixture {path} is missing: it is committed under data/fixtures/ (see its README)")
    return path


# ---------------------------------------------------------------- dataroots


def copy_dataroot(source: Path, target: Path) -> Path:
    """A private, writable copy of the nuScenes dataroot ``source`` at ``target``.

    Everything is copied (tables, maps, sensor files; the fixtures are a few MB), never linked:
    tests corrupt, truncate or delete files in the copy and the shared fixture is never touched.
    """
    shutil.copytree(require(source), target, symlinks=False)
    return target


def truncate_image(dataroot: Path, relative: str, keep: float = 0.4) -> Path:
    """Cut one image of a private dataroot to ``keep`` of its bytes (header intact, data cut)."""
    path = dataroot / relative
    data = path.read_bytes()
    path.unlink()  # never write through a link into a shared file
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def gt_truck(real_slice: Path) -> tuple[str, tuple[float, float, float, float]]:
    """Annotation token and projected 2D box of the big parked truck in CAM_FRONT (largest truck box)."""
    from conceptmine_assets.resources.detector import AnnotationsDetector
    from conceptmine_assets.resources.nuscenes import NuScenesResource

    nusc = NuScenesResource(dataroot=str(real_slice)).nusc
    found = AnnotationsDetector().annotation_boxes(nusc, nusc.sample[0]["data"]["CAM_FRONT"])
    trucks = [b for b in found.boxes if b.category == "vehicle.truck"]
    big = max(trucks, key=lambda b: (b.x2 - b.x1) * (b.y2 - b.y1))
    return big.annotation_token, (big.x1, big.y1, big.x2, big.y2)


def tiny_clip_config_path() -> str:
    """A tiny open_clip config (model name ``tiny_clip``, 64-d) for random CI twins of CLIP."""
    return str(Path(__file__).parent / "tiny_clip.json")


def box_iou(a: tuple, b: tuple) -> float:
    """Intersection over union of two boxes; 0 when either has no area."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# ---------------------------------------------------------------- running assets


def materialize_scene(assets, scene: str, instance: dg.DagsterInstance, resources: dict, **kwargs):
    """Materialise ``assets`` for one scene partition, registering the partition first."""
    from conceptmine_assets.partitions import SCENE_PARTITIONS_NAME

    if not instance.has_dynamic_partition(SCENE_PARTITIONS_NAME, scene):
        instance.add_dynamic_partitions(SCENE_PARTITIONS_NAME, [scene])
    return dg.materialize(assets, partition_key=scene, instance=instance, resources=resources, **kwargs)


def perception_resources(dataroot: Path, store: Path, **detector) -> dict:
    """nuScenes, detector (a YOLO detector with fields ``detector`` when they name ``weights``, else
    the annotations detector) and the Parquet IO manager on ``store``."""
    from conceptmine_assets.resources.detector import AnnotationsDetector, YoloDetector
    from conceptmine_assets.resources.nuscenes import NuScenesResource
    from conceptmine_assets.resources.storage import ParquetIOManager

    return {
        "nuscenes": NuScenesResource(dataroot=str(dataroot)),
        "detector": YoloDetector(**detector) if "weights" in detector else AnnotationsDetector(),
        "io_manager": ParquetIOManager(base_path=str(store)),
    }


def frames_config(cameras: list[str] | None = None, **config) -> dict:
    """Run config of the ``frames`` op (``cameras`` and any other of its fields)."""
    if cameras is not None:
        config["cameras"] = cameras
    return {"ops": {"frames": {"config": config}}}


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    """The plain values of ``asset``'s first materialisation metadata in ``result``."""
    for event in result.get_asset_materialization_events():
        if event.materialization.asset_key.path[-1] == asset:
            return {k: v.value for k, v in event.materialization.metadata.items()}
    raise AssertionError(f"no materialisation of {asset}")


# ---------------------------------------------------------------- the store


def stored(store: Path, asset: str, scene: str | None = None) -> pd.DataFrame:
    """A stored table: one scene's file of a partitioned asset, or a global asset's file."""
    path = store / asset / f"{scene}.parquet" if scene else store / f"{asset}.parquet"
    return pq.read_table(path).to_pandas()


def write_table(store: Path, asset: str, df: pd.DataFrame, scene: str | None = None) -> None:
    """Store a hand-made table as the IO manager would (conformed to the asset's schema, atomic):
    one scene's file of a partitioned asset, or a global asset's file when ``scene`` is None."""
    from upath import UPath

    from conceptmine_assets.resources.storage import atomic_write, to_arrow

    table = to_arrow(df, asset, f"test {asset}")
    path = UPath(store) / asset / f"{scene}.parquet" if scene else UPath(store) / f"{asset}.parquet"
    atomic_write(path, lambda fh: pq.write_table(table, fh))


# ---------------------------------------------------------------- a deployment in a folder


def set_deployment(mp: pytest.MonkeyPatch, dataroot: Path, root: Path, **overrides: str) -> Path:
    """Set, through ``mp``, the environment of a deployment on ``root`` (DAGSTER_HOME, store, cwd
    for relative side files); the offline profile with the dataset's own boxes as detector unless
    ``overrides`` say otherwise. Returns DAGSTER_HOME."""
    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    for key, value in {
        "DAGSTER_HOME": str(home), "NUSCENES_DATAROOT": str(dataroot), "CONCEPTMINE_STORE": str(root / "store"),
        "CONCEPTMINE_DETECTOR": "annotations", "CONCEPTMINE_PROFILE": "offline", **overrides,
    }.items():
        mp.setenv(key, value)
    for key in ("CONCEPTMINE_CAPTIONER", "CONCEPTMINE_VOCABULARY", "CONCEPTMINE_EXECUTOR", "CONCEPTMINE_CONFIG"):
        if key not in overrides:
            mp.delenv(key, raising=False)
    mp.chdir(root)
    return home


@contextmanager
def pipeline_env(dataroot: Path, root: Path) -> Iterator[Path]:
    """:func:`set_deployment` for the duration of a ``with`` block; yields DAGSTER_HOME."""
    with pytest.MonkeyPatch.context() as mp:
        yield set_deployment(mp, dataroot, root)


# ---------------------------------------------------------------- hand-made inputs

USER_VOCABULARY = """
version: "2"
concepts:
  - {name: truck, group: target, alternatives: [lorry]}
  - {name: car, group: common}
  - {name: tanker_truck, group: rare, superclass: truck, alternatives: [fuel tanker]}
"""


def write_vocabulary(folder: Path, body: str) -> Path:
    """A user vocabulary file ``folder/my_vocab.yaml`` holding ``body`` (dedented)."""
    path = folder / "my_vocab.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def jpeg(w: int, h: int, seed: int) -> bytes:
    """A ``w`` x ``h`` JPEG of seeded random pixels."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def tiny_twin(**overrides):
    """A random-init (seeded) 64-d open_clip twin from the packaged tiny config."""
    from conceptmine_assets.resources.open_clip_embedder import OpenClipEmbedder

    config = {"model": "tiny_clip", "pretrained": None, "model_config_path": tiny_clip_config_path(), "device": "cpu"}
    return OpenClipEmbedder(**{**config, **overrides})


# ---------------------------------------------------------------- synthetic vectors and plots


def labelled_blobs(n: int = 60, centers: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 8-D points in ``centers`` tight, well separated blobs, and their blob labels."""
    from sklearn.datasets import make_blobs

    X, y = make_blobs(n_samples=n, centers=centers, n_features=8, cluster_std=0.3, center_box=(-10, 10),
                      random_state=seed)
    return X.astype(np.float32), y


def unit_blobs(rng: np.random.Generator, n: int, centers: np.ndarray, spread: float = 0.05) -> np.ndarray:
    """L2-normalised points around unit ``centers`` (like CLIP crops of a few common classes)."""
    x = centers[rng.integers(0, len(centers), n)] + spread * rng.standard_normal((n, centers.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted_outliers(rng: np.random.Generator, n: int, dim: int = 32) -> np.ndarray:
    """Random unit vectors: almost orthogonal to every blob centre in 32-D, i.e. far outliers."""
    x = rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def decode_png(markdown: str) -> bytes:
    """The PNG bytes of an inline Markdown image (``![...](data:image/png;base64,...)``)."""
    match = re.fullmatch(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert match, markdown[:80]
    return base64.b64decode(match.group(1))


def drop_scene(root: Path, name: str) -> dict:
    """Remove scene ``name`` from scene.json (the dataroot 'before the drive arrived')."""
    table = root / "v1.0-mini" / "scene.json"
    scenes = json.loads(table.read_text())
    table.write_text(json.dumps([s for s in scenes if s["name"] != name]))
    return next(s for s in scenes if s["name"] == name)


def add_scene(root: Path, record: dict) -> None:
    """Put a scene record back at the end of scene.json (a drive that arrived)."""
    table = root / "v1.0-mini" / "scene.json"
    table.write_text(json.dumps([*json.loads(table.read_text()), record]))


UPDATE_DOCS = os.environ.get("CONCEPTMINE_UPDATE_SCREENSHOTS") == "1"  # browser tests refresh docs/*.png


def screenshot(page, tmp_path: Path, name: str) -> Path:
    """A screenshot of ``page`` (not blank: over 10 kB), copied to docs/ with CONCEPTMINE_UPDATE_SCREENSHOTS=1."""
    path = tmp_path / name
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000
    if UPDATE_DOCS:
        shutil.copyfile(path, REPO / "docs" / name)
    return path
