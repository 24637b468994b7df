"""One synthetic scene's per-scene tables in the project's schemas (see bench/scale_data.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.scale_data import (
    BASE_SCENE, COMMON, CROPS_PER_FRAME, DIM, GROUPS, PLANTED, PLANTED_RATE, TRACK_NOISE, TRACK_RATE, scene_frames,
)
from conceptmine_assets.lib.outliers import DETECTORS
from conceptmine_assets.lib.synth import copy_name
from conceptmine_assets.lib.vocabulary import humanize
from conceptmine_assets.schemas import CAPTIONS, CONCEPT_SCORES, CROPS, DETECTIONS, EMBEDDINGS, OUTLIER_FLAGS

KEYS = ["detection_id", "scene_name", "sample_token", "sample_data_token", "channel", "class_name"]


def _crops(frames: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """One row per crop: keys, cluster, planted flag, class, top concept, group, caption."""
    counts = rng.poisson(CROPS_PER_FRAME, len(frames))
    rows = frames.loc[frames.index.repeat(counts), ["scene_name", "sample_token", "sample_data_token", "channel"]]
    rows = rows.reset_index(drop=True)
    n = len(rows)
    rows["detection_id"] = rows["sample_data_token"] + "-" + pd.Series(np.concatenate([np.arange(c) for c in counts]) if n else [], dtype=str)
    planted = rng.random(n) < PLANTED_RATE
    cluster = np.where(planted, rng.integers(0, len(PLANTED), n), rng.integers(0, 16, n))
    common = np.array(COMMON, dtype=object)[rng.integers(0, len(COMMON), n)]
    rows["planted"], rows["cluster"] = planted, cluster
    rows["class_name"] = np.where(planted, [PLANTED[c][0] for c in cluster % len(PLANTED)], common)
    rows["top_concept"] = np.where(planted, [PLANTED[c][1] for c in cluster % len(PLANTED)], common)
    rows["group"] = np.where(planted, [PLANTED[c][2] for c in cluster % len(PLANTED)], [GROUPS[c] for c in common])
    rows["caption"] = np.where(planted, [PLANTED[c][3] for c in cluster % len(PLANTED)], [humanize(c) for c in common])
    rows["is_outlier"] = np.where(planted, rng.random(n) < 0.9, rng.random(n) < 0.08)
    return _tracks(rows, rng)


_COPIED = ["planted", "cluster", "class_name", "top_concept", "group", "caption", "is_outlier"]


def _tracks(rows: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Objects seen again in the next keyframe of the same camera (the near-duplicates of real
    drives): a share TRACK_RATE of each frame's crops copies a crop of the previous keyframe
    (``source``: its row; -1 for a new object; ``object``: the first sighting's row)."""
    n = len(rows)
    source = np.full(n, -1, dtype=np.int64)
    frame_rows = {k: np.asarray(v) for k, v in rows.groupby("sample_data_token", sort=False).indices.items()}
    previous = {}  # channel -> rows of its last keyframe
    for sd, idx in frame_rows.items():
        channel = rows["channel"].iat[int(idx[0])]
        before = previous.get(channel)
        if before is not None and len(before):
            copy = rng.random(len(idx)) < TRACK_RATE
            source[idx[copy]] = before[rng.integers(0, len(before), int(copy.sum()))]
        previous[channel] = idx
    obj = np.arange(n)
    for i in np.flatnonzero(source >= 0):  # keyframe order: a source comes before its copies
        obj[i] = obj[source[i]]
    copies = np.flatnonzero(source >= 0)  # a copy is its object's first sighting seen again
    rows.iloc[copies, [rows.columns.get_loc(c) for c in _COPIED]] = rows.iloc[obj[copies], [rows.columns.get_loc(c) for c in _COPIED]].to_numpy()
    rows["source"], rows["object"] = source, obj
    return rows


def track_embeddings(x: np.ndarray, source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy's embedding is its source's plus a little noise (cosine ~0.97), in keyframe order."""
    x = x.copy()
    for i in np.flatnonzero(source >= 0):
        v = x[source[i]] + TRACK_NOISE * rng.standard_normal(DIM) / np.sqrt(DIM)
        x[i] = v / np.linalg.norm(v)
    return x.astype(np.float32)


def _detections(c: pd.DataFrame, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    n = len(c)
    x1, y1 = rng.uniform(0, 1400, n).astype(np.float32), rng.uniform(300, 700, n).astype(np.float32)
    w, h = rng.uniform(20, 200, n).astype(np.float32), rng.uniform(20, 200, n).astype(np.float32)
    conf = rng.uniform(0.3, 0.95, n).astype(np.float32)
    det = c[KEYS].assign(detector="yolo:synthetic", source_class=c["class_name"], confidence=conf, x1=x1, y1=y1,
                         x2=x1 + w, y2=y1 + h, annotation_token=None, category=None, attributes=None, visibility=None)
    crops = c[KEYS].assign(confidence=conf, x1=x1, y1=y1, x2=x1 + w, y2=y1 + h,
                           crop_x1=(x1 - 4).astype(np.int32), crop_y1=(y1 - 4).astype(np.int32),
                           crop_x2=(x1 + w + 4).astype(np.int32), crop_y2=(y1 + h + 4).astype(np.int32))
    return det[DETECTIONS.names], crops


def _crops_table(crops: pd.DataFrame, c: pd.DataFrame, jpegs: list[bytes], rng: np.random.Generator) -> pd.DataFrame:
    n = len(c)
    crops = crops.assign(
        image_jpeg=[jpegs[i] for i in c["cluster"] % len(jpegs)], lidar_points=rng.integers(0, 400, n).astype(np.int32),
        lidar_median_depth=rng.uniform(3, 60, n).astype(np.float32), brightness=rng.uniform(0.2, 0.8, n).astype(np.float32),
        overexposed_frac=rng.uniform(0, 0.05, n).astype(np.float32), dark_frac=rng.uniform(0, 0.1, n).astype(np.float32),
        blur_laplacian_var=rng.uniform(60, 900, n).astype(np.float32))
    return crops[CROPS.names]


def _flags(c: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Synthetic flags (the real ones need the fitted reference: bench/mining_quality.py scores
    every crop with it); the shape of the real table, percentiles high where a detector fired."""
    n, out = len(c), c[KEYS].copy()
    fired = [[d for d in DETECTORS if o and (d in ("knn", "small_cluster") or r < 0.5)]
             for o, r in zip(c["is_outlier"], rng.random(n))]
    for d in DETECTORS:
        out[f"{d}_score"] = rng.random(n).astype(np.float32) + np.float32(0.5) * c["is_outlier"].to_numpy()
        out[f"{d}_flag"] = [d in f for f in fired]
    for d in DETECTORS:
        out[f"{d}_pct"] = np.where(out[f"{d}_flag"], rng.uniform(0.9, 1.0, n), rng.uniform(0.0, 0.9, n)).astype(np.float32)
    out["outlier_evidence"] = out[[f"{d}_pct" for d in DETECTORS]].max(axis=1).astype(np.float32)
    out["is_outlier"] = c["is_outlier"].astype(bool)
    out["outlier_detectors"], out["quality_flags"], out["is_quality_outlier"] = fired, [[]] * n, False
    return out[OUTLIER_FLAGS.names]


def _captions(c: pd.DataFrame, writer) -> pd.DataFrame:
    ok = c["planted"].to_numpy()
    out = c[KEYS].assign(
        status=np.where(ok, "ok", "class_name"), backend=np.where(ok, "template", None),
        model_id=np.where(ok, "template", None), raw_answer=np.where(ok, c["caption"], None), vlm_class=None,
        description=np.where(ok, c["caption"], None), caption=c["caption"], error=None,
        attempts=ok.astype(np.int32), latency_s=np.float32(0.0), text_model_id=writer.text_model_id,
        caption_embedding=[writer.text_vectors[t] for t in c["caption"]])
    out.attrs["vector_dims"] = {"caption_embedding": len(next(iter(writer.text_vectors.values())))}
    return out[CAPTIONS.names]


def _scores(c: pd.DataFrame, writer, rng: np.random.Generator) -> pd.DataFrame:
    n, names = len(c), writer.vocabulary_names
    top = rng.uniform(0.22, 0.34, n).astype(np.float32)
    second = (top - rng.uniform(0.01, 0.05, n)).astype(np.float32)
    vectors = rng.uniform(0.0, 0.2, (n, len(names))).astype(np.float32)
    out = c[KEYS].assign(
        caption=c["caption"], vlm_class=None, top_concept=c["top_concept"], top_score=top,
        second_concept=names[0], second_score=second, margin=top - second, joint_label=None,
        top_superclass="vehicle", group=c["group"], weight_text=np.float32(1.0), score_mode="text_only",
        vocabulary_version=writer.vocabulary_version, concept_names=[names] * n, concept_scores=list(vectors))
    return out[CONCEPT_SCORES.names]


def scene_tables(writer, k: int, rng: np.random.Generator, planted_only: bool = False):
    """(asset -> table, planted crops) of scene copy ``k`` (no tables with ``planted_only``)."""
    frames = scene_frames(writer.base, k)
    c = _crops(frames, rng)
    planted = c.loc[c["planted"], ["detection_id", "sample_token", "cluster"]].assign(scene_name=copy_name(BASE_SCENE, k))
    planted["object"] = c["detection_id"].to_numpy()[c.loc[c["planted"], "object"].to_numpy()]
    if planted_only:
        return {}, planted
    det, crops = _detections(c, rng)
    emb = c[KEYS].assign(model_id=writer.image_model_id)
    drawn = writer.mixture.draw(rng, c["cluster"].to_numpy(), c["planted"].to_numpy())
    emb["embedding"] = list(track_embeddings(drawn, c["source"].to_numpy(), rng))
    tables = {
        "frames": frames, "detections": det, "crops": _crops_table(crops, c, writer.jpegs, rng),
        "embeddings": emb[EMBEDDINGS.names], "outlier_flags": _flags(c, rng), "captions": _captions(c, writer),
        "concept_scores": _scores(c, writer, rng),
    }
    return tables, planted
