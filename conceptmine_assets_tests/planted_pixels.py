"""A real-pixel mining case: photos of rare objects pasted into augmented real driving frames.

``write_drives`` makes a folder of drives (one sub-folder per drive, file names with timestamps
at 2 Hz) for ``conceptmine import-images``: each frame is one of the fixture's real camera
images (the six nuScenes cameras of scene-0061, the four highway frames), randomly cropped,
rescaled, mirrored and re-lit, so that the frequent objects (the parked truck, the cars) come
back as near-duplicates, as they do in consecutive frames of real drives. A few frames get a
photo of a rare object pasted in (``data/fixtures/objects``: a cat and a coffee cup, both CC0),
each at its own size, place and mirroring. Seeded: the same arguments write the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures"
OBJECTS = FIXTURES / "objects"
START_US = 1_700_000_000_000_000  # the first frame's time (µs); frames 0.5 s apart


def base_images() -> list[Path]:
    real = sorted((FIXTURES / "nuscenes-real-slice" / "samples").glob("CAM_*/*.jpg"))
    highway = sorted((FIXTURES / "nuscenes-udacity-highway" / "samples").glob("CAM_*/*.jpg"))
    return real + highway


@dataclass(frozen=True)
class Planted:
    """One pasted object: which frame (drive folder, file name), what, and where (pixels)."""

    drive: str
    file: str
    name: str  # the object's everyday name, what a user searches for ("cat")
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in the written frame


def _augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    scale = rng.uniform(0.8, 1.0)
    cw, ch = int(w * scale), int(h * scale)
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = image.crop((x0, y0, x0 + cw, y0 + ch)).resize((1600, 900), Image.BILINEAR)
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    return ImageEnhance.Brightness(out).enhance(float(rng.uniform(0.8, 1.2)))


def _paste(frame: Image.Image, obj: Image.Image, rng: np.random.Generator) -> tuple[int, int, int, int]:
    height = int(rng.integers(260, 400))
    width = int(obj.width * height / obj.height)
    piece = obj.resize((width, height), Image.BILINEAR)
    if rng.random() < 0.5:
        piece = ImageOps.mirror(piece)
    x = int(rng.integers(100, 1600 - width - 100))
    y = int(rng.integers(420, 900 - height - 20)) if 900 - height - 20 > 420 else 900 - height - 20
    frame.paste(piece, (x, y))
    return x, y, x + width, y + height


def write_drives(out: Path, drives: int = 10, frames_per_drive: int = 6, seed: int = 0,
                 objects: dict[str, int] | None = None) -> list[Planted]:
    """Write ``drives`` x ``frames_per_drive`` JPEG frames under ``out``; paste each object of
    ``objects`` (name -> number of frames, default a cat in 3 and a coffee cup in 2) into that many
    frames of different drives; return what was pasted where."""
    objects = {"cat": 3, "coffee_cup": 2} if objects is None else objects
    rng = np.random.default_rng(seed)
    bases = [Image.open(p).convert("RGB") for p in base_images()]
    slots = [(d, f) for d in range(drives) for f in range(frames_per_drive)]
    order = rng.permutation(len(slots))
    chosen = iter(int(i) for i in order)
    plan: dict[tuple[int, int], str] = {}
    used_drives: dict[str, set[int]] = {}
    for name, count in objects.items():
        while sum(1 for v in plan.values() if v == name) < count:
            d, f = slots[next(chosen)]
            if (d, f) in plan or d in used_drives.setdefault(name, set()):
                continue
            plan[(d, f)] = name
            used_drives[name].add(d)
    planted = []
    for d in range(drives):
        folder = out / f"drive-{d:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for f in range(frames_per_drive):
            base = bases[int(rng.integers(len(bases)))]
            frame = _augment(base, rng)
            name = plan.get((d, f))
            file = f"{START_US + (d * 1000 + f) * 500_000}.jpg"
            if name is not None:
                with Image.open(OBJECTS / f"{name}.jpg") as obj:
                    box = _paste(frame, obj.convert("RGB"), rng)
                planted.append(Planted(folder.name, file, name.replace("_", " "), box))
            frame.save(folder / file, quality=90)
    return planted
