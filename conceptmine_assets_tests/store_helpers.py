"""Helpers for tests of the global stages: materialise them over a hand-written store.

Global assets read their inputs through the IO manager (``StoredTable`` over all partitions),
so a test declares the upstream assets it wrote by hand as specs and registers their scenes.
The mined split's tests share synthetic crops with known tiers and a two-scene store built from them.
"""

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

from conceptmine_assets.assets.splits import mined_split
from conceptmine_assets.partitions import SCENE_PARTITIONS_NAME, scene_partitions
from conceptmine_assets.resources.storage import ParquetIOManager, atomic_write, to_arrow
from conceptmine_assets.resources.vocabulary import VocabularyResource
from conceptmine_assets.schemas import CONCEPT_SCORES, EMBEDDINGS, FRAMES, OUTLIER_FLAGS

GLOBAL_TABLES = {"mined_split", "reviews"}


def stored_scenes(store: Path) -> list[str]:
    """Scene names of every per-scene file in ``store``."""
    return sorted({p.stem for p in Path(store).glob("*/*.parquet")})


def upstream_specs(names) -> list[dg.AssetSpec]:
    """Specs of the hand-written upstream assets (scene-partitioned unless global)."""
    return [dg.AssetSpec(n) if n in GLOBAL_TABLES else dg.AssetSpec(n, partitions_def=scene_partitions) for n in names]


def materialize_global(assets, store: Path, instance: dg.DagsterInstance, resources: dict, upstream=(), **kwargs):
    """Materialise global ``assets`` with ``upstream`` specs, the store's scenes registered."""
    scenes = [s for s in stored_scenes(store) if not instance.has_dynamic_partition(SCENE_PARTITIONS_NAME, s)]
    if scenes:
        instance.add_dynamic_partitions(SCENE_PARTITIONS_NAME, scenes)
    return dg.materialize([*assets, *upstream_specs(upstream)], instance=instance, resources=resources,
                          selection=assets, **kwargs)


# ---------------------------------------------------------------- the mined split's synthetic crops


def universe_of(n: int, scenes: int = 2) -> pd.DataFrame:
    """``n`` training samples ``tok000``... spread round-robin over ``scenes`` scenes."""
    return pd.DataFrame(
        {"sample_token": [f"tok{i:03d}" for i in range(n)], "scene_name": [f"scene-{i % scenes}" for i in range(n)]}
    )


def crop(token: str, group: str, outlier: bool, i: int = 0, score: float = 0.5) -> dict:
    """One crop of sample ``token`` (its ``i``-th) in ``group``, an outlier by iforest and knn or
    not; its evidence score (lib/evidence.py) is its concept score here."""
    return {
        "detection_id": f"{token}/d{i}",
        "sample_token": token,
        "group": group,
        "is_outlier": outlier,
        "top_concept": f"{group}_concept",
        "top_score": score,
        "caption": f"a {group} thing",
        "outlier_detectors": ["iforest", "knn"] if outlier else [],
        "outlier": 0.9 if outlier else 0.3,
        "rarity": 0.5,
        "confidence": score,
        "detector_confidence": 1.0,
        "score": score,
    }


def planted_crops() -> pd.DataFrame:
    """20 samples: 0-2 target∧outlier, 3-6 target, 7-8 rare∧outlier, 9-11 rare, the rest common."""
    rows = []
    for i in range(20):
        t = f"tok{i:03d}"
        if i < 3:
            rows += [crop(t, "target", True), crop(t, "common", False, 1)]
        elif i < 7:
            rows.append(crop(t, "target", False))
        elif i < 9:
            rows.append(crop(t, "rare", True))
        elif i < 12:
            rows.append(crop(t, "rare", False))
        else:
            rows.append(crop(t, "common", i % 2 == 0))  # common outliers never qualify
    return pd.DataFrame(rows)


def reasons_of(split: pd.DataFrame) -> dict[str, int]:
    """How many samples the split took for each reason."""
    return split["reason"].value_counts().to_dict()


# ---------------------------------------------------------------- a hand-written store for the mined split


def write_stored(store: Path, asset: str, df: pd.DataFrame, scene: str | None = None) -> None:
    """Store a hand-made table atomically: conformed to its schema for frames, concept_scores,
    outlier_flags and detections, as plain Arrow otherwise (e.g. a mined_split of a few columns)."""
    table = to_arrow(df, asset, f"test {asset}") if asset in ("frames", "concept_scores", "outlier_flags", "detections", "embeddings") else pa.Table.from_pandas(df, preserve_index=False)
    path = UPath(store) / asset / f"{scene}.parquet" if scene else UPath(store) / f"{asset}.parquet"
    atomic_write(path, lambda fh: pq.write_table(table, fh))


def frames_df(scene: str, tokens: list[str]) -> pd.DataFrame:
    """A frames table of one CAM_FRONT frame per sample token (other columns null)."""
    df = pd.DataFrame({c: pd.Series([None] * len(tokens), dtype=object) for c in FRAMES.names})
    df["scene_name"], df["sample_token"], df["channel"] = scene, tokens, "CAM_FRONT"
    df["sample_data_token"] = [f"sd-{t}" for t in tokens]
    df["timestamp"], df["width"], df["height"], df["image_ok"] = 0, 1600, 900, True
    return df


def scored_df(scene: str, rows: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """concept_scores and outlier_flags tables for ``crop`` dicts."""
    cs = pd.DataFrame({c: pd.Series([None] * len(rows), dtype=object) for c in CONCEPT_SCORES.names})
    of = pd.DataFrame({c: pd.Series([None] * len(rows), dtype=object) for c in OUTLIER_FLAGS.names})
    for df in (cs, of):
        df["detection_id"] = [r["detection_id"] for r in rows]
        df["scene_name"], df["channel"], df["class_name"] = scene, "CAM_FRONT", "car"
        df["sample_token"] = [r["sample_token"] for r in rows]
    cs["group"] = [r["group"] for r in rows]
    cs["top_concept"] = [r["top_concept"] for r in rows]
    cs["top_score"] = [r["top_score"] for r in rows]
    cs["caption"] = [r["caption"] for r in rows]
    of["is_outlier"] = [r["is_outlier"] for r in rows]
    of["outlier_detectors"] = pd.Series([r["outlier_detectors"] for r in rows], dtype=object)
    for d in ("iforest", "lof", "knn"):
        of[f"{d}_flag"] = [d in r["outlier_detectors"] for r in rows]
    of["quality_flags"] = pd.Series([[] for _ in rows], dtype=object)
    of["is_quality_outlier"] = False
    return cs, of


def embeddings_of(scored: pd.DataFrame, dim: int = 8, seed: int = 0, vectors: dict | None = None) -> pd.DataFrame:
    """An embeddings table for the crops of a concept_scores table: seeded random unit vectors
    (nearly orthogonal: no two crops are near-duplicates) unless ``vectors`` gives one by id."""
    rng = np.random.default_rng(seed)
    emb = scored[[c for c in EMBEDDINGS.names if c in scored.columns]].copy()
    emb["model_id"] = "test"
    rows = []
    for det in emb["detection_id"]:
        v = np.asarray(vectors[det], dtype=np.float32) if vectors and det in vectors else rng.standard_normal(dim)
        rows.append((v / np.linalg.norm(v)).astype(np.float32))
    emb["embedding"] = pd.Series(rows, index=emb.index, dtype=object)
    emb = emb[EMBEDDINGS.names]
    emb.attrs["vector_dims"] = {"embedding": dim}
    return emb


def seed_store(store: Path) -> None:
    """Two scenes, 20 samples each; crops as in planted_crops on scene-0's samples."""
    crops = planted_crops().to_dict("records")
    for s in range(2):
        scene = f"scene-{s}"
        tokens = [f"tok{i:03d}" for i in range(s * 20, s * 20 + 20)]
        write_stored(store, "frames", frames_df(scene, tokens), scene)
        rows = [r for r in crops if r["sample_token"] in tokens]
        cs, of = scored_df(scene, rows)
        write_stored(store, "concept_scores", cs, scene)
        write_stored(store, "outlier_flags", of.iloc[: max(len(of) - 1, 0)] if s == 0 else of, scene)
        write_stored(store, "embeddings", embeddings_of(cs, seed=s), scene)


def run_split(store: Path, instance, **config):
    """Materialise ``mined_split`` over ``store`` with ``config``."""
    return materialize_global(
        [mined_split], store, instance, {"io_manager": ParquetIOManager(base_path=str(store)),
                                         "vocabulary": VocabularyResource()},
        upstream=["frames", "detections", "concept_scores", "outlier_flags", "embeddings", "reviews"], run_config={"ops": {"mined_split": {"config": config}}},
    )

