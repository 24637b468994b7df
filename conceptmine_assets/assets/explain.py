"""Global views that explain the mining: `embedding_clusters` (clusters of all crops, named by
their concepts, with plots) and `gallery` (a static HTML page of the mined samples' crops)."""

import time
from dataclasses import dataclass, field
from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd
from sklearn.cluster import DBSCAN, HDBSCAN, KMeans
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score
from upath import UPath

from conceptmine_assets.assets.concepts import prompt_embeddings
from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.lib.concepts import cosine, max_logit
from conceptmine_assets.lib.gallery import ITEM_COLUMNS, attach_images, gallery_items, render_gallery
from conceptmine_assets.lib.outliers import OutlierReference, tsne_map
from conceptmine_assets.lib.plots import cluster_map, embedding_map, png_markdown, score_histogram
from conceptmine_assets.lib.splits import markdown_table
from conceptmine_assets.resources.embedder import EmbedderResource
from conceptmine_assets.resources.storage import DuckDBResource, atomic_write
from conceptmine_assets.resources.vocabulary import VocabularyResource
from conceptmine_assets.settings import stage_config

MIN_CLUSTER_ROWS = 3  # Calinski–Harabasz and Davies–Bouldin need 2 <= clusters <= rows - 1

# ---------------------------------------------------------------- clustering (pure functions)


@dataclass
class Clustering:
    """Cluster labels of one method (-1 = density noise) and the quality of the partition."""

    method: str
    labels: np.ndarray
    params: dict
    calinski_harabasz: float | None = None  # higher is better; None when undefined
    davies_bouldin: float | None = None  # lower is better; None when undefined
    notes: list[str] = field(default_factory=list)

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
    keep = labels != -1
    n_labels = len(set(labels[keep].tolist()))
    if not 2 <= n_labels <= int(keep.sum()) - 1:
        return None, None
    return float(calinski_harabasz_score(X[keep], labels[keep])), float(davies_bouldin_score(X[keep], labels[keep]))


def kmeans_clustering(
    X: np.ndarray, k: int | None = None, k_min: int = 2, k_max: int = 10, n_init: int = 4, seed: int = 0
) -> Clustering:
    """k-means with ``k`` clusters, or with the k of best Calinski–Harabasz in ``k_min..k_max``.

    k is capped at ``min(rows - 1, distinct rows)`` (with a note). With fewer than
    :data:`MIN_CLUSTER_ROWS` rows or fewer than 2 distinct rows every row is in cluster 0 and
    the scores are None.
    """
    n = len(X)
    cap = min(n - 1, distinct_rows(X))
    if n < MIN_CLUSTER_ROWS or cap < 2:
        note = f"only {n} crops ({distinct_rows(X)} distinct): too few to cluster; all in k-means cluster 0"
        return Clustering("kmeans", np.zeros(n, dtype=np.int64), {"k": 1 if n else 0}, notes=[note])

    def fit(k_: int) -> np.ndarray:
        return KMeans(n_clusters=k_, n_init=n_init, random_state=seed).fit_predict(X).astype(np.int64)

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
    return Clustering("kmeans", labels, params, ch_score, db_score, notes)


def density_clustering(
    X: np.ndarray, method: Literal["hdbscan", "dbscan"] = "hdbscan", min_cluster_size: int = 5,
    eps: float = 0.5, min_samples: int = 5,
) -> Clustering:
    """HDBSCAN (``min_cluster_size``, capped at the row count) or DBSCAN (``eps``,
    ``min_samples``); -1 is noise. With fewer than :data:`MIN_CLUSTER_ROWS` rows every row is
    noise (no fit). Scores are computed over the non-noise rows."""
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
    return Clustering(method, labels, params, ch_score, db_score, notes)


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


# ---------------------------------------------------------------- embedding_clusters


@stage_config("embedding_clusters")
class EmbeddingClustersConfig(dg.Config):
    """How crops are clustered and named."""

    k: int | None = None  # k-means clusters; None = best Calinski-Harabasz over k_min..k_max
    k_min: int = 2
    k_max: int = 10
    n_init: int = 4  # k-means restarts per k
    density_method: Literal["hdbscan", "dbscan"] = "hdbscan"
    min_cluster_size: int = 5  # HDBSCAN
    dbscan_eps: float = 0.5  # DBSCAN, on L2-normalised embeddings (Euclidean ~ cosine)
    dbscan_min_samples: int = 5
    names_per_cluster: int = 3
    prompt_template: str = "{}"  # as in concept_scores, for naming clusters by concept text
    map_max_points: int = 2_000  # t-SNE computed here when the reference has none
    tsne_perplexity: float = 30.0
    seed: int = 0


_CLUSTER_SQL = """
SELECT e.detection_id, e.scene_name, e.sample_token, e.class_name, e.model_id, e.embedding,
       c."group" AS "group", c.top_concept, c.top_score, c.vocabulary_version,
       coalesce(o.is_outlier, false) AS is_outlier
FROM embeddings e
LEFT JOIN concept_scores c ON c.detection_id = e.detection_id
LEFT JOIN outlier_flags o ON o.detection_id = e.detection_id
ORDER BY e.detection_id
"""
CLUSTER_COLUMNS = [
    "detection_id", "scene_name", "sample_token", "class_name", "group", "top_concept", "top_score", "is_outlier",
    "kmeans_cluster", "kmeans_name", "kmeans_text_name", "density_cluster", "density_name", "density_text_name",
    "map_x", "map_y",
]


def _text_namer(
    df: pd.DataFrame, X: np.ndarray, embedder: EmbedderResource, vocabulary_file: VocabularyResource,
    template: str, n: int,
):
    """A function labels -> text names, or (None, why not) when text naming does not apply."""
    if not embedder.shared_space:
        return None, "not available: the embedder's image and text spaces differ (names come from members only)"
    models = sorted(set(df["model_id"].dropna()))
    if models and models != [embedder.image_model_id]:
        raise ConceptmineError(
            f"stored embeddings come from {models}, but the embedder is {embedder.image_model_id!r}; "
            "re-materialise embeddings with the same embedder"
        )
    vocabulary = vocabulary_file.load()
    stored = sorted(set(df["vocabulary_version"].dropna()))
    if stored and stored != [vocabulary.identity]:
        return None, (f"skipped: concept_scores were made with vocabulary {stored}, the resource is "
                      f"{vocabulary.identity}; re-materialise concept_scores")
    prompts, owners = vocabulary.prompt_table(template)
    prompt_emb = prompt_embeddings(embedder, prompts)
    return (lambda labels: text_names(X, labels, prompt_emb, owners, vocabulary.names, n)), (
        f"nearest concept text to the centroid ({vocabulary.identity}, {embedder.text_model_id})"
    )


def _cluster_table(clusterings: list[Clustering], df: pd.DataFrame, names: dict, text: dict) -> str:
    rows = []
    for c in clusterings:
        for label in sorted(set(c.labels.tolist())):
            mask = c.labels == label
            groups = df.loc[mask, "group"].fillna("unscored").value_counts()
            rows.append({
                "method": c.method, "cluster": "noise" if label == -1 else label, "size": int(mask.sum()),
                "outliers": int(df.loc[mask, "is_outlier"].sum()),
                "groups": ", ".join(f"{g} {v}" for g, v in groups.items()),
                "by members": format_names(names[c.method][label]),
                "by text": format_names(text[c.method][label], percent=False) if text.get(c.method) else "n/a",
            })
    return markdown_table(pd.DataFrame(rows)) if rows else "no clusters"


def _empty_clusters() -> pd.DataFrame:
    types = {"top_score": "float32", "is_outlier": "bool", "kmeans_cluster": "int64", "density_cluster": "int64",
             "map_x": "float32", "map_y": "float32"}
    return pd.DataFrame({c: pd.Series(dtype=types.get(c, object)) for c in CLUSTER_COLUMNS})


@dg.asset(
    deps=["embeddings", "concept_scores", "outlier_flags"],
    code_version="1",
    kinds={"scikit-learn", "duckdb", "parquet"},
    group_name="mining_global",
)
def embedding_clusters(
    context: dg.AssetExecutionContext,
    config: EmbeddingClustersConfig,
    duckdb: DuckDBResource,
    embedder: EmbedderResource,
    vocabulary_file: VocabularyResource,
    outlier_reference: OutlierReference,
) -> pd.DataFrame:
    """One row per embedded crop of all scenes (key: detection_id; plus scene_name,
    sample_token, class_name, group, top_concept, top_score, is_outlier): its k-means cluster
    (k from config, or the best Calinski–Harabasz over ``k_min..k_max``) and its density cluster
    (HDBSCAN or DBSCAN; -1 = noise), each cluster named by its members' most frequent top
    concepts with shares and, when the embedder shares one image/text space (CLIP), by the
    concepts whose text is nearest to the centroid; and its 2-D map position (the reference's
    t-SNE, or one computed here). Metadata: Calinski–Harabasz and Davies–Bouldin per method, a
    table of clusters, the embedding map by group with outliers marked, the map by k-means
    cluster and the top-score distribution by group.

    Tiny data: no embedding rows gives an empty table (warning). Fewer than 3 crops (or fewer
    than 2 distinct embeddings) puts every crop in k-means cluster 0 and density noise, with
    undefined scores; k (or k_max) above ``min(rows - 1, distinct rows)`` is reduced to it and
    HDBSCAN's ``min_cluster_size`` is capped at the row count. Each adjustment is logged and
    listed under ``notes``."""
    started = time.perf_counter()
    duckdb.require(["embeddings", "concept_scores", "outlier_flags"], "embedding_clusters")
    if config.k is not None and config.k < 2:
        raise ConceptmineError(f"embedding_clusters: k must be at least 2 (or None for automatic), got {config.k}")
    df = duckdb.query(_CLUSTER_SQL)
    if df.empty:
        context.log.warning("no embeddings stored; the cluster table is empty")
        context.add_output_metadata({"num_crops": 0, "seconds": round(time.perf_counter() - started, 3)})
        return _empty_clusters()
    X = np.stack(df["embedding"].to_numpy()).astype(np.float32)
    kmeans = kmeans_clustering(X, config.k, config.k_min, config.k_max, config.n_init, config.seed)
    density = density_clustering(X, config.density_method, config.min_cluster_size, config.dbscan_eps,
                                 config.dbscan_min_samples)
    namer, text_how = _text_namer(df, X, embedder, vocabulary_file, config.prompt_template, config.names_per_cluster)
    names, text = {}, {}
    for c in (kmeans, density):
        names[c.method] = member_names(c.labels, df["top_concept"], config.names_per_cluster)
        text[c.method] = namer(c.labels) if namer else None
    model_ids = df["model_id"].dropna()
    coords, map_source = map_coordinates(
        df["detection_id"].to_numpy(dtype=object), X, outlier_reference,
        str(model_ids.iloc[0]) if len(model_ids) else None, config.map_max_points, config.tsne_perplexity, config.seed,
    )
    out = df[CLUSTER_COLUMNS[:8]].copy()
    out["is_outlier"] = out["is_outlier"].astype(bool)
    out["top_score"] = out["top_score"].astype("float32")
    for prefix, c in (("kmeans", kmeans), ("density", density)):
        out[f"{prefix}_cluster"] = c.labels
        out[f"{prefix}_name"] = [format_names(names[c.method][label]) for label in c.labels]
        out[f"{prefix}_text_name"] = [
            format_names(text[c.method][label], percent=False) if text[c.method] else None for label in c.labels
        ]
    out["map_x"], out["map_y"] = coords[:, 0], coords[:, 1]
    notes = kmeans.notes + density.notes
    for note in notes:
        context.log.warning(note)
    on_map = ~np.isnan(coords[:, 0])
    plots = {}
    if on_map.any():
        plots["embedding_map"] = dg.MetadataValue.md(png_markdown(embedding_map(
            coords[on_map], df.loc[on_map, "group"].fillna("unscored"), df.loc[on_map, "is_outlier"].astype(bool),
            f"Crops by group, outliers ringed ({map_source})"), "embedding map"))
        plots["cluster_map"] = dg.MetadataValue.md(png_markdown(cluster_map(
            coords[on_map], kmeans.labels[on_map],
            {label: format_names(p[:1]) for label, p in names["kmeans"].items()}, f"k-means clusters (k={kmeans.params['k']})"),
            "k-means cluster map"))
    plots["score_distribution"] = dg.MetadataValue.md(png_markdown(
        score_histogram(df["top_score"], df["group"].fillna("unscored")), "score distribution"))
    context.add_output_metadata(
        {
            "num_crops": len(out),
            "num_unscored": int(df["group"].isna().sum()),
            "num_outliers": int(out["is_outlier"].sum()),
            "kmeans_k": int(kmeans.params["k"]),
            "kmeans_params": dg.MetadataValue.json(kmeans.params),
            "kmeans_calinski_harabasz": kmeans.calinski_harabasz,
            "kmeans_davies_bouldin": kmeans.davies_bouldin,
            "density_method": density.method,
            "density_params": dg.MetadataValue.json(density.params),
            "density_num_clusters": density.n_clusters,
            "density_num_noise": density.n_noise,
            "density_calinski_harabasz": density.calinski_harabasz,
            "density_davies_bouldin": density.davies_bouldin,
            "clusters": dg.MetadataValue.md(_cluster_table([kmeans, density], df, names, text)),
            "text_naming": text_how,
            "map_source": map_source,
            "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in notes) or "none"),
            **plots,
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
    return out[CLUSTER_COLUMNS]


# ---------------------------------------------------------------- gallery


@stage_config("gallery")
class GalleryConfig(dg.Config):
    """Where the gallery goes and how much it shows."""

    output_dir: str = "data/gallery"  # local path or fsspec URL; the page is <output_dir>/index.html
    title: str = "conceptmine gallery"
    max_crops_per_sample: int = 12  # per mined sample
    max_all_crops: int = 300  # "all crops by group" section; 0 = no such section


_GALLERY_SQL = """
SELECT c.detection_id, c.scene_name, c.sample_token, c.channel, c.class_name, c.caption,
       p.status AS caption_status, p.backend AS caption_backend,
       c.top_concept, c.top_score, c."group" AS "group", c.concept_names, c.concept_scores,
       o.is_outlier, o.outlier_detectors, o.quality_flags, k.lidar_points, k.lidar_median_depth
FROM concept_scores c
LEFT JOIN outlier_flags o ON o.detection_id = c.detection_id
LEFT JOIN crops k ON k.detection_id = c.detection_id
LEFT JOIN captions p ON p.detection_id = c.detection_id
ORDER BY c.detection_id
"""


def _read_jpegs(duckdb: DuckDBResource, ids: list[str]) -> dict[str, bytes]:
    """JPEG bytes of only the crops shown (the store may hold many more)."""
    if not ids:
        return {}
    with duckdb.connect() as con:
        con.register("wanted", pd.DataFrame({"detection_id": pd.Series(sorted(set(ids)), dtype=object)}))
        df = con.execute(
            "SELECT k.detection_id, k.image_jpeg FROM crops k JOIN wanted w ON w.detection_id = k.detection_id"
        ).df()
    return {d: bytes(b) for d, b in zip(df["detection_id"], df["image_jpeg"]) if b is not None}


@dg.asset(
    deps=["mined_split", "concept_scores", "captions", "crops", "outlier_flags"],
    code_version="1",
    kinds={"html", "duckdb", "parquet"},
    group_name="mining_global",
)
def gallery(context: dg.AssetExecutionContext, config: GalleryConfig, duckdb: DuckDBResource) -> pd.DataFrame:
    """One row per gallery item (section ``mined`` or ``all``, position, detection_id,
    sample_token, class_name, group, top concept and score, reason = the sample's mined_split
    reason or null, why = that in words): the items of a static,
    self-contained ``<output_dir>/index.html`` (written atomically) that shows each mined
    sample's qualifying crops (a random-fill sample: its own crops, target first) with the crop
    image, caption, top concepts with scores, outlier detectors and image-quality flags, LiDAR
    support and why it was selected, then optionally all crops by group; filterable by group
    and class in the page (inline JavaScript, no server)."""
    started = time.perf_counter()
    duckdb.require(["mined_split", "concept_scores", "captions", "crops", "outlier_flags"], "gallery")
    split = duckdb.query("SELECT sample_token, scene_name, reason, rank, detection_ids FROM mined_split ORDER BY rank")
    crops = duckdb.query(_GALLERY_SQL)
    items, missing = gallery_items(split, crops, config.max_crops_per_sample, config.max_all_crops)
    if missing:
        context.log.warning(f"{missing} crops named by mined_split are not in concept_scores; skipped")
    items = attach_images(items, _read_jpegs(duckdb, items["detection_id"].tolist()))
    without_image = int((~items["has_image"]).sum())
    if without_image:
        context.log.warning(f"{without_image} gallery items have no crop image")
    if split.empty:
        context.log.warning("the mined split is empty; the gallery shows only the all-crops section")
    sections = items["section"].value_counts()
    summary = (f"{len(split)} mined samples, {int(sections.get('mined', 0))} of their crops; "
               f"{int(sections.get('all', 0))} of {len(crops)} crops in the all-crops section.")
    page = render_gallery(items, config.title, summary).encode("utf-8")
    path = UPath(config.output_dir) / "index.html"
    atomic_write(path, lambda fh: fh.write(page))
    context.add_output_metadata(
        {
            "html_path": dg.MetadataValue.path(str(path)),
            "num_items": len(items),
            "num_mined_items": int(sections.get("mined", 0)),
            "num_all_crops_items": int(sections.get("all", 0)),
            "num_split_samples": len(split),
            "num_crops_missing": missing,
            "num_items_without_image": without_image,
            "html_bytes": len(page),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
    return items[ITEM_COLUMNS].reset_index(drop=True)
