"""Helpers for tests of the global stages: materialise them over a hand-written store.

Global assets read their inputs through the IO manager (``StoredTable`` over all partitions),
so a test declares the upstream assets it wrote by hand as specs and registers their scenes.
"""

from pathlib import Path

import dagster as dg

from conceptmine_assets.partitions import SCENE_PARTITIONS_NAME, scene_partitions

GLOBAL_TABLES = {"mined_split"}


def stored_scenes(store: Path) -> list[str]:
    """Scene names of every per-scene file in ``store``."""
    return sorted({p.stem for p in Path(store).glob("*/*.parquet")})


def upstream_specs(names) -> list[dg.AssetSpec]:
    """Specs of the hand-written upstream assets (scene-partitioned unless global)."""
    return [dg.AssetSpec(n) if n in GLOBAL_TABLES else dg.AssetSpec(n, partitions_def=scene_partitions) for n in names]


def materialize_global(assets, store: Path, instance: dg.DagsterInstance, resources: dict, upstream=(), **kwargs):
    """Materialise global ``assets`` with ``upstream`` specs, the store's scenes registered."""
    scenes = [s for s in stored_scenes(store) if not instance.has_dynamic_partition(SCENE_PARTITIONS_NAME, s)]
    if scenes:
        instance.add_dynamic_partitions(SCENE_PARTITIONS_NAME, scenes)
    return dg.materialize([*assets, *upstream_specs(upstream)], instance=instance, resources=resources,
                          selection=assets, **kwargs)
