"""A quiet terminal: `conceptmine demo` prints its own progress lines and summary only (no library
banner, progress bar, native INFO line, traceback or Dagster warning line), and `--verbose` turns
the library and Dagster output back on."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conceptmine_assets.cli.quiet import warnings_summary
from conceptmine_assets_tests.helpers import HIGHWAY, REAL_SCENE, REAL_SLICE, REPO, require

ALLOWED = [
    r"registered \d+ new scene partitions",
    r"\[[# ]{20}\] \d+/\d+ scene-stages  \w+ .*: [\d.]+s  elapsed \d+s  ETA \d+s",
    r"\d+ warnings?, see the UI runs? [0-9a-f]{8}(, [0-9a-f]{8})*( and \d+ more)? \(make ui, then Runs\)",
    r"",
    r"done\. Outputs: .*",
    r"Mined split: .*",
    r"Browse lineage and metadata: .*",
    r"Explore, search and review the crops: .*",
    r"Query: .*",
]


def _demo_env(tmp_path: Path) -> dict:
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONCEPTMINE_", "NUSCENES_", "YOLO_", "HF_HUB_DISABLE"))}
    return {**env, "DAGSTER_HOME": str(home), "HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1",
            "YOLO_CONFIG_DIR": str(tmp_path / "fresh-yolo-config"),  # a fresh one: where the banner would come from
            "CONCEPTMINE_CONFIG": str(REPO / "conceptmine.demo.yaml"), "CONCEPTMINE_STORE": str(tmp_path / "store"),
            "NUSCENES_DATAROOT": str(tmp_path / "dataroot"),
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.slow
@pytest.mark.real_model
def test_the_demo_prints_only_its_own_lines(tmp_path):
    """The demo as `make demo` runs it (the fixture YOLO detector, the offline embedder with its
    transformers text model, a fresh Ultralytics settings folder), as a fresh process."""
    from conceptmine_assets.lib.synth import synth_dataroot

    synth_dataroot([REAL_SLICE, HIGHWAY], tmp_path / "dataroot")
    cli = [sys.executable, "-m", "conceptmine_assets.cli", "demo"]
    out = subprocess.run(cli, env=_demo_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # no banner, bar, INFO line, warning or traceback
    lines = out.stdout.splitlines()
    strange = [line for line in lines if not any(re.fullmatch(p, line) for p in ALLOWED)]
    assert strange == []
    assert lines[0].startswith("registered 4 new scene partitions") and lines[-1].startswith("Query:")
    # the demo's tiny data makes two steps warn (lof's k, hdbscan's clusters): one line says so
    assert sum(1 for line in lines if re.fullmatch(ALLOWED[2], line)) == 1
    assert (tmp_path / "fresh-yolo-config").exists()  # ultralytics did create its settings, silently
    totals = {m.group(1) for line in lines if (m := re.match(r"\[[# ]{20}\] \d+/(\d+) ", line))}
    assert totals == {"10"}, totals  # estimated right from the first stage: 4 + 1 + 4 + 1


def test_progress_counts_later_stages_before_they_are_planned():
    from conceptmine_assets.cli.progress import Progress
    from conceptmine_assets.cli.runner import Run
    from conceptmine_assets.definitions import PIPELINE

    lines: list[str] = []
    progress, work = Progress(lines.append), [s for s in PIPELINE if not s.observe]
    first = work[0]
    progress.plan([Run(first.job, ("frames",), ("s1", "s2")), Run(first.job, ("frames",), ("s3",))], work[1:])
    assert progress.total == 3 + sum(3 if s.per_scene else 1 for s in work[1:])
    progress.step(Run(first.job, ("frames",), ("s1", "s2")), 1.0)
    assert lines[-1].startswith(f"[{'#' * round(20 * 2 / progress.total):<20}] 2/{progress.total} scene-stages")


def test_native_noise_is_dropped_and_everything_else_passes():
    code = textwrap.dedent("""
        import os, sys
        from conceptmine_assets.cli.quiet import filtered_stderr
        with filtered_stderr():
            os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n")
            os.write(2, b"a real problem\\n")
            sys.stderr.write("python says hello\\n")
            os.write(2, b"no newline at the end")
        sys.stderr.write("|after\\n")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stderr == "a real problem\npython says hello\nno newline at the end|after\n"


def test_verbose_shows_dagster_at_every_level(monkeypatch):
    from conceptmine_assets.cli.runner import CONSOLE_LEVEL, run_config_for
    from conceptmine_assets.settings import Settings

    level = lambda: run_config_for(Settings(store="x"))["loggers"]["console"]["config"]["log_level"]  # noqa: E731
    monkeypatch.delenv("CONCEPTMINE_VERBOSE", raising=False)
    monkeypatch.setitem(CONSOLE_LEVEL, "level", "CRITICAL")  # the default (a --debug test in this process may have set it)
    assert level() == "CRITICAL"  # quiet: one line per problem from the CLI, one summary of the warnings
    monkeypatch.setitem(CONSOLE_LEVEL, "level", "WARNING")  # what --debug sets
    assert level() == "WARNING"
    monkeypatch.setenv("CONCEPTMINE_VERBOSE", "1")
    assert level() == "DEBUG"


def test_the_summary_line_names_the_runs():
    assert warnings_summary({}) is None
    assert warnings_summary({"1a2b3c4d5e": 1}) == "1 warning, see the UI run 1a2b3c4d (make ui, then Runs)"
    many = {f"{i:08x}ffff": i for i in range(1, 6)}
    assert warnings_summary(many) == ("15 warnings, see the UI runs 00000005, 00000004, 00000003 and 2 more "
                                      "(make ui, then Runs)")


PROJECT_WARNINGS = textwrap.dedent("""
    import json, os, sys, warnings
    from pathlib import Path

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import dagster as dg

        from conceptmine_assets.definitions import build_definitions
        from conceptmine_assets.partitions import SCENE_PARTITIONS_NAME
        from conceptmine_assets.settings import Settings

        defs = build_definitions(Settings(store=sys.argv[1], dataroot=sys.argv[2], detector="annotations"))
        with dg.DagsterInstance.ephemeral() as instance:
            instance.add_dynamic_partitions(SCENE_PARTITIONS_NAME, [sys.argv[3]])
            result = dg.materialize(list(defs.assets), selection=["frames", "detections", "crops"],
                                    partition_key=sys.argv[3], resources=defs.resources, instance=instance)
            assert result.success
    project = str(Path("conceptmine_assets").resolve()) + os.sep
    print(json.dumps([[w.filename, w.lineno, w.category.__name__, str(w.message)[:300]] for w in caught
                      if w.filename.startswith(project) or "varying BackfillPolicies" in str(w.message)]))
""")


def test_the_project_raises_no_warnings(tmp_path):
    """Importing the definitions, building them and materialising a scene's first stages (in a fresh
    process, so import-time warnings count) raises no Python warning from a file of the project,
    nor Dagster's warning about a job over assets of varying backfill policies."""
    cmd = [sys.executable, "-c", PROJECT_WARNINGS, str(tmp_path / "store"), str(require(REAL_SLICE)), REAL_SCENE]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONCEPTMINE_", "NUSCENES_"))}
    env = {**env, "DAGSTER_HOME": str(tmp_path), "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == []
