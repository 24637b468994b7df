"""The `outlier_reference` (fitted once over all scenes) and `outlier_flags` (per scene, without a
refit) assets on hand-written stores of synthetic embeddings, and their errors."""

import pickle
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from upath import UPath

from conceptmine_assets.assets.outliers import outlier_flags, outlier_reference
from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.lib.outliers import DETECTORS
from conceptmine_assets.partitions import scene_partitions
from conceptmine_assets.resources.storage import ParquetIOManager, PickleIOManager, atomic_write, to_arrow
from conceptmine_assets.schemas import CROPS, EMBEDDINGS, OUTLIER_FLAGS
from conceptmine_assets_tests.helpers import materialize_scene, planted_outliers, unit_blobs
from conceptmine_assets_tests.store_helpers import materialize_global

DIM = 32


EMBEDDINGS_SPEC = dg.AssetSpec("embeddings", partitions_def=scene_partitions)
CROPS_SPEC = dg.AssetSpec("crops", partitions_def=scene_partitions)


def write_table(store: Path, asset: str, scene: str, df: pd.DataFrame) -> None:
    table = to_arrow(df, asset, f"test {asset}/{scene}")
    atomic_write(UPath(store) / asset / f"{scene}.parquet", lambda fh: pq.write_table(table, fh))


def embeddings_df(scene: str, X: np.ndarray, model_id: str = "clip:test", prefix: str = "") -> pd.DataFrame:
    n = len(X)
    df = pd.DataFrame(
        {
            "detection_id": [f"{scene}/{prefix}{i}" for i in range(n)],
            "scene_name": scene,
            "sample_token": [f"{scene}-s{i % 4}" for i in range(n)],
            "sample_data_token": [f"{scene}-sd{i % 4}" for i in range(n)],
            "channel": "CAM_FRONT",
            "class_name": "car",
            "model_id": model_id,
            "embedding": pd.Series(list(X), dtype=object),
        },
        columns=EMBEDDINGS.names,
    )
    df.attrs["vector_dims"] = {"embedding": X.shape[1] if X.ndim == 2 else DIM}
    return df


def crops_of(emb: pd.DataFrame, **quality) -> pd.DataFrame:
    n = len(emb)
    cols = {c: emb[c] for c in ["detection_id", "scene_name", "sample_token", "sample_data_token", "channel", "class_name"]}
    base = {
        "confidence": 0.9, "x1": 0.0, "y1": 0.0, "x2": 10.0, "y2": 10.0,
        "crop_x1": 0, "crop_y1": 0, "crop_x2": 10, "crop_y2": 10, "image_jpeg": b"",
        "lidar_points": None, "lidar_median_depth": None,
        "brightness": 0.5, "overexposed_frac": 0.0, "dark_frac": 0.0, "blur_laplacian_var": 500.0,
    }
    base.update(quality)
    return pd.DataFrame({**cols, **{k: (v if isinstance(v, list) else [v] * n) for k, v in base.items()}}, columns=CROPS.names)


def resources(store: Path) -> dict:
    return {
        "io_manager": ParquetIOManager(base_path=str(store)),
        "pickle_io_manager": PickleIOManager(base_path=str(store)),
    }


def fit(store: Path, instance, **config) -> dg.ExecuteInProcessResult:
    run_config = {"ops": {"outlier_reference": {"config": {"tsne_max_points": 0, **config}}}}
    return materialize_global([outlier_reference], store, instance, resources(store), upstream=["embeddings"],
                              run_config=run_config)


def flag(store: Path, scene: str, instance, **config) -> pd.DataFrame:
    run_config = {"ops": {"outlier_flags": {"config": config}}} if config else None
    materialize_scene(
        [EMBEDDINGS_SPEC, CROPS_SPEC, outlier_reference, outlier_flags],
        scene, instance, resources(store), run_config=run_config, selection=[outlier_flags],
    )
    return pd.read_parquet(store / "outlier_flags" / f"{scene}.parquet")


def seed_scenes(store: Path, centers: np.ndarray, scenes=("scene-a", "scene-b"), n: int = 60) -> None:
    rng = np.random.default_rng(10)
    for scene in scenes:
        emb = embeddings_df(scene, unit_blobs(rng, n, centers))
        write_table(store, "embeddings", scene, emb)
        write_table(store, "crops", scene, crops_of(emb))


def test_reference_fit_once_and_new_scene_scored_without_refit(store, instance, centers):
    seed_scenes(store, centers)
    result = fit(store, instance, tsne_max_points=30)
    md = result.asset_materializations_for_node("outlier_reference")[0].metadata
    assert md["num_reference"].value == 120 and md["model_id"].value == "clip:test"
    pkl = store / "outlier_reference.pkl"
    before = pkl.read_bytes()
    reference = pickle.loads(before)
    assert reference.tsne.shape == (30, 2)

    # a scene added after the fit: 20 blob crops + 3 planted outliers, one glaring crop
    rng = np.random.default_rng(11)
    emb = embeddings_df("scene-new", np.vstack([unit_blobs(rng, 20, centers), planted_outliers(rng, 3)]))
    write_table(store, "embeddings", "scene-new", emb)
    glare = [0.0] * 22 + [0.4]
    write_table(store, "crops", "scene-new", crops_of(emb, overexposed_frac=glare))
    flags = flag(store, "scene-new", instance)

    assert pkl.read_bytes() == before  # not refit
    assert list(flags.columns) == OUTLIER_FLAGS.names
    assert flags["is_outlier"].iloc[20:].all()
    assert all({"iforest", "lof", "knn"} <= set(d) for d in flags["outlier_detectors"].iloc[20:])
    # percentiles are calibrated on the reference: planted outliers score at its top
    assert (flags["outlier_evidence"].iloc[20:23] > 0.9).all()
    assert flags["outlier_evidence"].iloc[:20].median() < flags["outlier_evidence"].iloc[20:23].min()
    for d in DETECTORS:
        assert flags[f"{d}_pct"].between(0, 1).all()
    assert flags["is_outlier"].iloc[:20].mean() < 0.5
    assert flags["quality_flags"].iloc[22].tolist() == ["glare"]
    assert flags["is_quality_outlier"].tolist() == [False] * 22 + [True]
    # scores follow the stored thresholds exactly
    for d in DETECTORS:  # (float32 storage may round a score onto its threshold)
        far = ~np.isclose(flags[f"{d}_score"], reference.thresholds[d], rtol=1e-5)
        assert (flags[f"{d}_flag"] == (flags[f"{d}_score"] > reference.thresholds[d]))[far].all()
    # idempotent re-run gives the same table
    again = flag(store, "scene-new", instance)
    pd.testing.assert_frame_equal(flags, again)


def test_vote_rule_is_configurable(store, instance, centers):
    seed_scenes(store, centers)
    fit(store, instance)
    rng = np.random.default_rng(12)
    emb = embeddings_df("scene-v", np.vstack([unit_blobs(rng, 30, centers), planted_outliers(rng, 2)]))
    write_table(store, "embeddings", "scene-v", emb)
    write_table(store, "crops", "scene-v", crops_of(emb))
    union = flag(store, "scene-v", instance)
    vote3 = flag(store, "scene-v", instance, combine="vote", min_votes=3)
    votes = union[[f"{d}_flag" for d in DETECTORS]].sum(axis=1)
    assert (vote3["is_outlier"] == (votes >= 3)).all()
    assert vote3["is_outlier"].sum() <= union["is_outlier"].sum()
    assert vote3["is_outlier"].iloc[30:].all()


def test_reservoir_sample_is_bounded_and_seeded(store, instance, centers):
    seed_scenes(store, centers, scenes=("s1", "s2", "s3"), n=40)
    members = []
    for seed in (0, 0, 1):
        fit(store, instance, max_reference=50, seed=seed)
        members.append(list(pickle.loads((store / "outlier_reference.pkl").read_bytes()).member_ids))
    assert len(members[0]) == 50
    assert members[0] == members[1]
    assert members[0] != members[2]


def test_mixed_models_in_embeddings_is_an_error(store, instance, centers):
    seed_scenes(store, centers, scenes=("s1",))
    emb = embeddings_df("s2", unit_blobs(np.random.default_rng(0), 10, centers), model_id="other-model")
    write_table(store, "embeddings", "s2", emb)
    with pytest.raises(ConceptmineError, match="mix models"):
        fit(store, instance)


def test_no_embeddings_is_an_error(store, instance):
    with pytest.raises(ConceptmineError, match="no `embeddings`"):
        fit(store, instance)


def test_scene_with_another_model_asks_to_refit_reference(store, instance, centers):
    seed_scenes(store, centers)
    fit(store, instance)
    emb = embeddings_df("scene-x", unit_blobs(np.random.default_rng(0), 5, centers), model_id="new-model")
    write_table(store, "embeddings", "scene-x", emb)
    write_table(store, "crops", "scene-x", crops_of(emb))
    with pytest.raises(ConceptmineError, match="re-materialise `outlier_reference`"):
        flag(store, "scene-x", instance)


def test_embedding_without_crop_is_an_error(store, instance, centers):
    seed_scenes(store, centers)
    fit(store, instance)
    emb = embeddings_df("scene-y", unit_blobs(np.random.default_rng(0), 5, centers))
    write_table(store, "embeddings", "scene-y", emb)
    write_table(store, "crops", "scene-y", crops_of(emb.iloc[:3]))
    with pytest.raises(ConceptmineError, match="scene-y: 2 embeddings have no row in `crops`"):
        flag(store, "scene-y", instance)


def test_empty_scene_gives_empty_table(store, instance, centers):
    seed_scenes(store, centers)
    fit(store, instance)
    emb = embeddings_df("scene-empty", np.zeros((0, DIM), np.float32))
    write_table(store, "embeddings", "scene-empty", emb)
    write_table(store, "crops", "scene-empty", crops_of(emb))
    flags = flag(store, "scene-empty", instance)
    assert flags.empty and list(flags.columns) == OUTLIER_FLAGS.names
