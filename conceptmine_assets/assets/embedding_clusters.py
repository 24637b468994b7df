"""`embedding_clusters`: every crop's k-means and density cluster, fitted on a bounded sample.

Fit on a seeded reservoir sample (``max_sample`` rows; HDBSCAN/DBSCAN on at most
``density_max_sample`` of them), then every crop is assigned in batches of scenes read through
DuckDB (:func:`conceptmine_assets.lib.clustering.assign`), so time grows linearly with the
store and memory stays bounded. Quality scores, names and plots come from the sample.
"""

import time
from collections.abc import Iterator
from typing import Literal, NamedTuple

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field

from conceptmine_assets.lib.clustering import (
    Clustering,
    SampleAssigner,
    assign,
    density_clustering,
    format_names,
    kmeans_clustering,
    map_lookup,
    member_names,
    text_names,
)
from conceptmine_assets.lib.cluster_report import ClusterTally, cluster_plots
from conceptmine_assets.lib.model_guard import check_embedding_model
from conceptmine_assets.lib.outliers import IS_OUTLIER_SQL, OutlierReference
from conceptmine_assets.lib.tables import arrow_vectors, stack_vectors
from conceptmine_assets.partitions import all_scenes
from conceptmine_assets.resources.embedder import EmbedderResource
from conceptmine_assets.resources.store_sql import StoredTable, connect, reservoir_sample
from conceptmine_assets.resources.vocabulary import VocabularyResource
from conceptmine_assets.settings import stage_config

CLUSTER_SCHEMA = pa.schema([
    ("detection_id", pa.string()), ("scene_name", pa.string()), ("sample_token", pa.string()),
    ("class_name", pa.string()), ("group", pa.string()), ("top_concept", pa.string()), ("top_score", pa.float32()),
    ("is_outlier", pa.bool_()), ("kmeans_cluster", pa.int64()), ("kmeans_name", pa.string()),
    ("kmeans_text_name", pa.string()), ("density_cluster", pa.int64()), ("density_name", pa.string()),
    ("density_text_name", pa.string()), ("map_x", pa.float32()), ("map_y", pa.float32()),
])
CLUSTER_COLUMNS = CLUSTER_SCHEMA.names


@stage_config("embedding_clusters")
class EmbeddingClustersConfig(dg.Config):
    """How crops are sampled, clustered and named."""

    max_sample: int = Field(20_000, ge=3, description="Seeded reservoir sample of all crops that k-means is fitted on.")
    density_max_sample: int = Field(5_000, ge=3, description="At most this many sample rows for HDBSCAN/DBSCAN "
                                    "(quadratic in the rows).")
    k: int | None = Field(None, ge=2, description="k-means clusters; unset: best Calinski-Harabasz over k_min..k_max.")
    k_min: int = Field(2, ge=2, description="Smallest k tried when k is unset.")
    k_max: int = Field(10, ge=2, description="Largest k tried when k is unset.")
    n_init: int = Field(4, ge=1, description="k-means restarts per k.")
    batch_size: int = Field(4096, ge=16, description="Mini-batch size of MiniBatchKMeans.")
    density_method: Literal["hdbscan", "dbscan"] = Field("hdbscan", description="Density clustering method.")
    min_cluster_size: int = Field(5, ge=2, description="HDBSCAN's min_cluster_size.")
    dbscan_eps: float = Field(0.5, gt=0.0, description="DBSCAN eps on L2-normalised embeddings (Euclidean ~ cosine).")
    dbscan_min_samples: int = Field(5, ge=1, description="DBSCAN min_samples.")
    names_per_cluster: int = Field(3, ge=1, description="Concepts listed in each cluster's name.")
    prompt_template: str = Field("{}", description="As in concept_scores, for naming clusters by concept text.")
    map_max_points: int = Field(2_000, ge=0, description="t-SNE points computed here when the reference has no map.")
    tsne_perplexity: float = Field(30.0, gt=0.0, description="t-SNE perplexity.")
    seed: int = Field(0, description="Seed of the sample, k-means and t-SNE.")
    scenes_per_batch: int = Field(16, ge=1, description="Scenes read at once when every crop is assigned.")


def _rows_sql(with_embedding: bool) -> str:
    """Every crop of the views in (scene, detection_id) order, with what the output carries."""
    return f"""
SELECT e.detection_id, e.scene_name, e.sample_token, e.class_name, c."group" AS "group", c.top_concept,
       c.top_score, {IS_OUTLIER_SQL} AS is_outlier{", e.embedding" if with_embedding else ""}
FROM embeddings e
LEFT JOIN concept_scores c ON c.detection_id = e.detection_id
LEFT JOIN outlier_flags o ON o.detection_id = e.detection_id
ORDER BY e.scene_name, e.detection_id
"""


_SAMPLE_INFO_SQL = f"""
SELECT p.detection_id, c."group" AS "group", c.top_concept, c.top_score, c.vocabulary_version,
       {IS_OUTLIER_SQL} AS is_outlier
FROM picked p LEFT JOIN concept_scores c ON c.detection_id = p.detection_id
LEFT JOIN outlier_flags o ON o.detection_id = p.detection_id
ORDER BY p.detection_id
"""


def _chunks(tables: tuple[StoredTable, ...], size: int) -> Iterator[tuple[StoredTable, ...]]:
    """The tables restricted to successive groups of ``size`` scenes of the first one."""
    scenes = tables[0].partitions
    for i in range(0, len(scenes), size):
        yield tuple(t.only(scenes[i: i + size]) for t in tables)


class Sample(NamedTuple):
    info: pd.DataFrame  # detection_id, group, top_concept, top_score, vocabulary_version, is_outlier
    X: np.ndarray  # their embeddings
    model_id: str  # the one model of the store's embeddings


def _sample(tables: tuple[StoredTable, ...], config: EmbeddingClustersConfig) -> Sample:
    """The seeded reservoir sample of the crops with their concept info and embeddings."""
    with connect(*tables) as con:
        models = [r[0] for r in con.execute("SELECT DISTINCT model_id FROM embeddings ORDER BY 1").fetchall()]
        check_embedding_model(models, models[0] if models else "", f"embeddings under {tables[0].store}",
                              "re-materialise `embeddings` for every scene with one model")
        sample = reservoir_sample(con, "SELECT detection_id, embedding FROM embeddings", config.max_sample, config.seed)
        con.register("picked", pa.table({"detection_id": pa.array(sample["detection_id"].tolist(), pa.string())}))
        info = con.execute(_SAMPLE_INFO_SQL).df()
    X = stack_vectors(sample["embedding"], 0)
    return Sample(info.assign(is_outlier=info["is_outlier"].astype(bool)), X, models[0] if models else "")


def _text_namer(info: pd.DataFrame, X: np.ndarray, embedder: EmbedderResource, vocabulary: VocabularyResource,
                model_id: str, config: EmbeddingClustersConfig):
    """A function labels -> text names (on the sample), or (None, why not) when text naming does not apply."""
    if not embedder.shared_space:
        return None, "not available: the embedder's image and text spaces differ (names come from members only)"
    check_embedding_model([model_id], embedder.image_model_id, "stored embeddings",
                          "re-materialise embeddings with the same embedder")
    vocab = vocabulary.load()
    stored = sorted(set(info["vocabulary_version"].dropna()))
    if stored and stored != [vocab.identity]:
        return None, (f"skipped: concept_scores were made with vocabulary {stored}, the resource is "
                      f"{vocab.identity}; re-materialise concept_scores")
    prompts, owners = vocab.prompt_table(config.prompt_template)
    prompt_emb = embedder.encode_texts(prompts)
    n = config.names_per_cluster
    return (lambda labels: text_names(X, labels, prompt_emb, owners, vocab.names, n)), (
        f"nearest concept text to the centroid of the sample ({vocab.identity}, {embedder.text_model_id})"
    )


def _fit(X: np.ndarray, config: EmbeddingClustersConfig) -> tuple[Clustering, Clustering]:
    kmeans = kmeans_clustering(X, config.k, config.k_min, config.k_max, config.n_init, config.seed, config.batch_size)
    m = min(len(X), config.density_max_sample)
    index = np.sort(np.random.default_rng(config.seed).choice(len(X), size=m, replace=False)) if m < len(X) else None
    density = density_clustering(X if index is None else X[index], config.density_method, config.min_cluster_size,
                                 config.dbscan_eps, config.dbscan_min_samples)
    if index is not None:  # every sample row gets its density label; fitted rows keep theirs
        labels = assign(X, density)
        labels[index] = density.labels
        density.labels = labels
        density.notes.append(f"{config.density_method} fitted on {m} of {len(X)} sample rows")
    return kmeans, density


def _label_names(clusterings: tuple[Clustering, ...], info: pd.DataFrame, namer, n: int) -> dict:
    """Per method and label: (member name, text name) strings, from the sample."""
    out = {}
    for c in clusterings:
        members = member_names(c.labels, info["top_concept"], n)
        text = namer(c.labels) if namer else {}
        out[c.method] = {label: (format_names(pairs), format_names(text[label], percent=False) if namer else None)
                         for label, pairs in members.items()}
    return out


def _assign_all(tables, config, assigner: SampleAssigner, tally: ClusterTally) -> list[np.ndarray]:
    """Pass 1: read embeddings batch by batch, assign labels, tally cluster sizes."""
    parts: list[list[np.ndarray]] = [[] for _ in assigner.clusterings]
    for chunk in _chunks(tables, config.scenes_per_batch):
        with connect(*chunk) as con:
            table = con.sql(_rows_sql(True)).to_arrow_table()
        rows = table.drop_columns(["embedding"]).to_pandas()
        labels = assigner(rows["detection_id"].tolist(), arrow_vectors(table.column("embedding")))
        tally.add(rows, labels)
        for part, lab in zip(parts, labels):
            part.append(lab)
    return [np.concatenate(p) if p else np.zeros(0, np.int64) for p in parts]


def _output_batches(tables, config, labels: list[np.ndarray], names: dict, coords: dict) -> pa.RecordBatchReader:
    """Pass 2 (run while the IO manager writes): the output rows, batch by batch, no embeddings."""

    def batches() -> Iterator[pa.RecordBatch]:
        offset = 0
        for chunk in _chunks(tables, config.scenes_per_batch):
            with connect(*chunk) as con:
                df = con.sql(_rows_sql(False)).to_arrow_table().to_pandas()
            part = [lab[offset: offset + len(df)] for lab in labels]
            offset += len(df)
            for prefix, lab in zip(("kmeans", "density"), part):
                method_names = names[prefix if prefix == "kmeans" else config.density_method]
                df[f"{prefix}_cluster"] = lab
                df[f"{prefix}_name"] = [method_names.get(int(v), (None, None))[0] for v in lab]
                df[f"{prefix}_text_name"] = [method_names.get(int(v), (None, None))[1] for v in lab]
            xy = np.array([coords.get(d, (np.nan, np.nan)) for d in df["detection_id"]], dtype=np.float32)
            df["map_x"], df["map_y"] = xy[:, 0] if len(df) else [], xy[:, 1] if len(df) else []
            yield pa.RecordBatch.from_pandas(df[CLUSTER_COLUMNS], schema=CLUSTER_SCHEMA, preserve_index=False)

    return pa.RecordBatchReader.from_batches(CLUSTER_SCHEMA, batches())


def _metadata(tally: ClusterTally, num_sample: int, clusterings: tuple[Clustering, Clustering], names: dict,
              text_how: str, map_source: str, notes: list[str]) -> dict:
    kmeans, density = clusterings
    return {
        "num_crops": tally.num_crops,
        "num_sample": num_sample,
        "num_unscored": tally.num_unscored,
        "num_outliers": tally.num_outliers,
        "kmeans_k": int(kmeans.params["k"]),
        "kmeans_params": dg.MetadataValue.json(kmeans.params),
        "kmeans_calinski_harabasz": kmeans.calinski_harabasz,
        "kmeans_davies_bouldin": kmeans.davies_bouldin,
        "density_method": density.method,
        "density_params": dg.MetadataValue.json(density.params),
        "density_num_clusters": density.n_clusters,
        "density_num_noise": int(sum(n for (m, lab), n in tally.sizes.items() if m == density.method and lab == -1)),
        "density_calinski_harabasz": density.calinski_harabasz,
        "density_davies_bouldin": density.davies_bouldin,
        "clusters": dg.MetadataValue.md(tally.table(names)),
        "text_naming": text_how,
        "map_source": map_source,
        "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in notes) or "none"),
    }


def _empty_clusters() -> pd.DataFrame:
    return CLUSTER_SCHEMA.empty_table().to_pandas()


@dg.asset(
    ins={"embeddings": all_scenes, "concept_scores": all_scenes, "outlier_flags": all_scenes},
    code_version="2",
    kinds={"scikit-learn", "duckdb", "parquet"},
    group_name="mining_global",
)
def embedding_clusters(
    context: dg.AssetExecutionContext,
    config: EmbeddingClustersConfig,
    embeddings: StoredTable,
    concept_scores: StoredTable,
    outlier_flags: StoredTable,
    embedder: EmbedderResource,
    vocabulary: VocabularyResource,
    outlier_reference: OutlierReference,
):
    """One row per embedded crop of all scenes, in (scene_name, detection_id) order (key:
    detection_id; plus scene_name, sample_token, class_name, group, top_concept, top_score,
    is_outlier): its k-means cluster (MiniBatchKMeans; k from config or the best
    Calinski–Harabasz over ``k_min..k_max``) and density cluster (HDBSCAN or DBSCAN; -1 =
    noise), both fitted on a seeded reservoir sample of ``max_sample`` crops and applied to every
    crop in batches (nearest centre; density: noise beyond the cluster's radius; sample members
    keep their fitted labels); each cluster named by its sampled members' most frequent top
    concepts with shares and, when the embedder shares one image/text space (CLIP), by the
    concepts whose text is nearest to the centroid; and its 2-D map position (the reference's
    t-SNE, or one of the sample computed here; NaN off the map). Metadata: Calinski–Harabasz
    and Davies–Bouldin on the sample, a table of clusters over all crops, the embedding map by
    group with outliers marked, the map by k-means cluster and the top-score distribution.

    Tiny data: no embedding rows gives an empty table (warning). Fewer than 3 crops (or fewer
    than 2 distinct embeddings) puts every crop in k-means cluster 0 and density noise, with
    undefined scores; k (or k_max) above ``min(rows - 1, distinct rows)`` is reduced to it and
    HDBSCAN's ``min_cluster_size`` is capped at the row count. Each adjustment is logged and
    listed under ``notes``."""
    started = time.perf_counter()
    tables = (embeddings.require("embedding_clusters"), concept_scores.require("embedding_clusters"),
              outlier_flags.require("embedding_clusters"))
    info, X, model_id = _sample(tables, config)
    if info.empty:
        context.log.warning("no embeddings stored; the cluster table is empty")
        context.add_output_metadata({"num_crops": 0, "seconds": round(time.perf_counter() - started, 3)})
        return _empty_clusters()
    kmeans, density = _fit(X, config)
    namer, text_how = _text_namer(info, X, embedder, vocabulary, model_id, config)
    names = _label_names((kmeans, density), info, namer, config.names_per_cluster)
    coords, map_source = map_lookup(info["detection_id"].to_numpy(dtype=object), X, outlier_reference, model_id,
                                    config.map_max_points, config.tsne_perplexity, config.seed)
    tally = ClusterTally([kmeans.method, density.method], coords)
    labels = _assign_all(tables, config, SampleAssigner((kmeans, density), info["detection_id"]), tally)
    notes = kmeans.notes + density.notes
    for note in notes:
        context.log.warning(note)
    context.add_output_metadata({
        **_metadata(tally, len(info), (kmeans, density), names, text_how, map_source, notes),
        **cluster_plots(tally, info, names["kmeans"], int(kmeans.params["k"]), map_source),
        "seconds_fit_and_assign": round(time.perf_counter() - started, 3),
    })
    return _output_batches(tables, config, labels, names, coords)
