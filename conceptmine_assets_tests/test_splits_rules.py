"""Mined split selection rules on synthetic crops (pure functions): budgets, tier priority, seeding,
the reasons' crops, the paper strategy, and filtering mmdetection3d info files."""

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.lib.splits import SPLIT_COLUMNS, SplitParams, add_why, budget, filter_mmdet3d_infos, select_split
from conceptmine_assets_tests.store_helpers import crop, planted_crops, reasons_of, universe_of


@pytest.mark.parametrize(
    "frac, n, expected",
    [(0.1, 100, 10), (0.1, 15, 1), (0.1, 9, 0), (0.29, 100, 29), (0.0, 50, 0), (1.0, 7, 7), (0.15, 1000, 150)],
)
def test_budget_rounds_down(frac, n, expected):
    assert budget(frac, n) == expected


@pytest.mark.parametrize("fracs, match", [
    ({"random_frac": -0.1}, "greater than or equal to 0"), ({"target_frac": 1.5}, "less than or equal to 1"),
    ({"random_frac": 0.5, "target_frac": 0.4, "rare_frac": 0.2}, "fractions must sum to at most 1"),
    ({"rare_frac": 0.1, "strategy": "paper"}, "no rare budget")])
def test_bad_fractions_are_refused_by_the_params(fracs, match):
    with pytest.raises(ValidationError, match=match):
        SplitParams(**fracs)


@pytest.mark.parametrize(
    "target, rare, rand, expected",
    [
        (0.10, 0.0, 0.0, {"target_outlier": 2}),  # budget 2 < 3 target∧outlier samples
        (0.25, 0.0, 0.0, {"target_outlier": 3, "target": 2}),
        (0.50, 0.0, 0.0, {"target_outlier": 3, "target": 4}),  # budget 10, only 7 candidates
        (0.50, 0.10, 0.10, {"target_outlier": 3, "target": 4, "rare_outlier": 2, "random": 2}),
        (0.0, 0.25, 0.0, {"rare_outlier": 2, "rare": 3}),
        (0.10, 0.0, 0.90, {"target_outlier": 2, "random": 18}),  # random takes everything left
        (0.0, 0.0, 0.10, {"random": 2}),
    ],
)
def test_priority_and_exact_budgets(target, rare, rand, expected):
    params = SplitParams(random_frac=rand, target_frac=target, rare_frac=rare, seed=3, strategy="priority")
    split, caps = select_split(universe_of(20), planted_crops(), params)
    assert reasons_of(split) == expected
    n_target = min(caps["target"], 7)
    n_rare = min(caps["rare"], 5)
    assert len(split) == n_target + n_rare + min(caps["random"], 20 - n_target - n_rare)
    assert split["sample_token"].is_unique
    assert split["rank"].tolist() == list(range(len(split)))
    order = [r for r in ("target_outlier", "target", "rare_outlier", "rare", "random") if r in expected]
    assert list(dict.fromkeys(split["reason"])) == order  # tiers are filled in priority order


def test_target_and_outlier_must_be_the_same_crop():
    crops = pd.DataFrame([crop("tok000", "target", False, 0), crop("tok000", "common", True, 1)])
    split, _ = select_split(universe_of(10), crops, SplitParams(random_frac=0.0, target_frac=0.1, rare_frac=0.0, strategy="priority"))
    assert split["reason"].tolist() == ["target"]


def test_split_is_seeded_and_independent_of_input_order():
    universe = universe_of(200)
    rng = np.random.default_rng(0)
    crops = pd.DataFrame([crop(f"tok{i:03d}", "target", bool(rng.random() < 0.3)) for i in range(0, 200, 4)])
    params = SplitParams(random_frac=0.1, target_frac=0.1, rare_frac=0.0, seed=1, strategy="priority")
    a, _ = select_split(universe, crops, params)
    b, _ = select_split(universe.sample(frac=1, random_state=5), crops.sample(frac=1, random_state=6), params)
    pd.testing.assert_frame_equal(a, b)
    c, _ = select_split(universe, crops, SplitParams(random_frac=0.1, target_frac=0.1, rare_frac=0.0, seed=2, strategy="priority"))
    assert len(c) == len(a) == 40
    assert set(c["sample_token"]) != set(a["sample_token"])


def test_crops_outside_the_training_set_are_ignored():
    crops = pd.DataFrame([crop("elsewhere", "target", True), crop("tok001", "target", False)])
    split, _ = select_split(universe_of(20), crops, SplitParams(random_frac=0.0, target_frac=0.5, rare_frac=0.0, strategy="priority"))
    assert split["sample_token"].tolist() == ["tok001"]


def test_add_why_lists_the_qualifying_crops():
    crops = pd.DataFrame(
        [
            crop("tok000", "target", True, 0, score=0.4),
            crop("tok000", "target", True, 1, score=0.9),
            crop("tok000", "target", False, 2),
            crop("tok000", "common", True, 3),
        ]
    )
    split, _ = select_split(universe_of(10), crops, SplitParams(random_frac=0.1, target_frac=0.1, rare_frac=0.0, strategy="priority"))
    why = add_why(split, crops, "priority")
    assert list(why.columns) == SPLIT_COLUMNS
    row = why[why["reason"] == "target_outlier"].iloc[0]
    assert row["detection_ids"] == ["tok000/d1", "tok000/d0"]  # best score first
    assert row["top_scores"] == [0.9, 0.4]
    assert row["top_concepts"] == ["target_concept"] * 2
    assert row["captions"] == ["a target thing"] * 2
    assert row["outlier_detectors"] == ["iforest+knn"] * 2
    rand = why[why["reason"] == "random"].iloc[0]
    assert rand["detection_ids"] == [] and rand["outlier_detectors"] == []


@pytest.mark.parametrize(
    "infos, key",
    [
        ({"metainfo": {"version": "v1.0-trainval"}, "data_list": [{"token": "a"}, {"token": "b"}, {"token": "c"}]}, "data_list"),
        ({"metadata": {"version": "v1.0"}, "infos": [{"token": "a"}, {"token": "b"}, {"token": "c"}]}, "infos"),
    ],
)
def test_filter_mmdet3d_infos_both_formats(infos, key):
    filtered, kept = filter_mmdet3d_infos(infos, {"a", "c", "zzz"}, "x.pkl")
    assert [i["token"] for i in filtered[key]] == ["a", "c"] and kept == 2
    assert {k: v for k, v in filtered.items() if k != key} == {k: v for k, v in infos.items() if k != key}
    assert len(infos[key]) == 3  # the input is not modified


@pytest.mark.parametrize(
    "infos, match",
    [([{"token": "a"}], "not an mmdetection3d"), ({"samples": []}, "not an mmdetection3d"), ({"data_list": [{"id": 1}]}, "no 'token'")],
)
def test_filter_mmdet3d_infos_rejects_other_files(infos, match):
    with pytest.raises(ConceptmineError, match=match):
        filter_mmdet3d_infos(infos, {"a"}, "x.pkl")


def test_paper_strategy_differs_from_priority_exactly_where_expected():
    """10 samples: t0 target∧outlier, t1 target, t2 rare∧outlier, t3 rare, the rest nothing;
    random 20 % (2), target 50 % (5). priority fills the target budget from targets only and draws
    random last; paper draws random first (from all samples), then lets rare samples and random
    leftovers (``random_fill``) fill the target budget."""
    from conceptmine_assets.lib.splits import TIERS, _hash_order, select_from_tiers

    universe = universe_of(10)
    tokens = universe["sample_token"].tolist()
    tiers = pd.DataFrame({"sample_token": tokens})
    for i, tier in enumerate(TIERS):
        tiers[tier] = [j == i or (tier == "target" and j == 0) or (tier == "rare" and j == 2) for j in range(10)]
    order = _hash_order(set(tokens), 3)

    fracs = {"random_frac": 0.2, "target_frac": 0.5, "seed": 3}
    prio, caps = select_from_tiers(universe, tiers, SplitParams(**fracs, strategy="priority"))
    assert caps == {"target": 5, "rare": 0, "random": 2}
    expected = [("tok000", "target_outlier"), ("tok001", "target")]
    expected += [(t, "random") for t in [t for t in order if t not in ("tok000", "tok001")][:2]]
    assert list(zip(prio["sample_token"], prio["reason"])) == expected

    paper, _ = select_from_tiers(universe, tiers, SplitParams(**fracs, strategy="paper"))
    first = order[:2]
    expected = [(t, "random") for t in first]
    expected += [(t, r) for t, r in [("tok000", "target_outlier"), ("tok001", "target"), ("tok002", "rare_outlier"),
                                      ("tok003", "rare")] if t not in first]
    fill = [t for t in order if t not in {t for t, _ in expected}][: 5 - (len(expected) - 2)]
    expected += [(t, "random_fill") for t in fill]
    assert list(zip(paper["sample_token"], paper["reason"])) == expected
    assert len(paper) == 7 and len(prio) == 4  # paper fills the target budget; priority leaves it short
    assert paper["rank"].tolist() == list(range(7))
