"""Import sources made from the committed highway frames, and readers of an imported dataroot's
tables (shared by ``test_importer.py`` and ``test_importer_e2e.py``)."""

import json
import shutil
from pathlib import Path

import cv2

from conceptmine_assets.resources.nuscenes import NUSCENES_TABLES
from conceptmine_assets_tests.helpers import HIGHWAY, require

VERSION = "v1.0-mini"


def highway_images() -> list[Path]:
    """The 4 highway frames (file names carry their µs timestamps: 0, 0.52, 1.0, 1.48 s)."""
    return sorted(require(HIGHWAY / "samples" / "CAM_FRONT").glob("*.jpg"))


def folder_tree(root: Path) -> Path:
    """``root/src`` with two drives of two highway frames each."""
    images = highway_images()
    for name, part in (("drive-a", images[:2]), ("drive-b", images[2:])):
        (root / "src" / name).mkdir(parents=True)
        for image in part:
            shutil.copy(image, root / "src" / name / image.name)
    return root / "src"


def write_video(path: Path, fps: float = 10.0, repeat: int = 5) -> Path:
    """An MP4 (mp4v) of the highway frames, each held for ``repeat`` frames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (1280, 720))
    assert writer.isOpened(), "OpenCV cannot write mp4v here"
    for image in highway_images():
        frame = cv2.imread(str(image))
        for _ in range(repeat):
            writer.write(frame)
    writer.release()
    return path


def tables(out: Path) -> dict[str, list]:
    return {t: json.loads((out / VERSION / f"{t}.json").read_text()) for t in NUSCENES_TABLES}


def table_bytes(out: Path) -> dict[str, bytes]:
    return {t: (out / VERSION / f"{t}.json").read_bytes() for t in NUSCENES_TABLES}
