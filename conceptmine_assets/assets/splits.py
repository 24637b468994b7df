"""`mined_split` (which nuScenes samples to add to 3D training, and why) and `mining_quality_report`."""

import pickle
import time

import dagster as dg
import numpy as np
import pandas as pd
from upath import UPath

from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.lib.plots import class_counts_plot, png_markdown
from conceptmine_assets.lib.splits import (
    REASONS,
    SplitParams,
    coverage,
    explain,
    filter_mmdet3d_infos,
    filtered_infos_name,
    load_pickle,
    markdown_table,
    select_split,
)
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.resources.storage import DuckDBResource, atomic_write
from conceptmine_assets.settings import stage_config


@stage_config("mined_split")
class SplitConfig(dg.Config):
    """Budgets (fractions of all training samples) and where the side files go."""

    name: str = "mined"  # side files <output_dir>/<name>.txt and <name>_<infos file name>
    random_frac: float = 0.10
    target_frac: float = 0.10
    rare_frac: float = 0.0
    seed: int = 0
    output_dir: str = "data/splits"  # local path or fsspec URL
    mmdet3d_infos_path: str | None = None  # e.g. .../nuscenes_infos_train.pkl


_CROPS_SQL = """
SELECT c.detection_id, c.sample_token, c."group" AS "group", c.top_concept, c.top_score, c.caption,
       o.is_outlier, o.outlier_detectors, o.detection_id IS NOT NULL AS has_flags
FROM concept_scores c LEFT JOIN outlier_flags o ON o.detection_id = c.detection_id
"""


def _read_inputs(duckdb: DuckDBResource) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(universe: one row per training sample, crops: concept scores joined with outlier flags)."""
    universe = duckdb.query(
        "SELECT sample_token, min(scene_name) AS scene_name FROM frames GROUP BY sample_token ORDER BY sample_token"
    )
    crops = duckdb.query(_CROPS_SQL)
    return universe, crops


def _fill_missing_flags(crops: pd.DataFrame) -> int:
    """Crops without an outlier_flags row count as non-outliers; returns how many (for metadata)."""
    missing = int((~crops["has_flags"].astype(bool)).sum())
    crops["is_outlier"] = crops["is_outlier"].astype("boolean").fillna(False).astype(bool)
    crops["outlier_detectors"] = [
        [str(x) for x in d] if isinstance(d, (list, np.ndarray)) else [] for d in crops["outlier_detectors"]
    ]
    return missing


def _write_text(path: UPath, tokens: list[str]) -> None:
    data = "".join(f"{t}\n" for t in tokens).encode()
    atomic_write(path, lambda fh: fh.write(data))


def _write_infos(config: SplitConfig, out_dir: UPath, tokens: set[str]) -> tuple[str, int]:
    """Filter the mmdet3d info pickle to the split; (written path, number of split samples in it)."""
    src = UPath(config.mmdet3d_infos_path)
    filtered, kept = filter_mmdet3d_infos(load_pickle(src), tokens, str(src))
    dst = out_dir / filtered_infos_name(config.name, config.mmdet3d_infos_path)
    atomic_write(dst, lambda fh: pickle.dump(filtered, fh, protocol=pickle.HIGHEST_PROTOCOL))
    return str(dst), kept


@dg.asset(
    deps=["concept_scores", "outlier_flags", "frames"],
    code_version="1",
    kinds={"duckdb", "parquet"},
    group_name="mining_global",
)
def mined_split(context: dg.AssetExecutionContext, config: SplitConfig, duckdb: DuckDBResource) -> pd.DataFrame:
    """One row per selected nuScenes **sample token** (the grain 3D training uses): scene_name,
    reason (target_outlier | target | rare_outlier | rare | random), rank (selection order) and
    why: the detection_ids, top concepts, scores, captions and outlier detectors of the crops
    that qualified the sample. Budgets are fractions of all distinct sample tokens in `frames`
    (the whole training set; the paper's script used its results file, a bug fixed here), each
    ``floor(frac * N)``; targets fill first (target∧outlier before target), then rare, then a
    seeded random fill. Side files: ``<output_dir>/<name>.txt`` (one token per line) and, with
    ``mmdet3d_infos_path``, a filtered copy of that mmdetection3d info pickle."""
    started = time.perf_counter()
    duckdb.require(["frames", "concept_scores", "outlier_flags"], "mined_split")
    universe, crops = _read_inputs(duckdb)
    if universe.empty:
        raise ConceptmineError(f"`frames` under {duckdb.base_path} has no samples; nothing to split")
    missing_flags = _fill_missing_flags(crops)
    if missing_flags:
        context.log.warning(f"{missing_flags} concept-scored crops have no outlier_flags row; counted as non-outliers")
    outside = int((~crops["sample_token"].isin(universe["sample_token"])).sum())
    if outside:
        context.log.warning(f"{outside} concept-scored crops belong to samples not in `frames`; ignored")
    params = SplitParams(config.random_frac, config.target_frac, config.rare_frac, config.seed)
    split, caps = select_split(universe, crops, params)
    split = explain(split, crops)

    out_dir = UPath(config.output_dir)
    tokens = split["sample_token"].tolist()
    txt = out_dir / f"{config.name}.txt"
    _write_text(txt, tokens)
    files = {"token_list": str(txt)}
    infos_md: dict = {}
    if config.mmdet3d_infos_path:
        files["mmdet3d_infos"], kept = _write_infos(config, out_dir, set(tokens))
        absent = len(tokens) - kept
        if absent:
            context.log.warning(f"{absent} split samples are not in {config.mmdet3d_infos_path}")
        infos_md = {"num_in_mmdet3d_infos": kept, "num_missing_from_mmdet3d_infos": absent}
    counts = split["reason"].value_counts()
    context.add_output_metadata(
        {
            "num_selected": len(split),
            "num_training_samples": len(universe),
            **{f"num_{r}": int(counts.get(r, 0)) for r in REASONS},
            "budgets": dg.MetadataValue.json(caps),
            "num_crops": len(crops),
            "num_crops_without_outlier_flags": missing_flags,
            "num_crops_outside_frames": outside,
            **{k: dg.MetadataValue.path(v) for k, v in files.items()},
            **infos_md,
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
    return split


@stage_config("mining_quality_report")
class MiningQualityConfig(dg.Config):
    n_random: int = 20  # random splits of the mined split's size
    seed: int = 0


def _detection_classes(duckdb: DuckDBResource) -> dict[str, str]:
    """annotation_token -> class_name of `detections` rows from the annotations backend."""
    if "detections" not in duckdb.stored_assets():
        return {}
    df = duckdb.query(
        "SELECT annotation_token, any_value(class_name) AS class_name FROM detections "
        "WHERE detector = 'annotations' AND annotation_token IS NOT NULL GROUP BY annotation_token"
    )
    return dict(zip(df["annotation_token"], df["class_name"]))


def gt_classes(nuscenes: NuScenesResource, samples: set[str], from_detections: dict[str, str]) -> tuple[pd.DataFrame, dict[str, int], int]:
    """One row per annotation of ``samples`` (sample_token, class_name); unmapped counts per category;
    how many classes came from `detections`.

    The class is the annotations backend's ``class_name`` in `detections` where the annotation
    has a row there (same normalisation as the crops), else the devkit's
    ``category_to_detection_name`` (the 10 nuScenes detection classes). Annotations with neither
    are left out and counted by category.
    """
    from nuscenes.eval.detection.utils import category_to_detection_name

    rows, unmapped, used = [], {}, 0
    for ann in nuscenes.nusc.sample_annotation:
        if ann["sample_token"] not in samples:
            continue
        name = from_detections.get(ann["token"])
        used += name is not None
        name = name or category_to_detection_name(ann["category_name"])
        if name is None:
            unmapped[ann["category_name"]] = unmapped.get(ann["category_name"], 0) + 1
            continue
        rows.append((ann["sample_token"], name))
    return pd.DataFrame(rows, columns=["sample_token", "class_name"]), unmapped, used


@dg.asset(
    deps=["mined_split", "detections", "frames"],
    code_version="1",
    kinds={"nuscenes", "parquet"},
    group_name="mining_global",
)
def mining_quality_report(
    context: dg.AssetExecutionContext,
    config: MiningQualityConfig,
    nuscenes: NuScenesResource,
    duckdb: DuckDBResource,
) -> pd.DataFrame:
    """Per class (class_name): ground-truth annotation instances in the training set (gt_total,
    samples of `frames`), in the mined split's samples (mined), and the mean / std over
    ``n_random`` seeded random splits of the same size (random_mean, random_std), with
    ``ratio = mined / random_mean``. Classes come from the annotations backend's `detections`
    rows where present, otherwise from the devkit's nuScenes detection-class mapping; needs an
    annotated dataroot. The metadata holds the table in Markdown."""
    started = time.perf_counter()
    duckdb.require(["mined_split", "frames"], "mining_quality_report")
    split = duckdb.query("SELECT DISTINCT sample_token FROM mined_split")["sample_token"].tolist()
    universe = duckdb.query("SELECT DISTINCT sample_token FROM frames ORDER BY sample_token")["sample_token"].tolist()
    gt, unmapped, from_detections = gt_classes(nuscenes, set(universe), _detection_classes(duckdb))
    if gt.empty:  # raw drives without labels: nothing to judge, and not an error of the data
        what = ("no annotations at all (sample_annotation.json is empty, e.g. made by import-images)"
                if not nuscenes.nusc.sample_annotation else
                f"no annotations of a known class in the {len(universe)} training samples")
        context.log.warning(f"nuScenes at {nuscenes.dataroot} has {what}; the report needs an annotated dataroot (empty report)")
    report = coverage(gt, universe, split, config.n_random, config.seed)
    if not split:
        context.log.warning("the mined split is empty; every ratio is undefined")
    context.add_output_metadata(
        {
            "report": dg.MetadataValue.md(markdown_table(report)),
            "per_class_plot": dg.MetadataValue.md(png_markdown(class_counts_plot(report), "per-class counts")),
            "num_split_samples": len(split),
            "num_training_samples": len(universe),
            "num_annotations": len(gt),
            "num_classes_from_detections": from_detections,
            "unmapped_annotations": dg.MetadataValue.json(unmapped),
            "n_random": config.n_random,
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
    return report
