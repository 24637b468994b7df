"""Model and vocabulary identities as observable source assets.

Each observation records as data version what determines a stage's output: the model's identity
(``lib/identity.py``: the same ``model_id`` its outputs store) or the vocabulary's
``<version>+<content hash>``. When it changes, Dagster marks the stages that read it
(and everything downstream) stale, and nothing upstream: a new vocabulary recomputes
`concept_scores` and the mined split, never detections.
"""

from collections.abc import Mapping
from typing import Any

import dagster as dg

from conceptmine_assets.resources.captioner import CaptionerResource
from conceptmine_assets.resources.detector import DetectorResource
from conceptmine_assets.resources.embedder import EmbedderResource
from conceptmine_assets.resources.vocabulary import VocabularyResource

OBSERVE_CRON = "0 * * * *"  # hourly; observing is cheap (hashes are cached by size and mtime)
# Observed when automation first runs, then hourly.
_observe = (
    dg.AutomationCondition.cron_tick_passed(OBSERVE_CRON) | dg.AutomationCondition.initial_evaluation()
) & ~dg.AutomationCondition.in_progress()


def detector_version(detector: DetectorResource) -> str:
    """The detector's identity (weights content, thresholds, precision, ultralytics version)."""
    return detector.model_id


def embedding_version(embedder: EmbedderResource) -> str:
    """The image and text models' identities (config, checkpoint/config hashes, hub revision,
    library versions), computed without loading either (observations run hourly in the code server)."""
    image, text = embedder.identities()
    return image.model_id if image == text else f"{image.model_id}|{text.model_id}"


def captioner_version(captioner: CaptionerResource) -> str:
    """The captioner's identity (model, hub revision or directory hash, prompt, pixels, precision)."""
    return captioner.model_id


def current_versions(resources: Mapping[str, Any]) -> dict[str, str]:
    """What each observation below would record now, computed in this process by the same
    functions (``conceptmine run`` observes only when one of them differs from the recorded one)."""
    return {
        "detector_model": detector_version(resources["detector"]),
        "embedding_model": embedding_version(resources["embedder"]),
        "captioner_model": captioner_version(resources["captioner"]),
        "vocabulary": resources["vocabulary"].identity,
    }


@dg.observable_source_asset(group_name="models", automation_condition=_observe)
def detector_model(detector: DetectorResource) -> dg.DataVersion:
    """The 2D detector's identity (weights hash, thresholds); `detections` depends on it."""
    return dg.DataVersion(detector_version(detector))


@dg.observable_source_asset(group_name="models", automation_condition=_observe)
def embedding_model(embedder: EmbedderResource) -> dg.DataVersion:
    """The image/text embedding models' identity; `embeddings` and `concept_scores` depend on it."""
    return dg.DataVersion(embedding_version(embedder))


@dg.observable_source_asset(group_name="models", automation_condition=_observe)
def captioner_model(captioner: CaptionerResource) -> dg.DataVersion:
    """The VLM captioner's identity (backend, model, prompt); `captions` depends on it."""
    return dg.DataVersion(captioner_version(captioner))


@dg.observable_source_asset(name="vocabulary", group_name="models", automation_condition=_observe)
def observe_vocabulary(vocabulary: VocabularyResource) -> dg.DataVersion:
    """The concept vocabulary's ``<version>+<content hash>``; `concept_scores` depends on it."""
    return dg.DataVersion(vocabulary.identity)
