"""The no-change memo of `conceptmine run` (uptodate.py) and the file stamps it compares (lib/watched.py)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from conceptmine_assets.cli import entry as cli
from conceptmine_assets.cli.uptodate import CLOCK, MEMO, UpToDate
from conceptmine_assets.lib.watched import listing_stamp, newest_mtime, tree_stamp, watch
from conceptmine_assets.settings import REPO_CONFIG
from conceptmine_assets_tests.helpers import HIGHWAY_SCENES, copy_dataroot, drop_scene, set_deployment


def held(home: Path, scenes: list[str] | None = None) -> str | None:
    """The store of the memo that holds for this command, or None."""
    memo = UpToDate(home, scenes).holds()
    return memo["store"] if memo else None


def bump(path: Path, ns: int = 1_000_000_000) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + ns))


@pytest.mark.parametrize("change", ["rewrite", "add", "remove", "touch"])
def test_a_tree_stamp_sees_every_file_change(tmp_path, change):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.db").write_text("1")
    (tmp_path / "y").write_text("2")
    before = tree_stamp(tmp_path)
    {
        "rewrite": lambda: (tmp_path / "y").write_text("22"),
        "add": lambda: (tmp_path / "a" / "new").write_text(""),
        "remove": lambda: (tmp_path / "a" / "x.db").unlink(),
        "touch": lambda: bump(tmp_path / "a" / "x.db"),
    }[change]()
    assert tree_stamp(tmp_path) != before


def test_a_tree_stamp_ignores_folder_mtimes_pycache_and_skipped_names(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "f").write_text("1")
    before = tree_stamp(tmp_path, skip=frozenset({"mine"}))
    (tmp_path / "sub" / "x-journal").write_text("")  # a SQLite journal that comes and goes
    (tmp_path / "sub" / "x-journal").unlink()
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "f.pyc").write_text("")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "memo").write_text("")
    assert tree_stamp(tmp_path, skip=frozenset({"mine"})) == before
    assert tree_stamp(tmp_path / "missing") is None


def test_a_listing_sees_names_not_contents(tmp_path):
    (tmp_path / "pkg-1.0.dist-info").mkdir()
    before = listing_stamp(tmp_path)
    (tmp_path / "pkg-1.0.dist-info" / "RECORD").write_text("x")
    assert listing_stamp(tmp_path) == before
    (tmp_path / "pkg-1.0.dist-info").rename(tmp_path / "pkg-1.1.dist-info")
    assert listing_stamp(tmp_path) == ["pkg-1.1.dist-info"]


@pytest.mark.parametrize(
    ("stamp", "newest"),
    [(None, -1), ([3, 7], 7), (["a", "b"], -1), ({"x": [1, 5], "y": {"z": [2, 9]}, "w": None}, 9)],
)
def test_newest_mtime(stamp, newest):
    assert newest_mtime(stamp) == newest


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A Dagster home with a file standing in for the instance's storage, and a watched input."""
    home = tmp_path / "home"
    (home / "history").mkdir(parents=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    (home / "history" / "runs.db").write_text("runs")
    (tmp_path / "input.yaml").write_text("a: 1\n")
    watch(tmp_path / "input.yaml")
    monkeypatch.chdir(tmp_path)
    past = time.time_ns() - 10**10
    for path in (home / "history" / "runs.db", tmp_path / "input.yaml"):
        os.utime(path, ns=(past, past))
    return home


def test_a_saved_memo_holds_until_an_input_or_the_instance_changes(home, tmp_path, monkeypatch):
    memo = UpToDate(home)
    assert memo.holds() is None  # nothing remembered yet
    assert memo.save(memo.snapshot(), "/the/store")
    assert held(home) == "/the/store"
    assert held(home, ["scene-1"]) is None  # another command
    for path in (tmp_path / "input.yaml", home / "history" / "runs.db", home / "dagster.yaml"):
        bump(path)
        assert held(home) is None, path
        bump(path, -1_000_000_000)
        assert held(home) == "/the/store", path
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # where hub models are found
    assert held(home) is None
    monkeypatch.delenv("HF_HOME")
    monkeypatch.chdir(home)  # a relative store would be another folder
    assert held(home) is None
    monkeypatch.chdir(tmp_path)
    (home / "storage").mkdir()
    (home / "storage" / "run.db").write_text("")  # a new run
    assert held(home) is None


def test_nothing_is_remembered_when_an_input_moved_while_planning(home, tmp_path):
    memo = UpToDate(home)
    before = memo.snapshot()
    (home / "history" / "runs.db").write_text("a materialisation from the UI")
    assert not memo.save(before, "/s") and not (home / MEMO).exists()


def test_a_stamp_in_the_clock_tick_of_the_snapshot_waits_for_the_clock(home, tmp_path):
    """git's racily-clean case: a write in the same mtime tick as the stamp would go unseen."""
    memo = UpToDate(home)
    soon = time.time_ns() + 50_000_000
    os.utime(home / "history" / "runs.db", ns=(soon, soon))
    started = time.perf_counter()
    snap = memo.snapshot()
    assert snap is not None and time.perf_counter() - started >= 0.03
    assert (home / CLOCK).stat().st_mtime_ns > newest_mtime(snap["stamps"])
    later = time.time_ns() + 3600 * 10**9  # a clock that never gets there: no memo
    os.utime(home / "history" / "runs.db", ns=(later, later))
    assert memo.snapshot(attempts=3) is None and not memo.save(None, "/s")


def test_an_instance_with_storage_elsewhere_gets_no_memo(home):
    (home / "dagster.yaml").write_text("storage:\n  postgres:\n    postgres_url: postgresql://db/dagster\n")
    memo = UpToDate(home)
    assert not memo.usable() and not memo.save(memo.snapshot(), "/s") and memo.holds() is None


def test_a_damaged_memo_is_one_line_naming_it(home, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    (home / MEMO).parent.mkdir(parents=True, exist_ok=True)
    (home / MEMO).write_text(json.dumps({"key": {}}))
    assert cli.main(["run"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(home / MEMO) in err and "delete it" in err


@pytest.mark.slow
def test_conceptmine_run_remembers_a_no_change_plan_and_any_change_forgets_it(highway, yolo_tflite, tmp_path, monkeypatch, capsys):
    root = copy_dataroot(highway, tmp_path / "root")
    for scene in HIGHWAY_SCENES[1:]:
        drop_scene(root, scene)
    weights = tmp_path / "yolo.tflite"
    shutil.copyfile(yolo_tflite, weights)
    config = tmp_path / "conceptmine.yaml"
    config.write_text(f"extends: {REPO_CONFIG}\n")
    home = set_deployment(
        monkeypatch, root, tmp_path, CONCEPTMINE_DETECTOR="yolo", CONCEPTMINE_YOLO_WEIGHTS=str(weights),
        CONCEPTMINE_CONFIG=str(config),
    )
    store = str(tmp_path / "store")
    assert cli.main(["run"]) == 0  # the full run ends with a plan that finds nothing: remembered
    assert held(home) == store
    # every input of the plan, changed alone, forgets it; restored, the memo holds again
    for path in (config, REPO_CONFIG, weights, root / "v1.0-mini" / "scene.json", Path(cli.__file__)):
        bump(path)
        assert held(home) is None, path
        bump(path, -1_000_000_000)
        assert held(home) == store, path

    # a materialisation by another program (the UI, automation): planned, run, remembered again
    with dg.DagsterInstance.get() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization("concept_scores", partition=HIGHWAY_SCENES[0]))
    assert held(home) is None
    capsys.readouterr()
    assert cli.main(["run"]) == 0
    assert "mining_global_job" in capsys.readouterr().out
    assert held(home) == store

    # as a user runs it: the first command in this interpreter set-up plans (another sys.path), the
    # second is answered by the memo without importing Dagster or pandas
    command = [sys.executable, "-X", "importtime", "-m", "conceptmine_assets.cli", "run"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0 and "registered 0 new" in first.stdout, first.stderr[-2000:]
    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and "has changed since" in second.stdout, second.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in second.stderr.splitlines() if line.startswith("import time:")}
    assert imported and not {m for m in imported if m.split(".")[0] in ("dagster", "pandas", "torch")}
