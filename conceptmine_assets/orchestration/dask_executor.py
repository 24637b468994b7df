"""A patched copy of dagster-dask's executor: the one place that depends on Dagster's executor internals.

Copied from ``dagster_dask.executor.DaskExecutor.execute`` of **dagster-dask 0.29.27** (dagster
1.13.27) and changed in three ways:

1. Task keys are unique per run: upstream keys a step's task ``<job>.<step>``, so two concurrent
   runs of one job (a backfill) share a key on the scheduler and the later run receives the
   earlier run's result — https://github.com/dagster-io/dagster/issues/21418. Here the key is
   ``<job>.<run_id>.<step>``.
2. Dagster's objects ride in a ``functools.partial``: upstream passes the run as positional task
   arguments, which distributed 2026.x walks looking for futures and fails on a partitioned run's
   records.
3. GPU routing from the executor's config (``step_resources``, step key → dask resources, merged
   over upstream's ``dagster-dask/resource_requirements`` op tag), so no op has to be rebuilt to
   carry a tag; and a step needing resources that no worker offers fails the run at once instead
   of waiting forever.

It subclasses the public ``DaskExecutor`` (its ``retries``) and uses the module's public helpers
(``query_on_dask_worker``, ``get_dask_resource_requirements``); from Dagster it needs only
``dg.Executor``'s ``execute(plan_context, execution_plan)`` contract and the plan's steps.
``conceptmine_assets_tests/test_dask_executor.py`` fails when the installed dagster-dask changes
what this copy relies on (or fixes #21418, when this module should go).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
from dagster_dask.executor import DaskExecutor, get_dask_resource_requirements, query_on_dask_worker

from conceptmine_assets.errors import ConceptmineError

UPSTREAM = "dagster-dask 0.29.27 (dagster_dask/executor.py, DaskExecutor.execute)"


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


def _interruptible(iterator: Iterator[Any]) -> Iterator[Any]:
    """``iterator``'s items, allowing Dagster's run interrupts only while waiting for the next."""
    while True:
        with dg.raise_execution_interrupts():
            try:
                item = next(iterator)
            except StopIteration:
                return
        yield item


class RunScopedDaskExecutor(DaskExecutor):
    """dagster_dask's executor on an existing scheduler, task keys unique per run (see the module)."""

    def __init__(self, address: str, step_resources: Mapping[str, Mapping[str, float]] | None = None):
        super().__init__("existing", {"address": address})
        self.address = address
        self.step_resources = {k: dict(v) for k, v in (step_resources or {}).items()}

    def needs(self, step) -> dict[str, float]:
        return {**get_dask_resource_requirements(step.tags), **self.step_resources.get(step.key, {})}

    def execute(self, plan_context, execution_plan) -> Iterator[dg.DagsterEvent]:
        import dask.distributed

        if not plan_context.instance.is_persistent:
            raise ConceptmineError("the dask executor needs a persistent Dagster instance (set DAGSTER_HOME)")
        levels = execution_plan.get_steps_to_execute_by_level()
        with dask.distributed.Client(self.address) as client:
            needs = {s.key: self.needs(s) for level in levels for s in level}
            unmet = unmet_resources(needs, client.scheduler_info()["workers"])
            if unmet:
                raise ConceptmineError(
                    f"no worker of the dask cluster offers the resources of steps {unmet} (start GPU "
                    "workers with `dask worker --resources GPU=1`, or turn GPU routing off); "
                    "dask would wait for one forever"
                )
            futures = self._submit(client, plan_context, execution_plan, levels, needs)
            done = dask.distributed.as_completed(list(futures.values()), with_results=True)
            for _, events in _interruptible(iter(done)):
                yield from events

    @staticmethod
    def _submit(client, plan_context, execution_plan, levels, needs) -> dict[str, Any]:
        """One dask task per step, after the tasks of its upstream steps; step key → future."""
        run = plan_context.dagster_run
        futures: dict[str, Any] = {}
        for level in levels:
            for step in level:
                upstream = [futures[k] for i in step.step_inputs for k in i.dependency_keys]
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
                    task, upstream, key=f"{plan_context.job_name}.{run.run_id}.{step.key}", resources=needs[step.key]
                )
        return futures


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
        ),
        "step_resources": dg.Field(
            dg.Permissive(),
            default_value={},
            is_required=False,
            description='Dask resources per step key, e.g. {"detections": {"GPU": 1}} (GPU routing).',
        ),
    },
)
def dask_executor(init_context: dg.InitExecutorContext) -> RunScopedDaskExecutor:
    """Steps as tasks on a ``dask.distributed`` cluster, keyed per run (see RunScopedDaskExecutor)."""
    config = init_context.executor_config
    return RunScopedDaskExecutor(config["cluster"]["existing"]["address"], config.get("step_resources"))
