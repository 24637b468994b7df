"""Outlier detectors (pure functions) and the `outlier_reference` / `outlier_flags` assets."""

import pickle
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from upath import UPath

from conceptmine_assets.assets.outliers import outlier_flags, outlier_reference
from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.lib.outliers import (
    DETECTORS,
    OutlierParams,
    QualityThresholds,
    apply_thresholds,
    combine,
    effective_k,
    fit_reference,
    quality_flags,
    score,
)
from conceptmine_assets.partitions import scene_partitions
from conceptmine_assets.resources.storage import ParquetIOManager, PickleIOManager, atomic_write, to_arrow
from conceptmine_assets.schemas import CROPS, EMBEDDINGS, OUTLIER_FLAGS
from conceptmine_assets_tests.helpers import materialize_scene
from conceptmine_assets_tests.store_helpers import materialize_global

DIM = 32


# ---------------------------------------------------------------- synthetic data


def blobs(rng: np.random.Generator, n: int, centers: np.ndarray, spread: float = 0.05) -> np.ndarray:
    """L2-normalised points around unit ``centers`` (like CLIP crops of a few common classes)."""
    x = centers[rng.integers(0, len(centers), n)] + spread * rng.standard_normal((n, centers.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    """Random unit vectors: almost orthogonal to every blob centre in 32-D, i.e. far outliers."""
    x = rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def centers() -> np.ndarray:
    c = np.random.default_rng(0).standard_normal((3, DIM))
    return c / np.linalg.norm(c, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def fitted(centers):
    X = blobs(np.random.default_rng(1), 300, centers)
    ids = np.array([f"ref-{i}" for i in range(len(X))], dtype=object)
    return fit_reference(X, ids, "m", OutlierParams(seed=0)), X, ids


# ---------------------------------------------------------------- pure functions


@pytest.mark.parametrize("detector", DETECTORS)
def test_each_detector_finds_planted_outliers_in_new_data(fitted, centers, detector):
    reference, _, _ = fitted
    rng = np.random.default_rng(2)
    inliers, outliers = blobs(rng, 200, centers), planted(rng, 8)
    X = np.vstack([inliers, outliers])
    ids = np.array([f"new-{i}" for i in range(len(X))], dtype=object)
    flags = apply_thresholds(score(reference, X, ids), reference.thresholds)[detector]
    assert flags[200:].all(), f"{detector} missed planted outliers"
    # inliers of the same distribution are flagged at about the reference rate, not wholesale
    rate = {"iforest": 0.1, "lof": 0.1, "knn": 0.2}[detector]
    assert flags[:200].mean() < rate + 0.1


@pytest.mark.parametrize("detector", DETECTORS)
def test_planted_outliers_inside_the_reference_are_flagged(centers, detector):
    rng = np.random.default_rng(3)
    X = np.vstack([blobs(rng, 200, centers), planted(rng, 6)])
    ids = np.array([f"d{i}" for i in range(len(X))], dtype=object)
    reference = fit_reference(X, ids, "m")
    member_flags = apply_thresholds(reference.member_scores, reference.thresholds)[detector]
    assert member_flags[200:].all()


def test_reference_flag_rates_follow_contamination_and_percentile(fitted):
    reference, _, _ = fitted
    rates = {d: f.mean() for d, f in apply_thresholds(reference.member_scores, reference.thresholds).items()}
    assert rates["iforest"] == pytest.approx(0.1, abs=0.01)
    assert rates["lof"] == pytest.approx(0.1, abs=0.01)
    assert rates["knn"] == pytest.approx(0.2, abs=0.01)


def test_rescoring_members_uses_leave_one_out_scores(fitted):
    reference, X, ids = fitted
    again = score(reference, X, ids)
    for d in DETECTORS:
        np.testing.assert_allclose(again[d], reference.member_scores[d], rtol=1e-6)
    # the same vectors under unknown ids are "new" data and count themselves as a neighbour
    as_new = score(reference, X, np.array([f"other-{i}" for i in range(len(X))], dtype=object))
    assert (as_new["knn"] < reference.member_scores["knn"]).all()
    # a member whose embedding changed (re-embedded crop) is scored as new data
    changed = X.copy()
    changed[0] = X[1]
    s = score(reference, changed, ids)
    assert s["knn"][0] != pytest.approx(reference.member_scores["knn"][0])


@pytest.mark.parametrize(
    "scores, threshold, expected",
    [([0.1, 0.5, 0.9], 0.5, [False, False, True]), ([1.0, 2.0], 0.0, [True, True]), ([], 1.0, [])],
)
def test_thresholds_are_strictly_greater(scores, threshold, expected):
    s = {d: np.asarray(scores, dtype=float) for d in DETECTORS}
    flags = apply_thresholds(s, {d: threshold for d in DETECTORS})
    for d in DETECTORS:
        assert flags[d].tolist() == expected


FLAG_ROWS = {  # iforest, lof, knn
    "none": (False, False, False),
    "iforest": (True, False, False),
    "lof+knn": (False, True, True),
    "all": (True, True, True),
}


@pytest.mark.parametrize(
    "rule, min_votes, expected",
    [
        ("union", 2, [False, True, True, True]),
        ("vote", 1, [False, True, True, True]),
        ("vote", 2, [False, False, True, True]),
        ("vote", 3, [False, False, False, True]),
    ],
)
def test_combine_union_and_vote(rule, min_votes, expected):
    rows = list(FLAG_ROWS.values())
    flags = {d: np.array([r[i] for r in rows]) for i, d in enumerate(DETECTORS)}
    is_outlier, fired = combine(flags, rule, min_votes)
    assert is_outlier.tolist() == expected
    assert fired == [[], ["iforest"], ["lof", "knn"], ["iforest", "lof", "knn"]]


@pytest.mark.parametrize("rule, min_votes", [("majority", 2), ("vote", 0), ("vote", 4)])
def test_combine_rejects_bad_rules(rule, min_votes):
    flags = {d: np.array([True]) for d in DETECTORS}
    with pytest.raises(ConceptmineError):
        combine(flags, rule, min_votes)


@pytest.mark.parametrize(
    "n, k, expected, warns",
    [(100, 20, 20, False), (21, 20, 20, False), (20, 20, 19, True), (5, 20, 4, True), (3, 10, 2, True)],
)
def test_effective_k_falls_back_to_n_minus_1(n, k, expected, warns):
    got, warning = effective_k(n, k, "lof")
    assert got == expected
    assert (warning is not None) == warns


@pytest.mark.parametrize("n", [0, 1, 2])
def test_too_small_reference_is_an_error(n):
    with pytest.raises(ConceptmineError, match="at least 3 embeddings"):
        fit_reference(np.zeros((n, 4), np.float32), np.array([str(i) for i in range(n)], dtype=object), "m")


def test_small_reference_fits_with_reduced_k_and_scores(centers):
    rng = np.random.default_rng(4)
    X = blobs(rng, 8, centers)
    reference = fit_reference(X, np.array([f"s{i}" for i in range(8)], dtype=object), "m")
    assert (reference.lof_k, reference.knn_k) == (7, 7)
    assert len(reference.warnings) == 2 and "reduced from 20 to 7" in reference.warnings[0]
    s = score(reference, planted(rng, 2), np.array(["x", "y"], dtype=object))
    assert all(np.isfinite(s[d]).all() for d in DETECTORS)


@pytest.mark.parametrize(
    "params", [{"contamination": 0.0}, {"contamination": 0.6}, {"knn_percentile": 100}, {"lof_k": 0}, {"knn_k": 0}]
)
def test_bad_params_are_refused_by_the_params(params):
    with pytest.raises(ValidationError, match=next(iter(params))):
        OutlierParams(**params)


def test_score_rejects_wrong_dimension(fitted):
    reference, _, _ = fitted
    with pytest.raises(ConceptmineError, match="expects dim 32"):
        score(reference, np.zeros((2, 16), np.float32), np.array(["a", "b"], dtype=object))


def test_tsne_is_stored_for_plots_only(centers):
    X = blobs(np.random.default_rng(6), 60, centers)
    ids = np.array([str(i) for i in range(60)], dtype=object)
    with_map = fit_reference(X, ids, "m", tsne_max_points=40, tsne_perplexity=10)
    without = fit_reference(X, ids, "m")
    assert with_map.tsne.shape == (40, 2) and len(set(with_map.tsne_index)) == 40
    assert without.tsne is None
    new = blobs(np.random.default_rng(7), 5, centers)
    new_ids = np.array(list("abcde"), dtype=object)
    a, b = score(with_map, new, new_ids), score(without, new, new_ids)
    for d in DETECTORS:  # the map never enters scoring
        np.testing.assert_allclose(a[d], b[d])


@pytest.mark.parametrize(
    "over, dark, blur, expected",
    [
        (0.0, 0.0, 500.0, []),
        (0.30, 0.0, 500.0, ["glare"]),
        (0.10, 0.0, 500.0, []),  # at the limit: not above
        (0.0, 0.80, 500.0, ["dark"]),
        (0.0, 0.0, 10.0, ["blur"]),
        (0.0, 0.0, 50.0, []),  # at the limit: not below
        (0.5, 0.6, 1.0, ["glare", "dark", "blur"]),
    ],
)
def test_quality_flags_on_hand_made_values(over, dark, blur, expected):
    crops = pd.DataFrame({"overexposed_frac": [over], "dark_frac": [dark], "blur_laplacian_var": [blur]})
    flags, unknown = quality_flags(crops, QualityThresholds())
    assert flags == [expected] and unknown == 0


def test_quality_flags_count_nulls_and_use_custom_limits():
    crops = pd.DataFrame(
        {"overexposed_frac": [None, 0.05], "dark_frac": [0.0, 0.0], "blur_laplacian_var": [100.0, 100.0]}
    )
    flags, unknown = quality_flags(crops, QualityThresholds(glare_overexposed_frac=0.01, blur_laplacian_var=200))
    assert flags == [["blur"], ["glare", "blur"]] and unknown == 1


# ---------------------------------------------------------------- assets

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


def crops_df(emb: pd.DataFrame, **quality) -> pd.DataFrame:
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
        emb = embeddings_df(scene, blobs(rng, n, centers))
        write_table(store, "embeddings", scene, emb)
        write_table(store, "crops", scene, crops_df(emb))


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
    emb = embeddings_df("scene-new", np.vstack([blobs(rng, 20, centers), planted(rng, 3)]))
    write_table(store, "embeddings", "scene-new", emb)
    glare = [0.0] * 22 + [0.4]
    write_table(store, "crops", "scene-new", crops_df(emb, overexposed_frac=glare))
    flags = flag(store, "scene-new", instance)

    assert pkl.read_bytes() == before  # not refit
    assert list(flags.columns) == OUTLIER_FLAGS.names
    assert flags["is_outlier"].iloc[20:].all()
    assert all(len(d) == 3 for d in flags["outlier_detectors"].iloc[20:])
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
    emb = embeddings_df("scene-v", np.vstack([blobs(rng, 30, centers), planted(rng, 2)]))
    write_table(store, "embeddings", "scene-v", emb)
    write_table(store, "crops", "scene-v", crops_df(emb))
    union = flag(store, "scene-v", instance)
    vote3 = flag(store, "scene-v", instance, combine="vote", min_votes=3)
    assert (vote3["is_outlier"] == (union[["iforest_flag", "lof_flag", "knn_flag"]].sum(axis=1) == 3)).all()
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
    emb = embeddings_df("s2", blobs(np.random.default_rng(0), 10, centers), model_id="other-model")
    write_table(store, "embeddings", "s2", emb)
    with pytest.raises(ConceptmineError, match="mix models"):
        fit(store, instance)


def test_no_embeddings_is_an_error(store, instance):
    with pytest.raises(ConceptmineError, match="no `embeddings`"):
        fit(store, instance)


def test_scene_with_another_model_asks_to_refit_reference(store, instance, centers):
    seed_scenes(store, centers)
    fit(store, instance)
    emb = embeddings_df("scene-x", blobs(np.random.default_rng(0), 5, centers), model_id="new-model")
    write_table(store, "embeddings", "scene-x", emb)
    write_table(store, "crops", "scene-x", crops_df(emb))
    with pytest.raises(ConceptmineError, match="re-materialise `outlier_reference`"):
        flag(store, "scene-x", instance)


def test_embedding_without_crop_is_an_error(store, instance, centers):
    seed_scenes(store, centers)
    fit(store, instance)
    emb = embeddings_df("scene-y", blobs(np.random.default_rng(0), 5, centers))
    write_table(store, "embeddings", "scene-y", emb)
    write_table(store, "crops", "scene-y", crops_df(emb.iloc[:3]))
    with pytest.raises(ConceptmineError, match="scene-y: 2 embeddings have no row in `crops`"):
        flag(store, "scene-y", instance)


def test_empty_scene_gives_empty_table(store, instance, centers):
    seed_scenes(store, centers)
    fit(store, instance)
    emb = embeddings_df("scene-empty", np.zeros((0, DIM), np.float32))
    write_table(store, "embeddings", "scene-empty", emb)
    write_table(store, "crops", "scene-empty", crops_df(emb))
    flags = flag(store, "scene-empty", instance)
    assert flags.empty and list(flags.columns) == OUTLIER_FLAGS.names
