"""Scale benchmark: every global stage, search, SQL and Dagster at N scenes, each in a fresh process.

    .venv/bin/python bench/scale.py                 # 85, 212 and 850 scenes (10%, 25%, 100% of trainval)
    .venv/bin/python bench/scale.py --scenes 20     # one size
    .venv/bin/python bench/scale.py --quick         # 1 scene: the CI smoke run

For each N it writes a synthetic nuScenes dataroot and store to a temporary folder
(bench/scale_data.py: 40 samples x 6 cameras x ~7 crops per scene, 512-d embeddings with planted
rare clusters, written through the project's IO manager and schemas), registers the scenes in a
temporary DAGSTER_HOME, then runs each stage in its own process (bench/scale_stages.py) and
prints its wall time, CPU time and peak RSS (``os.wait4``'s rusage of that process and its
children; on a shared machine CPU time is the steadier figure).
A stage past ``--limit-s`` is killed and reported with the time it ran. The folder is deleted
afterwards (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
QUERY = "a person riding a kick scooter"
TRAINVAL = 850


@dataclass
class Measure:
    seconds: float
    rss_mb: float
    ok: bool
    cpu_s: float = 0.0  # user + system CPU seconds (the machine is shared: wall time varies with its load)
    killed: bool = False
    figures: dict = field(default_factory=dict)
    tail: str = ""

    def cell(self) -> str:
        if self.killed:
            return f"**killed after {self.seconds:.0f} s** (CPU {self.cpu_s:.0f} s), {self.rss_mb / 1024:.2f} GB"
        if not self.ok:
            return f"failed after {self.seconds:.1f} s"
        return f"{self.seconds:.1f} s (CPU {self.cpu_s:.1f} s), {self.rss_mb / 1024:.2f} GB"


def run(cmd: list[str], env: dict, limit_s: float) -> Measure:
    """Run ``cmd`` in a fresh process group; its wall time, peak RSS and ``BENCH`` figures."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(limit_s, kill)
    timer.start()
    output = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    figures = {}
    for line in output.splitlines():
        if line.startswith("BENCH "):
            figures.update(json.loads(line[6:]))
    return Measure(time.perf_counter() - started, usage.ru_maxrss / 1024, proc.returncode == 0,
                   usage.ru_utime + usage.ru_stime, killed.is_set(), figures, output[-3000:])


def environment(work: Path) -> dict:
    home = work / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return {
        **os.environ, "DAGSTER_HOME": str(home), "CONCEPTMINE_STORE": str(work / "store"),
        "NUSCENES_DATAROOT": str(work / "dataroot"), "NUSCENES_VERSION": "v1.0-trainval",
        "CONCEPTMINE_PROFILE": "offline", "CONCEPTMINE_DETECTOR": "annotations",
        "CONCEPTMINE_YOLO_WEIGHTS": str(REPO / "data" / "fixtures" / "yolov8n_int8.tflite"),
        "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
    }


def stages(work: Path, scenes: int) -> list[tuple[str, list[str]]]:
    """(label, command) of every stage, in run order (later stages read earlier ones' outputs)."""
    step = [PYTHON, "-m", "bench.scale_stages"]
    cli = [PYTHON, "-m", "conceptmine_assets.cli"]
    w = str(work)
    return [
        ("setup: synthetic dataroot + store", [*step, "generate", w, str(scenes)]),
        ("register-scenes", [*cli, "register-scenes"]),
        ("setup: record per-scene materialisations", [*step, "record_events", w]),
        *[(name, [*step, name, w]) for name in ("outlier_reference", "outlier_flags", "mined_split",
                                                "mining_quality_report", "embedding_clusters", "gallery", "search_index")],
        ("`conceptmine search` (caption mode, CLI)", [*cli, "search", QUERY, "-k", "10"]),
        ("search, caption mode, warm process", [*step, "search_caption", w]),
        ("search, image mode, warm process", [*step, "search_image", w]),
        ("`conceptmine sql`", [*cli, "sql", "SELECT class_name, count(*) AS n FROM detections GROUP BY 1 ORDER BY 2 DESC"]),
        ("automation tick", [*step, "automation_tick", w]),
        ("GraphQL partition status (embeddings)", [*step, "graphql", w]),
        ("runs per backfill (from backfill policies)", [*step, "backfill_runs", w, str(scenes)]),
        ("recall of planted rare crops", [*step, "recall", w]),
    ] + ([(f"mining quality with real flags ({min(scenes, 40)} scenes, bench/mining_quality.py)",
           [PYTHON, str(REPO / "bench" / "mining_quality.py"), "--scenes", str(min(scenes, 40)), "--penalties"])]
         if scenes >= 8 else [])


def measure(scenes: int, args: argparse.Namespace, log) -> dict[str, Measure]:
    """Every stage at ``scenes`` scenes. With ``--work`` the folder is kept and a store already
    generated there is reused (its Dagster instance is started afresh)."""
    work = Path(args.work) / f"scenes-{scenes}" if args.work else Path(tempfile.mkdtemp(prefix=f"conceptmine-scale-{scenes}-"))
    keep = args.keep or bool(args.work)
    reuse = (work / "planted.parquet").exists()
    shutil.rmtree(work / "dagster_home", ignore_errors=True)
    env = environment(work)
    results: dict[str, Measure] = {}
    try:
        for label, cmd in stages(work, scenes):
            if (reuse and label.startswith("setup: synthetic")) or (args.setup_only and label != "setup: synthetic dataroot + store"):
                continue
            if args.stages and not (label.startswith("setup") or label == "register-scenes"
                                    or any(name in label for name in args.stages)):
                continue
            m = run(cmd, env, args.limit_s)
            results[label] = m
            log(f"[{scenes} scenes] {label}: {m.cell()} {json.dumps(m.figures) if m.figures else ''}")
            if not m.ok and not m.killed:
                log(m.tail)
            if label.startswith("setup") and not m.ok:
                break
        if args.setup_only:
            return results
        du = subprocess.run(["du", "-sh", str(work / "store")], capture_output=True, text=True).stdout.split("\t")[0]
        log(f"[{scenes} scenes] store size on disk: {du}")
    finally:
        if keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return results


def table(all_results: dict[int, dict[str, Measure]]) -> str:
    sizes = sorted(all_results)
    header = "| stage (fresh process each) | " + " | ".join(f"{n} scenes" for n in sizes) + " |"
    lines = [header, "|---" * (len(sizes) + 1) + "|"]
    labels = list(next(iter(all_results.values())))
    for label in labels:
        cells = [all_results[n][label].cell() if label in all_results[n] else "–" for n in sizes]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, nargs="+", help="scene counts (default 85 212 850)")
    parser.add_argument("--quick", action="store_true", help="1 scene, a CI smoke run")
    parser.add_argument("--limit-s", type=float, default=1800, help="kill a stage after this many seconds")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    parser.add_argument("--work", help="use (and keep) <work>/scenes-N; a store generated there before is reused")
    parser.add_argument("--setup-only", action="store_true", help="only generate the synthetic data (with --work)")
    parser.add_argument("--stages", nargs="+", help="only the stages whose label contains one of these words "
                        "(setup and register-scenes always run), e.g. --stages outlier_reference mined_split")
    parser.add_argument("--out", help="also write the Markdown table and figures here")
    args = parser.parse_args(argv)
    sizes = [1] if args.quick else (args.scenes or [round(TRAINVAL * f) for f in (0.10, 0.25, 1.0)])

    def log(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    all_results = {n: measure(n, args, log) for n in sizes}
    text = table(all_results) + "\n\n" + "\n".join(
        f"- {n} scenes, {label}: {json.dumps(m.figures)}" for n, res in all_results.items() for label, m in res.items()
        if m.figures)
    log("\n" + text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    failed = [label for res in all_results.values() for label, m in res.items() if not m.ok and not m.killed]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
