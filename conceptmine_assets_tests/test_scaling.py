"""Scaling out without a cluster: executor selection, GPU routing config, the Kubernetes files.

The same executors on a real dask cluster: test_distributed.py.
"""

from pathlib import Path

import dagster as dg
import pytest
import yaml

from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.orchestration import scaling
from conceptmine_assets.orchestration.dask_executor import unmet_resources
from conceptmine_assets_tests.helpers import REPO

MODEL_ASSETS = {"detections", "embeddings", "captions", "concept_scores", "embedding_clusters", "search_index"}
DEPLOY = REPO / "deploy"



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
