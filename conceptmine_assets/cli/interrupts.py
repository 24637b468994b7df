"""SIGINT and SIGTERM in ``conceptmine run``: which signal arrived, and one exception to say so.

As Dagster does (``capture_interrupts``), a signal is only recorded when it arrives, never
raised at an arbitrary point (an exception raised inside a library's clean-up, e.g. SQLAlchemy
closing a connection, is swallowed and the interrupt lost): the command checks at safe points
(:meth:`SignalLog.check`: after the pre-flight checks, between runs) and stops there with
:class:`Interrupted`. While a run executes, Dagster's own handlers are installed instead
(``dg.execute_job`` maps SIGTERM to SIGINT and raises ``DagsterExecutionInterruptedError``
inside the step); which signal it was is read back from Python's signal wake-up file
descriptor, which records every signal whatever handler runs (``signal.set_wakeup_fd``).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

from conceptmine_assets.errors import ConceptmineError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(ConceptmineError):
    """The command was stopped by SIGINT or SIGTERM."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class SignalLog:
    """The signals received since :func:`watch_signals` started (read with :meth:`received`)."""

    def __init__(self, read_fd: int) -> None:
        self.read_fd, self.seen = read_fd, []

    def received(self) -> int | None:
        """The first SIGINT/SIGTERM received so far, or None."""
        with contextlib.suppress(BlockingIOError, OSError):
            self.seen += [b for b in os.read(self.read_fd, 512) if b in SIGNALS]
        return self.seen[0] if self.seen else None

    def name(self) -> str:
        signum = self.received()
        return signal.Signals(signum).name if signum else "a signal"

    def check(self) -> None:
        """Raise :class:`Interrupted` if a signal has arrived (call at a safe point)."""
        signum = self.received()
        if signum:
            raise Interrupted(f"interrupted by {signal.Signals(signum).name}", signum)


def _record(signum: int, _frame) -> None:
    """A Python-level handler, so the interpreter writes the signal to the wake-up fd; nothing else."""


@contextlib.contextmanager
def watch_signals() -> Iterator[SignalLog]:
    """Record SIGINT/SIGTERM for the block (see :meth:`SignalLog.check`); handlers and the
    wake-up fd are restored afterwards."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    try:
        for s in SIGNALS:
            signal.signal(s, _record)
        yield SignalLog(read_fd)
    finally:
        signal.set_wakeup_fd(old_fd)
        for s, handler in previous.items():
            signal.signal(s, handler)
        os.close(read_fd)
        os.close(write_fd)
