"""Helpers for the server tests: a hand-written multi-scene store, and the app over a store."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from conceptmine_assets.schemas import CONCEPT_SCORES, CROPS, MINED_SPLIT, OUTLIER_FLAGS
from conceptmine_assets_tests.helpers import jpeg, write_table

GROUPS = ["common", "common", "rare", "target"]
CLASSES = ["car", "pedestrian", "truck"]
DETECTORS = [[], ["lof"], ["iforest", "knn"], []]


def _empty(schema, n: int) -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series([None] * n, dtype=object) for name in schema.names})


def grid_store(store: Path, scenes: int = 40, per_scene: int = 3) -> pd.DataFrame:
    """``scenes`` scenes of ``per_scene`` crops each, with concept scores, outlier flags and a mined
    split of every fifth sample; returns the crops' grid columns (one row per crop) as written."""
    rows = []
    for s in range(scenes):
        scene = f"scene-{s:04d}"
        for i in range(per_scene):
            k = s * per_scene + i
            rows.append({"detection_id": f"d{k:05d}", "scene_name": scene, "sample_token": f"t-{scene}-{i % 2}",
                         "class_name": CLASSES[k % 3], "group": GROUPS[k % 4], "top_concept": CLASSES[k % 3],
                         "outlier_detectors": DETECTORS[k % 4]})
    truth = pd.DataFrame(rows)
    image = jpeg(24, 16, 0)
    for scene, part in truth.groupby("scene_name"):
        n = len(part)
        crops = _empty(CROPS, n)
        for c in ("detection_id", "scene_name", "sample_token", "class_name"):
            crops[c] = part[c].to_numpy()
        crops["sample_data_token"], crops["channel"] = "sd-" + part["sample_token"].to_numpy(), "CAM_FRONT"
        crops["confidence"], crops["x1"], crops["y1"], crops["x2"], crops["y2"] = 0.9, 10.0, 10.0, 50.0, 40.0
        for c in ("crop_x1", "crop_y1", "crop_x2", "crop_y2"):
            crops[c] = 0
        crops["image_jpeg"] = [image] * n
        write_table(store, "crops", crops, scene)
        scores = _empty(CONCEPT_SCORES, n)
        flags = _empty(OUTLIER_FLAGS, n)
        for df in (scores, flags):
            for c in ("detection_id", "scene_name", "sample_token", "class_name"):
                df[c] = part[c].to_numpy()
            df["sample_data_token"], df["channel"] = crops["sample_data_token"].to_numpy(), "CAM_FRONT"
        scores["group"], scores["top_concept"], scores["top_score"] = part["group"].to_numpy(), part["top_concept"].to_numpy(), 0.5
        scores["concept_names"] = [np.array(CLASSES, dtype=object)] * n
        scores["concept_scores"] = [np.array([0.5, 0.2, 0.1], np.float32)] * n
        write_table(store, "concept_scores", scores, scene)
        flags["outlier_detectors"] = pd.Series(list(part["outlier_detectors"]), dtype=object)
        flags["is_outlier"] = [bool(d) for d in part["outlier_detectors"]]
        flags["quality_flags"] = pd.Series([[] for _ in range(n)], dtype=object)
        for d in ("iforest", "lof", "knn"):
            flags[f"{d}_flag"] = [d in x for x in part["outlier_detectors"]]
        flags["is_quality_outlier"] = False
        write_table(store, "outlier_flags", flags, scene)
    samples = sorted(truth["sample_token"].unique())[::5]
    split = _empty(MINED_SPLIT, len(samples))
    split["sample_token"] = samples
    split["scene_name"] = [truth.loc[truth["sample_token"] == t, "scene_name"].iloc[0] for t in samples]
    split["reason"] = ["target" if i % 2 == 0 else "random" for i in range(len(samples))]
    split["rank"] = list(range(len(samples)))
    for c in ("detection_ids", "top_concepts", "captions", "outlier_detectors"):
        split[c] = pd.Series([[] for _ in samples], dtype=object)
    split["top_scores"] = pd.Series([[] for _ in samples], dtype=object)
    write_table(store, "mined_split", split)
    truth["reason"] = truth["sample_token"].map(dict(zip(split["sample_token"], split["reason"])))
    return truth.sort_values(["scene_name", "detection_id"]).reset_index(drop=True)


def copy_store(source: Path, target: Path) -> Path:
    """A private copy of a store (reviews are written into it)."""
    shutil.copytree(source, target)
    return target


@contextmanager
def served(app) -> Iterator[str]:
    """``app`` in a uvicorn server on a free 127.0.0.1 port, in a thread; yields its base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive()


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
