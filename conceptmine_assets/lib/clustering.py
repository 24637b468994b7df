"""Clustering of crop embeddings, fitted on a sample and applied to every crop (pure functions).

k-means (``MiniBatchKMeans`` beyond one batch: it scales) with k from config or the best Calinski–Harabasz over a
range, and density clustering (HDBSCAN or DBSCAN), both fitted on a bounded sample of the
embeddings. Every other crop is then assigned in batches (:func:`assign`): k-means to the nearest
centre; density to the nearest cluster centroid if it lies within that cluster's radius (the
largest member distance in the sample), else noise (-1). Sample members keep their fitted
labels, so when the sample holds every crop the result is exactly the in-memory fit. Clusters
are named by their members' top concepts (:func:`member_names`) and, in a shared image/text
space, by the concept text nearest to the centroid (:func:`text_names`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.lib.concepts import cosine, max_logit
from conceptmine_assets.lib.outliers import OutlierReference
from conceptmine_assets.lib.plots import tsne_map

MIN_CLUSTER_ROWS = 3  # Calinski–Harabasz and Davies–Bouldin need 2 <= clusters <= rows - 1

@dataclass
class Clustering:
    """Cluster labels of one method (-1 = density noise) and the quality of the partition."""

    method: str
    labels: np.ndarray
    params: dict
    calinski_harabasz: float | None = None  # higher is better; None when undefined
    davies_bouldin: float | None = None  # lower is better; None when undefined
    notes: list[str] = field(default_factory=list)
    centers: np.ndarray | None = None  # (c, d) centre per entry of center_labels (set by with_centers)
    center_labels: np.ndarray | None = None
    radii: np.ndarray | None = None  # density: a row farther than this from every centre is noise

    @property
    def n_clusters(self) -> int:
        return len(set(self.labels.tolist()) - {-1})

    @property
    def n_noise(self) -> int:
        return int((self.labels == -1).sum())


def distinct_rows(X: np.ndarray) -> int:
    return int(len(np.unique(np.asarray(X), axis=0))) if len(X) else 0


def partition_scores(X: np.ndarray, labels: np.ndarray) -> tuple[float | None, float | None]:
    """(Calinski–Harabasz, Davies–Bouldin) over the non-noise rows; None where undefined
    (fewer than 2 clusters, or as many clusters as rows)."""
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score  # scikit-learn: imported where used

    keep = labels != -1
    n_labels = len(set(labels[keep].tolist()))
    if not 2 <= n_labels <= int(keep.sum()) - 1:
        return None, None
    return float(calinski_harabasz_score(X[keep], labels[keep])), float(davies_bouldin_score(X[keep], labels[keep]))


def kmeans_clustering(
    X: np.ndarray, k: int | None = None, k_min: int = 2, k_max: int = 10, n_init: int = 4, seed: int = 0,
    batch_size: int = 4096,
) -> Clustering:
    """k-means with ``k`` clusters, or with the k of best Calinski–Harabasz in ``k_min..k_max``:
    ``MiniBatchKMeans`` when the rows exceed one ``batch_size``, else plain ``KMeans``.

    k is capped at ``min(rows - 1, distinct rows)`` (with a note). With fewer than
    :data:`MIN_CLUSTER_ROWS` rows or fewer than 2 distinct rows every row is in cluster 0 and
    the scores are None.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    n = len(X)
    cap = min(n - 1, distinct_rows(X))
    if n < MIN_CLUSTER_ROWS or cap < 2:
        note = f"only {n} crops ({distinct_rows(X)} distinct): too few to cluster; all in k-means cluster 0"
        mean = X.mean(axis=0, keepdims=True).astype(np.float32) if n else None
        return Clustering("kmeans", np.zeros(n, dtype=np.int64), {"k": 1 if n else 0}, notes=[note], centers=mean,
                          center_labels=np.zeros(1 if n else 0, dtype=np.int64))

    centers: dict[int, np.ndarray] = {}

    def fit(k_: int) -> np.ndarray:
        if n <= batch_size:  # one batch holds every row: plain (full-batch) k-means
            model = KMeans(n_clusters=k_, n_init=n_init, random_state=seed).fit(X)
        else:
            model = MiniBatchKMeans(n_clusters=k_, n_init=n_init, random_state=seed, batch_size=batch_size).fit(X)
        centers[k_] = model.cluster_centers_.astype(np.float32)
        return model.labels_.astype(np.int64)

    notes: list[str] = []
    if k is not None:
        if k > cap:
            notes.append(f"k reduced from {k} to {cap} (only {n} crops, {distinct_rows(X)} distinct)")
        k_used = min(k, cap)
        labels = fit(k_used)
        params = {"k": k_used, "k_selection": "config"}
    else:
        hi = min(k_max, cap)
        if hi < k_max:
            notes.append(f"k range capped at {hi} (only {n} crops, {distinct_rows(X)} distinct)")
        lo = min(max(2, k_min), hi)
        fits = {k_: fit(k_) for k_ in range(lo, hi + 1)}
        ch = {k_: partition_scores(X, labels_)[0] for k_, labels_ in fits.items()}
        best = max(fits, key=lambda k_: (ch[k_] if ch[k_] is not None else -np.inf, -k_))
        labels = fits[best]
        params = {"k": best, "k_selection": f"best Calinski-Harabasz over k={lo}..{hi}",
                  "calinski_harabasz_by_k": {str(k_): None if v is None else round(v, 3) for k_, v in ch.items()}}
    ch_score, db_score = partition_scores(X, labels)
    k_used = int(params["k"])
    return Clustering("kmeans", labels, params, ch_score, db_score, notes, centers=centers[k_used],
                      center_labels=np.arange(k_used, dtype=np.int64))


def density_clustering(
    X: np.ndarray, method: Literal["hdbscan", "dbscan"] = "hdbscan", min_cluster_size: int = 5,
    eps: float = 0.5, min_samples: int = 5,
) -> Clustering:
    """HDBSCAN (``min_cluster_size``, capped at the row count) or DBSCAN (``eps``,
    ``min_samples``); -1 is noise. With fewer than :data:`MIN_CLUSTER_ROWS` rows every row is
    noise (no fit). Scores are computed over the non-noise rows."""
    from sklearn.cluster import DBSCAN, HDBSCAN

    n = len(X)
    if n < MIN_CLUSTER_ROWS:
        return Clustering(method, np.full(n, -1, dtype=np.int64), {},
                          notes=[f"only {n} crops: too few for {method}; all rows are noise"])
    notes: list[str] = []
    if method == "hdbscan":
        size = max(2, min(min_cluster_size, n))
        if size != min_cluster_size:
            notes.append(f"min_cluster_size {min_cluster_size} adjusted to {size} for {n} crops")
        labels = HDBSCAN(min_cluster_size=size, copy=True).fit_predict(X)
        params: dict = {"min_cluster_size": size}
    elif method == "dbscan":
        labels = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(X)
        params = {"eps": eps, "min_samples": min_samples}
    else:
        raise ConceptmineError(f"density method must be 'hdbscan' or 'dbscan', got {method!r}")
    labels = np.asarray(labels, dtype=np.int64)
    ch_score, db_score = partition_scores(X, labels)
    if ch_score is None:
        notes.append(f"{method} found {len(set(labels.tolist()) - {-1})} clusters; scores need at least 2")
    centers, center_labels, radii = _centroids(X, labels)
    return Clustering(method, labels, params, ch_score, db_score, notes, centers, center_labels, radii)


def _centroids(X: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centroid, label, radius) of every non-noise cluster: the radius is its farthest member."""
    found = np.array(sorted(set(labels.tolist()) - {-1}), dtype=np.int64)
    centers = np.zeros((len(found), X.shape[1] if X.ndim == 2 else 0), dtype=np.float32)
    radii = np.zeros(len(found), dtype=np.float64)
    for i, label in enumerate(found):
        members = X[labels == label]
        centers[i] = members.mean(axis=0)
        radii[i] = float(np.linalg.norm(members - centers[i], axis=1).max())
    return centers, found, radii


def assign(X: np.ndarray, clustering: Clustering) -> np.ndarray:
    """Labels of new rows from a clustering fitted on a sample: the nearest centre's label and,
    for density clusterings, -1 (noise) beyond that cluster's radius."""
    density = clustering.method != "kmeans"
    if clustering.centers is None or len(clustering.centers) == 0:
        return np.full(len(X), -1 if density else 0, dtype=np.int64)
    X = np.asarray(X, dtype=np.float32)
    C = clustering.centers
    d2 = (X * X).sum(axis=1)[:, None] - 2.0 * X @ C.T + (C * C).sum(axis=1)[None, :]
    nearest = d2.argmin(axis=1)
    labels = clustering.center_labels[nearest].astype(np.int64)
    if density:
        dist = np.sqrt(np.maximum(d2[np.arange(len(X)), nearest], 0.0))
        labels[dist > clustering.radii[nearest] + 1e-6] = -1
    return labels


def member_names(labels: np.ndarray, concepts: pd.Series, n: int = 3) -> dict[int, list[tuple[str, float]]]:
    """Per cluster: its members' most frequent top concepts with their shares (ties by name)."""
    df = pd.DataFrame({"label": np.asarray(labels), "concept": concepts.fillna("unscored").astype(str).to_numpy()})
    out: dict[int, list[tuple[str, float]]] = {}
    for label, part in df.groupby("label", sort=True):
        counts = part["concept"].value_counts()
        pairs = sorted(((str(c), v / len(part)) for c, v in counts.items()), key=lambda p: (-p[1], p[0]))
        out[int(label)] = pairs[:n]
    return out


def text_names(
    X: np.ndarray, labels: np.ndarray, prompt_emb: np.ndarray, owners: np.ndarray, names: list[str], n: int = 3
) -> dict[int, list[tuple[str, float]]]:
    """Per cluster: the concepts whose text embedding is nearest to the centroid (cosine, max
    over each concept's prompts). Only meaningful when image and text share one space."""
    out: dict[int, list[tuple[str, float]]] = {}
    for label in sorted(set(np.asarray(labels).tolist())):
        centroid = X[labels == label].mean(axis=0, keepdims=True)
        sims = max_logit(cosine(centroid, prompt_emb), owners, len(names))[0]
        order = sorted(range(len(names)), key=lambda i: (-sims[i], names[i]))[:n]
        out[int(label)] = [(names[i], float(sims[i])) for i in order]
    return out


def format_names(pairs: list[tuple[str, float]], percent: bool = True) -> str:
    """``truck 60%, car 40%`` (shares) or ``truck 0.31, bus 0.28`` (cosines)."""
    return ", ".join(f"{name} {value:.0%}" if percent else f"{name} {value:.2f}" for name, value in pairs)


def map_coordinates(
    ids: np.ndarray, X: np.ndarray, reference: OutlierReference | None, model_id: str | None,
    max_points: int, perplexity: float, seed: int,
) -> tuple[np.ndarray, str]:
    """(n, 2) map coordinates (NaN for rows off the map) and where they came from.

    The `outlier_reference` t-SNE is reused when it was fitted on the same model and covers
    some of the rows (the reference's members; others are off the map). Otherwise a t-SNE of at
    most ``max_points`` seeded rows is computed here. Fewer than 4 rows: no map.
    """
    coords = np.full((len(ids), 2), np.nan, dtype=np.float32)
    if reference is not None and reference.tsne is not None and reference.model_id == model_id:
        where = {d: i for i, d in enumerate(reference.member_ids[reference.tsne_index])}
        rows = [(r, where[d]) for r, d in enumerate(ids) if d in where]
        if rows:
            r, m = np.array(rows).T
            coords[r] = reference.tsne[m]
            return coords, f"outlier_reference t-SNE ({len(rows)} of {len(ids)} crops)"
    if max_points <= 0:
        return coords, "none (map_max_points = 0)"
    computed = tsne_map(X, max_points, perplexity, seed)
    if computed is None:
        return coords, f"none (only {len(ids)} crops; a map needs 4)"
    coords[computed[1]] = computed[0]
    return coords, f"t-SNE computed here ({len(computed[1])} of {len(ids)} crops)"


def map_lookup(
    ids: np.ndarray, X: np.ndarray, reference: OutlierReference | None, model_id: str | None,
    max_points: int, perplexity: float, seed: int,
) -> tuple[dict[str, tuple[float, float]], str]:
    """detection_id -> 2-D map position for the crops on the map, and where it came from.

    The whole `outlier_reference` t-SNE when it was fitted on the same model (its members are
    on the map, wherever they are read); otherwise :func:`map_coordinates` of the sample
    (``ids``, ``X``).
    """
    if reference is not None and reference.tsne is not None and reference.model_id == model_id:
        members = reference.member_ids[reference.tsne_index]
        lookup = {str(d): (float(x), float(y)) for d, (x, y) in zip(members, reference.tsne)}
        return lookup, f"outlier_reference t-SNE ({len(lookup)} crops)"
    coords, source = map_coordinates(ids, X, None, model_id, max_points, perplexity, seed)
    keep = ~np.isnan(coords[:, 0])
    return {str(d): (float(x), float(y)) for d, (x, y) in zip(ids[keep], coords[keep])}, source


class SampleAssigner:
    """Labels of every crop, scene batch by scene batch, with sample members keeping theirs."""

    def __init__(self, clusterings: tuple[Clustering, ...], sample_ids: pd.Series | list[str]):
        self.clusterings = clusterings
        self.fitted = [dict(zip(sample_ids, c.labels)) for c in clusterings]

    def __call__(self, ids: list[str], X: np.ndarray) -> list[np.ndarray]:
        out = []
        for c, fitted in zip(self.clusterings, self.fitted):
            labels = assign(X, c)
            for i, d in enumerate(ids):
                if d in fitted:
                    labels[i] = fitted[d]
            out.append(labels)
        return out
