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
from conceptmine_assets.resources.reviews_log import reviews_version_of
from conceptmine_assets.resources.vocabulary import VocabularyResource

OBSERVE_CRON = "0 * * * *"  # hourly; observing is cheap (hashes are cached by size and mtime)
# Observed when automation first runs, then hourly.
_observe = (
    dg.AutomationCondition.cron_tick_passed(OBSERVE_CRON) | dg.AutomationCondition.initial_evaluation()
) & ~dg.AutomationCondition.in_progress()


def current_versions(resources: Mapping[str, Any]) -> dict[str, str]:
    """What each observation below would record now, computed in this process from the same
    properties (``conceptmine run`` observes only when one of them differs from the recorded one).
    No model is loaded: identities hash files and settings (observations run hourly in the code server)."""
    return {
        "detector_model": resources["detector"].model_id,
        "embedding_model": resources["embedder"].model_id,
        "captioner_model": resources["captioner"].model_id,
        "vocabulary": resources["vocabulary"].identity,
        "reviews": reviews_version_of(resources["store_views"].base_path, resources["store_views"].storage_options),
    }


@dg.observable_source_asset(group_name="models", automation_condition=_observe)
def detector_model(detector: DetectorResource) -> dg.DataVersion:
    """The 2D detector's identity (weights hash, thresholds); `detections` depends on it."""
    return dg.DataVersion(detector.model_id)


@dg.observable_source_asset(group_name="models", automation_condition=_observe)
def embedding_model(embedder: EmbedderResource) -> dg.DataVersion:
    """The image/text embedding models' identity; `embeddings` and `concept_scores` depend on it."""
    return dg.DataVersion(embedder.model_id)


@dg.observable_source_asset(group_name="models", automation_condition=_observe)
def captioner_model(captioner: CaptionerResource) -> dg.DataVersion:
    """The VLM captioner's identity (backend, model, prompt); `captions` depends on it."""
    return dg.DataVersion(captioner.model_id)


@dg.observable_source_asset(name="vocabulary", group_name="models", automation_condition=_observe)
def observe_vocabulary(vocabulary: VocabularyResource) -> dg.DataVersion:
    """The concept vocabulary's ``<version>+<content hash>``; `concept_scores` depends on it."""
    return dg.DataVersion(vocabulary.identity)
