"""`conceptmine import-images`: folders and videos as nuScenes dataroots, re-imports, bad input
(the pipeline on an import and the clone of the repository: ``test_importer_e2e.py``)."""

import os
import shutil
from pathlib import Path

import cv2
import dagster as dg
import pytest

from conceptmine_assets import cli
from conceptmine_assets.cli.import_images import import_images
from conceptmine_assets.cli.importer import ImportOptions
from conceptmine_assets.lib.importer import IDENTITY_INTRINSIC, Frame, RateGate, assemble, filename_timestamp
from conceptmine_assets.orchestration.sensors import register_scenes, scene_discovery_sensor
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets_tests.importer_sources import VERSION, folder_tree, highway_images, table_bytes, tables, write_video

def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = cli.main(["import-images", *args])
    return code, capsys.readouterr().err.strip()


# ---------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("cam__CAM_FRONT__1483272000520000", 1483272000520000),
        ("IMG_1483272000", 1483272000_000000),
        ("frame-1483272000520", 1483272000520000),
        ("IMG_0042", None),
        ("9999999999999999", None),  # year 2286: not a timestamp
    ],
)
def test_filename_timestamp(stem, expected):
    assert filename_timestamp(stem) == expected


def test_rate_gate_keeps_every_fifteenth_frame_of_30fps_at_2fps():
    gate = RateGate(2.0)
    kept = [i for i in range(90) if gate.keep(round(i * 1e6 / 30))]
    assert kept == [0, 15, 30, 45, 60, 75]


def test_assemble_attaches_the_nearest_frame_of_each_camera():
    def frame(channel: str, t_ms: int) -> Frame:
        return Frame(f"{channel}/{t_ms}", f"{channel}/{t_ms}.jpg", channel, t_ms * 1000, 8, 8, f"x/{channel}{t_ms}.jpg")

    fronts = [frame("CAM_FRONT", t) for t in (0, 500, 1000)]
    backs = [frame("CAM_BACK", t) for t in (40, 60, 520, 990)]  # 40 and 60 compete for the first sample
    samples, left_out = assemble(fronts + backs)
    assert [(s["CAM_FRONT"].timestamp, s["CAM_BACK"].timestamp) for s in samples] == [
        (0, 40_000), (500_000, 520_000), (1_000_000, 990_000)]
    assert left_out == 1


# ---------------------------------------------------------------- importing


def test_folder_tree_loads_with_the_devkit(tmp_path):
    from nuscenes.nuscenes import NuScenes

    out = tmp_path / "out"
    summary = import_images(folder_tree(tmp_path), out)
    assert summary.scenes == ["drive-a", "drive-b"] and summary.frames == 4
    nusc = NuScenes(version=VERSION, dataroot=str(out), verbose=False)
    assert [s["name"] for s in nusc.scene] == ["drive-a", "drive-b"]
    assert all("no 3D geometry" in s["description"] for s in nusc.scene)
    assert {m["token"] for m in nusc.map} and set(nusc.map[0]["log_tokens"]) == {log["token"] for log in nusc.log}
    assert not nusc.sample_annotation and not nusc.instance
    for sample in nusc.sample:
        sd = nusc.get("sample_data", sample["data"]["CAM_FRONT"])
        path = out / sd["filename"]
        assert path.is_symlink() and path.resolve().parent.parent == (tmp_path / "src").resolve()
        assert (sd["width"], sd["height"]) == (1280, 720)
        assert nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])["camera_intrinsic"] == IDENTITY_INTRINSIC
    times = [s["timestamp"] for s in sorted(nusc.sample, key=lambda s: s["timestamp"])]
    assert times == [int(p.stem.rsplit("__", 1)[1]) for p in highway_images()]


def test_copy_and_camera_subfolders(tmp_path):
    images = highway_images()
    for channel in ("CAM_FRONT", "CAM_BACK"):
        (tmp_path / "src" / "drive" / channel).mkdir(parents=True)
        for image in images:
            shutil.copy(image, tmp_path / "src" / "drive" / channel / image.name)
    out = tmp_path / "out"
    import_images(tmp_path / "src", out, ImportOptions(copy=True))
    t = tables(out)
    assert [s["name"] for s in t["scene"]] == ["drive"]
    assert sorted(s["channel"] for s in t["sensor"]) == ["CAM_BACK", "CAM_FRONT"]
    assert len(t["sample"]) == 4 and len(t["sample_data"]) == 8
    assert all(not (out / sd["filename"]).is_symlink() for sd in t["sample_data"])


def test_video_is_sampled_at_fps(tmp_path):
    video = write_video(tmp_path / "src" / "highway.mp4")
    for fps, expected in ((2.0, 4), (10.0, 20)):
        out = tmp_path / f"out-{fps}"
        import_images(video.parent, out, ImportOptions(fps=fps))
        t = tables(out)
        assert [s["name"] for s in t["scene"]] == ["highway"] and len(t["sample"]) == expected
        first = out / t["sample_data"][0]["filename"]
        assert first.suffix == ".jpg" and cv2.imread(str(first)).shape == (720, 1280, 3)


def test_gap_splits_scenes(tmp_path):
    src = tmp_path / "src" / "clip"
    src.mkdir(parents=True)
    for image in highway_images():
        shutil.copy(image, src / image.name)
    import_images(src.parent, tmp_path / "out", ImportOptions(gap=0.5))  # gaps 0.52, 0.48, 0.48 s
    assert [(s["name"], s["nbr_samples"]) for s in tables(tmp_path / "out")["scene"]] == [("clip-0001", 1), ("clip-0002", 3)]


def test_reimport_is_byte_identical_and_a_grown_folder_keeps_tokens(tmp_path, instance):
    src, out = folder_tree(tmp_path), tmp_path / "out"
    import_images(src, out)
    first, first_tables = table_bytes(out), tables(out)
    nuscenes = NuScenesResource(dataroot=str(out))
    assert register_scenes(instance, nuscenes) == ["drive-a", "drive-b"]
    import_images(src, out)
    assert table_bytes(out) == first
    (src / "drive-c").mkdir()
    shutil.copy(highway_images()[0], src / "drive-c" / "front_1500000000000000.jpg")
    summary = import_images(src, out)
    assert summary.new_scenes == ["drive-c"]
    grown = tables(out)
    for name in ("scene", "sample", "sample_data", "ego_pose", "log", "sensor", "calibrated_sensor"):
        assert all(rec in grown[name] for rec in first_tables[name]), name
    with dg.build_sensor_context(instance=instance, resources={"nuscenes": nuscenes}) as context:
        (request,) = scene_discovery_sensor(context).dynamic_partitions_requests
    assert list(request.partition_keys) == ["drive-c"]


def test_order_and_exif_clocks(tmp_path):
    from PIL import Image

    src = tmp_path / "src" / "cam"
    src.mkdir(parents=True)
    for number, second in ((10, 5), (2, 7), (1, 9)):  # taken in the order img10, img2, img1
        exif = Image.Exif()
        exif[306] = f"2024:01:02 03:04:0{second}"
        Image.new("RGB", (64, 48), (number * 20, 0, 0)).save(src / f"img{number}.jpg", exif=exif)

    def sources(out: Path) -> list[tuple[int, str]]:
        return [(sd["timestamp"], (out / sd["filename"]).resolve().name) for sd in tables(out)["sample_data"]]

    import_images(src.parent, tmp_path / "exif")
    assert [(t % 60_000_000, name) for t, name in sources(tmp_path / "exif")] == [
        (5_000_000, "img10.jpg"), (7_000_000, "img2.jpg"), (9_000_000, "img1.jpg")]
    import_images(src.parent, tmp_path / "order", ImportOptions(timestamps="order", fps=4.0))  # natural file order
    assert sources(tmp_path / "order") == [(0, "img1.jpg"), (250_000, "img2.jpg"), (500_000, "img10.jpg")]


# ---------------------------------------------------------------- bad input


def _truncated_jpeg(path: Path) -> None:
    path.write_bytes(highway_images()[0].read_bytes()[:20_000])


def _same_exif_second(path: Path) -> None:
    from PIL import Image

    for name in ("a.jpg", "b.jpg"):
        exif = Image.Exif()
        exif[306] = "2024:01:02 03:04:05"
        Image.new("RGB", (64, 48)).save(path.parent / name, exif=exif)


@pytest.mark.parametrize(
    ("make", "named", "says"),
    [
        (lambda p: None, "src", "no images or videos"),
        (lambda p: p.with_name("x.jpg").write_text("not an image"), "x.jpg", "unreadable image"),
        (_truncated_jpeg, "bad.jpg", "truncated"),
        (lambda p: p.with_name("v.mp4").write_bytes(os.urandom(4096)), "v.mp4", "cannot decode video"),
        (lambda p: p.with_name("v.mp4").write_bytes(write_video(p.parent.parent / "ok.mp4").read_bytes()[:60_000]),
         "v.mp4", "cannot decode video"),
        (lambda p: [shutil.copy(highway_images()[0], p.with_name(f"{n}_1483272000000000.jpg")) for n in "ab"],
         "_1483272000000000.jpg", "same timestamp"),
        (_same_exif_second, ".jpg", "same timestamp"),
    ],
    ids=["empty", "not-an-image", "truncated-jpeg", "junk-video", "truncated-video", "same-filename-time", "same-exif-time"],
)
def test_bad_input_is_one_line_naming_the_file_and_writes_nothing(tmp_path, capsys, make, named, says):
    src = tmp_path / "src"
    src.mkdir()
    make(src / "bad.jpg")
    out = tmp_path / "out"
    code, err = run_cli([str(src), "--out", str(out)], capsys)
    assert code != 0 and "\n" not in err and says in err and named in err, err
    assert not out.exists()


def test_output_inside_source_is_refused(tmp_path, capsys):
    src = folder_tree(tmp_path)
    code, err = run_cli([str(src), "--out", str(src / "drive-a" / "out")], capsys)
    assert code != 0 and "inside the source" in err and str(src) in err
    assert not (src / "drive-a" / "out").exists()


def test_failed_reimport_leaves_the_dataroot_as_it_was(tmp_path, capsys):
    src, out = folder_tree(tmp_path), tmp_path / "out"
    import_images(src, out)
    before = table_bytes(out)
    (src / "drive-new").mkdir()
    shutil.copy(highway_images()[0], src / "drive-new" / "a.jpg")
    (src / "drive-new" / "b.jpg").write_bytes(b"\xff\xd8broken")
    code, err = run_cli([str(src), "--out", str(out)], capsys)
    assert code != 0 and "b.jpg" in err
    assert table_bytes(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["conceptmine-import.json", "maps", "samples", VERSION]
