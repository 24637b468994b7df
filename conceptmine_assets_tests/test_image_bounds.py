"""Bounded image decoding: a decompression bomb in a dataroot is a per-frame error row under a
2 GB memory limit (even with the nuScenes devkit imported, which switches PIL's guard off), and
16-bit and other image modes decode to the 8-bit RGB picture they hold."""

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conceptmine_assets.lib.images import DEFAULT_MAX_PIXELS, ImageDecodeError, read_rgb, to_rgb8
from conceptmine_assets_tests.helpers import REAL_SLICE, REPO, copy_dataroot

BOMB = 30_000  # 30000 x 30000 = 900 M pixels: 2.7 GB as RGB; ~110 KB on disk


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path: Path, side: int = BOMB) -> Path:
    """A valid ``side`` x ``side`` 1-bit grayscale PNG of zeros, written without holding it in memory."""
    z, row = zlib.compressobj(9), b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    body = b"".join(z.compress(row * 1000) for _ in range(side // 1000)) + z.compress(row * (side % 1000)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b""))
    return path


def test_bomb_png_is_what_it_claims(tmp_path, monkeypatch):
    path = bomb_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 1_000_000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # as after `import nuscenes`: PIL's guard off
    with Image.open(path) as im:
        assert im.size == (BOMB, BOMB) and im.format == "PNG"


# Runs in a child process with its address space capped at 2 GiB: imports the devkit (PIL's guard
# off), checks read_rgb refuses the bomb from its header, then runs frames, detections (the
# dataset's own boxes) and crops over a private copy of the real slice whose CAM_FRONT image is
# the bomb with a table that says 30000x30000; then crops again over a bomb swapped in after
# `frames` passed the image (the decode in crops must refuse it too). Prints JSON.
_CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
import dagster as dg, nuscenes.nuscenes, pyarrow.parquet as pq
from PIL import Image
from conceptmine_assets.assets.crops import crops
from conceptmine_assets.assets.detections import detections
from conceptmine_assets.assets.frames import frames
from conceptmine_assets.lib.images import ImageDecodeError, read_rgb
from conceptmine_assets.resources.detector import AnnotationsDetector
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.resources.storage import ParquetIOManager

dataroot, store, bomb, image, phase = sys.argv[1:]
out = {"pil_guard_before": Image.MAX_IMAGE_PIXELS}  # the devkit's import switched it off
try:
    read_rgb(bomb)
    out["read_rgb"] = "decoded"
except ImageDecodeError as exc:
    out["read_rgb"] = str(exc)
res = {"nuscenes": NuScenesResource(dataroot=dataroot), "detector": AnnotationsDetector(),
       "io_manager": ParquetIOManager(base_path=store)}
config = {"ops": {"frames": {"config": {"cameras": ["CAM_FRONT"]}}}}
with dg.DagsterInstance.ephemeral() as instance:
    instance.add_dynamic_partitions("nuscenes_scenes", ["scene-0061"])
    if phase == "swap":
        assert dg.materialize([frames, detections], partition_key="scene-0061", instance=instance,
                              resources=res, run_config=config).success
        import os, shutil
        os.remove(image); shutil.copy(bomb, image)
        result = dg.materialize([frames, detections, crops], partition_key="scene-0061", instance=instance,
                                resources=res, selection=["crops"])
    else:
        result = dg.materialize([frames, detections, crops], partition_key="scene-0061", instance=instance,
                                resources=res, run_config=config)
    out["success"] = result.success
    out["frames"] = pq.read_table(f"{store}/frames/scene-0061.parquet").to_pylist()
    for asset in ("detections", "crops"):
        out[asset] = pq.read_table(f"{store}/{asset}/scene-0061.parquet").num_rows
    out["crops_meta"] = {k: str(v.value) for e in result.get_asset_materialization_events()
                         if e.materialization.asset_key.path[-1] == "crops"
                         for k, v in e.materialization.metadata.items()}
out["pil_guard"] = Image.MAX_IMAGE_PIXELS  # after the stages loaded the devkit
print(json.dumps(out, default=str))
"""


def _front_image(dataroot: Path) -> tuple[dict, list[dict]]:
    table = json.loads((dataroot / "v1.0-mini" / "sample_data.json").read_text())
    [front] = [r for r in table if r["filename"].startswith("samples/CAM_FRONT/")]
    return front, table


def _run_child(dataroot: Path, store: Path, bomb: Path, image: Path, phase: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(dataroot), str(store), str(bomb), str(image), phase],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]  # not 137 (killed), not a MemoryError
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_bomb_in_a_dataroot_is_an_error_row_under_a_memory_limit(tmp_path):
    dataroot = copy_dataroot(REAL_SLICE, tmp_path / "root")
    front, table = _front_image(dataroot)
    image = dataroot / front["filename"]
    image.unlink()
    bomb_png(image)  # the JPEG's name, PNG content: PIL reads the header, not the suffix
    front["width"] = front["height"] = BOMB  # the table agrees: only the pixel limit can stop it
    (dataroot / "v1.0-mini" / "sample_data.json").write_text(json.dumps(table))

    out = _run_child(dataroot, tmp_path / "store", image, image, "bomb")
    assert out["pil_guard_before"] == 400_000 * 400_000  # read_rgb below ran with PIL's guard off
    assert out["pil_guard"] == DEFAULT_MAX_PIXELS  # restored when the stages loaded the devkit
    assert "over the limit" in out["read_rgb"] and str(image) in out["read_rgb"]
    assert out["success"]
    [row] = out["frames"]
    assert row["image_ok"] is False
    assert str(image) in row["image_error"] and "30000x30000" in row["image_error"]
    assert "stages.frames.max_image_pixels" in row["image_error"]
    assert out["detections"] == out["crops"] == 0  # the flagged frame is skipped downstream


@pytest.mark.slow
def test_bomb_swapped_in_after_frames_is_refused_by_crops(tmp_path):
    dataroot = copy_dataroot(REAL_SLICE, tmp_path / "root")
    front, _ = _front_image(dataroot)
    image = dataroot / front["filename"]
    bomb = bomb_png(tmp_path / "bomb.png")

    out = _run_child(dataroot, tmp_path / "store", bomb, image, "swap")
    assert out["success"] and out["frames"][0]["image_ok"] is True
    assert out["crops"] == 0 and int(out["crops_meta"]["num_skipped_bad_image"]) == out["detections"] > 0
    assert str(image) in out["crops_meta"]["bad_images"] and "the size `frames` checked" in out["crops_meta"]["bad_images"]


# ---------------------------------------------------------------- modes


@pytest.fixture(scope="module")
def grey8() -> np.ndarray:
    """The real slice's CAM_FRONT picture in 8-bit grey."""
    [path] = sorted((REAL_SLICE / "samples" / "CAM_FRONT").iterdir())
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def _png(tmp_path: Path, im: Image.Image, name: str) -> Path:
    path = tmp_path / name
    im.save(path, format="PNG")
    return path


def test_16_bit_png_decodes_to_its_8_bit_version(tmp_path, grey8):
    eight = _png(tmp_path, Image.fromarray(grey8), "g8.png")
    sixteen = _png(tmp_path, Image.fromarray(grey8.astype(np.uint16) * 257), "g16.png")
    with Image.open(sixteen) as im:
        assert im.mode.startswith("I;16")
    expected = np.repeat(grey8[:, :, None], 3, axis=2)
    assert np.array_equal(read_rgb(eight), expected)
    assert np.array_equal(read_rgb(sixteen), expected)


@pytest.mark.parametrize("mode", ["I", "F", "LA", "1", "P", "CMYK", "RGBA"])
def test_other_modes_decode_to_the_picture(grey8, mode):
    rgb = np.repeat(grey8[:, :, None], 3, axis=2)
    if mode == "I":
        im = Image.fromarray(grey8.astype(np.int32) * 257)
    elif mode == "F":
        im = Image.fromarray(grey8.astype(np.float32) / 255.0)
    elif mode == "LA":
        im = Image.fromarray(grey8).convert("LA")
    elif mode == "1":
        im, rgb = Image.fromarray(grey8).convert("1", dither=Image.Dither.NONE), np.repeat(
            np.where(grey8 >= 128, 255, 0).astype(np.uint8)[:, :, None], 3, axis=2)
    elif mode == "P":
        im = Image.fromarray(rgb).quantize(256)  # at most 256 greys: an exact palette
    else:
        im = Image.fromarray(rgb).convert(mode)
    decoded = to_rgb8(im)
    assert decoded.dtype == np.uint8 and decoded.shape == rgb.shape
    tolerance = {"P": 1.0, "CMYK": 1.0}.get(mode, 0.0)
    assert np.abs(decoded.astype(int) - rgb.astype(int)).mean() <= tolerance, mode


def test_read_rgb_refuses_from_the_header(tmp_path):
    path = _png(tmp_path, Image.new("L", (200, 100)), "small.png")
    assert read_rgb(path).shape == (100, 200, 3)
    with pytest.raises(ImageDecodeError, match=r"200x100 \(20,000 pixels\), over the limit of 19,999"):
        read_rgb(path, max_pixels=19_999)


@pytest.mark.real_model
def test_16_bit_png_gives_the_detections_of_its_8_bit_version(tmp_path, grey8, yolo_tflite):
    from conceptmine_assets.resources.detector import YoloDetector

    eight = _png(tmp_path, Image.fromarray(grey8), "g8.png")
    sixteen = _png(tmp_path, Image.fromarray(grey8.astype(np.uint16) * 257), "g16.png")
    detector = YoloDetector(weights=str(yolo_tflite), device="cpu")
    boxes8, boxes16 = detector.predict([read_rgb(eight), read_rgb(sixteen)])
    assert len(boxes8) > 0  # the all-white decode of old found none
    assert [(b.source_class, b.x1, b.y1, b.x2, b.y2, b.confidence) for b in boxes16] == [
        (b.source_class, b.x1, b.y1, b.x2, b.y2, b.confidence) for b in boxes8
    ]
