"""The benchmark runs (``bench/run.py --quick``), so it cannot rot: every section reports, none fails.

It measures nothing here (numbers on a shared CI machine mean little); the figures are in
bench/README.md, from full runs.
"""

import subprocess
import sys

import pytest

from conceptmine_assets_tests.helpers import REPO

BENCH_S = 1500


@pytest.mark.slow
@pytest.mark.timeout(BENCH_S + 120)  # the suite's 900 s per-test limit is below the bench's own
def test_bench_quick_runs_every_section(tmp_path):
    sys.path.insert(0, str(REPO))
    from bench.run import sections

    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--workdir", str(tmp_path), "--out",
         str(tmp_path / "report.md")],
        capture_output=True, text=True, timeout=BENCH_S, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    assert report == done.stdout
    rows = [line.split("|")[1].strip() for line in report.splitlines() if line.startswith("| ") and "|--" not in line]
    assert set(sections()) <= set(rows), f"sections without a row: {set(sections()) - set(rows)}"
    assert "**failed**" not in report, report
