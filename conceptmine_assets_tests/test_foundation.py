"""Foundation: definitions, scene partitions, the nuScenes resource, `frames`, storage."""

import re
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conceptmine_assets.assets.frames import frames
from conceptmine_assets.definitions import build_definitions
from conceptmine_assets.errors import DatasetError
from conceptmine_assets.lib.integrity import is_record
from conceptmine_assets.lib.sampling import keep, unit_hash
from conceptmine_assets.orchestration.sensors import scene_discovery_sensor
from conceptmine_assets.partitions import SCENE_PARTITIONS_NAME
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.resources.storage import StoreViews, ParquetIOManager
from conceptmine_assets.settings import Settings
from conceptmine_assets_tests.helpers import (
    HIGHWAY_SCENES,
    REAL_SCENE,
    REPO,
    copy_dataroot,
    materialize_scene,
)

ALL_CAMERAS = ["CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"]
REAL_CAM_TOKENS = {
    "CAM_FRONT": "e3d495d4ac534d54b321f50006683844",
    "CAM_FRONT_RIGHT": "aac7867ebf4f446395d29fbd60b63b3b",
    "CAM_FRONT_LEFT": "fe5422747a7d4268a4b07fc396707b23",
    "CAM_BACK": "03bea5763f0f4722933508d5999c5fd8",
    "CAM_BACK_LEFT": "43893a033f9c46d4a51b5e08a67a1eb7",
    "CAM_BACK_RIGHT": "79dbb4460a6b40f49f9c150cb118247e",
}



def listing(folder: Path) -> list[str]:
    """The folder's file names, without the content records beside them (lib/integrity.py)."""
    return sorted(p.name for p in folder.iterdir() if not is_record(p))

def _resources(dataroot: Path, store: Path) -> dict:
    return {
        "nuscenes": NuScenesResource(dataroot=str(dataroot)),
        "io_manager": ParquetIOManager(base_path=str(store)),
    }


def _frames_config(**config) -> dict:
    return {"ops": {"frames": {"config": config}}}


def _read(store: Path, asset: str, scene: str) -> pd.DataFrame:
    return pq.read_table(store / asset / f"{scene}.parquet").to_pandas()


def test_definitions_load(monkeypatch, store):
    monkeypatch.setenv("NUSCENES_DATAROOT", "/nonexistent")  # resolved only when a run starts
    defs = build_definitions(Settings(store=str(store)))
    defs.validate_loadable(defs)
    assert defs.resolve_assets_def("frames").partitions_def.name == SCENE_PARTITIONS_NAME
    assert defs.resolve_job_def("perception_job") is not None
    assert defs.resolve_sensor_def("scene_discovery_sensor") is not None


def test_workspace_validates(real_slice, tmp_path):
    env = {**os.environ, "NUSCENES_DATAROOT": str(real_slice), "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    proc = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Validation successful" in proc.stderr + proc.stdout


@pytest.mark.parametrize("dataroot_fixture, expected", [("real_slice", [REAL_SCENE]), ("highway", HIGHWAY_SCENES)])
def test_sensor_adds_scenes_idempotently(request, instance, dataroot_fixture, expected):
    dataroot = request.getfixturevalue(dataroot_fixture)
    resources = {"nuscenes": NuScenesResource(dataroot=str(dataroot))}
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        first = scene_discovery_sensor(ctx)
    (request_,) = first.dynamic_partitions_requests
    assert list(request_.partition_keys) == expected
    instance.add_dynamic_partitions(SCENE_PARTITIONS_NAME, list(request_.partition_keys))  # what the daemon does
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        second = scene_discovery_sensor(ctx)
    assert second.dynamic_partitions_requests == []
    assert instance.get_dynamic_partitions(SCENE_PARTITIONS_NAME) == expected


def test_frames_real_slice_all_cameras(real_slice, store, instance):
    result = materialize_scene([frames], REAL_SCENE, instance, _resources(real_slice, store),
                               run_config=_frames_config(cameras=ALL_CAMERAS))
    assert result.success
    df = _read(store, "frames", REAL_SCENE)
    assert len(df) == 6
    assert set(df["sample_token"]) == {"ca9a282c9e77460f8360f564131a8af5"}
    assert dict(zip(df["channel"], df["sample_data_token"])) == REAL_CAM_TOKENS
    assert df["image_ok"].all() and df["image_error"].isna().all()
    front = df.set_index("channel").loc["CAM_FRONT"]
    assert (front["width"], front["height"]) == (1600, 900)
    assert list(front["sensor2ego_translation"]) == pytest.approx([1.7008, 0.0159, 1.5110], abs=1e-3)
    assert len(front["camera_intrinsic"]) == 9 and front["lidar_sample_data_token"]
    assert (real_slice / front["image_path"]).is_file()


def test_frames_highway_keyframe_counts(highway, store, instance):
    for scene, expected in zip(HIGHWAY_SCENES, [2, 1, 1]):
        assert materialize_scene([frames], scene, instance, _resources(highway, store)).success
        df = _read(store, "frames", scene)
        assert len(df) == expected
        assert (df["channel"] == "CAM_FRONT").all() and df["lidar_sample_data_token"].isna().all()
        assert df["timestamp"].is_monotonic_increasing


def test_frames_camera_absent_from_dataset_is_counted(highway, store, instance):
    result = materialize_scene([frames], HIGHWAY_SCENES[0], instance, _resources(highway, store),
                               run_config=_frames_config(cameras=["CAM_FRONT", "CAM_BACK"]))
    md = result.asset_materializations_for_node("frames")[0].metadata
    assert md["num_frames"].value == 2 and md["num_channel_absent"].value == 2


def test_rematerialise_replaces_file(real_slice, store, instance):
    resources = _resources(real_slice, store)
    materialize_scene([frames], REAL_SCENE, instance, resources, run_config=_frames_config(cameras=ALL_CAMERAS))
    first = _read(store, "frames", REAL_SCENE)
    materialize_scene([frames], REAL_SCENE, instance, resources, run_config=_frames_config(cameras=ALL_CAMERAS))
    second = _read(store, "frames", REAL_SCENE)
    assert len(second) == len(first) == 6
    pd.testing.assert_frame_equal(first, second)
    assert listing(store / "frames") == [f"{REAL_SCENE}.parquet"]


def test_sampling_and_max_frames(highway, store, instance):
    resources = _resources(highway, store)
    materialize_scene([frames], HIGHWAY_SCENES[0], instance, resources, run_config=_frames_config(max_frames=1))
    df = _read(store, "frames", HIGHWAY_SCENES[0])
    assert len(df) == 1 and df["timestamp"].iloc[0] == 1483272000000000
    # a rate of 0 keeps nothing: refused by the config's declarative bounds, before any write
    with pytest.raises(Exception, match="sampling_rate"):
        materialize_scene([frames], HIGHWAY_SCENES[0], instance, resources, run_config=_frames_config(sampling_rate=0.0))
    assert len(_read(store, "frames", HIGHWAY_SCENES[0])) == 1  # the stored partition is untouched


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_keep_is_deterministic_and_close_to_rate(rate):
    keys = [f"sample-{i}" for i in range(4000)]
    chosen = [k for k in keys if keep(7, k, rate)]
    assert chosen == [k for k in keys if keep(7, k, rate)]
    assert abs(len(chosen) / len(keys) - rate) < 0.03
    assert [k for k in keys if keep(8, k, rate)] != chosen
    assert 0.0 <= unit_hash(7, "x") < 1.0


def test_missing_image_is_flagged_and_named(real_slice, tmp_path, store, instance):
    root = copy_dataroot(real_slice, tmp_path / "root")
    image = next((root / "samples" / "CAM_FRONT").iterdir())
    image.unlink()
    result = materialize_scene([frames], REAL_SCENE, instance, _resources(root, store))
    df = _read(store, "frames", REAL_SCENE)
    assert len(df) == 1 and not df["image_ok"].iloc[0]
    assert str(image) in df["image_error"].iloc[0]
    md = result.asset_materializations_for_node("frames")[0].metadata
    assert md["num_bad_images"].value == 1 and image.name in md["bad_images"].value


@pytest.mark.parametrize("corruption", ["zero_bytes", "garbage", "wrong_size"])
def test_bad_image_fails_when_asked(real_slice, tmp_path, store, instance, corruption):
    from PIL import Image

    root = copy_dataroot(real_slice, tmp_path / "root")
    image = next((root / "samples" / "CAM_FRONT").iterdir())
    if corruption == "zero_bytes":
        image.write_bytes(b"")
    elif corruption == "garbage":
        image.write_bytes(b"this is not a jpeg" * 10)
    else:
        Image.new("RGB", (640, 360)).save(image, format="JPEG")
    with pytest.raises(DatasetError, match=re.escape(image.name)):
        materialize_scene([frames], REAL_SCENE, instance, _resources(root, store),
                          run_config=_frames_config(on_bad_image="fail"), raise_on_error=True)
    assert not (store / "frames").exists() or not any((store / "frames").iterdir())


def test_unknown_scene_names_the_scene(real_slice, store, instance):
    with pytest.raises(DatasetError, match="scene-9999.*1 scenes"):
        materialize_scene([frames], "scene-9999", instance, _resources(real_slice, store))


def test_missing_table_is_named(real_slice, tmp_path):
    root = copy_dataroot(real_slice, tmp_path / "root")
    (root / "v1.0-mini" / "ego_pose.json").unlink()
    with pytest.raises(DatasetError, match="ego_pose.json"):
        NuScenesResource(dataroot=str(root)).scene_names()


def test_malformed_table_is_named(real_slice, tmp_path):
    root = copy_dataroot(real_slice, tmp_path / "root")
    table = root / "v1.0-mini" / "sample_data.json"
    table.write_text(table.read_text()[:500])  # truncated JSON
    with pytest.raises(DatasetError, match="sample_data.json"):
        NuScenesResource(dataroot=str(root)).scene(REAL_SCENE)


def test_missing_dataroot_is_named(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        NuScenesResource(dataroot=str(tmp_path / "nope")).scene_names()


def test_duckdb_view_is_union_of_scenes(real_slice, highway, store, instance):
    materialize_scene([frames], REAL_SCENE, instance, _resources(real_slice, store),
                      run_config=_frames_config(cameras=ALL_CAMERAS))
    for scene in HIGHWAY_SCENES:
        materialize_scene([frames], scene, instance, _resources(highway, store))
    counts = StoreViews(base_path=str(store)).query(
        "SELECT scene_name, count(*) AS n FROM frames GROUP BY scene_name ORDER BY scene_name"
    )
    assert dict(zip(counts["scene_name"], counts["n"])) == {
        REAL_SCENE: 6, HIGHWAY_SCENES[0]: 2, HIGHWAY_SCENES[1]: 1, HIGHWAY_SCENES[2]: 1,
    }


_PARALLEL_SCRIPT = """
import sys, dagster as dg
from conceptmine_assets.assets.frames import frames
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.resources.storage import ParquetIOManager
dataroot, store, scene = sys.argv[1:]
with dg.DagsterInstance.ephemeral() as inst:
    inst.add_dynamic_partitions("nuscenes_scenes", [scene])
    res = dg.materialize([frames], partition_key=scene, instance=inst, resources={
        "nuscenes": NuScenesResource(dataroot=dataroot), "io_manager": ParquetIOManager(base_path=store)})
sys.exit(0 if res.success else 1)
"""


@pytest.mark.parametrize("scenes", [HIGHWAY_SCENES[:2], [HIGHWAY_SCENES[0]] * 2], ids=["different", "same"])
def test_parallel_scene_runs_do_not_conflict(highway, store, scenes):
    procs = [
        subprocess.Popen([sys.executable, "-c", _PARALLEL_SCRIPT, str(highway), str(store), s],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for s in scenes
    ]
    outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs[0][-2000:] + outputs[1][-2000:]
    assert listing(store / "frames") == sorted({f"{s}.parquet" for s in scenes})
    expected = sum({HIGHWAY_SCENES[0]: 2, HIGHWAY_SCENES[1]: 1}[s] for s in set(scenes))
    assert StoreViews(base_path=str(store)).query("SELECT count(*) AS n FROM frames")["n"][0] == expected


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    from upath import UPath

    from conceptmine_assets.resources.storage import atomic_write

    target = UPath(tmp_path / "frames" / "scene-x.parquet")
    atomic_write(target, lambda fh: fh.write(b"old"))

    def crash(fh):
        fh.write(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert target.read_bytes() == b"old"
    assert listing(tmp_path / "frames") == ["scene-x.parquet"]


def test_schema_mismatch_names_asset_and_scene(real_slice, store, instance):
    @dg.asset(name="frames", partitions_def=frames.partitions_def)
    def broken_frames() -> pd.DataFrame:
        return pd.DataFrame({"scene_name": ["x"]})

    with pytest.raises(Exception, match=r"asset 'frames', scene scene-0061: missing columns"):
        materialize_scene([broken_frames], REAL_SCENE, instance, _resources(real_slice, store))


def test_atomic_write_removes_only_stale_temp_files(tmp_path):
    from upath import UPath

    from conceptmine_assets.resources.storage import STALE_TEMP_SECONDS, atomic_write

    folder = tmp_path / "frames"
    folder.mkdir()
    stale, fresh = folder / ".scene-x.parquet.tmp-old", folder / ".scene-x.parquet.tmp-new"
    stale.write_bytes(b"left by a killed writer")
    fresh.write_bytes(b"a concurrent writer's")
    old = stale.stat().st_mtime - STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))
    atomic_write(UPath(folder / "scene-x.parquet"), lambda fh: fh.write(b"new"))
    assert listing(folder) == [fresh.name, "scene-x.parquet"]
