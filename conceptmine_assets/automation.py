"""Declarative automation: new scenes flow through by themselves, re-mining runs on a cron.

- Per-scene stages are ``eager``: a scene partition added by the discovery sensor is
  materialised, and a partition recomputes when an upstream partition (or an observed model /
  vocabulary identity) updates. New scenes are scored against the existing outlier reference.
- ``outlier_reference`` (the one expensive global fit) is refit once per cron tick (weekly by
  default), and fit as soon as the first scenes have embeddings. A refit re-scores every scene.
- The other global stages (split, report, gallery, clusters) are cheap DuckDB reads: they are
  ``eager`` too, so they refresh once a new scene or a re-scoring has gone through all scenes
  (they wait while any scene's inputs are missing or in progress).

Partitions that already exist when automation is first switched on are not backfilled by it
(Dagster's ``eager`` only reacts to partitions that become missing afterwards): run
``conceptmine demo`` or a backfill from the UI once.
"""

import dagster as dg

DEFAULT_REMINE_CRON = "0 3 * * 1"  # Mondays 03:00

SCENE_GROUPS = {"perception", "mining_scene"}

# Fit the first outlier reference as soon as every scene has embeddings (``on_missing`` would not
# fire for an asset that is already missing when automation starts); a failed fit is not retried
# by itself.
_bootstrap = (
    dg.AutomationCondition.missing()
    & dg.AutomationCondition.any_deps_match(~dg.AutomationCondition.missing())  # some scene has embeddings
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
    & ~dg.AutomationCondition.execution_failed()
).with_label("bootstrap")


def _refit(cron: str) -> dg.AutomationCondition:
    """Once per cron tick, when no input is missing or being computed."""
    return (
        dg.AutomationCondition.cron_tick_passed(cron).since_last_handled()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label(f"refit on cron {cron}")


def condition_for(spec: dg.AssetSpec, remine_cron: str) -> dg.AutomationCondition | None:
    if spec.group_name in SCENE_GROUPS:
        return dg.AutomationCondition.eager()
    if spec.key == dg.AssetKey("outlier_reference"):
        return _bootstrap | _refit(remine_cron)
    if spec.group_name == "mining_global":
        return dg.AutomationCondition.eager()
    return spec.automation_condition


def with_automation(assets: list, remine_cron: str = DEFAULT_REMINE_CRON) -> list:
    """The assets with their automation conditions set (source assets are left as they are)."""
    return [
        a if not isinstance(a, dg.AssetsDefinition)
        else dg.map_asset_specs(lambda s: s.replace_attributes(automation_condition=condition_for(s, remine_cron)), [a])[0]
        for a in assets
    ]


automation_sensor = dg.AutomationConditionSensorDefinition(
    "conceptmine_automation",
    target=dg.AssetSelection.all(include_sources=True),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
)
