"""The `embeddings` asset and its pure helpers.

`crops` is another stage; these tests feed `embeddings` from a test-only `crops` asset that
returns crops cut from the real slice with boxes projected from its 3D annotations (``real_crops.py``).
"""

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conceptmine_assets.assets.crops import crops as crops_stage
from conceptmine_assets.assets.embeddings import check_finite, decode_crop, embeddings
from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.partitions import scene_partitions
from conceptmine_assets.resources.embedder import EmbedderResource
from conceptmine_assets.resources.open_clip_embedder import OpenClipEmbedder
from conceptmine_assets.resources.storage import ParquetIOManager, StoreViews
from conceptmine_assets.schemas import CROPS
from conceptmine_assets_tests.helpers import REAL_SCENE, materialize_scene, tiny_twin
from conceptmine_assets_tests.real_crops import to_jpeg


def crops_asset(df: pd.DataFrame) -> dg.AssetsDefinition:
    """A test-only stand-in for the `crops` stage that returns ``df`` for any scene (with the stage's
    backfill policy: a job over assets of different policies makes Dagster warn)."""

    @dg.asset(name="crops", partitions_def=scene_partitions, group_name="perception",
              backfill_policy=crops_stage.backfill_policy)
    def crops() -> pd.DataFrame:
        return df

    return crops


# --- pure helpers of the asset --------------------------------------------------------------


@pytest.mark.parametrize("bad", [None, b"", b"not a jpeg", to_jpeg(Image.new("RGB", (64, 64)))[:200]])
def test_undecodable_crop_names_scene_and_detection(bad):
    with pytest.raises(ConceptmineError, match="scene-x: crop det-7"):
        decode_crop(bad, "scene-x", "det-7")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_vectors_are_refused(value):
    vectors = np.eye(3, dtype=np.float32)
    vectors[1, 2] = value
    with pytest.raises(ConceptmineError, match=r"scene-x: 1 embedding.*det-b"):
        check_finite(vectors, ["det-a", "det-b", "det-c"], "scene-x")
    check_finite(np.eye(3, dtype=np.float32), ["det-a", "det-b", "det-c"], "scene-x")


# --- the asset ------------------------------------------------------------------------------


def _run(crops: pd.DataFrame, embedder: EmbedderResource, store, instance):
    resources = {"io_manager": ParquetIOManager(base_path=str(store)), "embedder": embedder}
    return materialize_scene([crops_asset(crops), embeddings], REAL_SCENE, instance, resources)


def test_embeddings_materialise_and_rerun_identically(crops_df, offline, store, instance):
    result = _run(crops_df, offline, store, instance)
    assert result.success
    path = store / "embeddings" / f"{REAL_SCENE}.parquet"
    first = pq.read_table(path)
    assert first.schema.field("embedding").type == pa.list_(pa.float32(), 1280)
    assert first.num_rows == len(crops_df)
    assert first.column("detection_id").to_pylist() == crops_df["detection_id"].tolist()
    assert set(first.column("model_id").to_pylist()) == {offline.image_model_id}
    vectors = np.asarray(first.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    meta = result.asset_materializations_for_node("embeddings")[0].metadata
    assert meta["num_embeddings"].value == len(crops_df) and meta["dim"].value == 1280
    assert meta["model_id"].value == offline.image_model_id and meta["ms_per_crop"].value > 0

    assert _run(crops_df, offline, store, instance).success
    assert pq.read_table(path).equals(first)
    counts = StoreViews(base_path=str(store)).query(
        "select class_name, count(*) as n from embeddings group by class_name order by class_name"
    )
    assert dict(zip(counts["class_name"], counts["n"])) == crops_df["class_name"].value_counts().to_dict()


def test_empty_crops_give_an_empty_typed_partition(store, instance):
    empty = pd.DataFrame(columns=CROPS.names)
    assert _run(empty, tiny_twin(), store, instance).success
    table = pq.read_table(store / "embeddings" / f"{REAL_SCENE}.parquet")
    assert table.num_rows == 0
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 64)


class NaNEmbedder(OpenClipEmbedder):
    """Returns NaN for the second crop of each batch (a model gone numerically wrong)."""

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        vectors = super().encode_images(images)
        vectors[1] = np.nan
        return vectors


def test_nan_vector_fails_naming_scene_and_detection(crops_df, store, instance):
    twin = tiny_twin()
    nan_embedder = NaNEmbedder(**twin.model_dump())
    with pytest.raises(ConceptmineError, match=rf"scene {REAL_SCENE}: 1 embedding.*{crops_df['detection_id'][1]}"):
        _run(crops_df.head(3), nan_embedder, store, instance)
    assert not (store / "embeddings").exists()
