"""Benchmark of ``conceptmine run`` (issue 11): incremental re-runs, runs per backfill, image checks.

    .venv/bin/python bench/pipeline.py [--scenes 8 64 850] [--copies 1 4] [--plan-scenes 850] [--plan-runs 217] [--quick]

Prints, on the built-in demo dataroot (the committed fixtures merged, its config
``conceptmine.demo.yaml``), in a temporary Dagster home and store that are deleted afterwards:

1. a full ``conceptmine run`` and a no-change re-run, each in a fresh process as a user runs
   them, and the re-run's time as a fraction of the full run's (target <= 0.1), on the demo
   dataroot and on it with every scene replicated (``--copies``): the re-run answered by the memo
   of the last plan (``uptodate.py``), and one planned through Dagster (memo deleted); for the
   demo dataroot also the part of the planned re-run that is Dagster's own start-up, and a
   planned re-run in a warm process;
2. the staleness plan of a no-change re-run over ``--plan-scenes`` materialised scenes (trainval:
   850), timed on a SQLite instance seeded with one materialisation per asset partition, and the
   memo check against an instance folder of ``--plan-runs`` runs;
3. the Dagster runs ``conceptmine run`` launches for a backfill of N new scenes — planned by the
   same code that executes them (``runner.plan_stage`` + ``runner.batch``) on an instance with N
   registered, never-materialised scenes — against the target N/8 + a constant per stage;
4. the cost per frame of the `frames` image check (header + end-of-image marker) against a full
   decode of the image.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conceptmine_assets.cli.uptodate import MEMO, UpToDate

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "data" / "fixtures"


def _env(tmp: Path) -> dict[str, str]:
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONCEPTMINE_", "NUSCENES_"))}
    env.update(
        DAGSTER_HOME=str(home), CONCEPTMINE_CONFIG=str(REPO / "conceptmine.demo.yaml"),
        NUSCENES_DATAROOT=str(tmp / "dataroot"), CONCEPTMINE_STORE=str(tmp / "store"),
        HF_HUB_OFFLINE="1", YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(tmp / "ultralytics"), PYTHONPATH=str(REPO),
    )
    return env


def _cli(env: dict[str, str], *args: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "conceptmine_assets.cli", *args], env=env, check=True, cwd=env["DAGSTER_HOME"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def incremental(tmp: Path, copies: int) -> list[tuple[str, str]]:
    """Full run and no-change re-runs on the demo dataroot, each scene replicated ``copies`` times:
    answered by the memo of the last plan, and planned through Dagster (memo deleted, as after a
    change that makes no work, e.g. a config file saved unchanged)."""
    env = _env(tmp)
    _cli(env, "synth-dataroot", "--out", env["NUSCENES_DATAROOT"], "--copies", str(copies),
         str(FIXTURES / "nuscenes-real-slice"), str(FIXTURES / "nuscenes-udacity-highway"))
    what = "demo dataroot (4 scenes)" if copies == 1 else f"demo dataroot x {copies} ({4 * copies} scenes)"
    full = _cli(env, "run")
    again = _cli(env, "run")
    (Path(env["DAGSTER_HOME"]) / MEMO).unlink()
    planned = _cli(env, "run")
    rows = [
        (f"full `conceptmine run`, {what}, fresh process", f"{full:.1f} s"),
        ("no-change re-run, fresh process (answered by the memo of the last plan)", f"{again:.2f} s"),
        ("re-run / full run (target <= 0.1)", f"{again / full:.3f}"),
        ("no-change re-run planned through Dagster (memo deleted), fresh process", f"{planned:.1f} s"),
        ("  planned re-run / full run", f"{planned / full:.3f}"),
    ]
    if copies == 1:
        floor = _dagster_floor(env)
        warm = _warm_rerun(env)
        rows += [
            ("  of the planned re-run: start Python, import Dagster, open the instance (no project code)", f"{floor:.1f} s"),
            ("planned no-change re-run in a process that has imported the project (checks, plan)", f"{warm:.1f} s"),
        ]
    return rows


def memo_check(runs: int, steps: int = 10) -> list[tuple[str, str]]:
    """The memo check against an instance folder as a trainval backfill leaves it: ``runs`` runs,
    each an event-log database and the compute logs (3 files) of ``steps`` steps."""
    with tempfile.TemporaryDirectory(prefix="conceptmine-memo-") as home:
        for i in range(runs):
            (Path(home) / "history" / "runs").mkdir(parents=True, exist_ok=True)
            (Path(home) / "history" / "runs" / f"run-{i}.db").write_bytes(b"x" * 4096)
            logs = Path(home) / "storage" / f"run-{i}" / "compute_logs"
            logs.mkdir(parents=True)
            for step in range(steps):
                for suffix in (".out", ".err", ".complete"):
                    (logs / f"step{step}{suffix}").write_text("")
        memo = UpToDate(home)
        assert memo.save(memo.snapshot(), "store")
        started = time.perf_counter()
        assert UpToDate(home).holds()["store"] == "store"
        seconds = time.perf_counter() - started
    return [(f"memo check, instance folder of {runs} runs ({runs * (1 + 3 * steps)} files)", f"{seconds * 1000:.0f} ms")]


def _dagster_floor(env: dict[str, str]) -> float:
    """What any command that reads the instance pays before the project's code runs."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-W", "ignore", "-c", "import dagster as dg; dg.DagsterInstance.get()"],
                   env=env, check=True, cwd=env["DAGSTER_HOME"])
    return time.perf_counter() - started


def _warm_rerun(env: dict[str, str]) -> float:
    """`conceptmine run` again in this process, imports done: what is left is the pre-flight
    checks, the model identities and the staleness plan."""
    from conceptmine_assets import cli

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        cli.main(["run"])  # warms caches the way a long-lived process would have them
        (Path(env["DAGSTER_HOME"]) / MEMO).unlink()  # what is timed is the plan, not the memo
        started = time.perf_counter()
        assert cli.main(["run"]) == 0
        return time.perf_counter() - started
    finally:
        os.environ.clear()
        os.environ.update(saved)


def no_change_plan(n: int) -> list[tuple[str, str]]:
    """The staleness plan of a no-change `conceptmine run` over ``n`` materialised scenes, on a
    SQLite instance holding one materialisation per asset partition (tags as a run records them:
    code version, observed input versions), seeded in dependency order."""
    import dagster as dg

    from conceptmine_assets.cli.staleness import CODE_VERSION_TAG, DATA_VERSION_TAG, INPUT_VERSION_TAG, Records, graph_nodes, plan_stage, topological
    from conceptmine_assets.definitions import PIPELINE, build_definitions
    from conceptmine_assets.partitions import SCENE_PARTITIONS_NAME
    from conceptmine_assets.settings import load_settings

    defs = build_definitions(load_settings(store=tempfile.mkdtemp()))
    nodes, scenes = graph_nodes(defs), [f"scene-{i:04d}" for i in range(n)]
    stages = [[k.to_user_string() for k in s.selection.resolve(defs.resolve_asset_graph()) if k.to_user_string() in nodes]
              for s in PIPELINE if not s.observe]  # observations are compared, not planned (runner.run)
    with tempfile.TemporaryDirectory(prefix="conceptmine-plan-") as home, dg.DagsterInstance.from_config(home) as instance:
        instance.add_dynamic_partitions(SCENE_PARTITIONS_NAME, scenes)
        for name in (a for a, node in nodes.items() if node.observable):
            instance.report_runless_asset_event(dg.AssetObservation(name, tags={DATA_VERSION_TAG: "v1"}))
        for name in (a for stage in stages for a in topological(nodes, stage) if not nodes[a].observable):
            tags = {CODE_VERSION_TAG: nodes[name].code_version or "", **{
                INPUT_VERSION_TAG + d: "v1" for d in nodes[name].deps if nodes[d].observable}}
            for key in scenes if nodes[name].partitioned else [None]:
                instance.report_runless_asset_event(dg.AssetMaterialization(name, partition=key, tags=tags))
        started = time.perf_counter()
        planned = sum(len(keys) for names in stages for keys in plan_stage(Records(instance), nodes, names, scenes).values())
        seconds = time.perf_counter() - started
    return [(f"no-change staleness plan over {n} materialised scenes ({n * sum(nd.partitioned for nd in nodes.values())} "
             f"scene partitions), SQLite instance", f"{seconds:.1f} s, {planned} partitions planned")]


def runs_per_backfill(counts: list[int]) -> list[tuple[str, str]]:
    """Runs of a first `conceptmine run` over N registered scenes, per stage, as planned."""
    import dagster as dg

    from conceptmine_assets.cli.runner import batch, scenes_per_run
    from conceptmine_assets.cli.staleness import Records, graph_nodes, plan_stage
    from conceptmine_assets.definitions import PIPELINE, build_definitions
    from conceptmine_assets.partitions import SCENE_PARTITIONS_NAME
    from conceptmine_assets.settings import load_settings

    defs = build_definitions(load_settings(store=tempfile.mkdtemp()))
    nodes, rows = graph_nodes(defs), []
    for n in counts:
        scenes = [f"scene-{i:04d}" for i in range(n)]
        with dg.DagsterInstance.ephemeral() as instance:
            instance.add_dynamic_partitions(SCENE_PARTITIONS_NAME, scenes)
            per_stage = {}
            for stage in PIPELINE:
                names = [k.to_user_string() for k in stage.selection.resolve(defs.resolve_asset_graph())]
                names = [a for a in names if a in nodes]
                planned = {a: [None] for a in names} if stage.observe else plan_stage(Records(instance), nodes, names, scenes)
                per_stage[stage.job] = len(batch(stage.job, planned, scenes, scenes_per_run(defs, names)))
        scene_jobs = [stage.job for stage in PIPELINE if stage.per_scene]
        target = len(scene_jobs) * math.ceil(n / 8)
        detail = ", ".join(f"{j} {c}" for j, c in per_stage.items())
        rows.append((f"Dagster runs for a backfill of {n} scenes", f"{sum(per_stage.values())} ({detail})"))
        met = sum(per_stage[j] for j in scene_jobs) <= target
        rows.append((f"  per-scene stage runs vs target {len(scene_jobs)} x ceil({n}/8) = {target}", "met" if met else "missed"))
    return rows


def image_checks() -> list[tuple[str, str]]:
    from PIL import Image

    from conceptmine_assets.assets.frames import check_image

    images = sorted((FIXTURES / "nuscenes-real-slice" / "samples").rglob("*.jpg"))
    images += sorted((FIXTURES / "nuscenes-udacity-highway" / "samples").rglob("*.jpg"))
    sizes = []
    for path in images:
        with Image.open(path) as im:
            sizes.append(im.size)
    repeats = 20
    started = time.perf_counter()
    for _ in range(repeats):
        for path, (w, h) in zip(images, sizes):
            assert check_image(str(path), w, h) is None
    check_ms = 1000 * (time.perf_counter() - started) / (repeats * len(images))
    started = time.perf_counter()
    for _ in range(repeats):
        for path in images:
            with Image.open(path) as im:
                im.load()
    decode_ms = 1000 * (time.perf_counter() - started) / (repeats * len(images))
    return [
        (f"`frames` image check (header + end marker), ms/frame ({len(images)} JPEGs x {repeats})", f"{check_ms:.3f}"),
        ("full decode (PIL load), ms/frame", f"{decode_ms:.2f}"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, nargs="+", default=[8, 64, 850], help="backfill sizes to plan")
    parser.add_argument("--skip-incremental", action="store_true", help="skip the timed demo runs")
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 4], help="demo dataroot sizes (x 4 scenes) to time")
    parser.add_argument("--plan-scenes", type=int, default=850, help="scenes of the no-change plan timing")
    parser.add_argument("--plan-runs", type=int, default=217, help="runs in the instance folder of the memo check "
                        "(217: a first run over 850 scenes)")
    parser.add_argument("--quick", action="store_true", help="CI: no timed demo runs, one backfill size (8)")
    args = parser.parse_args()
    if args.quick:
        args.skip_incremental, args.scenes, args.plan_scenes, args.plan_runs = True, [8], 8, 5
    rows = []
    if not args.skip_incremental:
        for copies in args.copies:
            with tempfile.TemporaryDirectory(prefix="conceptmine-bench-") as tmp:
                rows += incremental(Path(tmp), copies)
    rows += no_change_plan(args.plan_scenes)
    rows += memo_check(args.plan_runs)
    rows += runs_per_backfill(args.scenes)
    rows += image_checks()
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
