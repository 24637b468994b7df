"""Per-class coverage of a split against random draws, its Markdown table, and the
`mining_quality_report` asset on the real slice and on an unannotated dataroot."""

from pathlib import Path

import pandas as pd
import pytest

from conceptmine_assets.assets.mining_quality_report import mining_quality_report
from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.lib.coverage import coverage
from conceptmine_assets.lib.tables import markdown_table
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.resources.storage import ParquetIOManager
from conceptmine_assets.schemas import DETECTIONS
from conceptmine_assets_tests.store_helpers import frames_df, materialize_global, write_stored


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
    write_stored(store, "frames", frames_df("scene-0061", [SLICE_SAMPLE]), "scene-0061")
    write_stored(store, "mined_split", pd.DataFrame({"sample_token": [SLICE_SAMPLE], "scene_name": ["scene-0061"], "reason": ["target"]}))
    det = pd.DataFrame({c: pd.Series([None] * len(trucks), dtype=object) for c in DETECTIONS.names})
    det["detection_id"], det["annotation_token"] = [f"d{i}" for i in range(len(trucks))], trucks
    det["scene_name"], det["sample_token"], det["detector"] = "scene-0061", SLICE_SAMPLE, "annotations"
    det["class_name"] = "parked_truck"  # the annotations backend's class wins over the devkit's
    write_stored(store, "detections", det, "scene-0061")

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

    write_stored(store, "mined_split", pd.DataFrame({"sample_token": pd.Series([], dtype=str)}))
    run_report(store, instance, real_slice)
    empty = pd.read_parquet(store / "mining_quality_report.parquet")
    assert (empty["mined"] == 0).all() and empty["ratio"].isna().all()


def test_mining_quality_report_needs_annotations(highway, store, instance):
    write_stored(store, "frames", frames_df("scene-udacity-0001", ["x"]), "scene-udacity-0001")
    write_stored(store, "mined_split", pd.DataFrame({"sample_token": ["x"]}))
    result = run_report(store, instance, highway)  # an unannotated dataroot: an empty report, logged
    assert pd.read_parquet(store / "mining_quality_report.parquet").empty
    assert result.asset_materializations_for_node("mining_quality_report")[0].metadata["num_annotations"].value == 0
