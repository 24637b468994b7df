"""The local VLM captioner: Qwen2-VL through transformers, from a local directory or a hub id
(read from the Hugging Face hub cache when it is there, so a pre-populated cache works offline)."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from PIL import Image
from pydantic import Field

from conceptmine_assets.errors import ModelLoadError
from conceptmine_assets.lib.captioning import CaptionRequest, CaptionResult, answer_result, failed_result
from conceptmine_assets.lib.identity import ModelIdentity, hub_revision, model_identity
from conceptmine_assets.lib.versions import require
from conceptmine_assets.resources.captioner import AnswerError, VLMCaptioner, decode_image
from conceptmine_assets.resources.devices import DEVICE_PATTERN, fixed_torch_threads, resolve_device, steady_heap, torch_dtype

PAPER_MODEL = "Qwen/Qwen2-VL-2B-Instruct"


@functools.lru_cache(maxsize=2)
def _load_qwen2_vl(model: str, revision: str | None, cache_dir: str | None, device: str, precision: str) -> tuple[Any, Any]:
    """(model, processor), loaded once per process per configuration."""
    require("transformers")
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    dtype = torch_dtype(precision, device)
    where = {"revision": revision, "cache_dir": cache_dir}
    try:
        processor = AutoProcessor.from_pretrained(model, **where)
        net = Qwen2VLForConditionalGeneration.from_pretrained(model, dtype=dtype, **where).to(device).eval()
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot load Qwen2-VL model {model!r} on {device} (hub cache {cache_dir or 'default'}): {exc}"
        ) from exc
    return net, processor


class Qwen2VLCaptioner(VLMCaptioner):
    """Qwen2-VL on this machine (the paper's captioner: Qwen2-VL-2B-Instruct)."""

    backend: ClassVar[str] = "qwen2_vl"

    model: str = Field(default=PAPER_MODEL, description="hub id (read from the hub cache) or a local model directory")
    revision: str | None = Field(default=None, description="hub revision (branch, tag or commit); None = main")
    cache_dir: str | None = Field(
        default=None, description="Hugging Face hub cache; None = the HF_HUB_CACHE / HF_HOME default"
    )
    device: str = Field(default="auto", pattern=DEVICE_PATTERN, description="auto, cpu, cuda or cuda:<n>")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        default="auto", description="auto: bf16 on CUDA, fp32 on CPU"
    )
    batch_size: int = Field(default=8, ge=1, description="crops per generate call")
    cpu_threads: int = Field(
        default=0, ge=0, description="torch CPU threads while generating (0: every available CPU); any fixed "
        "count keeps the greedy tokens independent of what ran before in the process",
    )
    min_pixels: int = Field(default=56 * 56, ge=28 * 28, description="smallest image area after the processor's resize")
    max_pixels: int = Field(default=512 * 28 * 28, ge=28 * 28, description="largest area: 512 image tokens per crop")

    def _precision(self, device: str) -> str:
        if self.precision == "auto":
            return "bf16" if device.startswith("cuda") else "fp32"
        return self.precision

    def _local_dir(self) -> Path | None:
        path = Path(self.model).expanduser()
        return path if path.is_dir() else None

    def identity(self) -> ModelIdentity:
        local = self._local_dir()
        revision = None if local else hub_revision(self.model, "config.json", self.revision, self.cache_dir)
        settings = {
            **self.prompt_settings(),
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "precision": self.precision,  # as set: the identity must not depend on where it is computed
        }
        name = f"qwen2_vl:{local.name if local else self.model}"
        return model_identity(name, settings, [local] if local else [], ["transformers"], revision)

    def load(self) -> tuple[Any, Any]:
        """(model, processor): loaded on first use, then shared by the process."""
        device = resolve_device(self.device)
        return _load_qwen2_vl(self.model, self.revision, self.cache_dir, device, self._precision(device))

    def verify(self) -> None:
        self.load()

    def generate(self, images: list[Image.Image], class_names: list[str]) -> list[str]:
        """Greedy answers for a batch of crops (left-padded, one prompt per crop)."""
        import torch

        net, processor = self.load()
        texts = [
            processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt_for(c)}]}],
                add_generation_prompt=True,
                tokenize=False,
            )
            for c in class_names
        ]
        inputs = processor(
            text=texts,
            images=[[im] for im in images],
            padding=True,
            padding_side="left",
            size={"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
            return_tensors="pt",
        ).to(net.device)
        with torch.inference_mode(), fixed_torch_threads(self.cpu_threads), steady_heap():  # tokens independent of process state
            out = net.generate(**inputs, max_new_tokens=self.new_tokens(), do_sample=False)
        return processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    def answer(self, requests: Sequence[CaptionRequest]) -> list[CaptionResult]:
        results: list[CaptionResult | None] = [None] * len(requests)
        ready: list[tuple[int, Image.Image]] = []
        for i, r in enumerate(requests):
            try:
                ready.append((i, decode_image(r.image_jpeg)))
            except AnswerError as exc:
                results[i] = failed_result(r.class_name, str(exc), 1, 0.0)
        for start in range(0, len(ready), self.batch_size):
            for i, res in self._batch(requests, ready[start : start + self.batch_size]):
                results[i] = res
        return [r for r in results if r is not None]

    def _batch(
        self, requests: Sequence[CaptionRequest], batch: list[tuple[int, Image.Image]]
    ) -> list[tuple[int, CaptionResult]]:
        """Generate for a batch; if the batch fails, crop by crop so only the bad crop fails."""
        started = time.perf_counter()
        try:
            answers = self.generate([im for _, im in batch], [requests[i].class_name for i, _ in batch])
        except (RuntimeError, ValueError) as exc:
            if len(batch) == 1:
                i = batch[0][0]
                error = f"generation failed: {exc}"
                return [(i, failed_result(requests[i].class_name, error, 1, time.perf_counter() - started))]
            return [pair for item in batch for pair in self._batch(requests, [item])]
        per_crop = (time.perf_counter() - started) / len(batch)
        return [
            (i, answer_result(raw, self.prompt_style, self.classes, requests[i].class_name, 1, per_crop))
            for (i, _), raw in zip(batch, answers, strict=True)
        ]
