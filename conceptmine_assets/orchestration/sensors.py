"""Scene discovery: keep the scene partitions in step with the configured dataroot."""


import dagster as dg

from conceptmine_assets.partitions import SCENE_PARTITIONS_NAME, scene_partitions
from conceptmine_assets.resources.nuscenes import NuScenesResource


def missing_scenes(instance: dg.DagsterInstance, nuscenes: NuScenesResource) -> list[str]:
    """Scenes of the dataroot that are not yet partitions (in dataroot order)."""
    existing = set(instance.get_dynamic_partitions(SCENE_PARTITIONS_NAME))
    return [name for name in nuscenes.scene_names() if name not in existing]


def register_scenes(instance: dg.DagsterInstance, nuscenes: NuScenesResource) -> list[str]:
    """Add every scene of the dataroot as a partition (for backfills); returns the new ones."""
    new = missing_scenes(instance, nuscenes)
    if new:
        instance.add_dynamic_partitions(SCENE_PARTITIONS_NAME, new)
    return new


@dg.sensor(minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.RUNNING)
def scene_discovery_sensor(context: dg.SensorEvaluationContext, nuscenes: NuScenesResource) -> dg.SensorResult:
    """Adds a partition for each scene of the dataroot that has none.

    Idempotent; it only ever adds partitions, so a scene removed from the dataroot keeps its
    stored data and its partition.
    """
    new = missing_scenes(context.instance, nuscenes)
    if new:
        context.log.info(f"registering {len(new)} new scenes: {', '.join(new[:20])}")
    return dg.SensorResult(
        dynamic_partitions_requests=[scene_partitions.build_add_request(new)] if new else [],
    )
