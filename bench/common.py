"""What the benchmark sections share: the environment, the models, the project's jobs and the report.

Everything goes through the project's own APIs: settings (``Settings``), resources
(``definitions.build_resources`` / ``model_resources``), the job order (``definitions.PIPELINE``), the camera list (``assets.frames.CAMERAS``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench.scenes import FIXTURES

DEFAULT_WEIGHTS = FIXTURES / "models" / "yolov8n_int8.tflite"
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def offline_env(work: Path) -> dict[str, str]:
    """Environment for this process and its children: no hub look-ups, no telemetry."""
    home = work / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return {"HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(work / "ultralytics"),
            "DAGSTER_HOME": str(home)}


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), max(1, size)):
        yield items[start : start + size]


def settings(args: argparse.Namespace, store: Path, dataroot: Path | None = None):
    """The project's settings for a benchmark deployment (offline profile unless ``--embedder``)."""
    from conceptmine_assets.settings import Settings

    return Settings(store=str(store), dataroot=str(dataroot) if dataroot else None, yolo_weights=args.weights,
                    profile="paper" if args.embedder == "vit-b-32" else "offline")


def model_resources(args: argparse.Namespace) -> dict:
    """The project's detector and embedder for the flags' profile, on ``--device`` with the flags'
    batch sizes (``--embedder vit-b-32``: the paper's ViT-B/32, random init unless ``--clip-pretrained``)."""
    from conceptmine_assets.resources.profiles import model_resources as project_models

    models = project_models(settings(args, Path("unused")))
    detector = models["detector"].model_copy(update={"device": args.device, "batch_size": args.det_batch})
    embedder = models["embedder"].model_copy(update={"device": args.device, "batch_size": args.emb_batch})
    if args.embedder == "vit-b-32":
        embedder = embedder.model_copy(update={"pretrained": args.clip_pretrained})
    return {"detector": detector, "embedder": embedder}


def open_instance(home: Path):
    """A persistent instance (SQLite under ``home``), telemetry off."""
    import dagster as dg

    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return dg.DagsterInstance.local_temp(str(home))


class Pipeline:
    """The project's jobs over one dataroot, store and persistent instance, run in process."""

    def __init__(self, args: argparse.Namespace, dataroot: Path, store: Path, home: Path, cameras: list[str]):
        import dagster as dg

        from conceptmine_assets.definitions import PIPELINE, build_definitions

        self.settings = settings(args, store, dataroot)
        built = build_definitions(self.settings)
        self.resources = {**built.resources, **model_resources(args)}
        self.defs = dg.Definitions(assets=built.assets, asset_checks=built.asset_checks, jobs=built.jobs,
                                   resources=self.resources)
        self.pipeline, self.store, self.dataroot, self.cameras = PIPELINE, store, dataroot, cameras
        self.instance = open_instance(home)

    def register(self, scenes: list[str]) -> None:
        from conceptmine_assets.partitions import SCENE_PARTITIONS_NAME

        known = set(self.instance.get_dynamic_partitions(SCENE_PARTITIONS_NAME))
        new = [s for s in scenes if s not in known]
        if new:
            self.instance.add_dynamic_partitions(SCENE_PARTITIONS_NAME, new)

    def run(self, name: str, scene: str | None = None):
        """Execute one job (one scene partition, or a global job); raise if it fails."""
        job = self.defs.resolve_job_def(name)
        ops = {node.name for node in job.graph.node_defs}
        config: dict[str, Any] = {}
        if "frames" in ops:
            config["frames"] = {"config": {"cameras": self.cameras}}
        if "mined_split" in ops:
            config["mined_split"] = {"config": {"output_dir": str(self.store.parent / "splits")}}
        return job.execute_in_process(partition_key=scene, instance=self.instance,
                                      run_config={**QUIET, "ops": config}, raise_on_error=True)

    def full(self, scenes: list[str]) -> float:
        """The whole pipeline over ``scenes`` in ``PIPELINE`` order, one scene per run (with this
        benchmark's resources; ``conceptmine run`` itself is measured by ``bench/pipeline.py``); seconds."""
        started = time.perf_counter()
        self.register(scenes)
        for stage in self.pipeline:
            for scene in scenes if stage.per_scene else [None]:
                self.run(stage.job, scene)
        return time.perf_counter() - started

    def catch_up(self, scene: str) -> tuple[float, float]:
        """A new scene: its per-scene jobs, then the last global job (mining; no reference refit).
        Returns (per-scene seconds, global seconds)."""
        started = time.perf_counter()
        self.register([scene])
        for stage in self.pipeline:
            if stage.per_scene:
                self.run(stage.job, scene)
        per_scene = time.perf_counter() - started
        self.run(self.pipeline[-1].job)
        return per_scene, time.perf_counter() - started - per_scene

    def step_seconds(self, run_id: str) -> dict[str, float]:
        """Wall time of each step (start to success, incl. input loading and output writing)."""
        import dagster as dg

        starts, ends = {}, {}
        for entry in self.instance.all_logs(run_id):
            event = entry.dagster_event
            if event is None or event.step_key is None:
                continue
            if event.event_type == dg.DagsterEventType.STEP_START:
                starts[event.step_key] = entry.timestamp
            elif event.event_type == dg.DagsterEventType.STEP_SUCCESS:
                ends[event.step_key] = entry.timestamp
        return {k: ends[k] - starts[k] for k in ends if k in starts}


def asset_metadata(result, asset: str) -> dict[str, Any]:
    for event in result.get_asset_materialization_events():
        if event.materialization.asset_key.path[-1] == asset:
            return {k: v.value for k, v in event.materialization.metadata.items()}
    raise KeyError(asset)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """The project's progress lines go to stderr: stdout carries only the report."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


@dataclass
class Report:
    rows: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    appendix: list[tuple[str, str]] = field(default_factory=list)  # (title, Markdown) of standalone scripts

    def add(self, section: str, measure: str, value: str, target: str = "", met: str = "") -> None:
        self.rows.append({"Section": section, "Measure": measure, "Value": value, "Target": target, "Met": met})

    def markdown(self) -> str:
        columns = ["Section", "Measure", "Value", "Target", "Met"]
        return pd.DataFrame(self.rows, columns=columns).to_markdown(index=False)


def child_env(work: Path, threads: int | None = None) -> dict[str, str]:
    env = {**os.environ, **offline_env(work), "PYTHONPATH": str(FIXTURES.parents[1])}
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env
