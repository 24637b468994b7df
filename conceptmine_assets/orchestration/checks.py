"""Asset checks: the invariants every stored table must hold, checked across all scenes.

They query the store's DuckDB views (:class:`StoreViews`), so one check covers every materialised
scene at once and runs in the global stage (``mining_global_job``) or from the UI.
"""

import dagster as dg
import pandas as pd

from conceptmine_assets.assets.splits import SplitConfig
from conceptmine_assets.lib.splits import budgets as split_budgets
from conceptmine_assets.resources.storage import StoreViews


def _result(passed: bool, **metadata) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=bool(passed), metadata=metadata)


@dg.asset_check(asset="embeddings", description="Every crop has exactly one finite embedding, one dimension per model.")
def every_crop_has_an_embedding(store_views: StoreViews) -> dg.AssetCheckResult:
    missing = store_views.missing(["crops", "embeddings"])
    if missing:
        return _result(False, missing_tables=", ".join(missing))
    counts = store_views.query(
        """
        SELECT
          (SELECT count(*) FROM crops c ANTI JOIN embeddings e USING (detection_id)) AS crops_without_embedding,
          (SELECT count(*) FROM embeddings e ANTI JOIN crops c USING (detection_id)) AS embeddings_without_crop,
          (SELECT count(*) - count(DISTINCT detection_id) FROM embeddings) AS duplicate_embeddings
        """
    ).iloc[0]
    dims = store_views.query("SELECT model_id, len(embedding) AS dim, count(*) AS n FROM embeddings GROUP BY 1, 2")
    one_dim_per_model = not dims["model_id"].duplicated().any()
    return _result(
        counts.sum() == 0 and one_dim_per_model,
        **{k: int(v) for k, v in counts.items()},
        dims=dg.MetadataValue.md(dims.to_markdown(index=False) if len(dims) else "none"),
    )


@dg.asset_check(asset="detections", description="detection_id is unique across all scenes.")
def detection_ids_are_unique(store_views: StoreViews) -> dg.AssetCheckResult:
    if store_views.missing(["detections"]):
        return _result(False, missing_tables="detections")
    dupes = store_views.query("SELECT detection_id, count(*) AS n FROM detections GROUP BY 1 HAVING count(*) > 1")
    return _result(dupes.empty, num_duplicate_ids=len(dupes), examples=", ".join(dupes["detection_id"].head(10)))


@dg.asset_check(asset="concept_scores", description="Scores are cosines in [-1, 1], weights in [0, 1], groups known.")
def concept_scores_in_range(store_views: StoreViews) -> dg.AssetCheckResult:
    if store_views.missing(["concept_scores"]):
        return _result(False, missing_tables="concept_scores")
    bad = store_views.query(
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


def split_violations(split: pd.DataFrame, budgets: dict[str, int], num_samples: int, strategy: str = "ranked") -> list[str]:
    """Why ``split`` breaks its budgets (empty when it holds them).

    ranked: the target and rare budgets together are filled exactly (candidates, then
    ``random_fill``) unless fewer samples exist, then the random share exactly unless fewer remain.
    priority: target and rare shares may fall short (too few candidates) but never exceed their
    budget; the random share is exactly its budget unless fewer samples remain. paper: the
    random share is exactly ``min(B_rand, N)`` and the target budget is filled exactly (random
    leftovers make up for missing candidates) unless fewer samples remain.
    """
    problems = []
    if split["sample_token"].duplicated().any():
        problems.append("duplicate sample tokens")
    reasons = split["reason"].value_counts()
    count = lambda *names: int(sum(reasons.get(n, 0) for n in names))  # noqa: E731
    if strategy == "ranked":
        mined = min(budgets.get("target", 0) + budgets.get("rare", 0), num_samples)
        checks = [("target+rare", len(split) - count("random"), mined),
                  ("random", count("random"), min(budgets.get("random", 0), num_samples - mined))]
        return problems + [f"{name}: {got} selected, budget {want}" for name, got, want in checks if got != want]
    if strategy == "paper":
        random = min(budgets.get("random", 0), num_samples)
        checks = [("random", count("random"), random),
                  ("target", count("target_outlier", "target", "rare_outlier", "rare", "random_fill"),
                   min(budgets.get("target", 0), num_samples - random))]
        return problems + [f"{name}: {got} selected, budget {want}" for name, got, want in checks if got != want]
    for cap, tiers in (("target", ["target_outlier", "target"]), ("rare", ["rare_outlier", "rare"])):
        if count(*tiers) > budgets.get(cap, 0):
            problems.append(f"{cap}: {count(*tiers)} selected > budget {budgets.get(cap, 0)}")
    chosen = len(split) - count("random")
    expected_random = min(budgets.get("random", 0), num_samples - chosen)
    if count("random") != expected_random:
        problems.append(f"random: {count('random')} selected, budget {expected_random}")
    return problems


def split_config(run_config: dict) -> SplitConfig:
    """The mined_split config of the run (when the check runs with the asset), else the
    deployment's defaults: the budgets are the asset's config, not what its metadata says."""
    return SplitConfig(**((run_config or {}).get("ops", {}).get("mined_split", {}).get("config") or {}))


def evaluate_split(split: pd.DataFrame, config: SplitConfig, num_samples: int) -> dg.AssetCheckResult:
    """The check's verdict: ERROR when the split breaks the budgets of ``config``; WARN when a
    configured (non-zero) share has a budget that rounds down to 0, saying why."""
    budgets = split_budgets(config, num_samples)
    problems = split_violations(split, budgets, num_samples, config.strategy)
    fracs = {"random": config.random_frac, "target": config.target_frac, "rare": config.rare_frac}
    zero = [f"{k}_frac {f} of {num_samples} samples rounds down to a budget of 0"
            for k, f in fracs.items() if f > 0 and budgets[k] == 0]
    return dg.AssetCheckResult(
        passed=not problems and not zero,
        severity=dg.AssetCheckSeverity.ERROR if problems else dg.AssetCheckSeverity.WARN,
        description="; ".join(problems + zero) or None,
        metadata={"problems": "; ".join(problems) or "none", "zero_budgets": "; ".join(zero) or "none",
                  "num_selected": len(split), "num_training_samples": num_samples,
                  "strategy": config.strategy, "budgets": dg.MetadataValue.json(budgets)},
    )


@dg.asset_check(asset="mined_split", description="The split holds the budgets of its config and has no duplicate "
                "samples; a configured share whose budget rounds to 0 is a warning.")
def split_size_matches_budget(
    context: dg.AssetCheckExecutionContext, mined_split: pd.DataFrame, store_views: StoreViews
) -> dg.AssetCheckResult:
    if store_views.missing(["frames"]):
        return _result(False, missing_tables="frames")
    num_samples = int(store_views.query("SELECT count(DISTINCT sample_token) AS n FROM frames")["n"].iloc[0])
    return evaluate_split(mined_split, split_config(context.run.run_config), num_samples)


CHECKS = [every_crop_has_an_embedding, detection_ids_are_unique, concept_scores_in_range, split_size_matches_budget]
