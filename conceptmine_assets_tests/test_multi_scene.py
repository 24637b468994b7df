"""Model stages batch several scenes per run (backfill policy) and store one file per scene."""

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conceptmine_assets.assets.crops import crops
from conceptmine_assets.assets.detections import detections
from conceptmine_assets.assets.embeddings import embeddings
from conceptmine_assets.assets.frames import frames
from conceptmine_assets.lib.scenes import concat_scenes, split_scenes
from conceptmine_assets.partitions import SCENE_PARTITIONS_NAME
from conceptmine_assets.resources.detector import YoloDetector
from conceptmine_assets.resources.offline_embedder import OfflineEmbedder
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.resources.storage import ParquetIOManager
from conceptmine_assets_tests.helpers import HIGHWAY_SCENES

ASSETS = [frames, detections, crops, embeddings]


def test_split_and_concat_round_trip():
    df = pd.DataFrame({"scene_name": ["b", "a", "b"], "x": [1, 2, 3]})
    df.attrs["vector_dims"] = {"embedding": 4}
    parts = split_scenes(df, ["a", "b", "c"])
    assert list(parts) == ["a", "b", "c"] and list(parts["b"]["x"]) == [1, 3] and parts["c"].empty
    assert parts["c"].attrs == {"vector_dims": {"embedding": 4}}
    assert split_scenes(df, ["a"]) is df
    assert list(concat_scenes(parts)["x"]) == [2, 1, 3]


def _run(store, instance, resources, asset, scenes):
    tags = {}
    if len(scenes) > 1:
        tags = {"dagster/asset_partition_range_start": scenes[0], "dagster/asset_partition_range_end": scenes[-1]}
    result = dg.materialize(ASSETS, selection=[asset], instance=instance, resources=resources, tags=tags,
                            partition_key=scenes[0] if len(scenes) == 1 else None)
    assert result.success
    return result


def _tables(store, asset):
    return {s: pq.read_table(store / asset / f"{s}.parquet") for s in HIGHWAY_SCENES}


@pytest.mark.real_model
def test_model_stages_over_a_scene_range_equal_scene_by_scene(highway, yolo_tflite, tmp_path, instance):
    def resources(store):
        return {
            "nuscenes": NuScenesResource(dataroot=str(highway)),
            "io_manager": ParquetIOManager(base_path=str(store)),
            "detector": YoloDetector(weights=str(yolo_tflite), device="cpu"),
            "embedder": OfflineEmbedder(device="cpu"),
        }

    instance.add_dynamic_partitions(SCENE_PARTITIONS_NAME, HIGHWAY_SCENES)
    single, ranged = tmp_path / "single", tmp_path / "ranged"
    for store in (single, ranged):
        for scene in HIGHWAY_SCENES:
            _run(store, instance, resources(store), frames, [scene])
    for scene in HIGHWAY_SCENES:  # scene by scene
        for asset in (detections, crops, embeddings):
            _run(single, instance, resources(single), asset, [scene])
    # the model stages once over all three scenes; crops (not a model stage) per scene
    result = _run(ranged, instance, resources(ranged), detections, HIGHWAY_SCENES)
    assert len(result.asset_materializations_for_node("detections")) == 3  # one run, one event per scene
    for scene in HIGHWAY_SCENES:
        _run(ranged, instance, resources(ranged), crops, [scene])
    _run(ranged, instance, resources(ranged), embeddings, HIGHWAY_SCENES)
    for asset in ("detections", "embeddings"):
        ranged_tables, single_tables = _tables(ranged, asset), _tables(single, asset)
        for scene in HIGHWAY_SCENES:
            assert ranged_tables[scene].num_rows > 0
            assert ranged_tables[scene].equals(single_tables[scene]), (asset, scene)
