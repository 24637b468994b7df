"""Clustering of crop embeddings on known blobs (k-means with k chosen by Calinski-Harabasz,
HDBSCAN / DBSCAN, tiny-data edge cases), cluster names, and the map coordinates."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from conceptmine_assets.lib.clustering import (
    density_clustering,
    format_names,
    kmeans_clustering,
    map_coordinates,
    member_names,
    partition_scores,
    text_names,
)
from conceptmine_assets.lib.outliers import OutlierParams, fit_reference
from conceptmine_assets_tests.helpers import labelled_blobs


def test_kmeans_picks_k_by_calinski_harabasz_on_known_blobs():
    X, y = labelled_blobs(centers=3)
    result = kmeans_clustering(X, k=None, k_min=2, k_max=6)
    assert result.params["k"] == 3
    assert adjusted_rand_score(y, result.labels) == pytest.approx(1.0)
    by_k = result.params["calinski_harabasz_by_k"]
    assert set(by_k) == {"2", "3", "4", "5", "6"} and max(by_k, key=by_k.get) == "3"
    assert result.calinski_harabasz == pytest.approx(by_k["3"], rel=1e-3)
    assert 0 < result.davies_bouldin < 0.5  # tight, well separated blobs


def test_kmeans_with_configured_k():
    X, _ = labelled_blobs(centers=3)
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
    X, y = labelled_blobs(n=90, centers=3)
    result = density_clustering(X, "hdbscan", min_cluster_size=5)
    assert result.n_clusters == 3
    keep = result.labels != -1
    assert adjusted_rand_score(y[keep], result.labels[keep]) == pytest.approx(1.0)
    assert result.calinski_harabasz == pytest.approx(partition_scores(X, result.labels)[0])


def test_dbscan_and_density_edge_cases():
    X, _ = labelled_blobs(n=60, centers=2)
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
    X, _ = labelled_blobs(n=12, centers=2)
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
