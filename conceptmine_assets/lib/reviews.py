"""Reviews of mined crops and samples: the append-only log's rows and what they mean (pure, no I/O).

A reviewer marks a crop (a ``detection_id``) or a whole sample (a ``sample_token``) as

- ``confirmed``: a real rare or target object (rank it first);
- ``reject``: a false alarm, not useful (its evidence must never select a sample);
- ``relabel`` with a ``concept``: the object is that concept (overrides the top concept).

Every review is one row of the log (:data:`LOG_SCHEMA`), stored as one small Parquet file per
batch under ``<store>/reviews/`` (``resources/reviews_log.py`` writes and reads them; the
``reviews`` view in ``conceptmine sql`` shows the raw log). Nothing is ever rewritten: a later
review of the same crop or sample supersedes the earlier one.

:func:`effective_reviews` reduces the log to the review in force per crop and per sample (the
last one wins: latest ``reviewed_at``, then batch name, then position in the batch), with the
columns of :data:`EFFECTIVE_COLUMNS`. :func:`reviews_version` is the content hash of its
decisions (the data version of the ``reviews`` observable source asset). :func:`coco_export` and
:func:`csv_frame` turn the effective crop reviews, joined with their boxes, into files for
annotation tools.

How ``mined_split`` uses them (wired there, not here)::

    from conceptmine_assets.resources.reviews_log import read_log
    from conceptmine_assets.lib.reviews import effective_reviews, crop_reviews, sample_reviews

    eff = effective_reviews(read_log(store))        # one row per reviewed crop or sample
    crops = crop_reviews(eff)                       # detection_id -> verdict, concept
    samples = sample_reviews(eff)                   # sample_token -> verdict (detection_id is null)
    # rejected crops never qualify a sample; a rejected sample is never chosen by evidence;
    # confirmed crops rank first; relabel: ``concept`` replaces the crop's top concept.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

import pandas as pd
import pyarrow as pa

VERDICTS: tuple[str, ...] = ("confirmed", "reject", "relabel")
LOG_SCHEMA = pa.schema([
    ("review_id", pa.string()),  # unique per review
    ("batch", pa.string()),  # the file it was written in (sortable: UTC time, then a random suffix)
    ("seq", pa.int32()),  # position in its batch
    ("scene_name", pa.string()),
    ("detection_id", pa.string()),  # null: a review of the whole sample
    ("sample_token", pa.string()),
    ("verdict", pa.string()),  # confirmed | reject | relabel
    ("concept", pa.string()),  # the new concept of a relabel; null otherwise
    ("reviewer", pa.string()),
    ("reviewed_at", pa.timestamp("us", tz="UTC")),
    ("note", pa.string()),
])
EFFECTIVE_COLUMNS = ["detection_id", "sample_token", "scene_name", "verdict", "concept", "reviewer", "reviewed_at", "note"]
MAX_NOTE = 2000
_NAME = re.compile(r"^[\w .@'-]{1,64}$")


class ReviewError(ValueError):
    """A review that is not valid (the message names the field and what to send)."""


def parse_verdict(verdict: Any, concept: Any = None) -> tuple[str, str | None]:
    """``confirmed``, ``reject``, ``relabel:<concept>`` (or ``relabel`` with ``concept``) ->
    (verdict, concept or None)."""
    if not isinstance(verdict, str) or not verdict.strip():
        raise ReviewError("verdict is missing: send confirmed, reject or relabel:<concept>")
    text = verdict.strip()
    if text.startswith("relabel:"):
        text, concept = "relabel", text[len("relabel:"):]
    if text not in VERDICTS:
        raise ReviewError(f"verdict {verdict!r} is not one of confirmed, reject, relabel:<concept>")
    if text == "relabel":
        if not isinstance(concept, str) or not concept.strip():
            raise ReviewError("a relabel names its concept: verdict relabel:<concept>")
        return text, concept.strip()
    if concept not in (None, ""):
        raise ReviewError(f"only a relabel takes a concept (got concept {concept!r} with verdict {text})")
    return text, None


def check_reviewer(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name.strip()):
        raise ReviewError("reviewer is missing or not a plain name (1-64 letters, digits, spaces, . @ ' - _)")
    return name.strip()


def check_note(note: Any) -> str | None:
    if note is None or note == "":
        return None
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise ReviewError(f"note must be text of at most {MAX_NOTE} characters")
    return note


def log_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Log rows (dicts with the :data:`LOG_SCHEMA` fields) as an Arrow table of that schema."""
    rows = list(rows)
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in LOG_SCHEMA} for r in rows], schema=LOG_SCHEMA)


def effective_reviews(log: pd.DataFrame) -> pd.DataFrame:
    """The review in force per crop and per sample: one row per reviewed ``detection_id`` (crop
    reviews) and one per ``sample_token`` reviewed as a whole (``detection_id`` null), the last
    one winning (latest ``reviewed_at``, then ``batch``, then ``seq``). Columns
    :data:`EFFECTIVE_COLUMNS`, ordered by (detection_id nulls last, sample_token)."""
    if log is None or len(log) == 0:
        return pd.DataFrame({c: pd.Series(dtype="datetime64[us, UTC]" if c == "reviewed_at" else object)
                             for c in EFFECTIVE_COLUMNS})
    missing = [c for c in (*EFFECTIVE_COLUMNS, "batch", "seq") if c not in log.columns]
    if missing:
        raise ReviewError(f"the review log lacks columns {missing}")
    frame = log.copy()
    frame["_key"] = ["c:" + d if isinstance(d, str) else "s:" + str(s)
                     for d, s in zip(frame["detection_id"], frame["sample_token"])]
    frame = frame.sort_values(["reviewed_at", "batch", "seq"], kind="mergesort")
    last = frame.drop_duplicates("_key", keep="last")
    last = last.assign(_sample_level=last["detection_id"].isna())
    last = last.sort_values(["_sample_level", "detection_id", "sample_token"], kind="mergesort")
    out = last[EFFECTIVE_COLUMNS].reset_index(drop=True)
    for column in EFFECTIVE_COLUMNS:  # text columns as objects with None for missing (not NaN)
        if column != "reviewed_at":
            out[column] = pd.Series([v if isinstance(v, str) else None for v in out[column]], dtype=object)
    return out


def crop_reviews(effective: pd.DataFrame) -> pd.DataFrame:
    """The crop-level rows, indexed by detection_id (columns verdict, concept, ...)."""
    return effective[effective["detection_id"].notna()].set_index("detection_id")


def sample_reviews(effective: pd.DataFrame) -> pd.DataFrame:
    """The sample-level rows (a whole sample confirmed or rejected), indexed by sample_token."""
    return effective[effective["detection_id"].isna()].set_index("sample_token")


VERSION_COLUMNS = ["detection_id", "sample_token", "verdict", "concept"]  # what mining can act on


def reviews_version(effective: pd.DataFrame) -> str:
    """Content hash of the effective reviews' decisions (:data:`VERSION_COLUMNS`): what the
    ``reviews`` observable records. It changes exactly when a review changes what is in force for
    some crop or sample; confirming a crop again, or another reviewer's identical verdict, does
    not (who, when and why are kept in the log, not in the version)."""
    digest = hashlib.sha256()
    for row in effective[VERSION_COLUMNS].itertuples(index=False):
        digest.update(("\x1f".join("" if not isinstance(v, str) else v for v in row) + "\x1e").encode())
    return f"reviews:{len(effective)}:{digest.hexdigest()[:16]}"


EXPORT_COLUMNS = ["detection_id", "sample_token", "scene_name", "channel", "image_path", "width", "height",
                  "x1", "y1", "x2", "y2", "class_name", "top_concept", "verdict", "label", "reviewer", "reviewed_at",
                  "note"]


def label_of(row: dict[str, Any]) -> str | None:
    """The reviewed label: the relabel's concept, else the crop's top concept, else its class."""
    def text(key: str) -> str | None:
        value = row.get(key)
        return value if isinstance(value, str) and value else None

    if row.get("verdict") == "relabel":
        return text("concept")
    return text("top_concept") or text("class_name")


def csv_frame(reviewed: pd.DataFrame) -> pd.DataFrame:
    """Effective reviews joined with their boxes (``crops`` columns, ``frames`` image_path,
    width, height, ``top_concept``) as the CSV export's rows (:data:`EXPORT_COLUMNS`);
    sample-level reviews have empty box columns."""
    out = reviewed.copy()
    for column in EXPORT_COLUMNS:
        if column not in out.columns:
            out[column] = None
    out["label"] = pd.Series([label_of(r) for r in out.to_dict(orient="records")], index=out.index, dtype=object)
    return out[EXPORT_COLUMNS]


def coco_export(reviewed: pd.DataFrame) -> dict[str, Any]:
    """COCO-style JSON of the reviewed boxes: ``images`` (camera frames), ``categories`` (the
    reviewed labels), ``annotations`` (confirmed and relabelled boxes, ``bbox`` = [x, y, w, h]
    in pixels, with the review in ``attributes``), and ``rejected`` (the rejected boxes, same
    shape; not a COCO field, so tools that do not know it ignore it)."""
    rows = [r for r in csv_frame(reviewed).to_dict(orient="records") if isinstance(r.get("detection_id"), str)
            and r.get("image_path") is not None]
    images: dict[str, int] = {}
    categories: dict[str, int] = {}
    out: dict[str, Any] = {"info": {"description": "conceptmine reviews", "version": "1"},
                           "images": [], "categories": [], "annotations": [], "rejected": []}
    for r in sorted(rows, key=lambda r: (r["image_path"], r["detection_id"])):
        if r["image_path"] not in images:
            images[r["image_path"]] = len(images) + 1
            out["images"].append({"id": images[r["image_path"]], "file_name": r["image_path"],
                                  "width": _int(r["width"]), "height": _int(r["height"])})
        x, y, w, h = float(r["x1"]), float(r["y1"]), float(r["x2"]) - float(r["x1"]), float(r["y2"]) - float(r["y1"])
        ann = {"image_id": images[r["image_path"]], "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
               "area": round(w * h, 2), "iscrowd": 0,
               "attributes": {"detection_id": r["detection_id"], "verdict": r["verdict"], "detector_class": r["class_name"],
                              "reviewer": r["reviewer"], "reviewed_at": _iso(r["reviewed_at"]), "note": r["note"]}}
        if r["verdict"] == "reject":
            out["rejected"].append({"id": len(out["rejected"]) + 1, **ann})
            continue
        label = r["label"] or "unknown"
        if label not in categories:
            categories[label] = len(categories) + 1
            out["categories"].append({"id": categories[label], "name": label})
        out["annotations"].append({"id": len(out["annotations"]) + 1, "category_id": categories[label], **ann})
    return out


def _int(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def _iso(value: Any) -> str | None:
    return None if value is None or pd.isna(value) else pd.Timestamp(value).isoformat()
