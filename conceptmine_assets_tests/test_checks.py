"""Each asset check of ``checks.py`` passes on a good hand-made store and fails on each way of breaking it.

The checks run as Dagster runs them: selected from the project's definitions, with its resources,
over tables written to a temporary store in the project's schemas.
"""

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from conceptmine_assets.definitions import build_definitions
from conceptmine_assets.orchestration.checks import split_violations
from conceptmine_assets.schemas import SCHEMAS
from conceptmine_assets.settings import Settings
from conceptmine_assets_tests.helpers import write_table

SCENES = ("scene-a", "scene-b")


def table(asset: str, ids: list[str], scene: str = SCENES[0], **columns) -> pd.DataFrame:
    """Rows of ``asset`` for ``ids`` in ``scene``: keys filled, ``columns`` as given, the rest null."""
    n = len(ids)
    df = pd.DataFrame({c: pd.Series([None] * n, dtype=object) for c in SCHEMAS[asset].names})
    keys = {"scene_name": scene, "sample_token": "s0", "sample_data_token": "sd0", "channel": "CAM_FRONT",
            "class_name": "car", "detection_id": ids}
    for name, value in {**keys, **columns}.items():
        df[name] = value if np.ndim(value) == 0 or isinstance(value, str) else list(value)
    return df


def vectors(n: int, dim: int) -> pd.Series:
    rng = np.random.default_rng(dim)
    return pd.Series(list(rng.normal(size=(n, dim)).astype(np.float32)), dtype=object)


def run_check(store: Path, name: str, instance: dg.DagsterInstance | None = None) -> tuple[bool, dict]:
    """Run the project's check ``name`` over ``store``; whether it passed and its metadata values."""
    defs = build_definitions(Settings(store=str(store)))
    checks = [c for c in defs.asset_checks if any(k.name == name for k in c.check_keys)]
    assert len(checks) == 1, f"no check {name}"
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks], selection=dg.AssetSelection.checks(*checks),
        resources=defs.resources, instance=instance, raise_on_error=True,
    )
    [evaluation] = result.get_asset_check_evaluations()
    return evaluation.passed, {k: v.value for k, v in evaluation.metadata.items()}


# ---------------------------------------------------------------- detection_ids_are_unique


def test_detection_ids_unique_across_scenes_pass(store):
    write_table(store, "detections", table("detections", ["d1", "d2"]), SCENES[0])
    write_table(store, "detections", table("detections", ["d3"], SCENES[1]), SCENES[1])
    assert run_check(store, "detection_ids_are_unique") == (True, {"num_duplicate_ids": 0, "examples": ""})


def test_a_detection_id_in_two_scenes_fails(store):
    write_table(store, "detections", table("detections", ["d1", "d2"]), SCENES[0])
    write_table(store, "detections", table("detections", ["d2"], SCENES[1]), SCENES[1])
    assert run_check(store, "detection_ids_are_unique") == (False, {"num_duplicate_ids": 1, "examples": "d2"})


def test_detection_check_without_the_table_fails(store):
    assert run_check(store, "detection_ids_are_unique") == (False, {"missing_tables": "detections"})


# ---------------------------------------------------------------- every_crop_has_an_embedding


def embedding_store(store: Path, crop_ids: list[str], embedded: list[str], dim: int = 4) -> None:
    write_table(store, "crops", table("crops", crop_ids), SCENES[0])
    write_table(store, "embeddings", table("embeddings", embedded, model_id="m", embedding=vectors(len(embedded), dim)),
                SCENES[0])


def test_every_crop_embedded_once_passes(store):
    embedding_store(store, ["d1", "d2"], ["d1", "d2"])
    passed, md = run_check(store, "every_crop_has_an_embedding")
    assert passed and md["crops_without_embedding"] == md["embeddings_without_crop"] == md["duplicate_embeddings"] == 0


@pytest.mark.parametrize(
    ("crops", "embedded", "broken"),
    [
        (["d1", "d2"], ["d1"], "crops_without_embedding"),
        (["d1"], ["d1", "d9"], "embeddings_without_crop"),
        (["d1", "d2"], ["d1", "d2", "d2"], "duplicate_embeddings"),
    ],
)
def test_a_crop_without_one_embedding_fails(store, crops, embedded, broken):
    embedding_store(store, crops, embedded)
    passed, md = run_check(store, "every_crop_has_an_embedding")
    assert not passed and md[broken] == 1


def test_one_model_with_two_dimensions_fails(store):
    embedding_store(store, ["d1", "d2"], ["d1"], dim=4)
    write_table(store, "crops", table("crops", ["d2"], SCENES[1]), SCENES[1])
    write_table(store, "embeddings", table("embeddings", ["d2"], SCENES[1], model_id="m", embedding=vectors(1, 3)),
                SCENES[1])
    passed, md = run_check(store, "every_crop_has_an_embedding")
    assert not passed and md["crops_without_embedding"] == 0
    assert sorted(ln.split("|")[2].strip() for ln in md["dims"].splitlines()[2:]) == ["3", "4"]  # model m, two dims


def test_embedding_check_without_the_tables_fails(store):
    assert run_check(store, "every_crop_has_an_embedding") == (False, {"missing_tables": "crops, embeddings"})


# ---------------------------------------------------------------- concept_scores_in_range


def scores(**overrides) -> pd.DataFrame:
    good = {"top_score": 0.3, "weight_text": 0.5, "group": "rare", "concept_names": [["car", "cone"]],
            "concept_scores": [np.array([0.3, -0.2], dtype=np.float32)]}
    return table("concept_scores", ["d1"], **{**good, **overrides})


def test_concept_scores_in_range_pass(store):
    write_table(store, "concept_scores", scores(), SCENES[0])
    passed, md = run_check(store, "concept_scores_in_range")
    assert passed and set(md.values()) == {0}


@pytest.mark.parametrize(
    ("override", "broken"),
    [
        ({"top_score": 1.5}, "bad_top_score"),
        ({"top_score": None}, "bad_top_score"),
        ({"weight_text": 1.2}, "bad_weight_text"),
        ({"group": "weird"}, "bad_group"),
        ({"concept_names": [["car"]]}, "bad_lengths"),
        ({"concept_scores": [np.array([0.3, -1.5], dtype=np.float32)]}, "bad_scores"),
    ],
)
def test_a_score_out_of_range_fails(store, override, broken):
    write_table(store, "concept_scores", scores(**override), SCENES[0])
    passed, md = run_check(store, "concept_scores_in_range")
    assert not passed and md[broken] == 1
    assert sum(md.values()) == 1  # only what was broken is counted


def test_score_check_without_the_table_fails(store):
    assert run_check(store, "concept_scores_in_range") == (False, {"missing_tables": "concept_scores"})


# ---------------------------------------------------------------- split_size_matches_budget


def split(reasons: list[str], tokens: list[str] | None = None) -> pd.DataFrame:
    """A mined split of ``reasons`` (the other columns null, ``rank`` in order)."""
    df = pd.DataFrame({c: pd.Series([None] * len(reasons), dtype=object) for c in SCHEMAS["mined_split"].names})
    df["sample_token"] = tokens or [f"s{i}" for i in range(len(reasons))]
    df["reason"], df["rank"] = reasons, range(len(reasons))
    return df


BUDGETS = {"target": 2, "rare": 1, "random": 2}


@pytest.mark.parametrize(
    ("reasons", "tokens", "num_samples", "problem"),
    [
        (["target_outlier", "target", "rare", "random", "random"], None, 10, None),
        (["target"], None, 1, None),  # fewer candidates than budget; no sample left for random
        (["target", "target", "target", "random", "random"], None, 10, "target: 3 selected > budget 2"),
        (["rare_outlier", "rare", "random", "random"], None, 10, "rare: 2 selected > budget 1"),
        (["target", "random"], None, 10, "random: 1 selected, budget 2"),
        (["target", "random", "random"], ["s0", "s1", "s1"], 10, "duplicate sample tokens"),
    ],
)
def test_split_violations(reasons, tokens, num_samples, problem):
    problems = split_violations(split(reasons, tokens), BUDGETS, num_samples, "priority")
    assert problems == ([problem] if problem else [])


@pytest.mark.parametrize(
    ("reasons", "num_samples", "problem"),
    [
        (["rare_outlier", "target_outlier", "random_fill", "random", "random"], 10, None),
        (["rare", "target", "target"], 3, None),  # no sample left for random
        (["rare_outlier", "target"], 2, None),
        (["target", "target", "random", "random"], 10, "target+rare: 2 selected, budget 3"),
        (["target", "target", "target", "target", "random", "random"], 10, "target+rare: 4 selected, budget 3"),
        (["target", "target", "rare", "random"], 10, "random: 1 selected, budget 2"),
    ],
)
def test_split_violations_ranked(reasons, num_samples, problem):
    problems = split_violations(split(reasons), BUDGETS, num_samples, "ranked")
    assert problems == ([problem] if problem else [])


def test_split_check_reads_the_budgets_of_the_config(store, instance):
    """Budgets come from the asset's config over the samples in `frames`, not from its metadata."""
    from conceptmine_assets.assets.splits import SplitConfig

    tokens = [f"s{i}" for i in range(10)]
    frames = pd.DataFrame({c: pd.Series([None] * 10, dtype=object) for c in SCHEMAS["frames"].names})
    frames["scene_name"], frames["sample_token"], frames["image_ok"] = SCENES[0], tokens, True
    write_table(store, "frames", frames, SCENES[0])
    write_table(store, "mined_split", split(["target", "target", "target", "target"]))
    instance.report_runless_asset_event(dg.AssetMaterialization(  # metadata that would pass: ignored
        "mined_split", metadata={"budgets": dg.MetadataValue.json({"target": 3, "rare": 0, "random": 0})}))
    passed, md = run_check(store, "split_size_matches_budget", instance)
    target = int(SplitConfig().target_frac * 10 + 1e-9)
    assert not passed and md["problems"].startswith(f"target+rare: 4 selected, budget {target}")
    assert md["num_training_samples"] == 10 and md["budgets"]["target"] == target
