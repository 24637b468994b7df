"""Synthetic nuScenes dataroots: merge small dataroots and replicate their scenes.

Used by the benchmark (N copies of the real slice) and by a richer demo (the real slice and
the highway clip in one dataroot). The output is an ordinary nuScenes dataroot:

- tables under ``<out>/<version>/``. Tables whose records are the same across sources
  (category, attribute by ``name``; visibility by ``level``; sensor by ``channel``) are merged
  and the tokens that point at them are remapped to the first source's record. ``map.json``
  gets one record per map with the union of its ``log_tokens``. Log and calibrated_sensor
  records are kept once per source; copies of a scene share their original's log and
  calibration, as scenes of one drive do in nuScenes.
- every scene is replicated ``copies`` times: copy 0 keeps its tokens and name, copy ``k``
  gets fresh deterministic tokens (``uuid5`` of the original token and ``k``) for its scene,
  samples, sample_data, ego poses, instances and annotations, and the name ``<name>-c<kk>``.
- sensor files and map files are symlinked to the sources, never copied; copies of a scene
  point at the same image files as the original.

Optional tables (lidarseg, panoptic, image_annotations) are not carried over.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from conceptmine_assets.errors import ConceptmineError, DatasetError
from conceptmine_assets.resources.nuscenes import NUSCENES_TABLES

SYNTH_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "conceptmine/synth")

# Tables whose records mean the same thing in every dataroot: merged by this field.
MERGED_BY = {"category": "name", "attribute": "name", "visibility": "level", "sensor": "channel"}
# Tables whose records belong to one scene: replicated per copy with fresh tokens.
REPLICATED = ("scene", "sample", "sample_data", "ego_pose", "sample_annotation", "instance")
# Fields holding tokens of replicated records (remapped per copy).
_COPY_FIELDS = {
    "scene": ("token", "first_sample_token", "last_sample_token"),
    "sample": ("token", "prev", "next", "scene_token"),
    "sample_data": ("token", "sample_token", "ego_pose_token", "prev", "next"),
    "ego_pose": ("token",),
    "sample_annotation": ("token", "sample_token", "instance_token", "prev", "next"),
    "instance": ("token", "first_annotation_token", "last_annotation_token"),
}
# Fields holding tokens of merged records: (table, field, merged table).
_MERGED_FIELDS = (
    ("instance", "category_token", "category"),
    ("sample_annotation", "visibility_token", "visibility"),
    ("sample_annotation", "attribute_tokens", "attribute"),
    ("calibrated_sensor", "sensor_token", "sensor"),
)

Tables = dict[str, list[dict[str, Any]]]


def copy_token(token: str, copy: int) -> str:
    """The token of ``token``'s record in copy ``copy``: itself for copy 0, else a uuid5 hex.

    Empty tokens (no prev/next, a scene without samples) stay empty.
    """
    if copy == 0 or not token:
        return token
    return uuid.uuid5(SYNTH_NAMESPACE, f"{token}#{copy}").hex


def copy_name(name: str, copy: int) -> str:
    """``scene-0061`` for copy 0, ``scene-0061-c01`` for copy 1, ..."""
    return name if copy == 0 else f"{name}-c{copy:02d}"


def load_tables(dataroot: Path, version: str) -> Tables:
    """The 13 tables of a dataroot; a DatasetError naming a missing or malformed table."""
    tables: Tables = {}
    for name in NUSCENES_TABLES:
        path = dataroot / version / f"{name}.json"
        try:
            with path.open() as fh:
                tables[name] = json.load(fh)
        except FileNotFoundError as exc:
            raise DatasetError(f"nuScenes table {path} is missing") from exc
        except (OSError, ValueError) as exc:
            raise DatasetError(f"malformed nuScenes table {path}: {exc}") from exc
        if not isinstance(tables[name], list):
            raise DatasetError(f"malformed nuScenes table {path}: expected a list of records")
    return tables


def _merge_shared(merged: Tables, tables: Tables, where: Path) -> dict[str, dict[str, str]]:
    """Add a source's category/attribute/visibility/sensor records to ``merged`` by name;
    returns, per table, the map of the source's tokens to the merged tokens."""
    remap: dict[str, dict[str, str]] = {}
    for table, key in MERGED_BY.items():
        by_key = {rec[key]: rec for rec in merged.setdefault(table, [])}
        remap[table] = {}
        for rec in tables[table]:
            kept = by_key.get(rec[key])
            if kept is None:
                merged[table].append(dict(rec))
                by_key[rec[key]] = rec
                kept = rec
            elif table == "sensor" and kept["modality"] != rec["modality"]:
                raise DatasetError(f"{where}: sensor {rec[key]!r} is {rec['modality']}, elsewhere {kept['modality']}")
            remap[table][rec["token"]] = kept["token"]
    return remap


def _remap_merged(tables: Tables, remap: dict[str, dict[str, str]], where: Path) -> None:
    """Point a source's references to merged tables at the merged tokens (in place)."""

    def lookup(table: str, token: str) -> str:
        try:
            return remap[table][token]
        except KeyError as exc:
            raise DatasetError(f"{where}: unknown {table} token {token!r}") from exc

    for table, field, target in _MERGED_FIELDS:
        for rec in tables[table]:
            value = rec[field]
            rec[field] = [lookup(target, t) for t in value] if isinstance(value, list) else lookup(target, value)


def _replicate(tables: Tables, copy: int) -> Tables:
    """Copy ``copy`` of a source's scene-level tables, with its tokens and scene names."""
    out: Tables = {}
    for table in REPLICATED:
        fields = _COPY_FIELDS[table]
        records = []
        for rec in tables[table]:
            new = dict(rec)
            for field in fields:
                new[field] = copy_token(rec[field], copy)
            if table == "scene":
                new["name"] = copy_name(rec["name"], copy)
            records.append(new)
        out[table] = records
    return out


def _merge_maps(merged: Tables, maps: list[dict[str, Any]]) -> None:
    """One record per map token, its ``log_tokens`` the union over the sources."""
    by_token = {rec["token"]: rec for rec in merged.setdefault("map", [])}
    for rec in maps:
        if rec["token"] in by_token:
            logs = by_token[rec["token"]]["log_tokens"]
            logs.extend(t for t in rec["log_tokens"] if t not in logs)
        else:
            by_token[rec["token"]] = dict(rec, log_tokens=list(rec["log_tokens"]))
            merged["map"].append(by_token[rec["token"]])


def _check_unique(merged: Tables) -> None:
    """Tokens are unique per table and scene names unique overall (sources must not overlap)."""
    for table, records in merged.items():
        seen: set[str] = set()
        for rec in records:
            if rec["token"] in seen:
                raise DatasetError(f"synthetic dataroot: duplicate {table} token {rec['token']} (overlapping sources?)")
            seen.add(rec["token"])
    names = [rec["name"] for rec in merged["scene"]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DatasetError(f"synthetic dataroot: scene names occur in more than one source: {dupes}")


def _link(target: Path, link: Path) -> None:
    """Symlink ``link`` → ``target`` (absolute); re-linking the same target is a no-op."""
    target = target.resolve()
    if not target.is_file():
        raise DatasetError(f"source file {target} does not exist")
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    if link.exists() or link.is_symlink():
        raise DatasetError(f"{link} already exists and is not a link to {target}; use an empty output folder")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def _link_files(source: Path, tables: Tables, out: Path, linked: dict[str, Path]) -> None:
    """Symlink every sample_data and map file of a source into ``out``."""
    relative = [rec["filename"] for rec in tables["sample_data"]] + [rec["filename"] for rec in tables["map"]]
    for rel in dict.fromkeys(relative):
        target = (source / rel).resolve()
        if linked.setdefault(rel, target) != target:
            raise DatasetError(f"file {rel} exists in two sources ({linked[rel]} and {target})")
        _link(target, out / rel)


def _write_json(path: Path, records: list[dict[str, Any]]) -> None:
    """Write a table atomically (a reader never sees half a table); a table that already holds
    exactly these bytes is left alone, so its mtime says the tables did not change (what the
    pre-flight record and ``conceptmine run``'s no-change memo go by)."""
    text = json.dumps(records, indent=0)
    if path.is_file() and path.stat().st_size == len(text.encode()) and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def synth_dataroot(sources: list[Path], out: Path, copies: int = 1, version: str = "v1.0-mini") -> list[str]:
    """Build a nuScenes dataroot at ``out`` that merges ``sources`` and holds each of their scenes
    ``copies`` times; returns the scene names in ``scene.json`` order (per source and scene: the
    original, then its copies). Loads with ``NuScenes(version, str(out))``. Deterministic: the
    same arguments give the same tokens and the same tables."""
    if copies < 1:
        raise ConceptmineError(f"copies must be at least 1, got {copies}")
    if not sources:
        raise ConceptmineError("synth_dataroot needs at least one source dataroot")
    out = Path(out)
    merged: Tables = {name: [] for name in NUSCENES_TABLES}
    linked: dict[str, Path] = {}
    for source in map(Path, sources):
        tables = load_tables(source, version)
        remap = _merge_shared(merged, tables, source / version)
        _remap_merged(tables, remap, source / version)
        merged["log"].extend(tables["log"])
        merged["calibrated_sensor"].extend(tables["calibrated_sensor"])
        _merge_maps(merged, tables["map"])
        per_copy = [_replicate(tables, k) for k in range(copies)]
        for table in REPLICATED:
            if table != "scene":
                merged[table].extend(rec for copy in per_copy for rec in copy[table])
        merged["scene"].extend(copy["scene"][i] for i in range(len(tables["scene"])) for copy in per_copy)
        _link_files(source, tables, out, linked)
    _check_unique(merged)
    (out / version).mkdir(parents=True, exist_ok=True)
    for name in NUSCENES_TABLES:
        _write_json(out / version / f"{name}.json", merged[name])
    return [rec["name"] for rec in merged["scene"]]
