"""Helpers of the fault-injection tests: the real command line in a subprocess, and a store's
content fingerprint (sha256 of every file) to show that nothing was created or changed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from conceptmine_assets_tests.helpers import REPO


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> hex digest); {} when it is absent."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def cli_env(**env: str) -> dict[str, str]:
    """This process's environment, the checkout first on PYTHONPATH, ``env`` on top."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONCEPTMINE_")}
    path = os.pathsep.join(p for p in (str(REPO), base.get("PYTHONPATH", "")) if p)
    return {**base, "PYTHONPATH": path, **env}


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``conceptmine ARGS`` in a fresh process (what a user types); text output captured."""
    return subprocess.run([sys.executable, "-m", "conceptmine_assets.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The failed command's stderr, asserted to be one line without a traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]
