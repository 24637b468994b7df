"""The CLIP embedder: an open_clip model whose weights come from a pretrained tag (resolved through
the Hugging Face hub cache, so a pre-populated cache works offline), a local checkpoint file, or a
seeded random init (CI twins)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import ClassVar

from PIL import Image
from pydantic import Field

from conceptmine_assets.errors import ModelLoadError
from conceptmine_assets.lib.identity import ModelIdentity, hub_revision, model_identity
from conceptmine_assets.lib.versions import require
from conceptmine_assets.resources.devices import resolve_device, torch_dtype
from conceptmine_assets.resources.embedder import RANDOM_INIT_SEED, EmbedderResource, LoadedEncoders, probe_dims

_HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip's preference


def hub_weights(model: str, tag: str) -> tuple[str, tuple[str, ...]] | None:
    """(hub repository, weights files in open_clip's order of preference) that open_clip downloads
    for ``model``/``tag``, None if the tag is not hub-hosted. ``ViT-B-32``/``laion2b_s34b_b79k`` →
    ``laion/CLIP-ViT-B-32-laion2B-s34B-b79K`` with ``open_clip_model.safetensors`` first."""
    import open_clip

    hub = open_clip.get_pretrained_cfg(model, tag).get("hf_hub", "")
    if not hub:
        return None
    if hub.endswith("/"):
        return hub.rstrip("/"), _HUB_WEIGHT_FILES
    repo, filename = hub.rsplit("/", 1)
    return repo, (filename,)


def _hub_revision(model: str, tag: str, cache_dir: str | None) -> str | None:
    """The cached commit of a hub-hosted tag's weights (``unresolved:main`` before the first download)."""
    hub = hub_weights(model, tag)
    if hub is None:
        return None
    repo, files = hub
    revisions = [hub_revision(repo, f, None, cache_dir) for f in files]
    return next((r for r in revisions if not r.startswith("unresolved:")), revisions[0])


def _register_config(model: str, config_path: str) -> None:
    """Register a JSON model config with open_clip (its file stem must equal ``model``)."""
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


def _check_pretrained(model: str, pretrained: str | None) -> None:
    """A pretrained value must be a tag of ``model`` or an existing local file."""
    import open_clip

    if pretrained is None or Path(pretrained).expanduser().is_file():
        return
    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained not in tags:
        raise ModelLoadError(
            f"open_clip checkpoint {Path(pretrained).expanduser()} does not exist (and {pretrained!r} is not a "
            f"pretrained tag of {model!r}; known tags: {tags or 'none'})"
        )


@functools.lru_cache(maxsize=4)
def load_open_clip(
    model: str, pretrained: str | None, config_path: str | None, cache_dir: str | None, device: str, precision: str,
    file_stamp: tuple[int, int] | None,  # (size, mtime_ns) of a local checkpoint: reload on change
) -> LoadedEncoders:
    require("open_clip_torch")
    import open_clip
    import torch

    dtype = torch_dtype(precision, device)
    if config_path:
        _register_config(model, config_path)
    _check_pretrained(model, pretrained)
    weights = str(Path(pretrained).expanduser()) if file_stamp else pretrained
    try:
        with torch.random.fork_rng(devices=[]):  # seeds random init without touching global RNG
            torch.manual_seed(RANDOM_INIT_SEED)
            clip, _, preprocess = open_clip.create_model_and_transforms(
                model, pretrained=weights, precision=precision, device=device, cache_dir=cache_dir
            )
        tokenizer = open_clip.get_tokenizer(model)
    except Exception as exc:  # open_clip raises RuntimeError/ValueError/OSError/HF errors
        raise ModelLoadError(
            f"open_clip model {model!r} with pretrained {pretrained!r} could not be loaded "
            f"(hub cache {cache_dir or 'default'}): {type(exc).__name__}: {exc}"
        ) from exc
    clip.eval()

    def encode_image_batch(images: list[Image.Image]) -> torch.Tensor:
        pixels = torch.stack([preprocess(im) for im in images]).to(device=device, dtype=dtype)
        return clip.encode_image(pixels)

    def encode_text_batch(texts: list[str]) -> torch.Tensor:
        return clip.encode_text(tokenizer(texts).to(device))

    image_dim, text_dim = probe_dims(encode_image_batch, encode_text_batch)
    return LoadedEncoders(image_dim, text_dim, device, precision, encode_image_batch, encode_text_batch, (clip,))


class OpenClipEmbedder(EmbedderResource):
    """CLIP through open_clip: image and text vectors share one space."""

    backend: ClassVar[str] = "open_clip"
    shared_space: ClassVar[bool] = True

    model: str = Field(default="ViT-B-32", description="open_clip architecture name")
    pretrained: str | None = Field(
        default="laion2b_s34b_b79k",
        description="open_clip pretrained tag (hub weights, read from the hub cache when present) or a local "
        "checkpoint file; None = seeded random init (tests only)",
    )
    model_config_path: str | None = Field(
        default=None, description="JSON open_clip model config to register; its file stem must equal model"
    )
    cache_dir: str | None = Field(
        default=None, description="Hugging Face hub cache for pretrained tags; None = HF_HUB_CACHE / HF_HOME default"
    )

    def _local_checkpoint(self) -> Path | None:
        path = Path(self.pretrained).expanduser() if self.pretrained else None
        return path if path is not None and path.is_file() else None

    def identities(self) -> tuple[ModelIdentity, ModelIdentity]:
        config = "#cfg" if self.model_config_path else ""
        local = self._local_checkpoint()
        weights = local.name if local else self.pretrained or f"random-init(seed={RANDOM_INIT_SEED})"
        revision = _hub_revision(self.model, self.pretrained, self.cache_dir) if self.pretrained and not local else None
        files = [p for p in (self.model_config_path, local) if p]
        settings = {"model": self.model, "pretrained": self.pretrained if not local else "file", "precision": self.precision}
        identity = model_identity(f"open_clip:{self.model}{config}/{weights}", settings, files, ["open_clip_torch"], revision)
        return identity, identity

    def load(self) -> LoadedEncoders:
        local = self._local_checkpoint()
        stamp = (local.stat().st_size, local.stat().st_mtime_ns) if local else None
        return load_open_clip(
            self.model, self.pretrained, self.model_config_path, self.cache_dir,
            resolve_device(self.device), self.precision, stamp,
        )
