"""`conceptmine run`'s progress line: scene-stages done / to do, elapsed time and ETA."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conceptmine_assets.cli.runner import Run
    from conceptmine_assets.definitions import Stage


class Progress:
    """Work done / to do in scene-stages (a run of k scenes counts k, a global run 1), elapsed
    time and ETA; one line per run. Later stages are planned when they start (what is stale
    depends on what ran), so until then a later per-scene stage counts as many scenes as the
    largest per-scene plan so far and a global one 1; each stage's plan corrects the total."""

    def __init__(self, out: Callable[[str], object]) -> None:
        self.out, self.done, self.total, self.started = out, 0, 0, time.perf_counter()
        self.scenes = 0  # the most scenes a per-scene stage has planned in this run

    def plan(self, runs: list[Run], later: list[Stage]) -> None:
        """This stage's runs, and the stages after it (``definitions.PIPELINE`` order)."""
        units = sum(len(r.scenes) or 1 for r in runs)
        self.scenes = max(self.scenes, sum(len(r.scenes) for r in runs))
        self.total = self.done + units + sum(self.scenes if s.per_scene else 1 for s in later)

    def step(self, run: Run, seconds: float) -> None:
        self.done += len(run.scenes) or 1
        self.total = max(self.total, self.done)
        elapsed = time.perf_counter() - self.started
        eta = elapsed / self.done * (self.total - self.done)
        bar = "#" * round(20 * self.done / self.total)
        what = f"{run.scenes[0]}..{run.scenes[-1]} ({len(run.scenes)})" if run.scenes else "global"
        self.out(
            f"[{bar:<20}] {self.done}/{self.total} scene-stages  {run.job} {what}: {seconds:.1f}s"
            f"  elapsed {elapsed:.0f}s  ETA {eta:.0f}s\n"
        )
