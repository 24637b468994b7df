"""Perception inside a real ``conceptmine run`` against its bare models (issue 21.3).

    .venv/bin/python bench/inrun.py [--scenes 1] [--samples 40] [--repeats 2] [--work DIR] [--quick]

A dataroot of trainval-sized scenes (``--samples`` keyframes x 6 cameras, chained copies of the
real slice: ``bench/scenes.py``) runs through ``conceptmine run`` in a fresh process, as a user
runs it (the repository's ``conceptmine.yaml`` with all six cameras; offline profile: YOLOv8n
int8 tflite, MobileNetV2). Then, in another fresh process with the same settings, the bare
models: the resources' own ``predict`` / ``encode_images`` on the same frames and crops in the
same batches, after a warm-up call (the run's pre-flight loads and runs its models too),
including decoding the JPEGs, which every consumer of a model does. Repeats alternate
(``run --force``, bare, ``run --force``, bare, ...) so a shared machine's drift hits both; the
table has medians.

In the run: ``whole step`` is Dagster's STEP_START to STEP_SUCCESS (reading inputs, the model,
writing Parquet, events); ``asset`` is the asset's own ``seconds`` and ``cpu_seconds`` metadata.
CPU seconds are the process's (every thread), so a thread spinning beside the model shows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.scenes import long_scenes  # noqa: E402

STAGES = ("detections", "embeddings")
TARGET = 1.3  # whole step / bare model, wall (issue 21)


def env_for(work: Path, dataroot: Path) -> dict[str, str]:
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    config = work / "conceptmine.yaml"
    config.write_text(f"extends: {REPO / 'conceptmine.yaml'}\nstages:\n  frames:\n    cameras: [CAM_FRONT, "
                      "CAM_FRONT_LEFT, CAM_FRONT_RIGHT, CAM_BACK, CAM_BACK_LEFT, CAM_BACK_RIGHT]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONCEPTMINE_", "NUSCENES_"))}
    env.update(DAGSTER_HOME=str(home), CONCEPTMINE_CONFIG=str(config), NUSCENES_DATAROOT=str(dataroot),
               CONCEPTMINE_STORE=str(work / "store"), HF_HUB_OFFLINE="1", YOLO_OFFLINE="1",
               YOLO_CONFIG_DIR=str(work / "ultralytics"), PYTHONPATH=str(REPO))
    return env


def conceptmine_run(env: dict[str, str], force: bool) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "conceptmine_assets.cli", "run", *(["--force"] if force else [])],
                   env=env, check=True, cwd=env["DAGSTER_HOME"], stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def in_run(env: dict[str, str]) -> dict[str, dict[str, float]]:
    """The latest materialisation of each stage: its step's wall time and its asset metadata."""
    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    import dagster as dg

    out: dict[str, dict[str, float]] = {}
    with dg.DagsterInstance.get() as instance:
        for stage in STAGES:
            event = instance.get_latest_materialization_event(dg.AssetKey(stage))
            meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
            times = {}
            for entry in instance.all_logs(event.run_id):
                if entry.dagster_event is not None and entry.dagster_event.step_key == stage:
                    times.setdefault(entry.dagster_event.event_type_value, entry.timestamp)
            out[stage] = {"step": times["STEP_SUCCESS"] - times["STEP_START"], "asset": meta["seconds"],
                          "asset_cpu": meta["cpu_seconds"]}
    return out


def bare() -> dict[str, dict[str, float]]:
    """(Child process.) Decode + the resources' own calls on the stored frames and crops."""
    import pandas as pd

    from conceptmine_assets.assets.embeddings import decode_crop
    from conceptmine_assets.lib.images import read_rgb
    from conceptmine_assets.resources.profiles import model_resources
    from conceptmine_assets.settings import load_settings

    settings = load_settings()
    models = model_resources(settings)
    detector, embedder = models["detector"], models["embedder"]
    store, root = Path(settings.store), Path(settings.dataroot)
    frames = pd.concat(pd.read_parquet(p) for p in sorted((store / "frames").glob("*.parquet")))
    crops = pd.concat(pd.read_parquet(p, columns=["detection_id", "image_jpeg"])
                      for p in sorted((store / "crops").glob("*.parquet")))
    paths = list(frames.loc[frames["image_ok"], "image_path"])
    detector.predict([read_rgb(root / paths[0])])  # warm-up, as the run's pre-flight
    embedder.encode_images([decode_crop(crops["image_jpeg"].iloc[0], "warm-up", "0")])
    out = {}
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(paths), detector.batch_size):
        detector.predict([read_rgb(root / p) for p in paths[start : start + detector.batch_size]])
    out["detections"] = {"bare": time.perf_counter() - wall, "bare_cpu": time.process_time() - cpu, "n": len(paths)}
    wall, cpu = time.perf_counter(), time.process_time()
    pairs = list(zip(crops["image_jpeg"], crops["detection_id"]))
    for start in range(0, len(pairs), embedder.batch_size):
        embedder.encode_images([decode_crop(b, "bare", d) for b, d in pairs[start : start + embedder.batch_size]])
    out["embeddings"] = {"bare": time.perf_counter() - wall, "bare_cpu": time.process_time() - cpu, "n": len(pairs)}
    return out


def bare_in_child(env: dict[str, str]) -> dict[str, dict[str, float]]:
    proc = subprocess.run([sys.executable, __file__, "--child-bare"], env=env, check=True, capture_output=True,
                          text=True, cwd=env["DAGSTER_HOME"])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rounds: list[dict[str, dict[str, float]]], where: str) -> str:
    med = {s: {k: statistics.median(r[s][k] for r in rounds) for k in rounds[0][s]} for s in STAGES}
    lines = [f"Perception inside `conceptmine run` vs the bare models ({where}; medians of {len(rounds)} "
             "alternating rounds; wall s / CPU s of the process)", "",
             "| stage | per item, in run vs bare | whole step / bare (wall) | asset / bare (wall) | "
             "asset / bare (CPU) | target | met |", "|---|---|---|---|---|---|---|"]
    for stage, unit in (("detections", "frame"), ("embeddings", "crop")):
        m = med[stage]
        step, asset, cpu = m["step"] / m["bare"], m["asset"] / m["bare"], m["asset_cpu"] / m["bare_cpu"]
        lines.append(f"| `{stage}` | {1000 * m['step'] / m['n']:.1f} vs {1000 * m['bare'] / m['n']:.1f} ms/{unit} "
                     f"({int(m['n'])} {unit}s) | {step:.2f}x | {asset:.2f}x | {cpu:.2f}x | <= {TARGET}x | "
                     f"{'yes' if step <= TARGET else '**no**'} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=1)
    p.add_argument("--samples", type=int, default=40, help="keyframes per scene (trainval: ~40)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--work", help="working folder (default: a temporary one, deleted)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 scene of 2 samples, 1 round")
    p.add_argument("--child-bare", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_bare:
        print(json.dumps(bare()))
        return
    if args.quick:
        args.scenes, args.samples, args.repeats = 1, 2, 1
    with tempfile.TemporaryDirectory(prefix="conceptmine-inrun-") as tmp:
        work = Path(args.work or tmp)
        dataroot, scenes = long_scenes(work, "dataroot", args.scenes, args.samples)
        env = env_for(work, dataroot)
        rounds = []
        for i in range(args.repeats):
            conceptmine_run(env, force=i > 0)
            measured = in_run(env)
            for stage, values in bare_in_child(env).items():
                measured[stage].update(values)
            rounds.append(measured)
        print(table(rounds, f"{len(scenes)} scene(s) x {args.samples} samples x 6 cameras"))


if __name__ == "__main__":
    main()
