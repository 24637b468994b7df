"""Decoding and encoding of camera images, with errors that name the file.

Bounded: no image is decoded before its header's size is checked against a maximum number of
pixels (:data:`DEFAULT_MAX_PIXELS` unless the caller says otherwise), so a decompression bomb (a
30000x30000 PNG of a few hundred KB) is an error row, never an out-of-memory kill. PIL has its
own guard (``Image.MAX_IMAGE_PIXELS``), but importing the nuScenes devkit switches it off for the
whole process (``nuscenes/utils/map_mask.py`` sets it to 400000²): :func:`restore_pixel_guard`
puts it back after the devkit is imported (for any other decoder), and the check here does not
rely on it: it reads the header with PIL's guard held off (:func:`open_unguarded`) and applies
the caller's limit, so a configured maximum above PIL's default works and the message is ours.

Every mode becomes 8-bit RGB with its values scaled, not clipped: 16-bit grayscale (``I;16*``,
and ``I``, which is how PIL opens 16-bit files) is divided by 257, so a 16-bit file made from an
8-bit one (v·257, the PNG rule) decodes to exactly the 8-bit picture; float images (``F``) are
taken as [0, 1] when no value exceeds 1, else as 0-255; palette, grey+alpha, CMYK, 1-bit and
alpha modes go through PIL's conversion (alpha dropped).
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from conceptmine_assets.errors import DatasetError

# PIL's own default guard (2**30 // 4 // 3 pixels, ~9459x9459); nuScenes frames are 1600x900.
DEFAULT_MAX_PIXELS = 89_478_485


class ImageDecodeError(DatasetError):
    """An image file is missing, not an image, truncated/corrupt, or too large to decode."""


def restore_pixel_guard(max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Switch PIL's decompression-bomb guard back on (call after importing the nuScenes devkit)."""
    Image.MAX_IMAGE_PIXELS = max_pixels


def too_large(path: str | Path, size: tuple[int, int], max_pixels: int, limit: str = "") -> str | None:
    """Why an image of ``size`` (from its header) is not decoded, or None; ``limit`` says where
    ``max_pixels`` comes from."""
    width, height = size
    if width * height <= max_pixels:
        return None
    return (f"image file {path} is {width}x{height} ({width * height:,} pixels), over the limit of {max_pixels:,} "
            f"pixels{limit or ' per image'}: not decoded")


FRAME_LIMIT = " (the size `frames` checked)"


def frame_pixel_limit(width: int | None, height: int | None) -> int:
    """What a stage decoding a frame checked by ``frames`` may decode: the frame's recorded size
    (``frames`` refused anything else), or the default limit where the table has no size."""
    return int(width) * int(height) if width and height else DEFAULT_MAX_PIXELS


def to_rgb8(im: Image.Image) -> np.ndarray:
    """An ``(h, w, 3)`` uint8 RGB array of a loaded image of any mode, values scaled (see module)."""
    if im.mode.startswith("I;16") or im.mode == "I":
        grey = np.asarray(im, dtype=np.float64) / 257.0
    elif im.mode == "F":
        values = np.asarray(im, dtype=np.float64)
        grey = values * 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else values
    else:
        return np.asarray(im.convert("RGB"))
    grey = np.clip(np.rint(np.nan_to_num(grey)), 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


_GUARD = threading.Lock()


def open_unguarded(path: str | Path) -> Image.Image:
    """``Image.open`` (the header only: nothing is decoded yet) with PIL's global guard held off,
    so the caller checks the size against its own limit and says so in its own words; the
    guard is back on when this returns."""
    with _GUARD:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def read_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, limit: str = "") -> np.ndarray:
    """Fully decode ``path`` to an ``(h, w, 3)`` uint8 RGB array (see :func:`to_rgb8`); an image
    over ``max_pixels`` is refused from its header, before any pixel is decoded.

    Unlike ``cv2.imread``, which returns a half-grey image for a truncated JPEG, PIL raises on
    any decode problem, so a corrupt file can never become a silently wrong row.
    """
    try:
        with open_unguarded(path) as im:
            reason = too_large(path, im.size, max_pixels, limit)
            if reason:
                raise ImageDecodeError(reason)
            im.load()
            return to_rgb8(im)
    except (OSError, ValueError) as exc:  # incl. missing / unidentified / truncated
        raise ImageDecodeError(f"cannot decode image {path}: {exc}") from exc


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB array."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
