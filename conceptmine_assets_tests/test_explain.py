"""Plots, clustering, cluster names, the gallery page, and both assets end to end on the real slice."""

import base64
import re
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from conceptmine_assets.assets.embedding_clusters import CLUSTER_COLUMNS, embedding_clusters
from conceptmine_assets.assets.gallery import gallery
from conceptmine_assets.lib.clustering import (
    density_clustering,
    format_names,
    kmeans_clustering,
    map_coordinates,
    member_names,
    partition_scores,
    text_names,
)
from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.lib import plots
from conceptmine_assets.lib.gallery import ITEM_COLUMNS, gallery_items, render_gallery, top_concepts, why_selected
from conceptmine_assets.lib.outliers import OutlierParams, fit_reference
from conceptmine_assets_tests.helpers import REAL_SCENE, pipeline_env, write_table
from conceptmine_assets_tests.store_helpers import materialize_global

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# ---------------------------------------------------------------- plots


def decode_png(markdown: str) -> bytes:
    match = re.fullmatch(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert match, markdown[:80]
    return base64.b64decode(match.group(1))


@pytest.mark.parametrize(
    "make",
    [
        lambda: plots.embedding_map(np.random.default_rng(0).normal(size=(30, 2)), ["common"] * 20 + ["target"] * 10,
                                    [i % 7 == 0 for i in range(30)], "map"),
        lambda: plots.cluster_map(np.random.default_rng(0).normal(size=(10, 2)), [0] * 5 + [-1] * 5, {0: "car"}, "c"),
        lambda: plots.score_histogram([0.2, 0.5, np.nan, 0.9], ["rare", "common", "common", "weird"]),
        lambda: plots.score_histogram([], []),
        lambda: plots.class_counts_plot(pd.DataFrame({"class_name": ["car", "truck"], "mined": [3, 2],
                                                      "random_mean": [2.5, 0.4], "random_std": [1.0, 0.5]})),
        lambda: plots.class_counts_plot(pd.DataFrame(columns=["class_name", "mined", "random_mean", "random_std"])),
    ],
)
def test_plots_render_to_inline_png(make):
    png = decode_png(plots.png_markdown(make(), "a [plot]"))
    assert png.startswith(PNG_MAGIC) and len(png) > 1000


# ---------------------------------------------------------------- clustering


def blobs(n: int = 60, centers: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    X, y = make_blobs(n_samples=n, centers=centers, n_features=8, cluster_std=0.3, center_box=(-10, 10),
                      random_state=seed)
    return X.astype(np.float32), y


def test_kmeans_picks_k_by_calinski_harabasz_on_known_blobs():
    X, y = blobs(centers=3)
    result = kmeans_clustering(X, k=None, k_min=2, k_max=6)
    assert result.params["k"] == 3
    assert adjusted_rand_score(y, result.labels) == pytest.approx(1.0)
    by_k = result.params["calinski_harabasz_by_k"]
    assert set(by_k) == {"2", "3", "4", "5", "6"} and max(by_k, key=by_k.get) == "3"
    assert result.calinski_harabasz == pytest.approx(by_k["3"], rel=1e-3)
    assert 0 < result.davies_bouldin < 0.5  # tight, well separated blobs


def test_kmeans_with_configured_k():
    X, _ = blobs(centers=3)
    result = kmeans_clustering(X, k=2)
    assert result.params == {"k": 2, "k_selection": "config"} and result.n_clusters == 2 and not result.notes


@pytest.mark.parametrize(
    "X, k, expected_k, note",
    [
        (np.zeros((0, 4)), None, 0, "too few"),
        (np.ones((1, 4)), None, 1, "too few"),
        (np.eye(2, 4), 3, 1, "too few"),
        (np.ones((6, 4)), None, 1, "1 distinct"),  # identical rows cannot be split
        (np.eye(4, 4), 5, 3, "k reduced from 5 to 3"),  # k capped at rows - 1
        (np.eye(4, 4), None, 3, "k range capped at 3"),
    ],
)
def test_kmeans_tiny_data_is_documented(X, k, expected_k, note):
    result = kmeans_clustering(np.asarray(X, np.float32), k=k, k_max=10)
    assert result.params["k"] == expected_k
    assert len(result.labels) == len(X)
    assert any(note in n for n in result.notes), result.notes
    if expected_k <= 1:
        assert (result.labels == 0).all() and result.calinski_harabasz is None and result.davies_bouldin is None


def test_hdbscan_finds_the_blobs_and_scores_without_noise():
    X, y = blobs(n=90, centers=3)
    result = density_clustering(X, "hdbscan", min_cluster_size=5)
    assert result.n_clusters == 3
    keep = result.labels != -1
    assert adjusted_rand_score(y[keep], result.labels[keep]) == pytest.approx(1.0)
    assert result.calinski_harabasz == pytest.approx(partition_scores(X, result.labels)[0])


def test_dbscan_and_density_edge_cases():
    X, _ = blobs(n=60, centers=2)
    assert density_clustering(X, "dbscan", eps=2.0, min_samples=3).n_clusters == 2
    allnoise = density_clustering(X, "dbscan", eps=1e-6, min_samples=3)
    assert allnoise.n_noise == 60 and allnoise.calinski_harabasz is None and allnoise.notes
    tiny = density_clustering(X[:2], "hdbscan")
    assert tiny.n_noise == 2 and "too few" in tiny.notes[0]
    capped = density_clustering(X[:4], "hdbscan", min_cluster_size=50)
    assert capped.params["min_cluster_size"] == 4 and "adjusted" in capped.notes[0]


def test_partition_scores_undefined_cases():
    X = np.arange(8, dtype=np.float32).reshape(4, 2)
    assert partition_scores(X, np.array([0, 0, 0, 0])) == (None, None)
    assert partition_scores(X, np.array([0, 1, 2, 3])) == (None, None)  # as many clusters as rows
    ch, db = partition_scores(X, np.array([0, 0, 1, -1]))  # noise left out: 3 rows in 2 clusters
    assert ch == pytest.approx(partition_scores(X[:3], np.array([0, 0, 1]))[0]) and db is not None


def test_member_names_are_shares_of_top_concepts():
    labels = np.array([0, 0, 0, 0, 1, 1, -1])
    concepts = pd.Series(["truck", "truck", "car", "bus", "pedestrian", None, "cone"])
    names = member_names(labels, concepts, n=2)
    assert names[0] == [("truck", 0.5), ("bus", 0.25)]  # ties by name
    assert names[1] == [("pedestrian", 0.5), ("unscored", 0.5)]
    assert names[-1] == [("cone", 1.0)]
    assert format_names(names[0]) == "truck 50%, bus 25%"


def test_text_names_pick_the_concept_nearest_the_centroid():
    prompts = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    owners = np.array([0, 0, 1, 2])  # truck has two prompts
    names = ["truck", "car", "cone"]
    X = np.array([[1, 0.1, 0], [0.9, 0, 0.1], [0, 0.2, 1], [0.1, 0, 0.9]], dtype=np.float32)
    out = text_names(X, np.array([0, 0, 1, 1]), prompts, owners, names, n=2)
    assert [n for n, _ in out[0]] == ["truck", "car"] and [n for n, _ in out[1]][0] == "cone"
    assert out[0][0][1] > 0.95
    assert format_names(out[0][:1], percent=False) == "truck 1.00"


def test_map_coordinates_reuse_the_reference_tsne_or_compute_one():
    X, _ = blobs(n=12, centers=2)
    ids = np.array([f"d{i:02d}" for i in range(12)], dtype=object)
    ref = fit_reference(X[:8], ids[:8], "m", OutlierParams(lof_k=3, knn_k=3))
    ref.tsne_index = np.array([5, 3, 0, 1, 2, 4, 6, 7])  # a stored map (t-SNE itself is slow; any 2-D points do)
    ref.tsne = np.random.default_rng(1).normal(size=(8, 2)).astype(np.float32)
    coords, source = map_coordinates(ids, X, ref, "m", 100, 5.0, 0)
    assert source.startswith("outlier_reference t-SNE (8 of 12")
    assert np.isfinite(coords[:8]).all() and np.isnan(coords[8:]).all()
    member = list(ref.member_ids[ref.tsne_index]).index("d03")
    np.testing.assert_allclose(coords[3], ref.tsne[member])
    with threadpool_limits(1, user_api="openmp"):  # t-SNE's OpenMP threads crawl on a busy 2-core machine
        coords, source = map_coordinates(ids, X, ref, "another-model", 100, 5.0, 0)  # other model: not reused
    assert source.startswith("t-SNE computed here (12 of 12") and np.isfinite(coords).all()
    coords, source = map_coordinates(ids[:3], X[:3], None, "m", 100, 5.0, 0)
    assert source.startswith("none") and np.isnan(coords).all()


# ---------------------------------------------------------------- gallery (pure)


def crop_row(det: str, sample: str, group: str, score: float, cls: str = "car", **extra) -> dict:
    return {
        "detection_id": det, "scene_name": "scene-x", "sample_token": sample, "channel": "CAM_FRONT",
        "class_name": cls, "caption": f"a {cls}", "caption_status": "ok", "caption_backend": "template",
        "top_concept": cls, "top_score": score, "group": group, "concept_names": ["car", "truck", "cone"],
        "concept_scores": np.array([0.2, score, 0.1], dtype=np.float32), "is_outlier": False,
        "outlier_detectors": [], "quality_flags": [], "lidar_points": 10, "lidar_median_depth": 7.5,
        "image_jpeg": b"\xff\xd8jpeg-" + det.encode(), **extra,
    }


def hand_made() -> tuple[pd.DataFrame, pd.DataFrame]:
    crops = pd.DataFrame([
        crop_row("a1", "sA", "target", 0.7, "truck", is_outlier=True, outlier_detectors=["iforest", "knn"]),
        crop_row("a2", "sA", "common", 0.9),
        crop_row("b1", "sB", "common", 0.8),
        crop_row("b2", "sB", "rare", 0.6, "cone"),
        crop_row("b3", "sB", "target", 0.5, "truck"),
        crop_row("c1", "sC", "rare", 0.4, "cone", lidar_points=None, lidar_median_depth=None),
    ])
    split = pd.DataFrame({
        "sample_token": ["sA", "sB"], "scene_name": ["scene-x"] * 2, "reason": ["target_outlier", "random"],
        "rank": [0, 1], "detection_ids": [["a1", "gone"], []],
    })
    return split, crops


def test_gallery_items_mined_then_all_crops():
    split, crops = hand_made()
    items, missing = gallery_items(split, crops, max_crops_per_sample=2, all_crops_limit=4)
    assert missing == 1  # "gone" is not a stored crop
    mined = items[items["section"] == "mined"]
    assert mined["detection_id"].tolist() == ["a1", "b3", "b2"]  # qualifying crop; random sample: target first
    assert mined["reason"].tolist() == ["target_outlier", "random", "random"]
    assert "outlier by iforest+knn" in mined["why"].iloc[0]
    everything = items[items["section"] == "all"]
    assert everything["detection_id"].tolist() == ["a1", "b3", "b2", "c1"]  # target, rare by score, common cut
    assert everything["reason"].tolist() == ["target_outlier", "random", "random", None]  # the sample's reason
    assert items["position"].tolist() == list(range(len(items)))
    assert set(ITEM_COLUMNS) <= set(items.columns) and items["has_image"].all()


def test_gallery_html_escapes_text_and_counts_items():
    split, crops = hand_made()
    crops.loc[0, "caption"] = '<script>alert("x")</script> & co'
    crops.loc[0, "class_name"] = 'truck"><b>'
    items, _ = gallery_items(split, crops, all_crops_limit=0)
    page = render_gallery(items, title="<Gallery>", summary="s & t")
    assert page.count('<figure class="item"') == len(items) == 4
    assert "<script>alert" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in page
    assert 'data-class="truck&quot;&gt;&lt;b&gt;"' in page and "&lt;Gallery&gt;" in page
    assert page.count("data:image/jpeg;base64,") == 4
    assert base64.b64encode(b"\xff\xd8jpeg-a1").decode() in page
    assert "LiDAR: 10 points, median depth 7.5 m" in page
    assert "src=\"http" not in page and "<link" not in page  # self-contained
    assert 'id="section-all"' not in page  # no all-crops section asked for


def test_gallery_edge_cases():
    _, crops = hand_made()
    empty = pd.DataFrame(columns=["sample_token", "scene_name", "reason", "rank", "detection_ids"])
    items, missing = gallery_items(empty, crops, all_crops_limit=100)
    assert missing == 0 and (items["section"] == "all").sum() == 6
    page = render_gallery(items)
    assert "Mined split (0)" in page and "no items" in page and "LiDAR: no sweep for this frame" in page
    assert top_concepts(["a", "b", "c"], [0.1, 0.5, 0.5], n=2) == [("b", 0.5), ("c", 0.5)]
    assert why_selected(None, {"group": None}, "all") == "group unscored; its sample is not in the mined split"
    assert why_selected("rare", {"group": "target"}, "all").endswith("its sample is in the mined split (rare)")


# ---------------------------------------------------------------- embedding_clusters on a hand-made store


def _write(store: Path, asset: str, df: pd.DataFrame) -> None:
    write_table(store, asset, df, "scene-t")


def seed_clusters_store(store: Path, vectors: np.ndarray, concepts: list[str], model_id: str, vocabulary: str) -> None:
    """embeddings, concept_scores and outlier_flags for one crop per row of ``vectors``."""
    from conceptmine_assets.schemas import CONCEPT_SCORES, EMBEDDINGS, OUTLIER_FLAGS

    n = len(vectors)
    keys = {"scene_name": "scene-t", "sample_token": "s0", "sample_data_token": "sd0", "channel": "CAM_FRONT",
            "class_name": "car"}
    ids = [f"d{i:02d}" for i in range(n)]
    emb = pd.DataFrame({**{k: [v] * n for k, v in keys.items()}, "detection_id": ids, "model_id": model_id,
                        "embedding": pd.Series(list(vectors.astype(np.float32)), dtype=object)})
    _write(store, "embeddings", emb[EMBEDDINGS.names])
    for asset, schema in (("concept_scores", CONCEPT_SCORES), ("outlier_flags", OUTLIER_FLAGS)):
        df = pd.DataFrame({c: pd.Series([None] * n, dtype=object) for c in schema.names})
        for k, v in keys.items():
            df[k] = v
        df["detection_id"] = ids
        if asset == "concept_scores":
            df["top_concept"], df["top_score"], df["group"] = concepts, 0.5, "rare"
            df["vocabulary_version"] = vocabulary
        else:
            df["is_outlier"] = [i == 0 for i in range(n)]
        _write(store, asset, df)


def run_clusters(store: Path, embedder, **config):
    from conceptmine_assets.assets.outliers import outlier_reference
    from conceptmine_assets.resources.storage import ParquetIOManager, PickleIOManager
    from conceptmine_assets.resources.vocabulary import VocabularyResource

    resources = {"io_manager": ParquetIOManager(base_path=str(store)),
                 "pickle_io_manager": PickleIOManager(base_path=str(store)), "embedder": embedder,
                 "vocabulary": VocabularyResource()}
    with threadpool_limits(1, user_api="openmp"), dg.DagsterInstance.ephemeral() as instance:
        result = materialize_global([outlier_reference, embedding_clusters], store, instance, resources,
                                    upstream=["embeddings", "concept_scores", "outlier_flags"],
                                    run_config={"ops": {"embedding_clusters": {"config": config},
                                                        "outlier_reference": {"config": {"lof_k": 3, "knn_k": 3}}}})
    return result.asset_materializations_for_node("embedding_clusters")[0].metadata, pd.read_parquet(
        store / "embedding_clusters.parquet")


@pytest.fixture(scope="module")
def tiny_clip():
    from conceptmine_assets_tests.helpers import tiny_clip_config_path
    from conceptmine_assets.resources.open_clip_embedder import OpenClipEmbedder

    return OpenClipEmbedder(model="tiny_clip", pretrained=None,
                            model_config_path=tiny_clip_config_path(), device="cpu")


def test_clusters_in_a_shared_space_are_named_by_the_nearest_concept_text(store, tiny_clip):
    """Crops whose image vectors sit next to the text "truck" / "traffic cone" (CLIP's shared
    space, here a seeded tiny twin): each cluster's centroid is nearest to that concept's text."""
    from conceptmine_assets.resources.vocabulary import VocabularyResource

    anchors = tiny_clip.encode_texts(["truck", "traffic cone"])
    rng = np.random.default_rng(0)
    vectors = np.concatenate([anchors[i] + 0.005 * rng.normal(size=(6, anchors.shape[1])) for i in (0, 1)])
    identity = VocabularyResource().identity
    seed_clusters_store(store, vectors, ["car"] * 6 + ["barrier"] * 6, tiny_clip.image_model_id, identity)
    md, clusters = run_clusters(store, tiny_clip, k=2)
    assert md["text_naming"].value.startswith("nearest concept text") and md["kmeans_k"].value == 2
    first = clusters.groupby("kmeans_cluster")["kmeans_text_name"].first().str.split(" ").str[0]
    by_anchor = clusters.assign(anchor=[0] * 6 + [1] * 6).groupby("anchor")["kmeans_cluster"].unique()
    assert [first[labels[0]] for labels in by_anchor] == ["truck", "traffic_cone"]
    assert set(clusters["kmeans_name"]) == {"car 100%", "barrier 100%"}  # member names: top concepts
    assert "| kmeans | 0 | 6 |" in md["clusters"].value and decode_png(md["cluster_map"].value)

    # scores made with another vocabulary: text naming is skipped and said so; member names remain
    seed_clusters_store(store, vectors, ["car"] * 12, tiny_clip.image_model_id, "v0+000000000000")
    md, clusters = run_clusters(store, tiny_clip, k=2)
    assert md["text_naming"].value.startswith("skipped") and clusters["kmeans_text_name"].isna().all()

    # embeddings of another model cannot be named by this embedder's text
    seed_clusters_store(store, vectors, ["car"] * 12, "open_clip:another", identity)
    with pytest.raises(ConceptmineError, match="open_clip:another"):
        run_clusters(store, tiny_clip, k=2)


def test_clusters_of_three_crops_with_a_large_k(store):
    vectors = np.eye(3, 8, dtype=np.float32)
    seed_clusters_store(store, vectors, ["car", "car", "bus"], "offline:x", "v")
    from conceptmine_assets.resources.offline_embedder import OfflineEmbedder

    md, clusters = run_clusters(store, OfflineEmbedder(device="cpu"), k=8, min_cluster_size=5)
    assert md["kmeans_k"].value == 2 and "k reduced from 8 to 2" in md["notes"].value
    assert len(clusters) == 3 and clusters["density_cluster"].eq(-1).all()  # 3 crops, min_cluster_size 3: noise
    assert md["density_calinski_harabasz"].value is None and md["map_source"].value.startswith("none")


# ---------------------------------------------------------------- end to end on the real slice

def test_explain_assets_on_the_real_slice(real_run):
    store, result = real_run["store"], real_run["result"]
    assert result.success
    crops = pd.read_parquet(store / "crops" / f"{REAL_SCENE}.parquet")
    clusters = pd.read_parquet(store / "embedding_clusters.parquet")
    assert list(clusters.columns) == CLUSTER_COLUMNS
    assert sorted(clusters["detection_id"]) == sorted(crops["detection_id"]) and len(crops) > 20
    md = result.asset_materializations_for_node("embedding_clusters")[0].metadata
    k = md["kmeans_k"].value
    assert 2 <= k <= 10 and clusters["kmeans_cluster"].nunique() == k
    assert md["kmeans_calinski_harabasz"].value > 0 and md["kmeans_davies_bouldin"].value > 0
    assert md["text_naming"].value.startswith("not available")  # offline profile: spaces differ
    assert clusters["kmeans_text_name"].isna().all() and clusters["kmeans_name"].str.contains("%").all()
    assert md["map_source"].value.startswith("outlier_reference t-SNE") and clusters["map_x"].notna().all()
    for key in ("embedding_map", "cluster_map", "score_distribution"):
        assert decode_png(md[key].value).startswith(PNG_MAGIC)
    # the crops' top concepts name the clusters: each cluster's first name is its most frequent top concept
    for label, part in clusters.groupby("kmeans_cluster"):
        top = part["top_concept"].value_counts()
        assert part["kmeans_name"].iloc[0].split(" ")[0] in set(top[top == top.max()].index)


def test_gallery_on_the_real_slice_is_idempotent(real_run):
    store, result = real_run["store"], real_run["result"]
    split = pd.read_parquet(store / "mined_split.parquet")
    assert len(split) == 1 and split["reason"].iloc[0].startswith("target")  # the one sample, for its target crops
    items = pd.read_parquet(store / "gallery.parquet")
    assert list(items.columns) == ITEM_COLUMNS
    mined = items[items["section"] == "mined"]
    assert sorted(mined["detection_id"]) == sorted(split["detection_ids"].iloc[0])
    assert (mined["group"] == "target").all() and "truck" in set(mined["class_name"]) and items["has_image"].all()
    page = real_run["gallery"].read_text()
    assert page.count('<figure class="item"') == len(items) and page.count("data:image/jpeg;base64,") == len(items)
    md = result.asset_materializations_for_node("gallery")[0].metadata
    assert md["html_path"].value == str(real_run["gallery"]) and md["num_items_without_image"].value == 0
    before = real_run["gallery"].read_bytes()
    from conceptmine_assets.definitions import ASSET_MODULES, build_resources
    from conceptmine_assets.settings import Settings

    with pipeline_env(real_run["dataroot"], real_run["store"].parent), dg.DagsterInstance.get() as instance:
        again = dg.materialize(dg.load_assets_from_modules(ASSET_MODULES), selection=[gallery], instance=instance,
                               resources=build_resources(Settings.from_env()),
                               run_config={"ops": {"gallery": {"config": {"output_dir": str(real_run["gallery"].parent)}}}})
    assert again.success and real_run["gallery"].read_bytes() == before
    assert [p.name for p in real_run["gallery"].parent.iterdir()] == ["index.html"]  # no temporary files left


def test_mining_quality_report_has_the_per_class_plot(real_run):
    md = real_run["report_metadata"]
    assert md is not None and decode_png(md["per_class_plot"].value).startswith(PNG_MAGIC)


# ---------------------------------------------------------------- sampled / streamed paths = exact paths


def seed_scenes_store(store: Path, X: np.ndarray, scenes: int = 3) -> list[str]:
    """``seed_clusters_store`` spread over several scene files (the streamed path reads them in batches)."""
    ids = [f"d{i:03d}" for i in range(len(X))]
    for s in range(scenes):
        part = store / f"part-{s}"
        part.mkdir()
        rows = np.arange(s, len(X), scenes)
        seed_clusters_store(part, X[rows], ["car" if i % 2 else "bus" for i in rows], "offline:x", "v")
        for asset in ("embeddings", "concept_scores", "outlier_flags"):
            df = pd.read_parquet(part / asset / "scene-t.parquet")
            df["detection_id"], df["scene_name"] = [ids[i] for i in rows], f"scene-{s}"
            if asset == "embeddings":
                df.attrs["vector_dims"] = {"embedding": X.shape[1]}
            table = __import__("conceptmine_assets.lib.tables", fromlist=["to_arrow"]).to_arrow(df, asset, "t")
            (store / asset).mkdir(exist_ok=True)
            pq.write_table(table, store / asset / f"scene-{s}.parquet")
    return ids


@pytest.mark.parametrize("max_sample", [1000, 40])
def test_clusters_fitted_on_a_sample_and_streamed_equal_the_in_memory_fit(store, max_sample):
    """Sample >= all crops: labels equal kmeans/HDBSCAN on every row. Smaller sample: the sampled
    crops keep the labels fitted on the sample and every other crop gets its nearest centre."""
    from conceptmine_assets.lib.clustering import assign
    from conceptmine_assets.resources.offline_embedder import OfflineEmbedder
    from conceptmine_assets.resources.store_sql import connect, reservoir_sample, stored_tables

    X, _ = blobs(n=90, centers=3)
    ids = seed_scenes_store(store, X)
    md, clusters = run_clusters(store, OfflineEmbedder(device="cpu"), k=3, max_sample=max_sample,
                                scenes_per_batch=2, min_cluster_size=5)
    assert clusters["scene_name"].tolist() == sorted(clusters["scene_name"])  # scene order, streamed in batches
    by_id = clusters.set_index("detection_id")
    with connect(stored_tables(str(store))["embeddings"]) as con:
        sample = reservoir_sample(con, "SELECT detection_id, embedding FROM embeddings", max_sample, 0)
    Xs = np.stack(sample["embedding"].to_list()).astype(np.float32)
    with threadpool_limits(1, user_api="openmp"):
        exact_k = kmeans_clustering(Xs, k=3)
        exact_d = density_clustering(Xs, "hdbscan", min_cluster_size=5)
    assert by_id.loc[sample["detection_id"], "kmeans_cluster"].tolist() == exact_k.labels.tolist()
    assert by_id.loc[sample["detection_id"], "density_cluster"].tolist() == exact_d.labels.tolist()
    assert md["num_crops"].value == 90 and md["num_sample"].value == min(max_sample, 90)
    if max_sample >= 90:
        assert sorted(sample["detection_id"]) == sorted(ids)
    else:
        rest = sorted(set(ids) - set(sample["detection_id"]))
        X_rest = X[[ids.index(d) for d in rest]]
        assert by_id.loc[rest, "kmeans_cluster"].tolist() == assign(X_rest, exact_k).tolist()
        assert by_id.loc[rest, "density_cluster"].tolist() == assign(X_rest, exact_d).tolist()


def test_gallery_candidates_pick_the_same_items_as_the_whole_store(store, instance, tmp_path):
    """The SQL-chosen candidates (bounded) give gallery_items exactly what the whole crop table gives."""
    from conceptmine_assets.assets.gallery import _FROM, _LIGHT, GalleryConfig, candidates
    from conceptmine_assets.resources.store_sql import connect, stored_tables
    from conceptmine_assets_tests.test_splits import run_split, seed_store

    seed_store(store)
    run_split(store, instance, target_frac=0.1, rare_frac=0.05, random_frac=0.1, output_dir=str(tmp_path / "s"))
    tables = stored_tables(str(store))
    config = GalleryConfig(max_crops_per_sample=1, max_all_crops=5, max_per_group_class=1, samples_per_page=3)
    with connect(tables["mined_split"], tables["concept_scores"], tables["outlier_flags"]) as con:
        split = con.execute("SELECT sample_token, scene_name, reason, rank, detection_ids FROM mined_split").df()
        found = candidates(con, config)
        everything = con.execute(f"SELECT {_LIGHT} {_FROM}").df()
    everything["is_outlier"] = everything["is_outlier"].astype(bool)
    args = (config.max_crops_per_sample, config.max_all_crops, config.max_per_group_class, config.samples_per_page)
    fast, _ = gallery_items(split, found, *args)
    exact, _ = gallery_items(split, everything, *args)
    assert len(found) < len(everything)
    pd.testing.assert_frame_equal(fast[ITEM_COLUMNS], exact[ITEM_COLUMNS])
    assert set(fast["page"]) == set(range(1, 4)) and (fast.loc[fast["section"] == "all", "page"] == 1).all()
