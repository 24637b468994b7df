"""The Dagster definitions of conceptmine: assets, resources, jobs and sensors."""


import dagster as dg

from conceptmine_assets.assets import frames as frames_module
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.resources.storage import DuckDBResource, ParquetIOManager, PickleIOManager
from conceptmine_assets.sensors import scene_discovery_sensor
from conceptmine_assets.settings import Settings

SCENE_ASSET_MODULES = [frames_module]
GLOBAL_ASSET_MODULES: list = []


def scene_assets() -> list:
    return dg.load_assets_from_modules(SCENE_ASSET_MODULES)


def global_assets() -> list:
    return dg.load_assets_from_modules(GLOBAL_ASSET_MODULES) if GLOBAL_ASSET_MODULES else []


def build_resources(settings: Settings) -> dict:
    """Resources for a deployment; tests build their own with ``tmp_path`` stores."""
    return {
        "nuscenes": NuScenesResource(
            dataroot=dg.EnvVar("NUSCENES_DATAROOT"), version=settings.nuscenes_version
        ),
        "io_manager": ParquetIOManager(base_path=settings.store),
        "pickle_io_manager": PickleIOManager(base_path=settings.store),
        "duckdb": DuckDBResource(base_path=settings.store),
    }


perception_job = dg.define_asset_job(
    "perception_job",
    selection=dg.AssetSelection.groups("perception"),
    description="Per scene: frames, detections, crops, embeddings.",
)

# Run order of the whole pipeline: each per-scene stage job over all scenes, then its global job.
SCENE_STAGES = ["perception_job"]
GLOBAL_STAGES: list[str | None] = [None]


def build_definitions(settings: Settings) -> dg.Definitions:
    return dg.Definitions(
        assets=[*scene_assets(), *global_assets()],
        resources=build_resources(settings),
        jobs=[perception_job],
        sensors=[scene_discovery_sensor],
    )


@dg.definitions
def defs() -> dg.Definitions:
    """Loaded by ``dagster dev`` / ``workspace.yaml``; reads settings from the environment."""
    return build_definitions(Settings.from_env())
