"""Declarative automation: new scenes flow through by themselves, re-mining runs on a cron.

- Per-scene stages are ``eager``: a scene partition added by the discovery sensor is
  materialised, and a partition recomputes when an upstream partition (or an observed model /
  vocabulary identity) updates. New scenes are scored against the existing outlier reference.
- ``outlier_reference`` (the one expensive global fit) is refit once per cron tick (weekly by
  default), and fit as soon as the first scenes have embeddings. A refit re-scores every scene.
- The other global stages (split, report, gallery, clusters) are cheap DuckDB reads. They refresh
  once after an update, and only when no scene stage upstream of them — at any depth, not just
  their direct inputs — is running or was updated this tick (:func:`waits_for_scenes`): a tick
  that starts a scene's chain never refreshes them at the same time, and a chain of several runs
  refreshes them once, on the first tick after its last run.

Partitions that already exist when automation is first switched on are not backfilled by it
(Dagster's ``eager`` only reacts to partitions that become missing afterwards): run
``conceptmine demo`` or a backfill from the UI once.
"""

import dagster as dg

SCENE_GROUPS = {"perception", "mining_scene"}
# Longest chain of scene stages (frames -> ... -> concept_scores has 6 edges) plus one.
SCENE_DEPTH = 7

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


def _busy() -> dg.AutomationCondition:
    # `will_be_requested` only sees requests that can share the root's run (same partitioning), so
    # a scene stage that automation requests this tick shows as its input updated this tick.
    return (
        dg.AutomationCondition.newly_updated()
        | dg.AutomationCondition.will_be_requested()
        | dg.AutomationCondition.in_progress()
    )


def upstream_scene_work(depth: int = SCENE_DEPTH) -> dg.AutomationCondition:
    """True while a scene stage (or the outlier reference) upstream, up to ``depth`` levels, is
    running, requested, or was updated this tick (so that stages after it are being requested).
    Built as a chain (each level once), so it stays linear in ``depth``."""
    scene_work = dg.AssetSelection.groups(*SCENE_GROUPS) | dg.AssetSelection.assets("outlier_reference")
    level = _busy()
    for _ in range(depth):
        level = _busy() | dg.AutomationCondition.any_deps_match(level).allow(scene_work)
    return dg.AutomationCondition.any_deps_match(level).allow(scene_work).with_label("scene work upstream")


def waits_for_scenes() -> dg.AutomationCondition:
    """A global refresh: once per update of its inputs (or when missing), after all scene work."""
    return (
        (dg.AutomationCondition.newly_missing() | dg.AutomationCondition.any_deps_updated()).since_last_handled()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~upstream_scene_work()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("refresh after the scenes")


def condition_for(spec: dg.AssetSpec, remine_cron: str) -> dg.AutomationCondition | None:
    if spec.group_name in SCENE_GROUPS:
        return dg.AutomationCondition.eager()
    if spec.key == dg.AssetKey("outlier_reference"):
        return _bootstrap | _refit(remine_cron)
    if spec.group_name == "mining_global":
        return waits_for_scenes()
    return spec.automation_condition


def with_automation(assets: list, remine_cron: str) -> list:
    """The assets with their automation conditions set (source assets are left as they are)."""
    return [
        a if not isinstance(a, dg.AssetsDefinition)
        else dg.map_asset_specs(lambda s: s.replace_attributes(automation_condition=condition_for(s, remine_cron)), [a])[0]
        for a in assets
    ]


def automation_target(sources: list[dg.SourceAsset]) -> dg.AssetSelection:
    """Every asset with its checks, and the observable source assets ``sources`` (by key:
    ``AssetSelection.all(include_sources=True)`` is a beta parameter)."""
    return dg.AssetSelection.all() | dg.AssetSelection.assets(*(a.key for a in sources))


def automation_sensor_for(sources: list[dg.SourceAsset]) -> dg.AutomationConditionSensorDefinition:
    """The sensor that evaluates the automation conditions of :func:`automation_target`."""
    return dg.AutomationConditionSensorDefinition(
        "conceptmine_automation",
        target=automation_target(sources),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=60,
    )
