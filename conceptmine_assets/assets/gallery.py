"""`gallery`: static HTML pages of the mined samples' crops (and a bounded all-crops section).

Memory and work follow what is shown, not the store: the items are chosen in DuckDB (the
split's qualifying crops, at most ``max_crops_per_sample`` of a random sample's crops, at most
``max_per_group_class`` crops per (group, class) for the all-crops section); only their display
columns and JPEGs are read, scene batch by scene batch, and shrunk to web thumbnails.
"""

import time

import dagster as dg
import pandas as pd
import pyarrow as pa
from pydantic import Field

from conceptmine_assets.lib.gallery import (
    ITEM_COLUMNS,
    gallery_items,
    page_links,
    page_name,
    render_gallery,
    thumbnail,
)
from conceptmine_assets.lib.outliers import IS_OUTLIER_SQL
from conceptmine_assets.partitions import all_scenes
from conceptmine_assets.resources.storage import atomic_write, location_metadata, side_path
from conceptmine_assets.resources.store_sql import StoredTable, connect
from conceptmine_assets.settings import stage_config



@stage_config("gallery")
class GalleryConfig(dg.Config):
    """Where the gallery goes and how much it shows."""

    output_dir: str | None = Field(None, description="Folder of the pages: unset = <store>/gallery; a relative path "
                                   "is taken under the store; an absolute path or URL (s3://...) as given.")
    title: str = Field("conceptmine gallery", description="Page title.")
    max_crops_per_sample: int = Field(12, ge=1, description="Crops shown per mined sample.")
    max_all_crops: int = Field(300, ge=0, description="Crops in the 'all crops by group' section; 0: no such section.")
    max_per_group_class: int = Field(8, ge=1, description="At most this many crops of one (group, class) in the "
                                     "all-crops section.")
    samples_per_page: int = Field(200, ge=1, description="Mined samples per page (index.html, page-002.html, ...).")
    thumbnail_px: int = Field(192, ge=16, le=2048, description="Longer side of the crop thumbnails, in pixels.")
    scenes_per_batch: int = Field(16, ge=1, description="Scenes read at once when the shown crops are fetched.")


_RANK = "CASE c.\"group\" WHEN 'target' THEN 0 WHEN 'rare' THEN 1 WHEN 'common' THEN 2 ELSE 3 END"
_ORDER = f'{_RANK}, c.top_score DESC NULLS LAST, c.detection_id'
_LIGHT = f"""c.detection_id, c.scene_name, c.sample_token, c.channel, c.class_name, c.top_concept, c.top_score,
       c."group" AS "group", {IS_OUTLIER_SQL} AS is_outlier,
       coalesce(o.outlier_detectors, []::VARCHAR[]) AS outlier_detectors"""
_FROM = "FROM concept_scores c LEFT JOIN outlier_flags o ON o.detection_id = c.detection_id"
CANDIDATE_SQL = {
    "listed": f"SELECT {_LIGHT} {_FROM} WHERE c.detection_id IN (SELECT unnest(detection_ids) FROM mined_split)",
    "own": f"""SELECT * EXCLUDE (r) FROM (
        SELECT {_LIGHT}, row_number() OVER (PARTITION BY c.sample_token ORDER BY {_ORDER}) AS r {_FROM}
        WHERE c.sample_token IN (SELECT sample_token FROM mined_split WHERE len(detection_ids) = 0)) WHERE r <= $per_sample""",
    "all": f"""SELECT * EXCLUDE (r) FROM (
        SELECT {_LIGHT}, row_number() OVER (PARTITION BY c."group", c.class_name ORDER BY {_ORDER}) AS r {_FROM})
        WHERE r <= $per_group_class ORDER BY {_RANK.replace('c.', '')}, top_score DESC NULLS LAST, detection_id
        LIMIT $max_all""",
}
_HEAVY_SQL = """
SELECT w.detection_id, c.caption, p.status AS caption_status, p.backend AS caption_backend, c.concept_names,
       c.concept_scores, o.quality_flags, k.lidar_points, k.lidar_median_depth, k.image_jpeg
FROM wanted w JOIN concept_scores c ON c.detection_id = w.detection_id
LEFT JOIN outlier_flags o ON o.detection_id = w.detection_id
LEFT JOIN crops k ON k.detection_id = w.detection_id
LEFT JOIN captions p ON p.detection_id = w.detection_id
"""


def candidates(con, config: GalleryConfig) -> pd.DataFrame:
    """Every crop the gallery could show (display columns only): a superset of what
    :func:`gallery_items` picks from the whole store, so it picks the same items from these."""
    params = {"per_sample": config.max_crops_per_sample, "per_group_class": config.max_per_group_class,
              "max_all": config.max_all_crops}
    parts = [con.execute(CANDIDATE_SQL["listed"]).df(),
             con.execute(CANDIDATE_SQL["own"], {"per_sample": params["per_sample"]}).df()]
    if config.max_all_crops > 0:
        parts.append(con.execute(CANDIDATE_SQL["all"], {k: params[k] for k in ("per_group_class", "max_all")}).df())
    found = pd.concat(parts, ignore_index=True).drop_duplicates("detection_id").sort_values("detection_id")
    return found.assign(is_outlier=found["is_outlier"].astype(bool)).reset_index(drop=True)


def _display_columns(tables: dict[str, StoredTable], items: pd.DataFrame, config: GalleryConfig) -> tuple[pd.DataFrame, int]:
    """Caption, concepts, flags, LiDAR and a thumbnail of each item, read scene batch by scene
    batch; and how many crop images could not be decoded (shown as missing)."""
    wanted = items[["detection_id", "scene_name"]].drop_duplicates("detection_id")
    scenes = sorted(wanted["scene_name"].dropna().unique())
    parts, broken = [], 0
    for i in range(0, len(scenes), config.scenes_per_batch):
        batch = scenes[i: i + config.scenes_per_batch]
        ids = wanted.loc[wanted["scene_name"].isin(batch), "detection_id"].tolist()
        with connect(*(t.only(batch) for t in tables.values())) as con:
            con.register("wanted", pa.table({"detection_id": pa.array(ids, pa.string())}))
            part = con.execute(_HEAVY_SQL).df()
        thumbs = []
        for jpeg in part["image_jpeg"]:
            try:
                thumbs.append(None if jpeg is None else thumbnail(bytes(jpeg), config.thumbnail_px))
            except OSError:  # PIL's UnidentifiedImageError is an OSError: a crop that is not a JPEG
                broken += 1
                thumbs.append(None)
        parts.append(part.assign(image_jpeg=pd.Series(thumbs, index=part.index, dtype=object)))
    columns = ["detection_id", "caption", "caption_status", "caption_backend", "concept_names", "concept_scores",
               "quality_flags", "lidar_points", "lidar_median_depth", "image_jpeg"]
    return (pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)), broken


def _write_pages(items: pd.DataFrame, shown: pd.DataFrame, config: GalleryConfig, summary: str, folder) -> tuple[list, int]:
    """Render and write one page per page number; (written paths, total bytes)."""
    full = items.merge(shown, on="detection_id", how="left")
    full["has_image"] = [isinstance(b, (bytes, bytearray)) and len(b) > 0 for b in full["image_jpeg"]]
    pages = max(int(full["page"].max()) if len(full) else 1, 1)
    written, size = [], 0
    for page in range(1, pages + 1):
        html = render_gallery(full[full["page"] == page], config.title, summary, page_links(pages, page)).encode()
        path = folder / page_name(page)
        atomic_write(path, lambda fh, data=html: fh.write(data))
        written.append(path)
        size += len(html)
    return written, size


@dg.asset(
    ins={"mined_split": dg.AssetIn(), "concept_scores": all_scenes, "captions": all_scenes, "crops": all_scenes,
         "outlier_flags": all_scenes},
    code_version="3",  # 3: each mined crop says its evidence score and parts
    kinds={"html", "duckdb", "parquet"},
    group_name="mining_global",
)
def gallery(
    context: dg.AssetExecutionContext, config: GalleryConfig, mined_split: StoredTable, concept_scores: StoredTable,
    captions: StoredTable, crops: StoredTable, outlier_flags: StoredTable,
) -> pd.DataFrame:
    """One row per gallery item (section ``mined`` or ``all``, page, position, detection_id,
    sample_token, class_name, group, top concept and score, reason = the sample's mined_split
    reason or null, why = that in words): the items of static, self-contained pages
    ``<output_dir>/index.html`` (+ ``page-002.html``, ...; written atomically; default
    ``<store>/gallery``) that show each mined sample's qualifying crops (a random-fill sample:
    its own crops, target first) as web-sized thumbnails with caption, top concepts with
    scores, outlier detectors and image-quality flags, LiDAR support and why it was selected;
    page 1 also shows at most ``max_per_group_class`` crops per (group, class), target first;
    filterable by group and class in the page (inline JavaScript, no server)."""
    started = time.perf_counter()
    for table in (mined_split, concept_scores, captions, crops, outlier_flags):
        table.require("gallery")
    with connect(mined_split, concept_scores, outlier_flags) as con:
        split = con.execute("SELECT * FROM mined_split ORDER BY rank").df()  # the why-lists and evidence parts too
        found = candidates(con, config)
    items, missing = gallery_items(split, found, config.max_crops_per_sample, config.max_all_crops,
                                   config.max_per_group_class, config.samples_per_page)
    if missing:
        context.log.warning(f"{missing} crops named by mined_split are not in concept_scores; skipped")
    tables = {"concept_scores": concept_scores, "captions": captions, "crops": crops, "outlier_flags": outlier_flags}
    shown, broken = _display_columns(tables, items, config)
    if broken:
        context.log.warning(f"{broken} crop images could not be decoded; shown as missing")
    sections = items["section"].value_counts()
    summary = (f"{len(split)} mined samples, {int(sections.get('mined', 0))} of their crops; "
               f"{int(sections.get('all', 0))} crops in the all-crops section.")
    folder = side_path(mined_split, config.output_dir, "gallery")
    written, size = _write_pages(items, shown, config, summary, folder)
    items["has_image"] = items["detection_id"].isin(shown.loc[shown["image_jpeg"].notna(), "detection_id"])
    without_image = int((~items["has_image"]).sum())
    if without_image:
        context.log.warning(f"{without_image} gallery items have no crop image")
    if split.empty:
        context.log.warning("the mined split is empty; the gallery shows only the all-crops section")
    context.add_output_metadata({
        "html_path": location_metadata(written[0]), "num_pages": len(written), "num_items": len(items),
        "num_mined_items": int(sections.get("mined", 0)), "num_all_crops_items": int(sections.get("all", 0)),
        "num_split_samples": len(split), "num_crops_missing": missing, "num_items_without_image": without_image,
        "num_undecodable_images": broken, "html_bytes": size, "seconds": round(time.perf_counter() - started, 3),
    })
    return items[ITEM_COLUMNS].reset_index(drop=True)
