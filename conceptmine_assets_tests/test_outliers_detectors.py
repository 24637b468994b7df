"""The outlier detectors as pure functions on synthetic unit vectors with planted outliers:
IsolationForest, LOF and kNN thresholds, union / vote combination, small references, image quality flags."""

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

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
from conceptmine_assets_tests.helpers import planted_outliers, unit_blobs


@pytest.fixture(scope="module")
def fitted(centers):
    X = unit_blobs(np.random.default_rng(1), 300, centers)
    ids = np.array([f"ref-{i}" for i in range(len(X))], dtype=object)
    return fit_reference(X, ids, "m", OutlierParams(seed=0)), X, ids


@pytest.mark.parametrize("detector", DETECTORS)
def test_each_detector_finds_planted_outliers_in_new_data(fitted, centers, detector):
    reference, _, _ = fitted
    rng = np.random.default_rng(2)
    inliers, outliers = unit_blobs(rng, 200, centers), planted_outliers(rng, 8)
    X = np.vstack([inliers, outliers])
    ids = np.array([f"new-{i}" for i in range(len(X))], dtype=object)
    flags = apply_thresholds(score(reference, X, ids), reference.thresholds)[detector]
    assert flags[200:].all(), f"{detector} missed planted outliers"
    # inliers of the same distribution are flagged at about the reference rate, not wholesale
    rate = {"iforest": 0.1, "lof": 0.1, "knn": 0.1, "small_cluster": 0.1}[detector]
    assert flags[:200].mean() < rate + 0.1


@pytest.mark.parametrize("detector", DETECTORS)
def test_planted_outliers_inside_the_reference_are_flagged(centers, detector):
    rng = np.random.default_rng(3)
    X = np.vstack([unit_blobs(rng, 200, centers), planted_outliers(rng, 6)])
    ids = np.array([f"d{i}" for i in range(len(X))], dtype=object)
    reference = fit_reference(X, ids, "m")
    member_flags = apply_thresholds(reference.member_scores, reference.thresholds)[detector]
    assert member_flags[200:].all()


def test_reference_flag_rates_follow_contamination_and_percentile(fitted):
    reference, _, _ = fitted
    rates = {d: f.mean() for d, f in apply_thresholds(reference.member_scores, reference.thresholds).items()}
    assert rates["iforest"] == pytest.approx(0.1, abs=0.01)
    assert rates["lof"] == pytest.approx(0.1, abs=0.01)
    assert rates["knn"] == pytest.approx(0.1, abs=0.01)


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


FLAG_ROWS = {  # iforest, lof, knn, small_cluster
    "none": (False, False, False, False),
    "iforest": (True, False, False, False),
    "lof+knn": (False, True, True, False),
    "all but one": (True, True, False, True),
    "all": (True, True, True, True),
}


@pytest.mark.parametrize(
    "rule, min_votes, expected",
    [
        ("union", 2, [False, True, True, True, True]),
        ("vote", 1, [False, True, True, True, True]),
        ("vote", 2, [False, False, True, True, True]),
        ("vote", 3, [False, False, False, True, True]),
        ("vote", 4, [False, False, False, False, True]),
    ],
)
def test_combine_union_and_vote(rule, min_votes, expected):
    rows = list(FLAG_ROWS.values())
    flags = {d: np.array([r[i] for r in rows]) for i, d in enumerate(DETECTORS)}
    is_outlier, fired = combine(flags, rule, min_votes)
    assert is_outlier.tolist() == expected
    assert fired == [[], ["iforest"], ["lof", "knn"], ["iforest", "lof", "small_cluster"],
                     ["iforest", "lof", "knn", "small_cluster"]]


@pytest.mark.parametrize("rule, min_votes", [("majority", 2), ("vote", 0), ("vote", 5)])
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
    X = unit_blobs(rng, 8, centers)
    reference = fit_reference(X, np.array([f"s{i}" for i in range(8)], dtype=object), "m")
    assert (reference.lof_k, reference.knn_k, reference.small_cluster_k) == (7, 7, 7)
    assert len(reference.warnings) == 3 and "reduced from 20 to 7" in reference.warnings[0]
    s = score(reference, planted_outliers(rng, 2), np.array(["x", "y"], dtype=object))
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
    X = unit_blobs(np.random.default_rng(6), 60, centers)
    ids = np.array([str(i) for i in range(60)], dtype=object)
    with_map = fit_reference(X, ids, "m", tsne_max_points=40, tsne_perplexity=10)
    without = fit_reference(X, ids, "m")
    assert with_map.tsne.shape == (40, 2) and len(set(with_map.tsne_index)) == 40
    assert without.tsne is None
    new = unit_blobs(np.random.default_rng(7), 5, centers)
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
