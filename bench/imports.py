#!/usr/bin/env python
"""Import speed of ``conceptmine import-images``: frames/s for a folder of images and for a video.

    .venv/bin/python bench/imports.py                 # 200 images, a 300-frame video, 3 repeats
    .venv/bin/python bench/imports.py --images 1000 --video-frames 1200 --repeats 5

Inputs are made from the committed highway frames (1280x720 JPEG): ``--images`` copies with
distinct timestamped names split over 4 folders, and an MP4 (mp4v, 30 fps) of ``--video-frames``
frames. Measured per run on a fresh output folder, the median of ``--repeats``:

- folder, symlinked / ``--copy``: every image is opened and fully decoded (at 1/8 scale for JPEG)
  before anything is written; frames/s = images / seconds.
- video at ``--fps 2`` and at 30 fps (every frame): frames/s = decoded video frames / seconds
  (every frame is decoded; the kept ones are also JPEG-encoded and written).

Prints a Markdown table; nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
HIGHWAY_FRAMES = REPO / "data" / "fixtures" / "nuscenes-udacity-highway" / "samples" / "CAM_FRONT"


def make_folder(root: Path, count: int) -> Path:
    """``count`` highway frames under ``root/images/drive-k`` with distinct µs timestamps (10 Hz)."""
    frames = sorted(HIGHWAY_FRAMES.glob("*.jpg"))
    for i in range(count):
        folder = root / "images" / f"drive-{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(frames[i % len(frames)], folder / f"frame_{1_500_000_000_000_000 + i * 100_000}.jpg")
    return root / "images"


def make_video(root: Path, count: int, fps: float = 30.0) -> Path:
    """An MP4 (mp4v) of ``count`` frames cycling through the highway frames."""
    import cv2

    frames = [cv2.imread(str(p)) for p in sorted(HIGHWAY_FRAMES.glob("*.jpg"))]
    path = root / "video" / "drive.mp4"
    path.parent.mkdir(parents=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (1280, 720))
    for i in range(count):
        writer.write(frames[(i // 15) % len(frames)])
    writer.release()
    return path.parent


def median_seconds(src: Path, work: Path, repeats: int, **options) -> float:
    """Median wall time of importing ``src`` into a fresh folder, ``repeats`` times."""
    from conceptmine_assets.cli.import_images import import_images
    from conceptmine_assets.cli.importer import ImportOptions

    times = []
    for k in range(repeats):
        out = work / f"out-{time.monotonic_ns()}-{k}"
        started = time.perf_counter()
        import_images(src, out, ImportOptions(**options))
        times.append(time.perf_counter() - started)
        shutil.rmtree(out)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="images in the folder (default 200)")
    parser.add_argument("--video-frames", type=int, default=300, help="frames of the 30 fps video (default 300)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; the median is shown (default 3)")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-imports-") as tmp:
        work = Path(tmp)
        folder, video = make_folder(work, args.images), make_video(work, args.video_frames)
        cases = [
            (f"folder, {args.images} images, symlinked", folder, args.images, {}),
            (f"folder, {args.images} images, --copy", folder, args.images, {"copy": True}),
            (f"video, {args.video_frames} frames at 30 fps, --fps 2", video, args.video_frames, {"fps": 2.0}),
            (f"video, {args.video_frames} frames at 30 fps, --fps 30", video, args.video_frames, {"fps": 30.0}),
        ]
        for name, src, frames, options in cases:
            seconds = median_seconds(src, work, args.repeats, **options)
            rows.append(f"| {name} | {seconds:.2f} | {frames / seconds:.0f} |")
    print(f"## Import speed (`conceptmine import-images`; {platform.processor() or platform.machine()}, "
          f"median of {args.repeats})\n")
    print("| input | seconds | frames/s |\n|---|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
