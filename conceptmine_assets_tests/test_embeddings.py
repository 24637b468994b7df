"""The embedder resource (offline real models, tiny open_clip twin) and the `embeddings` asset.

`crops` is another stage; these tests feed `embeddings` from a test-only `crops` asset that
returns crops cut from the real slice with boxes projected from its 3D annotations.
"""

import io

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conceptmine_assets.assets.embeddings import check_finite, decode_crop, embeddings
from conceptmine_assets.errors import ConceptmineError, ModelLoadError
from conceptmine_assets.partitions import scene_partitions
from conceptmine_assets.resources.devices import resolve_device, torch_dtype
from conceptmine_assets.resources.embedder import EmbedderResource
from conceptmine_assets.resources.offline_embedder import OfflineEmbedder
from conceptmine_assets.resources.open_clip_embedder import OpenClipEmbedder, load_open_clip
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.resources.storage import StoreViews, ParquetIOManager
from conceptmine_assets.schemas import CROPS
from conceptmine_assets_tests.helpers import REAL_SCENE, REAL_SLICE, materialize_scene, require, tiny_clip_config_path

CLASS_NAMES = {"vehicle.car": "car", "vehicle.truck": "truck", "human.pedestrian.adult": "pedestrian"}
MIN_SIDE_PX = 30  # smaller boxes say little about the object
# Hand-picked asphalt patches (x1, y1, x2, y2) with no object in them.
ROAD_PATCHES = {"CAM_FRONT": [(900, 700, 1300, 860), (100, 760, 500, 880)], "CAM_BACK": [(400, 650, 900, 800)]}


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _crop_row(sd: dict, sample_token: str, det_id: str, class_name: str, box: tuple, image: Image.Image) -> dict:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    return {
        "detection_id": det_id,
        "scene_name": REAL_SCENE,
        "sample_token": sample_token,
        "sample_data_token": sd["token"],
        "channel": sd["channel"],
        "class_name": class_name,
        "confidence": 1.0,
        "x1": float(box[0]),
        "y1": float(box[1]),
        "x2": float(box[2]),
        "y2": float(box[3]),
        "crop_x1": x1,
        "crop_y1": y1,
        "crop_x2": x2,
        "crop_y2": y2,
        "image_jpeg": _jpeg(image.crop((x1, y1, x2, y2))),
        "lidar_points": None,
        "lidar_median_depth": None,
        "brightness": None,
        "overexposed_frac": None,
        "dark_frac": None,
        "blur_laplacian_var": None,
    }


def real_slice_crops() -> pd.DataFrame:
    """Crops-shaped rows: fully visible cars/trucks/pedestrians of CAM_FRONT and CAM_BACK
    (2D boxes = projected 3D annotation corners) plus a few road patches (class ``road``)."""
    from nuscenes.utils.geometry_utils import BoxVisibility, view_points

    nusc = NuScenesResource(dataroot=str(require(REAL_SLICE))).nusc
    sample = nusc.sample[0]
    rows = []
    for channel in ("CAM_FRONT", "CAM_BACK"):
        sd = nusc.get("sample_data", sample["data"][channel])
        path, boxes, intrinsic = nusc.get_sample_data(sd["token"], box_vis_level=BoxVisibility.ANY)
        image = Image.open(path).convert("RGB")
        for box in boxes:
            ann = nusc.get("sample_annotation", box.token)
            if box.name not in CLASS_NAMES or ann["visibility_token"] != "4":
                continue
            corners = view_points(box.corners(), np.asarray(intrinsic), normalize=True)[:2]
            x1, y1 = np.maximum(corners.min(axis=1), 0)
            x2, y2 = np.minimum(corners.max(axis=1), image.size)
            if min(x2 - x1, y2 - y1) >= MIN_SIDE_PX:
                rows.append(_crop_row(sd, sample["token"], box.token, CLASS_NAMES[box.name], (x1, y1, x2, y2), image))
        for i, patch in enumerate(ROAD_PATCHES[channel]):
            rows.append(_crop_row(sd, sample["token"], f"{sd['token']}-road{i}", "road", patch, image))
    return pd.DataFrame(rows, columns=CROPS.names)


def crops_asset(df: pd.DataFrame) -> dg.AssetsDefinition:
    """A test-only stand-in for the `crops` stage that returns ``df`` for any scene."""

    @dg.asset(name="crops", partitions_def=scene_partitions, group_name="perception")
    def crops() -> pd.DataFrame:
        return df

    return crops


def tiny_twin(**overrides) -> OpenClipEmbedder:
    """A random-init (seeded) 64-d open_clip twin from the packaged tiny config."""
    config = {"model": "tiny_clip", "pretrained": None, "model_config_path": tiny_clip_config_path(), "device": "cpu"}
    return OpenClipEmbedder(**{**config, **overrides})


def cosine_block(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a @ b.T


@pytest.fixture(scope="module")
def crops_df() -> pd.DataFrame:
    return real_slice_crops()


@pytest.fixture(scope="module")
def offline() -> EmbedderResource:
    return OfflineEmbedder(device="cpu")


def _images(df: pd.DataFrame) -> list[Image.Image]:
    return [decode_crop(b, REAL_SCENE, d) for b, d in zip(df["image_jpeg"], df["detection_id"])]


# --- offline real profile -------------------------------------------------------------------


def test_offline_image_features_separate_cars_from_road(crops_df, offline):
    cars = crops_df[crops_df["class_name"] == "car"]
    road = crops_df[crops_df["class_name"] == "road"]
    assert len(cars) >= 3 and len(road) >= 3
    car_vecs, road_vecs = offline.encode_images(_images(cars)), offline.encode_images(_images(road))
    assert car_vecs.dtype == np.float32 and car_vecs.shape == (len(cars), 1280) == (len(cars), offline.load().image_dim)
    np.testing.assert_allclose(np.linalg.norm(car_vecs, axis=1), 1.0, atol=1e-5)
    car_car = cosine_block(car_vecs, car_vecs)[np.triu_indices(len(cars), k=1)]
    car_road = cosine_block(car_vecs, road_vecs)
    assert car_car.mean() > car_road.mean() + 0.2, (car_car.mean(), car_road.mean())
    assert car_car.min() > car_road.max(), (car_car.min(), car_road.max())
    assert offline.image_model_id.startswith("offline:mobilenetv2-imagenet@")


def test_offline_text_features_rank_related_concepts_first(offline):
    truck, construction, bicycle = offline.encode_texts(
        ["a truck with an open cargo bed", "construction vehicle", "a bicycle leaning on a wall"]
    )
    assert truck.shape == (384,) and truck.dtype == np.float32
    np.testing.assert_allclose([np.linalg.norm(v) for v in (truck, construction, bicycle)], 1.0, atol=1e-5)
    assert truck @ construction > truck @ bicycle + 0.1, (truck @ construction, truck @ bicycle)
    assert not offline.shared_space and offline.load().text_dim == 384
    assert offline.text_model_id.startswith("offline:all-MiniLM-L6-v2@")


def test_offline_batches_do_not_change_vectors(crops_df, offline):
    images = _images(crops_df.head(5))
    whole = offline.encode_images(images)
    batched = offline.model_copy(update={"batch_size": 2}).encode_images(images)
    np.testing.assert_allclose(whole, batched, atol=1e-5)


# --- tiny open_clip twin --------------------------------------------------------------------


def test_tiny_open_clip_twin_runs_the_open_clip_path(crops_df):
    twin = tiny_twin()
    images = _images(crops_df.head(4))
    vecs = twin.encode_images(images)
    texts = twin.encode_texts(["a parked truck", "a traffic cone", "a parked truck"])
    assert twin.shared_space
    assert vecs.shape == (4, 64) and texts.shape == (3, 64)
    assert vecs.dtype == np.float32 and texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(np.vstack([vecs, texts]), axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(texts[0], texts[2], atol=1e-6)
    assert not np.allclose(texts[0], texts[1])
    enc = twin.load()
    assert enc.device == "cpu" and enc.dtype == "fp32"
    params = [p for m in enc.modules for p in m.parameters()]
    assert params and all(p.dtype == torch.float32 and p.device.type == "cpu" for p in params)
    assert twin.image_model_id == twin.text_model_id
    assert twin.image_model_id.startswith("open_clip:tiny_clip#cfg/random-init(seed=0)@")
    assert twin.encode_images([]).shape == (0, 64)


def test_tiny_twin_random_init_is_reproducible(crops_df):
    images = _images(crops_df.head(2))
    first = tiny_twin().encode_images(images)
    load_open_clip.cache_clear()  # force a fresh model build
    np.testing.assert_array_equal(first, tiny_twin().encode_images(images))


def _save_seeded_tiny_checkpoint(path, seed: int) -> None:
    import open_clip

    open_clip.add_model_config(tiny_clip_config_path())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.save(open_clip.create_model("tiny_clip").state_dict(), path)


def test_local_checkpoint_is_loaded_and_its_content_is_the_identity(tmp_path, crops_df):
    images = _images(crops_df.head(2))
    ckpt = tmp_path / "tiny.pt"
    _save_seeded_tiny_checkpoint(ckpt, seed=1)
    from_file = tiny_twin(pretrained=str(ckpt))
    first_id, first = from_file.image_model_id, from_file.encode_images(images)
    assert first_id.startswith("open_clip:tiny_clip#cfg/tiny.pt@")
    assert not np.allclose(first, tiny_twin().encode_images(images))  # not the seed-0 random init
    _save_seeded_tiny_checkpoint(ckpt, seed=2)  # same path, new content
    assert from_file.image_model_id != first_id
    assert not np.allclose(from_file.encode_images(images), first)


def test_missing_checkpoint_path_names_it(tmp_path):
    missing = tmp_path / "no-such-checkpoint.pt"
    with pytest.raises(ModelLoadError, match="no-such-checkpoint.pt"):
        tiny_twin(pretrained=str(missing)).encode_images([Image.new("RGB", (8, 8))])


def test_missing_model_config_names_it(tmp_path):
    missing = tmp_path / "tiny_clip.json"
    with pytest.raises(ModelLoadError, match=str(missing)):
        tiny_twin(model_config_path=str(missing)).encode_texts(["x"])


@pytest.mark.parametrize(
    ("device", "precision", "message"),
    [("tpu", "fp32", "unknown device"), ("cpu", "fp16", "fp16 needs a GPU")]
    + ([] if torch.cuda.is_available() else [("cuda:0", "fp32", "no CUDA device")]),
)
def test_unusable_device_or_precision_is_a_clear_error(device, precision, message):
    with pytest.raises(ModelLoadError, match=message):
        torch_dtype(precision, resolve_device(device))


def test_auto_device_follows_torch():
    assert resolve_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")


# --- pure helpers of the asset --------------------------------------------------------------


@pytest.mark.parametrize("bad", [None, b"", b"not a jpeg", _jpeg(Image.new("RGB", (64, 64)))[:200]])
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
