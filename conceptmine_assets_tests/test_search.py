"""Free-text crop search: ranking, both modes on hand-made vectors, the real text model, the CLI."""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from upath import UPath

from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.lib.search import HIT_COLUMNS, rank_by_similarity, search_crops
from conceptmine_assets.resources.embedder import EmbedderResource
from conceptmine_assets.resources.offline_embedder import OfflineEmbedder
from conceptmine_assets.resources.storage import DuckDBResource, atomic_write, to_arrow
from conceptmine_assets.schemas import CONCEPT_SCORES, EMBEDDINGS

SCENE = "scene-s"

# ---------------------------------------------------------------- ranking


@pytest.mark.parametrize(
    "query, k, expected",
    [
        ([1, 0], 3, ["a", "c", "b"]),  # c = (1, 1) unnormalised: cos 0.707 > b's 0
        ([0, 1], 2, ["b", "c"]),
        ([1, 1], 10, ["c", "a", "b"]),  # k above the row count: all rows
        ([-1, 0], 1, ["b"]),  # a: -1, b: 0, c: -0.707
    ],
)
def test_rank_by_similarity(query, k, expected):
    matrix = np.array([[2, 0], [0, 3], [1, 1]], dtype=np.float32)
    ids = np.array(["a", "b", "c"], dtype=object)
    order, scores = rank_by_similarity(np.array(query, dtype=np.float32), matrix, ids, k)
    assert ids[order].tolist() == expected
    assert np.all(np.diff(scores) <= 1e-12) and np.all(np.abs(scores) <= 1 + 1e-9)


def test_rank_ties_break_by_id_and_shapes_are_checked():
    matrix = np.ones((3, 2))
    order, _ = rank_by_similarity(np.array([1.0, 0.0]), matrix, np.array(["z", "b", "m"], dtype=object), 3)
    assert order.tolist() == [1, 2, 0]
    assert len(rank_by_similarity(np.array([1.0, 0.0]), np.zeros((0, 2)), np.array([]), 5)[0]) == 0
    with pytest.raises(ConceptmineError, match="dim 3"):
        rank_by_similarity(np.ones(3), matrix, np.array(["a", "b", "c"]), 1)


# ---------------------------------------------------------------- search_crops on hand-made vectors


class FakeEmbedder:
    """Duck-typed embedder whose text vectors are given by a table (counts encoded texts)."""

    def __init__(self, shared_space: bool, vectors: dict[str, list[float]], image_model_id: str = "fake-image"):
        self.shared_space = shared_space
        self.vectors = vectors
        self.image_model_id = image_model_id
        self.text_model_id = "fake-text"
        self.encoded: list[str] = []

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        self.encoded += list(texts)
        rows = [np.asarray(self.vectors[t], dtype=np.float32) for t in texts]
        return np.stack(rows) if rows else np.zeros((0, 3), np.float32)


CROPS = [  # detection_id, class, caption, image embedding
    ("d1", "pedestrian", "a person pushing a cart", [0.0, 1.0, 0.0]),
    ("d2", "pedestrian", "a pedestrian", [0.0, 0.0, 1.0]),
    ("d3", "car", "a pedestrian", [1.0, 0.0, 0.0]),
    ("d4", "truck", "a parked truck", [0.6, 0.8, 0.0]),
]
TEXT = {
    "a person pushing a cart": [0.0, 1.0, 0.0],
    "a pedestrian": [0.1, 0.9, 0.3],
    "a parked truck": [1.0, 0.0, 0.0],
    "shopping cart": [0.0, 0.9, 0.1],
}


def write(store: Path, asset: str, df: pd.DataFrame) -> None:
    table = to_arrow(df, asset, f"test {asset}")
    atomic_write(UPath(store) / asset / f"{SCENE}.parquet", lambda fh: pq.write_table(table, fh))


def seed(store: Path, model_id: str = "fake-image", crops=CROPS) -> None:
    keys = {"scene_name": SCENE, "sample_token": "s0", "sample_data_token": "sd0", "channel": "CAM_FRONT"}
    emb = pd.DataFrame([{**keys, "detection_id": d, "class_name": c, "model_id": model_id,
                         "embedding": np.asarray(v, dtype=np.float32)} for d, c, _, v in crops], columns=EMBEDDINGS.names)
    scores = pd.DataFrame({c: pd.Series([None] * len(crops), dtype=object) for c in CONCEPT_SCORES.names})
    for k, v in keys.items():
        scores[k] = v
    scores["detection_id"] = [d for d, *_ in crops]
    scores["class_name"] = [c for _, c, *_ in crops]
    scores["caption"] = [cap for _, _, cap, _ in crops]
    scores["group"] = ["common", "common", "common", "target"][: len(crops)]
    scores["top_concept"] = scores["class_name"]
    write(store, "embeddings", emb)
    write(store, "concept_scores", scores)


def test_shared_space_ranks_crop_image_embeddings(store):
    seed(store)
    embedder = FakeEmbedder(True, TEXT)
    result = search_crops(DuckDBResource(base_path=str(store)), embedder, "shopping cart", k=3)
    assert result.mode == "image_embedding" and "share one space" in result.describe()
    assert result.hits["detection_id"].tolist() == ["d1", "d4", "d2"]  # cos 0.994, 0.795, 0.110
    assert list(result.hits.columns) == HIT_COLUMNS and result.hits["rank"].tolist() == [1, 2, 3]
    assert result.hits["caption"].iloc[0] == "a person pushing a cart" and result.num_candidates == 4
    assert embedder.encoded == ["shopping cart"]  # captions are not encoded in this mode


def test_caption_mode_ranks_caption_text_and_encodes_each_caption_once(store):
    seed(store)
    embedder = FakeEmbedder(False, TEXT)
    result = search_crops(DuckDBResource(base_path=str(store)), embedder, "  shopping cart ", k=4)
    assert result.mode == "caption_text" and "spaces differ" in result.describe()
    # d2 and d3 share the caption "a pedestrian" (cos 0.97): tie broken by detection_id
    assert result.hits["detection_id"].tolist() == ["d1", "d2", "d3", "d4"]
    assert result.hits["score"].iloc[1] == pytest.approx(result.hits["score"].iloc[2])
    assert sorted(embedder.encoded) == sorted(["a person pushing a cart", "a pedestrian", "a parked truck", "shopping cart"])


def test_search_errors_are_clear(store, tmp_path):
    seed(store, model_id="another-model")
    duck = DuckDBResource(base_path=str(store))
    with pytest.raises(ConceptmineError, match="another-model"):
        search_crops(duck, FakeEmbedder(True, TEXT), "shopping cart")
    with pytest.raises(ConceptmineError, match="empty"):
        search_crops(duck, FakeEmbedder(False, TEXT), "   ")
    with pytest.raises(ConceptmineError, match="k must be at least 1"):
        search_crops(duck, FakeEmbedder(False, TEXT), "shopping cart", k=0)
    empty = DuckDBResource(base_path=str(tmp_path / "nothing"))
    with pytest.raises(ConceptmineError, match="no `embeddings` stored"):
        search_crops(empty, FakeEmbedder(True, TEXT), "shopping cart")
    with pytest.raises(ConceptmineError, match="no `concept_scores` stored"):
        search_crops(empty, FakeEmbedder(False, TEXT), "shopping cart")


# ---------------------------------------------------------------- the real offline text model and the CLI

REAL_CAPTIONS = [
    ("r1", "pedestrian", "a person pushing a shopping cart", [1, 0, 0]),
    ("r2", "pedestrian", "a pedestrian crossing the road", [1, 0, 0]),
    ("r3", "truck", "a parked truck with an open cargo bed", [1, 0, 0]),
    ("r4", "traffic_cone", "an orange traffic cone", [1, 0, 0]),
]


@pytest.fixture(scope="module")
def offline_embedder() -> EmbedderResource:
    return OfflineEmbedder(device="cpu")


@pytest.mark.real_model
@pytest.mark.parametrize(
    "query, best", [("someone pushing a cart", "r1"), ("a delivery truck", "r3"), ("a cone on the street", "r4")]
)
def test_offline_text_model_finds_the_matching_caption(store, offline_embedder, query, best):
    seed(store, crops=REAL_CAPTIONS)
    result = search_crops(DuckDBResource(base_path=str(store)), offline_embedder, query, k=4)
    assert result.mode == "caption_text"
    assert result.hits["detection_id"].iloc[0] == best
    assert result.hits["score"].iloc[0] - result.hits["score"].iloc[1] > 0.05


@pytest.mark.real_model
def test_cli_search_prints_mode_and_table(store, monkeypatch, capsys):
    from conceptmine_assets import cli

    seed(store, crops=REAL_CAPTIONS)
    monkeypatch.setenv("CONCEPTMINE_STORE", str(store))
    monkeypatch.setenv("CONCEPTMINE_PROFILE", "offline")
    assert cli.main(["search", "a person pushing a cart", "-k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("mode: caption_text")
    assert out[1].split() == HIT_COLUMNS
    assert len(out) == 4 and " r1 " in out[2] and "shopping cart" in out[2]
