"""Folders of images and videos as a camera-only nuScenes dataroot: the pure part.

``conceptmine_assets/cli/importer.py`` scans the source, reads the images and decodes the videos
into :class:`Frame` records; this module turns them into the 13 tables nuscenes-devkit loads:

- one scene per source group (a folder of images, or a video; see the I/O module), optionally
  split where consecutive samples are more than ``gap`` apart (scenes ``<group>-0001``, ...);
- one sample per frame of the reference camera (``CAM_FRONT`` if the scene has it), the other
  cameras' frames attached to the sample nearest in time (one per camera and sample);
- identity calibration (sensor at the ego origin, identity intrinsic) and identity ego poses:
  nothing is known about the camera, so there is no 3D geometry;
- no annotations (``category``, ``attribute``, ``visibility``, ``instance`` and
  ``sample_annotation`` are empty lists); one placeholder map whose ``log_tokens`` hold every log.

Tokens are ``uuid5`` of stable names (scene name, the frame's source key), so importing the same
source again gives the same tables byte for byte, and a source that grew keeps its old tokens.
"""

from __future__ import annotations

import bisect
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from conceptmine_assets.errors import DatasetError

IMPORT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "conceptmine/import-images")
DEFAULT_CHANNEL = "CAM_FRONT"
IDENTITY_ROTATION = [1.0, 0.0, 0.0, 0.0]  # quaternion w, x, y, z
IDENTITY_INTRINSIC = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
NO_GEOMETRY = "identity calibration and ego pose (camera unknown: no 3D geometry); no annotations"
EMPTY_TABLES = ("attribute", "category", "instance", "sample_annotation", "visibility")

Tables = dict[str, list[dict[str, Any]]]


def token(kind: str, key: str) -> str:
    """The deterministic token of the ``kind`` record named ``key``."""
    return uuid.uuid5(IMPORT_NAMESPACE, f"{kind}:{key}").hex


def scene_name(parts: list[str]) -> str:
    """A scene (partition) name from path parts: letters, digits, ``.``, ``_`` and ``-`` only."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(parts)).strip("-.")
    if not name:
        raise DatasetError(f"cannot make a scene name from {'/'.join(parts)!r}; rename the folder or file")
    return name


_STAMP = re.compile(r"(?<!\d)(\d{10}|\d{13}|\d{16}|\d{19})(?!\d)")
_STAMP_SCALE = {10: 1_000_000, 13: 1_000, 16: 1, 19: 0}  # digits -> factor to microseconds (0: ns)
_YEAR_2000_US, _YEAR_2100_US = 946_684_800_000_000, 4_102_444_800_000_000


def filename_timestamp(stem: str) -> int | None:
    """Microseconds since the epoch from the last 10/13/16/19-digit number in a file name
    (seconds, ms, µs, ns; years 2000-2100), e.g. ``cam__CAM_FRONT__1483272000520000``."""
    for match in reversed(_STAMP.findall(stem)):
        scale = _STAMP_SCALE[len(match)]
        us = int(match) * scale if scale else int(match) // 1000
        if _YEAR_2000_US <= us < _YEAR_2100_US:
            return us
    return None


class RateGate:
    """Keeps one frame per ``1 / fps`` seconds of a stream of increasing timestamps (µs); a frame
    up to 5 % of a period early still counts, so a 30 fps video at ``fps = 2`` keeps every 15th."""

    def __init__(self, fps: float):
        self.period = 1_000_000 / fps
        self.due: float | None = None

    def keep(self, timestamp: int) -> bool:
        if self.due is not None and timestamp < self.due - 0.05 * self.period:
            return False
        self.due = timestamp + self.period
        return True


@dataclass(frozen=True)
class Frame:
    """One image of one camera: where it comes from and where it goes in the dataroot."""

    key: str  # stable source key: the image's path in the source, or "<video path>#<frame index>"
    source: str  # the source file (for messages)
    channel: str
    timestamp: int  # microseconds
    width: int
    height: int
    filename: str  # relative to the dataroot: samples/<channel>/<group>__<channel>__<timestamp>.<ext>


@dataclass
class Group:
    """The frames of one source group (a folder or a video), all cameras."""

    name: str
    origin: str  # the folder or video, relative to the source (for descriptions and messages)
    clock: str  # where the timestamps come from: filename, exif, order or video
    frames: list[Frame]


def check_timestamps(group: Group) -> None:
    """Two frames of one camera at the same time cannot be told apart: an error naming both files."""
    seen: dict[tuple[str, int], Frame] = {}
    for frame in group.frames:
        other = seen.setdefault((frame.channel, frame.timestamp), frame)
        if other is not frame:
            raise DatasetError(
                f"{frame.source} and {other.source} have the same timestamp {frame.timestamp} µs "
                f"(from the {group.clock}) in scene {group.name}: remove one, or use --timestamps order"
            )


def subsample(frames: list[Frame], fps: float) -> list[Frame]:
    """At most ``fps`` frames per second per camera, earliest first (frames in any order)."""
    gates: dict[str, RateGate] = {}
    kept = []
    for frame in sorted(frames, key=lambda f: (f.timestamp, f.key)):
        if gates.setdefault(frame.channel, RateGate(fps)).keep(frame.timestamp):
            kept.append(frame)
    return kept


def assemble(frames: list[Frame]) -> tuple[list[dict[str, Frame]], int]:
    """Samples (``{channel: frame}``, time order) of one group and how many frames were left out
    (another frame of the same camera was nearer to their sample)."""
    channels = sorted({f.channel for f in frames})
    reference = DEFAULT_CHANNEL if DEFAULT_CHANNEL in channels else channels[0]
    refs = sorted((f for f in frames if f.channel == reference), key=lambda f: f.timestamp)
    samples: list[dict[str, Frame]] = [{reference: f} for f in refs]
    times = [f.timestamp for f in refs]
    others = sorted((f for f in frames if f.channel != reference), key=lambda f: (f.timestamp, f.key))
    for frame in others:
        i = bisect.bisect_left(times, frame.timestamp)
        near = min((j for j in (i - 1, i) if 0 <= j < len(times)), key=lambda j: abs(times[j] - frame.timestamp))
        held = samples[near].get(frame.channel)
        if held is None or abs(frame.timestamp - times[near]) < abs(held.timestamp - times[near]):
            samples[near][frame.channel] = frame
    return samples, len(others) - sum(len(s) - 1 for s in samples)


def split_by_gap(samples: list[dict[str, Frame]], gap_s: float | None) -> list[list[dict[str, Frame]]]:
    """Runs of samples with no two consecutive ones more than ``gap_s`` seconds apart (one run
    without a gap)."""
    if gap_s is None or not samples:
        return [samples]
    runs, limit = [[samples[0]]], gap_s * 1_000_000
    for prev, sample in zip(samples, samples[1:]):
        if _time(sample) - _time(prev) > limit:
            runs.append([])
        runs[-1].append(sample)
    return runs


def _time(sample: dict[str, Frame]) -> int:
    """A sample's time: its reference camera's (the first entry)."""
    return next(iter(sample.values())).timestamp


@dataclass
class PlannedScene:
    name: str
    group: Group
    samples: list[dict[str, Frame]]


def plan_scenes(groups: list[Group], fps: float, gap_s: float | None) -> tuple[list[PlannedScene], int]:
    """The scenes of all groups (name order) and how many frames were left out of any sample;
    a DatasetError for equal timestamps within a camera or two scenes of one name."""
    scenes, dropped = [], 0
    for group in sorted(groups, key=lambda g: g.name):
        check_timestamps(group)
        samples, left_out = assemble(subsample(group.frames, fps))
        dropped += left_out
        runs = split_by_gap(samples, gap_s)
        for i, run in enumerate(runs, 1):
            scenes.append(PlannedScene(group.name if gap_s is None else f"{group.name}-{i:04d}", group, run))
    origins: dict[str, str] = {}
    for scene in scenes:
        other = origins.setdefault(scene.name, scene.group.origin)
        if other != scene.group.origin:
            raise DatasetError(f"{other} and {scene.group.origin} both become scene {scene.name}; rename one")
    return sorted(scenes, key=lambda s: s.name), dropped


MAP_TOKEN = token("map", "placeholder")
MAP_FILENAME = f"maps/{MAP_TOKEN}.png"


def build_tables(scenes: list[PlannedScene]) -> Tables:
    """The 13 nuScenes tables of the planned scenes (deterministic order and tokens)."""
    tables: Tables = {name: [] for name in EMPTY_TABLES}
    channels = sorted({ch for scene in scenes for sample in scene.samples for ch in sample})
    tables["sensor"] = [{"token": token("sensor", ch), "channel": ch, "modality": "camera"} for ch in channels]
    tables["calibrated_sensor"] = [
        {
            "token": token("calibrated_sensor", ch),
            "sensor_token": token("sensor", ch),
            "translation": [0.0, 0.0, 0.0],
            "rotation": IDENTITY_ROTATION,
            "camera_intrinsic": IDENTITY_INTRINSIC,
        }
        for ch in channels
    ]
    groups = list({scene.group.name: scene.group for scene in scenes}.values())
    tables["log"] = [_log(group) for group in groups]
    tables["map"] = [
        {
            "token": MAP_TOKEN,
            "category": "semantic_prior",
            "filename": MAP_FILENAME,
            "log_tokens": [rec["token"] for rec in tables["log"]],
        }
    ]
    tables.update(scene=[], sample=[], sample_data=[], ego_pose=[])
    for scene in scenes:
        _add_scene(tables, scene)
    return tables


def _log(group: Group) -> dict[str, Any]:
    known = group.clock in ("filename", "exif") and group.frames
    date = "unknown"
    if known:
        first = min(f.timestamp for f in group.frames)
        date = datetime.fromtimestamp(first / 1_000_000, tz=timezone.utc).date().isoformat()
    return {
        "token": token("log", group.name),
        "logfile": group.origin,
        "vehicle": "unknown",
        "date_captured": date,
        "location": "unknown",
    }


def _add_scene(tables: Tables, scene: PlannedScene) -> None:
    """Append one scene's scene, sample, sample_data and ego_pose records."""
    sample_tokens = [token("sample", next(iter(s.values())).key) for s in scene.samples]
    last_of: dict[str, str] = {}  # channel -> token of its previous sample_data record in this scene
    records: dict[str, dict[str, Any]] = {}
    for i, sample in enumerate(scene.samples):
        tables["sample"].append(
            {
                "token": sample_tokens[i],
                "timestamp": _time(sample),
                "prev": sample_tokens[i - 1] if i else "",
                "next": sample_tokens[i + 1] if i + 1 < len(sample_tokens) else "",
                "scene_token": token("scene", scene.name),
            }
        )
        for channel in sorted(sample):
            rec = _sample_data(sample[channel], sample_tokens[i], last_of.get(channel, ""))
            if rec["prev"]:
                records[rec["prev"]]["next"] = rec["token"]
            records[rec["token"]] = rec
            last_of[channel] = rec["token"]
            tables["sample_data"].append(rec)
            tables["ego_pose"].append(_ego_pose(sample[channel]))
    tables["scene"].append(
        {
            "token": token("scene", scene.name),
            "log_token": token("log", scene.group.name),
            "nbr_samples": len(scene.samples),
            "first_sample_token": sample_tokens[0] if sample_tokens else "",
            "last_sample_token": sample_tokens[-1] if sample_tokens else "",
            "name": scene.name,
            "description": f"imported from {scene.group.origin} (timestamps from the {scene.group.clock}); {NO_GEOMETRY}",
        }
    )


def _sample_data(frame: Frame, sample_token: str, prev: str) -> dict[str, Any]:
    return {
        "token": token("sample_data", frame.key),
        "sample_token": sample_token,
        "ego_pose_token": token("ego_pose", frame.key),
        "calibrated_sensor_token": token("calibrated_sensor", frame.channel),
        "timestamp": frame.timestamp,
        "fileformat": frame.filename.rsplit(".", 1)[-1],
        "is_key_frame": True,
        "height": frame.height,
        "width": frame.width,
        "filename": frame.filename,
        "prev": prev,
        "next": "",
    }


def _ego_pose(frame: Frame) -> dict[str, Any]:
    origin = [0.0, 0.0, 0.0]
    return {"token": token("ego_pose", frame.key), "timestamp": frame.timestamp, "rotation": IDENTITY_ROTATION, "translation": origin}
