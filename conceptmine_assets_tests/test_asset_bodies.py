"""Asset bodies called directly with ``dg.build_asset_context``: no run, no IO manager, no store.

Where a test needs only what an asset computes from its inputs (not how Dagster loads or stores
them), calling the body is faster and says more than a full materialisation.
"""

import io

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conceptmine_assets.assets.crops import CropsConfig, crops
from conceptmine_assets.assets.detections import detections
from conceptmine_assets.assets.embeddings import embeddings
from conceptmine_assets.assets.frames import FramesConfig, frames
from conceptmine_assets.definitions import model_resources
from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.partitions import SCENE_PARTITIONS_NAME
from conceptmine_assets.resources.detector import AnnotationsDetector
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.schemas import CROPS, EMBEDDINGS
from conceptmine_assets.settings import Settings
from conceptmine_assets_tests.helpers import REAL_SCENE


@pytest.fixture(scope="module")
def embedder():
    """The offline profile's embedder, as the deployment builds it."""
    return model_resources(Settings(store="unused"))["embedder"]


def scene_context(instance: dg.DagsterInstance, *scenes: str) -> dg.AssetExecutionContext:
    """A context for one scene partition, or for a run over several (a multi-scene backfill run)."""
    instance.add_dynamic_partitions(SCENE_PARTITIONS_NAME, list(scenes))
    if len(scenes) == 1:
        return dg.build_asset_context(partition_key=scenes[0], instance=instance)
    return dg.build_asset_context(partition_key_range=dg.PartitionKeyRange(scenes[0], scenes[-1]), instance=instance)


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, size=(40, 30, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def crop_table(scene: str, n: int) -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series([None] * n, dtype=object) for c in CROPS.names})
    df["scene_name"], df["sample_token"], df["sample_data_token"], df["channel"] = scene, "s", "sd", "CAM_FRONT"
    df["detection_id"] = [f"{scene}-d{i}" for i in range(n)]
    df["class_name"] = "car"
    df["image_jpeg"] = [jpeg(i) for i in range(n)]
    return df


def test_perception_bodies_on_the_real_slice(real_slice, instance, embedder):
    """frames → detections (the dataset's boxes) → crops → embeddings, each body fed the previous
    body's output: every usable box becomes one crop and every crop one finite unit vector."""
    nuscenes = NuScenesResource(dataroot=str(real_slice))
    context = scene_context(instance, REAL_SCENE)
    frame_table = frames(context, FramesConfig(cameras=["CAM_FRONT"]), nuscenes)
    boxes = detections(context, frame_table, AnnotationsDetector(), nuscenes)
    crop_rows = crops(context, CropsConfig(), frame_table, boxes, nuscenes)
    vectors = embeddings(context, crop_rows, embedder)
    assert frame_table["channel"].tolist() == ["CAM_FRONT"] and frame_table["image_ok"].all()
    assert len(boxes) >= len(crop_rows) > 10
    assert set(crop_rows["detection_id"]) <= set(boxes["detection_id"])
    assert list(vectors.columns) == EMBEDDINGS.names
    assert vectors["detection_id"].tolist() == crop_rows["detection_id"].tolist()
    norms = np.linalg.norm(np.stack(vectors["embedding"].to_numpy()), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-4)
    md = context.get_output_metadata("result")
    assert md["num_embeddings"] == len(crop_rows) and md["dim"] == vectors.attrs["vector_dims"]["embedding"]


def test_embeddings_body_over_two_scenes_returns_each_scene_its_table(instance, embedder):
    scenes = ("scene-a", "scene-b")
    context = scene_context(instance, *scenes)
    out = embeddings(context, {s: crop_table(s, n) for s, n in zip(scenes, (3, 2))}, embedder)
    assert sorted(out) == list(scenes)
    assert [len(out[s]) for s in scenes] == [3, 2]
    assert all((out[s]["scene_name"] == s).all() for s in scenes)


def test_embeddings_body_of_a_scene_without_crops_is_an_empty_table_with_its_dimension(instance, embedder):
    out = embeddings(scene_context(instance, "scene-empty"), crop_table("scene-empty", 0), embedder)
    assert out.empty and list(out.columns) == EMBEDDINGS.names
    assert out.attrs["vector_dims"]["embedding"] > 0  # the IO manager still writes fixed_size_list[dim]


def test_embeddings_body_names_the_crop_that_does_not_decode(instance, embedder):
    table = crop_table("scene-bad", 3)
    table.loc[1, "image_jpeg"] = b"not a jpeg"
    with pytest.raises(ConceptmineError, match="scene scene-bad: crop scene-bad-d1 image_jpeg is not a readable image"):
        embeddings(scene_context(instance, "scene-bad"), table, embedder)
