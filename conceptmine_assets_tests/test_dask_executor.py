"""Guards of the one module that depends on Dagster internals
(``conceptmine_assets/orchestration/dask_executor.py``) and of the rule that no other module does.

When a test here fails after an upgrade of dagster or dagster-dask, read the module's docstring:
either adapt the copy to the new upstream executor, or drop it if upstream fixed dagster#21418.
"""

import inspect
import re

import dagster as dg
import pytest
from dagster_dask import executor as upstream

from conceptmine_assets.orchestration import dask_executor
from conceptmine_assets_tests.helpers import REPO

def test_no_module_imports_dagster_internals():
    """``dagster._…`` is private API: no module of the package, its tests or the benchmark imports
    it (not even dask_executor.py, which relies only on the executor contract tested below)."""
    pattern = re.compile(r"^\s*(from|import)\s+dagster\._", re.MULTILINE)
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("conceptmine_assets", "conceptmine_assets_tests", "bench")
        for path in sorted((REPO / folder).rglob("*.py"))
        if pattern.search(path.read_text())
    ]
    assert offenders == []


def test_upstream_still_keys_tasks_by_job_and_step_only():
    """The copy exists because upstream's task key ``<job>.<step>`` is shared by concurrent runs
    (dagster#21418). If upstream changes it, check whether the issue is fixed and drop the copy."""
    source = inspect.getsource(upstream.DaskExecutor.execute)
    assert 'dask_task_name = f"{job_name}.{step.key}"' in source, (
        f"dagster-dask's DaskExecutor.execute changed since {dask_executor.UPSTREAM}: "
        "see conceptmine_assets/orchestration/dask_executor.py"
    )


def test_upstream_worker_function_takes_what_the_copy_passes():
    """The copy calls upstream's worker-side function with these arguments, by name."""
    names = list(inspect.signature(upstream.query_on_dask_worker).parameters)
    assert names == ["dependencies", "recon_job", "dagster_run", "run_config", "step_keys", "instance_ref",
                     "known_state"], f"query_on_dask_worker changed since {dask_executor.UPSTREAM}"


def test_upstream_executor_still_has_the_contract_the_copy_overrides():
    """The copy subclasses DaskExecutor for its ``retries`` and replaces ``execute``; Dagster's
    ``Executor`` must still have exactly these abstract members."""
    assert issubclass(upstream.DaskExecutor, dg.Executor)
    assert dg.Executor.__abstractmethods__ == frozenset({"execute", "retries"})
    assert list(inspect.signature(dg.Executor.execute).parameters) == ["self", "plan_context", "execution_plan"]
    assert upstream.DaskExecutor("existing", {"address": "x"}).retries is not None
    assert upstream.get_dask_resource_requirements({upstream.DASK_RESOURCE_REQUIREMENTS_KEY: '{"GPU": 1}'}) == {"GPU": 1}


@pytest.mark.parametrize(
    ("tags", "config", "needs"),
    [
        ({}, {}, {}),
        ({}, {"detections": {"GPU": 1}}, {"GPU": 1}),
        ({"dagster-dask/resource_requirements": '{"VLM": 1}'}, {}, {"VLM": 1}),
        ({"dagster-dask/resource_requirements": '{"GPU": 2}'}, {"detections": {"GPU": 1}}, {"GPU": 1}),
    ],
)
def test_step_needs_merge_the_op_tag_and_the_executor_config(tags, config, needs):
    class Step:
        key = "detections"

    step = Step()
    step.tags = tags
    assert dask_executor.RunScopedDaskExecutor("tcp://x:1", config).needs(step) == needs
