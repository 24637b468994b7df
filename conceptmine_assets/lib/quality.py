"""Image quality measures of a crop (brightness, glare, darkness, blur) and the flags they raise
(pure functions)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

QUALITY_FLAGS: tuple[str, ...] = ("glare", "dark", "blur")

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


class QualityThresholds(BaseModel):
    """Image-quality limits on a crop (columns of ``crops``); ``outlier_flags``' ``dg.Config`` inherits them."""

    model_config = ConfigDict(frozen=True)

    glare_overexposed_frac: float = Field(0.10, ge=0.0, le=1.0, description="Glare if the crop's overexposed_frac is above this.")
    dark_frac: float = Field(0.50, ge=0.0, le=1.0, description="Dark if the crop's dark_frac is above this.")
    blur_laplacian_var: float = Field(50.0, ge=0.0, description="Blur if the crop's Laplacian variance is below this (resolution-dependent).")


def quality_flags(crops: pd.DataFrame, limits: QualityThresholds = QualityThresholds()) -> tuple[list[list[str]], int]:
    """Per row the quality flags that apply, and how many rows had a null quality value.

    A null value raises no flag for that measure; the count lets the caller report it.
    """
    over = crops["overexposed_frac"].to_numpy(dtype=float)
    dark = crops["dark_frac"].to_numpy(dtype=float)
    blur = crops["blur_laplacian_var"].to_numpy(dtype=float)
    checks = {
        "glare": over > limits.glare_overexposed_frac,
        "dark": dark > limits.dark_frac,
        "blur": blur < limits.blur_laplacian_var,
    }
    unknown = int((np.isnan(over) | np.isnan(dark) | np.isnan(blur)).sum())
    flags = [[name for name in QUALITY_FLAGS if checks[name][i]] for i in range(len(crops))]
    return flags, unknown
