"""Shared pytest fixtures (the plain helpers they build on live in ``helpers.py``)."""

import os
import tempfile
from pathlib import Path

import dagster as dg
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

    from conceptmine_assets import cli
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
