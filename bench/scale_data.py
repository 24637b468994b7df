"""The scale benchmark's synthetic data: a nuScenes dataroot of N scenes and a conceptmine store.

The dataroot is one generated scene of trainval size (40 samples, six cameras and LiDAR, ~34
annotated instances) replicated N times by the project's own :func:`synth_dataroot`. The store
holds every per-scene table of that dataroot in the project's schemas, written through the
project's Parquet IO manager: per frame ~7 crops (Poisson) with 512-d embeddings drawn from a
seeded mixture of 16 broad common clusters and 4 small, tight **planted rare clusters**
(~0.3% of new objects), whose concept scores, groups (target / rare), captions and outlier flags
are consistent with them. 30% of each keyframe's crops are objects of the previous keyframe of
the same camera seen again, with a near-identical embedding (cosine ~0.97): the near-duplicates
of real drives. The planted crops are listed in ``planted.parquet`` beside the store, each with
its object (the detection_id of its first sighting).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
from PIL import Image

from conceptmine_assets.lib.synth import copy_name, copy_token, synth_dataroot
from conceptmine_assets.lib.vocabulary import humanize
from conceptmine_assets.resources.storage import ParquetIOManager

CAMERAS = ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT"]
SAMPLES, INSTANCES, CROPS_PER_FRAME, DIM = 40, 34, 7, 512
BASE_SCENE, VERSION = "scene-synth", "v1.0-trainval"
COMMON = ["car", "car", "car", "pedestrian", "pedestrian", "traffic_sign", "traffic_light", "truck", "barrier"]
GROUPS = {"car": "common", "pedestrian": "common", "traffic_sign": "common", "traffic_light": "common",
          "truck": "target", "barrier": "rare"}
# planted rare clusters: (class, top concept, group, caption)
PLANTED = [
    ("construction_vehicle", "construction_vehicle", "target", "an excavator digging at the roadside"),
    ("bicycle", "cargo_bike", "rare", "a cargo bike loaded with boxes"),
    ("others", "road_roller", "rare", "a road roller on a closed lane"),
    ("pedestrian", "kick_scooter", "rare", "a person riding a kick scooter"),
]
PLANTED_RATE = 0.003
TRACK_RATE = 0.3  # share of a keyframe's crops that are objects of the previous keyframe seen again
TRACK_NOISE = 0.25  # their embedding: the previous one plus this much noise (cosine ~0.97)
SCENE_ASSETS = ["frames", "detections", "crops", "embeddings", "outlier_flags", "captions", "concept_scores"]
CATEGORIES = {"car": "vehicle.car", "pedestrian": "human.pedestrian.adult", "truck": "vehicle.truck",
              "barrier": "movable_object.barrier", "construction_vehicle": "vehicle.construction",
              "bicycle": "vehicle.bicycle", "traffic_cone": "movable_object.trafficcone"}


def _token(*parts) -> str:
    import hashlib

    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


def _base_tables() -> dict[str, list[dict]]:
    """One scene of trainval size as nuScenes tables (tokens are md5 hex, deterministic)."""
    t = {name: [] for name in ("category", "attribute", "visibility", "sensor", "calibrated_sensor", "log", "map",
                               "scene", "sample", "sample_data", "ego_pose", "instance", "sample_annotation")}
    t["category"] = [{"token": _token("cat", c), "name": c, "description": ""} for c in CATEGORIES.values()]
    t["visibility"] = [{"token": "4", "level": "v80-100", "description": ""}]
    channels = CAMERAS + ["LIDAR_TOP"]
    for ch in channels:
        t["sensor"].append({"token": _token("sensor", ch), "channel": ch, "modality": "lidar" if ch == "LIDAR_TOP" else "camera"})
        t["calibrated_sensor"].append({"token": _token("cs", ch), "sensor_token": _token("sensor", ch),
                                       "translation": [1.0, 0.0, 1.5], "rotation": [1.0, 0.0, 0.0, 0.0],
                                       "camera_intrinsic": [] if ch == "LIDAR_TOP" else [[1266.0, 0, 816.0], [0, 1266.0, 491.0], [0, 0, 1]]})
    t["log"] = [{"token": _token("log"), "logfile": "synth", "vehicle": "synth", "date_captured": "2026-11-30", "location": "boston-seaport"}]
    t["map"] = [{"token": _token("map"), "log_tokens": [_token("log")], "category": "semantic_prior", "filename": "maps/synth.png"}]
    samples = [_token("sample", i) for i in range(SAMPLES)]
    t["scene"] = [{"token": _token("scene"), "log_token": _token("log"), "nbr_samples": SAMPLES, "name": BASE_SCENE,
                   "first_sample_token": samples[0], "last_sample_token": samples[-1], "description": "synthetic"}]
    for i, s in enumerate(samples):
        ts = 1_500_000_000_000_000 + i * 500_000
        t["sample"].append({"token": s, "timestamp": ts, "scene_token": _token("scene"),
                            "prev": samples[i - 1] if i else "", "next": samples[i + 1] if i + 1 < SAMPLES else ""})
        for ch in channels:
            sd = _token("sd", i, ch)
            t["ego_pose"].append({"token": sd, "timestamp": ts, "rotation": [1.0, 0, 0, 0], "translation": [float(i), 0, 0]})
            t["sample_data"].append({
                "token": sd, "sample_token": s, "ego_pose_token": sd, "calibrated_sensor_token": _token("cs", ch),
                "timestamp": ts, "fileformat": "pcd" if ch == "LIDAR_TOP" else "jpg", "is_key_frame": True,
                "height": 0 if ch == "LIDAR_TOP" else 900, "width": 0 if ch == "LIDAR_TOP" else 1600,
                "filename": f"samples/{ch}/synth_{i:02d}.{'pcd.bin' if ch == 'LIDAR_TOP' else 'jpg'}",
                "prev": _token("sd", i - 1, ch) if i else "", "next": _token("sd", i + 1, ch) if i + 1 < SAMPLES else ""})
    names = list(CATEGORIES.values())
    for j in range(INSTANCES):
        anns = [_token("ann", j, i) for i in range(SAMPLES)]
        t["instance"].append({"token": _token("inst", j), "category_token": _token("cat", names[j % len(names)]),
                              "nbr_annotations": SAMPLES, "first_annotation_token": anns[0], "last_annotation_token": anns[-1]})
        for i, a in enumerate(anns):
            t["sample_annotation"].append({
                "token": a, "sample_token": samples[i], "instance_token": _token("inst", j), "visibility_token": "4",
                "attribute_tokens": [], "translation": [float(j), float(i), 0.0], "size": [1.8, 4.5, 1.6],
                "rotation": [1.0, 0, 0, 0], "prev": anns[i - 1] if i else "", "next": anns[i + 1] if i + 1 < SAMPLES else "",
                "num_lidar_pts": 10, "num_radar_pts": 0})
    return t


def write_dataroot(work: Path, scenes: int) -> Path:
    """A nuScenes dataroot of ``scenes`` copies of the generated scene (files symlinked)."""
    base, out = work / "base-dataroot", work / "dataroot"
    (base / VERSION).mkdir(parents=True, exist_ok=True)
    tables = _base_tables()
    for name, records in tables.items():
        (base / VERSION / f"{name}.json").write_text(json.dumps(records))
    for rec in tables["sample_data"] + tables["map"]:
        path = base / rec["filename"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"synthetic")
    synth_dataroot([base], out, copies=scenes, version=VERSION)
    return out


@dataclass
class Mixture:
    """The seeded embedding mixture: broad common clusters and tight planted ones."""

    common: np.ndarray
    planted: np.ndarray

    @classmethod
    def make(cls, seed: int) -> Mixture:
        rng = np.random.default_rng(seed)
        centres = rng.standard_normal((16 + len(PLANTED), DIM))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        return cls(centres[:16], centres[16:])

    def draw(self, rng: np.random.Generator, cluster: np.ndarray, planted: np.ndarray) -> np.ndarray:
        centres = np.where(planted[:, None], self.planted[cluster % len(self.planted)], self.common[cluster % 16])
        spread = np.where(planted, 0.35, 1.1)[:, None]
        x = centres + spread * rng.standard_normal((len(cluster), DIM)) / np.sqrt(DIM) * 1.6
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _jpegs() -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(8):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=70)
        out.append(buf.getvalue())
    return out


@dataclass
class StoreWriter:
    """Writes one scene's tables through the project's Parquet IO manager."""

    store: Path
    mixture: Mixture
    text_vectors: dict[str, np.ndarray]
    text_model_id: str
    image_model_id: str
    vocabulary_names: list[str]
    vocabulary_version: str
    seed: int = 0

    def __post_init__(self) -> None:
        self.jpegs = _jpegs()
        self.base = _base_tables()

    def __getstate__(self) -> dict:  # sent to worker processes without the IO manager
        return {k: v for k, v in self.__dict__.items() if k not in ("io", "resources")}

    def _io(self):
        if "io" not in self.__dict__:
            self.io = ParquetIOManager(base_path=str(self.store)).create_io_manager(dg.build_init_resource_context())
            # one empty resource set for all output contexts (each would otherwise start an ephemeral instance)
            self.resources = dg.build_resources({}).__enter__()
        return self.io

    def put(self, asset: str, scene: str, df: pd.DataFrame) -> None:
        io_manager = self._io()
        context = dg.build_output_context(asset_key=dg.AssetKey(asset), partition_key=scene,
                                          resources=self.resources)
        io_manager.handle_output(context, df)

    def scene(self, k: int) -> pd.DataFrame:
        """Write scene copy ``k``; returns its planted crops (detection_id, sample_token, cluster)."""
        from bench.scale_tables import scene_tables

        scene = copy_name(BASE_SCENE, k)
        done = all((self.store / asset / f"{scene}.parquet").exists() for asset in SCENE_ASSETS)
        tables, planted = scene_tables(self, k, np.random.default_rng([self.seed, k]), planted_only=done)
        for asset, df in tables.items():
            self.put(asset, scene, df)
        return planted


def scene_frames(base: dict[str, list[dict]], k: int) -> pd.DataFrame:
    """The camera keyframes of scene copy ``k`` in the `frames` schema."""
    samples = {s["token"]: s for s in base["sample"]}
    channel = {cs["token"]: cs["sensor_token"] for cs in base["calibrated_sensor"]}
    sensors = {s["token"]: s["channel"] for s in base["sensor"]}
    lidar = {sd["sample_token"]: sd["token"] for sd in base["sample_data"] if sd["fileformat"] == "pcd"}
    rows = []
    for sd in base["sample_data"]:
        if sd["fileformat"] != "jpg":
            continue
        rows.append({
            "scene_name": copy_name(BASE_SCENE, k), "scene_token": copy_token(base["scene"][0]["token"], k),
            "sample_token": copy_token(sd["sample_token"], k), "sample_data_token": copy_token(sd["token"], k),
            "channel": sensors[channel[sd["calibrated_sensor_token"]]], "timestamp": samples[sd["sample_token"]]["timestamp"],
            "image_path": sd["filename"], "width": 1600, "height": 900,
            "camera_intrinsic": [1266.0, 0, 816.0, 0, 1266.0, 491.0, 0, 0, 1], "sensor2ego_translation": [1.0, 0, 1.5],
            "sensor2ego_rotation": [1.0, 0, 0, 0], "ego2global_translation": [0.0, 0, 0],
            "ego2global_rotation": [1.0, 0, 0, 0], "lidar_sample_data_token": copy_token(lidar[sd["sample_token"]], k),
            "image_ok": True, "image_error": None})
    return pd.DataFrame(rows)


def caption_texts() -> list[str]:
    """Every caption the synthetic store uses (encoded once with the real text model)."""
    return sorted({humanize(c) for c in COMMON} | {p[3] for p in PLANTED} | {humanize(p[0]) for p in PLANTED})
