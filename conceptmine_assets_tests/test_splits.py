"""Mined split selection rules, side files, and the mining-quality report on the real slice."""

import pickle
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from upath import UPath

from conceptmine_assets.assets.mining_quality_report import mining_quality_report
from conceptmine_assets.assets.splits import mined_split
from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.lib.splits import (
    SPLIT_COLUMNS,
    SplitParams,
    add_why,
    budget,
    coverage,
    filter_mmdet3d_infos,
    sample_tiers,
    select_split,
)
from conceptmine_assets.lib.tables import markdown_table
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.resources.storage import ParquetIOManager, atomic_write, to_arrow
from conceptmine_assets.schemas import CONCEPT_SCORES, DETECTIONS, FRAMES, OUTLIER_FLAGS
from conceptmine_assets_tests.store_helpers import materialize_global

# ---------------------------------------------------------------- synthetic crops


def universe_of(n: int, scenes: int = 2) -> pd.DataFrame:
    return pd.DataFrame(
        {"sample_token": [f"tok{i:03d}" for i in range(n)], "scene_name": [f"scene-{i % scenes}" for i in range(n)]}
    )


def crop(token: str, group: str, outlier: bool, i: int = 0, score: float = 0.5) -> dict:
    return {
        "detection_id": f"{token}/d{i}",
        "sample_token": token,
        "group": group,
        "is_outlier": outlier,
        "top_concept": f"{group}_concept",
        "top_score": score,
        "caption": f"a {group} thing",
        "outlier_detectors": ["iforest", "knn"] if outlier else [],
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
    return split["reason"].value_counts().to_dict()


# ---------------------------------------------------------------- pure functions


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
    params = SplitParams(random_frac=rand, target_frac=target, rare_frac=rare, seed=3)
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
    split, _ = select_split(universe_of(10), crops, SplitParams(random_frac=0.0, target_frac=0.1, rare_frac=0.0))
    assert split["reason"].tolist() == ["target"]


def test_split_is_seeded_and_independent_of_input_order():
    universe = universe_of(200)
    rng = np.random.default_rng(0)
    crops = pd.DataFrame([crop(f"tok{i:03d}", "target", bool(rng.random() < 0.3)) for i in range(0, 200, 4)])
    params = SplitParams(random_frac=0.1, target_frac=0.1, rare_frac=0.0, seed=1)
    a, _ = select_split(universe, crops, params)
    b, _ = select_split(universe.sample(frac=1, random_state=5), crops.sample(frac=1, random_state=6), params)
    pd.testing.assert_frame_equal(a, b)
    c, _ = select_split(universe, crops, SplitParams(random_frac=0.1, target_frac=0.1, rare_frac=0.0, seed=2))
    assert len(c) == len(a) == 40
    assert set(c["sample_token"]) != set(a["sample_token"])


def test_crops_outside_the_training_set_are_ignored():
    crops = pd.DataFrame([crop("elsewhere", "target", True), crop("tok001", "target", False)])
    split, _ = select_split(universe_of(20), crops, SplitParams(random_frac=0.0, target_frac=0.5, rare_frac=0.0))
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
    split, _ = select_split(universe_of(10), crops, SplitParams(random_frac=0.1, target_frac=0.1, rare_frac=0.0))
    why = add_why(split, crops)
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


GT = pd.DataFrame(
    {"sample_token": ["s1", "s1", "s2", "s3"], "class_name": ["car", "car", "truck", "car"]}
)


def test_coverage_counts_and_random_baseline():
    report = coverage(GT, ["s1", "s2", "s3", "s4"], ["s1", "s2"], n_random=4000, seed=0).set_index("class_name")
    assert report.loc["car", "gt_total"] == 3 and report.loc["truck", "gt_total"] == 1
    assert report.loc["car", "mined"] == 2 and report.loc["truck", "mined"] == 1
    # a random half of 4 samples covers half of each class's instances on average
    assert report.loc["car", "random_mean"] == pytest.approx(1.5, abs=0.05)
    assert report.loc["truck", "random_mean"] == pytest.approx(0.5, abs=0.05)
    assert report.loc["truck", "random_std"] == pytest.approx(0.5, abs=0.05)
    assert report.loc["car", "ratio"] == pytest.approx(2 / report.loc["car", "random_mean"])


def test_coverage_is_seeded_and_handles_edge_cases():
    universe = ["s1", "s2", "s3", "s4"]
    a = coverage(GT, universe, ["s1"], n_random=5, seed=1)
    pd.testing.assert_frame_equal(a, coverage(GT, universe, ["s1"], n_random=5, seed=1))
    full = coverage(GT, universe, universe, n_random=3).set_index("class_name")
    assert (full["mined"] == full["gt_total"]).all() and (full["ratio"] == 1.0).all() and (full["random_std"] == 0).all()
    empty = coverage(GT, universe, [], n_random=3)
    assert (empty["mined"] == 0).all() and empty["ratio"].isna().all()
    with pytest.raises(ConceptmineError, match="not in the training set"):
        coverage(GT, universe, ["s9"])


def test_markdown_table():
    md = markdown_table(pd.DataFrame({"class_name": ["car"], "ratio": [float("nan")], "mined": [3]}))
    assert md.splitlines() == ["| class_name | ratio | mined |", "|---|---|---|", "| car | n/a | 3 |"]


# ---------------------------------------------------------------- assets


def write(store: Path, asset: str, df: pd.DataFrame, scene: str | None = None) -> None:
    table = to_arrow(df, asset, f"test {asset}") if asset in ("frames", "concept_scores", "outlier_flags", "detections") else pa.Table.from_pandas(df, preserve_index=False)
    path = UPath(store) / asset / f"{scene}.parquet" if scene else UPath(store) / f"{asset}.parquet"
    atomic_write(path, lambda fh: pq.write_table(table, fh))


def frames_df(scene: str, tokens: list[str]) -> pd.DataFrame:
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


def seed_store(store: Path) -> None:
    """Two scenes, 20 samples each; crops as in planted_crops on scene-0's samples."""
    crops = planted_crops().to_dict("records")
    for s in range(2):
        scene = f"scene-{s}"
        tokens = [f"tok{i:03d}" for i in range(s * 20, s * 20 + 20)]
        write(store, "frames", frames_df(scene, tokens), scene)
        rows = [r for r in crops if r["sample_token"] in tokens]
        cs, of = scored_df(scene, rows)
        write(store, "concept_scores", cs, scene)
        write(store, "outlier_flags", of.iloc[: max(len(of) - 1, 0)] if s == 0 else of, scene)


def run_split(store: Path, instance, **config):
    return materialize_global(
        [mined_split], store, instance, {"io_manager": ParquetIOManager(base_path=str(store))},
        upstream=["frames", "concept_scores", "outlier_flags"], run_config={"ops": {"mined_split": {"config": config}}},
    )


def test_mined_split_asset_writes_split_and_side_files(store, instance, tmp_path):
    seed_store(store)
    infos = {"metainfo": {"version": "v1.0-trainval"}, "data_list": [{"token": f"tok{i:03d}", "i": i} for i in range(40)]}
    infos_path = tmp_path / "nuscenes_infos_train.pkl"
    infos_path.write_bytes(pickle.dumps(infos))
    out = tmp_path / "splits"
    result = run_split(
        store, instance, target_frac=0.1, rare_frac=0.05, random_frac=0.1, seed=7,
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
    run_split(store, instance, target_frac=0.1, rare_frac=0.05, random_frac=0.1, seed=7, output_dir=str(out), name="run1")
    pd.testing.assert_frame_equal(split, pd.read_parquet(store / "mined_split.parquet"))
    assert sorted(p.name for p in out.iterdir()) == ["run1.txt", "run1_nuscenes_infos_train.pkl"]
    # another seed changes the random fill, not the target/rare tiers (all their candidates fit)
    run_split(store, instance, target_frac=0.1, rare_frac=0.05, random_frac=0.1, seed=8, output_dir=str(out), name="run2")
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
    write(store, "frames", frames_df("scene-0", ["a"]), "scene-0")
    with pytest.raises(ConceptmineError, match="concept_scores"):
        run_split(store, instance, output_dir=str(tmp_path / "s"))


SLICE_SAMPLE = "ca9a282c9e77460f8360f564131a8af5"


def run_report(store: Path, instance, dataroot: Path, **config):
    return materialize_global(
        [mining_quality_report], store, instance,
        {"io_manager": ParquetIOManager(base_path=str(store)), "nuscenes": NuScenesResource(dataroot=str(dataroot))},
        upstream=["mined_split", "frames", "detections"],
        run_config={"ops": {"mining_quality_report": {"config": config}}} if config else None,
    )


def test_mining_quality_report_on_real_slice(real_slice, store, instance):
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes(version="v1.0-mini", dataroot=str(real_slice), verbose=False)
    trucks = [a["token"] for a in nusc.sample_annotation if a["category_name"] == "vehicle.truck"]
    write(store, "frames", frames_df("scene-0061", [SLICE_SAMPLE]), "scene-0061")
    write(store, "mined_split", pd.DataFrame({"sample_token": [SLICE_SAMPLE], "scene_name": ["scene-0061"], "reason": ["target"]}))
    det = pd.DataFrame({c: pd.Series([None] * len(trucks), dtype=object) for c in DETECTIONS.names})
    det["detection_id"], det["annotation_token"] = [f"d{i}" for i in range(len(trucks))], trucks
    det["scene_name"], det["sample_token"], det["detector"] = "scene-0061", SLICE_SAMPLE, "annotations"
    det["class_name"] = "parked_truck"  # the annotations backend's class wins over the devkit's
    write(store, "detections", det, "scene-0061")

    result = run_report(store, instance, real_slice, n_random=5)
    report = pd.read_parquet(store / "mining_quality_report.parquet").set_index("class_name")
    expected = {"pedestrian": 30, "barrier": 22, "car": 8, "traffic_cone": 3, "parked_truck": 2,
                "bicycle": 1, "bus": 1, "construction_vehicle": 1}
    assert report["gt_total"].to_dict() == expected
    assert (report["mined"] == report["gt_total"]).all()
    assert (report["random_mean"] == report["gt_total"]).all() and (report["ratio"] == 1.0).all()
    md = result.asset_materializations_for_node("mining_quality_report")[0].metadata
    assert "| pedestrian | 30 | 30 |" in md["report"].value
    assert md["num_classes_from_detections"].value == 2

    write(store, "mined_split", pd.DataFrame({"sample_token": pd.Series([], dtype=str)}))
    run_report(store, instance, real_slice)
    empty = pd.read_parquet(store / "mining_quality_report.parquet")
    assert (empty["mined"] == 0).all() and empty["ratio"].isna().all()


def test_mining_quality_report_needs_annotations(highway, store, instance):
    write(store, "frames", frames_df("scene-udacity-0001", ["x"]), "scene-udacity-0001")
    write(store, "mined_split", pd.DataFrame({"sample_token": ["x"]}))
    result = run_report(store, instance, highway)  # an unannotated dataroot: an empty report, logged
    assert pd.read_parquet(store / "mining_quality_report.parquet").empty
    assert result.asset_materializations_for_node("mining_quality_report")[0].metadata["num_annotations"].value == 0


# ---------------------------------------------------------------- strategies, streaming = exact, the check


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


def _exact_crops(store: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The whole-table path: every crop in pandas, a missing flag filled as not an outlier."""
    frames = pd.concat([pd.read_parquet(p) for p in sorted((store / "frames").glob("*.parquet"))])
    universe = frames.groupby("sample_token", as_index=False)["scene_name"].min().sort_values("sample_token")
    cs = pd.concat([pd.read_parquet(p) for p in sorted((store / "concept_scores").glob("*.parquet"))])
    of = pd.concat([pd.read_parquet(p) for p in sorted((store / "outlier_flags").glob("*.parquet"))])
    crops = cs.merge(of[["detection_id", "is_outlier", "outlier_detectors"]], on="detection_id", how="left")
    crops["is_outlier"] = crops["is_outlier"].astype("boolean").fillna(False).astype(bool)
    crops["outlier_detectors"] = [list(d) if isinstance(d, (list, np.ndarray)) else [] for d in crops["outlier_detectors"]]
    return universe.reset_index(drop=True), crops


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
    exact = add_why(select_split(universe, crops, params)[0], crops)
    pd.testing.assert_frame_equal(pd.read_parquet(store / "mined_split.parquet"), exact, check_dtype=False)


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
    from conceptmine_assets.checks import evaluate_split

    split = pd.DataFrame({"sample_token": ["a", "b", "c"], "reason": ["target", "target", "random"]})
    ok = evaluate_split(split, SplitConfig(target_frac=0.2, random_frac=0.1), 10)
    assert ok.passed and ok.metadata["budgets"].value == {"target": 2, "rare": 0, "random": 1}
    broken = evaluate_split(split, SplitConfig(target_frac=0.1, random_frac=0.1), 10)
    assert not broken.passed and broken.severity == dg.AssetCheckSeverity.ERROR
    assert "target: 2 selected > budget 1" in broken.description
    empty = evaluate_split(split.iloc[0:0], SplitConfig(target_frac=0.1, random_frac=0.1), 5)
    assert not empty.passed and empty.severity == dg.AssetCheckSeverity.WARN
    assert empty.description == ("random_frac 0.1 of 5 samples rounds down to a budget of 0; "
                                 "target_frac 0.1 of 5 samples rounds down to a budget of 0")
    paper = pd.DataFrame({"sample_token": list("abcd"), "reason": ["random", "target", "rare", "random_fill"]})
    assert evaluate_split(paper, SplitConfig(target_frac=0.3, random_frac=0.1, strategy="paper"), 10).passed
    short = evaluate_split(paper.iloc[:3], SplitConfig(target_frac=0.3, random_frac=0.1, strategy="paper"), 10)
    assert not short.passed and "target: 2 selected, budget 3" in short.description


def test_split_config_validates_declaratively():
    from conceptmine_assets.assets.splits import SplitConfig

    with pytest.raises(ValidationError, match="sum to at most 1"):
        SplitConfig(target_frac=0.6, random_frac=0.6)
    with pytest.raises(ValidationError):
        SplitConfig(target_frac=1.5)
    with pytest.raises(ValidationError, match="no rare budget"):
        SplitConfig(rare_frac=0.1, strategy="paper")
