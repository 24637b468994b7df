"""Incremental operation: declarative automation over a dataroot that grows, and staleness."""

import shutil
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest
import yaml

from conceptmine_assets.definitions import SOURCES as SOURCE_ASSETS
from conceptmine_assets.definitions import build_definitions
from conceptmine_assets.lib.vocabulary import default_vocabulary_path
from conceptmine_assets.orchestration.automation import automation_target
from conceptmine_assets.orchestration.sensors import register_scenes
from conceptmine_assets.partitions import SCENE_PARTITIONS_NAME
from conceptmine_assets.settings import Settings
from conceptmine_assets_tests.helpers import (
    DERIVED, GLOBAL_ASSETS, HIGHWAY_SCENES, SCENE_ASSETS, add_scene, copy_dataroot, drop_scene,
)

SOURCES = ["detector_model", "embedding_model", "captioner_model", "vocabulary", "reviews"]
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
MONDAY_4AM = datetime(2026, 11, 23, 4, 0, tzinfo=timezone.utc)  # just after the weekly re-mining tick


def evaluate(auto: "Automation", when: datetime):
    """One tick of the automation sensor: what it targets, from ``auto``'s cursor at ``when``."""
    return dg.evaluate_automation_conditions(auto.defs, auto.instance, asset_selection=automation_target(SOURCE_ASSETS),
                                             cursor=auto.cursor, evaluation_time=when)


class Automation:
    """Drives declarative automation in process: evaluate, then execute what was requested."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance, nuscenes) -> None:
        self.defs, self.instance, self.nuscenes = defs, instance, nuscenes
        self.cursor = None
        self.done: list[tuple[str, str | None]] = []

    def tick(self, when: datetime) -> int:
        result = evaluate(self, when)
        self.cursor = result.cursor
        return self.execute(result)

    def execute(self, result) -> int:
        """Run what one evaluation requested: observations, then each partition, globals last."""
        graph = self.defs.resolve_asset_graph()
        by_partition: dict[str | None, list[dg.AssetKey]] = {}
        for key in graph.get_all_asset_keys():
            for pk in result.get_requested_partitions(key):
                by_partition.setdefault(pk, []).append(key)
        unpartitioned = by_partition.pop(None, [])
        if any(k.to_user_string() in SOURCES for k in unpartitioned):
            self.defs.resolve_job_def("observe_models_job").execute_in_process(instance=self.instance, run_config=QUIET)
        assets = [k for k in unpartitioned if k.to_user_string() not in SOURCES]
        if assets:
            by_partition[None] = assets
        for pk, keys in sorted(by_partition.items(), key=lambda kv: (kv[0] is None, kv[0] or "")):
            job = self.defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection=set(keys))
            job.execute_in_process(instance=self.instance, partition_key=pk, run_config=QUIET)
            self.done += [(k.to_user_string(), pk) for k in keys]
        return result.total_requested

    def settle(self, when: datetime, max_ticks: int = 16) -> None:
        """Tick until two ticks in a row request nothing (each tick a minute later; the global
        assets come on the tick after the scene work they wait for); the discovery sensor's work
        (registering new scenes) happens between ticks, as in a deployment."""
        quiet = 0
        for i in range(max_ticks):
            requested = self.tick(when + timedelta(minutes=i))
            quiet = 0 if register_scenes(self.instance, self.nuscenes) or requested else quiet + 1
            if quiet == 2:
                return
        raise AssertionError(f"automation did not settle; last done: {self.done[-10:]}")


@pytest.fixture
def pipeline(highway, yolo_tflite, tmp_path, monkeypatch):
    root = copy_dataroot(highway, tmp_path / "root")
    vocabulary = tmp_path / "concepts.yaml"
    shutil.copy(default_vocabulary_path(), vocabulary)
    monkeypatch.setenv("NUSCENES_DATAROOT", str(root))
    monkeypatch.setenv("CONCEPTMINE_YOLO_WEIGHTS", str(yolo_tflite))
    monkeypatch.chdir(tmp_path)  # nothing may be written relative to it
    defs = build_definitions(Settings(store=str(tmp_path / "store"), vocabulary=str(vocabulary)))
    with dg.DagsterInstance.ephemeral() as instance:
        auto = Automation(defs, instance, defs.resources["nuscenes"].__class__(dataroot=str(root)))
        yield auto, root, vocabulary


@pytest.mark.slow
def test_new_scene_flows_through_and_vocabulary_restales_only_scores(pipeline):
    auto, root, vocabulary = pipeline
    new_scene = drop_scene(root, HIGHWAY_SCENES[2])
    old = HIGHWAY_SCENES[:2]

    # A fresh deployment: every stage for the two scenes, the first reference fit, the split.
    auto.settle(MONDAY_4AM - timedelta(days=1))
    assert {(a, s) for a, s in auto.done if s} == {(a, s) for a in SCENE_ASSETS for s in old}
    assert {a for a, s in auto.done if s is None} == set(GLOBAL_ASSETS)

    # A new drive lands: only its partitions run, scored against the existing reference (no
    # refit), then the global split and report refresh.
    auto.done.clear()
    add_scene(root, new_scene)
    auto.settle(MONDAY_4AM - timedelta(hours=12))
    assert sorted((a, s) for a, s in auto.done if s) == sorted((a, HIGHWAY_SCENES[2]) for a in SCENE_ASSETS)
    assert sorted(a for a, s in auto.done if s is None) == DERIVED

    # The weekly tick refits the reference; every scene is re-scored and the split re-mined.
    auto.done.clear()
    auto.settle(MONDAY_4AM)
    assert ("outlier_reference", None) in auto.done
    assert {s for a, s in auto.done if a == "outlier_flags"} == set(HIGHWAY_SCENES)
    assert not {a for a, s in auto.done} & {"frames", "detections", "crops", "embeddings"}

    # A changed vocabulary: concept scores and what is downstream of them recompute, nothing else
    # (no detections, embeddings or captions).
    auto.done.clear()
    doc = yaml.safe_load(vocabulary.read_text())
    doc["concepts"].append({"name": "mattress_on_road", "group": "rare", "alternatives": ["a mattress on the road"]})
    vocabulary.write_text(yaml.safe_dump(doc))
    auto.settle(MONDAY_4AM + timedelta(hours=2))
    assert sorted(auto.done, key=str) == sorted(
        [("concept_scores", s) for s in HIGHWAY_SCENES] + [(a, None) for a in DERIVED], key=str
    )


@pytest.mark.slow
def test_global_assets_refresh_once_after_the_scene_work_they_wait_for(pipeline):
    """A scene updated by hand (a click on Materialize for one `frames` partition) sets off that
    scene's chain; the global assets are requested only once the chain is done — never in a tick
    that requests or runs a scene stage — and once."""
    auto, root, _ = pipeline
    auto.settle(MONDAY_4AM - timedelta(days=1))
    scene = HIGHWAY_SCENES[1]
    frames_only = auto.defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey("frames")})
    assert frames_only.execute_in_process(instance=auto.instance, partition_key=scene, run_config=QUIET).success

    when = MONDAY_4AM - timedelta(hours=20)
    result = evaluate(auto, when)
    scene_keys = {k for k in auto.defs.resolve_asset_graph().get_all_asset_keys() if k.to_user_string() in SCENE_ASSETS}
    first = {k.to_user_string(): result.get_requested_partitions(k) for k in scene_keys}
    assert first["detections"] == {scene}
    assert not any(result.get_requested_partitions(dg.AssetKey(a)) for a in DERIVED)

    # while that scene's run is in progress, a tick requests no global asset either
    job = auto.defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey("detections")})
    busy = auto.instance.create_run_for_job(job, tags={"dagster/partition": scene}, status=dg.DagsterRunStatus.STARTED)
    auto.cursor = result.cursor
    during = evaluate(auto, when + timedelta(minutes=1))
    assert not any(during.get_requested_partitions(dg.AssetKey(a)) for a in DERIVED)
    auto.instance.delete_run(busy.run_id)

    # the chain runs tick by tick (the Automation helper executes what each tick requests); the
    # global assets come once, after the last scene stage
    auto.cursor = during.cursor
    auto.done.clear()
    auto.execute(result)
    auto.settle(when + timedelta(minutes=2))
    scene_steps = [i for i, (a, s) in enumerate(auto.done) if s]
    global_steps = [i for i, (a, s) in enumerate(auto.done) if a in DERIVED]
    assert {a for a, s in auto.done if s} >= {"crops", "embeddings", "outlier_flags", "concept_scores"}
    assert sorted(auto.done[i][0] for i in global_steps) == DERIVED  # each once
    assert min(global_steps) > max(scene_steps)
