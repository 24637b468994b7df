"""Scaling out: which executor runs a job's steps, and which steps need a GPU worker.

Three executors, chosen by configuration (``CONCEPTMINE_EXECUTOR``):

| name | where steps run | extra package |
|---|---|---|
| ``multiprocess`` (default) | one process per step on the machine of the run (Dagster's default executor) | none |
| ``dask`` | on the workers of an existing ``dask.distributed`` scheduler (``CONCEPTMINE_DASK_SCHEDULER``) | ``dagster-dask`` |
| ``k8s`` | one Kubernetes Job per step (``dagster_k8s.k8s_job_executor``) | ``dagster-k8s`` |

With GPU routing on (``CONCEPTMINE_GPU_ROUTING``), the steps that run a model (those needing the
``detector``, ``embedder`` or ``captioner`` resource) are sent to GPU workers by the executor's own
per-step configuration — dask workers started with ``--resources GPU=1`` (``step_resources`` of
:mod:`conceptmine_assets.orchestration.dask_executor`), or Kubernetes nodes with ``nvidia.com/gpu``
(``per_step_k8s_config`` of ``dagster_k8s.k8s_job_executor``). The assets themselves are not
changed. Light steps (frames, crops, outlier flags, global SQL) stay on CPU workers.

Public Dagster APIs only; the patched dask executor, which cannot avoid Dagster's executor
internals, is isolated in :mod:`conceptmine_assets.orchestration.dask_executor`.
"""

from collections.abc import Sequence
from typing import Any

import dagster as dg

from conceptmine_assets.errors import ConceptmineError

EXECUTORS: tuple[str, ...] = ("multiprocess", "dask", "k8s")
# Steps needing one of these resources run a model: detection, embedding, captioning, concept scores.
MODEL_RESOURCE_KEYS: frozenset[str] = frozenset({"detector", "embedder", "captioner"})

GPU_DASK_RESOURCES: dict[str, float] = {"GPU": 1}  # what GPU dask workers advertise (--resources GPU=1)
GPU_NODE_SELECTOR: dict[str, str] = {"nvidia.com/gpu.present": "true"}  # label of NVIDIA GPU feature discovery
GPU_TOLERATIONS: list[dict[str, str]] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def gpu_k8s_config(gpus: int = 1) -> dict[str, Any]:
    """The per-step Kubernetes config of a model step: a GPU limit, on a GPU node."""
    return {
        "container_config": {"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}},
        "pod_spec_config": {"node_selector": GPU_NODE_SELECTOR, "tolerations": GPU_TOLERATIONS},
    }


def needs_model(asset: Any) -> bool:
    """Whether ``asset`` is an executable single-op asset whose op uses a model resource."""
    return (
        isinstance(asset, dg.AssetsDefinition)
        and asset.is_executable
        and isinstance(asset.node_def, dg.OpDefinition)
        and bool(asset.required_resource_keys & MODEL_RESOURCE_KEYS)
    )


def model_steps(assets: Sequence[Any]) -> list[str]:
    """Step keys (op names) of the assets that run a model."""
    return sorted(a.op.name for a in assets if needs_model(a))


def build_executor(name: str, scheduler_address: str | None = None, gpu_steps: Sequence[str] = ()) -> dg.ExecutorDefinition:
    """The executor called ``name`` (``dask`` on the scheduler at ``scheduler_address``), sending
    the steps ``gpu_steps`` to GPU workers."""
    if name == "multiprocess":
        if gpu_steps:
            raise ConceptmineError(
                "GPU routing needs CONCEPTMINE_EXECUTOR=dask or k8s: the multiprocess executor runs every "
                "step on the machine of the run"
            )
        return dg.multi_or_in_process_executor  # what Dagster uses when none is set: nothing changes
    if name == "dask":
        if not scheduler_address:
            raise ConceptmineError(
                "CONCEPTMINE_EXECUTOR=dask needs CONCEPTMINE_DASK_SCHEDULER, the address of a running "
                "dask scheduler (e.g. tcp://dask-scheduler:8786)"
            )
        from conceptmine_assets.orchestration.dask_executor import dask_executor  # dask.distributed: only when chosen

        config = {"cluster": {"existing": {"address": scheduler_address}},
                  "step_resources": {step: GPU_DASK_RESOURCES for step in gpu_steps}}
        return dask_executor.configured(config, name="dask")
    if name == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError as exc:
            raise ConceptmineError("CONCEPTMINE_EXECUTOR=k8s needs the dagster-k8s package") from exc
        if not gpu_steps:
            return k8s_job_executor
        return k8s_job_executor.configured(
            {"per_step_k8s_config": {step: gpu_k8s_config() for step in gpu_steps}}, name="k8s"
        )
    raise ConceptmineError(f"CONCEPTMINE_EXECUTOR={name!r}; choose one of {EXECUTORS}")


def scale(
    assets: Sequence[Any], executor: str, scheduler_address: str | None = None, gpu_routing: bool = False
) -> tuple[list[Any], dg.ExecutorDefinition]:
    """A deployment's assets (unchanged) and its executor, which sends the model steps to GPU
    workers when ``gpu_routing``."""
    gpu_steps = model_steps(assets) if gpu_routing else []
    return list(assets), build_executor(executor, scheduler_address, gpu_steps)
