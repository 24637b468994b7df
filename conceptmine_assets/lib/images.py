"""Decoding and encoding of camera images, with errors that name the file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from conceptmine_assets.errors import DatasetError


class ImageDecodeError(DatasetError):
    """An image file is missing, not an image, or truncated/corrupt."""


def read_rgb(path: str | Path) -> np.ndarray:
    """Fully decode ``path`` to an ``(h, w, 3)`` uint8 RGB array.

    Unlike ``cv2.imread``, which returns a half-grey image for a truncated JPEG, PIL raises on
    any decode problem, so a corrupt file can never become a silently wrong row.
    """
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # incl. missing / unidentified / truncated
        raise ImageDecodeError(f"cannot decode image {path}: {exc}") from exc


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB array."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
