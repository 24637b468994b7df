"""mmdetection3d info files filtered to a split: read, filter, name (pure, no Dagster)."""

from __future__ import annotations

import pickle
from pathlib import PurePosixPath
from typing import Any

from conceptmine_assets.errors import ConceptmineError


def filter_mmdet3d_infos(infos: Any, tokens: set[str], where: str) -> tuple[Any, int]:
    """A copy of an mmdetection3d info dict with only the samples in ``tokens``, and how many kept.

    mmdet3d >= 1.1: ``{"metainfo": ..., "data_list": [{"token": ...}, ...]}``; older:
    ``{"infos": [{"token": ...}, ...], "metadata": ...}``. Other keys are kept as they are.
    """
    if isinstance(infos, dict) and isinstance(infos.get("data_list"), list):
        key = "data_list"
    elif isinstance(infos, dict) and isinstance(infos.get("infos"), list):
        key = "infos"
    else:
        keys = sorted(infos) if isinstance(infos, dict) else type(infos).__name__
        raise ConceptmineError(
            f"{where}: not an mmdetection3d nuScenes info file (expected a dict with a 'data_list' "
            f"(mmdet3d >= 1.1) or 'infos' list; found {keys})"
        )
    items = infos[key]
    missing = sum(1 for item in items if not isinstance(item, dict) or "token" not in item)
    if missing:
        raise ConceptmineError(f"{where}: {missing} of {len(items)} entries in {key!r} have no 'token'")
    kept = [item for item in items if item["token"] in tokens]
    return {**infos, key: kept}, len(kept)


def load_pickle(path: Any) -> Any:
    """Unpickle ``path`` (a pathlib/UPath), naming the file on failure."""
    try:
        with path.open("rb") as fh:
            return pickle.load(fh)
    except FileNotFoundError as exc:
        raise ConceptmineError(f"mmdet3d info file {path} does not exist") from exc
    except (pickle.UnpicklingError, EOFError, AttributeError, ModuleNotFoundError) as exc:
        raise ConceptmineError(f"mmdet3d info file {path} could not be unpickled: {exc}") from exc


def filtered_infos_name(split_name: str, infos_path: str) -> str:
    """``<split>_<original file name>``, e.g. ``mined_nuscenes_infos_train.pkl``."""
    return f"{split_name}_{PurePosixPath(str(infos_path)).name}"
