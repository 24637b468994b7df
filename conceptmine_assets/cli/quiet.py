"""A quiet terminal for ``conceptmine run``: the project's progress lines and summary, no library noise.

What it silences (``--verbose`` turns all of it back on):

- the Ultralytics settings banner and its other INFO lines: ``YOLO_VERBOSE=False``;
- Hugging Face "Loading weights" progress bars (transformers, the hub): ``HF_HUB_DISABLE_PROGRESS_BARS=1``;
- TensorFlow Lite's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." line, which the
  LiteRT runtime writes from C++ straight to file descriptor 2 with no setting to turn it off:
  :func:`filtered_stderr` passes descriptor 2 through a filter that drops exactly such lines;
- Dagster's console lines for warnings inside a run (``runner.run_config_for``: the console
  logger shows errors only). The warnings stay in each run's event log (the UI's run page);
  :func:`run_warnings` counts them for the one summary line at the end.

Each is set only where the user has not set it, so an explicit environment wins.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator

NOISE = (
    re.compile(rb"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.\s*$"),
    re.compile(rb"^INFO: Initialized TensorFlow Lite runtime\.\s*$"),
)
QUIET_ENV = {"YOLO_VERBOSE": "False", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}


def quiet_environment() -> list[str]:
    """Library settings for a quiet run (before the libraries are imported); the names it set."""
    added = [key for key in QUIET_ENV if key not in os.environ]
    os.environ.update({key: QUIET_ENV[key] for key in added})
    return added


@contextlib.contextmanager
def filtered_stderr(noise: tuple[re.Pattern, ...] = NOISE) -> Iterator[None]:
    """File descriptor 2 through a line filter that drops lines matching ``noise`` (native
    libraries write there directly); everything else reaches the terminal as it comes."""
    sys.stderr.flush()
    terminal = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if not any(p.match(line) for p in noise):
                        os.write(terminal, line + b"\n")
        if pending and not any(p.match(pending) for p in noise):
            os.write(terminal, pending)

    thread = threading.Thread(target=pump, name="conceptmine-stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)  # closes the pipe's last write end: the pump sees end of file
        thread.join(timeout=10)
        os.close(terminal)


VERBOSE_ENV = "CONCEPTMINE_VERBOSE"  # read by runner.run_config_for
_LIBRARY_WARNINGS: list[str] = []  # Python warnings raised while quiet (shown with --verbose)


class _Collect(logging.Handler):
    """Keeps Python warnings (``logging.captureWarnings``) out of the terminal, counted."""

    def emit(self, record: logging.LogRecord) -> None:
        _LIBRARY_WARNINGS.append(record.getMessage())


@contextlib.contextmanager
def quiet_terminal(verbose: bool) -> Iterator[None]:
    """Everything above, for the duration of a command (the environment is restored after);
    with ``verbose``, nothing is silenced and Dagster's console logs every level."""
    if verbose:
        previous = os.environ.get(VERBOSE_ENV)
        os.environ[VERBOSE_ENV] = "1"
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop(VERBOSE_ENV, None)
            else:
                os.environ[VERBOSE_ENV] = previous
        return
    added = quiet_environment()
    logging.captureWarnings(True)
    logger = logging.getLogger("py.warnings")
    collector, propagate = _Collect(), logger.propagate
    logger.addHandler(collector)
    logger.propagate = False
    try:
        with filtered_stderr():
            yield
    finally:
        logger.removeHandler(collector)
        logger.propagate = propagate
        logging.captureWarnings(False)
        for key in added:  # the process's environment as it was (the run memo's key reads it)
            os.environ.pop(key, None)


def summary(instance, since: float) -> str | None:
    """The one line about warnings of the runs launched by this command since ``since`` (epoch
    seconds) and of the libraries, or None when there were none."""
    import dagster as dg

    records = instance.get_run_records(dg.RunsFilter(tags={"conceptmine/launched_by": "conceptmine run"}))
    ids = [r.dagster_run.run_id for r in records if r.create_timestamp.timestamp() >= since]
    parts = [line] if (line := warnings_summary(run_warnings(instance, ids))) else []
    if _LIBRARY_WARNINGS:
        n = len(_LIBRARY_WARNINGS)
        parts.append(f"{n} library warning{'s' if n > 1 else ''} (rerun with --verbose to see them)")
    return "; ".join(parts) or None


def run_warnings(instance, run_ids: list[str]) -> dict[str, int]:
    """Per run id, how many WARNING (or worse, short of a failure) messages its steps logged."""
    counts: dict[str, int] = {}
    for run_id in run_ids:
        n = sum(1 for e in instance.all_logs(run_id)
                if e.dagster_event is None and logging.WARNING <= e.level < logging.ERROR)
        if n:
            counts[run_id] = n
    return counts


def warnings_summary(counts: dict[str, int]) -> str | None:
    """"2 warnings, see the UI run 1a2b3c4d (make ui, then Runs)"; None when there are none."""
    if not counts:
        return None
    total = sum(counts.values())
    runs = sorted(counts, key=lambda r: -counts[r])
    shown = ", ".join(r[:8] for r in runs[:3]) + (f" and {len(runs) - 3} more" if len(runs) > 3 else "")
    noun = "warning" if total == 1 else "warnings"
    where = "run" if len(runs) == 1 else "runs"
    return f"{total} {noun}, see the UI {where} {shown} (make ui, then Runs)"
