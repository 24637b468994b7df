"""`outlier_reference` (fitted once over all scenes) and `outlier_flags` (one scoring pass per scene)."""

import time
from typing import Literal, NamedTuple

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
from pydantic import Field

from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.lib.outliers import (
    DETECTORS,
    MIN_REFERENCE_ROWS,
    OutlierParams,
    OutlierReference,
    QualityThresholds,
    apply_thresholds,
    fit_reference,
    flag_columns,
    quality_flags,
)
from conceptmine_assets.lib.model_guard import check_embedding_model
from conceptmine_assets.lib.scenes import SCENES_PER_RUN, SceneTables, concat_scenes, split_scenes
from conceptmine_assets.lib.tables import stack_vectors
from conceptmine_assets.partitions import all_scenes, scene_partitions
from conceptmine_assets.resources.store_sql import StoredTable, connect, reservoir_sample
from conceptmine_assets.schemas import KEY_COLUMNS, OUTLIER_FLAGS, column_schema
from conceptmine_assets.settings import stage_config


@stage_config("outlier_reference")
class OutlierReferenceConfig(OutlierParams, dg.Config):
    """How the global reference sample is drawn and the detectors fitted (the detectors' settings
    are :class:`OutlierParams`' fields, inherited with their descriptions and bounds)."""

    max_reference: int = Field(50_000, ge=MIN_REFERENCE_ROWS, description="Size of the seeded reservoir sample of all scenes' embeddings the detectors are fitted on.")
    tsne_max_points: int = Field(5_000, ge=0, description="t-SNE map of at most this many reference members, for plots; 0: none.")
    tsne_perplexity: float = Field(30.0, gt=0.0, description="t-SNE perplexity (capped at (points - 1) / 3).")


class EmbeddingStats(NamedTuple):
    """What the store's embeddings are: one model, one dimension."""

    model_id: str
    dim: int
    rows: int
    scenes: int


def _check_one_model(con: duckdb.DuckDBPyConnection, store: str) -> EmbeddingStats:
    """Model, dimension, rows and scenes of all stored embeddings; an error if they are mixed."""
    groups = con.execute(
        "SELECT model_id, len(embedding) AS dim, count(*) AS n, count(DISTINCT scene_name) AS scenes "
        "FROM embeddings GROUP BY ALL ORDER BY n DESC"
    ).df()
    if groups.empty:
        raise ConceptmineError(f"`embeddings` under {store} has no rows; nothing to fit the reference on")
    if len(groups) != 1:
        found = "; ".join(f"{r.model_id} dim {r.dim}: {r.n} rows in {r.scenes} scenes" for r in groups.itertuples())
        raise ConceptmineError(
            f"embeddings under {store} mix models or dimensions ({found}); "
            "re-materialise `embeddings` for every scene with one model"
        )
    row = groups.iloc[0]
    return EmbeddingStats(str(row["model_id"]), int(row["dim"]), int(row["n"]), int(row["scenes"]))


@dg.asset(
    ins={"embeddings": all_scenes},
    io_manager_key="pickle_io_manager",
    code_version="3",  # 3: the small_cluster detector; 2: the pickled params are a pydantic model
    kinds={"scikit-learn", "duckdb"},
    group_name="mining_global",
)
def outlier_reference(
    context: dg.AssetExecutionContext, config: OutlierReferenceConfig, embeddings: StoredTable
) -> OutlierReference:
    """The outlier detectors fitted once on a seeded reservoir sample (``max_reference`` rows)
    of all materialised scenes' embeddings, read through DuckDB so no scene is loaded whole.
    Stores IsolationForest and LOF (``novelty=True``), per-detector score thresholds, the
    reference sample (for the kNN-distance detector), the embeddings' model id and a 2-D t-SNE
    of the reference that is for plots only: t-SNE is transductive, so new scenes are scored in
    embedding space against the reference (kNN distance) and never through the t-SNE map.
    Fewer than k + 1 sampled rows: k drops to n - 1 with a logged warning; fewer than 3: an
    error. Re-materialise it after re-embedding with another model; `outlier_flags` refuses a
    mismatch."""
    started = time.perf_counter()
    if embeddings.empty:
        raise ConceptmineError(f"no `embeddings` stored under {embeddings.store}; materialise some scenes first")
    with connect(embeddings) as con:
        model_id, dim, total, scenes = _check_one_model(con, embeddings.store)
        sample = reservoir_sample(con, "SELECT detection_id, scene_name, embedding FROM embeddings",
                                  config.max_reference, config.seed)
    ids = sample["detection_id"].to_numpy(dtype=object)
    member_scenes = sample["scene_name"].to_numpy(dtype=object)
    X = stack_vectors(sample["embedding"], dim)
    reference = fit_reference(X, ids, model_id, config, member_scenes, config.tsne_max_points, config.tsne_perplexity)
    for warning in reference.warnings:
        context.log.warning(warning)
    member_flags = apply_thresholds(reference.member_scores, reference.thresholds)
    context.add_output_metadata(
        {
            "model_id": model_id,
            "dim": dim,
            "num_embeddings_total": total,
            "num_scenes": scenes,
            "num_reference": reference.size,
            "lof_k": reference.lof_k,
            "knn_k": reference.knn_k,
            "small_cluster_k": reference.small_cluster_k,
            "thresholds": dg.MetadataValue.json({k: round(v, 6) for k, v in reference.thresholds.items()}),
            "reference_flag_rates": dg.MetadataValue.json(
                {d: round(float(member_flags[d].mean()), 4) for d in DETECTORS}
            ),
            "num_tsne_points": 0 if reference.tsne is None else len(reference.tsne),
            "warnings": dg.MetadataValue.md("\n".join(f"- {w}" for w in reference.warnings) or "none"),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
    return reference


@stage_config("outlier_flags")
class OutlierFlagsConfig(QualityThresholds, dg.Config):
    """How detector flags combine, and the image-quality limits (:class:`QualityThresholds`' fields)."""

    combine: Literal["union", "vote"] = Field("union", description=f"union: any detector fires; vote: at least min_votes of the {len(DETECTORS)}.")
    min_votes: int = Field(2, ge=1, le=len(DETECTORS), description="Detectors that must agree under the vote rule.")


_QUALITY_COLUMNS = ["detection_id", "overexposed_frac", "dark_frac", "blur_laplacian_var"]


def _join_quality(embeddings: pd.DataFrame, crops: pd.DataFrame, scene: str) -> pd.DataFrame:
    """Embeddings with their crop's quality columns; every embedding must have its crop."""
    if embeddings["detection_id"].duplicated().any():
        raise ConceptmineError(f"scene {scene}: `embeddings` has duplicate detection_ids")
    joined = embeddings.merge(crops[_QUALITY_COLUMNS], on="detection_id", how="left", indicator=True)
    missing = joined.loc[joined["_merge"] == "left_only", "detection_id"].tolist()
    if missing:
        raise ConceptmineError(
            f"scene {scene}: {len(missing)} embeddings have no row in `crops` (e.g. {missing[:3]}); "
            "re-materialise `embeddings` for this scene"
        )
    if len(joined) != len(embeddings):
        raise ConceptmineError(f"scene {scene}: `crops` has duplicate detection_ids")
    return joined.drop(columns="_merge")


@dg.asset(
    partitions_def=scene_partitions,
    code_version="2",  # 2: small_cluster detector, per-detector percentiles and outlier_evidence
    kinds={"scikit-learn", "parquet"},
    group_name="mining_scene",
    metadata=column_schema("outlier_flags"),
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=SCENES_PER_RUN),
)
def outlier_flags(
    context: dg.AssetExecutionContext, config: OutlierFlagsConfig, embeddings: SceneTables, crops: SceneTables,
    outlier_reference: OutlierReference,
) -> SceneTables:
    """One row per embedded crop of the scene (detection_id, sample_token, class_name): the
    IsolationForest, LOF, kNN-distance and small-cluster (wide kNN) scores against the global
    `outlier_reference` (higher = more anomalous; no refit), each detector's flag from the
    reference's threshold and its percentile among the reference's own scores (``*_pct``, 0..1;
    ``outlier_evidence`` = the highest, the calibrated evidence the mining score uses),
    ``is_outlier`` (union, or ``vote``) with the detectors that fired, and separately the
    image-quality flags glare / dark / blur with ``is_quality_outlier``."""
    started = time.perf_counter()
    scene = ", ".join(context.partition_keys)  # several scenes per run in a backfill
    embeddings, crops = concat_scenes(embeddings), concat_scenes(crops)
    check_embedding_model(embeddings["model_id"], outlier_reference.model_id, f"scene {scene}",
                          "the outlier_reference was fitted on another model; re-materialise "
                          "`outlier_reference` (and embeddings of all scenes)")
    df = _join_quality(embeddings, crops, scene)
    X = stack_vectors(df["embedding"], outlier_reference.dim)
    columns = flag_columns(outlier_reference, X, df["detection_id"].to_numpy(dtype=object), config.combine,
                           config.min_votes)
    qflags, unknown_quality = quality_flags(df, config)
    out = df[KEY_COLUMNS].copy()
    for name, values in columns.items():
        out[name] = pd.Series(values, index=out.index, dtype=object) if name == "outlier_detectors" else values
    out["quality_flags"] = pd.Series(qflags, index=out.index, dtype=object)
    out["is_quality_outlier"] = np.array([bool(q) for q in qflags], dtype=bool)
    out = out[OUTLIER_FLAGS.names].reset_index(drop=True)
    if unknown_quality:
        context.log.warning(f"scene {scene}: {unknown_quality} crops have null quality values (no quality flag)")
    if not len(out):
        context.log.warning(f"scene {scene}: no embeddings to score")
    context.add_output_metadata(
        {
            "num_crops": len(out),
            "num_outliers": int(out["is_outlier"].sum()),
            **{f"num_{d}": int(out[f"{d}_flag"].sum()) for d in DETECTORS},
            "num_quality_outliers": int(out["is_quality_outlier"].sum()),
            **{f"num_{q}": int(sum(q in f for f in qflags)) for q in ("glare", "dark", "blur")},
            "num_null_quality": unknown_quality,
            "num_crops_without_embedding": int((~crops["detection_id"].isin(df["detection_id"])).sum()),
            "combine": config.combine if config.combine == "union" else f"vote >= {config.min_votes}",
            "reference_model_id": outlier_reference.model_id,
            "reference_size": outlier_reference.size,
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
    return split_scenes(out, context.partition_keys)
