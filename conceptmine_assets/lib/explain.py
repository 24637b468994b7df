"""Why a crop was or was not mined, in one or two sentences, from its stored evidence (pure).

Inputs are the crop's rows as dicts (``None`` where the stage has not run for it): its
``concept_scores`` row (group, top concept and score), its ``outlier_flags`` row (which
detectors fired), the ``mined_split`` row of its sample, and whether the crop is among the
detections that qualified that sample. It states facts only; the selection rules are
``lib/splits.py``'s.
"""

from __future__ import annotations

from typing import Any

from conceptmine_assets.lib.reasons import evidence_of, evidence_text


def evidence(scores: dict[str, Any] | None, flags: dict[str, Any] | None) -> str:
    """"group target, top concept truck (0.91), outlier by lof, knn; quality: blur"."""
    parts = []
    if scores is None:
        parts.append("no concept scores yet")
    else:
        score = scores.get("top_score")
        shown = f" ({score:.2f})" if isinstance(score, (int, float)) else ""
        parts.append(f"group {scores.get('group')}, top concept {scores.get('top_concept')}{shown}")
    if flags is None:
        parts.append("no outlier flags yet")
    else:
        detectors = flags.get("outlier_detectors") or []
        parts.append(f"outlier by {', '.join(detectors)}" if detectors else "not an embedding outlier")
        quality = flags.get("quality_flags") or []
        if quality:
            parts.append(f"quality: {', '.join(quality)}")
    return "; ".join(parts)


def why_mined(scores: dict[str, Any] | None, flags: dict[str, Any] | None, split: dict[str, Any] | None,
              qualified: bool) -> str:
    """One line: mined (and for which reason) or not, with the crop's evidence."""
    facts = evidence(scores, flags)
    if split is None:
        return f"Not mined: its sample is not in the split. This crop: {facts}."
    reason, rank = split.get("reason"), split.get("rank")
    if qualified:
        return (f"Mined: this crop qualified its sample for the split as {reason} (rank {rank}){_score(split, scores)}. "
                f"This crop: {facts}.")
    if str(reason).startswith("random"):
        return f"Its sample is in the split as {reason} (rank {rank}), drawn at random, not for this crop. This crop: {facts}."
    return (f"Its sample is in the split as {reason} (rank {rank}) through other crops; this crop did not qualify it. "
            f"This crop: {facts}.")


def _score(split: dict[str, Any], scores: dict[str, Any] | None) -> str:
    """", evidence score 0.821 = outlier 0.99, ...": this crop's mining score and its parts
    (``lib/evidence.py``), from the split's lists, and the chosen crop its sample repeats."""
    parts = evidence_of(split, list(split.get("detection_ids") or [])).get((scores or {}).get("detection_id"))
    if parts is None:
        return ""
    return f", {evidence_text(parts)}" + (f"; it repeats chosen crop {split['duplicate_of']}" if split.get("duplicate_of") else "")
