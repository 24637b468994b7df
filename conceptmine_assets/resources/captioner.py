"""Crop captioning behind one resource type (key ``captioner``), one class per backend:
:class:`TemplateCaptioner` (no model), and the VLMs
:class:`~conceptmine_assets.resources.qwen2_vl_captioner.Qwen2VLCaptioner` (local) and
:class:`~conceptmine_assets.resources.openai_captioner.OpenAICaptioner` (an OpenAI-compatible
server). Prompts and parsing live in :mod:`conceptmine_assets.lib.captioning`.

A crop whose answer cannot be had (server down, timeout, malformed response, unusable answer,
unreadable image) is returned with ``status="failed"``, its error and the number of attempts,
never raised: one bad crop must not kill a scene.
"""

from __future__ import annotations

import io
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import dagster as dg
from PIL import Image, UnidentifiedImageError
from pydantic import Field

from conceptmine_assets.lib.captioning import (
    MAX_NEW_TOKENS,
    NUSCENES_CLASSES,
    PROMPTS,
    SKIP_CLASSES,
    CaptionRequest,
    CaptionResult,
    PromptStyle,
    class_name_result,
    prompt_text,
    template_caption,
)
from conceptmine_assets.lib.identity import ModelIdentity, model_identity

__all__ = ["CaptionRequest", "CaptionResult", "CaptionerResource", "TemplateCaptioner", "VLMCaptioner"]


class AnswerError(Exception):
    """One attempt to get an answer failed; ``retryable`` says whether another try may help."""

    def __init__(self, message: str, retryable: bool = True, retry_after_s: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s  # the server's Retry-After, when it sent one


def decode_image(jpeg: bytes | None) -> Image.Image:
    """The crop's RGB image; :class:`AnswerError` (not retryable) when there is none or it is unreadable."""
    if not jpeg:
        raise AnswerError("crop has no image bytes", retryable=False)
    try:
        with Image.open(io.BytesIO(jpeg)) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise AnswerError(f"unreadable crop image: {exc}", retryable=False) from exc


class CaptionerResource(dg.ConfigurableResource, ABC):
    """Captions crops; assets declare this base type."""

    backend: ClassVar[str]
    is_vlm: ClassVar[bool]  # a VLM's captions get the adaptive text weight by default

    @abstractmethod
    def identity(self) -> ModelIdentity:
        """What makes this captioner's answers what they are, computed without loading a model."""

    @abstractmethod
    def caption(self, requests: Sequence[CaptionRequest]) -> list[CaptionResult]:
        """One result per request, in order; failures are results, not exceptions."""

    @property
    def model_id(self) -> str:
        """Stored with every caption and observed as ``captioner_model``'s version."""
        return self.identity().model_id

    def verify(self) -> None:
        """Load the model (pre-flight of ``conceptmine run``): nothing to load for a template or a
        remote server, whose errors are per-crop results."""


class TemplateCaptioner(CaptionerResource):
    """``"a parked truck"``, ``"a cat (animal)"``: the nuScenes category, else the detector's own
    class word, with its nuScenes attributes; no model."""

    backend: ClassVar[str] = "template"
    is_vlm: ClassVar[bool] = False

    def identity(self) -> ModelIdentity:
        return model_identity("template", {"version": 2})  # 2: the detector's own class word

    def caption(self, requests: Sequence[CaptionRequest]) -> list[CaptionResult]:
        results = []
        for r in requests:
            started = time.perf_counter()
            text = template_caption(r.class_name, r.category, r.attributes, r.source_class)
            results.append(CaptionResult("ok", text, None, text, text, None, 0, time.perf_counter() - started))
        return results


class VLMCaptioner(CaptionerResource, ABC):
    """What every VLM backend shares: the question asked and how the answer is read."""

    is_vlm: ClassVar[bool] = True

    model: str = Field(description="the VLM: a hub id or local directory (qwen2_vl), a served model name (openai)")
    prompt_style: PromptStyle = Field(
        default="json",
        description="json: class + description as JSON; paper: the original's bare class name with the "
        "detector class as a hint, greedy, 150 new tokens, bicycle/motorcycle not sent",
    )
    prompt: str | None = Field(
        default=None, description="custom prompt; {classes} and {class_hint} are filled in. None = the style's"
    )
    classes: list[str] = Field(default=list(NUSCENES_CLASSES), min_length=1, description="classes the VLM chooses from")
    max_new_tokens: int | None = Field(default=None, ge=1, description="answer length cap; None = the style's (64 / 150)")

    def prompt_for(self, class_name: str | None) -> str:
        """The question for one crop (the paper style names the detector's class as a hint)."""
        return prompt_text(self.prompt or PROMPTS[self.prompt_style], self.classes, class_name)

    def new_tokens(self) -> int:
        return self.max_new_tokens or MAX_NEW_TOKENS[self.prompt_style]

    def prompt_settings(self) -> dict[str, object]:
        """The output-relevant settings every VLM shares, for its identity."""
        return {
            "model": self.model,
            "prompt_style": self.prompt_style,
            "prompt": self.prompt or PROMPTS[self.prompt_style],
            "classes": list(self.classes),
            "max_new_tokens": self.new_tokens(),
            "skip_classes": list(SKIP_CLASSES[self.prompt_style]),
        }

    def caption(self, requests: Sequence[CaptionRequest]) -> list[CaptionResult]:
        skip = set(SKIP_CLASSES[self.prompt_style])
        sent = [r for r in requests if r.class_name not in skip]
        answers = iter(self.answer(sent) if sent else [])
        return [class_name_result(r.class_name) if r.class_name in skip else next(answers) for r in requests]

    @abstractmethod
    def answer(self, requests: Sequence[CaptionRequest]) -> list[CaptionResult]:
        """Ask the VLM about every request (none of them skipped), one result each, in order."""
