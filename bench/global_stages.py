"""Seconds and peak RSS of the global stages on a synthetic store of N scenes.

    .venv/bin/python bench/global_stages.py --scenes 85 --out /tmp/gs     # write the store, run every stage
    .venv/bin/python bench/global_stages.py --scenes 85 --out /tmp/gs --reuse --stages mined_split

The store holds every table the global stages read, in the project's schemas (written through
``to_arrow``, as the IO manager does): per scene 40 samples x 6 cameras, 7 crops per frame
(1,680 crops), 512-d L2-normalised embeddings from a seeded mixture of 24 clusters plus a small
planted rare one, concept scores over 40 concepts, outlier flags, template captions and a
~1.5 KB JPEG per crop; plus a minimal nuScenes table folder with one annotation per crop for the
mining-quality report. Each stage runs in a fresh subprocess (``dg.materialize`` of the project's
definitions, scenes registered in a temporary instance); peak RSS is the child's
``getrusage(RUSAGE_SELF).ru_maxrss`` and CPU seconds its user + system time (on a shared
machine the wall seconds mostly measure the other jobs). It prints a Markdown table. Run it from the checkout
whose code should be measured (``PYTHONPATH=.``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

STAGES = ["outlier_reference", "mined_split", "mining_quality_report", "embedding_clusters", "gallery"]
SAMPLES, CAMERAS, CROPS_PER_FRAME, DIM, CONCEPTS = 40, 6, 7, 512, 40
GROUPS = ["common"] * 20 + ["rare"] * 3 + ["target"] + ["target"]  # per mixture component (24) + planted


def _jpeg() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(out, format="JPEG", quality=70)
    return out.getvalue()


def _scene_tables(s: int, centers: np.ndarray, jpeg: bytes) -> dict:
    """Every table of scene ``s`` as DataFrames in the project's schemas."""
    import pandas as pd

    from conceptmine_assets.schemas import SCHEMAS

    rng = np.random.default_rng(1000 + s)
    scene = f"scene-{s:04d}"
    samples = [f"{scene}-s{i:02d}" for i in range(SAMPLES)]
    frames = [(smp, f"{smp}-{c}", f"CAM_{c}") for smp in samples for c in range(CAMERAS)]
    n = len(frames) * CROPS_PER_FRAME
    comp = rng.integers(0, len(centers) - 1, n)
    comp[rng.random(n) < 0.002] = len(centers) - 1  # the planted rare cluster
    X = centers[comp] + 0.35 * rng.normal(size=(n, DIM)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    det = pd.DataFrame({
        "detection_id": [f"{scene}-d{i:05d}" for i in range(n)], "scene_name": scene,
        "sample_token": [frames[i // CROPS_PER_FRAME][0] for i in range(n)],
        "sample_data_token": [frames[i // CROPS_PER_FRAME][1] for i in range(n)],
        "channel": [frames[i // CROPS_PER_FRAME][2] for i in range(n)], "class_name": "car",
    })

    def table(name: str, **cols) -> pd.DataFrame:
        df = pd.DataFrame({c: pd.Series([None] * n, dtype=object) for c in SCHEMAS[name].names})
        for k in det.columns:
            if k in df:
                df[k] = det[k].to_numpy()
        for k, v in cols.items():
            df[k] = v
        return df

    scores = rng.uniform(-0.2, 0.4, size=(n, CONCEPTS)).astype(np.float32)
    groups = np.array(GROUPS, dtype=object)[comp]
    outlier = (rng.random(n) < 0.08) | (comp == len(centers) - 1)
    fr = pd.DataFrame({c: pd.Series([None] * len(frames), dtype=object) for c in SCHEMAS["frames"].names})
    fr["scene_name"], fr["sample_token"] = scene, [f[0] for f in frames]
    fr["sample_data_token"], fr["channel"], fr["image_ok"] = [f[1] for f in frames], [f[2] for f in frames], True
    emb = table("embeddings", model_id="offline:bench", embedding=pd.Series(list(X), dtype=object))
    emb.attrs["vector_dims"] = {"embedding": DIM}
    return {
        "frames": fr,
        "embeddings": emb,
        "crops": table("crops", image_jpeg=[jpeg] * n, lidar_points=0, overexposed_frac=0.0, dark_frac=0.0,
                       blur_laplacian_var=100.0, brightness=0.5),
        "outlier_flags": table("outlier_flags", is_outlier=outlier, iforest_flag=outlier, lof_flag=False, knn_flag=False,
                               outlier_detectors=[["iforest"] if o else [] for o in outlier],
                               quality_flags=[[] for _ in range(n)], is_quality_outlier=False),
        "concept_scores": table("concept_scores", group=groups, top_concept=[f"c{c % CONCEPTS}" for c in comp],
                                top_score=scores.max(axis=1), caption="a car", vocabulary_version="bench",
                                concept_names=[[f"c{i}" for i in range(CONCEPTS)]] * n,
                                concept_scores=pd.Series(list(scores), dtype=object)),
        "captions": table("captions", status="ok", backend="template", caption="a car",
                          **({"caption_embedding": pd.Series([np.eye(1, 8, dtype=np.float32)[0]] * n, dtype=object)}
                             if "caption_embedding" in SCHEMAS["captions"].names else {})),
        "detections": table("detections", detector="annotations", annotation_token=det["detection_id"].to_numpy()),
    }


def write_store(root: Path, scenes: int) -> None:
    """The store under ``root/store`` and a minimal nuScenes table folder under ``root/dataroot``."""
    import pyarrow.parquet as pq

    from conceptmine_assets.lib.tables import to_arrow

    rng = np.random.default_rng(7)
    centers = rng.normal(size=(25, DIM)).astype(np.float32)
    jpeg = _jpeg()
    tables_dir = root / "dataroot" / "v1.0-mini"
    tables_dir.mkdir(parents=True, exist_ok=True)
    anns, instances = [], []
    for s in range(scenes):
        for asset, df in _scene_tables(s, centers, jpeg).items():
            (root / "store" / asset).mkdir(parents=True, exist_ok=True)
            pq.write_table(to_arrow(df, asset, asset), root / "store" / asset / f"{df['scene_name'].iloc[0]}.parquet",
                           compression="zstd")
            if asset == "detections":
                anns += [{"token": t, "sample_token": smp, "instance_token": t}
                         for t, smp in zip(df["detection_id"], df["sample_token"])]
                instances += [{"token": t, "category_token": "cat-car"} for t in df["detection_id"]]
    from conceptmine_assets.resources.nuscenes import NUSCENES_TABLES

    content = {"sample_annotation": anns, "instance": instances,
               "category": [{"token": "cat-car", "name": "vehicle.car"}],
               "scene": [{"token": f"t{s}", "name": f"scene-{s:04d}"} for s in range(scenes)]}
    for name in NUSCENES_TABLES:
        (tables_dir / f"{name}.json").write_text(json.dumps(content.get(name, [])))


_CHILD = """
import json, os, resource, sys, time, warnings
warnings.filterwarnings("ignore")
import dagster as dg
from conceptmine_assets.definitions import build_definitions
from conceptmine_assets.settings import Settings
stage, scenes = sys.argv[1], json.loads(sys.argv[2])
with dg.DagsterInstance.get() as instance:
    instance.add_dynamic_partitions("nuscenes_scenes", [s for s in scenes if not instance.has_dynamic_partition("nuscenes_scenes", s)])
    defs = build_definitions(Settings.from_env())
    config = {"mined_split": {"target_frac": 0.1, "random_frac": 0.1}}.get(stage)
    started = time.perf_counter()
    result = dg.materialize(list(defs.assets), selection=[stage], resources=defs.resources, instance=instance,
                            run_config={"ops": {stage: {"config": config}}} if config else None)
    seconds = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"ok": result.success, "seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024}), flush=True)
"""


def run_stage(root: Path, stage: str, scenes: list[str], timeout: int) -> dict:
    home = root / "home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "CONCEPTMINE_STORE": str(root / "store"),
           "NUSCENES_DATAROOT": str(root / "dataroot"), "NUSCENES_VERSION": "v1.0-mini",
           "CONCEPTMINE_DETECTOR": "annotations", "CONCEPTMINE_PROFILE": "offline"}
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, stage, json.dumps(scenes)], env=env, cwd=root,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "seconds": float("nan"), "cpu_s": float("nan"), "rss_mb": float("nan"),
                "note": f"killed after {timeout} s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"ok": False, "seconds": float("nan"), "cpu_s": float("nan"), "rss_mb": float("nan"),
                "note": f"exit code {done.returncode}: {done.stderr.strip()[-300:]}"}
    result = json.loads(lines[-1])
    return {**result, "note": f"exit code {done.returncode} after the run" if done.returncode else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=85)
    parser.add_argument("--out", type=Path, required=True, help="folder of the synthetic store (kept)")
    parser.add_argument("--reuse", action="store_true", help="reuse the store already under --out")
    parser.add_argument("--stages", nargs="+", default=STAGES, choices=STAGES)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per stage before it is killed")
    args = parser.parse_args()
    if not args.reuse:
        started = time.perf_counter()
        write_store(args.out, args.scenes)
        print(f"store of {args.scenes} scenes written in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    scenes = [f"scene-{s:04d}" for s in range(args.scenes)]
    print(f"| stage ({args.scenes} scenes, {args.scenes * SAMPLES * CAMERAS * CROPS_PER_FRAME} crops) "
          "| seconds | CPU seconds | peak RSS MB | note |")
    print("|---|---|---|---|---|")
    for stage in args.stages:
        r = run_stage(args.out, stage, scenes, args.timeout)
        note = r.get("note") or ("" if r["ok"] else "failed")
        print(f"| {stage} | {r['seconds']:.1f} | {r['cpu_s']:.1f} | {r['rss_mb']:.0f} | {note} |", flush=True)


if __name__ == "__main__":
    main()
