"""The `concept_scores` asset (MiniLM text-only offline profile; tiny open_clip twin for text+image)."""

import io
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conceptmine_assets.assets.concepts import concept_scores
from conceptmine_assets.lib.concepts import adaptive_weight_text, cosine, max_logit
from conceptmine_assets.lib.vocabulary import load_vocabulary
from conceptmine_assets.partitions import scene_partitions
from conceptmine_assets.resources.embedder import EmbedderResource
from conceptmine_assets.resources.offline_embedder import OfflineEmbedder
from conceptmine_assets.resources.open_clip_embedder import OpenClipEmbedder
from conceptmine_assets.resources.storage import ParquetIOManager
from conceptmine_assets.resources.vocabulary import VocabularyResource
from conceptmine_assets.schemas import CAPTIONS, CONCEPT_SCORES, EMBEDDINGS
from conceptmine_assets_tests.helpers import (
    USER_VOCABULARY,
    materialize_scene,
    tiny_clip_config_path,
    write_table,
    write_vocabulary,
)

SCENE = "scene-test-0001"


def _write_table(store: Path, asset: str, df: pd.DataFrame) -> None:
    write_table(store, asset, df, SCENE)


KEYS = dict(scene_name=SCENE, sample_token="s0", sample_data_token="sd0", channel="CAM_FRONT")


def _captions(rows: list[tuple[str, str, str, str | None]], backend: str = "test", described: bool = True) -> pd.DataFrame:
    """rows: (detection_id, class_name, caption, vlm_class); ``described``: the caption is a description."""
    out = []
    for det, cls, caption, vlm in rows:
        out.append({**KEYS, "detection_id": det, "class_name": cls, "status": "ok" if vlm else "class_name",
                    "backend": backend, "model_id": "test", "raw_answer": None, "vlm_class": vlm,
                    "description": caption if described else None, "caption": caption, "error": None, "attempts": 1,
                    "latency_s": 0.0,
                    "text_model_id": "test", "caption_embedding": np.ones(4, np.float32)})
    df = pd.DataFrame(out, columns=CAPTIONS.names)
    df.attrs["vector_dims"] = {"caption_embedding": 4}
    return df


def _embeddings(ids: list[str], classes: list[str], vectors: np.ndarray, model_id: str) -> pd.DataFrame:
    df = pd.DataFrame({**{k: [v] * len(ids) for k, v in KEYS.items()}, "detection_id": ids, "class_name": classes,
                       "model_id": model_id,
                       "embedding": pd.Series(list(vectors.astype(np.float32)), dtype=object)})
    return df[EMBEDDINGS.names]


UPSTREAM = [dg.AssetSpec(name, partitions_def=scene_partitions) for name in ("captions", "embeddings")]


def _run(store: Path, instance, embedder: EmbedderResource, config: dict | None = None):
    config = dict(config or {})
    vocabulary = VocabularyResource(path=config.pop("vocabulary_path", None),
                                    extra_concepts=config.pop("extra_concepts", []))
    result = materialize_scene(
        [concept_scores, *UPSTREAM], SCENE, instance,
        {"io_manager": ParquetIOManager(base_path=str(store)), "embedder": embedder, "vocabulary": vocabulary},
        run_config={"ops": {"concept_scores": {"config": config}}},
        selection=[concept_scores],
    )
    assert result.success
    return result, pq.read_table(store / "concept_scores" / f"{SCENE}.parquet")


@pytest.fixture(scope="module")
def offline_embedder() -> EmbedderResource:
    return OfflineEmbedder(device="cpu")


def test_concept_scores_offline_text_only(store, instance, offline_embedder):
    caps = _captions([
        ("d1", "car", "a parked truck", None),
        ("d2", "car", "a red car", None),
        ("d3", "others", "an orange traffic cone on the road", None),
        ("d4", "car", "a big yellow machine", "construction_vehicle"),
    ])
    _write_table(store, "captions", caps)
    _write_table(store, "embeddings", _embeddings(["d1", "d2", "d3", "d4"], ["car"] * 4, np.eye(4, 8), "some-image-model"))
    result, table = _run(store, instance, offline_embedder, {"extra_concepts": ["mattress on the road"]})
    df = table.to_pandas().set_index("detection_id")
    assert table.schema.names == CONCEPT_SCORES.names
    assert set(df["score_mode"]) == {"text_only"} and set(df["weight_text"]) == {1.0}
    assert df.loc["d1", "top_concept"] == "truck"
    assert df.loc["d2", "top_concept"] == "car"
    assert df.loc["d3", "top_concept"] == "traffic_cone"
    assert df.loc["d4", "top_concept"] == "construction_vehicle"  # the VLM's class wins
    assert list(df["group"]) == ["rare", "common", "rare", "target"]  # d1: car detector, truck caption → rare
    vocab = load_vocabulary(extra=["mattress on the road"])
    assert set(df["vocabulary_version"]) == {vocab.identity}
    assert list(df.loc["d1", "concept_names"]) == vocab.names
    scores = np.asarray(df.loc["d1", "concept_scores"])
    assert scores.shape == (len(vocab.names),)
    assert df.loc["d1", "top_score"] == pytest.approx(scores.max(), abs=1e-6)
    # stored scores are the max-logit caption cosines, recomputed here independently for a few concepts
    caption = offline_embedder.encode_texts(["a red car"])
    for name in ("car", "truck", "traffic_cone"):
        prompts = offline_embedder.encode_texts(list(vocab.concept(name).prompts()))
        expected = float(cosine(caption, prompts).max())
        assert df.loc["d2", "concept_scores"][vocab.names.index(name)] == pytest.approx(expected, abs=1e-5)
    d2 = df.loc["d2"]
    assert d2["margin"] == pytest.approx(d2["top_score"] - d2["second_score"], abs=1e-6)
    assert pd.notna(d2["joint_label"]) == (d2["margin"] < 0.05)
    md = result.asset_materializations_for_node("concept_scores")[0].metadata
    assert md["num_vlm_overrides"].value == 1 and md["shared_space"].value is False


def test_a_detection_mapped_to_others_is_rare_never_common(store, instance, offline_embedder):
    """The detector rejected every class it maps (a rocket seen as a "boat" → others): a caption
    that happens to score a common concept highest ("a person") does not make it common."""
    caps = _captions([
        ("d1", "others", "a person", None),  # best concept: pedestrian (common) → "others", rare
        ("d2", "others", "an orange traffic cone on the road", None),  # a rare concept stays
        ("d3", "pedestrian", "a person", None),  # the same caption from a pedestrian detection: common
    ])
    _write_table(store, "captions", caps)
    _write_table(store, "embeddings", _embeddings(["d1", "d2", "d3"], ["x"] * 3, np.eye(3, 8), "some-image-model"))
    _, table = _run(store, instance, offline_embedder)
    df = table.to_pandas().set_index("detection_id")
    assert df.loc["d1", "top_concept"] == "others" and df.loc["d1", "group"] == "rare"
    assert df.loc["d1", "second_concept"] == "pedestrian"  # the best concept is still said
    assert df.loc["d2", "top_concept"] == "traffic_cone" and df.loc["d2", "group"] == "rare"
    assert df.loc["d3", "top_concept"] == "pedestrian" and df.loc["d3", "group"] == "common"


def _jpeg(color: tuple[int, int, int]) -> Image.Image:
    buf = io.BytesIO()
    Image.new("RGB", (48, 32), color).save(buf, format="JPEG")
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def test_concept_scores_shared_space_fuses_caption_and_crop(store, instance, tmp_path):
    embedder = tiny_clip()
    caps = _captions([("d1", "truck", "a parked truck", None), ("d2", "car", "a bicycle", None),
                      ("d3", "car", "a car", None)])
    crops = embedder.encode_images([_jpeg((200, 30, 30)), _jpeg((30, 200, 30)), _jpeg((30, 30, 200))])
    _write_table(store, "captions", caps)
    # d3 has no embedding: it must fall back to text only
    _write_table(store, "embeddings", _embeddings(["d1", "d2"], ["truck", "car"], crops[:2], embedder.image_model_id))
    vocab_path = write_vocabulary(tmp_path, USER_VOCABULARY)  # a user vocabulary, passed by path
    _, table = _run(store, instance, embedder, {"adaptive": True, "vocabulary_path": str(vocab_path)})
    df = table.to_pandas().set_index("detection_id")
    assert list(df["score_mode"]) == ["text+image", "text+image", "text_only"]
    vocab = load_vocabulary(vocab_path)
    assert set(df["vocabulary_version"]) == {vocab.identity}
    prompts, owners = vocab.prompt_table("{}")
    p = embedder.encode_texts(prompts)
    cap = embedder.encode_texts(["a parked truck", "a bicycle"])
    w = adaptive_weight_text(np.sum(cap * crops[:2], axis=1))
    expected = w[:, None] * max_logit(cap @ p.T, owners, len(vocab.names)) + (1 - w[:, None]) * max_logit(
        crops[:2] @ p.T, owners, len(vocab.names))
    np.testing.assert_allclose(df["weight_text"].iloc[:2], w, atol=1e-5)
    np.testing.assert_allclose(np.stack(df["concept_scores"].iloc[:2]), expected, atol=1e-4)
    assert df.loc["d3", "weight_text"] == 1.0
    assert df.loc["d1", "group"] == "target"


def tiny_clip() -> OpenClipEmbedder:
    return OpenClipEmbedder(model="tiny_clip", pretrained=None, model_config_path=tiny_clip_config_path(), device="cpu")


def _vlm_scene(store: Path, embedder: OpenClipEmbedder, backend: str, described: bool = True) -> np.ndarray:
    caps = _captions([("d1", "car", "a parked truck", "truck"), ("d2", "car", "a shopping cart", "others")],
                     backend=backend, described=described)
    crops = embedder.encode_images([_jpeg((200, 30, 30)), _jpeg((30, 200, 30))])
    _write_table(store, "captions", caps)
    _write_table(store, "embeddings", _embeddings(["d1", "d2"], ["car", "car"], crops, embedder.image_model_id))
    return adaptive_weight_text(np.sum(embedder.encode_texts(["a parked truck", "a shopping cart"]) * crops, axis=1))


def test_vlm_captions_get_the_adaptive_weight_by_default(store, instance):
    embedder = tiny_clip()
    adaptive = _vlm_scene(store, embedder, "qwen2_vl")
    df = _run(store, instance, embedder)[1].to_pandas().set_index("detection_id")
    np.testing.assert_allclose(df["weight_text"], adaptive, atol=1e-5)
    assert (df.loc["d2", "top_concept"], df.loc["d2", "group"], df.loc["d2", "top_superclass"]) == ("others", "rare", "others")
    assert df.loc["d2", "top_score"] == pytest.approx(max(df.loc["d2", "concept_scores"]), abs=1e-6)
    _vlm_scene(store, embedder, "template")  # not a VLM: the fixed weight
    assert set(_run(store, instance, embedder)[1].column("weight_text").to_pylist()) == {0.5}


def test_a_vlm_answer_without_description_gets_text_weight_zero(store, instance):
    embedder = tiny_clip()
    _vlm_scene(store, embedder, "openai", described=False)
    result, table = _run(store, instance, embedder)
    assert table.column("weight_text").to_pylist() == [0.0, 0.0]
    assert result.asset_materializations_for_node("concept_scores")[0].metadata["num_label_only_captions"].value == 2


def test_concept_scores_refuses_embeddings_of_another_model(store, instance):
    embedder = tiny_clip()
    _write_table(store, "captions", _captions([("d1", "truck", "a truck", None)]))
    _write_table(store, "embeddings", _embeddings(["d1"], ["truck"], np.ones((1, 64)) / 8, "open_clip:ViT-B-32/other"))
    result = materialize_scene(
        [concept_scores, *UPSTREAM], SCENE, instance,
        {"io_manager": ParquetIOManager(base_path=str(store)), "embedder": embedder, "vocabulary": VocabularyResource()},
        selection=[concept_scores], raise_on_error=False,
    )
    assert not result.success
    assert "re-materialise embeddings with the same embedder" in str(result.all_events)


def test_concept_scores_empty_scene(store, instance, offline_embedder):
    _write_table(store, "captions", _captions([]))
    empty = _embeddings([], [], np.zeros((0, 8)), "m")
    empty.attrs["vector_dims"] = {"embedding": 8}
    _write_table(store, "embeddings", empty)
    _, table = _run(store, instance, offline_embedder)
    assert table.num_rows == 0 and table.schema.names == CONCEPT_SCORES.names
