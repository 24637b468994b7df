"""The review endpoints: check a batch against the store, append it to the log, read what is in force.

``POST /api/reviews`` body::

    {"reviewer": "ana", "items": [
        {"scene": "scene-0061", "detection_id": "cf14d9ca9edaa59e", "verdict": "confirmed", "note": "..."},
        {"scene": "scene-0061", "detection_id": "502d98cea655a581", "verdict": "relabel:construction_vehicle"},
        {"scene": "scene-0061", "sample_token": "ca9a...", "verdict": "reject"}]}

Every item is checked before anything is written (the crop or sample must be stored now, a
relabel's concept must be in the crop's vocabulary); one bad item refuses the whole batch with
a 4xx naming it, and nothing is written. A good batch is one new file (``reviews_log.py``).
"""

from __future__ import annotations

from typing import Any

from conceptmine_assets.lib.reviews import ReviewError, check_note, check_reviewer, parse_verdict
from conceptmine_assets.resources.reviews_log import FOLDER, read_effective, write_batch
from conceptmine_assets.serve.store import ApiError, StoreReader, bad_request, not_found, records

MAX_ITEMS = 500
ITEM_KEYS = {"scene", "detection_id", "sample_token", "verdict", "concept", "note"}


def _item(reader: StoreReader, item: Any, index: int) -> dict[str, Any]:
    where = f"items[{index}]"
    if not isinstance(item, dict):
        raise bad_request(f"{where} is not an object with scene, detection_id or sample_token, verdict")
    unknown = sorted(set(item) - ITEM_KEYS)
    if unknown:
        raise bad_request(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(sorted(ITEM_KEYS))})")
    try:
        verdict, concept = parse_verdict(item.get("verdict"), item.get("concept"))
        note = check_note(item.get("note"))
    except ReviewError as exc:
        raise bad_request(f"{where}: {exc}") from None
    scene, detection_id, sample = item.get("scene"), item.get("detection_id"), item.get("sample_token")
    if not isinstance(scene, str) or not scene:
        raise bad_request(f"{where}: scene is missing (the crop's or sample's scene_name)")
    if scene not in set(reader.scenes()):
        raise not_found(f"{where}: unknown scene {scene!r}; review refused, nothing written")
    if isinstance(detection_id, str) and detection_id:
        return _crop_item(reader, where, scene, detection_id, verdict, concept, note)
    if isinstance(sample, str) and sample:
        if verdict == "relabel":
            raise bad_request(f"{where}: relabel applies to a crop (detection_id), not to a whole sample")
        src = reader.source("crops", [scene])
        if reader.query(f"SELECT 1 FROM {src} WHERE sample_token = ? LIMIT 1", [sample]).empty:
            raise not_found(f"{where}: sample {sample!r} has no stored crops in scene {scene!r}; review refused, "
                            "nothing written")
        return {"scene_name": scene, "detection_id": None, "sample_token": sample, "verdict": verdict,
                "concept": None, "note": note}
    raise bad_request(f"{where}: name the crop (detection_id) or the sample (sample_token) reviewed")


def _crop_item(reader: StoreReader, where: str, scene: str, detection_id: str, verdict: str, concept: str | None,
               note: str | None) -> dict[str, Any]:
    src = reader.source("crops", [scene])
    rows = reader.query(f"SELECT sample_token FROM {src} WHERE detection_id = ?", [detection_id])
    if rows.empty:
        raise not_found(f"{where}: crop {detection_id!r} is not stored in scene {scene!r} (unknown or no longer "
                        "there); review refused, nothing written")
    if concept is not None:
        scores = reader.source("concept_scores", [scene])
        names = reader.query(f"SELECT concept_names FROM {scores} WHERE detection_id = ?", [detection_id]) \
            if scores else None
        known = list(names["concept_names"].iloc[0]) if names is not None and not names.empty else []
        if known and concept not in known:
            shown = ", ".join(sorted(known)[:30])
            raise bad_request(f"{where}: relabel concept {concept!r} is not in the vocabulary ({shown})")
    return {"scene_name": scene, "detection_id": detection_id, "sample_token": rows["sample_token"].iloc[0],
            "verdict": verdict, "concept": concept, "note": note}


def add(reader: StoreReader, payload: Any) -> dict[str, Any]:
    """Check the batch, then write it as one file; the written rows and the batch name."""
    if reader.storage_options or "://" in reader.base_path:
        raise ApiError(501, "reviews are written to local stores only in this version")
    if not isinstance(payload, dict):
        raise bad_request('send a JSON object: {"reviewer": ..., "items": [{"scene", "detection_id", "verdict"}]}')
    try:
        reviewer = check_reviewer(payload.get("reviewer"))
    except ReviewError as exc:
        raise bad_request(str(exc)) from None
    items = payload.get("items")
    if not isinstance(items, list) or not items:
        raise bad_request("items is missing or empty: a list of reviews")
    if len(items) > MAX_ITEMS:
        raise bad_request(f"at most {MAX_ITEMS} reviews per batch (got {len(items)})")
    extra = sorted(set(payload) - {"reviewer", "items"})
    if extra:
        raise bad_request(f"unknown field {extra[0]!r} (fields: reviewer, items)")
    rows = [{**_item(reader, item, i), "reviewer": reviewer} for i, item in enumerate(items)]
    batch = write_batch(reader.base_path, rows)
    return {"batch": f"{FOLDER}/{batch}.parquet", "written": len(rows)}


def effective(reader: StoreReader) -> dict[str, Any]:
    """The reviews in force (last one wins per crop and per sample), read with pyarrow (a new
    batch file never makes the store's connection reopen) and kept until the log folder changes."""
    rows = reader.cached("reviews", (FOLDER,), lambda: records(read_effective(reader.base_path, reader.storage_options)))
    return {"reviews": rows}


def review_of(reader: StoreReader, crop: dict[str, Any]) -> dict[str, Any] | None:
    """The review in force for this crop, else for its sample, else None."""
    rows = effective(reader)["reviews"]
    mine = [r for r in rows if r["detection_id"] == crop["detection_id"]]
    sample = [r for r in rows if r["detection_id"] is None and r["sample_token"] == crop["sample_token"]]
    return (mine or sample or [None])[0]
