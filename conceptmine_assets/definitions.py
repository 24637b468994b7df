"""The Dagster definitions of conceptmine: assets, resources, jobs and sensors."""

import dagster as dg

from conceptmine_assets.assets import (
    captions,
    concepts,
    crops,
    detections,
    embeddings,
    embedding_clusters,
    frames,
    gallery,
    mining_quality_report,
    models,
    outliers,
    search_index,
    splits,
)
from conceptmine_assets.automation import automation_sensor, with_automation
from conceptmine_assets.checks import CHECKS
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.resources.profiles import model_resources
from conceptmine_assets.resources.search_index import SearchIndexResource
from conceptmine_assets.resources.storage import ParquetIOManager, PickleIOManager, StoreViews
from conceptmine_assets.resources.vocabulary import VocabularyResource
from conceptmine_assets.scaling import scale
from conceptmine_assets.sensors import scene_discovery_sensor
from conceptmine_assets.settings import Settings, load_settings

ASSET_MODULES = [
    models, frames, detections, crops, embeddings, outliers, captions, concepts, splits, mining_quality_report,
    embedding_clusters, gallery, search_index,
]

observe_models_job = dg.define_asset_job(
    "observe_models_job",
    selection=dg.AssetSelection.groups("models", include_sources=True),
    description="Record the identities of the models and the concept vocabulary.",
)
perception_job = dg.define_asset_job(
    "perception_job",
    selection=dg.AssetSelection.groups("perception").without_checks(),
    description="Per scene: frames, detections, crops, embeddings.",
)
outlier_reference_job = dg.define_asset_job(
    "outlier_reference_job",
    selection=dg.AssetSelection.assets("outlier_reference").without_checks(),
    description="Refit the global outlier reference from all scenes' embeddings.",
)
mining_scene_job = dg.define_asset_job(
    "mining_scene_job",
    selection=dg.AssetSelection.groups("mining_scene").without_checks(),
    description="Per scene: outlier flags, captions, concept scores.",
)
mining_global_job = dg.define_asset_job(
    "mining_global_job",
    selection=(dg.AssetSelection.groups("mining_global") - dg.AssetSelection.assets("outlier_reference"))
    | dg.AssetSelection.checks(*CHECKS),
    description="Across scenes: the mined split, the mining-quality report and the invariant checks.",
)

# Run order of the whole pipeline: each per-scene job over all scenes, then its global job.
PIPELINE: list[tuple[str | None, str]] = [
    (None, "observe_models_job"),
    ("perception_job", "outlier_reference_job"),
    ("mining_scene_job", "mining_global_job"),
]


def build_resources(settings: Settings) -> dict:
    """All resources of a deployment; tests build their own with ``tmp_path`` stores."""
    return {
        "nuscenes": NuScenesResource(
            dataroot=settings.dataroot or dg.EnvVar("NUSCENES_DATAROOT"), version=settings.nuscenes_version
        ),
        "io_manager": ParquetIOManager(base_path=settings.store),
        "pickle_io_manager": PickleIOManager(base_path=settings.store),
        "store_views": StoreViews(base_path=settings.store),
        "search_index_store": SearchIndexResource(base_path=settings.store),
        "vocabulary": VocabularyResource(path=settings.vocabulary),
        **model_resources(settings),
    }


def build_definitions(settings: Settings) -> dg.Definitions:
    assets, executor = scale(
        with_automation(dg.load_assets_from_modules(ASSET_MODULES), settings.remine_cron),
        settings.executor,
        settings.dask_scheduler,
        settings.gpu_routing,
    )
    return dg.Definitions(
        assets=assets,
        executor=executor,
        asset_checks=CHECKS,
        resources=build_resources(settings),
        jobs=[observe_models_job, perception_job, outlier_reference_job, mining_scene_job, mining_global_job],
        sensors=[scene_discovery_sensor, automation_sensor],
    )


@dg.definitions
def defs() -> dg.Definitions:
    """Loaded by ``dagster dev`` / ``workspace.yaml``: settings from the environment and the config file."""
    return build_definitions(load_settings())
