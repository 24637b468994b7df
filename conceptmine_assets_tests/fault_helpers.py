"""Helpers of the fault-injection tests: the real command line in a subprocess, a deployment in
a folder (dataroot, config, store, DAGSTER_HOME) and a store's content fingerprint (sha256 of
every file) to show that nothing was created or changed, or that a recovery equals a clean run."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from conceptmine_assets_tests.helpers import HIGHWAY, REAL_SLICE, REPO

# Not byte-stable between two clean runs, by design: a pickle of fitted scikit-learn objects (and
# its content record),
# the search index (its manifest records the source files' mtimes, and its folder is named by
# the manifest's hash) and the run lock. Everything else must be byte-identical.
UNSTABLE = ("outlier_reference.pkl", ".outlier_reference.pkl.sha256", "search_index/", ".conceptmine-run.lock")


def tree_digest(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> hex digest), leaving out paths that
    start with one of ``skip``; {} when ``root`` is absent."""
    if not root.exists():
        return {}
    return {
        rel: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
        if not (rel := str(p.relative_to(root))).startswith(skip)
    }


def outputs(store: Path) -> dict[str, str]:
    """The store's byte-stable files (see :data:`UNSTABLE`) and their digests."""
    return tree_digest(store, UNSTABLE)


def cli_env(**env: str) -> dict[str, str]:
    """This process's environment, the checkout first on PYTHONPATH, ``env`` on top; settings
    variables of the caller dropped, hub look-ups offline and progress bars off."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CONCEPTMINE_", "NUSCENES_"))}
    path = os.pathsep.join(p for p in (str(REPO), base.get("PYTHONPATH", "")) if p)
    quiet = {"HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
             "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
    return {**base, **quiet, "PYTHONPATH": path, **env}


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``conceptmine ARGS`` in a fresh process (what a user types); text output captured."""
    return subprocess.run([sys.executable, "-m", "conceptmine_assets.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def start_cli(args: list[str], env: dict[str, str], cwd: Path, out: Path) -> subprocess.Popen:
    """``conceptmine ARGS`` in the background, stdout to ``out``, stderr to ``out`` + ``.err`` (the
    child holds its own copies of the two files; this process closes its own at once)."""
    with out.open("w") as stdout, Path(f"{out}.err").open("w") as stderr:
        return subprocess.Popen([sys.executable, "-m", "conceptmine_assets.cli", *args], env=env, cwd=cwd,
                                stdout=stdout, stderr=stderr)


def wait_for_line(out: Path, proc: subprocess.Popen, text: str, count: int = 1, timeout: float = 600) -> None:
    """Wait until ``out`` holds ``count`` lines containing ``text`` (the process must still run)."""
    deadline = time.monotonic() + timeout
    while sum(text in line for line in out.read_text().splitlines()) < count:
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before {text!r}: {out.read_text()}"
                                 f"{Path(f'{out}.err').read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} within {timeout} s")
        time.sleep(0.05)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The failed command's stderr, asserted to be one line without a traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def the_error_line(stderr: str, command: str = "run") -> str:
    """The one ``conceptmine <command>: ...`` line of ``stderr`` (libraries' own start-up notices,
    e.g. TFLite's, may precede it), asserted to be the only one and free of tracebacks."""
    assert "Traceback" not in stderr, stderr[-3000:]
    mine = [line for line in stderr.splitlines() if line.startswith(f"conceptmine {command}:")]
    assert len(mine) == 1, stderr[-3000:]
    return mine[0]


@dataclass
class Deployment:
    """A deployment in a folder: its dataroot, config file, store and Dagster instance."""

    root: Path
    dataroot: Path

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def config(self) -> Path:
        return self.root / "conceptmine.yaml"

    def env(self, **extra: str) -> dict[str, str]:
        return cli_env(**{"DAGSTER_HOME": str(self.home), "CONCEPTMINE_CONFIG": str(self.config),
                          "CONCEPTMINE_STORE": str(self.store), "YOLO_CONFIG_DIR": str(self.root / "yolo"),
                          "CONCEPTMINE_MIN_FREE_MB": "1", **extra})

    def cli(self, *args: str, **extra: str) -> subprocess.CompletedProcess:
        return run_cli(list(args), self.env(**extra), self.root)

    def start(self, *args: str, out: str = "out.txt", **extra: str) -> tuple[subprocess.Popen, Path]:
        path = self.root / out
        return start_cli(list(args), self.env(**extra), self.root, path), path

    def copy_to(self, root: Path) -> Deployment:
        """The same deployment (instance and store, file times kept) in another folder."""
        root.mkdir(parents=True, exist_ok=True)
        for name in ("store", "home"):
            if (self.root / name).exists():
                shutil.copytree(self.root / name, root / name, symlinks=True)
        other = Deployment(root, self.dataroot)
        other.config.write_text(self.config.read_text())
        return other


def new_deployment(root: Path, dataroot: Path) -> Deployment:
    """The demo's data and stage choices with the dataset's own boxes (no detector model) and
    CAM_FRONT only, so that a whole run takes seconds; a fresh instance and no store yet."""
    dep = Deployment(root, dataroot)
    dep.home.mkdir(parents=True)
    (dep.home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    dep.config.write_text(
        f"extends: {REPO / 'conceptmine.demo.yaml'}\ndataroot: {dataroot}\ndetector: annotations\n"
        "stages:\n  frames:\n    cameras: [CAM_FRONT]\n"
    )
    return dep


def demo_dataroot(target: Path) -> Path:
    """The demo dataroot (real slice + highway clip, 4 scenes; files symlinked)."""
    from conceptmine_assets.lib.synth import synth_dataroot

    synth_dataroot([REAL_SLICE, HIGHWAY], target)
    return target


def send(proc: subprocess.Popen, how: str) -> int:
    """Send SIGINT, SIGTERM or SIGKILL to ``proc`` and return its exit code."""
    proc.send_signal({"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}[how])
    return proc.wait(timeout=300)
