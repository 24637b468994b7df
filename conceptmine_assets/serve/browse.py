"""The crop grid (filters and keyset paging), the facets that fill the filters, a crop's detail,
and the mined split: DuckDB over the store's files, never a whole-store read per page.

Paging is by key, not offset: rows are ordered by (scene_name, detection_id) and the cursor is
the last row's key. A page reads scenes in growing batches (16, 64, 256, ... scene files) from
the cursor's scene on until it has its rows, so the first page at 850 scenes reads a few
dozen files, and a filter that matches little reads what it must.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

from conceptmine_assets.lib.explain import why_mined
from conceptmine_assets.serve.store import StoreReader, bad_request, jsonable, not_found, parse_count, records

GROUPS = ("common", "rare", "target")
DETECTORS = ("iforest", "lof", "knn")
FIRST_BATCH = 16  # scene files read by a page's first query; each further query reads 4x more
MAX_LIMIT = 200
FILTERS = ("group", "class", "concept", "scene", "reason", "detector")

_CROPS = ("SELECT detection_id, scene_name, sample_token, sample_data_token, channel, class_name, confidence, "
          "lidar_points, lidar_median_depth FROM {src}")
_SCORES = 'SELECT detection_id, "group", top_concept, top_score FROM {src}'
_NO_SCORES = ('SELECT NULL::VARCHAR AS detection_id, NULL::VARCHAR AS "group", NULL::VARCHAR AS top_concept, '
              "NULL::FLOAT AS top_score WHERE false")
_FLAGS = "SELECT detection_id, is_outlier, outlier_detectors, quality_flags FROM {src}"
_NO_FLAGS = ("SELECT NULL::VARCHAR AS detection_id, NULL::BOOLEAN AS is_outlier, NULL::VARCHAR[] AS outlier_detectors, "
             "NULL::VARCHAR[] AS quality_flags WHERE false")
_SPLIT = "SELECT sample_token, reason, detection_ids AS split_detection_ids FROM {src}"
_NO_SPLIT = ("SELECT NULL::VARCHAR AS sample_token, NULL::VARCHAR AS reason, NULL::VARCHAR[] AS split_detection_ids "
             "WHERE false")
_GRID = """
SELECT c.detection_id, c.scene_name, c.sample_token, c.sample_data_token, c.channel, c.class_name, c.confidence,
       c.lidar_points, c.lidar_median_depth, s."group", s.top_concept, s.top_score,
       coalesce(o.is_outlier, false) AS is_outlier, o.outlier_detectors, o.quality_flags, m.reason,
       coalesce(list_contains(m.split_detection_ids, c.detection_id), false) AS qualified
FROM ({crops}) c
LEFT JOIN ({scores}) s ON s.detection_id = c.detection_id
LEFT JOIN ({flags}) o ON o.detection_id = c.detection_id
LEFT JOIN ({split}) m ON m.sample_token = c.sample_token
WHERE {where}
ORDER BY c.scene_name, c.detection_id
LIMIT {limit}
"""


@dataclass(frozen=True)
class CropFilter:
    """Validated grid filters (None: no filter)."""

    group: str | None = None
    class_name: str | None = None
    concept: str | None = None
    scene: str | None = None
    reason: str | None = None  # a stored reason, "any" (in the split) or "none" (not in it)
    detector: str | None = None  # iforest | lof | knn, "any" (an embedding outlier) or "none"

    def sql(self) -> tuple[list[str], list[Any]]:
        """WHERE clauses and their parameters."""
        where, params = [], []
        for column, value in (('s."group"', self.group), ("c.class_name", self.class_name),
                              ("s.top_concept", self.concept), ("c.scene_name", self.scene)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        for value, is_any, is_value in ((self.reason, "m.reason IS NOT NULL", "m.reason = ?"),
                                        (self.detector, "coalesce(o.is_outlier, false)",
                                         "list_contains(o.outlier_detectors, ?)")):
            if value in ("any", "none"):  # "any": mined / an outlier at all; "none": not
                where.append(is_any if value == "any" else f"NOT ({is_any})")
            elif value is not None:
                where.append(is_value)
                params.append(value)
        return where, params


FACETS = {  # facet -> (asset, the SQL of its values and counts, the folders it depends on)
    "class": ("crops", "SELECT class_name AS v, count(*) AS n FROM {src} GROUP BY 1", ("crops",)),
    "group": ("concept_scores", 'SELECT "group" AS v, count(*) AS n FROM {src} GROUP BY 1', ("concept_scores",)),
    "concept": ("concept_scores", "SELECT top_concept AS v, count(*) AS n FROM {src} GROUP BY 1", ("concept_scores",)),
    "reason": ("mined_split", "SELECT reason AS v, count(*) AS n FROM {src} GROUP BY 1", ("",)),
    "detector": ("outlier_flags", "SELECT unnest(outlier_detectors) AS v, count(*) AS n FROM {src} GROUP BY 1",
                 ("outlier_flags",)),
}


def facet(reader: StoreReader, name: str) -> dict[str, int]:
    """The stored values of one filter with their crop counts; recomputed only when its asset's
    files change (a full column scan: about a second at 850 scenes)."""
    asset, sql, folders = FACETS[name]

    def compute() -> dict[str, int]:
        src = reader.source(asset)
        return _counts(reader, sql.format(src=src)) if src else {}

    return reader.cached(f"facet:{name}", folders, compute)


def facets(reader: StoreReader) -> dict[str, Any]:
    """The values each filter can take, with crop counts (what the page's selects list)."""
    return {"scenes": reader.scenes(), **{name: facet(reader, name) for name in FACETS}}


def _counts(reader: StoreReader, sql: str) -> dict[str, int]:
    df = reader.query(sql + " ORDER BY 1")
    return {str(v): int(n) for v, n in zip(df["v"], df["n"]) if v is not None}


def parse_filter(reader: StoreReader, params: dict[str, str]) -> CropFilter:
    """Filters from query parameters, each checked against the stored values (only the facets of
    the filters given are read)."""
    values: dict[str, str | None] = {}
    for name in FILTERS:
        value = params.get(name)
        values[name] = value.strip() if value and value.strip() else None
    fixed = {"group": list(GROUPS), "detector": [*DETECTORS, "any", "none"], "scene": None}
    for name, value in values.items():
        if value is None:
            continue
        if name == "scene":
            allowed = reader.scenes()
        elif name in ("group", "detector"):
            allowed = fixed[name]
        else:
            allowed = list(facet(reader, name)) + (["any", "none"] if name == "reason" else [])
        if value not in allowed:
            shown = ", ".join(allowed[:20]) + (" ..." if len(allowed) > 20 else "")
            raise bad_request(f"bad filter {name}={value!r}: not one of the stored values ({shown})")
    return CropFilter(values["group"], values["class"], values["concept"], values["scene"], values["reason"],
                      values["detector"])


def parse_limit(text: str | None, default: int = 60) -> int:
    return parse_count("limit", text, default, MAX_LIMIT)


def parse_cursor(text: str | None) -> tuple[str, str] | None:
    """``<scene>/<detection_id>`` of the last row of the previous page."""
    if not text:
        return None
    scene, sep, detection = text.rpartition("/")
    if not sep or not scene or not detection:
        raise bad_request(f"cursor={text!r} is not <scene>/<detection_id> (use the next_cursor of the previous page)")
    return scene, detection


def crop_page(reader: StoreReader, where: CropFilter, limit: int, cursor: tuple[str, str] | None) -> dict[str, Any]:
    """One page of the grid: ``limit`` crops after ``cursor`` and the cursor of the next page."""
    scenes = [where.scene] if where.scene else reader.scenes()
    start = bisect.bisect_left(scenes, cursor[0]) if cursor else 0
    rows: list[dict[str, Any]] = []
    batch = FIRST_BATCH
    while start < len(scenes) and len(rows) <= limit:
        part = scenes[start : start + batch]
        rows += _grid_rows(reader, part, where, limit + 1 - len(rows), cursor)
        start += len(part)
        batch *= 4
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = f"{rows[-1]['scene_name']}/{rows[-1]['detection_id']}" if more and rows else None
    return {"crops": rows, "next_cursor": next_cursor}


def _grid_rows(reader: StoreReader, scenes: list[str], where: CropFilter, limit: int,
               cursor: tuple[str, str] | None) -> list[dict[str, Any]]:
    crops = reader.source("crops", scenes)
    if crops is None:
        return []
    scores, flags, split = reader.source("concept_scores", scenes), reader.source("outlier_flags", scenes), \
        reader.source("mined_split")
    clauses, params = where.sql()
    if cursor is not None:
        clauses.append("(c.scene_name > ? OR (c.scene_name = ? AND c.detection_id > ?))")
        params += [cursor[0], cursor[0], cursor[1]]
    sql = _GRID.format(
        crops=_CROPS.format(src=crops), scores=_SCORES.format(src=scores) if scores else _NO_SCORES,
        flags=_FLAGS.format(src=flags) if flags else _NO_FLAGS, split=_SPLIT.format(src=split) if split else _NO_SPLIT,
        where=" AND ".join(clauses) or "true", limit=int(limit),
    )
    return records(reader.query(sql, params))


def _one(reader: StoreReader, asset: str, scene: str, detection_id: str, columns: str = "*") -> dict[str, Any] | None:
    src = reader.source(asset, [scene])
    if src is None:
        return None
    df = reader.query(f"SELECT {columns} FROM {src} WHERE detection_id = ?", [detection_id])
    return records(df)[0] if len(df) else None


CROP_DETAIL_COLUMNS = "* EXCLUDE (image_jpeg)"


def require_crop(reader: StoreReader, scene: str, detection_id: str) -> dict[str, Any]:
    """The crop's row (without its JPEG); 404 naming the id when there is none."""
    reader.require_scene(scene)
    crop = _one(reader, "crops", scene, detection_id, CROP_DETAIL_COLUMNS)
    if crop is None:
        raise not_found(f"unknown crop id {detection_id!r} in scene {scene!r}")
    return crop


def crop_detail(reader: StoreReader, scene: str, detection_id: str, top: int = 8) -> dict[str, Any]:
    """Everything the detail panel shows, and why the crop was or was not mined."""
    crop = require_crop(reader, scene, detection_id)
    scores = _one(reader, "concept_scores", scene, detection_id)
    concepts = []
    if scores is not None:
        pairs = zip(scores.pop("concept_names") or [], scores.pop("concept_scores") or [])
        concepts = [{"concept": c, "score": s} for c, s in sorted(pairs, key=lambda p: -(p[1] or 0))[:top]]
    caption = _one(reader, "captions", scene, detection_id, "* EXCLUDE (caption_embedding)")
    flags = _one(reader, "outlier_flags", scene, detection_id)
    detection = _one(reader, "detections", scene, detection_id)
    split = sample_in_split(reader, crop["sample_token"])
    qualified = split is not None and detection_id in (split.get("detection_ids") or [])
    return {
        "crop": crop, "detection": detection, "caption": caption, "scores": scores, "concepts": concepts,
        "outliers": flags, "lidar": {"points": crop.get("lidar_points"), "median_depth_m": crop.get("lidar_median_depth")},
        "split": split, "qualified": qualified, "why": why_mined(scores, flags, split, qualified),
    }


def sample_in_split(reader: StoreReader, sample_token: str) -> dict[str, Any] | None:
    src = reader.source("mined_split")
    if src is None:
        return None
    df = reader.query(f"SELECT * FROM {src} WHERE sample_token = ?", [sample_token])
    return records(df)[0] if len(df) else None


def split_page(reader: StoreReader, reason: str | None, limit: int, offset: int) -> dict[str, Any]:
    """The mined split in rank order (it is small: one row per chosen sample)."""
    src = reader.source("mined_split")
    if src is None:
        return {"samples": [], "total": 0}
    where, params = ("WHERE reason = ?", [reason]) if reason else ("", [])
    total = int(reader.query(f"SELECT count(*) AS n FROM {src} {where}", params)["n"][0])
    df = reader.query(f"SELECT * FROM {src} {where} ORDER BY rank, sample_token LIMIT {int(limit)} OFFSET {int(offset)}",
                      params)
    return {"samples": records(df), "total": total}


def hit_rows(hits) -> list[dict[str, Any]]:
    """Search or similarity hits as JSON rows."""
    return [{k: jsonable(v) for k, v in row.items()} for row in hits.to_dict(orient="records")]
