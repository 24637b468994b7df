"""Synthetic dataroots for the benchmark, built with ``conceptmine_assets.lib.synth``.

- :func:`copies`: N scenes, each a copy of the real slice's one-sample scene (``synth_dataroot``).
- :func:`long_scenes`: scenes of trainval size (nuScenes trainval: ~40 keyframes per scene, six
  cameras): ``scenes x samples`` copies, then each run of ``samples`` consecutive copies is
  chained into one scene (its samples linked by prev/next, 0.5 s apart, as nuScenes keyframes are).
  The images and point clouds are the real slice's, symlinked.
"""

from __future__ import annotations

import json
from pathlib import Path

from conceptmine_assets.lib.synth import synth_dataroot

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "data" / "fixtures"
REAL_SLICE = FIXTURES / "nuscenes-real-slice"
HIGHWAY = FIXTURES / "nuscenes-udacity-highway"
VERSION = "v1.0-mini"
KEYFRAME_US = 500_000  # nuScenes keyframes are 2 Hz


def copies(work: Path, name: str, n: int) -> tuple[Path, list[str]]:
    """A dataroot of ``n`` copies of the real slice's scene; its path and scene names."""
    root = work / name
    return root, synth_dataroot([REAL_SLICE], root, copies=n)


def _read(root: Path, table: str) -> list[dict]:
    return json.loads((root / VERSION / f"{table}.json").read_text())


def _write(root: Path, table: str, records: list[dict]) -> None:
    (root / VERSION / f"{table}.json").write_text(json.dumps(records))


def _chain(scenes: list[dict], samples_by_scene: dict[str, dict], data_by_sample: dict[str, list[dict]]) -> dict:
    """One scene made of ``scenes`` (one sample each, in order); returns its record."""
    head = scenes[0]
    chain = [samples_by_scene[s["token"]] for s in scenes]
    start = chain[0]["timestamp"]
    for i, sample in enumerate(chain):
        sample["scene_token"] = head["token"]
        sample["prev"] = chain[i - 1]["token"] if i else ""
        sample["next"] = chain[i + 1]["token"] if i + 1 < len(chain) else ""
        sample["timestamp"] = start + i * KEYFRAME_US
        for data in data_by_sample[sample["token"]]:
            data["timestamp"] = sample["timestamp"]
    return {**head, "nbr_samples": len(chain), "first_sample_token": chain[0]["token"],
            "last_sample_token": chain[-1]["token"]}


def long_scenes(work: Path, name: str, scenes: int, samples: int) -> tuple[Path, list[str]]:
    """A dataroot of ``scenes`` scenes of ``samples`` keyframes x 6 cameras; its path and scene names."""
    root, _ = copies(work, name, scenes * samples)
    scene_records = _read(root, "scene")
    sample_records, data_records = _read(root, "sample"), _read(root, "sample_data")
    if any(s["nbr_samples"] != 1 for s in scene_records):
        raise ValueError(f"{REAL_SLICE}: expected one-sample scenes to chain")
    samples_by_scene = {s["scene_token"]: s for s in sample_records}
    data_by_sample: dict[str, list[dict]] = {}
    for data in data_records:
        data_by_sample.setdefault(data["sample_token"], []).append(data)
    chained = [_chain(scene_records[i : i + samples], samples_by_scene, data_by_sample)
               for i in range(0, len(scene_records), samples)]
    _write(root, "scene", chained)
    _write(root, "sample", sample_records)
    _write(root, "sample_data", data_records)
    return root, [s["name"] for s in chained]
