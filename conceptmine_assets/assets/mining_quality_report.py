"""`mining_quality_report`: ground-truth instances per class in the mined split vs random splits.

Annotations are counted per (sample, class) in DuckDB straight from the dataroot's JSON tables
(the devkit is not loaded), joined with the annotations backend's `detections` rows.
"""

import os
import time
from pathlib import Path
from typing import NamedTuple

import dagster as dg
import duckdb
import pandas as pd
import pyarrow as pa
from pydantic import Field

from conceptmine_assets.lib.plots import class_counts_plot, png_markdown
from conceptmine_assets.lib.coverage import coverage
from conceptmine_assets.lib.tables import markdown_table
from conceptmine_assets.partitions import all_scenes
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.resources.store_sql import StoredTable, connect, sql_literal
from conceptmine_assets.settings import stage_config



def _json(table_dir: Path, name: str, columns: str) -> str:
    return f"read_json({sql_literal(str(table_dir / f'{name}.json'))}, format = 'array', columns = {{{columns}}})"


def _annotations_sql(table_dir: Path) -> str:
    """Annotations of the training samples (those in `frames`) with their category name."""
    return f"""
CREATE TEMP TABLE ann AS
SELECT a.token, a.sample_token, c.name AS category
FROM {_json(table_dir, "sample_annotation", "token: 'VARCHAR', sample_token: 'VARCHAR', instance_token: 'VARCHAR'")} a
JOIN {_json(table_dir, "instance", "token: 'VARCHAR', category_token: 'VARCHAR'")} i ON i.token = a.instance_token
JOIN {_json(table_dir, "category", "token: 'VARCHAR', name: 'VARCHAR'")} c ON c.token = i.category_token
WHERE a.sample_token IN (SELECT sample_token FROM frames)
"""


_CLASSED_SQL = """
CREATE TEMP TABLE ann_classed AS
SELECT a.sample_token, a.category, d.class_name AS from_detections,
       coalesce(d.class_name, m.detection_name) AS class_name
FROM ann a
LEFT JOIN (SELECT annotation_token, any_value(class_name) AS class_name FROM detections
           WHERE detector = 'annotations' AND annotation_token IS NOT NULL GROUP BY 1) d
       ON d.annotation_token = a.token
LEFT JOIN catmap m ON m.category = a.category
"""


class GroundTruth(NamedTuple):
    counts: pd.DataFrame  # sample_token, class_name, n (annotations)
    unmapped: dict[str, int]  # annotations without a class, per nuScenes category
    from_detections: int  # annotations whose class came from `detections`


def gt_counts(con: duckdb.DuckDBPyConnection, table_dir: Path) -> GroundTruth:
    """Annotation counts per (sample, class) of the training samples, unmapped ones, and how
    many classes came from `detections`.

    The class is the annotations backend's ``class_name`` in `detections` where the annotation
    has a row there (same normalisation as the crops), else the devkit's
    ``category_to_detection_name`` (the 10 nuScenes detection classes). Annotations with neither
    are left out and counted by category.
    """
    from nuscenes.eval.detection.utils import category_to_detection_name

    con.execute(_annotations_sql(table_dir))
    categories = [r[0] for r in con.execute("SELECT DISTINCT category FROM ann ORDER BY 1").fetchall()]
    con.register("catmap", pa.table({"category": pa.array(categories, pa.string()), "detection_name": pa.array(
        [category_to_detection_name(c) for c in categories], pa.string())}))
    con.execute(_CLASSED_SQL)
    counts = con.execute("SELECT sample_token, class_name, count(*) AS n FROM ann_classed "
                         "WHERE class_name IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2").df()
    unmapped = dict(con.execute("SELECT category, count(*) FROM ann_classed WHERE class_name IS NULL "
                                "GROUP BY 1 ORDER BY 1").fetchall())
    used = con.execute("SELECT count(from_detections) FROM ann_classed").fetchone()[0]
    return GroundTruth(counts, {str(k): int(v) for k, v in unmapped.items()}, int(used))


@stage_config("mining_quality_report")
class MiningQualityConfig(dg.Config):
    """The random baseline of the mining-quality report."""

    n_random: int = Field(20, ge=1, description="Seeded random splits of the mined split's size to compare with.")
    seed: int = Field(0, description="Seed of the random splits.")


@dg.asset(
    ins={"mined_split": dg.AssetIn(), "frames": all_scenes, "detections": all_scenes},
    code_version="2",
    kinds={"nuscenes", "duckdb", "parquet"},
    group_name="mining_global",
)
def mining_quality_report(
    context: dg.AssetExecutionContext,
    config: MiningQualityConfig,
    nuscenes: NuScenesResource,
    mined_split: StoredTable,
    frames: StoredTable,
    detections: StoredTable,
) -> pd.DataFrame:
    """Per class (class_name): ground-truth annotation instances in the training set (gt_total,
    samples of `frames`), in the mined split's samples (mined), and the mean / std over
    ``n_random`` seeded random splits of the same size (random_mean, random_std), with
    ``ratio = mined / random_mean``. Classes come from the annotations backend's `detections`
    rows where present, otherwise from the devkit's nuScenes detection-class mapping; needs an
    annotated dataroot. Annotations are counted per (sample, class) in DuckDB straight from the
    dataroot's tables (no devkit load). The metadata holds the table in Markdown."""
    started = time.perf_counter()
    mined_split.require("mining_quality_report")
    frames.require("mining_quality_report")
    nuscenes.check()
    with connect(mined_split, frames, detections) as con:
        split = [r[0] for r in con.execute("SELECT DISTINCT sample_token FROM mined_split ORDER BY 1").fetchall()]
        universe = [r[0] for r in con.execute("SELECT DISTINCT sample_token FROM frames ORDER BY 1").fetchall()]
        gt, unmapped, from_detections = gt_counts(con, nuscenes.table_dir)
    if gt.empty:  # raw drives without labels: nothing to judge, and not an error of the data
        annotated = os.path.getsize(os.path.join(nuscenes.table_dir, "sample_annotation.json")) > 2
        what = "of a known class in the" if annotated else "at all (sample_annotation.json is empty, e.g. made by import-images) in its"
        context.log.warning(
            f"nuScenes at {nuscenes.dataroot} has no annotations {what} "
            f"{len(universe)} training samples; the report needs an annotated dataroot (empty report)"
        )
    report = coverage(gt, universe, split, config.n_random, config.seed)
    if not split:
        context.log.warning("the mined split is empty; every ratio is undefined")
    context.add_output_metadata(
        {
            "report": dg.MetadataValue.md(markdown_table(report)),
            "per_class_plot": dg.MetadataValue.md(png_markdown(class_counts_plot(report), "per-class counts")),
            "num_split_samples": len(split),
            "num_training_samples": len(universe),
            "num_annotations": int(gt["n"].sum()) if len(gt) else 0,
            "num_classes_from_detections": from_detections,
            "unmapped_annotations": dg.MetadataValue.json(unmapped),
            "n_random": config.n_random,
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
    return report
