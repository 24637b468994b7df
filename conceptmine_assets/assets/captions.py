"""`captions`: one caption per crop; a VLM (or template) for outliers and rare/target candidates,
the class name for everything else (as in the paper)."""

import time
from collections import Counter
from typing import NamedTuple

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from conceptmine_assets.lib.captioning import OTHERS, object_noun
from conceptmine_assets.lib.scenes import MODEL_SCENES_PER_RUN, SceneTables, by_scene
from conceptmine_assets.lib.vocabulary import Vocabulary, humanize
from conceptmine_assets.lib.outliers import outlier_or_false
from conceptmine_assets.partitions import scene_partitions
from conceptmine_assets.resources.captioner import CaptionerResource, CaptionRequest, CaptionResult
from conceptmine_assets.resources.embedder import EmbedderResource
from conceptmine_assets.resources.vocabulary import VocabularyResource
from conceptmine_assets.schemas import CAPTIONS, KEY_COLUMNS, column_schema
from conceptmine_assets.settings import stage_config

_KIND_RANK = {"target": 0, "rare": 1, "unknown": 2}
MAX_LISTED = 20


@stage_config("captions")
class CaptionsConfig(dg.Config):
    """Which crops go to the captioner."""

    max_per_scene: int | None = Field(
        default=64, ge=0, description="VLM budget per scene, highest priority first; none: no limit"
    )
    caption_outliers: bool = Field(default=True, description="send outliers (any class) to the captioner")
    caption_candidates: bool = Field(
        default=True, description="send crops whose class is a target/rare candidate in the vocabulary (or unknown to it)"
    )


def _as_list(value: object) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return [str(v) for v in value]


def crop_table(crops: pd.DataFrame, detections: pd.DataFrame, outlier_flags: pd.DataFrame) -> pd.DataFrame:
    """Crops joined (by detection_id) with their nuScenes category/attributes and outlier flags;
    a crop without a flags row counts as not an outlier."""
    det = detections[["detection_id", "source_class", "category", "attributes"]].drop_duplicates("detection_id")
    flags = outlier_flags[["detection_id", "is_outlier", "outlier_detectors"]].drop_duplicates("detection_id")
    table = crops.merge(det, on="detection_id", how="left").merge(flags, on="detection_id", how="left")
    table["has_flags"] = table["is_outlier"].notna()
    table["is_outlier"] = outlier_or_false(table["is_outlier"])
    table["outlier_detectors"] = table["outlier_detectors"].map(_as_list)
    table["attributes"] = table["attributes"].map(_as_list)
    return table.reset_index(drop=True)


def select_for_vlm(
    table: pd.DataFrame, vocabulary: Vocabulary, config: CaptionsConfig
) -> tuple[list[int], list[int], Counter]:
    """Row positions sent to the captioner (in priority order, within budget), those over the
    budget, and why each was chosen.

    Priority: outliers first (more detectors firing first), then by class kind (target, rare,
    unknown to the vocabulary), then higher confidence, then detection_id (deterministic).
    """
    ranked: list[tuple[tuple, int, str]] = []
    for pos, row in enumerate(table.itertuples(index=False)):
        kind = vocabulary.candidate_kind(row.class_name)
        outlier = bool(row.is_outlier) and config.caption_outliers
        candidate = kind in _KIND_RANK and config.caption_candidates
        if not (outlier or candidate):
            continue
        conf = float(row.confidence) if row.confidence is not None and not np.isnan(row.confidence) else 0.0
        fired = len(row.outlier_detectors) if outlier else 0
        key = (0 if outlier else 1, -fired, _KIND_RANK.get(kind, 3), -conf, row.detection_id)
        ranked.append((key, pos, "outlier" if outlier else kind))
    ranked.sort()
    budget = len(ranked) if config.max_per_scene is None else max(0, config.max_per_scene)
    chosen, over = ranked[:budget], ranked[budget:]
    return [pos for _, pos, _ in chosen], [pos for _, pos, _ in over], Counter(why for _, _, why in chosen)


def _class_name_row(row: pd.Series) -> dict:
    source = row["source_class"] if isinstance(row["source_class"], str) else None
    category = row["category"] if isinstance(row["category"], str) else None
    return {
        "status": "class_name",
        "backend": None,
        "model_id": None,
        "raw_answer": None,
        "vlm_class": None,
        "description": None,
        # the class name; for a detection mapped to "others", what the category or detector calls it
        "caption": object_noun(OTHERS, category, source) if row["class_name"] == OTHERS else humanize(row["class_name"]),
        "error": None,
        "attempts": 0,
    }


def _result_row(result: CaptionResult, captioner: CaptionerResource) -> dict:
    return {
        "status": result.status,
        "backend": captioner.backend,
        "model_id": captioner.model_id,
        "raw_answer": result.raw_answer,
        "vlm_class": result.vlm_class,
        "description": result.description,
        "caption": result.caption,
        "error": result.error,
        "attempts": result.attempts,
    }


def _request(row: pd.Series) -> CaptionRequest:
    category = row["category"] if isinstance(row["category"], str) else None
    return CaptionRequest(
        detection_id=row["detection_id"],
        image_jpeg=row["image_jpeg"],
        class_name=row["class_name"],
        category=category,
        attributes=tuple(row["attributes"]),
        source_class=row["source_class"] if isinstance(row["source_class"], str) else None,
    )


def captions_frame(table: pd.DataFrame, per_row: list[dict]) -> pd.DataFrame:
    df = pd.concat([table[KEY_COLUMNS].reset_index(drop=True), pd.DataFrame(per_row, index=table.index)], axis=1)
    df = df.reindex(columns=CAPTIONS.names)
    if df.empty:  # no float64 guesses for the string columns of an empty frame
        df = df.astype(object)
    df["attempts"] = df["attempts"].astype("int32")
    return df


def _scene_outputs(context: dg.AssetExecutionContext, plans: dict, results, captioner: CaptionerResource):
    """Per scene, its captions table from the captioner's results (in request order); with the
    failures, the crops without outlier flags and the per-crop latencies (for metadata)."""
    outputs, failures, missing_flags, latencies = {}, [], 0, []
    for scene, (table, chosen) in plans.items():
        per_row = [_class_name_row(row) for _, row in table.iterrows()]
        for pos in chosen:
            result = next(results)
            per_row[pos] = _result_row(result, captioner)
            latencies.append(float(result.latency_s))  # a timing: metadata only, never a stored row
            if result.status == "failed":
                failures.append(f"{scene} / {table.at[pos, 'detection_id']}: {result.error}")
        outputs[scene] = captions_frame(table, per_row)
        missing = int((~table["has_flags"]).sum())
        if missing:
            context.log.warning(f"scene {scene}: {missing} crops have no outlier_flags row; treated as inliers")
        missing_flags += missing
    return outputs, failures, missing_flags, latencies


def add_caption_embeddings(outputs: dict[str, pd.DataFrame], embedder: EmbedderResource) -> None:
    """Store each crop's caption text embedding (each distinct caption encoded once per run)."""
    texts = sorted({str(c) for df in outputs.values() for c in df["caption"]})
    vectors = dict(zip(texts, embedder.encode_texts(texts)))
    for df in outputs.values():
        df["text_model_id"] = embedder.text_model_id
        df["caption_embedding"] = pd.Series([vectors[str(c)] for c in df["caption"]], index=df.index, dtype=object)
        df.attrs["vector_dims"] = {"caption_embedding": embedder.load().text_dim}


def _plans(scenes: list[str], inputs: list[dict], vocab, config: CaptionsConfig) -> tuple[dict, int, Counter]:
    """Per scene, its crop table and which rows go to the VLM (the budget is per scene); with the
    crops over budget and the reasons crops were selected."""
    plans, reasons, over_budget = {}, Counter(), 0
    for scene in scenes:
        table = crop_table(*(t[scene] for t in inputs))
        chosen, over, why = select_for_vlm(table, vocab, config)
        plans[scene] = (table, chosen)
        over_budget += len(over)
        reasons.update(why)
    return plans, over_budget, reasons


class CaptionPass(NamedTuple):
    """One batched captioner pass over the scenes of a run: the tables and what the metadata reports."""

    outputs: dict[str, pd.DataFrame]  # per scene, its captions table
    sent: int  # crops sent to the captioner
    over_budget: int
    reasons: Counter  # why the sent crops were chosen
    failures: list[str]
    missing_flags: int  # crops without an outlier_flags row
    latencies: list[float]  # per sent crop (metadata only, never a stored row)
    vlm_s: float


def _caption_pass(context: dg.AssetExecutionContext, inputs: list[dict], vocab: Vocabulary, config: CaptionsConfig,
                  captioner: CaptionerResource) -> CaptionPass:
    """Plan every scene of the run, caption the chosen crops in one batched call, build the tables."""
    plans, over_budget, reasons = _plans(context.partition_keys, inputs, vocab, config)
    requests = [_request(table.iloc[pos]) for table, chosen in plans.values() for pos in chosen]
    vlm_started = time.perf_counter()
    results = iter(captioner.caption(requests))  # one batched pass over every scene of the run
    vlm_s = time.perf_counter() - vlm_started
    outputs, failures, missing_flags, latencies = _scene_outputs(context, plans, results, captioner)
    return CaptionPass(outputs, len(requests), over_budget, reasons, failures, missing_flags, latencies, vlm_s)


def _metadata(run: CaptionPass, df: pd.DataFrame, captioner: CaptionerResource, vocab: Vocabulary,
              started: float) -> dict:
    """Materialisation metadata: counts, the captioner's identity and timings (never stored rows)."""
    status_counts = df["status"].value_counts().to_dict()
    lat = run.latencies
    return {
        "num_crops": len(df),
        "num_sent_to_captioner": run.sent,
        "num_ok": int(status_counts.get("ok", 0)),
        "num_failed": len(run.failures),
        "num_class_name": int(status_counts.get("class_name", 0)),
        "num_over_budget": run.over_budget,
        "num_without_outlier_flags": run.missing_flags,
        "selected_by_reason": dg.MetadataValue.json(dict(run.reasons)),
        "failures": dg.MetadataValue.md("\n".join(f"- {f}" for f in run.failures[:MAX_LISTED]) or "none"),
        "backend": captioner.backend,
        "model_id": captioner.model_id,
        "vocabulary_version": vocab.identity,
        "captioner_seconds": round(run.vlm_s, 3),
        "captions_per_s": round(run.sent / run.vlm_s, 2) if run.sent and run.vlm_s > 0 else None,
        "latency_s_mean": round(float(np.mean(lat)), 4) if lat else None,
        "latency_s_max": round(max(lat), 4) if lat else None,
        "seconds": round(time.perf_counter() - started, 3),
    }


@dg.asset(
    deps=["captioner_model", "embedding_model"],
    partitions_def=scene_partitions,
    code_version="3",  # 3: the detector's own class word in captions (source_class)
    kinds={"transformers", "parquet"},
    group_name="mining_scene",
    metadata=column_schema("captions"),
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=MODEL_SCENES_PER_RUN),
)
def captions(
    context: dg.AssetExecutionContext,
    config: CaptionsConfig,
    crops: SceneTables,
    detections: SceneTables,
    outlier_flags: SceneTables,
    captioner: CaptionerResource,
    vocabulary: VocabularyResource,
    embedder: EmbedderResource,
) -> SceneTables:
    """One row per crop of the scene (key: detection_id, plus scene_name, sample_token,
    sample_data_token, channel, class_name) with the caption used for concept scoring.

    Outliers and crops whose class is a target/rare candidate in the vocabulary (or unknown to
    it) go to the ``captioner`` resource in priority order, up to ``max_per_scene``: status
    ``ok`` with the raw answer, the parsed ``vlm_class`` and description, or ``failed`` with the
    error and attempts (the caption is then the class name). All other crops get
    ``status = "class_name"`` and their class name as caption. Every caption is stored with its
    text embedding from the ``embedder`` (``caption_embedding``, ``text_model_id``), so search
    never re-encodes captions."""
    scenes = context.partition_keys
    started = time.perf_counter()
    vocab = vocabulary.load()
    run = _caption_pass(context, [by_scene(t, scenes) for t in (crops, detections, outlier_flags)], vocab, config,
                        captioner)
    add_caption_embeddings(run.outputs, embedder)
    for line in run.failures[:MAX_LISTED]:
        context.log.warning(f"caption failed for crop {line}")
    df = pd.concat(list(run.outputs.values()), ignore_index=True)
    context.log.info(
        f"scenes {', '.join(scenes)}: {run.sent} of {len(df)} crops captioned with {captioner.model_id} "
        f"in {run.vlm_s:.2f} s, {len(run.failures)} failed"
    )
    context.add_output_metadata(_metadata(run, df, captioner, vocab, started))
    return run.outputs[scenes[0]] if len(scenes) == 1 else run.outputs
