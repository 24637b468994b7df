"""The `embedding_clusters` asset on hand-made stores: names in a shared space, tiny inputs, and
the clusters fitted on a sample and streamed equal to the in-memory fit."""

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from threadpoolctl import threadpool_limits

from conceptmine_assets.assets.embedding_clusters import embedding_clusters
from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.lib.clustering import density_clustering, kmeans_clustering
from conceptmine_assets_tests.helpers import decode_png, labelled_blobs, write_table
from conceptmine_assets_tests.store_helpers import materialize_global


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

    X, _ = labelled_blobs(n=90, centers=3)
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
