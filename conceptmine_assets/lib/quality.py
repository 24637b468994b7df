"""Image quality measures of a crop: brightness, glare, darkness and blur (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OVEREXPOSED_LUMA = 250  # luma >= this counts as blown out (glare)
DARK_LUMA = 5  # luma <= this counts as black


@dataclass(frozen=True)
class Quality:
    brightness: float  # mean luma, 0..1
    overexposed_frac: float
    dark_frac: float
    blur_laplacian_var: float


def luma(rgb: np.ndarray) -> np.ndarray:
    """8-bit luma (ITU-R BT.601, as OpenCV's RGB→gray) of an ``(h, w, 3)`` uint8 RGB image."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.size == 0:
        raise ValueError(f"expected a non-empty (h, w, 3) uint8 RGB image, got {rgb.dtype} {rgb.shape}")
    import cv2  # here, not at module level: OpenCV is slow to import with the code location

    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def blur_laplacian_var(gray: np.ndarray) -> float:
    """Variance of the Laplacian of a gray image: low for blurred or flat crops."""
    import cv2

    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def image_quality(rgb: np.ndarray) -> Quality:
    """Brightness, share of over-exposed and of dark pixels, and Laplacian variance of a crop."""
    gray = luma(rgb)
    return Quality(
        brightness=float(gray.mean()) / 255.0,
        overexposed_frac=float(np.mean(gray >= OVEREXPOSED_LUMA)),
        dark_frac=float(np.mean(gray <= DARK_LUMA)),
        blur_laplacian_var=blur_laplacian_var(gray),
    )
