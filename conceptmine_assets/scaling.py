"""Scaling out: which executor runs a job's steps, and which steps need a GPU worker.

Three executors, chosen by configuration (``CONCEPTMINE_EXECUTOR``):

| name | where steps run | extra package |
|---|---|---|
| ``multiprocess`` (default) | one process per step on the machine of the run (Dagster's default executor) | none |
| ``dask`` | on the workers of an existing ``dask.distributed`` scheduler (``CONCEPTMINE_DASK_SCHEDULER``) | ``dagster-dask`` |
| ``k8s`` | one Kubernetes Job per step (``dagster_k8s.k8s_job_executor``) | ``dagster-k8s`` |

With GPU routing on (``CONCEPTMINE_GPU_ROUTING``), the steps that run a model (those needing the
``detector``, ``embedder`` or ``captioner`` resource) get op tags that send them to GPU workers:
dask workers started with ``--resources GPU=1``, or Kubernetes nodes with ``nvidia.com/gpu``.
Light steps (frames, crops, outlier flags, global SQL) stay on CPU workers.

Dagster has no public API to add op tags to an existing ``AssetsDefinition`` (dagster issue
#20123), so :func:`with_op_tags` rebuilds the op the way ``AssetsDefinition.with_attributes``
rebuilds its specs.
"""

import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import dagster as dg
from dagster._core.execution.retries import RetryMode

from conceptmine_assets.errors import ConceptmineError

EXECUTORS: tuple[str, ...] = ("multiprocess", "dask", "k8s")
# Steps needing one of these resources run a model: detection, embedding, captioning, concept scores.
MODEL_RESOURCE_KEYS: frozenset[str] = frozenset({"detector", "embedder", "captioner"})

DASK_RESOURCES_TAG = "dagster-dask/resource_requirements"  # read by dagster_dask's executor
K8S_CONFIG_TAG = "dagster-k8s/config"  # read by dagster_k8s's k8s_job_executor
GPU_NODE_SELECTOR: dict[str, str] = {"nvidia.com/gpu.present": "true"}  # label of NVIDIA GPU feature discovery
GPU_TOLERATIONS: list[dict[str, str]] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def build_executor(name: str, scheduler_address: str | None = None) -> dg.ExecutorDefinition:
    """The executor called ``name``; ``dask`` connects to the scheduler at ``scheduler_address``."""
    if name == "multiprocess":
        return dg.multi_or_in_process_executor  # what Dagster uses when none is set: nothing changes
    if name == "dask":
        if not scheduler_address:
            raise ConceptmineError(
                "CONCEPTMINE_EXECUTOR=dask needs CONCEPTMINE_DASK_SCHEDULER, the address of a running "
                "dask scheduler (e.g. tcp://dask-scheduler:8786)"
            )
        return dask_executor.configured({"cluster": {"existing": {"address": scheduler_address}}}, name="dask")
    if name == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError as exc:
            raise ConceptmineError("CONCEPTMINE_EXECUTOR=k8s needs the dagster-k8s package") from exc
        return k8s_job_executor
    raise ConceptmineError(f"CONCEPTMINE_EXECUTOR={name!r}; choose one of {EXECUTORS}")


def gpu_tags(executor: str, gpus: int = 1) -> dict[str, str]:
    """Op tags that put a step on a GPU worker of ``executor`` (values JSON, as op tags are strings)."""
    if executor == "dask":
        return {DASK_RESOURCES_TAG: json.dumps({"GPU": gpus})}
    if executor == "k8s":
        config = {
            "container_config": {"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}},
            "pod_spec_config": {"node_selector": GPU_NODE_SELECTOR, "tolerations": GPU_TOLERATIONS},
        }
        return {K8S_CONFIG_TAG: json.dumps(config)}
    if executor == "multiprocess":
        raise ConceptmineError(
            "GPU routing needs CONCEPTMINE_EXECUTOR=dask or k8s: the multiprocess executor runs every "
            "step on the machine of the run"
        )
    raise ConceptmineError(f"unknown executor {executor!r}; choose one of {EXECUTORS}")


def needs_model(asset: Any) -> bool:
    """Whether ``asset`` is an executable single-op asset whose op uses a model resource."""
    return (
        isinstance(asset, dg.AssetsDefinition)
        and asset.is_executable
        and isinstance(asset.node_def, dg.OpDefinition)
        and bool(asset.required_resource_keys & MODEL_RESOURCE_KEYS)
    )


def with_op_tags(asset: dg.AssetsDefinition, tags: Mapping[str, str]) -> dg.AssetsDefinition:
    """A copy of the single-op ``asset`` whose op carries ``tags`` as well (new keys win)."""
    op = asset.op
    tagged = dg.OpDefinition.dagster_internal_init(
        compute_fn=op.compute_fn,
        name=op.name,
        ins={d.name: dg.In.from_definition(d) for d in op.input_defs},
        outs={d.name: dg.Out.from_definition(d) for d in op.output_defs},
        description=op.description,
        config_schema=op.config_schema,
        required_resource_keys=op.required_resource_keys,
        tags={**op.tags, **tags},
        version=None,
        retry_policy=op.retry_policy,
        code_version=op._version,  # no public getter besides the deprecated `version`
        pool=op.pool,
    )
    return dg.AssetsDefinition.dagster_internal_init(**{**asset.get_attributes_dict(), "node_def": tagged})


def route_model_steps(assets: Sequence[Any], executor: str) -> list[Any]:
    """``assets`` with :func:`gpu_tags` on every model step; the others pass through unchanged."""
    tags = gpu_tags(executor)
    return [with_op_tags(a, tags) if needs_model(a) else a for a in assets]


def scale(
    assets: Sequence[Any], executor: str, scheduler_address: str | None = None, gpu_routing: bool = False
) -> tuple[list[Any], dg.ExecutorDefinition]:
    """A deployment's assets (model steps GPU-tagged when ``gpu_routing``) and its executor."""
    executor_def = build_executor(executor, scheduler_address)
    return (route_model_steps(assets, executor) if gpu_routing else list(assets)), executor_def


def unmet_resources(
    needs: Mapping[str, Mapping[str, float]], workers: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, float]]:
    """Steps whose dask resource needs (``{"GPU": 1}``) no single worker of ``workers`` (the
    scheduler's ``workers`` info) offers."""
    offers = [w.get("resources") or {} for w in workers.values()]
    return {
        step: dict(need)
        for step, need in needs.items()
        if need and not any(all(offer.get(k, 0) >= v for k, v in need.items()) for offer in offers)
    }


class RunScopedDaskExecutor(dg.Executor):
    """dagster_dask's executor on an existing scheduler, with task keys unique per run.

    Differences from ``dagster_dask.DaskExecutor`` 0.29 (whose worker-side function it uses):
    - upstream keys a step's task ``<job>.<step>``; two concurrent runs of one job (a backfill)
      then share a key on the scheduler and the later run gets the earlier run's result
      (dagster issue #21418). Here the key is ``<job>.<run_id>.<step>``.
    - upstream passes the run as a positional task argument; distributed 2026.x walks those for
      futures and fails on a partitioned run's records. Here they are bound in a partial.
    - a step needing a resource that no worker offers fails the run at once instead of waiting.
    """

    def __init__(self, address: str):
        self.address = address

    @property
    def retries(self) -> RetryMode:
        return RetryMode.DISABLED  # as upstream: dask does not re-run failed steps

    def execute(self, plan_context, execution_plan) -> Iterator[dg.DagsterEvent]:
        import dask.distributed
        from dagster._core.errors import raise_execution_interrupts
        from dagster._utils import iterate_with_context
        from dagster_dask.executor import get_dask_resource_requirements, query_on_dask_worker

        if not plan_context.instance.is_persistent:
            raise ConceptmineError("the dask executor needs a persistent Dagster instance (set DAGSTER_HOME)")
        run = plan_context.dagster_run
        levels = execution_plan.get_steps_to_execute_by_level()
        with dask.distributed.Client(self.address) as client:
            needs = {s.key: get_dask_resource_requirements(s.tags) for level in levels for s in level}
            unmet = unmet_resources(needs, client.scheduler_info()["workers"])
            if unmet:
                raise ConceptmineError(
                    f"no worker of the dask cluster offers the resources of steps {unmet} (start GPU "
                    "workers with `dask worker --resources GPU=1`, or turn GPU routing off); "
                    "dask would wait for one forever"
                )
            futures: dict[str, Any] = {}
            for level in levels:
                for step in level:
                    upstream = [futures[k] for i in step.step_inputs for k in i.dependency_keys]
                    # Dagster's objects ride in the partial: dask walks positional arguments looking
                    # for futures and fails on Dagster records that forbid iteration (partitioned runs).
                    task = functools.partial(
                        query_on_dask_worker,
                        recon_job=plan_context.reconstructable_job,
                        dagster_run=run,
                        run_config=plan_context.run_config,
                        step_keys=[step.key],
                        instance_ref=plan_context.instance.get_ref(),
                        known_state=execution_plan.known_state,
                    )
                    futures[step.key] = client.submit(
                        task,
                        upstream,
                        key=f"{plan_context.job_name}.{run.run_id}.{step.key}",
                        resources=needs[step.key],
                    )
            done = dask.distributed.as_completed(list(futures.values()), with_results=True)
            for _, events in iterate_with_context(raise_execution_interrupts, done):
                yield from events


@dg.executor(
    name="dask",
    requirements=dg.multiple_process_executor_requirements(),
    config_schema={
        "cluster": dg.Field(
            dg.Selector(
                {
                    # dagster_dask's config shape; only an existing scheduler is supported here.
                    "existing": dg.Field({"address": dg.StringSource}, description="Connect to a running scheduler."),
                }
            )
        )
    },
)
def dask_executor(init_context: dg.InitExecutorContext) -> RunScopedDaskExecutor:
    """Steps as tasks on a ``dask.distributed`` cluster, keyed per run (see RunScopedDaskExecutor)."""
    return RunScopedDaskExecutor(init_context.executor_config["cluster"]["existing"]["address"])
