"""The `mined_split` asset on a hand-written two-scene store: split and side files, errors, the
streamed path equal to the whole-table path, and the split's check and config validation."""

import pickle
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest

from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.lib.evidence import EVIDENCE_COLUMNS, evidence_sql, register_reviews
from conceptmine_assets.lib.splits import SPLIT_COLUMNS, SplitParams, add_why, sample_tiers, select_split
from conceptmine_assets_tests.store_helpers import frames_df, reasons_of, run_split, seed_store, write_stored


def test_mined_split_asset_writes_split_and_side_files(store, instance, tmp_path):
    seed_store(store)
    infos = {"metainfo": {"version": "v1.0-trainval"}, "data_list": [{"token": f"tok{i:03d}", "i": i} for i in range(40)]}
    infos_path = tmp_path / "nuscenes_infos_train.pkl"
    infos_path.write_bytes(pickle.dumps(infos))
    out = tmp_path / "splits"
    result = run_split(
        store, instance, target_frac=0.1, rare_frac=0.05, random_frac=0.1, seed=7, strategy="priority",
        output_dir=str(out), name="run1", mmdet3d_infos_path=str(infos_path),
    )
    split = pd.read_parquet(store / "mined_split.parquet")
    md = result.asset_materializations_for_node("mined_split")[0].metadata
    # N = 40 samples from frames (not just the 20 that have crops): budgets 4 / 2 / 4
    assert md["budgets"].value == {"target": 4, "rare": 2, "random": 4}
    assert len(split) == 10 and md["num_selected"].value == 10
    assert reasons_of(split) == {"target_outlier": 3, "target": 1, "rare_outlier": 2, "random": 4}
    assert md["num_crops_without_outlier_flags"].value == 1
    assert (out / "run1.txt").read_text().splitlines() == split["sample_token"].tolist()
    filtered = pickle.loads((out / "run1_nuscenes_infos_train.pkl").read_bytes())
    assert sorted(i["token"] for i in filtered["data_list"]) == sorted(split["sample_token"])
    assert filtered["metainfo"] == infos["metainfo"]
    assert md["num_in_mmdet3d_infos"].value == 10
    # reproducible: same seed gives the same split and files; no temporary files are left
    run_split(store, instance, target_frac=0.1, rare_frac=0.05, random_frac=0.1, seed=7, strategy="priority",
              output_dir=str(out), name="run1")
    pd.testing.assert_frame_equal(split, pd.read_parquet(store / "mined_split.parquet"))
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["run1.txt", "run1_nuscenes_infos_train.pkl"]
    # another seed changes the random fill, not the target/rare tiers (all their candidates fit)
    run_split(store, instance, target_frac=0.1, rare_frac=0.05, random_frac=0.1, seed=8, strategy="priority",
              output_dir=str(out), name="run2")
    other = pd.read_parquet(store / "mined_split.parquet")
    assert len(other) == 10 and set(other["sample_token"]) != set(split["sample_token"])


def test_mined_split_random_only_and_empty(store, instance, tmp_path):
    seed_store(store)
    run_split(store, instance, target_frac=0.0, random_frac=0.05, output_dir=str(tmp_path / "s"))
    split = pd.read_parquet(store / "mined_split.parquet")
    assert list(split.columns) == SPLIT_COLUMNS and split["reason"].tolist() == ["random", "random"]
    assert all(len(ids) == 0 for ids in split["detection_ids"])
    run_split(store, instance, target_frac=0.0, random_frac=0.0, output_dir=str(tmp_path / "s"))
    assert pd.read_parquet(store / "mined_split.parquet").empty
    assert (tmp_path / "s" / "mined.txt").read_text() == ""


def test_mined_split_bad_infos_file_is_a_clear_error(store, instance, tmp_path):
    seed_store(store)
    bad = tmp_path / "infos.pkl"
    bad.write_bytes(pickle.dumps([{"token": "x"}]))
    with pytest.raises(ConceptmineError, match="not an mmdetection3d"):
        run_split(store, instance, output_dir=str(tmp_path / "s"), mmdet3d_infos_path=str(bad))
    with pytest.raises(ConceptmineError, match="does not exist"):
        run_split(store, instance, output_dir=str(tmp_path / "s"), mmdet3d_infos_path=str(tmp_path / "nope.pkl"))


def test_mined_split_needs_its_inputs(store, instance, tmp_path):
    write_stored(store, "frames", frames_df("scene-0", ["a"]), "scene-0")
    with pytest.raises(ConceptmineError, match="concept_scores"):
        run_split(store, instance, output_dir=str(tmp_path / "s"))


def _exact_crops(store: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The whole-table path: every crop in pandas, a missing flag filled as not an outlier."""
    frames = pd.concat([pd.read_parquet(p) for p in sorted((store / "frames").glob("*.parquet"))])
    universe = frames.groupby("sample_token", as_index=False)["scene_name"].min().sort_values("sample_token")
    cs = pd.concat([pd.read_parquet(p) for p in sorted((store / "concept_scores").glob("*.parquet"))])
    of = pd.concat([pd.read_parquet(p) for p in sorted((store / "outlier_flags").glob("*.parquet"))])
    crops = cs.merge(of[["detection_id", "is_outlier", "outlier_detectors"]], on="detection_id", how="left")
    crops["is_outlier"] = crops["is_outlier"].astype("boolean").fillna(False).astype(bool)
    crops["outlier_detectors"] = [list(d) if isinstance(d, (list, np.ndarray)) else [] for d in crops["outlier_detectors"]]
    # the evidence score's parts, as the asset computes them (lib/evidence.py has its own tests)
    with duckdb.connect() as con:
        con.register("concept_scores", cs)
        con.register("outlier_flags", of)
        con.execute("CREATE TABLE detections (detection_id VARCHAR, confidence FLOAT)")
        register_reviews(con)
        parts = con.execute(evidence_sql(SplitParams())).df()[["detection_id", *EVIDENCE_COLUMNS]]
    return universe.reset_index(drop=True), crops.merge(parts, on="detection_id", how="left")


@pytest.mark.parametrize("strategy, rare", [("priority", 0.05), ("paper", 0.0)])
def test_streamed_split_equals_the_whole_table_path(store, instance, tmp_path, strategy, rare):
    from conceptmine_assets.lib.splits import TIERS_SQL
    from conceptmine_assets.resources.store_sql import connect, stored_tables

    seed_store(store)
    universe, crops = _exact_crops(store)
    tables = stored_tables(str(store))
    with connect(tables["frames"], tables["concept_scores"], tables["outlier_flags"]) as con:
        tiers = con.execute(TIERS_SQL).df()
    pd.testing.assert_frame_equal(tiers, sample_tiers(crops), check_dtype=False)
    run_split(store, instance, target_frac=0.15, rare_frac=rare, random_frac=0.1, seed=5, strategy=strategy,
              output_dir=str(tmp_path / "s"))
    params = SplitParams(random_frac=0.1, target_frac=0.15, rare_frac=rare, seed=5, strategy=strategy)
    exact = add_why(select_split(universe, crops, params)[0], crops, strategy)
    stored = pd.read_parquet(store / "mined_split.parquet").astype({"duplicate_of": object})
    stored["duplicate_of"] = stored["duplicate_of"].where(stored["duplicate_of"].notna(), None)
    pd.testing.assert_frame_equal(stored, exact, check_dtype=False)


def test_side_files_default_to_the_store_and_zero_budgets_are_explained(store, instance, tmp_path, monkeypatch):
    seed_store(store)
    monkeypatch.chdir(tmp_path)
    result = run_split(store, instance, target_frac=0.01, random_frac=0.1)  # 0.01 * 40 rounds to 0
    md = result.asset_materializations_for_node("mined_split")[0].metadata
    assert md["token_list"].value == str(store / "splits" / "mined.txt") and Path(md["token_list"].value).is_file()
    assert "target_frac 0.01 of 40 samples rounds down to a budget of 0" in md["zero_budgets"].value
    assert not (tmp_path / "data").exists()
    run_split(store, instance, random_frac=0.1, output_dir="elsewhere")  # relative: under the store
    assert (store / "elsewhere" / "mined.txt").is_file()


def test_split_check_errors_on_broken_budgets_and_warns_on_zero_budgets():
    from conceptmine_assets.assets.splits import SplitConfig
    from conceptmine_assets.orchestration.checks import evaluate_split

    split = pd.DataFrame({"sample_token": ["a", "b", "c"], "reason": ["target", "target", "random"]})
    ok = evaluate_split(split, SplitConfig(target_frac=0.2, random_frac=0.1), 10)
    assert ok.passed and ok.metadata["budgets"].value == {"target": 2, "rare": 0, "random": 1}
    broken = evaluate_split(split, SplitConfig(target_frac=0.1, random_frac=0.1), 10)
    assert not broken.passed and broken.severity == dg.AssetCheckSeverity.ERROR
    assert "target+rare: 2 selected, budget 1" in broken.description
    empty = evaluate_split(split.iloc[0:0], SplitConfig(target_frac=0.1, random_frac=0.1), 5)
    assert not empty.passed and empty.severity == dg.AssetCheckSeverity.WARN
    assert empty.description == ("random_frac 0.1 of 5 samples rounds down to a budget of 0; "
                                 "target_frac 0.1 of 5 samples rounds down to a budget of 0")
    paper = pd.DataFrame({"sample_token": list("abcd"), "reason": ["random", "target", "rare", "random_fill"]})
    assert evaluate_split(paper, SplitConfig(target_frac=0.3, random_frac=0.1, strategy="paper"), 10).passed
    short = evaluate_split(paper.iloc[:3], SplitConfig(target_frac=0.3, random_frac=0.1, strategy="paper"), 10)
    assert not short.passed and "target: 2 selected, budget 3" in short.description


def test_split_config_validates_declaratively():
    from pydantic import ValidationError

    from conceptmine_assets.assets.splits import SplitConfig

    with pytest.raises(ValidationError, match="sum to at most 1"):
        SplitConfig(target_frac=0.6, random_frac=0.6)
    with pytest.raises(ValidationError):
        SplitConfig(target_frac=1.5)
    with pytest.raises(ValidationError, match="no rare budget"):
        SplitConfig(rare_frac=0.1, strategy="paper")
