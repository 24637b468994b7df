"""Bad input to the command line: one short message naming what is wrong, exit code != 0, and
nothing registered or written."""

import os
from pathlib import Path

import dagster as dg
import pytest

from conceptmine_assets import cli
from conceptmine_assets.partitions import SCENE_PARTITIONS_NAME
from conceptmine_assets_tests.helpers import copy_dataroot, set_deployment


@pytest.fixture
def env(highway, yolo_tflite, tmp_path, monkeypatch):
    root = copy_dataroot(highway, tmp_path / "root")
    set_deployment(monkeypatch, root, tmp_path, CONCEPTMINE_DETECTOR="yolo", CONCEPTMINE_YOLO_WEIGHTS=str(yolo_tflite))
    return {"root": root, "tmp": tmp_path, "store": tmp_path / "store"}


def fails_cleanly(argv: list[str], capsys, *words: str) -> str:
    """Run the CLI; assert exit != 0, a message of at most 10 lines holding ``words``, no traceback."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code != 0, err
    assert 0 < len(err.strip().splitlines()) <= 10 and "Traceback" not in err, err
    assert all(w in err for w in words), err
    return err


def nothing_done(env) -> None:
    with dg.DagsterInstance.get() as instance:
        assert instance.get_dynamic_partitions(SCENE_PARTITIONS_NAME) == []
        assert not instance.get_runs()
    assert not env["store"].exists() and not (env["tmp"] / "data").exists()


def _corrupt_table(root: Path) -> str:
    (root / "v1.0-mini" / "sample.json").write_text('[{"token": "x", "scene_token"')
    return "sample.json"


def _missing_weights(env, monkeypatch) -> str:
    monkeypatch.setenv("CONCEPTMINE_YOLO_WEIGHTS", str(env["tmp"] / "missing.tflite"))
    return "missing.tflite"


def _unloadable_weights(env, monkeypatch) -> str:
    """A weights file that exists and is not empty but is no model (the first 100 kB of one)."""
    bad = env["tmp"] / "truncated.tflite"
    bad.write_bytes(Path(os.environ["CONCEPTMINE_YOLO_WEIGHTS"]).read_bytes()[:100_000])
    monkeypatch.setenv("CONCEPTMINE_YOLO_WEIGHTS", str(bad))
    return str(bad)


@pytest.mark.parametrize(
    "case", ["profile", "dataroot", "table", "weights", "unloadable", "scene", "config", "vocabulary"]
)
def test_bad_input_stops_run_before_anything_is_registered_or_written(env, capsys, monkeypatch, case):
    argv = ["run"]
    if case == "profile":
        monkeypatch.setenv("CONCEPTMINE_PROFILE", "fast")
        words = ("CONCEPTMINE_PROFILE", "'fast'")
    elif case == "dataroot":
        monkeypatch.setenv("NUSCENES_DATAROOT", str(env["tmp"] / "nowhere"))
        words = ("nowhere", "does not exist")
    elif case == "table":
        words = (_corrupt_table(env["root"]), "malformed")
    elif case == "weights":
        words = (_missing_weights(env, monkeypatch), "does not exist")
    elif case == "unloadable":
        words = (_unloadable_weights(env, monkeypatch), "do not load or run")
    elif case == "scene":
        argv, words = ["run", "--scenes", "scene-9999"], ("scene-9999", "scene.json")
    elif case == "config":
        (env["tmp"] / "bad.yaml").write_text("profile: offline\nstore: [unclosed\n")
        monkeypatch.setenv("CONCEPTMINE_CONFIG", str(env["tmp"] / "bad.yaml"))
        words = ("bad.yaml", "YAML")
    else:
        monkeypatch.setenv("CONCEPTMINE_VOCABULARY", str(env["tmp"] / "concepts.yaml"))
        words = ("concepts.yaml",)
    fails_cleanly(argv, capsys, *words)
    nothing_done(env)


def test_debug_shows_the_traceback(env, monkeypatch):
    monkeypatch.setenv("CONCEPTMINE_PROFILE", "fast")
    with pytest.raises(Exception, match="CONCEPTMINE_PROFILE"):
        cli.main(["--debug", "run"])


def test_sql_errors_are_one_line(env, capsys):
    fails_cleanly(["sql", "SELECT 1"], capsys, "nothing is stored", "conceptmine run")
    table = env["store"] / "frames"
    table.mkdir(parents=True)
    import pandas as pd

    pd.DataFrame({"scene_name": ["s"], "channel": ["CAM_FRONT"]}).to_parquet(table / "s.parquet")
    err = fails_cleanly(["sql", "SELECT nope FROM frames"], capsys, "SQL error", "nope", "frames")
    assert len(err.strip().splitlines()) == 1
    assert cli.main(["sql", "SELECT count(*) AS n FROM frames"]) == 0
    assert "1" in capsys.readouterr().out


def test_an_unset_dagster_home_is_one_line(env, capsys, monkeypatch):
    home = os.environ["DAGSTER_HOME"]
    monkeypatch.delenv("DAGSTER_HOME")
    fails_cleanly(["run"], capsys, "DAGSTER_HOME is not set", "export DAGSTER_HOME")
    monkeypatch.setenv("DAGSTER_HOME", home)
    nothing_done(env)
