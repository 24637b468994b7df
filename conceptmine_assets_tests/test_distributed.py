"""Scaling out: executor selection, GPU routing tags, and a real backfill on a dask cluster.

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
import yaml

from conceptmine_assets import scaling
from conceptmine_assets.dask_executor import unmet_resources
from conceptmine_assets.assets import crops, detections, embeddings, frames
from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.partitions import SCENE_PARTITIONS_NAME
from conceptmine_assets_tests.helpers import HIGHWAY, HIGHWAY_SCENES, REPO, YOLO_TFLITE, require

PERCEPTION_MODULES = [frames, detections, crops, embeddings]
PERCEPTION_TABLES = ["frames", "detections", "crops", "embeddings"]
MODEL_STEPS = {"detections", "embeddings"}
MODEL_ASSETS = {"detections", "embeddings", "captions", "concept_scores", "embedding_clusters"}
RUN_CONFIG = {"ops": {"frames": {"config": {"cameras": ["CAM_FRONT"]}}}}
DEPLOY = REPO / "deploy"


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


# --- executor selection and tags (fast) -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "address", "executor_name"),
    [("multiprocess", None, "multi_or_in_process_executor"), ("dask", "tcp://127.0.0.1:8786", "dask")],
)
def test_build_executor_by_name(name: str, address: str | None, executor_name: str) -> None:
    assert scaling.build_executor(name, address).name == executor_name


def test_dask_executor_is_configured_with_the_scheduler_address() -> None:
    executor = scaling.build_executor("dask", "tcp://10.0.0.5:8786")
    resolved = executor.config_schema.resolve_config({})
    assert resolved.value["config"] == {"cluster": {"existing": {"address": "tcp://10.0.0.5:8786"}}, "step_resources": {}}


@pytest.mark.parametrize(
    ("name", "address", "message"),
    [("dask", None, "CONCEPTMINE_DASK_SCHEDULER"), ("dask", "", "CONCEPTMINE_DASK_SCHEDULER"), ("spark", None, "spark")],
)
def test_build_executor_rejects_bad_configuration(name: str, address: str | None, message: str) -> None:
    with pytest.raises(ConceptmineError, match=message):
        scaling.build_executor(name, address)


@pytest.mark.parametrize(
    ("needs", "workers", "unmet"),
    [
        ({"frames": {}, "detections": {"GPU": 1}}, {"a": {"resources": {"GPU": 1}}, "b": {"resources": {}}}, {}),
        ({"frames": {}, "detections": {"GPU": 1}}, {"a": {"resources": {}}, "b": {}}, {"detections": {"GPU": 1}}),
        ({"detections": {"GPU": 2}}, {"a": {"resources": {"GPU": 1}}, "b": {"resources": {"GPU": 1}}}, {"detections": {"GPU": 2}}),
        ({"frames": {}}, {}, {}),
        ({"captions": {"GPU": 1, "VLM": 1}}, {"a": {"resources": {"GPU": 1}}, "b": {"resources": {"VLM": 1}}}, {"captions": {"GPU": 1, "VLM": 1}}),
    ],
)
def test_unmet_resources(needs: dict, workers: dict, unmet: dict) -> None:
    assert unmet_resources(needs, workers) == unmet


def test_gpu_routing_refuses_the_multiprocess_executor() -> None:
    with pytest.raises(ConceptmineError, match="dask or k8s"):
        scaling.build_executor("multiprocess", gpu_steps=["detections"])


def test_model_steps_are_exactly_the_model_assets() -> None:
    from conceptmine_assets.definitions import ASSET_MODULES

    assets = dg.load_assets_from_modules(ASSET_MODULES)
    assert scaling.model_steps(assets) == sorted(MODEL_ASSETS)


def executor_config(defs: dg.Definitions, job: str) -> dict:
    """The resolved executor config of ``job`` (the executor is configured by ``scale``)."""
    return defs.resolve_job_def(job).executor_def.config_schema.resolve_config({}).value["config"]


@pytest.mark.parametrize("gpu_routing", [False, True])
def test_scale_wires_into_the_full_definitions(gpu_routing: bool, tmp_path: Path) -> None:
    """Every job of the project resolves with the dask executor, which sends exactly the model
    steps to GPU workers; the assets are the project's, unchanged."""
    from conceptmine_assets.definitions import build_definitions
    from conceptmine_assets.settings import Settings

    base = build_definitions(Settings(store=str(tmp_path)))
    assets, executor = scaling.scale(list(base.assets), "dask", "tcp://127.0.0.1:8786", gpu_routing)
    assert assets == list(base.assets)
    defs = dg.Definitions(
        assets=assets, asset_checks=base.asset_checks, resources=base.resources, jobs=base.jobs,
        sensors=base.sensors, executor=executor,
    )
    dg.Definitions.validate_loadable(defs)
    for job in defs.resolve_all_job_defs():
        assert job.executor_def.name == "dask"
    routed = executor_config(defs, "perception_job")["step_resources"]
    assert routed == ({step: {"GPU": 1} for step in MODEL_ASSETS} if gpu_routing else {})


def test_k8s_gpu_config_builds_a_gpu_pod() -> None:
    """The per-step config, read by dagster-k8s itself, yields a step Job with a GPU limit on a GPU node."""
    k8s_job = pytest.importorskip("dagster_k8s.job")
    executor = scaling.build_executor("k8s", gpu_steps=["detections"])
    per_step = executor.config_schema.resolve_config({}).value["config"]["per_step_k8s_config"]
    assert set(per_step) == {"detections"}
    user_config = k8s_job.UserDefinedDagsterK8sConfig.from_dict(per_step["detections"])
    job_config = k8s_job.DagsterK8sJobConfig(
        job_image="conceptmine:test", dagster_home="/opt/dagster/dagster_home", instance_config_map="dagster-instance"
    )
    job = k8s_job.construct_dagster_k8s_job(job_config, ["dagster", "api", "execute_step"], "step-detections", user_config)
    pod = job.spec.template.spec
    assert pod.containers[0].resources.limits == {"nvidia.com/gpu": "1"}
    assert pod.node_selector == scaling.GPU_NODE_SELECTOR
    assert [t.key for t in pod.tolerations] == ["nvidia.com/gpu"]


def test_k8s_executor_is_dagster_k8s_job_executor() -> None:
    pytest.importorskip("dagster_k8s")
    assert scaling.build_executor("k8s").name == "k8s"


@pytest.mark.parametrize("path", sorted(p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*.yaml")))
def test_deploy_yaml_parses(path: str) -> None:
    """Syntax only: the Kubernetes configuration is not run against a cluster here."""
    documents = [d for d in yaml.safe_load_all((DEPLOY / path).read_text()) if d is not None]
    assert documents and all(isinstance(d, dict) for d in documents)


def test_helm_values_route_model_steps_and_use_s3() -> None:
    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    deployment = values["dagster-user-deployments"]["deployments"][0]
    env = {e["name"]: e for e in deployment["env"]}
    assert env["CONCEPTMINE_EXECUTOR"]["value"] == "k8s"
    assert env["CONCEPTMINE_GPU_ROUTING"]["value"] == "1"
    assert env["CONCEPTMINE_STORE"]["value"].startswith("s3://")
    assert "secretKeyRef" in env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]


# --- a real dask cluster (slow) -----------------------------------------------------------------


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
