"""The embedder resources on crops of the real slice: the offline real profile (MobileNetV2 image,
MiniLM text features), the tiny open_clip twin and local checkpoints, and device / precision errors."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conceptmine_assets.assets.embeddings import decode_crop
from conceptmine_assets.errors import ModelLoadError
from conceptmine_assets.resources.devices import resolve_device, torch_dtype
from conceptmine_assets.resources.open_clip_embedder import load_open_clip
from conceptmine_assets_tests.helpers import REAL_SCENE, tiny_clip_config_path, tiny_twin


def cosine_block(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a @ b.T


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
