"""The one partitions definition of the project: nuScenes scenes, keyed by scene *name*."""

import dagster as dg

SCENE_PARTITIONS_NAME = "nuscenes_scenes"

# Dynamic, so that a dataroot that grows (new drives) gets new partitions without a code change.
scene_partitions = dg.DynamicPartitionsDefinition(name=SCENE_PARTITIONS_NAME)

# A global asset's input over every scene partition of a scene-partitioned asset.
all_scenes = dg.AssetIn(partition_mapping=dg.AllPartitionMapping())
