"""Several scenes in one run: how the model stages batch across scene partitions.

With ``BackfillPolicy.multi_run(max_partitions_per_run=n)`` a backfill hands a model stage up to
``n`` scenes per run, so the GPU sees full batches across scene boundaries and the model loads
once per run. Inputs then arrive as ``{scene: table}`` (one per partition, from the IO manager) and
the output goes back the same way; a single-scene run keeps plain tables.
"""

from typing import Any

import pandas as pd

# Dagster cannot type-check a union of a table and a dict of tables, so these stay untyped for it.
SceneTables = Any  # pd.DataFrame, or dict[scene name, pd.DataFrame] in a multi-scene run


def concat_scenes(tables: SceneTables) -> pd.DataFrame:
    """One table of every scene in the run (scenes in name order)."""
    if isinstance(tables, pd.DataFrame):
        return tables
    frames = [tables[k] for k in sorted(tables)]
    combined = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    combined.attrs = dict(frames[0].attrs) if frames else {}
    return combined


def split_scenes(df: pd.DataFrame, scenes: list[str]) -> SceneTables:
    """The output for the run's scene partitions: the table itself for one scene, else a dict."""
    if len(scenes) == 1:
        return df
    parts = {}
    for scene in scenes:
        part = df[df["scene_name"] == scene].reset_index(drop=True)
        part.attrs = dict(df.attrs)
        parts[scene] = part
    return parts

# Scenes per run for the model stages in a backfill (a trainval scene has ~40 keyframes per camera).
MODEL_SCENES_PER_RUN = 8
# The other per-scene stages batch as many, so a job never mixes backfill policies (Dagster would
# then fall back to one scene per run) and the per-run overhead is paid once per 8 scenes.
SCENES_PER_RUN = MODEL_SCENES_PER_RUN


def by_scene(tables: SceneTables, scenes: list[str]) -> dict[str, pd.DataFrame]:
    """``{scene: table}`` for the run's scenes, whether the input came as one table or a dict."""
    if isinstance(tables, pd.DataFrame):
        if len(scenes) != 1:
            raise ValueError(f"one table for {len(scenes)} scenes {scenes}")
        return {scenes[0]: tables}
    return {scene: tables[scene] for scene in scenes}
