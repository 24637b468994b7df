"""`mined_split`: which nuScenes samples to add to 3D training, and why.

It reads the store through :class:`StoredTable` inputs: per-sample aggregates are computed in
DuckDB, so memory follows the number of samples (and of the split's crops), not of all crops.
"""

import pickle
import time

import dagster as dg
import duckdb
import pandas as pd
import pyarrow as pa
from pydantic import Field
from upath import UPath

from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.lib.evidence import evidence_sql, register_reviews
from conceptmine_assets.lib.mmdet3d import filter_mmdet3d_infos, filtered_infos_name, load_pickle
from conceptmine_assets.lib.splits import REASONS, TIERS_SQL, SplitParams, add_why, select_from_tiers, select_ranked
from conceptmine_assets.partitions import all_scenes
from conceptmine_assets.resources.reviews_log import read_effective
from conceptmine_assets.resources.vocabulary import VocabularyResource
from conceptmine_assets.resources.storage import StoredTable, atomic_write, location_metadata, side_path
from conceptmine_assets.resources.store_sql import connect
from conceptmine_assets.settings import stage_config


@stage_config("mined_split")
class SplitConfig(SplitParams, dg.Config):
    """Budgets (fractions of all training samples), the selection order and where the side files go.

    The selection settings (fractions, seed, strategy) are :class:`SplitParams`' fields, inherited
    with their descriptions and bounds; the config is itself the ``SplitParams`` the selection reads."""

    name: str = Field("mined", pattern=r"^[A-Za-z0-9._-]+$",
                      description="Side files are <output_dir>/<name>.txt and <name>_<infos file name>.")
    output_dir: str | None = Field(
        None, description="Folder of the side files: unset = <store>/splits; a relative path is taken under the "
        "store; an absolute path or URL (s3://...) as given.")
    mmdet3d_infos_path: str | None = Field(None, description="mmdetection3d info pickle to filter to the split, "
                                           "e.g. .../nuscenes_infos_train.pkl.")


UNIVERSE_SQL = "SELECT sample_token, min(scene_name) AS scene_name FROM frames GROUP BY 1 ORDER BY 1"
COUNTS_SQL = """
SELECT count(*) AS num_crops,
       count(*) FILTER (WHERE o.detection_id IS NULL) AS without_flags,
       count(*) FILTER (WHERE c.sample_token NOT IN (SELECT sample_token FROM frames)) AS outside
FROM concept_scores c LEFT JOIN outlier_flags o ON o.detection_id = c.detection_id
"""
QUALIFYING_SQL = """
SELECT e.detection_id, e.sample_token, e."group", e.top_concept, e.top_score, e.caption, e.is_outlier,
       e.outlier_detectors, e.outlier, e.rarity, e.confidence, e.detector_confidence, e.score, e.review
FROM evidence e SEMI JOIN chosen c ON c.sample_token = e.sample_token
WHERE e."group" IN ('target', 'rare') OR e.review = 'confirmed'
ORDER BY e.detection_id
"""


def qualifying_crops(con: duckdb.DuckDBPyConnection, split: pd.DataFrame) -> pd.DataFrame:
    """Target and rare crops of the split's non-random samples with their evidence (view
    ``evidence``): all that :func:`add_why` reads."""
    tokens = split.loc[~split["reason"].str.startswith("random"), "sample_token"]
    con.register("chosen", pa.table({"sample_token": pa.array(tokens.tolist(), pa.string())}))
    crops = con.execute(QUALIFYING_SQL).df()
    crops["is_outlier"] = crops["is_outlier"].astype(bool)
    return crops


def _write_side_files(config: SplitConfig, frames: StoredTable, tokens: list[str]) -> tuple[dict, dict]:
    """The token list and (optionally) the filtered mmdet3d infos; (paths metadata, infos counts)."""
    txt = side_path(frames, config.output_dir, "splits", f"{config.name}.txt")
    data = "".join(f"{t}\n" for t in tokens).encode()
    atomic_write(txt, lambda fh: fh.write(data))
    files = {"token_list": location_metadata(txt)}
    if not config.mmdet3d_infos_path:
        return files, {}
    src = UPath(config.mmdet3d_infos_path, **(frames.storage_options if "://" in config.mmdet3d_infos_path else {}))
    filtered, kept = filter_mmdet3d_infos(load_pickle(src), set(tokens), str(src))
    dst = side_path(frames, config.output_dir, "splits", filtered_infos_name(config.name, config.mmdet3d_infos_path))
    atomic_write(dst, lambda fh: pickle.dump(filtered, fh, protocol=pickle.HIGHEST_PROTOCOL))
    files["mmdet3d_infos"] = location_metadata(dst)
    return files, {"num_in_mmdet3d_infos": kept, "num_missing_from_mmdet3d_infos": len(tokens) - kept}


def _zero_budget_notes(config: SplitConfig, caps: dict[str, int], n: int) -> list[str]:
    """Why a configured (non-zero) share selects nothing: its budget rounds down to 0."""
    fracs = {"random": config.random_frac, "target": config.target_frac, "rare": config.rare_frac}
    return [f"{k}_frac {f} of {n} samples rounds down to a budget of 0" for k, f in fracs.items() if f > 0 and caps[k] == 0]


def select_in_store(con: duckdb.DuckDBPyConnection, config: SplitParams, store: str, reviews: pd.DataFrame | None,
                    groups: dict[str, str]):
    """(split with its why-lists, budgets, the training set, (crops, without flags, outside frames))."""
    register_reviews(con, reviews if config.strategy == "ranked" else None, groups)
    con.execute(f"CREATE VIEW evidence AS {evidence_sql(config)}")
    universe = con.execute(UNIVERSE_SQL).df()
    if universe.empty:
        raise ConceptmineError(f"`frames` under {store} has no samples; nothing to split")
    counts = con.execute(COUNTS_SQL).fetchall()[0]
    if config.strategy == "ranked":
        split, caps = select_ranked(con, universe, config)
    else:
        split, caps = select_from_tiers(universe, con.execute(TIERS_SQL).df(), config)
    split = add_why(split, qualifying_crops(con, split), config.strategy,
                    config.max_evidence_crops if config.strategy == "ranked" else None)
    return split, caps, universe, counts


@dg.asset(
    deps=["reviews"],
    ins={"frames": all_scenes, "detections": all_scenes, "concept_scores": all_scenes, "outlier_flags": all_scenes,
         "embeddings": all_scenes},
    code_version="3",  # 3: ranked strategy (evidence score, diversity), score columns
    kinds={"duckdb", "parquet"},
    group_name="mining_global",
)
def mined_split(
    context: dg.AssetExecutionContext, config: SplitConfig, frames: StoredTable, detections: StoredTable,
    concept_scores: StoredTable, outlier_flags: StoredTable, embeddings: StoredTable, vocabulary: VocabularyResource,
) -> pd.DataFrame:
    """One row per selected nuScenes **sample token** (the grain 3D training uses): scene_name,
    reason (confirmed | target_outlier | target | rare_outlier | rare | random | random_fill), rank,
    score (ranked: its evidence score), duplicate_of (the chosen crop its best crop repeats) and
    why: the qualifying crops' ids, concepts, scores, captions, outlier detectors and evidence
    parts (crop_scores, crop_outlier, crop_rarity, crop_confidence, crop_detector_confidence), best
    first. Budgets are fractions of all samples in `frames`. ``ranked`` (default): reviewed-confirmed,
    then outlier, then other target/rare candidates by evidence score, near-duplicates penalised,
    rejected crops never (``lib/evidence.py``, ``lib/diverse.py``); ``priority``/``paper``: tier and
    hash order (``lib/splits.py``). Side files: ``<store>/splits/<name>.txt`` and, with
    ``mmdet3d_infos_path``, the filtered mmdetection3d info pickle."""
    started = time.perf_counter()
    for table in (frames, concept_scores, outlier_flags):
        table.require("mined_split")
    if config.strategy == "ranked":
        embeddings.require("mined_split (strategy ranked compares the evidence crops' embeddings)")
    reviews = read_effective(frames.store, frames.storage_options)  # the reviews in force (lib/reviews.py)
    groups = {c.name: c.group for c in vocabulary.load().concepts}
    with connect(frames, detections, concept_scores, outlier_flags, embeddings) as con:
        split, caps, universe, (num_crops, without_flags, outside) = select_in_store(
            con, config, frames.store, reviews, groups)
    if without_flags:
        context.log.warning(f"{without_flags} concept-scored crops have no outlier_flags row; counted as non-outliers")
    if outside:
        context.log.warning(f"{outside} concept-scored crops belong to samples not in `frames`; ignored")
    notes = _zero_budget_notes(config, caps, len(universe))
    for note in notes:
        context.log.warning(note)
    files, infos_md = _write_side_files(config, frames, split["sample_token"].tolist())
    if infos_md.get("num_missing_from_mmdet3d_infos"):
        context.log.warning(f"{infos_md['num_missing_from_mmdet3d_infos']} split samples are not in "
                            f"{config.mmdet3d_infos_path}")
    counts = split["reason"].value_counts()
    context.add_output_metadata(
        {
            "num_selected": len(split),
            "num_duplicates_taken_last": int(split["duplicate_of"].notna().sum()),
            "score_min_mined": float(split["score"].min()) if split["score"].notna().any() else None,
            "num_training_samples": len(universe),
            **{f"num_{r}": int(counts.get(r, 0)) for r in REASONS},
            "strategy": config.strategy,
            "budgets": dg.MetadataValue.json(caps),
            "zero_budgets": dg.MetadataValue.md("\n".join(f"- {n}" for n in notes) or "none"),
            "num_crops": int(num_crops), "num_crops_without_outlier_flags": int(without_flags),
            "num_crops_outside_frames": int(outside), "num_scenes_without_frames": len(frames.missing),
            **files, **infos_md, "seconds": round(time.perf_counter() - started, 3),
        }
    )
    return split

from conceptmine_assets.settings import stage_config

