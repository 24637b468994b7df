"""Synthetic dataroots: merged fixtures, replicated scenes, loadable by the devkit and the pipeline."""

import json
from pathlib import Path

import pandas as pd
import pytest

from conceptmine_assets.assets.frames import frames
from conceptmine_assets.errors import ConceptmineError, DatasetError
from conceptmine_assets.lib.synth import copy_name, copy_token, synth_dataroot
from conceptmine_assets.resources.nuscenes import NUSCENES_TABLES, NuScenesResource
from conceptmine_assets.resources.storage import ParquetIOManager
from conceptmine_assets_tests.helpers import HIGHWAY_SCENES, REAL_SCENE, materialize_scene

# Per source: scenes, samples, sample_data, ego poses, annotations, instances (fixtures README).
COUNTS = {
    "real_slice": dict(scene=1, sample=1, sample_data=7, ego_pose=7, sample_annotation=68, instance=68),
    "highway": dict(scene=3, sample=4, sample_data=4, ego_pose=4, sample_annotation=0, instance=0),
}


def devkit(root: Path):
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version="v1.0-mini", dataroot=str(root), verbose=False)


def tables(root: Path) -> dict[str, bytes]:
    return {t: (root / "v1.0-mini" / f"{t}.json").read_bytes() for t in NUSCENES_TABLES}


@pytest.mark.parametrize(
    "names, copies",
    [(["real_slice"], 1), (["real_slice"], 5), (["highway"], 2), (["real_slice", "highway"], 1),
     (["real_slice", "highway"], 3)],
)
def test_loads_with_the_devkit_and_counts_are_right(request, tmp_path, names, copies):
    sources = [request.getfixturevalue(n) for n in names]
    scenes = synth_dataroot(sources, tmp_path / "root", copies=copies)
    nusc = devkit(tmp_path / "root")
    for table in COUNTS["real_slice"]:
        assert len(getattr(nusc, table)) == copies * sum(COUNTS[n][table] for n in names), table
    # merged by name: the two fixtures share all 23 categories, 8 attributes, 4 visibilities, CAM_FRONT
    assert (len(nusc.category), len(nusc.attribute), len(nusc.visibility)) == (23, 8, 4)
    assert len(nusc.sensor) == (7 if "real_slice" in names else 1)
    assert len(nusc.log) == len(nusc.map) == len(names)
    assert all(len(m["log_tokens"]) == 1 for m in nusc.map)
    assert scenes == [s["name"] for s in nusc.scene] and len(set(scenes)) == len(scenes)
    for scene in nusc.scene:  # every copy is a complete, walkable scene
        tokens, token = [], scene["first_sample_token"]
        while token:
            tokens.append(token)
            token = nusc.get("sample", token)["next"]
        assert len(tokens) == scene["nbr_samples"] and tokens[-1] == scene["last_sample_token"]


def test_scene_names_originals_then_copies(real_slice, highway, tmp_path):
    scenes = synth_dataroot([real_slice, highway], tmp_path / "root", copies=3)
    expected = [copy_name(s, k) for s in [REAL_SCENE, *HIGHWAY_SCENES] for k in range(3)]
    assert scenes == expected
    assert scenes[:3] == ["scene-0061", "scene-0061-c01", "scene-0061-c02"]


def test_tokens_are_unique_and_deterministic(real_slice, highway, tmp_path):
    first = synth_dataroot([real_slice, highway], tmp_path / "a", copies=4)
    second = synth_dataroot([real_slice, highway], tmp_path / "b", copies=4)
    assert first == second and tables(tmp_path / "a") == tables(tmp_path / "b")
    for table in NUSCENES_TABLES:
        records = json.loads(tables(tmp_path / "a")[table])
        assert len({r["token"] for r in records}) == len(records), table
    # no token of any table collides with a token of another copy or another table's copy
    nusc = devkit(tmp_path / "a")
    original = next(s for s in nusc.scene if s["name"] == REAL_SCENE)
    copies = [s for s in nusc.scene if s["name"].startswith(f"{REAL_SCENE}-c")]
    assert [s["token"] for s in copies] == [copy_token(original["token"], k) for k in (1, 2, 3)]
    assert original["token"] == "e17ad100df2b5b2fbe89d71a1b0393c7"  # copy 0 keeps the fixture's tokens


def test_copies_reference_only_their_own_records(real_slice, tmp_path):
    synth_dataroot([real_slice], tmp_path / "root", copies=3)
    nusc = devkit(tmp_path / "root")
    by_scene = {}
    for scene in nusc.scene:
        sample = nusc.get("sample", scene["first_sample_token"])
        assert sample["scene_token"] == scene["token"]
        anns = [nusc.get("sample_annotation", a) for a in sample["anns"]]
        assert {a["sample_token"] for a in anns} == {sample["token"]}
        assert all(nusc.get("instance", a["instance_token"])["first_annotation_token"] == a["token"] for a in anns)
        path, boxes, _ = nusc.get_sample_data(sample["data"]["CAM_FRONT"])
        by_scene[scene["name"]] = (set(sample["data"].values()), {a["token"] for a in anns}, path, len(boxes))
    sd_sets = [v[0] for v in by_scene.values()]
    ann_sets = [v[1] for v in by_scene.values()]
    assert all(not (a & b) for i, a in enumerate(sd_sets) for b in sd_sets[i + 1 :])
    assert all(not (a & b) for i, a in enumerate(ann_sets) for b in ann_sets[i + 1 :])
    assert {v[2] for v in by_scene.values()} == {by_scene[REAL_SCENE][2]}  # same image file
    assert {v[3] for v in by_scene.values()} == {47}  # the fixture's CAM_FRONT box count, per copy


def test_files_are_symlinks_to_the_sources(real_slice, highway, tmp_path):
    root = tmp_path / "root"
    synth_dataroot([real_slice, highway], root, copies=2)
    files = [p for p in (root / "samples").rglob("*") if not p.is_dir()] + list((root / "maps").iterdir())
    assert len(files) == 6 + 1 + 4 + 2  # real cameras + LiDAR + highway frames + two maps
    for path in files:
        assert path.is_symlink()
        target = path.resolve()
        assert target.is_relative_to(real_slice.resolve()) or target.is_relative_to(highway.resolve())
    # the highway's calibration now points at the merged CAM_FRONT sensor of the real slice
    nusc = devkit(root)
    front = [s["token"] for s in nusc.sensor if s["channel"] == "CAM_FRONT"]
    assert len(front) == 1
    assert sum(cs["sensor_token"] == front[0] for cs in nusc.calibrated_sensor) == 2


def test_rebuilding_into_the_same_folder_is_idempotent(highway, tmp_path):
    root = tmp_path / "root"
    synth_dataroot([highway], root, copies=2)
    before = tables(root)
    stamps = {p.name: p.stat().st_mtime_ns for p in (root / "v1.0-mini").iterdir()}
    assert synth_dataroot([highway], root, copies=2) == [copy_name(s, k) for s in HIGHWAY_SCENES for k in range(2)]
    assert tables(root) == before
    # unchanged tables are not rewritten: their mtimes say nothing changed (pre-flight, no-change memo)
    assert {p.name: p.stat().st_mtime_ns for p in (root / "v1.0-mini").iterdir()} == stamps
    synth_dataroot([highway], root, copies=1)
    assert (root / "v1.0-mini" / "scene.json").stat().st_mtime_ns != stamps["scene.json"]


def test_frames_of_a_copied_scene_match_the_original(real_slice, tmp_path, instance):
    root, store = tmp_path / "root", tmp_path / "store"
    synth_dataroot([real_slice], root, copies=2)
    resources = {"nuscenes": NuScenesResource(dataroot=str(root)), "io_manager": ParquetIOManager(base_path=str(store))}
    run_config = {"ops": {"frames": {"config": {"cameras": ["CAM_FRONT", "CAM_BACK"]}}}}
    copy = copy_name(REAL_SCENE, 1)
    for scene in (REAL_SCENE, copy):
        assert materialize_scene([frames], scene, instance, resources, run_config=run_config).success
    original = pd.read_parquet(store / "frames" / f"{REAL_SCENE}.parquet")
    copied = pd.read_parquet(store / "frames" / f"{copy}.parquet")
    assert len(copied) == 2 and copied["image_ok"].all()
    assert copied["image_path"].tolist() == original["image_path"].tolist()
    assert set(copied["scene_name"]) == {copy}
    assert not set(copied["sample_data_token"]) & set(original["sample_data_token"])
    same = ["channel", "timestamp", "width", "height", "camera_intrinsic", "ego2global_translation"]
    assert copied[same].astype(str).equals(original[same].astype(str))


def test_bad_arguments_and_overlapping_sources_are_errors(highway, tmp_path):
    with pytest.raises(ConceptmineError, match="copies must be at least 1"):
        synth_dataroot([highway], tmp_path / "a", copies=0)
    with pytest.raises(DatasetError, match="duplicate .* token"):
        synth_dataroot([highway, highway], tmp_path / "b")
    with pytest.raises(DatasetError, match=r"nuScenes table .*nowhere.*\.json is missing"):
        synth_dataroot([tmp_path / "nowhere"], tmp_path / "c")
    root = tmp_path / "d"
    frame = root / "samples" / "CAM_FRONT" / "udacity-highway__CAM_FRONT__1483272000000000.jpg"
    frame.parent.mkdir(parents=True)
    frame.write_bytes(b"someone else's file")
    with pytest.raises(DatasetError, match="already exists and is not a link"):
        synth_dataroot([highway], root)
    assert frame.read_bytes() == b"someone else's file"
