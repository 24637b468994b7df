"""A BERT encoder forward pass in NumPy (all-MiniLM-L6-v2 with mean pooling): pure math, no I/O.

The offline profile's text encoder is all-MiniLM-L6-v2 run through ``transformers`` and torch
(``resources/offline_embedder.py``). Importing torch and transformers costs seconds, and a search
query is a handful of tokens, so ``conceptmine search`` and ``conceptmine serve`` encode queries
with this re-implementation of the same network over the same weights instead
(``resources/text_query.py`` loads them). It computes in float64 and returns float32; a test
compares it with the torch encoder (``test_text_query.py``).

Weights are the Hugging Face ``BertModel`` state dict (names as in ``model.safetensors``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_erf = np.frompyfunc(math.erf, 1, 1)


def gelu(x: np.ndarray) -> np.ndarray:
    """The exact (erf) GELU, as BERT's ``hidden_act: gelu``."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(x.dtype))


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


@dataclass(frozen=True)
class BertShape:
    """What the forward pass needs from ``config.json``."""

    num_layers: int
    num_heads: int
    layer_norm_eps: float

    @classmethod
    def from_config(cls, config: dict) -> BertShape:
        if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only BERT with exact GELU and absolute positions is implemented")
        return cls(int(config["num_hidden_layers"]), int(config["num_attention_heads"]), float(config["layer_norm_eps"]))


class BertEncoder:
    """``encode(ids)``: the mean-pooled last hidden state of one token sequence (unnormalised,
    like the torch encoder's output before ``F.normalize``)."""

    def __init__(self, weights: dict[str, np.ndarray], shape: BertShape):
        self.shape = shape
        # float64 math; the word-embedding table (30522 rows) stays float32 and only the
        # looked-up rows are widened
        self.w = {name: np.asarray(value, dtype=np.float32 if "word_embeddings" in name else np.float64)
                  for name, value in weights.items() if not name.endswith("position_ids")}

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        return layer_norm(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.shape.layer_norm_eps)

    def hidden(self, ids: list[int] | np.ndarray) -> np.ndarray:
        """The last hidden state, one row per token (token type 0, no padding)."""
        ids = np.asarray(ids, dtype=np.int64)
        n = len(ids)
        x = (self.w["embeddings.word_embeddings.weight"][ids].astype(np.float64)
             + self.w["embeddings.position_embeddings.weight"][:n]
             + self.w["embeddings.token_type_embeddings.weight"][0])
        x = self._norm(x, "embeddings.LayerNorm")
        heads = self.shape.num_heads
        for i in range(self.shape.num_layers):
            p = f"encoder.layer.{i}"
            q, k, v = (self._linear(x, f"{p}.attention.self.{m}") for m in ("query", "key", "value"))
            d = q.shape[-1] // heads
            q, k, v = (t.reshape(n, heads, d).transpose(1, 0, 2) for t in (q, k, v))
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            context = (scores / scores.sum(axis=-1, keepdims=True)) @ v
            context = context.transpose(1, 0, 2).reshape(n, heads * d)
            x = self._norm(self._linear(context, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
            inner = gelu(self._linear(x, f"{p}.intermediate.dense"))
            x = self._norm(self._linear(inner, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        return x

    def encode(self, ids: list[int] | np.ndarray) -> np.ndarray:
        """Mean pooling over the tokens (all real: one unpadded sequence), float32."""
        return self.hidden(ids).mean(axis=0).astype(np.float32)
