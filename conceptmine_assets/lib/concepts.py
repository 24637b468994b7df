"""Concept scoring: pure functions on embedding matrices (no models, no I/O).

Per crop and concept ``c``:  ``score = w_t · cos(caption, c) + (1 − w_t) · cos(crop, c)``, where
``cos(x, c)`` is the max over the concept's prompt embeddings (VL4AD max-logit prompt
ensemble) and ``w_t`` is fixed (0.5), adaptive (from how well the caption agrees with the crop;
what the original research code always uses for VLM captions), 0 for a VLM answer that names a
class but describes nothing (only the crop speaks), or 1 when image and text live in different
spaces.

A VLM answer "others" is accepted as the top concept, as in the original: the crop is Rare
unless its detector class is a target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from conceptmine_assets.lib.captioning import OTHERS
from conceptmine_assets.lib.vocabulary import Vocabulary


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) cosine similarities of the rows of ``a`` (n, d) and ``b`` (m, d)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    an = a / np.clip(np.linalg.norm(a, axis=1, keepdims=True), 1e-12, None)
    bn = b / np.clip(np.linalg.norm(b, axis=1, keepdims=True), 1e-12, None)
    return an @ bn.T


def rowwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n,) cosine of row i of ``a`` with row i of ``b``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    num = np.sum(a * b, axis=1)
    den = np.clip(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12, None)
    return num / den


def adaptive_weight_text(cos_crop_caption: np.ndarray | float) -> np.ndarray:
    """The paper's adaptive text weight: ``q = clip((cos + 0.2) / 0.7, 0, 1)``,
    ``w_t = clip(0.2 + 0.6·q, 0.1, 0.8)``: a caption that agrees with its crop counts more."""
    q = np.clip((np.asarray(cos_crop_caption, dtype=np.float64) + 0.2) / 0.7, 0.0, 1.0)
    return np.clip(0.2 + 0.6 * q, 0.1, 0.8)


def max_logit(similarity: np.ndarray, owners: np.ndarray, n_groups: int) -> np.ndarray:
    """(n, n_groups): per row, the max of ``similarity`` (n, P) over the columns each group owns.

    Used twice: prompts → concepts (max over a concept's alternatives) and concepts →
    superclasses (class merging). A group that owns no column scores ``-inf``.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    owners = np.asarray(owners, dtype=np.int64)
    if similarity.ndim != 2 or similarity.shape[1] != owners.shape[0]:
        raise ValueError(f"similarity {similarity.shape} does not match {owners.shape[0]} owners")
    out = np.full((n_groups, similarity.shape[0]), -np.inf)
    np.maximum.at(out, owners, similarity.T)
    return out.T


def fuse(text_scores: np.ndarray, image_scores: np.ndarray | None, weight_text: np.ndarray | float) -> np.ndarray:
    """``w_t · text + (1 − w_t) · image`` per row; text only when ``image_scores`` is None."""
    text_scores = np.asarray(text_scores, dtype=np.float64)
    if image_scores is None:
        return text_scores.copy()
    w = np.asarray(weight_text, dtype=np.float64)
    w = w.reshape(-1, 1) if w.ndim == 1 else w
    return w * text_scores + (1.0 - w) * np.asarray(image_scores, dtype=np.float64)


def text_weights(
    n: int,
    weight_text: float,
    adaptive: bool | np.ndarray,
    caption_emb: np.ndarray | None = None,
    crop_emb: np.ndarray | None = None,
    has_image: np.ndarray | None = None,
    label_only: np.ndarray | None = None,
) -> np.ndarray:
    """(n,) per-crop ``w_t``: 1 where there is no image embedding; else 0 where the caption is only
    a class label (``label_only``), adaptive where ``adaptive`` (a bool or a per-crop mask), fixed
    ``weight_text`` elsewhere."""
    has_image = np.ones(n, dtype=bool) if has_image is None else np.asarray(has_image, dtype=bool)
    if crop_emb is None:
        return np.ones(n)
    adaptive = np.broadcast_to(np.asarray(adaptive, dtype=bool), (n,))
    w = np.full(n, float(weight_text))
    if adaptive.any():
        w = np.where(adaptive, adaptive_weight_text(rowwise_cosine(crop_emb, caption_emb)), w)
    if label_only is not None:
        w = np.where(np.asarray(label_only, dtype=bool), 0.0, w)
    return np.where(has_image, w, 1.0)


def score_concepts(
    caption_emb: np.ndarray,
    prompt_emb: np.ndarray,
    owners: np.ndarray,
    n_concepts: int,
    weights: np.ndarray,
    crop_emb: np.ndarray | None = None,
) -> np.ndarray:
    """(n, C) fused concept scores (max-logit per concept in each modality, then fused)."""
    text = max_logit(cosine(caption_emb, prompt_emb), owners, n_concepts)
    image = None if crop_emb is None else max_logit(cosine(crop_emb, prompt_emb), owners, n_concepts)
    return fuse(text, image, weights)


@dataclass(frozen=True)
class Ranking:
    top: str
    top_score: float
    second: str | None
    second_score: float | None
    margin: float | None
    joint_label: str | None


def rank_concepts(scores: np.ndarray, names: Sequence[str], vlm_class: str | None, joint_margin: float) -> Ranking:
    """Top and second concept of one crop.

    If the VLM's class is itself a concept it is the top concept whatever the scores say; the
    second is then the best other concept. The margin is top − second (negative when the VLM
    overrode a higher-scoring concept); strictly within ``joint_margin`` in absolute value the label
    is joint, ``"top|second"``. A VLM answer ``"others"`` is the top concept (the VLM rejected every
    class); its top score is then the best concept's score, that concept is the second, and there is
    no margin.
    """
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    if vlm_class == OTHERS and OTHERS not in names:
        best = int(order[0])
        return Ranking(OTHERS, float(scores[best]), names[best], float(scores[best]), None, None)
    top_i = names.index(vlm_class) if vlm_class in names else int(order[0])
    rest = [int(i) for i in order if int(i) != top_i]
    top_score = float(scores[top_i])
    if not rest:
        return Ranking(names[top_i], top_score, None, None, None, None)
    sec_i = rest[0]
    second_score = float(scores[sec_i])
    margin = top_score - second_score
    joint = f"{names[top_i]}|{names[sec_i]}" if abs(margin) < joint_margin else None
    return Ranking(names[top_i], top_score, names[sec_i], second_score, margin, joint)


def top_superclass(
    scores: np.ndarray, vocabulary: Vocabulary, forced_concept: str | None = None
) -> str:
    """The superclass with the highest merged score (max over its members); the superclass of
    ``forced_concept`` when the VLM fixed the top concept ("others" for "others")."""
    if forced_concept == OTHERS and OTHERS not in vocabulary.names:
        return OTHERS
    if forced_concept is not None:
        return vocabulary.superclass_of(forced_concept)
    supers, index = vocabulary.superclass_table()
    merged = max_logit(np.asarray(scores, dtype=np.float64).reshape(1, -1), index, len(supers))
    return supers[int(np.argmax(merged[0]))]


def assign_group(vocabulary: Vocabulary, class_name: str | None, vlm_class: str | None, top_concept: str) -> str:
    """Target if the detector's or the VLM's class maps to a target concept; else Common if the
    top concept is in the common list; else Rare (also when the VLM said "others")."""
    if vocabulary.is_target(class_name) or vocabulary.is_target(vlm_class):
        return "target"
    if top_concept == OTHERS and OTHERS not in vocabulary.names:
        return "rare"
    return "common" if vocabulary.group_of(top_concept) == "common" else "rare"
