"""``conceptmine import-images SRC --out DATAROOT``: a folder of images or videos as a nuScenes dataroot.

How the source becomes scenes (the tables themselves: ``lib/importer.py``):

- images directly in a folder are one scene named after the folder (``SRC`` itself: its name;
  a sub-folder ``a/b``: ``a-b``); a sub-folder named after a camera (``CAM_FRONT``, ``CAM_BACK``,
  ...) adds that camera to its parent's scene, otherwise images are ``CAM_FRONT``;
- each video is its own scene (``<folder>-<stem>``, or ``<stem>`` at the top), decoded with
  OpenCV at ``--fps``; its frames are written as JPEG under ``samples/<camera>/``;
- timestamps come from a 10/13/16/19-digit number in the file names, else EXIF
  DateTimeOriginal, else the file order at ``--fps`` (``--timestamps`` forces one; an EXIF date
  that does not parse counts as none); ``--gap`` splits a scene where samples are further apart.

Images are symlinked into the dataroot (``--copy`` copies them). Everything is read and checked
before anything is written: images are fully decoded, videos decoded into a staging folder;
then files are moved in, and the tables are written through temporary files with ``scene.json``
last, so the discovery sensor sees a new scene only once every table holds it.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from PIL import Image

from conceptmine_assets.assets.frames import CAMERAS
from conceptmine_assets.errors import DatasetError
from conceptmine_assets.lib.importer import DEFAULT_CHANNEL, Frame, Group, RateGate, filename_timestamp, scene_name

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg")
MARKER = "conceptmine-import.json"  # in the dataroot: what it was imported from
Clock = Literal["auto", "filename", "exif", "order"]


@dataclass(frozen=True)
class ImportOptions:
    fps: float = 2.0  # samples per second (nuScenes keyframes: 2 Hz)
    gap: float | None = None  # seconds; split scenes at larger gaps between samples
    copy: bool = False  # copy images instead of symlinking them
    timestamps: Clock = "auto"
    version: str = "v1.0-mini"
    jpeg_quality: int = 90  # video frames


@dataclass
class Found:
    """What the scan found: image paths per (group, channel), videos, and files of other kinds."""

    images: dict[tuple[str, str], list[Path]] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)  # group -> folder, relative to the source
    videos: list[tuple[str, str, Path]] = field(default_factory=list)  # (group, channel, path)
    ignored: list[str] = field(default_factory=list)


def scan(src: Path) -> Found:
    """Images and videos under ``src`` (a folder, or one video or image file), hidden entries skipped."""
    found = Found()
    if src.is_file():
        _add_file(found, src, src.parent, (), DEFAULT_CHANNEL, [scene_name([src.stem])])
        return found
    for dirpath, dirnames, filenames in os.walk(src, onerror=_unreadable_folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(src).parts
        is_camera = bool(rel) and rel[-1] in CAMERAS
        owner = rel[:-1] if is_camera else rel
        channel = rel[-1] if is_camera else DEFAULT_CHANNEL
        for name in sorted(f for f in filenames if not f.startswith(".")):
            _add_file(found, Path(dirpath, name), src, owner, channel, list(owner) or [src.resolve().name])
    return found


def _unreadable_folder(exc: OSError) -> None:
    raise DatasetError(f"cannot read folder {exc.filename}: {exc.strerror}") from exc


def _add_file(found: Found, path: Path, src: Path, owner: tuple, channel: str, parts: list[str]) -> None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        group = scene_name(parts)
        found.images.setdefault((group, channel), []).append(path)
        found.origins.setdefault(group, "/".join(owner) + "/" if owner else f"{src.resolve().name}/")
    elif suffix in VIDEO_SUFFIXES:
        found.videos.append((scene_name([*owner, path.stem]), channel, path))
    else:
        found.ignored.append(str(path.relative_to(src)))


def exif_time(im: Image.Image) -> int | None:
    """EXIF DateTimeOriginal (else DateTime) with its sub-seconds, read as UTC, in µs; None when absent."""
    exif = im.getexif()
    sub = exif.get_ifd(0x8769)
    stamp = str(sub.get(36867) or exif.get(306) or "").strip("\x00 ")
    try:
        when = datetime.strptime(stamp, "%Y:%m:%d %H:%M:%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    frac = str(sub.get(37521) or "").strip("\x00 ")
    return int(when.timestamp()) * 1_000_000 + (int((frac + "000000")[:6]) if frac.isdigit() else 0)


def probe_image(path: Path) -> tuple[int, int, int | None]:
    """Width, height and EXIF time of an image that decodes to the end; a DatasetError naming it."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            when = exif_time(im)
            im.draft("RGB", (max(1, width // 8), max(1, height // 8)))  # JPEG: decode at 1/8 scale
            im.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"unreadable image {path}: {exc}") from exc
    return width, height, when


Probed = dict[Path, tuple[int, int, int | None]]


def probe_images(paths: list[Path]) -> Probed:
    """:func:`probe_image` of every path on a few threads (decoding releases the GIL); the error
    of the first bad file in ``paths`` order."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return dict(zip(paths, pool.map(probe_image, paths), strict=True))


def natural_key(path: Path) -> list:
    """File order as people number files: ``img2`` before ``img10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.as_posix())]


def image_group(group: str, origin: str, by_channel: dict[str, list[Path]], root: Path, probe: Probed, opts: ImportOptions) -> Group:
    """The frames of one folder group (all its cameras), timestamps by ``opts.timestamps``."""
    probed = {ch: [(p, *probe[p]) for p in paths] for ch, paths in by_channel.items()}
    items = [item for rows in probed.values() for item in rows]
    clock = opts.timestamps
    if clock == "auto":
        clock = "order"
        if all(filename_timestamp(p.stem) is not None for p, *_ in items):
            clock = "filename"
        elif all(when is not None for *_, when in items):
            clock = "exif"
    frames = []
    for channel, rows in sorted(probed.items()):
        for k, (path, width, height, when) in enumerate(sorted(rows, key=lambda r: natural_key(r[0]))):
            stamp = {"filename": filename_timestamp(path.stem), "exif": when, "order": round(k * 1e6 / opts.fps)}[clock]
            if stamp is None:
                raise DatasetError(f"{path} has no {clock} timestamp (--timestamps {clock}); use --timestamps order")
            rel = path.relative_to(root).as_posix()
            name = f"samples/{channel}/{group}__{channel}__{stamp}{path.suffix.lower()}"
            frames.append(Frame(rel, str(path), channel, stamp, width, height, name))
    return Group(group, origin, clock, frames)


def video_frames(path: Path, group: str, channel: str, rel: str, staging: Path, opts: ImportOptions) -> list[Frame]:
    """Decode a video at ``opts.fps`` into JPEGs under ``staging``; a DatasetError naming it if it fails."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # quiet: a failure is our one-line error
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        rate = cap.get(cv2.CAP_PROP_FPS) if cap.isOpened() else 0.0
        if not rate > 0:
            raise DatasetError(f"cannot decode video {path}: OpenCV cannot open it or finds no frame rate")
        gate, frames, index = RateGate(opts.fps), [], -1
        while cap.grab():
            index += 1
            stamp = round(index * 1e6 / rate)
            if not gate.keep(stamp):
                continue
            ok, bgr = cap.retrieve()
            encoded, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, opts.jpeg_quality]) if ok else (False, None)
            if not encoded:
                raise DatasetError(f"cannot decode video {path}: frame {index} does not decode")
            name = f"samples/{channel}/{group}__{channel}__{stamp}.jpg"
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(jpeg.tobytes())
            frames.append(Frame(f"{rel}#{index}", f"{path} frame {index}", channel, stamp, bgr.shape[1], bgr.shape[0], name))
        expected = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
    if not frames or index + 1 < expected - max(2, expected // 50):  # containers may estimate the count
        raise DatasetError(f"cannot decode video {path}: {index + 1} of {expected} frames decode (truncated or corrupt?)")
    return frames
