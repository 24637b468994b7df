"""`conceptmine import-images` end to end: the whole pipeline on an imported folder and video, the
annotations backend on a dataroot without annotations, and a clone of the repository on its own."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from conceptmine_assets.cli import entry as cli
from conceptmine_assets.cli.import_images import import_images
from conceptmine_assets.errors import DatasetError
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets_tests.helpers import REPO, YOLO_TFLITE, materialize_scene, pipeline_env, require
from conceptmine_assets_tests.importer_sources import folder_tree, tables, write_video


def test_annotations_backend_says_there_are_none(tmp_path, instance, store):
    from conceptmine_assets.assets.detections import detections
    from conceptmine_assets.assets.frames import frames
    from conceptmine_assets.resources.detector import AnnotationsDetector
    from conceptmine_assets.resources.storage import ParquetIOManager

    out = tmp_path / "out"
    import_images(folder_tree(tmp_path), out)
    resources = {
        "nuscenes": NuScenesResource(dataroot=str(out)),
        "io_manager": ParquetIOManager(base_path=str(store)),
        "detector": AnnotationsDetector(),
    }
    with pytest.raises(DatasetError, match="has no annotations"):
        materialize_scene([frames, detections], "drive-a", instance, resources)
    assert not (store / "detections").exists()



@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.parametrize("kind", ["folders", "video"])
def test_whole_pipeline_on_an_import_finds_cars(tmp_path, kind):
    from threadpoolctl import threadpool_limits

    src = folder_tree(tmp_path) if kind == "folders" else write_video(tmp_path / "src" / "highway.mp4").parent
    out = tmp_path / "dataroot"
    scenes = import_images(src, out).scenes
    with pipeline_env(out, tmp_path), pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONCEPTMINE_DETECTOR", "yolo")  # pipeline_env sets annotations: the import has none
        mp.setenv("CONCEPTMINE_YOLO_WEIGHTS", str(require(YOLO_TFLITE)))
        with dg.DagsterInstance.get() as instance:
            assert cli.register_scenes(instance) == scenes
            with threadpool_limits(1, user_api="openmp"):
                split = {"target_frac": 0.5, "random_frac": 0.5}
                cli.run_pipeline(instance, scenes, ops={"mined_split": {"config": split}})
            runs = instance.get_runs(filters=dg.RunsFilter(job_name="mining_global_job"))
            warnings = [e.user_message for e in instance.all_logs(runs[0].run_id) if e.level == logging.WARNING]
    store = tmp_path / "store"
    dets = pd.concat(pd.read_parquet(store / "detections" / f"{s}.parquet") for s in scenes)
    cars = dets[dets["class_name"] == "car"]
    assert set(cars["scene_name"]) == set(scenes) and cars["detector"].str.startswith("yolo:yolov8n_int8.tflite@").all()
    crops = pd.concat(pd.read_parquet(store / "crops" / f"{s}.parquet") for s in scenes)
    assert len(crops) and crops["lidar_points"].isna().all() and crops["lidar_median_depth"].isna().all()
    embedded = pd.concat(pd.read_parquet(store / "embeddings" / f"{s}.parquet") for s in scenes)
    assert set(embedded["detection_id"]) == set(crops["detection_id"])
    split = (tmp_path / "store" / "splits" / "mined.txt").read_text().split()
    assert split and set(split) <= {s["token"] for s in tables(out)["sample"]}
    assert any("has no annotations at all" in w for w in warnings), warnings


def _clean_env(clone: Path) -> dict[str, str]:
    """The environment of a user's shell: none of the variables the Makefile or a test set."""
    drop = ("NUSCENES_", "CONCEPTMINE_", "DAGSTER_HOME", "YOLO_", "HF_HUB_OFFLINE", "PYTEST_", "MAKE", "MFLAGS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, "PYTHONPATH": str(clone)}


@pytest.mark.slow
def test_a_clone_alone_runs_the_demo_and_its_tests(tmp_path):
    """``git clone`` of the committed HEAD into an otherwise empty folder (no sibling fixture folder
    to lean on): the README's ``make demo``
    (on the existing virtual environment: ``-o`` keeps make from rebuilding it) and a fast subset
    of the tests pass there."""
    if not (REPO / ".git").exists():
        pytest.skip(f"{REPO} is not a git checkout: nothing to clone")
    clone = tmp_path / "conceptmine"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    assert [p.name for p in tmp_path.iterdir()] == [clone.name]  # the clone has nothing beside it
    env, bin_dir = _clean_env(clone), Path(sys.executable).parent
    found = subprocess.run([sys.executable, "-c", "import conceptmine_assets; print(conceptmine_assets.__file__)"],
                           env=env, cwd=clone, capture_output=True, text=True, check=True)
    assert Path(found.stdout.strip()).is_relative_to(clone)
    demo = subprocess.run(["make", "-o", f"{bin_dir}/.installed", f"BIN={bin_dir}", "demo"],
                          env=env, cwd=clone, capture_output=True, text=True, timeout=1200)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    split = (clone / "data" / "store" / "splits" / "mined.txt").read_text().split()
    dataroot = clone / "data" / "demo-dataroot"
    assert split and set(split) <= {s["token"] for s in tables(dataroot)["sample"]}
    assert (clone / "data" / "store" / "gallery" / "index.html").is_file()
    links = [p for p in dataroot.rglob("*") if p.is_symlink()]
    assert links and all(p.resolve().is_relative_to(clone) for p in links)
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow",
         "conceptmine_assets_tests/test_importer.py", "conceptmine_assets_tests/test_foundation.py",
         "-k", "importer or sensor or frames_highway or missing or malformed"],
        env=env, cwd=clone, capture_output=True, text=True, timeout=1200,
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-3000:]
