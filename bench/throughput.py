"""Section ``throughput``: bare detection and embedding throughput on ``--device``.

Frames: the real slice's six cameras and the highway frames; crops: the real slice's annotated
boxes (>= 16 px), so the embedder has realistic inputs even when a random-init detector finds
nothing. Combined frames/s at the real slice's crops per frame; the paper: ~3 frames/s.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.common import Report, batches, median, model_resources
from bench.scenes import HIGHWAY, REAL_SLICE

PAPER_FPS = "~3 frames/s (40 frames in 13.5–15.4 s; YOLOv8l + CLIP ViT-B/32 on an RTX 3090)"
MIN_CROP_PX = 16


def inputs() -> tuple[list, list]:
    """Decoded frames and annotated crops (PIL) of the fixtures."""
    from PIL import Image

    from conceptmine_assets.assets.frames import CAMERAS
    from conceptmine_assets.lib.images import read_rgb
    from conceptmine_assets.resources.detector import AnnotationsDetector
    from conceptmine_assets.resources.nuscenes import NuScenesResource

    nusc = NuScenesResource(dataroot=str(REAL_SLICE)).nusc
    sample = nusc.sample[0]
    paths = [nusc.get_sample_data_path(sample["data"][c]) for c in CAMERAS]
    frames = [read_rgb(p) for p in paths + sorted(str(p) for p in (HIGHWAY / "samples" / "CAM_FRONT").glob("*.jpg"))]
    gt, crops = AnnotationsDetector(), []
    for channel, image in zip(CAMERAS, frames):
        for box in gt.annotation_boxes(nusc, sample["data"][channel]).boxes:
            x1, y1, x2, y2 = (int(v) for v in (box.x1, box.y1, box.x2, box.y2))
            if min(x2 - x1, y2 - y1) >= MIN_CROP_PX:
                crops.append(Image.fromarray(image[y1:y2, x1:x2]))
    return frames, crops


def rate(items: list, run, repeats: int, device: str) -> float:
    """Median items/s of ``run(items)`` over ``repeats``."""
    import torch

    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(items)
        if torch.cuda.is_available() and device != "cpu":
            torch.cuda.synchronize()
        rates.append(len(items) / (time.perf_counter() - started))
    return median(rates)


def section_throughput(args, work: Path, report: Report) -> None:
    import torch

    models = model_resources(args)
    detector, embedder = models["detector"], models["embedder"]
    frames, crops = inputs()
    work_frames = [frames[i % len(frames)] for i in range(max(args.throughput_frames, detector.batch_size))]
    work_crops = [crops[i % len(crops)] for i in range(max(len(crops), embedder.batch_size * 2))]
    detector.predict(work_frames[: detector.batch_size])  # warm-up: load, first-call costs
    embedder.encode_images(work_crops[: embedder.batch_size])
    det = rate(work_frames, lambda xs: [detector.predict(c) for c in batches(xs, detector.batch_size)],
               args.repeats, args.device)
    emb = rate(work_crops, embedder.encode_images, args.repeats, args.device)
    threads, cores = torch.get_num_threads(), len(os.sched_getaffinity(0))
    if not torch.cuda.is_available() and threads < cores:  # ultralytics' import sets OMP_NUM_THREADS=1
        torch.set_num_threads(cores)
        all_cores = rate(work_crops, embedder.encode_images, args.repeats, args.device)
        torch.set_num_threads(threads)
        report.notes.append(
            f"throughput: torch ran with {threads} thread(s) in this process because ultralytics' import sets "
            f"OMP_NUM_THREADS=1 when unset; with torch.set_num_threads({cores}) the embedder does "
            f"{all_cores:.1f} crops/s instead of {emb:.1f}.")
    per_frame = len(crops) / 6  # annotated boxes >= 16 px per real camera frame
    device = args.device
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        device = f"{device} ({torch.cuda.get_device_name(0)})"
    report.add("throughput", f"detection on {device}, batch {detector.batch_size}", f"{det:.2f} frames/s")
    report.add("throughput", f"embedding on {device}, batch {embedder.batch_size}", f"{emb:.1f} crops/s")
    report.add("throughput", f"detection + embedding at {per_frame:.1f} crops/frame",
               f"{1.0 / (1.0 / det + per_frame / emb):.2f} frames/s", f"paper {PAPER_FPS}")
    if not torch.cuda.is_available():
        report.add("throughput", "GPU mode (`--device cuda`)", "not run: no CUDA device on this machine")
    if Path(args.weights).suffix == ".tflite":
        report.notes.append("throughput: a .tflite detector runs on the CPU (LiteRT) whatever --device says.")
