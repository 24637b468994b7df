"""The scale benchmark's stages, each run in its own fresh process by bench/scale.py:

    python -m bench.scale_stages STAGE WORKDIR [SCENES]

A stage prints one JSON line (``BENCH {...}``) with any figures beyond time and memory.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

GLOBAL_ASSETS = ["outlier_reference", "outlier_flags", "mined_split", "mining_quality_report",
                 "embedding_clusters", "gallery", "search_index"]
QUERY = "a person riding a kick scooter"
DAGSTER_YAML = "telemetry:\n  enabled: false\n"


def bench_embedder():
    """The image/text embedder of the benchmark: CLIP ViT-B/32 architecture (512-d, text and image
    in one space, as the paper profile), seeded random weights (no hub download here)."""
    from conceptmine_assets.resources.open_clip_embedder import OpenClipEmbedder

    return OpenClipEmbedder(model="ViT-B-32", pretrained=None, device="cpu")


def _settings():
    from conceptmine_assets.settings import Settings

    return Settings.from_env()


def _report(**figures) -> None:
    sys.stdout.write("BENCH " + json.dumps(figures) + "\n")


def _write_scenes(writer, scenes: list[int]) -> pd.DataFrame:
    """Write these scene copies (a copy whose seven files exist is only replayed for its planted
    crops, so an interrupted generation resumes); their planted crops."""
    return pd.concat([writer.scene(k) for k in scenes], ignore_index=True)


def generate(work: Path, scenes: int, seed: int = 0, workers: int = 2) -> None:
    """The synthetic dataroot and store (see bench/scale_data.py), scenes written by ``workers``
    processes."""
    from concurrent.futures import ProcessPoolExecutor

    from bench.scale_data import Mixture, StoreWriter, caption_texts, write_dataroot
    from conceptmine_assets.resources.offline_embedder import OfflineEmbedder
    from conceptmine_assets.resources.vocabulary import VocabularyResource

    started = time.perf_counter()
    if not (work / "dataroot" / "v1.0-trainval" / "scene.json").exists():
        write_dataroot(work, scenes)
    dataroot_s = time.perf_counter() - started
    text = OfflineEmbedder(device="cpu")
    texts = caption_texts()
    vocabulary = VocabularyResource().load()
    writer = StoreWriter(work / "store", Mixture.make(seed), dict(zip(texts, text.encode_texts(texts))),
                         text.text_model_id, bench_embedder().image_model_id, vocabulary.names, vocabulary.identity, seed)
    workers = max(1, min(workers, scenes))  # a worker without scenes would have nothing to concatenate
    with ProcessPoolExecutor(workers) as pool:
        parts = pool.map(_write_scenes, [writer] * workers, [list(range(p, scenes, workers)) for p in range(workers)])
        planted = pd.concat(list(parts), ignore_index=True).sort_values("detection_id", ignore_index=True)
    planted.to_parquet(work / "planted.parquet")
    _report(dataroot_s=round(dataroot_s, 1), planted=len(planted))


def _definitions():
    import dagster as dg

    from conceptmine_assets.definitions import ASSET_MODULES, build_resources
    from conceptmine_assets.orchestration.checks import CHECKS

    resources = {**build_resources(_settings()), "embedder": bench_embedder()}
    return dg.Definitions(assets=dg.load_assets_from_modules(ASSET_MODULES), asset_checks=CHECKS, resources=resources)


def materialize(work: Path, asset: str) -> None:
    """One global stage (``outlier_flags``: the first scene) through the project's definitions."""
    import dagster as dg

    from conceptmine_assets.partitions import SCENE_PARTITIONS_NAME

    defs = _definitions()
    config = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}  # side files go under the store
    with dg.DagsterInstance.get() as instance:
        partition = instance.get_dynamic_partitions(SCENE_PARTITIONS_NAME)[0] if asset == "outlier_flags" else None
        job = defs.resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey(asset)], run_config=config,
                                        partition_key=partition)
    assert result.success


def _ms(seconds: float) -> float:
    return round(1000 * seconds, 1)


def search_in_process(work: Path, mode: str) -> None:
    """Search in one warm process: model load, then per query the whole call (index opened from
    disk, query encoded, ranked, staleness checked) and its parts."""
    from conceptmine_assets.resources.offline_embedder import OfflineEmbedder
    from conceptmine_assets.resources.search_index import SearchIndexResource, search_crops

    embedder = bench_embedder() if mode == "image_embedding" else OfflineEmbedder(device="cpu")
    started = time.perf_counter()
    embedder.encode_texts(["warm up"])
    load_model_s = time.perf_counter() - started
    store = SearchIndexResource(base_path=str(work / "store"))
    calls = []
    for query in (QUERY, "an excavator digging", "a parked car", "a road roller"):
        started = time.perf_counter()
        result, stale = search_crops(store, embedder, query, k=10)
        calls.append(time.perf_counter() - started)
    parts = {"encode": [], "open": [], "rank": [], "stale_check": []}
    for query in ("a cargo bike", "a pedestrian", "a truck"):
        t0 = time.perf_counter()
        vector = embedder.encode_texts([query])[0]
        t1 = time.perf_counter()
        loaded = store.load()
        loaded.index(mode)
        t2 = time.perf_counter()
        loaded.search(mode, vector, 10)
        t3 = time.perf_counter()
        loaded.stale(store.fingerprint(list(loaded.manifest["sources"])))
        t4 = time.perf_counter()
        for name, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[name].append(seconds)
    _report(model_load_s=round(load_model_s, 2), first_call_ms=_ms(calls[0]), warm_call_ms=_ms(min(calls[1:])),
            **{f"{name}_ms": _ms(min(v)) for name, v in parts.items()}, index=result.index_kind,
            top_hit=result.hits["caption"].iloc[0] if len(result.hits) else None, stale=len(stale))


def automation_tick(work: Path) -> None:
    """Ticks of the automation sensor as the daemon runs them at N partitions: ``dagster-daemon
    run`` on a copy of the instance whose run coordinator queues runs and never launches them
    (nothing executes), stopped after its second tick; durations from the instance's tick records.

    Not ``dg.evaluate_automation_conditions``: that test API writes its cursor with the plain
    instance as the dynamic-partitions store, one SQLite query of all N keys for every node of
    every condition (5,153 queries, 26 of its 27 s at 850), where the daemon's tick reads them
    through its caching queryer."""
    import shutil
    import signal
    import subprocess

    import dagster as dg

    home = work / "tick_home"
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(os.environ["DAGSTER_HOME"], home)
    (home / "dagster.yaml").write_text(DAGSTER_YAML + QUEUE_ONLY)
    repo = Path(__file__).resolve().parents[1]
    daemon = subprocess.Popen([str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", "workspace.yaml"],
                              cwd=repo, env={**os.environ, "DAGSTER_HOME": str(home)}, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ticks: list = []
    try:
        deadline = time.time() + 600
        while time.time() < deadline and len(ticks) < 2:
            time.sleep(5)
            with dg.DagsterInstance.from_config(str(home)) as instance:
                states = [s for s in instance.all_instigator_state() if s.name == "conceptmine_automation"]
                ticks = [t for s in states for t in instance.get_ticks(s.instigator_origin_id, s.selector_id)
                         if t.end_timestamp]
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(60)
    ticks.sort(key=lambda t: t.timestamp)
    seconds = [round(t.end_timestamp - t.timestamp, 2) for t in ticks]
    _report(first_tick_s=seconds[0] if seconds else None, next_tick_s=seconds[1] if len(seconds) > 1 else None,
            runs_requested=sum(len(t.run_ids) for t in ticks), status=[t.status.value for t in ticks])


QUEUE_ONLY = """run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 0
"""


PARTITION_QUERY = """
query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
  partitionStats { numMaterialized numPartitions numFailed numMaterializing }
  assetPartitionStatuses { ... on DefaultPartitionStatuses { materializedPartitions failedPartitions } } } } }
"""


def graphql(work: Path) -> None:
    """The UI's partition-status query for a scene-partitioned asset, through dagster-graphql."""
    import dagster as dg
    from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

    import conceptmine_assets.definitions as module

    with dg.DagsterInstance.get() as instance:
        with define_out_of_process_context(module.__file__, "defs", instance) as context:
            timings = []
            for _ in range(3):
                started = time.perf_counter()
                result = execute_dagster_graphql(context, PARTITION_QUERY, {"key": {"path": ["embeddings"]}})
                timings.append(time.perf_counter() - started)
    stats = result.data["assetNodeOrError"]["partitionStats"]
    _report(first_query_s=round(timings[0], 3), warm_query_s=round(min(timings[1:]), 3),
            partitions=stats["numPartitions"], materialized=stats["numMaterialized"])


def record_events(work: Path) -> None:
    """Record a materialisation of every per-scene asset for every scene (as a backfill would)."""
    import dagster as dg

    from bench.scale_data import BASE_SCENE
    from conceptmine_assets.lib.synth import copy_name
    from conceptmine_assets.partitions import SCENE_PARTITIONS_NAME

    scenes = 0
    with dg.DagsterInstance.get() as instance:
        for scene in instance.get_dynamic_partitions(SCENE_PARTITIONS_NAME):
            scenes += 1
            for asset in ("frames", "detections", "crops", "embeddings", "outlier_flags", "captions", "concept_scores"):
                instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=scene))
    _report(scenes=scenes, first=copy_name(BASE_SCENE, 0))


def backfill_runs(work: Path, scenes: int) -> None:
    """Runs an asset backfill of N scenes launches per per-scene asset (from its backfill policy)."""
    defs = _definitions()
    runs = {}
    for key in defs.resolve_all_asset_keys():
        node = defs.resolve_assets_def(key)
        if node.partitions_def is None or not node.is_executable:
            continue
        policy = node.backfill_policy
        per_run = scenes if policy and policy.max_partitions_per_run is None else (policy.max_partitions_per_run if policy else 1)
        runs[key.to_user_string()] = math.ceil(scenes / per_run)
    _report(**runs)


def recall(work: Path) -> None:
    """Recall of the planted rare crops by the outlier flags and by the mined split (vs random)."""
    import pickle

    import duckdb

    from conceptmine_assets.lib.outliers import apply_thresholds, combine, score

    planted = pd.read_parquet(work / "planted.parquet")
    with open(work / "store" / "outlier_reference.pkl", "rb") as fh:
        reference = pickle.load(fh)
    con = duckdb.connect()
    con.register("planted", planted[["detection_id"]])
    glob = str(work / "store" / "embeddings" / "*.parquet")
    rows = con.sql(f"SELECT e.detection_id, e.embedding, p.detection_id IS NOT NULL AS planted FROM read_parquet('{glob}') e "
                   "LEFT JOIN planted p USING (detection_id) WHERE p.detection_id IS NOT NULL OR hash(e.detection_id) % 100 = 0").df()
    X = np.stack(rows["embedding"].to_numpy()).astype(np.float32)
    flags, _ = combine(apply_thresholds(score(reference, X, rows["detection_id"].to_numpy(dtype=object)), reference.thresholds))
    is_planted = rows["planted"].to_numpy(dtype=bool)
    split = set(pd.read_parquet(work / "store" / "mined_split.parquet")["sample_token"])
    universe = con.sql(f"SELECT DISTINCT sample_token FROM read_parquet('{work / 'store' / 'frames' / '*.parquet'}')").df()
    rng = np.random.default_rng(0)
    random = [planted["sample_token"].isin(set(rng.choice(universe["sample_token"], len(split), replace=False))).mean()
              for _ in range(20)]
    _report(planted=len(planted), outlier_recall=round(float(flags[is_planted].mean()), 3),
            outlier_rate_others=round(float(flags[~is_planted].mean()), 3),
            split_recall=round(float(planted["sample_token"].isin(split).mean()), 3),
            random_split_recall=round(float(np.mean(random)), 3), split_samples=len(split), samples=len(universe))


def main(argv: list[str]) -> None:
    stage, work = argv[0], Path(argv[1])
    if stage == "generate":
        generate(work, int(argv[2]))
    elif stage == "backfill_runs":
        backfill_runs(work, int(argv[2]))
    elif stage in GLOBAL_ASSETS:
        materialize(work, stage)
    else:
        {"search_image": lambda w: search_in_process(w, "image_embedding"),
         "search_caption": lambda w: search_in_process(w, "caption_text"), "automation_tick": automation_tick, "graphql": graphql,
         "record_events": record_events, "recall": recall}[stage](work)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main(sys.argv[1:])
