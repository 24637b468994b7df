"""Declarative automation: new scenes flow through by themselves, global assets re-mine on a cron.

- Per-scene stages are ``eager``: a newly added scene partition (from the discovery sensor) is
  materialised, and a partition recomputes when an upstream partition (or an observed model /
  vocabulary identity) updates.
- Global stages (outlier reference, split, reports) run ``on_cron`` (weekly by default), once
  their inputs have updated since the tick; the outlier reference also runs when missing, so a
  fresh deployment can score its first scenes.
"""

import dagster as dg

DEFAULT_REMINE_CRON = "0 3 * * 1"  # Mondays 03:00

SCENE_GROUPS = {"perception", "mining_scene"}


def condition_for(spec: dg.AssetSpec, remine_cron: str) -> dg.AutomationCondition | None:
    if spec.group_name in SCENE_GROUPS:
        return dg.AutomationCondition.eager()
    if spec.key == dg.AssetKey("outlier_reference"):
        return dg.AutomationCondition.on_missing() | dg.AutomationCondition.on_cron(remine_cron)
    if spec.group_name == "mining_global":
        return dg.AutomationCondition.on_cron(remine_cron)
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
