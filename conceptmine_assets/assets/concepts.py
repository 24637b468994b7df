"""`concept_scores`: every crop scored against the concept vocabulary, with its top concept,
margin, joint label, superclass and Common/Rare/Target group."""

import threading
import time
from typing import NamedTuple

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from conceptmine_assets.lib.captioning import OTHERS, VLM_BACKENDS
from conceptmine_assets.lib.model_guard import check_embedding_model
from conceptmine_assets.lib.concepts import assign_group, rank_concepts, score_concepts, text_weights, top_superclass
from conceptmine_assets.lib.vocabulary import Vocabulary
from conceptmine_assets.resources.vocabulary import VocabularyResource
from conceptmine_assets.lib.scenes import SCENES_PER_RUN, SceneTables, concat_scenes, split_scenes
from conceptmine_assets.partitions import scene_partitions
from conceptmine_assets.resources.embedder import EmbedderResource
from conceptmine_assets.schemas import CONCEPT_SCORES, KEY_COLUMNS, column_schema
from conceptmine_assets.settings import stage_config


_PROMPT_CACHE: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}
_PROMPT_CACHE_LOCK = threading.Lock()
_PROMPT_CACHE_SIZE = 8


@stage_config("concept_scores")
class ConceptScoresConfig(dg.Config):
    """How crops are scored against the vocabulary."""

    weight_text: float = Field(default=0.5, ge=0.0, le=1.0, description="fixed w_t: the caption's share of the score")
    adaptive: bool | None = Field(
        default=None,
        description="adaptive w_t from cos(crop, caption). None: adaptive for VLM captions (as the original), "
        "fixed for template and class-name captions",
    )
    joint_margin: float = Field(default=0.05, ge=0.0, description='top two strictly within this → joint label "a|b"')
    prompt_template: str = Field(default="{}", description='applied to every alternative, e.g. "a photo of a {}"')


def prompt_embeddings(embedder: EmbedderResource, prompts: list[str]) -> np.ndarray:
    """(P, d) text embeddings of the concept prompts, encoded in one batched call and cached per
    process by (text model, prompts), so each run encodes the vocabulary once, not per crop."""
    key = (embedder.text_model_id, tuple(prompts))
    with _PROMPT_CACHE_LOCK:
        cached = _PROMPT_CACHE.get(key)
    if cached is not None:
        return cached
    vectors = embedder.encode_texts(prompts)
    with _PROMPT_CACHE_LOCK:
        if len(_PROMPT_CACHE) >= _PROMPT_CACHE_SIZE:
            _PROMPT_CACHE.pop(next(iter(_PROMPT_CACHE)))
        _PROMPT_CACHE[key] = vectors
    return vectors


def crop_vectors(
    captions: pd.DataFrame, embeddings: pd.DataFrame, embedder: EmbedderResource, scene: str
) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) crop image embeddings aligned with ``captions`` (zeros where missing) and the mask of
    crops that have one. Refuses embeddings made by another model than the embedder's."""
    check_embedding_model(embeddings["model_id"], embedder.image_model_id, f"scene {scene}",
                          "re-materialise embeddings with the same embedder")
    by_id = dict(zip(embeddings["detection_id"], embeddings["embedding"]))
    has = np.array([d in by_id for d in captions["detection_id"]], dtype=bool)
    dim = embedder.load().image_dim
    out = np.zeros((len(captions), dim), dtype=np.float32)
    for i, det in enumerate(captions["detection_id"]):
        if has[i]:
            out[i] = np.asarray(by_id[det], dtype=np.float32)
    return out, has


def _vlm_concept(vocabulary: Vocabulary, vlm_class: object) -> str | None:
    """The concept the VLM named (``"others"`` when it rejected every class), or None."""
    if not isinstance(vlm_class, str):
        return None
    return OTHERS if vlm_class == OTHERS else vocabulary.resolve(vlm_class)


def weight_masks(captions: pd.DataFrame, adaptive: bool | None) -> tuple[np.ndarray, np.ndarray]:
    """Per crop: whether its ``w_t`` is adaptive (``adaptive`` None: where a VLM answered), and
    whether its caption is only a class label (a VLM answer without a description: ``w_t = 0``)."""
    answered = (captions["status"] == "ok").to_numpy(dtype=bool)
    by_vlm = answered & captions["backend"].isin(VLM_BACKENDS).to_numpy(dtype=bool)
    label_only = answered & captions["description"].isna().to_numpy(dtype=bool)
    return (by_vlm if adaptive is None else np.full(len(captions), adaptive, dtype=bool)), label_only


def score_rows(
    captions: pd.DataFrame, scores: np.ndarray, weights: np.ndarray, has_image: np.ndarray,
    vocabulary: Vocabulary, config: ConceptScoresConfig,
) -> pd.DataFrame:
    """The stored table from the (n, C) score matrix."""
    names = vocabulary.names
    rows = []
    for i, cap in enumerate(captions.itertuples(index=False)):
        forced = _vlm_concept(vocabulary, cap.vlm_class)
        rank = rank_concepts(scores[i], names, forced, config.joint_margin)
        if forced is None and cap.class_name == OTHERS and vocabulary.group_of(rank.top) == "common":
            # the detector rejected every class it maps to ("others", as a rocket seen as a boat):
            # Rare, as in the original, never a common concept that merely scored highest
            forced = OTHERS
            rank = rank_concepts(scores[i], names, forced, config.joint_margin)
        rows.append(
            {
                "caption": cap.caption,
                "vlm_class": cap.vlm_class if isinstance(cap.vlm_class, str) else None,
                "top_concept": rank.top,
                "top_score": rank.top_score,
                "second_concept": rank.second,
                "second_score": rank.second_score,
                "margin": rank.margin,
                "joint_label": rank.joint_label,
                "top_superclass": top_superclass(scores[i], vocabulary, forced),
                "group": assign_group(vocabulary, cap.class_name, forced, rank.top),
                "weight_text": float(weights[i]),
                "score_mode": "text+image" if has_image[i] else "text_only",
                "vocabulary_version": vocabulary.identity,
                "concept_names": names,
                "concept_scores": scores[i].astype(np.float32),
            }
        )
    keys = captions[KEY_COLUMNS].reset_index(drop=True)
    df = pd.concat([keys, pd.DataFrame(rows, index=keys.index)], axis=1).reindex(columns=CONCEPT_SCORES.names)
    return df if len(df) else df.astype(object)  # empty: no float64 guesses for list/string columns


class Scored(NamedTuple):
    """The stored table of a run and the per-crop facts its metadata reports."""

    table: pd.DataFrame
    has_image: np.ndarray  # crops scored with their image embedding
    adaptive: np.ndarray  # crops whose w_t is adaptive
    label_only: np.ndarray  # crops whose caption is only a class label (w_t = 0)
    num_prompts: int


def score_captions(captions: pd.DataFrame, embeddings: pd.DataFrame, vocab: Vocabulary, config: ConceptScoresConfig,
                   embedder: EmbedderResource, scene: str) -> Scored:
    """Encode the prompts and captions, weigh caption against crop per crop, score every concept."""
    prompts, owners = vocab.prompt_table(config.prompt_template)
    prompt_emb = prompt_embeddings(embedder, prompts)
    caption_emb = embedder.encode_texts(captions["caption"].astype(str).tolist())
    crop_emb, has_image = None, np.zeros(len(captions), dtype=bool)
    if embedder.shared_space and len(captions):
        crop_emb, has_image = crop_vectors(captions, embeddings, embedder, scene)
    adaptive, label_only = weight_masks(captions, config.adaptive)
    weights = text_weights(len(captions), config.weight_text, adaptive, caption_emb, crop_emb, has_image, label_only)
    scores = score_concepts(caption_emb, prompt_emb, owners, len(vocab.concepts), weights, crop_emb)
    table = score_rows(captions, scores, weights, has_image, vocab, config)
    return Scored(table, has_image, adaptive, label_only, len(prompts))


def _counts(scored: Scored, captions: pd.DataFrame, vocabulary: Vocabulary) -> dict:
    """Materialisation metadata: groups, score modes, top concepts, weights and the VLM's say."""
    df = scored.table
    top = df["top_concept"].value_counts().head(10).to_dict()
    return {
        "num_crops": len(df),
        "groups": dg.MetadataValue.json({k: int(v) for k, v in df["group"].value_counts().items()}),
        "score_modes": dg.MetadataValue.json({k: int(v) for k, v in df["score_mode"].value_counts().items()}),
        "top_concepts": dg.MetadataValue.json({k: int(v) for k, v in top.items()}),
        "num_joint_labels": int(df["joint_label"].notna().sum()),
        "num_vlm_overrides": int(sum(_vlm_concept(vocabulary, v) is not None for v in captions["vlm_class"])),
        "num_vlm_others": int((captions["vlm_class"] == OTHERS).sum()),
        "num_adaptive_weights": int((scored.adaptive & scored.has_image).sum()),
        "num_label_only_captions": int(scored.label_only.sum()),
        "mean_margin": float(df["margin"].mean()) if df["margin"].notna().any() else None,
    }


@dg.asset(
    deps=["vocabulary", "embedding_model"],
    partitions_def=scene_partitions,
    code_version="2",  # 2: a detection mapped to "others" is never a common concept
    kinds={"pytorch", "parquet"},
    group_name="mining_scene",
    metadata=column_schema("concept_scores"),
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=SCENES_PER_RUN),
)
def concept_scores(
    context: dg.AssetExecutionContext, config: ConceptScoresConfig, captions: SceneTables, embeddings: SceneTables,
    embedder: EmbedderResource, vocabulary: VocabularyResource,
) -> SceneTables:
    """One row per crop of the scene (key: detection_id, plus scene_name, sample_token,
    sample_data_token, channel, class_name): the caption, every concept's score
    (``concept_names``/``concept_scores``), top and second concept, margin, joint label, top
    superclass and group (target / common / rare).

    Score per concept: ``w_t · cos(caption, c) + (1 − w_t) · cos(crop, c)``, each cosine the max
    over the concept's prompts. ``w_t`` is adaptive for VLM captions by default, 0 for a VLM answer
    without a description. When the embedder's image and text spaces differ (offline profile), or
    a crop has no embedding, only the caption counts (``w_t = 1``, ``score_mode = "text_only"``).
    A VLM class that names a concept is the top concept; a VLM "others" makes the crop Rare
    (unless its detector class is a target), and so does a detection the detector mapped to
    "others" whose best concept is a common one (top concept "others")."""
    scene = ", ".join(context.partition_keys)  # several scenes per run in a backfill
    captions, embeddings = concat_scenes(captions), concat_scenes(embeddings)
    started = time.perf_counter()
    vocab = vocabulary.load()
    scored = score_captions(captions, embeddings, vocab, config, embedder, scene)
    if scored.table.empty:
        context.log.warning(f"scene {scene}: no captions to score")
    missing = int(len(captions) - scored.has_image.sum()) if embedder.shared_space else 0
    if missing:
        context.log.warning(f"scene {scene}: {missing} crops have no embedding; scored from the caption only")
    context.add_output_metadata(
        {
            **_counts(scored, captions, vocab),
            "num_without_embedding": missing,
            "vocabulary_version": vocab.identity,
            "num_concepts": len(vocab.concepts),
            "num_prompts": scored.num_prompts,
            "text_model_id": embedder.text_model_id,
            "shared_space": embedder.shared_space,
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
    return split_scenes(scored.table, context.partition_keys)
