#!/usr/bin/env python
"""Benchmarks of the conceptmine pipeline; prints one Markdown report (see bench/README.md).

    .venv/bin/python bench/run.py --quick                      # smoke run, ~3 min on 2 cores
    .venv/bin/python bench/run.py --scenes 20 --repeats 3 --out results.md
    .venv/bin/python bench/run.py --device cuda --weights yolov8l.yaml --embedder vit-b-32 \
        --det-batch 16 --emb-batch 64 --sections throughput       # GPU mode

Sections (``--sections``, default all):
  overhead     asset time per frame/crop of `detections` and `embeddings` vs the bare batched
               model forward on the same inputs, same process, models warm
  incremental  add one scene to N and let the pipeline catch up vs a full run of all N
  memory       peak RSS of a full run over N and 4N scenes, each in a fresh subprocess
  parallel     perception throughput with 2 worker processes vs 1 (same store and instance)
  throughput   bare detection + embedding frames/s on ``--device`` (the paper: ~3 frames/s)

Everything runs on synthetic dataroots (``lib/synth.py``: copies of the real nuScenes slice,
CAM_FRONT) with the project's jobs executed in process against a persistent temporary
``DagsterInstance``, as ``conceptmine demo`` does. Nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("CONCEPTMINE_FIXTURES", REPO.parent / "shared" / "fixtures"))
REAL_SLICE = FIXTURES / "nuscenes-real-slice"
HIGHWAY = FIXTURES / "nuscenes-udacity-highway"
DEFAULT_WEIGHTS = FIXTURES / "models" / "yolov8n_int8.tflite"
ALL_CAMERAS = ["CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"]
SECTIONS = ("overhead", "incremental", "memory", "parallel", "throughput")
PAPER_FPS = "~3 frames/s (40 frames in 13.5–15.4 s; YOLOv8l + CLIP ViT-B/32 on an RTX 3090)"
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}

# ---------------------------------------------------------------- set-up


def offline_env(work: Path) -> dict[str, str]:
    """Environment for this process and its children: no hub look-ups, no telemetry."""
    env = {
        "HF_HUB_OFFLINE": "1",
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(work / "ultralytics"),
        "DAGSTER_HOME": str(work / "dagster_home"),
    }
    (work / "dagster_home").mkdir(parents=True, exist_ok=True)
    (work / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return env


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), max(1, size)):
        yield items[start : start + size]


def model_resources(args: argparse.Namespace) -> dict:
    """Detector and embedder as configured by the flags (the offline profile by default)."""
    from conceptmine_assets.resources.detector import DetectorResource
    from conceptmine_assets.resources.embedder import EmbedderResource

    detector = DetectorResource(backend="yolo", weights=args.weights, device=args.device, batch_size=args.det_batch)
    if args.embedder == "offline":
        embedder = EmbedderResource(backend="offline", device=args.device, batch_size=args.emb_batch)
    else:  # the paper's architecture; random init unless --clip-pretrained names a tag or file
        embedder = EmbedderResource(
            backend="open_clip", model="ViT-B-32", pretrained=args.clip_pretrained, device=args.device,
            batch_size=args.emb_batch,
        )
    return {"detector": detector, "embedder": embedder}


def synth(work: Path, name: str, copies: int) -> tuple[Path, list[str]]:
    """A dataroot of ``copies`` copies of the real slice's scene."""
    from conceptmine_assets.lib.synth import synth_dataroot

    root = work / name
    return root, synth_dataroot([REAL_SLICE], root, copies=copies)


# ---------------------------------------------------------------- running the project's jobs


def open_instance(home: Path):
    """A persistent instance (SQLite under ``home``), telemetry off."""
    import dagster as dg

    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return dg.DagsterInstance.local_temp(str(home))


class Pipeline:
    """The project's jobs over one dataroot, store and persistent instance, run in process."""

    def __init__(self, args: argparse.Namespace, dataroot: Path, store: Path, home: Path, cameras: list[str]):
        import dagster as dg

        from conceptmine_assets import definitions as project
        from conceptmine_assets.resources.nuscenes import NuScenesResource
        from conceptmine_assets.settings import Settings

        settings = Settings(store=str(store))
        resources = project.build_resources(settings)
        resources.update(model_resources(args), nuscenes=NuScenesResource(dataroot=str(dataroot)))
        self.resources = resources
        built = project.build_definitions(settings)  # the project's assets, checks and jobs; our resources
        self.defs = dg.Definitions(
            assets=built.assets, asset_checks=built.asset_checks, jobs=built.jobs, resources=resources
        )
        self.pipeline = project.PIPELINE
        self.store, self.dataroot, self.cameras = store, dataroot, cameras
        self.instance = open_instance(home)
        self._jobs: dict[str, Any] = {}

    def register(self, scenes: list[str]) -> None:
        from conceptmine_assets.partitions import SCENE_PARTITIONS_NAME

        known = set(self.instance.get_dynamic_partitions(SCENE_PARTITIONS_NAME))
        new = [s for s in scenes if s not in known]
        if new:
            self.instance.add_dynamic_partitions(SCENE_PARTITIONS_NAME, new)

    def _config(self, job) -> dict:
        ops = {node.name for node in job.graph.node_defs}
        config: dict[str, Any] = {}
        if "frames" in ops:
            config["frames"] = {"config": {"cameras": self.cameras}}
        if "mined_split" in ops:
            config["mined_split"] = {"config": {"output_dir": str(self.store.parent / "splits")}}
        return {**QUIET, "ops": config} if config else dict(QUIET)

    def run(self, name: str, scene: str | None = None):
        """Execute one job (one scene partition, or a global job); raise if it fails."""
        job = self._jobs.get(name) or self._jobs.setdefault(name, self.defs.resolve_job_def(name))
        result = job.execute_in_process(
            partition_key=scene, instance=self.instance, run_config=self._config(job), raise_on_error=True
        )
        return result

    def full(self, scenes: list[str]) -> float:
        """The whole pipeline over ``scenes`` as the CLI runs it; seconds."""
        started = time.perf_counter()
        self.register(scenes)
        for stage in self.pipeline:
            for scene in scenes if stage.per_scene else [None]:
                self.run(stage.job, scene)
        return time.perf_counter() - started

    def catch_up(self, scene: str) -> tuple[float, float]:
        """A new scene: its per-scene jobs, then the global mining jobs (no reference refit).
        Returns (per-scene seconds, global seconds)."""
        started = time.perf_counter()
        self.register([scene])
        for stage in self.pipeline:
            if stage.per_scene:
                self.run(stage.job, scene)
        per_scene = time.perf_counter() - started
        self.run(self.pipeline[-1].job)
        return per_scene, time.perf_counter() - started - per_scene

    def step_seconds(self, run_id: str) -> dict[str, float]:
        """Wall time of each step (start to success, incl. input loading and output writing)."""
        from dagster import DagsterEventType

        starts, ends = {}, {}
        for entry in self.instance.all_logs(run_id):
            event = entry.dagster_event
            if event is None or event.step_key is None:
                continue
            if event.event_type == DagsterEventType.STEP_START:
                starts[event.step_key] = entry.timestamp
            elif event.event_type == DagsterEventType.STEP_SUCCESS:
                ends[event.step_key] = entry.timestamp
        return {k: ends[k] - starts[k] for k in ends if k in starts}


def asset_metadata(result, asset: str) -> dict[str, Any]:
    for event in result.get_asset_materialization_events():
        if event.materialization.asset_key.path[-1] == asset:
            return {k: v.value for k, v in event.materialization.metadata.items()}
    raise KeyError(asset)


# ---------------------------------------------------------------- results


@dataclass
class Row:
    section: str
    measure: str
    value: str
    target: str = ""
    met: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *args: str) -> None:
        self.rows.append(Row(*args))

    def markdown(self) -> str:
        lines = ["| Section | Measure | Value | Target | Met |", "|---|---|---|---|---|"]
        lines += [f"| {r.section} | {r.measure} | {r.value} | {r.target} | {r.met} |" for r in self.rows]
        return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


# ---------------------------------------------------------------- sections


def section_overhead(args, work: Path, report: Report) -> None:
    """Asset time per frame / crop vs the bare batched forward on the same inputs, models warm."""
    from conceptmine_assets.assets.embeddings import decode_crop
    from conceptmine_assets.lib.images import read_rgb
    import pandas as pd

    scenes_n = args.overhead_scenes
    dataroot, scenes = synth(work, "overhead-root", scenes_n + 1)
    pipe = Pipeline(args, dataroot, work / "overhead" / "store", work / "overhead" / "home", ALL_CAMERAS)
    pipe.register(scenes)
    pipe.run("perception_job", scenes[0])  # warm-up: model loading, imports, first-call costs
    detector, embedder = pipe.resources["detector"], pipe.resources["embedder"]
    ratios: dict[str, list[float]] = {k: [] for k in ("det", "emb", "det_step", "emb_step")}
    per_unit: dict[str, list[float]] = {k: [] for k in ("det_asset", "det_bare", "det_decode", "emb_asset", "emb_bare")}
    frames_n = crops_n = 0
    for _ in range(args.repeats):
        keys = ("det_asset", "det_step", "det_bare", "det_decode", "emb_asset", "emb_step", "emb_bare")
        sums = dict.fromkeys(keys, 0.0)
        frames_n = crops_n = 0
        for scene in scenes[1:]:
            result = pipe.run("perception_job", scene)
            det, emb = asset_metadata(result, "detections"), asset_metadata(result, "embeddings")
            steps = pipe.step_seconds(result.run_id)
            sums["det_asset"] += det["seconds"]
            sums["emb_asset"] += emb["seconds"]
            sums["det_step"] += steps["detections"]
            sums["emb_step"] += steps["embeddings"]
            frames = pd.read_parquet(pipe.store / "frames" / f"{scene}.parquet")
            started = time.perf_counter()
            images = [read_rgb(dataroot / p) for p in frames.loc[frames["image_ok"], "image_path"]]
            sums["det_decode"] += time.perf_counter() - started
            started = time.perf_counter()
            for chunk in batches(images, detector.batch_size):  # as the asset batches
                detector.predict(chunk)
            sums["det_bare"] += time.perf_counter() - started
            crops = pd.read_parquet(pipe.store / "crops" / f"{scene}.parquet")
            pil = [decode_crop(b, scene, d) for b, d in zip(crops["image_jpeg"], crops["detection_id"])]
            started = time.perf_counter()
            for chunk in batches(pil, embedder.batch_size):
                embedder.encode_images(chunk)
            sums["emb_bare"] += time.perf_counter() - started
            frames_n += len(images)
            crops_n += len(pil)
        ratios["det"].append(sums["det_asset"] / sums["det_bare"])
        ratios["det_step"].append(sums["det_step"] / sums["det_bare"])
        per_unit["det_asset"].append(1000 * sums["det_asset"] / frames_n)
        per_unit["det_bare"].append(1000 * sums["det_bare"] / frames_n)
        per_unit["det_decode"].append(1000 * sums["det_decode"] / frames_n)
        if crops_n:
            ratios["emb"].append(sums["emb_asset"] / sums["emb_bare"])
            ratios["emb_step"].append(sums["emb_step"] / sums["emb_bare"])
            per_unit["emb_asset"].append(1000 * sums["emb_asset"] / crops_n)
            per_unit["emb_bare"].append(1000 * sums["emb_bare"] / crops_n)
    where = f"{scenes_n} scenes x 6 cameras = {frames_n} frames, {crops_n} crops per repeat"
    report.add("overhead", f"`detections` asset, ms/frame ({where})",
               f"{median(per_unit['det_asset']):.0f} vs bare `predict` {median(per_unit['det_bare']):.0f} "
               f"(+ JPEG decode {median(per_unit['det_decode']):.0f}, which the asset does and `predict` does not)")
    report.add("overhead", "`detections` asset / bare forward (asset compute; whole step incl. IO)",
               f"{median(ratios['det']):.2f}x; {median(ratios['det_step']):.2f}x", "<= 1.15x",
               verdict(median(ratios["det"]) <= 1.15))
    if ratios["emb"]:
        report.add("overhead", "`embeddings` asset, ms/crop",
                   f"{median(per_unit['emb_asset']):.1f} vs bare `encode_images` {median(per_unit['emb_bare']):.1f}")
        report.add("overhead", "`embeddings` asset / bare forward (asset compute; whole step incl. IO)",
                   f"{median(ratios['emb']):.2f}x; {median(ratios['emb_step']):.2f}x", "<= 1.15x",
                   verdict(median(ratios["emb"]) <= 1.15))
    else:
        report.add("overhead", "`embeddings`", "no crops (detector found nothing): not measured")


def section_incremental(args, work: Path, report: Report) -> None:
    """One new scene caught up (its per-scene jobs + global mining) vs a full run of all N."""
    n = args.scenes
    warm_root, warm_scenes = synth(work, "warm-root", 2)
    Pipeline(args, warm_root, work / "warm" / "store", work / "warm" / "home", ["CAM_FRONT"]).full(warm_scenes)
    fulls, incs, parts = [], [], []
    pipe = None
    for r in range(args.repeats):
        dataroot, scenes = synth(work, f"incr-root-{r}", n)
        pipe = Pipeline(args, dataroot, work / f"incr-{r}" / "store", work / f"incr-{r}" / "home", ["CAM_FRONT"])
        fulls.append(pipe.full(scenes))
    assert pipe is not None
    for r in range(args.repeats):  # grow the last store by one scene per repeat
        _, scenes = synth(work, f"incr-root-{args.repeats - 1}", n + r + 1)
        per_scene, global_s = pipe.catch_up(scenes[-1])
        incs.append(per_scene + global_s)
        parts.append((per_scene, global_s))
    full, inc = median(fulls), median(incs)
    per_scene_share = full / n
    report.add("incremental", f"full run, {n} scenes (perception, reference fit, mining, global)",
               f"{full:.1f} s ({per_scene_share:.2f} s/scene)")
    report.add("incremental", "add 1 scene and catch up: per-scene jobs + global mining",
               f"{inc:.2f} s ({median([p[0] for p in parts]):.2f} + {median([p[1] for p in parts]):.2f} s)")
    report.add("incremental", "catch-up / (full run / N)", f"{inc / per_scene_share:.2f}", "<= 1.2",
               verdict(inc <= 1.2 * per_scene_share))


def _child_env(work: Path, threads: int | None = None) -> dict[str, str]:
    env = {**os.environ, **offline_env(work), "PYTHONPATH": str(REPO)}
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def _child_args(args: argparse.Namespace) -> list[str]:
    out = ["--device", args.device, "--det-batch", str(args.det_batch), "--emb-batch", str(args.emb_batch),
           "--weights", args.weights, "--embedder", args.embedder]
    if args.clip_pretrained:
        out += ["--clip-pretrained", args.clip_pretrained]
    return out


def _run_child(args, work: Path, child: list[str], threads: int | None = None) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).resolve()), *_child_args(args), "--workdir", str(work), *child]
    return subprocess.Popen(cmd, env=_child_env(work, threads), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _child_result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({proc.returncode}):\n{err.decode()[-4000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])


def section_memory(args, work: Path, report: Report) -> None:
    """Peak RSS of a whole run over N and 4N scenes, each in a fresh subprocess."""
    n = args.memory_scenes or args.scenes
    peaks: dict[int, list[float]] = {}
    seconds: dict[int, list[float]] = {}
    for count in (n, 4 * n):
        dataroot, _ = synth(work, f"mem-root-{count}", count)
        for r in range(args.memory_repeats):
            proc = _run_child(args, work, ["--child", "memory", "--dataroot", str(dataroot),
                                           "--child-dir", str(work / f"mem-{count}-{r}")])
            res = _child_result(proc)
            peaks.setdefault(count, []).append(res["maxrss_mb"])
            seconds.setdefault(count, []).append(res["seconds"])
    children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    small, big = median(peaks[n]), median(peaks[4 * n])
    for count in (n, 4 * n):
        report.add("memory", f"peak RSS, full run of {count} scenes (fresh process)",
                   f"{median(peaks[count]):.0f} MB ({median(seconds[count]):.0f} s cold)")
    growth = big / small
    report.add("memory", f"peak RSS {4 * n} / {n} scenes", f"{growth:.2f}x", "flat (<= 1.10x)", verdict(growth <= 1.10))
    report.notes.append(
        f"memory: ru_maxrss of each child (RUSAGE_SELF, read at its end); RUSAGE_CHILDREN of the "
        f"benchmark process, the largest child so far: {children_peak:.0f} MB."
    )


def section_parallel(args, work: Path, report: Report) -> None:
    """Perception throughput: W worker processes, each running its share of the scenes."""
    n = args.scenes
    cores = len(os.sched_getaffinity(0))
    rates: dict[int, list[tuple[float, float]]] = {}
    for workers in (1, 2):
        for r in range(args.repeats):
            dataroot, scenes = synth(work, f"par-root-{workers}-{r}", n)
            shared = work / f"par-{workers}-{r}"
            sync = shared / "sync"
            sync.mkdir(parents=True, exist_ok=True)
            _init_instance(shared / "home", scenes)  # two processes must not create one SQLite schema at once
            started = time.perf_counter()
            procs = [
                _run_child(args, work, ["--child", "perception", "--dataroot", str(dataroot), "--child-dir",
                                        str(shared), "--child-scenes", ",".join(scenes[w::workers])],
                           threads=max(1, cores // workers))
                for w in range(workers)
            ]
            _release_when_ready(procs, sync)  # all workers warm: start them together
            go = time.time()
            results = [_child_result(p) for p in procs]
            wall = time.perf_counter() - started
            busy = max(res["end"] for res in results) - go
            rates.setdefault(workers, []).append((n / wall, n / busy))
    one, two = (median([x[1] for x in rates[w]]) for w in (1, 2))
    for workers in (1, 2):
        report.add("parallel", f"perception, {n} scenes, {workers} worker process(es): scenes/s",
                   f"{median([x[1] for x in rates[workers]]):.2f} models warm; "
                   f"{median([x[0] for x in rates[workers]]):.2f} incl. start-up")
    report.add("parallel", "speed-up 2 workers / 1", f"{two / one:.2f}x", f"<= {min(2, cores)}x ({cores} cores)")
    report.notes.append(
        "parallel: W subprocesses, each `perception_job.execute_in_process` over every W-th scene, against one "
        f"store and one persistent DagsterInstance (SQLite); OMP/MKL threads = cores / W. The multiprocess "
        "executor parallelises the steps of one run, not the partitions of a backfill, so it is not used here."
    )


def _init_instance(home: Path, scenes: list[str]) -> None:
    """Create the instance's SQLite storage and the scene partitions before any worker starts."""
    import dagster as dg

    from conceptmine_assets.partitions import SCENE_PARTITIONS_NAME

    with open_instance(home) as instance:
        instance.add_dynamic_partitions(SCENE_PARTITIONS_NAME, scenes)


def _release_when_ready(procs: list[subprocess.Popen], sync: Path, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while len(list(sync.glob("ready-*"))) < len(procs):
        failed = [p for p in procs if p.poll() not in (None, 0)]
        if failed or time.monotonic() > deadline:
            for p in procs:
                p.kill()
            raise RuntimeError(f"benchmark worker failed while warming up: {_child_stderr(failed)}")
        time.sleep(0.05)
    (sync / "go").touch()


def _child_stderr(procs: list[subprocess.Popen]) -> str:
    return "".join(p.communicate()[1].decode()[-3000:] for p in procs)


def section_throughput(args, work: Path, report: Report) -> None:
    """Bare detection and embedding throughput on the chosen device, batch sizes from the flags."""
    import torch
    from PIL import Image

    from conceptmine_assets.lib.images import read_rgb
    from conceptmine_assets.resources.detector import DetectorResource
    from conceptmine_assets.resources.nuscenes import NuScenesResource

    models = model_resources(args)
    detector, embedder = models["detector"], models["embedder"]
    nusc = NuScenesResource(dataroot=str(REAL_SLICE)).nusc
    sample = nusc.sample[0]
    paths = [nusc.get_sample_data_path(sample["data"][c]) for c in ALL_CAMERAS]
    paths += sorted(str(p) for p in (HIGHWAY / "samples" / "CAM_FRONT").glob("*.jpg"))
    frames = [read_rgb(p) for p in paths]
    gt = DetectorResource(backend="annotations")
    crops = []
    for channel, image in zip(ALL_CAMERAS, frames):
        for box in gt.annotation_boxes(nusc, sample["data"][channel]).boxes:
            x1, y1, x2, y2 = (int(v) for v in (box.x1, box.y1, box.x2, box.y2))
            if min(x2 - x1, y2 - y1) >= 16:
                crops.append(Image.fromarray(image[y1:y2, x1:x2]))
    total = max(args.throughput_frames, detector.batch_size)
    work_frames = [frames[i % len(frames)] for i in range(total)]
    work_crops = [crops[i % len(crops)] for i in range(max(len(crops), embedder.batch_size * 2))]
    detector.predict(work_frames[: detector.batch_size])  # warm-up: load, first-call costs
    embedder.encode_images(work_crops[: embedder.batch_size])
    det_fps, emb_cps = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for chunk in batches(work_frames, detector.batch_size):
            detector.predict(chunk)
        _sync(args.device)
        det_fps.append(len(work_frames) / (time.perf_counter() - started))
        started = time.perf_counter()
        embedder.encode_images(work_crops)
        _sync(args.device)
        emb_cps.append(len(work_crops) / (time.perf_counter() - started))
    det, emb = median(det_fps), median(emb_cps)
    threads, cores = torch.get_num_threads(), len(os.sched_getaffinity(0))
    if not torch.cuda.is_available() and threads < cores:  # ultralytics' import sets OMP_NUM_THREADS=1
        torch.set_num_threads(cores)
        all_cores = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            embedder.encode_images(work_crops)
            all_cores.append(len(work_crops) / (time.perf_counter() - started))
        torch.set_num_threads(threads)
        report.notes.append(
            f"throughput: torch ran with {threads} thread(s) in this process because ultralytics' import sets "
            f"OMP_NUM_THREADS=1 when unset; with torch.set_num_threads({cores}) the embedder does "
            f"{median(all_cores):.1f} crops/s instead of {emb:.1f}."
        )
    per_frame = len(crops) / len(ALL_CAMERAS)  # annotated boxes >= 16 px per real camera frame
    combined = 1.0 / (1.0 / det + per_frame / emb)
    device = args.device
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        device = f"{device} ({torch.cuda.get_device_name(0)})"
    report.add("throughput", f"detection on {device}, batch {detector.batch_size}", f"{det:.2f} frames/s")
    report.add("throughput", f"embedding on {device}, batch {embedder.batch_size}", f"{emb:.1f} crops/s")
    report.add("throughput", f"detection + embedding at {per_frame:.1f} crops/frame", f"{combined:.2f} frames/s",
               f"paper {PAPER_FPS}")
    if not torch.cuda.is_available():
        report.add("throughput", "GPU mode (`--device cuda`)", "not run: no CUDA device on this machine")
    if Path(args.weights).suffix == ".tflite":
        report.notes.append("throughput: a .tflite detector runs on the CPU (LiteRT) whatever --device says.")


def _sync(device: str) -> None:
    import torch

    if torch.cuda.is_available() and device != "cpu":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- child processes


def child_memory(args) -> dict:
    scenes = json.loads((Path(args.dataroot) / "v1.0-mini" / "scene.json").read_text())
    pipe = Pipeline(args, Path(args.dataroot), Path(args.child_dir) / "store", Path(args.child_dir) / "home",
                    ["CAM_FRONT"])
    seconds = pipe.full([s["name"] for s in scenes])
    return {"seconds": seconds, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child_perception(args) -> dict:
    pipe = Pipeline(args, Path(args.dataroot), Path(args.child_dir) / "store", Path(args.child_dir) / "home",
                    ["CAM_FRONT"])
    scenes = args.child_scenes.split(",")
    pipe.register(scenes)
    pipe.resources["detector"].load()  # models warm before the clock starts
    pipe.resources["embedder"].encoders()
    sync = Path(args.child_dir) / "sync"
    (sync / f"ready-{os.getpid()}").touch()
    while not (sync / "go").exists():
        time.sleep(0.02)
    start = time.time()
    for scene in scenes:
        pipe.run("perception_job", scene)
    return {"start": start, "end": time.time(), "scenes": len(scenes)}


# ---------------------------------------------------------------- main


def machine(args) -> list[tuple[str, str]]:
    import dagster
    import torch

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor() or "unknown")
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    models = model_resources(args)
    embedder = models["embedder"]
    emb_name = "offline MobileNetV2 (ImageNet, 1280-d)" if args.embedder == "offline" else (
        f"open_clip ViT-B-32 ({args.clip_pretrained or 'random init: paper architecture, untrained'})")
    return [
        ("CPU", f"{cpu}, {len(os.sched_getaffinity(0))} cores usable (load avg at start {load}; shared machine)"),
        ("GPU", cuda),
        ("Software", f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} "
                     f"threads), dagster {dagster.__version__}"),
        ("Device", f"{args.device}; batch sizes: detector {args.det_batch}, embedder {args.emb_batch}"),
        ("Detector", f"{models['detector'].model_id} ({args.weights})"),
        ("Embedder", f"{emb_name}, batch {embedder.batch_size}"),
        ("Captioner", "template (offline profile)"),
        ("Data", f"N = {args.scenes} synthetic scenes: copies of real nuScenes scene-0061 (lib/synth.py), "
                 "CAM_FRONT (overhead: all 6 cameras)"),
        ("Repeats", f"{args.repeats} (medians reported; memory: {args.memory_repeats})"),
    ]


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=20, help="N synthetic scenes (default 20)")
    p.add_argument("--repeats", type=int, default=3, help="repeats per measurement; medians are reported")
    p.add_argument("--quick", action="store_true", help="smoke run: N=3, 1 repeat, small sections")
    p.add_argument("--out", type=Path, help="also write the report to this Markdown file")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--det-batch", type=int, default=16, help="detector batch size (frames)")
    p.add_argument("--emb-batch", type=int, default=32, help="embedder batch size (crops)")
    p.add_argument("--weights", default=os.environ.get("CONCEPTMINE_YOLO_WEIGHTS", str(DEFAULT_WEIGHTS)),
                   help="YOLO weights: the fixture tflite (default), a .pt file, or yolov8l.yaml (random init)")
    p.add_argument("--embedder", choices=("offline", "vit-b-32"), default="offline")
    p.add_argument("--clip-pretrained", default=None, help="open_clip tag or checkpoint for --embedder vit-b-32")
    p.add_argument("--overhead-scenes", type=int, default=3, help="scenes (x 6 cameras) per overhead repeat")
    p.add_argument("--memory-scenes", type=int, default=0, help="N for the memory section (default: --scenes)")
    p.add_argument("--memory-repeats", type=int, default=1)
    p.add_argument("--throughput-frames", type=int, default=40, help="frames per throughput repeat")
    p.add_argument("--workdir", type=Path, help="scratch folder (default: a new temporary folder)")
    p.add_argument("--child", choices=("memory", "perception"), help=argparse.SUPPRESS)
    p.add_argument("--dataroot", help=argparse.SUPPRESS)
    p.add_argument("--child-dir", help=argparse.SUPPRESS)
    p.add_argument("--child-scenes", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.scenes, args.repeats, args.overhead_scenes = 3, 1, 1
        args.memory_scenes, args.throughput_frames = args.memory_scenes or 2, 16
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="conceptmine-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update(offline_env(work))
    import dagster as dg

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    if args.child:
        run = {"memory": child_memory, "perception": child_perception}[args.child]
        sys.stdout.write(json.dumps(run(args)) + "\n")
        return 0

    report = Report()
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown sections {unknown}; choose from {SECTIONS}")
    runners: dict[str, Callable] = {
        "overhead": section_overhead, "incremental": section_incremental, "memory": section_memory,
        "parallel": section_parallel, "throughput": section_throughput,
    }
    started = time.perf_counter()
    timings = []
    for name in SECTIONS:
        if name in chosen:
            t0 = time.perf_counter()
            try:
                runners[name](args, work, report)
            except Exception as exc:  # report the failure and go on with the other sections
                traceback.print_exc()
                report.add(name, "**failed**", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            timings.append(f"{name} {time.perf_counter() - t0:.0f} s")
            sys.stderr.write(f"bench: {name} done in {time.perf_counter() - t0:.0f} s\n")
    header = ["## conceptmine benchmark", "", "| | |", "|---|---|"]
    header += [f"| {k} | {v} |" for k, v in machine(args)]
    cmd = "python bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    footer = [f"- command: `{cmd}`; wall {time.perf_counter() - started:.0f} s ({', '.join(timings)})"]
    footer += [f"- {note}" for note in report.notes]
    text = "\n".join([*header, "", report.markdown(), "", *footer]) + "\n"
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
