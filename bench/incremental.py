"""Section ``incremental``: one new scene caught up vs a full run of all N scenes.

Full run: every job of ``PIPELINE`` (reference fit included) over N copies of the real scene on a
fresh store. Catch-up: one more scene in the dataroot, its per-scene jobs, then the global mining
job (no reference refit). Target: catch-up <= 1.2 x (full run / N).
"""

from __future__ import annotations

from pathlib import Path

from bench.common import Pipeline, Report, median, verdict
from bench.scenes import copies


def section_incremental(args, work: Path, report: Report) -> None:
    n = args.scenes
    if not args.quick:  # a first run in this process pays imports and model loading
        warm_root, warm_scenes = copies(work, "warm-root", 2)
        Pipeline(args, warm_root, work / "warm" / "store", work / "warm" / "home", ["CAM_FRONT"]).full(warm_scenes)
    fulls, parts = [], []
    pipe = None
    for r in range(args.repeats):
        dataroot, scenes = copies(work, f"incr-root-{r}", n)
        pipe = Pipeline(args, dataroot, work / f"incr-{r}" / "store", work / f"incr-{r}" / "home", ["CAM_FRONT"])
        fulls.append(pipe.full(scenes))
    assert pipe is not None
    for r in range(args.repeats):  # grow the last store by one scene per repeat
        _, scenes = copies(work, f"incr-root-{args.repeats - 1}", n + r + 1)
        parts.append(pipe.catch_up(scenes[-1]))
    full, inc = median(fulls), median([a + b for a, b in parts])
    per_scene_share = full / n
    report.add("incremental", f"full run, {n} scenes (perception, reference fit, mining, global)",
               f"{full:.1f} s ({per_scene_share:.2f} s/scene)")
    report.add("incremental", "add 1 scene and catch up: per-scene jobs + global mining",
               f"{inc:.2f} s ({median([p[0] for p in parts]):.2f} + {median([p[1] for p in parts]):.2f} s)")
    report.add("incremental", "catch-up / (full run / N)", f"{inc / per_scene_share:.2f}", "<= 1.2",
               verdict(inc <= 1.2 * per_scene_share))
