"""Why a crop is in the gallery, in words: the split's reason, the crop's concept and outlier
evidence, its mining score's parts and the chosen crop it repeats (pure functions)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


_REASON_TEXT = {
    "confirmed": "a reviewer confirmed this crop (or its sample) as a real rare or target object",
    "target_outlier": "target concept and an embedding outlier",
    "target": "target concept",
    "rare_outlier": "rare concept and an embedding outlier",
    "rare": "rare concept",
    "random": "random fill (the sample was drawn at random, not for this crop)",
    "random_fill": "random leftover of the target budget (drawn at random, not for this crop)",
}


def as_list(value: object) -> list:
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    return []


def is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def why_selected(reason: str | None, row: pd.Series | dict, section: str = "mined") -> str:
    """Why an item is in the gallery, in words: for the mined section the split's reason plus this
    crop's evidence; for the all-crops section its group and whether its sample was mined."""
    if section == "all":
        mined = f"its sample is in the mined split ({reason})" if reason else "its sample is not in the mined split"
        return f"group {row.get('group') or 'unscored'}; {mined}"
    text = f"{reason}: {_REASON_TEXT.get(reason, reason)}"
    if reason.startswith("random"):
        return text
    detectors = [str(d) for d in as_list(row.get("outlier_detectors"))]
    evidence = f"top concept {row.get('top_concept')} ({fmt(row.get('top_score'))}) in group {row.get('group')}"
    if detectors:
        evidence += f", outlier by {'+'.join(detectors)}"
    parts = row.get("evidence")
    if isinstance(parts, dict):  # the mining score and its parts (lib/evidence.py)
        evidence += f"; {evidence_text(parts)}"
    if row.get("duplicate_of"):
        evidence += f"; repeats chosen crop {row['duplicate_of']} (taken once nothing stronger was left)"
    return f"{text}; {evidence}"


EVIDENCE_LISTS = {"score": "crop_scores", "outlier": "crop_outlier", "rarity": "crop_rarity",
                  "confidence": "crop_confidence", "detector_confidence": "crop_detector_confidence"}


def evidence_text(parts: dict) -> str:
    """"evidence score 0.821 = outlier 0.99, rarity 0.86, concept 0.82, x detector confidence 0.95"."""
    return (f"evidence score {fmt(parts['score'])} = outlier {fmt(parts['outlier'], 2)}, "
            f"rarity {fmt(parts['rarity'], 2)}, concept {fmt(parts['confidence'], 2)}, "
            f"x detector confidence {fmt(parts['detector_confidence'], 2)}")


def evidence_of(split_row: object, ids: list[str]) -> dict[str, dict]:
    """Per detection_id of a split row (a row object or a dict), its evidence score's parts
    (empty for old split files)."""
    get = split_row.get if isinstance(split_row, dict) else lambda c: getattr(split_row, c, None)
    lists = {part: as_list(get(column)) for part, column in EVIDENCE_LISTS.items()}
    if any(len(v) != len(ids) for v in lists.values()):
        return {}
    return {d: {part: lists[part][i] for part in EVIDENCE_LISTS} for i, d in enumerate(ids)}


def fmt(value: object, digits: int = 3) -> str:
    return "n/a" if is_missing(value) else f"{float(value):.{digits}f}"
