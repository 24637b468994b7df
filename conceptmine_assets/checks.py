"""Asset checks: the invariants every stored table must hold, checked across all scenes.

They query the DuckDB views, so one check covers every materialised scene at once and runs in the
global stage (``mining_global_job``) or from the UI.
"""

import dagster as dg
import pandas as pd

from conceptmine_assets.resources.storage import DuckDBResource


def _result(passed: bool, **metadata) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=bool(passed), metadata=metadata)


@dg.asset_check(asset="embeddings", description="Every crop has exactly one finite embedding, one dimension per model.")
def every_crop_has_an_embedding(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    missing = duckdb.missing(["crops", "embeddings"])
    if missing:
        return _result(False, missing_tables=", ".join(missing))
    counts = duckdb.query(
        """
        SELECT
          (SELECT count(*) FROM crops c ANTI JOIN embeddings e USING (detection_id)) AS crops_without_embedding,
          (SELECT count(*) FROM embeddings e ANTI JOIN crops c USING (detection_id)) AS embeddings_without_crop,
          (SELECT count(*) - count(DISTINCT detection_id) FROM embeddings) AS duplicate_embeddings
        """
    ).iloc[0]
    dims = duckdb.query("SELECT model_id, len(embedding) AS dim, count(*) AS n FROM embeddings GROUP BY 1, 2")
    one_dim_per_model = not dims["model_id"].duplicated().any()
    return _result(
        counts.sum() == 0 and one_dim_per_model,
        **{k: int(v) for k, v in counts.items()},
        dims=dg.MetadataValue.md(dims.to_markdown(index=False) if len(dims) else "none"),
    )


@dg.asset_check(asset="detections", description="detection_id is unique across all scenes.")
def detection_ids_are_unique(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    if duckdb.missing(["detections"]):
        return _result(False, missing_tables="detections")
    dupes = duckdb.query("SELECT detection_id, count(*) AS n FROM detections GROUP BY 1 HAVING count(*) > 1")
    return _result(dupes.empty, num_duplicate_ids=len(dupes), examples=", ".join(dupes["detection_id"].head(10)))


@dg.asset_check(asset="concept_scores", description="Scores are cosines in [-1, 1], weights in [0, 1], groups known.")
def concept_scores_in_range(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    if duckdb.missing(["concept_scores"]):
        return _result(False, missing_tables="concept_scores")
    bad = duckdb.query(
        """
        SELECT
          count(*) FILTER (WHERE top_score NOT BETWEEN -1.0001 AND 1.0001 OR top_score IS NULL) AS bad_top_score,
          count(*) FILTER (WHERE weight_text NOT BETWEEN 0 AND 1) AS bad_weight_text,
          count(*) FILTER (WHERE "group" NOT IN ('common', 'rare', 'target')) AS bad_group,
          count(*) FILTER (WHERE len(concept_scores) <> len(concept_names)) AS bad_lengths,
          count(*) FILTER (WHERE list_min(concept_scores) < -1.0001 OR list_max(concept_scores) > 1.0001) AS bad_scores
        FROM concept_scores
        """
    ).iloc[0]
    return _result(bad.sum() == 0, **{k: int(v) for k, v in bad.items()})


def split_violations(split: pd.DataFrame, budgets: dict[str, int], num_samples: int) -> list[str]:
    """Why ``split`` breaks its budgets (empty when it holds them).

    Target and rare shares may fall short (too few candidates) but never exceed their budget;
    the random share is exactly its budget unless fewer samples remain.
    """
    problems = []
    if split["sample_token"].duplicated().any():
        problems.append("duplicate sample tokens")
    reasons = split["reason"].value_counts()
    for cap, tiers in (("target", ["target_outlier", "target"]), ("rare", ["rare_outlier", "rare"])):
        used = int(sum(reasons.get(t, 0) for t in tiers))
        if used > budgets.get(cap, 0):
            problems.append(f"{cap}: {used} selected > budget {budgets.get(cap, 0)}")
    chosen = len(split) - int(reasons.get("random", 0))
    expected_random = min(budgets.get("random", 0), num_samples - chosen)
    if int(reasons.get("random", 0)) != expected_random:
        problems.append(f"random: {int(reasons.get('random', 0))} selected, budget {expected_random}")
    return problems


@dg.asset_check(asset="mined_split", description="The split holds its budgets exactly and has no duplicate samples.")
def split_size_matches_budget(context: dg.AssetCheckExecutionContext, mined_split: pd.DataFrame) -> dg.AssetCheckResult:
    event = context.instance.get_latest_materialization_event(dg.AssetKey("mined_split"))
    metadata = event.asset_materialization.metadata
    budgets = metadata["budgets"].value
    num_samples = metadata["num_training_samples"].value
    problems = split_violations(mined_split, budgets, num_samples)
    return _result(not problems, problems="; ".join(problems) or "none", num_selected=len(mined_split),
                   budgets=dg.MetadataValue.json(budgets))


CHECKS = [every_crop_has_an_embedding, detection_ids_are_unique, concept_scores_in_range, split_size_matches_budget]
