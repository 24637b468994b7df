"""Free-text crop search: exact ranking, the persisted index against brute force (flat and IVF,
both modes), staleness, errors, the real offline text model and the CLI."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from upath import UPath

from conceptmine_assets.assets.search_index import SearchIndexConfig, build
from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.lib.search import HIT_COLUMNS, rank_by_similarity
from conceptmine_assets.resources.embedder import EmbedderResource
from conceptmine_assets.resources.offline_embedder import OfflineEmbedder
from conceptmine_assets.resources.search_index import SearchIndexResource, search_crops
from conceptmine_assets.resources.store_sql import StoredTable, stored_tables
from conceptmine_assets.schemas import CAPTIONS, CONCEPT_SCORES, EMBEDDINGS
from conceptmine_assets_tests.helpers import write_table

# ---------------------------------------------------------------- exact ranking (the reference)


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


# ---------------------------------------------------------------- a small random store


class FakeEmbedder:
    """Duck-typed embedder: text vectors from a table, or seeded random ones (counts encoded texts)."""

    def __init__(self, shared_space: bool, vectors: dict[str, list[float]] | None = None, dim: int = 3,
                 image_model_id: str = "fake-image", text_model_id: str = "fake-text"):
        self.shared_space, self.vectors, self.dim = shared_space, vectors or {}, dim
        self.image_model_id, self.text_model_id = image_model_id, text_model_id
        self.encoded: list[str] = []

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        self.encoded += list(texts)
        rows = [np.asarray(self.vectors[t], dtype=np.float32) if t in self.vectors else
                np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(self.dim).astype(np.float32) for t in texts]
        return np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)


def seed(store: Path, crops: list[tuple], image_model="fake-image", text_model="fake-text") -> None:
    """crops: (scene, detection_id, class, caption, image vector, caption vector)."""
    frame = pd.DataFrame(crops, columns=["scene_name", "detection_id", "class_name", "caption", "image", "text"])
    for scene, part in frame.groupby("scene_name"):
        keys = part[["detection_id", "scene_name", "class_name"]].reset_index(drop=True)
        keys["sample_token"], keys["sample_data_token"], keys["channel"] = "s-" + scene, "sd", "CAM_FRONT"
        emb = keys.assign(model_id=image_model, embedding=[np.asarray(v, np.float32) for v in part["image"]])
        write_table(store, "embeddings", emb[EMBEDDINGS.names], scene)
        cap = keys.assign(caption=part["caption"].to_numpy(), text_model_id=text_model, status="ok", attempts=1,
                          latency_s=0.0, caption_embedding=[np.asarray(v, np.float32) for v in part["text"]])
        write_table(store, "captions", cap.reindex(columns=CAPTIONS.names).astype({"vlm_class": object}), scene)
        scores = keys.assign(caption=part["caption"].to_numpy(), group="common", top_concept=part["class_name"].to_numpy())
        scores = scores.reindex(columns=CONCEPT_SCORES.names).astype(object)
        scores["concept_names"] = [["car"]] * len(scores)
        scores["concept_scores"] = [np.ones(1, np.float32)] * len(scores)
        write_table(store, "concept_scores", scores, scene)


def random_crops(n_scenes=3, per_scene=120, dim=16, n_captions=9, seed_=0) -> list[tuple]:
    rng = np.random.default_rng(seed_)
    caption_vectors = rng.standard_normal((n_captions, dim))
    rows = []
    for s in range(n_scenes):
        for i in range(per_scene):
            c = int(rng.integers(n_captions))
            rows.append((f"scene-{s:02d}", f"d{s:02d}-{rng.integers(1e9):09d}", "car", f"caption {c}",
                         rng.standard_normal(dim), caption_vectors[c]))
    return rows


def tables(store: Path) -> list[StoredTable]:
    """embeddings, captions, concept_scores as the IO manager hands them to search_index."""
    found = stored_tables(str(store))
    return [found.get(name, StoredTable(name, (), store=str(store))) for name in ("embeddings", "captions", "concept_scores")]


def index(store: Path, shared_space: bool = True, **config) -> SearchIndexResource:
    resource = SearchIndexResource(base_path=str(store))
    resource.publish(build(*tables(store), shared_space, SearchIndexConfig(**config)))
    return resource


def brute_force(crops: list[tuple], query: np.ndarray, k: int, column: int) -> list[str]:
    ids = np.array([c[1] for c in crops], dtype=object)
    order, _ = rank_by_similarity(query, np.stack([c[column] for c in crops]), ids, k)
    return ids[order].tolist()


@pytest.mark.parametrize("config", [{}, {"exact_max_rows": 10, "codec": "Flat", "nlist": 6, "nprobe": 6}])
def test_index_equals_brute_force_in_both_modes(store, config):
    crops = random_crops()
    seed(store, crops)
    resource = index(store, **config)
    rng = np.random.default_rng(1)
    for _ in range(5):
        query = rng.standard_normal(16).astype(np.float32)
        embedder = FakeEmbedder(True, {"q": query}, dim=16)
        result, stale = search_crops(resource, embedder, "q", k=12)
        assert result.mode == "image_embedding" and not stale
        assert result.hits["detection_id"].tolist() == brute_force(crops, query, 12, 4)
        assert list(result.hits.columns) == HIT_COLUMNS and result.hits["rank"].tolist() == list(range(1, 13))
        result, _ = search_crops(resource, FakeEmbedder(False, {"q": query}, dim=16), "q", k=50)
        assert result.mode == "caption_text" and result.num_candidates == len(crops)
        assert result.hits["detection_id"].tolist() == brute_force(crops, query, 50, 5)
        assert embedder.encoded == ["q"]  # only the query is encoded: captions come from the index


def test_ivf_index_is_approximate_but_deterministic(store):
    seed(store, random_crops(per_scene=200))
    first = index(store, exact_max_rows=10, nlist=8, nprobe=2)
    files = {p.name: p.read_bytes() for p in (UPath(store) / "search_index").rglob("*") if p.is_file()}
    manifest = first.load().manifest["modes"]["image_embedding"]
    assert manifest["index"] == "IVF8,SQfp16" and manifest["rows"] == 600
    (UPath(store) / "search_index" / "CURRENT").unlink()  # force a rebuild: byte-identical files
    index(store, exact_max_rows=10, nlist=8, nprobe=2)
    again = {p.name: p.read_bytes() for p in (UPath(store) / "search_index").rglob("*") if p.is_file()}
    assert again == files


def test_stale_index_says_so_and_errors_are_clear(store, tmp_path):
    crops = random_crops(n_scenes=2, per_scene=10)
    with pytest.raises(ConceptmineError, match="materialise the `search_index`"):
        search_crops(SearchIndexResource(base_path=str(store)), FakeEmbedder(True, dim=16), "q")
    seed(store, crops)
    resource = index(store)
    seed(store, [c for c in crops if c[0] == "scene-01"])  # rewrite one scene's files
    _, stale = search_crops(resource, FakeEmbedder(True, dim=16), "q", k=3)
    assert any(line.startswith("embeddings: 1 scene file(s) changed") for line in stale)
    with pytest.raises(ConceptmineError, match="another-model"):
        search_crops(resource, FakeEmbedder(True, dim=16, image_model_id="another-model"), "q")
    with pytest.raises(ConceptmineError, match="empty"):
        search_crops(resource, FakeEmbedder(True, dim=16), "   ")
    with pytest.raises(ConceptmineError, match="k must be at least 1"):
        search_crops(resource, FakeEmbedder(True, dim=16), "q", k=0)
    index(store, shared_space=False)
    with pytest.raises(ConceptmineError, match="no image_embedding index"):
        search_crops(resource, FakeEmbedder(True, dim=16), "q")
    with pytest.raises(ConceptmineError, match="reads `captions` but nothing is stored"):
        build(*tables(tmp_path / "empty"), False, SearchIndexConfig())


# ---------------------------------------------------------------- the real offline text model and the CLI

REAL_CAPTIONS = [
    ("r1", "pedestrian", "a person pushing a shopping cart"),
    ("r2", "pedestrian", "a pedestrian crossing the road"),
    ("r3", "truck", "a parked truck with an open cargo bed"),
    ("r4", "traffic_cone", "an orange traffic cone"),
]


@pytest.fixture(scope="module")
def offline_embedder() -> EmbedderResource:
    return OfflineEmbedder(device="cpu")


@pytest.fixture
def real_store(store, offline_embedder) -> Path:
    texts = offline_embedder.encode_texts([c for _, _, c in REAL_CAPTIONS])
    seed(store, [("scene-r", d, cls, cap, [1.0, 0.0], vec) for (d, cls, cap), vec in zip(REAL_CAPTIONS, texts)],
         image_model=offline_embedder.image_model_id, text_model=offline_embedder.text_model_id)
    index(store, shared_space=False)
    return store


@pytest.mark.real_model
@pytest.mark.parametrize(
    "query, best", [("someone pushing a cart", "r1"), ("a delivery truck", "r3"), ("a cone on the street", "r4")]
)
def test_offline_text_model_finds_the_matching_caption(real_store, offline_embedder, query, best):
    result, _ = search_crops(SearchIndexResource(base_path=str(real_store)), offline_embedder, query, k=4)
    assert result.mode == "caption_text"
    assert result.hits["detection_id"].iloc[0] == best
    assert result.hits["score"].iloc[0] - result.hits["score"].iloc[1] > 0.05


@pytest.mark.real_model
def test_cli_search_prints_mode_and_table(real_store, monkeypatch, capsys):
    from conceptmine_assets import cli

    monkeypatch.setenv("CONCEPTMINE_STORE", str(real_store))
    monkeypatch.setenv("CONCEPTMINE_PROFILE", "offline")
    assert cli.main(["search", "a person pushing a cart", "-k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("mode: caption_text")
    assert out[1].split() == HIT_COLUMNS
    assert len(out) == 4 and " r1 " in out[2] and "shopping cart" in out[2]


def test_caption_mode_also_matches_class_and_top_concept_words(store):
    """A crop is listed under its caption and its class / top-concept words: it ranks by its best
    text, and appears once."""
    words = {"caption 0": [1.0, 0.0, 0.0], "caption 1": [0.0, 1.0, 0.0], "truck": [0.6, 0.0, 0.8],
             "car": [0.0, 0.6, 0.8]}
    crops = [("scene-00", "d1", "truck", "caption 0", [1.0, 0.0, 0.0], words["caption 0"]),
             ("scene-00", "d2", "car", "caption 1", [0.0, 1.0, 0.0], words["caption 1"]),
             ("scene-00", "d3", "car", "car", [0.0, 1.0, 0.0], words["car"])]
    seed(store, crops)
    embedder = FakeEmbedder(False, {**words, "q": [0.0, 0.0, 1.0]}, dim=3)
    resource = SearchIndexResource(base_path=str(store))
    resource.publish(build(*tables(store), False, SearchIndexConfig(), embedder))
    assert sorted(embedder.encoded) == ["truck"]  # "car" is d3's caption already: its stored vector serves
    result, _ = search_crops(resource, embedder, "q", k=3)
    # d1 and d2 match "q" only through their class word (0.8), d3 through its caption "car" (0.8)
    assert sorted(result.hits["detection_id"]) == ["d1", "d2", "d3"]
    assert result.hits["score"].tolist() == pytest.approx([0.8, 0.8, 0.8])
    result, _ = search_crops(resource, FakeEmbedder(False, {"q": [1.0, 0.0, 0.0]}, dim=3), "q", k=3)
    # d1 matches by its caption (1.0) and its class word (0.6): listed once, with its best text
    assert result.hits["detection_id"].iloc[0] == "d1" and result.hits["score"].iloc[0] == pytest.approx(1.0)
    assert result.hits["detection_id"].is_unique and len(result.hits) == 3


@pytest.mark.real_model
def test_offline_search_finds_a_crop_by_its_detector_class_and_concept(store, offline_embedder):
    """A VLM caption that never says "cat": the class and top-concept words still rank it first."""
    rows = [("c1", "animal", "animal_on_road", "a small furry creature sitting on the asphalt"),
            ("t1", "traffic_light", "traffic_light", "traffic light"),
            ("p1", "pedestrian", "pedestrian", "a person walking on the road"),
            ("k1", "car", "car", "a dark car on the road")]
    texts = offline_embedder.encode_texts([r[3] for r in rows])
    seed(store, [("scene-r", d, cls, cap, [1.0, 0.0], vec) for (d, cls, _, cap), vec in zip(rows, texts)],
         image_model=offline_embedder.image_model_id, text_model=offline_embedder.text_model_id)
    frame = pd.read_parquet(store / "concept_scores" / "scene-r.parquet")
    frame["top_concept"] = [r[2] for r in rows]
    write_table(store, "concept_scores", frame, "scene-r")
    resource = SearchIndexResource(base_path=str(store))
    resource.publish(build(*tables(store), False, SearchIndexConfig(), offline_embedder))
    result, _ = search_crops(resource, offline_embedder, "a cat on the road", k=4)
    assert result.hits["detection_id"].iloc[0] == "c1"


def test_label_words_need_the_captions_text_model(store):
    """An embedder of another text space than the stored captions cannot add class words: the
    index is built from the captions alone and says why."""
    seed(store, [("scene-00", "d1", "truck", "caption 0", [1.0, 0.0, 0.0], [1.0, 0.0, 0.0])], text_model="model-a")
    other = FakeEmbedder(False, {"truck": [0.0, 1.0, 0.0]}, dim=3)  # text_model_id "fake-text" != "model-a"
    out = build(*tables(store), False, SearchIndexConfig(), other)
    entry = out.manifest["modes"]["caption_text"]
    assert entry["labels"] == 0 and "encoded with model-a" in entry["labels_skipped"] and other.encoded == []
    assert entry["crops"] == 1
