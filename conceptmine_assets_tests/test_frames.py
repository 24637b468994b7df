"""`frames` flags incomplete image files from their last bytes, without decoding them."""

import io
from pathlib import Path

import pytest
from PIL import Image

from conceptmine_assets.assets.frames import check_image, truncated


def _image_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), "gray").save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_cut_file_is_truncated_a_whole_or_padded_one_is_not(tmp_path: Path, fmt):
    data = _image_bytes(fmt)
    whole, padded, cut = tmp_path / "whole", tmp_path / "padded", tmp_path / "cut"
    whole.write_bytes(data)
    padded.write_bytes(data + b"\x00" * 300)  # some cameras pad files after the end marker
    cut.write_bytes(data[: len(data) - 5])
    assert not truncated(str(whole), fmt) and not truncated(str(padded), fmt)
    assert truncated(str(cut), fmt)
    assert check_image(str(whole), 64, 48) is None
    message = check_image(str(cut), 64, 48)
    assert message is not None and "truncated" in message and str(cut) in message


def test_a_real_keyframe_passes_and_its_cut_copy_is_flagged(real_slice, tmp_path: Path):
    image = next((real_slice / "samples" / "CAM_FRONT").glob("*.jpg"))
    with Image.open(image) as im:
        width, height = im.size
    assert check_image(str(image), width, height) is None
    cut = tmp_path / image.name
    cut.write_bytes(image.read_bytes()[: image.stat().st_size * 4 // 10])
    assert "truncated" in check_image(str(cut), width, height)


def test_other_formats_are_not_judged_by_markers(tmp_path: Path):
    path = tmp_path / "frame.bmp"
    Image.new("RGB", (8, 8)).save(path, format="BMP")
    assert not truncated(str(path), "BMP") and check_image(str(path), 8, 8) is None
