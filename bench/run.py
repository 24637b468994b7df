#!/usr/bin/env python
"""Benchmarks of the conceptmine pipeline; prints one Markdown report (see bench/README.md).

    .venv/bin/python bench/run.py --quick                      # smoke run (what the test suite runs)
    .venv/bin/python bench/run.py --scenes 20 --repeats 3 --out results.md
    .venv/bin/python bench/run.py --device cuda --weights yolov8l.yaml --embedder vit-b-32 \
        --det-batch 16 --emb-batch 64 --sections throughput       # GPU mode

Sections (``--sections``, default all), one module each:
  overhead     (overhead.py) model stages vs their bare model on scenes of trainval size
  incremental  (incremental.py) add one scene to N and catch up vs a full run of all N
  memory       (processes.py) peak RSS of a full run over N and k x N scenes, fresh subprocesses
  parallel     (processes.py) perception throughput with 2 worker processes vs 1
  throughput   (throughput.py) bare detection + embedding frames/s on ``--device``
and every standalone benchmark script of this folder listed in ``SCRIPTS`` that exists (run as
a subprocess; its Markdown output goes into the report).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))  # run as a script: the repository root holds the `bench` package

from bench.common import DEFAULT_WEIGHTS, Report, model_resources, offline_env, stdout_to_stderr  # noqa: E402

# Standalone scripts of other areas: file -> (arguments of a full run, of a --quick run).
SCRIPTS: dict[str, tuple[list[str], list[str]]] = {
    "imports.py": ([], ["--images", "8", "--video-frames", "12", "--repeats", "1"]),
    "scale.py": ([], ["--quick"]),
    "pipeline.py": ([], ["--quick"]),
    "mining_quality.py": ([], ["--scenes", "2"]),
    "inrun.py": ([], ["--quick"]),
}


def sections() -> dict[str, Callable]:
    from bench.incremental import section_incremental
    from bench.overhead import section_overhead
    from bench.processes import section_memory, section_parallel
    from bench.throughput import section_throughput

    found = {"overhead": section_overhead, "incremental": section_incremental, "memory": section_memory,
             "parallel": section_parallel, "throughput": section_throughput}
    for script in SCRIPTS:
        if (BENCH / script).exists():
            found[Path(script).stem] = script_section(script)
    return found


def script_section(script: str) -> Callable:
    """A section that runs ``bench/<script>`` and adds its output to the report's notes."""

    def run(args, work: Path, report: Report) -> None:
        full, quick = SCRIPTS[script]
        cmd = [sys.executable, str(BENCH / script), *(quick if args.quick else full)]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=work, env={**os.environ, "PYTHONPATH": str(BENCH.parent)})
        if done.returncode != 0:
            raise RuntimeError(f"{script} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
        report.add(Path(script).stem, f"`bench/{script}` ({' '.join(cmd[2:]) or 'defaults'})", "see below")
        report.appendix.append((f"bench/{script}", done.stdout.strip()))

    return run


def machine(args) -> list[tuple[str, str]]:
    import dagster
    import torch

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor() or "unknown")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    models = model_resources(args)
    emb_name = "offline MobileNetV2 (ImageNet, 1280-d)" if args.embedder == "offline" else (
        f"open_clip ViT-B-32 ({args.clip_pretrained or 'random init: paper architecture, untrained'})")
    return [
        ("CPU", f"{cpu}, {len(os.sched_getaffinity(0))} cores usable (load avg at start {load}; shared machine)"),
        ("GPU", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"),
        ("Software", f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} "
                     f"threads), dagster {dagster.__version__}"),
        ("Device", f"{args.device}; batch sizes: detector {args.det_batch}, embedder {args.emb_batch}"),
        ("Detector", f"{models['detector'].model_id} ({args.weights})"),
        ("Embedder", f"{emb_name}, batch {models['embedder'].batch_size}"),
        ("Data", f"N = {args.scenes} synthetic scenes (copies of real nuScenes scene-0061, CAM_FRONT); overhead: "
                 f"{args.overhead_scenes} scene(s) of {args.overhead_samples} samples x 6 cameras (bench/scenes.py)"),
        ("Repeats", f"{args.repeats} (medians reported; memory: {args.memory_repeats})"),
    ]


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=20, help="N synthetic scenes (default 20)")
    p.add_argument("--repeats", type=int, default=3, help="repeats per measurement; medians are reported")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 1 repeat (the test suite runs it)")
    p.add_argument("--out", type=Path, help="also write the report to this Markdown file")
    p.add_argument("--sections", help="comma-separated subset of the sections (default: all)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--det-batch", type=int, default=16, help="detector batch size (frames)")
    p.add_argument("--emb-batch", type=int, default=32, help="embedder batch size (crops)")
    p.add_argument("--weights", default=os.environ.get("CONCEPTMINE_YOLO_WEIGHTS", str(DEFAULT_WEIGHTS)),
                   help="YOLO weights: the fixture tflite (default), a .pt file, or yolov8l.yaml (random init)")
    p.add_argument("--embedder", choices=("offline", "vit-b-32"), default="offline")
    p.add_argument("--clip-pretrained", default=None, help="open_clip tag or checkpoint for --embedder vit-b-32")
    p.add_argument("--overhead-scenes", type=int, default=2, help="scenes per overhead repeat")
    p.add_argument("--overhead-samples", type=int, default=40, help="keyframes per overhead scene (trainval: ~40)")
    p.add_argument("--memory-scenes", type=int, default=0, help="N for the memory section (default: --scenes)")
    p.add_argument("--memory-repeats", type=int, default=1)
    p.add_argument("--memory-factor", type=int, default=4, help="memory: compare N with this many times N scenes")
    p.add_argument("--throughput-frames", type=int, default=40, help="frames per throughput repeat")
    p.add_argument("--workdir", type=Path, help="scratch folder (default: a new temporary folder)")
    p.add_argument("--child", choices=("memory", "perception"), help=argparse.SUPPRESS)
    p.add_argument("--dataroot", help=argparse.SUPPRESS)
    p.add_argument("--child-dir", help=argparse.SUPPRESS)
    p.add_argument("--child-scenes", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.scenes, args.repeats, args.overhead_scenes, args.overhead_samples = 2, 1, 1, 2
        args.memory_scenes, args.memory_factor, args.throughput_frames = args.memory_scenes or 1, 2, 8
    return args


def run_sections(args, work: Path, report: Report) -> list[str]:
    """Run the chosen sections in order; a failing one is reported and the others go on."""
    runners = sections()
    chosen = [s.strip() for s in (args.sections or ",".join(runners)).split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(runners))
    if unknown:
        raise SystemExit(f"unknown sections {unknown}; choose from {list(runners)}")
    timings = []
    for name in [s for s in runners if s in chosen]:
        started = time.perf_counter()
        try:
            runners[name](args, work, report)
        except Exception as exc:
            traceback.print_exc()
            report.add(name, "**failed**", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        timings.append(f"{name} {time.perf_counter() - started:.0f} s")
        sys.stderr.write(f"bench: {timings[-1]}\n")
    return timings


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="conceptmine-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update(offline_env(work))
    import dagster as dg

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    warnings.filterwarnings("ignore", message="Asset job .* varying BackfillPolicies")
    if args.child:
        import json

        from bench.processes import CHILDREN

        sys.stdout.write(json.dumps(CHILDREN[args.child](args)) + "\n")
        return 0
    started, report = time.perf_counter(), Report()
    with stdout_to_stderr():  # libraries print progress; stdout carries only the report
        timings = run_sections(args, work, report)
    cmd = "python bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = "\n".join([
        "## conceptmine benchmark", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in machine(args)), "",
        report.markdown(), "", f"- command: `{cmd}`; wall {time.perf_counter() - started:.0f} s ({', '.join(timings)})",
        *(f"- {note}" for note in report.notes),
        *(f"\n### {title}\n\n{text}" for title, text in report.appendix),
    ]) + "\n"
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
