"""The Dagster definitions of conceptmine: assets, resources, jobs and sensors."""

from dataclasses import dataclass

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
    reviews,
    search_index,
    splits,
)
from conceptmine_assets.orchestration.automation import automation_sensor_for, with_automation
from conceptmine_assets.orchestration.checks import CHECKS
from conceptmine_assets.orchestration.scaling import scale
from conceptmine_assets.orchestration.sensors import scene_discovery_sensor
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.resources.profiles import model_resources
from conceptmine_assets.resources.search_index import SearchIndexResource
from conceptmine_assets.resources.storage import ParquetIOManager, PickleIOManager, StoreViews
from conceptmine_assets.resources.vocabulary import VocabularyResource
from conceptmine_assets.settings import Settings, check_stage_names, load_settings, stage_values_version

ASSET_MODULES = [
    models, frames, detections, crops, embeddings, outliers, captions, concepts, splits, mining_quality_report,
    embedding_clusters, gallery, search_index, reviews,
]
# The observable source assets (model and vocabulary identities, reviews: the ``models`` group).
# Jobs and sensors select them by key: the selections that take source assets by group or all at
# once (``include_sources=True``) are a beta Dagster parameter.
SOURCES = [a for a in dg.load_assets_from_modules(ASSET_MODULES) if isinstance(a, dg.SourceAsset)]

@dataclass(frozen=True)
class Stage:
    """One step of the whole pipeline: a job and the assets it selects (``per_scene``: its assets
    are scene partitions; ``observe``: a job of observations, which ``conceptmine run`` launches
    when an identity differs from the recorded one, or with ``--force``)."""

    job: str
    selection: dg.AssetSelection
    description: str
    per_scene: bool = False
    observe: bool = False

    def define(self):
        return dg.define_asset_job(self.job, selection=self.selection, description=self.description)


# Run order of the whole pipeline (``conceptmine run``): observe the models, the per-scene
# perception stages over all scenes, the outlier reference, the per-scene mining stages, the
# global mining stages.
PIPELINE: list[Stage] = [
    Stage(
        "observe_models_job", dg.AssetSelection.assets(*(a.key for a in SOURCES if a.group_name == "models")),
        "Record the identities of the models and the concept vocabulary.", observe=True,
    ),
    Stage(
        "perception_job", dg.AssetSelection.groups("perception").without_checks(),
        "Per scene: frames, detections, crops, embeddings.", per_scene=True,
    ),
    Stage(
        "outlier_reference_job", dg.AssetSelection.assets("outlier_reference").without_checks(),
        "Refit the global outlier reference from all scenes' embeddings.",
    ),
    Stage(
        "mining_scene_job", dg.AssetSelection.groups("mining_scene").without_checks(),
        "Per scene: outlier flags, captions, concept scores.", per_scene=True,
    ),
    Stage(
        "mining_global_job",
        (dg.AssetSelection.groups("mining_global") - dg.AssetSelection.assets("outlier_reference"))
        | dg.AssetSelection.checks(*CHECKS),
        "Across scenes: the mined split, the mining-quality report and the invariant checks.",
    ),
]
JOBS = [stage.define() for stage in PIPELINE]
observe_models_job, perception_job, outlier_reference_job, mining_scene_job, mining_global_job = JOBS


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


def with_config_versions(assets: list) -> list:
    """Each asset's code version extended by the digest of its config-file values that differ
    from the built-in defaults (``2`` -> ``2+cfg.1a2b3c4d``), so a changed setting in the
    config file makes the asset stale everywhere Dagster judges staleness."""

    def version(spec: dg.AssetSpec) -> dg.AssetSpec:
        digest = stage_values_version(spec.key.to_user_string())
        return spec if digest is None else spec.replace_attributes(code_version=f"{spec.code_version}+cfg.{digest}")

    return [dg.map_asset_specs(version, [a])[0] if isinstance(a, dg.AssetsDefinition) else a for a in assets]


def build_definitions(settings: Settings) -> dg.Definitions:
    check_stage_names(settings)
    assets, executor = scale(
        with_automation(with_config_versions(dg.load_assets_from_modules(ASSET_MODULES)), settings.remine_cron),
        settings.executor,
        settings.dask_scheduler,
        settings.gpu_routing,
    )
    return dg.Definitions(
        assets=assets,
        executor=executor,
        asset_checks=CHECKS,
        resources=build_resources(settings),
        jobs=JOBS,
        sensors=[scene_discovery_sensor, automation_sensor_for(SOURCES)],
    )


@dg.definitions
def defs() -> dg.Definitions:
    """Loaded by ``dagster dev`` / ``workspace.yaml``: settings from the environment and the config file."""
    return build_definitions(load_settings())
