"""The review log in the store: ``<store>/reviews/<UTC time>-<random>.parquet``, one file per batch.

Append-only: a batch is written whole through the store's ``atomic_write`` (a hidden temporary
file renamed into place, with its content record beside it, which ``conceptmine verify``
checks), under a name no other writer can choose, so two tabs or two servers
writing at the same moment both land and a reader never sees half a file. Files are never
rewritten or deleted here. The rows are :data:`conceptmine_assets.lib.reviews.LOG_SCHEMA`;
what they mean is ``lib/reviews.py``'s. No Dagster import.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

from conceptmine_assets.lib.reviews import LOG_SCHEMA, effective_reviews, log_table, reviews_version
from conceptmine_assets.lib.watched import watch
from conceptmine_assets.resources.storage import atomic_write
from conceptmine_assets.resources.store_sql import is_local

FOLDER = "reviews"


def _folder(store: str, storage_options: dict[str, Any] | None = None) -> UPath:
    return UPath(store, **(storage_options or {})) / FOLDER


def new_batch_name(now: datetime | None = None) -> str:
    """``20261205T051200123456Z-<12 hex>``: sorts by time; the suffix makes it unique."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:12]}"


def write_batch(store: str, rows: list[dict[str, Any]], storage_options: dict[str, Any] | None = None,
                now: datetime | None = None) -> str:
    """Append ``rows`` (LOG_SCHEMA fields but ``review_id``, ``batch``, ``seq``, ``reviewed_at``,
    which are set here) as one new batch file; returns the batch name."""
    now = now or datetime.now(timezone.utc)
    batch = new_batch_name(now)
    table = log_table({**r, "review_id": uuid.uuid4().hex, "batch": batch, "seq": i, "reviewed_at": now}
                      for i, r in enumerate(rows))
    # atomic (a reader sees no half file), with its content record (`conceptmine verify` checks it)
    atomic_write(_folder(store, storage_options) / f"{batch}.parquet", lambda fh: pq.write_table(table, fh))
    return batch


def batch_files(store: str, storage_options: dict[str, Any] | None = None) -> list[UPath]:
    folder = _folder(store, storage_options)
    if not folder.exists():
        return []
    return sorted((p for p in folder.iterdir() if p.name.endswith(".parquet") and not p.name.startswith(".")),
                  key=lambda p: p.name)


def read_log(store: str, storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """Every review ever written (LOG_SCHEMA columns; empty when there is none)."""
    files = batch_files(store, storage_options)
    if not files:
        return LOG_SCHEMA.empty_table().to_pandas()
    tables = []
    for path in files:
        with path.open("rb") as fh:
            tables.append(pq.read_table(fh, schema=LOG_SCHEMA))
    return pa.concat_tables(tables).to_pandas()


def read_effective(store: str, storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """:func:`~conceptmine_assets.lib.reviews.effective_reviews` of the store's log."""
    return effective_reviews(read_log(store, storage_options))


def reviewed_boxes(query, stored: set[str], effective: pd.DataFrame) -> pd.DataFrame:
    """The effective reviews with their crops' boxes, classes, top concepts and frames (image
    path, size): what the CSV and COCO exports write. ``query(sql, params) -> DataFrame`` runs
    SQL over the store's views (``store_sql.open_store_views``), ``stored`` names the assets
    that have views. A reviewed crop that is no
    longer stored keeps its review with empty box columns."""
    ids = [d for d in effective["detection_id"] if isinstance(d, str)]
    if not ids or not {"crops", "frames"} <= stored:
        return effective.copy()
    boxes = query(
        "SELECT c.detection_id, c.channel, c.class_name, c.x1, c.y1, c.x2, c.y2, f.image_path, f.width, f.height "
        "FROM crops c LEFT JOIN frames f ON f.sample_data_token = c.sample_data_token "
        "WHERE list_contains(?, c.detection_id)", [ids])
    if "concept_scores" not in stored:
        return effective.merge(boxes, on="detection_id", how="left")
    concepts = query("SELECT detection_id, top_concept FROM concept_scores WHERE list_contains(?, detection_id)", [ids])
    return effective.merge(boxes, on="detection_id", how="left").merge(concepts, on="detection_id", how="left")


def reviews_version_of(store: str, storage_options: dict[str, Any] | None = None) -> str:
    """The data version of the ``reviews`` observable: :func:`~conceptmine_assets.lib.reviews.reviews_version`
    of the store's effective reviews. The log folder is watched (``lib/watched.py``), so a new
    review also invalidates ``conceptmine run``'s no-change memo."""
    watch_log(store, storage_options)
    return reviews_version(read_effective(store, storage_options))


def watch_log(store: str, storage_options: dict[str, Any] | None = None) -> None:
    """Name the local log folder to ``lib/watched.py`` (``conceptmine run``'s no-change memo)."""
    folder = _folder(store, storage_options)
    if is_local(folder):
        watch(os.fspath(folder.path if hasattr(folder, "path") else folder))
