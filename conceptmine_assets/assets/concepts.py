"""`concept_scores`: every crop scored against the concept vocabulary, with its top concept,
margin, joint label, superclass and Common/Rare/Target group."""

import threading
import time

import dagster as dg
import numpy as np
import pandas as pd

from conceptmine_assets.lib.model_guard import check_embedding_model
from conceptmine_assets.lib.concepts import assign_group, rank_concepts, score_concepts, text_weights, top_superclass
from conceptmine_assets.lib.vocabulary import Vocabulary
from conceptmine_assets.resources.vocabulary import VocabularyResource
from conceptmine_assets.lib.scenes import SCENES_PER_RUN, SceneTables, concat_scenes, split_scenes
from conceptmine_assets.partitions import scene_partitions
from conceptmine_assets.resources.embedder import EmbedderResource
from conceptmine_assets.schemas import CONCEPT_SCORES, column_schema
from conceptmine_assets.settings import stage_config

KEY_COLUMNS = ["detection_id", "scene_name", "sample_token", "sample_data_token", "channel", "class_name"]

_PROMPT_CACHE: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}
_PROMPT_CACHE_LOCK = threading.Lock()
_PROMPT_CACHE_SIZE = 8


@stage_config("concept_scores")
class ConceptScoresConfig(dg.Config):
    """How crops are scored against the vocabulary."""

    weight_text: float = 0.5  # w_t: caption share of the fused score (paper default 0.5)
    adaptive: bool = False  # paper's adaptive w_t from cos(crop, caption)
    joint_margin: float = 0.05  # top-2 within this → joint label "a|b"
    prompt_template: str = "{}"  # applied to every alternative, e.g. "a photo of a {}"


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
    dim = embedder.image_dim
    out = np.zeros((len(captions), dim), dtype=np.float32)
    for i, det in enumerate(captions["detection_id"]):
        if has[i]:
            out[i] = np.asarray(by_id[det], dtype=np.float32)
    return out, has


def _vlm_concept(vocabulary: Vocabulary, vlm_class: object) -> str | None:
    return vocabulary.resolve(vlm_class) if isinstance(vlm_class, str) else None


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


@dg.asset(
    deps=["concept_vocabulary", "embedding_model"],
    partitions_def=scene_partitions,
    code_version="1",
    kinds={"pytorch", "parquet"},
    group_name="mining_scene",
    metadata=column_schema("concept_scores"),
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=SCENES_PER_RUN),
)
def concept_scores(
    context: dg.AssetExecutionContext,
    config: ConceptScoresConfig,
    captions: SceneTables,
    embeddings: SceneTables,
    embedder: EmbedderResource,
    vocabulary_file: VocabularyResource,
) -> SceneTables:
    """One row per crop of the scene (key: detection_id, plus scene_name, sample_token,
    sample_data_token, channel, class_name): the caption, every concept's score
    (``concept_names``/``concept_scores``), top and second concept, margin, joint label, top
    superclass and group (target / common / rare).

    Score per concept: ``w_t · cos(caption, c) + (1 − w_t) · cos(crop, c)``, each cosine the max
    over the concept's prompts. When the embedder's image and text spaces differ (offline
    profile), or a crop has no embedding, only the caption counts (``w_t = 1``,
    ``score_mode = "text_only"``). A VLM class that names a concept is the top concept."""
    scene = ", ".join(context.partition_keys)  # several scenes per run in a backfill
    captions, embeddings = concat_scenes(captions), concat_scenes(embeddings)
    started = time.perf_counter()
    vocabulary = vocabulary_file.load()
    prompts, owners = vocabulary.prompt_table(config.prompt_template)
    prompt_emb = prompt_embeddings(embedder, prompts)
    caption_emb = embedder.encode_texts(captions["caption"].astype(str).tolist())
    crop_emb, has_image = None, np.zeros(len(captions), dtype=bool)
    if embedder.shared_space and len(captions):
        crop_emb, has_image = crop_vectors(captions, embeddings, embedder, scene)
    weights = text_weights(len(captions), config.weight_text, config.adaptive, caption_emb, crop_emb, has_image)
    scores = score_concepts(caption_emb, prompt_emb, owners, len(vocabulary.concepts), weights, crop_emb)
    df = score_rows(captions, scores, weights, has_image, vocabulary, config)

    if df.empty:
        context.log.warning(f"scene {scene}: no captions to score")
    missing = int(len(captions) - has_image.sum()) if embedder.shared_space else 0
    if missing:
        context.log.warning(f"scene {scene}: {missing} crops have no embedding; scored from the caption only")
    top = df["top_concept"].value_counts().head(10).to_dict()
    context.add_output_metadata(
        {
            "num_crops": len(df),
            "groups": dg.MetadataValue.json({k: int(v) for k, v in df["group"].value_counts().items()}),
            "score_modes": dg.MetadataValue.json({k: int(v) for k, v in df["score_mode"].value_counts().items()}),
            "top_concepts": dg.MetadataValue.json({k: int(v) for k, v in top.items()}),
            "num_joint_labels": int(df["joint_label"].notna().sum()),
            "num_vlm_overrides": int(sum(_vlm_concept(vocabulary, v) is not None for v in captions["vlm_class"])),
            "num_without_embedding": missing,
            "mean_margin": float(df["margin"].mean()) if df["margin"].notna().any() else None,
            "vocabulary_version": vocabulary.identity,
            "num_concepts": len(vocabulary.concepts),
            "num_prompts": len(prompts),
            "text_model_id": embedder.text_model_id,
            "shared_space": embedder.shared_space,
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
    return split_scenes(df, context.partition_keys)
