"""``conceptmine run``: materialise only what is missing or stale, stage by stage, as recorded runs.

Each stage of :data:`~conceptmine_assets.definitions.PIPELINE` is planned just before it runs
(:mod:`conceptmine_assets.cli.staleness`), so a stage sees what the previous ones wrote. Scenes that
need the same assets are cut into consecutive partition ranges of at most the stage's backfill
policy size (8 scenes per run for the model stages), each one Dagster run of the stage's job
(``dg.execute_job`` of a reconstructable job: the run has its code origin and is tagged with the
code location's repository label, so the UI lists it under its job). A stage whose assets do
not all take several scenes per run gets one run per scene. No run config sets stage settings:
the values come from the config file, as for a run launched from the UI.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dagster as dg

from conceptmine_assets.cli.interrupts import Interrupted
from conceptmine_assets.cli.progress import Progress
from conceptmine_assets.cli.staleness import Records, graph_nodes, plan_stage
from conceptmine_assets.cli.store_check import report_damaged, store_files
from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.partitions import SCENE_PARTITIONS_NAME

if TYPE_CHECKING:
    from conceptmine_assets.definitions import Stage

LOCATION_NAME = "conceptmine"  # workspace.yaml / pyproject's code_location_name
# Workaround for dagster#17707 (open: "runs executed from the CLI don't show up in Runs tab of
# job page"): the UI's job pages filter runs by this tag, which Dagster sets only on runs launched
# through a workspace; no public API sets it for dg.execute_job. Relied on, and checked through
# the webserver, by test_browser.py::test_runs_of_conceptmine_run_are_listed_under_their_jobs.
REPOSITORY_LABEL_TAG = ".dagster/repository"
REPOSITORY_LABEL = f"__repository__@{LOCATION_NAME}"
RANGE_START_TAG, RANGE_END_TAG = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
# The terminal gets one line per problem (cli/entry.py) and one line counting the runs' warnings
# (quiet.py): Dagster's console logger stays silent but for --debug (warnings and errors with
# their stack traces) and --verbose (everything). The warnings stay in each run's event log.
CONSOLE_LEVEL = {"level": "CRITICAL"}
WRITE_HINT = "nothing half-written was kept; free space (or fix the mount) and re-run: it resumes"
VERBOSE_ENV = "CONCEPTMINE_VERBOSE"  # "1": set by `conceptmine run --verbose` (quiet.py)


class RunFailed(ConceptmineError):
    """A Dagster run of ``conceptmine run`` failed."""


@functools.cache
def _definitions(settings_json: str) -> dg.Definitions:
    from conceptmine_assets.definitions import build_definitions
    from conceptmine_assets.settings import Settings

    return build_definitions(Settings.model_validate_json(settings_json))


def definitions_for(settings) -> dg.Definitions:
    """The deployment's definitions for ``settings``, built once per process."""
    return _definitions(settings.model_dump_json())


def job_named(name: str) -> dg.JobDefinition:
    """The deployed job ``name`` (what a run process reconstructs: settings from env and file)."""
    from conceptmine_assets.settings import load_settings

    return definitions_for(load_settings()).resolve_job_def(name)


@dataclass(frozen=True)
class Run:
    """One run to launch: a job, the assets selected in it, its scenes (empty: unpartitioned)."""

    job: str
    assets: tuple[str, ...]
    scenes: tuple[str, ...]

    def tags(self) -> dict[str, str]:
        from conceptmine_assets.cli.runlock import run_tags

        tags = {REPOSITORY_LABEL_TAG: REPOSITORY_LABEL, "conceptmine/launched_by": "conceptmine run", **run_tags()}
        if len(self.scenes) == 1:
            tags["dagster/partition"] = self.scenes[0]
        elif self.scenes:
            tags[RANGE_START_TAG], tags[RANGE_END_TAG] = self.scenes[0], self.scenes[-1]
        return tags


def batch(job: str, planned: dict[str, list[str | None]], order: list[str], per_run: int) -> list[Run]:
    """The runs of one stage: scenes needing the same assets, consecutive in ``order`` (every
    registered partition: a run's range covers all partitions between its ends), at most
    ``per_run`` per run; unpartitioned assets in one run after them."""
    runs: list[Run] = []
    globals_ = tuple(a for a, keys in planned.items() if keys == [None])
    wanted = {s: tuple(a for a, keys in planned.items() if s in keys) for s in order}
    current: list[str] = []
    for scene in [*order, None]:
        assets = wanted.get(scene, ()) if scene else ()
        if current and (not assets or assets != wanted[current[0]] or len(current) >= per_run):
            runs.append(Run(job, wanted[current[0]], tuple(current)))
            current = []
        if assets:
            current.append(scene)
    if globals_:
        runs.append(Run(job, globals_, ()))
    return runs


def scenes_per_run(defs: dg.Definitions, assets: list[str]) -> int:
    """The partitions one run may take for these assets: the smallest backfill policy among the
    partitioned ones (1 where any has none or a single-partition policy)."""
    graph = defs.resolve_asset_graph()
    sizes = []
    for name in assets:
        node = graph.get(dg.AssetKey(name))
        if node.partitions_def is None:
            continue
        policy = node.backfill_policy
        sizes.append(policy.max_partitions_per_run or 10**6 if policy is not None else 1)
    return min(sizes, default=1)


_WRAPPERS = ("DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError",
             "DagsterExecutionHandleOutputError", "DagsterExecutionLoadInputError")


def _error_of(result: dg.ExecuteJobResult) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error is not None:
            error = event.step_failure_data.error
            while error.cause is not None and "ConceptmineError" not in str(error.cls_name) and error.cls_name in _WRAPPERS:
                error = error.cause
            hint = f"; {WRITE_HINT}" if error.cls_name == "StoreWriteError" else ""
            message = error.message.strip().splitlines()[0]
            if error.cls_name and ConceptmineError.__module__.split(".")[0] in message.split(": ", 1)[0]:
                message = message.split(": ", 1)[1]  # "conceptmine_assets.errors.StoreWriteError: cannot ..."
            return f"{event.step_key}: {message}{hint}"
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.RUN_FAILURE:
            return event.message or "the run failed before any step (see the run in the UI)"
    return "the run failed before any step (see the run in the UI)"


def interrupted(instance: dg.DagsterInstance, signals, done: int) -> Interrupted:
    """The one-line :class:`Interrupted` for a signal received while (or between) runs executed;
    the runs it stopped are marked CANCELED first."""
    name = signals.name() if signals is not None else "a signal"
    from conceptmine_assets.cli.runlock import cancel_own_runs

    runs = cancel_own_runs(instance, f"interrupted by {name} (conceptmine run)")
    what = f"run {', '.join(r[:8] for r in runs)} cancelled" if runs else "stopped between runs"
    signum = signals.received() if signals is not None else None
    return Interrupted(f"interrupted by {name}: {what} ({done} run(s) completed); nothing half-written was kept; "
                       "re-run resumes", signum or 2)


def execute(
    instance: dg.DagsterInstance, run: Run, run_config: dict, ops: dict | None = None,
    out: Callable[[str], object] | None = None, signals=None,
) -> str:
    """Execute one run through the instance; its run id, RunFailed with the first step error, or
    (``signals``: a :class:`~conceptmine_assets.cli.interrupts.SignalLog`) Interrupted.
    ``ops``: run config of individual assets (``{asset: {"config": {...}}}``), for tests only."""
    job = dg.build_reconstructable_job(__name__, "job_named", reconstructable_args=(run.job,))
    selected = {a: c for a, c in (ops or {}).items() if a in run.assets}
    run_config = {**run_config, "ops": selected} if selected else run_config
    with dg.execute_job(
        job, instance=instance, run_config=run_config, tags=run.tags(), asset_selection=[dg.AssetKey(a) for a in run.assets]
    ) as result:
        if not result.success:
            if signals is not None and signals.received():
                raise Interrupted("interrupted", signals.received())  # run() says which runs it stopped
            where = f" for {', '.join(run.scenes[:3])}{' ...' if len(run.scenes) > 3 else ''}" if run.scenes else ""
            raise RunFailed(f"{run.job}{where} failed (run {result.run_id[:8]}): {_error_of(result)}")
        return result.run_id


def run_config_for(settings) -> dict:
    """Logging quiet (see CONSOLE_LEVEL) unless verbose; steps in this process under the default
    executor (no process per step)."""
    level = "DEBUG" if os.environ.get(VERBOSE_ENV) == "1" else CONSOLE_LEVEL["level"]
    config: dict = {"loggers": {"console": {"config": {"log_level": level}}}}
    if settings.executor == "multiprocess":
        config["execution"] = {"config": {"in_process": {}}}
    return config


def _observations_changed(defs: dg.Definitions, records: Records, names: list[str]) -> bool:
    """Whether observing would record a version other than the latest recorded one (a model,
    its settings or the vocabulary changed, or it was never observed)."""
    from conceptmine_assets.assets.models import current_versions

    now = current_versions(defs.resources)
    return any(records.observed_version(name) != now[name] for name in names)


def _stages(defs: dg.Definitions, nodes: dict) -> list[tuple[Stage, list[str]]]:
    """Each stage of the pipeline with the names of its assets."""
    from conceptmine_assets.definitions import PIPELINE

    graph = defs.resolve_asset_graph()
    return [
        (stage, [k.to_user_string() for k in sorted(stage.selection.resolve(graph)) if k.to_user_string() in nodes])
        for stage in PIPELINE
    ]


def run(
    instance: dg.DagsterInstance, scenes: list[str] | None = None, force: bool = False,
    out: Callable[[str], object] | None = None, ops: dict | None = None, signals=None,
) -> list[Run]:
    """Materialise what is missing or stale (everything with ``force``) of ``scenes`` (default:
    every registered scene) and the global assets; returns the runs executed. ``ops`` overrides
    assets' config for this call (tests); a deployment sets its values in the config file.
    ``signals`` (:func:`~conceptmine_assets.cli.interrupts.watch_signals`): SIGINT/SIGTERM end the
    call with Interrupted, the interrupted run marked CANCELED."""
    out = out or sys.stdout.write
    executed: list[Run] = []
    try:
        _run(instance, scenes, force, out, ops, signals, executed)
        if signals is not None:
            signals.check()  # one that arrived during the last run but outside its steps
    except (Interrupted, KeyboardInterrupt, dg.DagsterExecutionInterruptedError):
        raise interrupted(instance, signals, len(executed)) from None
    if not executed:
        out("nothing to do: every asset is up to date (use --force to recompute)\n")
    return executed


def _run(
    instance: dg.DagsterInstance, scenes: list[str] | None, force: bool, out: Callable[[str], object],
    ops: dict | None, signals, executed: list[Run],
) -> None:
    from conceptmine_assets.settings import load_settings

    settings = load_settings()
    defs = definitions_for(settings)
    nodes = graph_nodes(defs)
    partitions = instance.get_dynamic_partitions(SCENE_PARTITIONS_NAME)  # a run's range spans these
    order = [s for s in partitions if scenes is None or s in scenes]
    run_config, progress = run_config_for(settings), Progress(out)
    stages = _stages(defs, nodes)
    work = [s for s, _ in stages if not s.observe]
    files = store_files(settings.store, instance)
    for stage, names in stages:
        if stage.observe:
            if signals is not None:
                signals.check()
            if force or _observations_changed(defs, Records(instance), names):
                execute(instance, Run(stage.job, tuple(names), ()), run_config, out=out, signals=signals)
            continue
        planned = plan_stage(Records(instance), nodes, names, order, force, files)
        report_damaged(files, out)
        runs = batch(stage.job, planned, partitions, scenes_per_run(defs, names))
        progress.plan(runs, work[work.index(stage) + 1 :])
        for item in runs:
            if signals is not None:
                signals.check()  # a safe point: between runs
            started = time.perf_counter()
            execute(instance, item, run_config, ops, out, signals)
            executed.append(item)
            progress.step(item, time.perf_counter() - started)


def pending(instance: dg.DagsterInstance, scenes: list[str] | None = None) -> list[str]:
    """What :func:`run` would do now, without doing it: the stale assets' names (stage order)."""
    from conceptmine_assets.settings import load_settings

    settings = load_settings()
    defs = definitions_for(settings)
    nodes = graph_nodes(defs)
    order = [s for s in instance.get_dynamic_partitions(SCENE_PARTITIONS_NAME) if scenes is None or s in scenes]
    records, stale, files = Records(instance), [], store_files(settings.store, instance)
    for stage, names in _stages(defs, nodes):
        if stage.observe:
            stale += names if _observations_changed(defs, Records(instance), names) else []
        else:
            stale += list(plan_stage(records, nodes, names, order, files=files))
    if files is not None:
        files.cache.save()
    return stale
