"""Shared pytest fixtures (the plain helpers they build on live in ``helpers.py``)."""

import os
import tempfile
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from conceptmine_assets_tests.helpers import HIGHWAY, REAL_SCENE, REAL_SLICE, YOLO_TFLITE, pipeline_env, require

# Hub look-ups hang offline; every model in the tests is local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-config-"))


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
def highway_root(highway, tmp_path) -> Path:
    """A private copy of the highway clip (tables written, files symlinked)."""
    from conceptmine_assets.lib.synth import synth_dataroot

    synth_dataroot([highway], tmp_path / "root")
    return tmp_path / "root"


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


@pytest.fixture(scope="session")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The whole pipeline on the real slice, once per test session, as ``conceptmine demo`` runs it
    (offline profile, the dataset's own boxes, CAM_FRONT), then a mined split that takes the one
    sample (target budget 100 %) with embedding_clusters and gallery. Returns paths, the result and the
    mining-quality report's metadata."""
    from threadpoolctl import threadpool_limits

    from conceptmine_assets.cli import entry as cli
    from conceptmine_assets.definitions import build_definitions
    from conceptmine_assets.settings import Settings

    dataroot, root = require(REAL_SLICE), tmp_path_factory.mktemp("real-run")
    with pipeline_env(dataroot, root) as home, dg.DagsterInstance.get() as instance:
        cli.register_scenes(instance)
        with threadpool_limits(1, user_api="openmp"):  # t-SNE's OpenMP threads crawl on a busy 2-core machine
            cli.run_pipeline(instance, [REAL_SCENE])  # the config file's cameras: CAM_FRONT
        defs = build_definitions(Settings.from_env())
        run_config = {"ops": {
            "mined_split": {"config": {"target_frac": 1.0, "random_frac": 0.0, "output_dir": str(root / "splits")}},
            "gallery": {"config": {"output_dir": str(root / "gallery")}},
        }}
        result = dg.materialize(  # every asset: the global ones read their inputs through the IO manager
            list(defs.assets), selection=["mined_split", "embedding_clusters", "gallery"],
            resources=defs.resources, instance=instance, run_config=run_config,
        )
        report = instance.get_latest_materialization_event(dg.AssetKey("mining_quality_report"))
    return {"dataroot": dataroot, "home": home, "store": root / "store", "gallery": root / "gallery" / "index.html",
            "result": result, "report_metadata": report.asset_materialization.metadata if report else None}


# ---------------------------------------------------------------- models and inputs shared by several modules
# Session-scoped ones are only ever read by the tests, so building them once is safe.


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2-VL twin saved in a folder (the captioner tests only load it)."""
    from conceptmine_assets_tests.tiny_qwen2_vl import build_tiny_qwen2_vl

    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-vl"))


@pytest.fixture
def server():
    """A fake OpenAI-compatible server on 127.0.0.1 (``fake_openai.py``); set ``server.mode``."""
    from conceptmine_assets_tests.fake_openai import fake_openai_server

    with fake_openai_server() as srv:
        yield srv


@pytest.fixture(scope="session")
def crops_df():
    """Crops-shaped rows cut from the real slice (``real_crops.py``), for the embedding tests."""
    from conceptmine_assets_tests.real_crops import real_slice_crops

    return real_slice_crops()


@pytest.fixture(scope="session")
def offline():
    """The offline profile's embedder on CPU (its models load once per process)."""
    from conceptmine_assets.resources.offline_embedder import OfflineEmbedder

    return OfflineEmbedder(device="cpu")


@pytest.fixture(scope="module")
def centers() -> np.ndarray:
    """Three unit blob centres in 32-D for the outlier tests (see ``helpers.unit_blobs``)."""
    c = np.random.default_rng(0).standard_normal((3, 32))
    return c / np.linalg.norm(c, axis=1, keepdims=True)
