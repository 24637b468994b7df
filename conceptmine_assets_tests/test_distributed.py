"""Scaling out on a real dask cluster (executor selection and routing config: test_scaling.py).

The slow tests start a ``dask.distributed`` scheduler and two worker processes on 127.0.0.1
(worker ``gpu`` advertises ``GPU=1``, worker ``cpu`` nothing), run the highway scenes through
the perception job as concurrent Dagster runs whose steps execute on those workers, and compare
the stored tables with an in-process run. Which worker ran a step is read from Dagster's own
event log: every event carries the ``pid`` of the process that emitted it.
"""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from conceptmine_assets.assets import crops, detections, embeddings, frames
from conceptmine_assets.orchestration import scaling
from conceptmine_assets.partitions import SCENE_PARTITIONS_NAME
from conceptmine_assets_tests.helpers import HIGHWAY, HIGHWAY_SCENES, REPO, YOLO_TFLITE, require

PERCEPTION_MODULES = [frames, detections, crops, embeddings]
PERCEPTION_TABLES = ["frames", "detections", "crops", "embeddings"]
MODEL_STEPS = {"detections", "embeddings"}
RUN_CONFIG = {"ops": {"frames": {"config": {"cameras": ["CAM_FRONT"]}}}}


def perception_job(
    store: str, executor: str = "multiprocess", scheduler: str | None = None, gpu_routing: bool = False
) -> dg.JobDefinition:
    """The perception job as a deployment would build it; module-level, so dask workers rebuild it."""
    from conceptmine_assets.definitions import build_resources, perception_job as job
    from conceptmine_assets.settings import Settings

    assets, executor_def = scaling.scale(dg.load_assets_from_modules(PERCEPTION_MODULES), executor, scheduler, gpu_routing)
    defs = dg.Definitions(
        assets=assets, resources=build_resources(Settings(store=store)), jobs=[job], executor=executor_def
    )
    return defs.resolve_job_def("perception_job")




def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", *args], cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to each process's own session (a worker's nanny and its child), then SIGKILL."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        os.killpg(proc.pid, signal.SIGTERM)
    for proc in running:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def worker_env(tmp: Path) -> dict[str, str]:
    """What a worker needs to rebuild the job: the repo on the path, dataroot and weights, offline hubs."""
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "NUSCENES_DATAROOT": str(HIGHWAY),
        "CONCEPTMINE_YOLO_WEIGHTS": str(YOLO_TFLITE),
        "HF_HUB_OFFLINE": "1",
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(tmp / "yolo"),
    }


class DaskCluster:
    """A scheduler and named workers on 127.0.0.1, as separate process sessions."""

    def __init__(self, tmp: Path):
        self.tmp, self.procs, self.address, self.pids = tmp, [], "", {}

    def start(self, workers: dict[str, list[str]]) -> None:
        """Scheduler first (its address from the scheduler file), then one process per worker."""
        tmp, env = self.tmp, worker_env(self.tmp)
        scheduler_file = tmp / "scheduler.json"
        self.procs.append(
            _start(
                ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                 "--scheduler-file", str(scheduler_file)],
                env,
                tmp / "scheduler.log",
            )
        )
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if not scheduler_file.exists():
            raise RuntimeError(f"dask scheduler did not start: {(tmp / 'scheduler.log').read_text()}")
        self.address = json.loads(scheduler_file.read_text())["address"]
        for name, extra in workers.items():
            self.procs.append(
                _start(
                    ["distributed.cli.dask_worker", self.address, "--name", name, "--nworkers", "1", "--nthreads", "1",
                     "--host", "127.0.0.1", "--no-dashboard", "--local-directory", str(tmp / name), *extra],
                    env,
                    tmp / f"worker-{name}.log",
                )
            )
        from dask.distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(len(workers), timeout=90)
            info = client.scheduler_info()["workers"]
            names = {addr: w["name"] for addr, w in info.items()}
            self.pids = {names[addr]: pid for addr, pid in client.run(os.getpid).items()}

    def stop(self) -> None:
        _stop(self.procs)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    require(HIGHWAY), require(YOLO_TFLITE)
    cluster = DaskCluster(tmp_path_factory.mktemp("dask"))
    try:
        cluster.start({"gpu": ["--resources", "GPU=1"], "cpu": []})
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def highway_env() -> Iterator[None]:
    """The deployment's environment for this process too: the run's orchestrator resolves the EnvVars."""
    require(HIGHWAY), require(YOLO_TFLITE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NUSCENES_DATAROOT", str(HIGHWAY))
        mp.setenv("CONCEPTMINE_YOLO_WEIGHTS", str(YOLO_TFLITE))
        yield


@pytest.fixture(scope="module")
def persistent_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dg.DagsterInstance]:
    home = str(tmp_path_factory.mktemp("dagster_home"))
    with dg.DagsterInstance.local_temp(tempdir=home, overrides={"telemetry": {"enabled": False}}) as instance:
        instance.add_dynamic_partitions(SCENE_PARTITIONS_NAME, HIGHWAY_SCENES)
        yield instance


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory: pytest.TempPathFactory, highway_env, persistent_instance) -> Path:
    """The highway scenes through the perception job in this process: what the cluster must reproduce."""
    store = tmp_path_factory.mktemp("reference")
    job = perception_job(str(store))
    for scene in HIGHWAY_SCENES:
        assert job.execute_in_process(partition_key=scene, instance=persistent_instance, run_config=RUN_CONFIG).success
    return store


def execute_partition_run(instance_ref, job_kwargs: dict, scene: str) -> tuple[str, list[str]]:
    """One scene's run, in its own process as a run worker would do it: run id and failure messages."""
    recon = dg.build_reconstructable_job(__name__, "perception_job", reconstructable_kwargs=job_kwargs)
    with dg.DagsterInstance.from_ref(instance_ref) as instance, dg.execute_job(
        recon, instance=instance, run_config=RUN_CONFIG, tags={"dagster/partition": scene}
    ) as result:
        return result.run_id, [e.message or e.event_type_value for e in result.all_events if e.is_failure]


@pytest.fixture(scope="module")
def run_workers(highway_env) -> Iterator[ProcessPoolExecutor]:
    """Processes that orchestrate runs, as a deployment's run workers do: Dagster's run setup
    reconfigures ``logging`` and deadlocks when runs share a process, so runs never use threads."""
    with ProcessPoolExecutor(len(HIGHWAY_SCENES), mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def backfill(pool: ProcessPoolExecutor, instance: dg.DagsterInstance, scenes: list[str], **job_kwargs) -> list[str]:
    """One Dagster run per scene, launched together (a backfill with enough run slots)."""
    n = len(scenes)
    results = list(pool.map(execute_partition_run, [instance.get_ref()] * n, [job_kwargs] * n, scenes))
    failures = {scene: errors for scene, (_, errors) in zip(scenes, results) if errors}
    assert not failures, f"runs failed: {failures}"
    return [run_id for run_id, _ in results]


def step_pids(instance: dg.DagsterInstance, run_id: str) -> dict[str, int]:
    """Step key → pid of the process that reported its success."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS).records
    return {r.event_log_entry.dagster_event.step_key: r.event_log_entry.dagster_event.pid for r in records}


def assert_same_tables(store: Path, reference: Path) -> None:
    """Every perception table of every scene equals the in-process run's, value for value."""
    for table in PERCEPTION_TABLES:
        for scene in HIGHWAY_SCENES:
            got, want = pq.read_table(store / table / f"{scene}.parquet"), pq.read_table(reference / table / f"{scene}.parquet")
            assert want.num_rows > 0, f"{table}/{scene}: the reference is empty, the comparison would prove nothing"
            assert got.equals(want), f"{table}/{scene} differs from the in-process run"


@pytest.mark.slow
def test_backfill_runs_steps_on_both_dask_workers(
    dask_cluster, persistent_instance, reference_store, run_workers, tmp_path
) -> None:
    store = tmp_path / "store"
    run_ids = backfill(
        run_workers, persistent_instance, HIGHWAY_SCENES, store=str(store), executor="dask", scheduler=dask_cluster.address
    )

    assert_same_tables(store, reference_store)
    pids = [step_pids(persistent_instance, r) for r in run_ids]
    assert all(set(p) == {"frames", "detections", "crops", "embeddings"} for p in pids)
    used = {pid for p in pids for pid in p.values()}
    assert used == set(dask_cluster.pids.values()), f"steps ran in {used}, workers are {dask_cluster.pids}"
    assert os.getpid() not in used


@pytest.mark.slow
def test_gpu_routing_sends_model_steps_to_the_gpu_worker(
    dask_cluster, persistent_instance, reference_store, run_workers, tmp_path
) -> None:
    store = tmp_path / "store"
    run_ids = backfill(
        run_workers, persistent_instance, HIGHWAY_SCENES, store=str(store), executor="dask",
        scheduler=dask_cluster.address, gpu_routing=True,
    )

    assert_same_tables(store, reference_store)
    for run_id in run_ids:
        pids = step_pids(persistent_instance, run_id)
        assert {pids[s] for s in MODEL_STEPS} == {dask_cluster.pids["gpu"]}, pids
        assert set(pids.values()) <= set(dask_cluster.pids.values())
