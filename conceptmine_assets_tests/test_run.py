"""`conceptmine run`: incremental, batched, recorded runs; byte-identical outputs; UI-style runs agree."""

import hashlib
import shutil
from pathlib import Path

import dagster as dg
import pytest

from conceptmine_assets import cli
from conceptmine_assets.cli.runlock import STORE_LOCK_NAME
from conceptmine_assets.cli.runner import REPOSITORY_LABEL, REPOSITORY_LABEL_TAG
from conceptmine_assets.cli.uptodate import MEMO, UpToDate
from conceptmine_assets.partitions import SCENE_PARTITIONS_NAME
from conceptmine_assets.resources.captioner import TemplateCaptioner
from conceptmine_assets.resources.detector import YoloDetector
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.resources.offline_embedder import OfflineEmbedder
from conceptmine_assets_tests.helpers import (
    DERIVED, GLOBAL_ASSETS, HIGHWAY_SCENES, SCENE_ASSETS, add_scene, copy_dataroot, drop_scene, set_deployment,
)



def file_hashes(store: Path) -> dict[str, str]:
    """sha256 of every stored file (Parquet tables, the pickled reference, their content records),
    by relative path; not the run lock's file (runlock.py), which holds no output."""
    return {
        str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(store.rglob("*")) if p.is_file() and p.name != STORE_LOCK_NAME
    }


def without_index(hashes: dict[str, str]) -> dict[str, str]:
    return {p: h for p, h in hashes.items() if not p.startswith("search_index/")}


def materialisations(instance: dg.DagsterInstance) -> dict[tuple[str, str | None], int]:
    counts: dict[tuple[str, str | None], int] = {}
    for name in SCENE_ASSETS + GLOBAL_ASSETS:
        for record in instance.fetch_materializations(dg.AssetKey(name), limit=10_000).records:
            key = (name, record.partition_key)
            counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.fixture
def deployment(highway, yolo_tflite, tmp_path, monkeypatch):
    """A dataroot with two of the three highway scenes (the third kept aside), a store and a
    Dagster home, selected through the environment as a deployment would (YOLO detector)."""
    root = copy_dataroot(highway, tmp_path / "root")
    aside = drop_scene(root, HIGHWAY_SCENES[2])
    set_deployment(monkeypatch, root, tmp_path, CONCEPTMINE_DETECTOR="yolo", CONCEPTMINE_YOLO_WEIGHTS=str(yolo_tflite))
    return {"root": root, "aside": aside, "store": tmp_path / "store", "tmp": tmp_path}


def launched_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """Runs of `conceptmine run` that materialise (not the observation of model identities)."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"conceptmine/launched_by": "conceptmine run"}))
    return [r for r in runs if r.job_name != "observe_models_job"]


def fail_if_called(*_args, **_kwargs):
    raise AssertionError("a no-change re-run repeated a pre-flight check it had passed")


@pytest.mark.slow
def test_run_is_incremental_batched_and_deterministic(deployment, capsys, monkeypatch):
    store = deployment["store"]
    assert cli.main(["run"]) == 0
    with dg.DagsterInstance.get() as instance:
        first_runs = launched_runs(instance)
        counts = materialisations(instance)
    assert {k for k in counts if k[1]} == {(a, s) for a in SCENE_ASSETS for s in HIGHWAY_SCENES[:2]}
    assert {k[0] for k in counts if k[1] is None} == set(GLOBAL_ASSETS)
    # both scenes in one run per per-scene stage; every run listed under its job in the UI
    scene_runs = [r for r in first_runs if r.job_name in ("perception_job", "mining_scene_job")]
    assert len(scene_runs) == 2 and all(r.tags.get("dagster/asset_partition_range_start") for r in scene_runs)
    assert all(r.tags[REPOSITORY_LABEL_TAG] == REPOSITORY_LABEL and r.job_code_origin for r in first_runs)
    before = file_hashes(store)

    # nothing changed: no run (not even an observation), no materialisation, every file as it
    # was; the table load and model load checks it passed are not repeated. First answered by
    # the memo of the last plan (uptodate.py), then, the memo deleted, by Dagster's records.
    capsys.readouterr()
    with dg.DagsterInstance.get() as instance:
        all_runs = len(instance.get_runs())
    with monkeypatch.context() as patched:
        patched.setattr(NuScenesResource, "nusc", property(fail_if_called))
        for resource in (YoloDetector, OfflineEmbedder, TemplateCaptioner):
            patched.setattr(resource, "verify", fail_if_called)
        assert cli.main(["run"]) == 0
        assert "nothing the last plan was computed from has changed" in capsys.readouterr().out
        (deployment["tmp"] / "dagster_home" / MEMO).unlink()
        assert cli.main(["run"]) == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out and "has changed since" not in out
    # and that plan is remembered again (a fresh process: test_uptodate's subprocess runs)
    assert UpToDate(deployment["tmp"] / "dagster_home").holds()["store"] == str(store)
    with dg.DagsterInstance.get() as instance:
        assert len(instance.get_runs()) == all_runs and materialisations(instance) == counts
    assert file_hashes(store) == before

    # --force recomputes everything from the same inputs: byte-identical files, every per-scene
    # asset included (timings live only in metadata)
    assert cli.main(["run", "--force"]) == 0
    with dg.DagsterInstance.get() as instance:
        forced = materialisations(instance)
    assert all(forced[k] == counts[k] + 1 for k in counts)
    # (the search index is the exception: a rebuild writes a new version folder — search's area)
    assert without_index(file_hashes(store)) == without_index(before)
    assert {p.split("/")[0] for p in before if "/" in p} >= set(SCENE_ASSETS)
    counts = forced

    # a new scene: its partitions, then one refresh of the derived global assets (no refit)
    add_scene(deployment["root"], deployment["aside"])
    assert cli.main(["run"]) == 0
    with dg.DagsterInstance.get() as instance:
        after = materialisations(instance)
    added = {k: n - counts.get(k, 0) for k, n in after.items() if n != counts.get(k, 0)}
    assert added == {**{(a, HIGHWAY_SCENES[2]): 1 for a in SCENE_ASSETS}, **{(a, None): 1 for a in DERIVED}}
    grown = file_hashes(store)
    assert all(grown[p] == h for p, h in before.items() if p.split("/")[0] in SCENE_ASSETS)  # old scenes' files untouched



def test_batches_are_ranges_of_consecutive_partitions_needing_the_same_assets():
    from conceptmine_assets.cli.runner import Run, batch

    order = ["a", "b", "c", "d", "e", "f"]  # every registered partition; "b" needs nothing
    planned = {"x": ["a", "c", "d", "e", "f"], "y": ["a", "c", "d", "f"], "g": [None]}
    runs = batch("j", planned, order, per_run=2)
    assert runs == [
        Run("j", ("x", "y"), ("a",)), Run("j", ("x", "y"), ("c", "d")), Run("j", ("x",), ("e",)),
        Run("j", ("x", "y"), ("f",)), Run("j", ("g",), ()),
    ]
    assert Run("j", ("x",), ("c", "d")).tags()["dagster/asset_partition_range_end"] == "d"
    assert Run("j", ("x",), ("c",)).tags()["dagster/partition"] == "c"


@pytest.mark.slow
def test_a_ui_style_run_equals_the_command_line(deployment):
    """Per-scene assets materialised for one scene by a run with no run config (a click on
    Materialize in the UI, or automation) equal what `conceptmine run` stored (several scenes per
    run there), byte for byte."""
    from conceptmine_assets.definitions import build_definitions
    from conceptmine_assets.settings import load_settings

    store = deployment["store"]
    assert cli.main(["run"]) == 0
    ui_store = deployment["tmp"] / "ui-store"
    ui_store.mkdir()
    shutil.copy(store / "outlier_reference.pkl", ui_store / "outlier_reference.pkl")  # the fitted global reference
    defs = build_definitions(load_settings(store=str(ui_store)))
    scene = HIGHWAY_SCENES[1]
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(SCENE_PARTITIONS_NAME, HIGHWAY_SCENES[:2])
        job = defs.resolve_implicit_global_asset_job_def().get_subset(
            asset_selection={dg.AssetKey(a) for a in SCENE_ASSETS}
        )
        assert job.execute_in_process(instance=instance, partition_key=scene).success
    for asset in SCENE_ASSETS:
        path = f"{asset}/{scene}.parquet"
        assert (ui_store / path).read_bytes() == (store / path).read_bytes(), path
