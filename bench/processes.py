"""Sections measured in fresh processes: ``memory`` (peak RSS over N and k x N scenes) and ``parallel``
(perception throughput with 2 worker processes vs 1), and those processes' entry points.

A child is ``bench/run.py --child memory|perception ...``; it prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.common import Pipeline, Report, child_env, median, open_instance, verdict
from bench.scenes import VERSION, copies

RUN = Path(__file__).resolve().parent / "run.py"


def start_child(args: argparse.Namespace, work: Path, child: list[str], threads: int | None = None) -> subprocess.Popen:
    flags = ["--device", args.device, "--det-batch", str(args.det_batch), "--emb-batch", str(args.emb_batch),
             "--weights", args.weights, "--embedder", args.embedder]
    if args.clip_pretrained:
        flags += ["--clip-pretrained", args.clip_pretrained]
    cmd = [sys.executable, str(RUN), *flags, "--workdir", str(work), *child]
    return subprocess.Popen(cmd, env=child_env(work, threads), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def child_result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({proc.returncode}):\n{err.decode()[-4000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])


def section_memory(args, work: Path, report: Report) -> None:
    """Peak RSS of a whole run over N and kN scenes (k = ``--memory-factor``), each in a fresh subprocess."""
    n, k = args.memory_scenes or args.scenes, args.memory_factor
    peaks: dict[int, list[float]] = {}
    seconds: dict[int, list[float]] = {}
    for count in (n, k * n):
        dataroot, _ = copies(work, f"mem-root-{count}", count)
        for r in range(args.memory_repeats):
            proc = start_child(args, work, ["--child", "memory", "--dataroot", str(dataroot),
                                            "--child-dir", str(work / f"mem-{count}-{r}")])
            res = child_result(proc)
            peaks.setdefault(count, []).append(res["maxrss_mb"])
            seconds.setdefault(count, []).append(res["seconds"])
    for count in (n, k * n):
        report.add("memory", f"peak RSS, full run of {count} scenes (fresh process)",
                   f"{median(peaks[count]):.0f} MB ({median(seconds[count]):.0f} s cold)")
    growth = median(peaks[k * n]) / median(peaks[n])
    report.add("memory", f"peak RSS {k * n} / {n} scenes", f"{growth:.2f}x", "flat (<= 1.10x)", verdict(growth <= 1.10))
    children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    report.notes.append(f"memory: ru_maxrss of each child (RUSAGE_SELF, read at its end); RUSAGE_CHILDREN of the "
                        f"benchmark process, the largest child so far: {children_peak:.0f} MB.")


def init_instance(home: Path, scenes: list[str]) -> None:
    """Create the instance's SQLite storage and the scene partitions before any worker starts."""
    from conceptmine_assets.partitions import SCENE_PARTITIONS_NAME

    with open_instance(home) as instance:
        instance.add_dynamic_partitions(SCENE_PARTITIONS_NAME, scenes)


def release_when_ready(procs: list[subprocess.Popen], sync: Path, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while len(list(sync.glob("ready-*"))) < len(procs):
        failed = [p for p in procs if p.poll() not in (None, 0)]
        if failed or time.monotonic() > deadline:
            for p in procs:
                p.kill()
            errors = "".join(p.communicate()[1].decode()[-3000:] for p in failed)
            raise RuntimeError(f"benchmark worker failed while warming up: {errors}")
        time.sleep(0.05)
    (sync / "go").touch()


def parallel_run(args, work: Path, workers: int, r: int, cores: int) -> tuple[float, float]:
    """Scenes/s of ``workers`` processes (every W-th scene each): incl. start-up, and models warm."""
    n = args.scenes
    dataroot, scenes = copies(work, f"par-root-{workers}-{r}", n)
    shared = work / f"par-{workers}-{r}"
    (shared / "sync").mkdir(parents=True, exist_ok=True)
    init_instance(shared / "home", scenes)  # two processes must not create one SQLite schema at once
    started = time.perf_counter()
    procs = [start_child(args, work, ["--child", "perception", "--dataroot", str(dataroot), "--child-dir",
                                      str(shared), "--child-scenes", ",".join(scenes[w::workers])],
                         threads=max(1, cores // workers))
             for w in range(workers)]
    release_when_ready(procs, shared / "sync")  # all workers warm: start them together
    go = time.time()
    results = [child_result(p) for p in procs]
    wall = time.perf_counter() - started
    return n / wall, n / (max(res["end"] for res in results) - go)


def section_parallel(args, work: Path, report: Report) -> None:
    """Perception throughput: W worker processes, each running its share of the scenes."""
    cores = len(os.sched_getaffinity(0))
    rates = {w: [parallel_run(args, work, w, r, cores) for r in range(args.repeats)] for w in (1, 2)}
    one, two = (median([x[1] for x in rates[w]]) for w in (1, 2))
    for workers in (1, 2):
        report.add("parallel", f"perception, {args.scenes} scenes, {workers} worker process(es): scenes/s",
                   f"{median([x[1] for x in rates[workers]]):.2f} models warm; "
                   f"{median([x[0] for x in rates[workers]]):.2f} incl. start-up")
    report.add("parallel", "speed-up 2 workers / 1", f"{two / one:.2f}x", f"<= {min(2, cores)}x ({cores} cores)")
    report.notes.append(
        "parallel: W subprocesses, each `perception_job.execute_in_process` over every W-th scene, against one "
        "store and one persistent DagsterInstance (SQLite); OMP/MKL threads = cores / W. The multiprocess "
        "executor parallelises the steps of one run, not the partitions of a backfill, so it is not used here."
    )


def child_pipeline(args) -> Pipeline:
    return Pipeline(args, Path(args.dataroot), Path(args.child_dir) / "store", Path(args.child_dir) / "home",
                    ["CAM_FRONT"])


def child_memory(args) -> dict:
    scenes = json.loads((Path(args.dataroot) / VERSION / "scene.json").read_text())
    seconds = child_pipeline(args).full([s["name"] for s in scenes])
    return {"seconds": seconds, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child_perception(args) -> dict:
    pipe = child_pipeline(args)
    scenes = args.child_scenes.split(",")
    pipe.register(scenes)
    pipe.resources["detector"].load()  # models warm before the clock starts
    pipe.resources["embedder"].load()
    sync = Path(args.child_dir) / "sync"
    (sync / f"ready-{os.getpid()}").touch()
    while not (sync / "go").exists():
        time.sleep(0.02)
    start = time.time()
    for scene in scenes:
        pipe.run("perception_job", scene)
    return {"start": start, "end": time.time(), "scenes": len(scenes)}


CHILDREN = {"memory": child_memory, "perception": child_perception}
