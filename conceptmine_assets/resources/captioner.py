"""Crop captioning behind one resource (key ``captioner``): template, local Qwen2-VL, or an
OpenAI-compatible chat-completions server.

The VLM is asked, as in the paper, for one nuScenes class name (or "others") and a short
description; :func:`parse_answer` turns its raw answer into ``(vlm_class, description)``. A crop
whose answer cannot be had (server down, timeout, malformed response, unusable answer, unreadable
image) is returned with ``status="failed"``, its error and the number of attempts, never raised:
one bad crop must not kill a scene.
"""

from __future__ import annotations

import ast
import base64
import functools
import http.client
import io
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import dagster as dg
from PIL import Image, UnidentifiedImageError

from conceptmine_assets.errors import ModelLoadError
from conceptmine_assets.resources.embedder import resolve_device

NUSCENES_CLASSES: tuple[str, ...] = (
    "car",
    "truck",
    "bus",
    "trailer",
    "construction_vehicle",
    "pedestrian",
    "motorcycle",
    "bicycle",
    "traffic_cone",
    "barrier",
)

DEFAULT_PROMPT = (
    "You see one object cropped from a driving scene. Which of these classes is it: {classes}? "
    'If none fits, say "others". Then describe the object in one short sentence. '
    'Answer only with JSON: {"class": "<class name or others>", "description": "<short description>"}'
)

OTHERS = "others"
_OTHER_WORDS = {"others", "other", "none", "unknown", "no class"}
_CLASS_KEYS = ("class", "label", "category", "class_name", "name")
_DESC_KEYS = ("description", "desc", "caption", "explanation")


# ---------------------------------------------------------------- parsing (pure)


@dataclass(frozen=True)
class ParsedAnswer:
    vlm_class: str | None  # one of the classes, "others", or None if the answer names none
    description: str | None

    @property
    def usable(self) -> bool:
        return self.vlm_class is not None or bool(self.description)


def _norm(text: str) -> str:
    return re.sub(r"[\s_\-]+", " ", text.strip().strip("\"'`.,;:!?()[]{}<>").lower()).strip()


def match_class(value: object, classes: Sequence[str]) -> str | None:
    """``value`` as one of ``classes`` (case, spacing, underscores and plurals ignored), "others", or None."""
    if not isinstance(value, str):
        return None
    key = _norm(value)
    if key in _OTHER_WORDS:
        return OTHERS
    table = {_norm(c): c for c in classes}
    for cand in (key, key[:-1] if key.endswith("s") else key, key[:-2] if key.endswith("es") else key):
        if cand in table:
            return table[cand]
    return None


def _clean_description(text: object) -> str | None:
    """Printable, whitespace-folded text, or None unless it has a word (3+ letters)."""
    if not isinstance(text, str):
        return None
    text = " ".join("".join(ch for ch in text if ch.isprintable() or ch.isspace()).split()).strip(" \"'`")
    return text if re.search(r"[^\W\d_]{3,}", text) else None


def _from_mapping(obj: dict, classes: Sequence[str]) -> ParsedAnswer:
    lower = {str(k).lower(): v for k, v in obj.items()}
    cls = next((lower[k] for k in _CLASS_KEYS if k in lower), None)
    desc = next((lower[k] for k in _DESC_KEYS if k in lower), None)
    return ParsedAnswer(match_class(cls, classes), _clean_description(desc))


def _mapping_in(text: str) -> dict | None:
    """The first ``{...}`` in ``text`` read as JSON or as a Python literal, if either works."""
    match = re.search(r"\{.*\}", text, re.S)
    if not match:
        return None
    for loader in (json.loads, ast.literal_eval):
        try:
            obj = loader(match.group(0))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(obj, dict):
            return obj
    return None


def _key_values(text: str, classes: Sequence[str]) -> ParsedAnswer | None:
    """``class: truck`` / ``"class" = 'truck'`` style answers (also broken JSON)."""
    keys = "|".join(_CLASS_KEYS)
    cls = re.search(rf"[\"']?\b(?:{keys})\b[\"']?\s*[:=]\s*[\"']?([^\"'\n,;}}]+)", text, re.I)
    desc = re.search(
        rf"[\"']?\b(?:{'|'.join(_DESC_KEYS)})\b[\"']?\s*[:=]\s*(?:\"([^\"]*)\"?|'([^']*)'?|([^\n}}]*))", text, re.I
    )
    if not cls and not desc:
        return None
    description = next((g for g in desc.groups() if g), None) if desc else None
    return ParsedAnswer(match_class(cls.group(1), classes) if cls else None, _clean_description(description))


def _free_text(text: str, classes: Sequence[str]) -> ParsedAnswer:
    """Earliest class (or "others") mentioned as a word; an answer that starts with it
    ("Truck. A white truck ...") has the rest as description, otherwise all of it."""
    flat = re.sub(r"[_\-]", " ", text)  # same length as text, so offsets carry over
    found: list[tuple[int, int, int, str]] = []  # (start, -length, end, class): earliest, then longest
    for name in [*classes, OTHERS]:
        phrase = r"\s+".join(map(re.escape, name.replace("_", " ").split()))
        m = re.search(rf"\b{phrase}(?:e?s)?\b", flat, re.I)
        if m:
            found.append((m.start(), m.start() - m.end(), m.end(), name))
    if not found:
        return ParsedAnswer(None, _clean_description(text))
    start, _, end, name = min(found)
    rest = re.sub(r"^[\s.:;,\-]+", "", text[end:]) if start == 0 else text
    return ParsedAnswer(name, _clean_description(rest))


def parse_answer(raw: str | None, classes: Sequence[str] = NUSCENES_CLASSES) -> ParsedAnswer:
    """Parse a VLM answer into ``(vlm_class, description)``.

    Tried in order: a JSON (or Python-literal) object, ``key: value`` lines, then free text
    (the earliest class name mentioned). ``vlm_class`` is one of ``classes``, ``"others"``, or
    None when the answer names neither; ``description`` is None when it has no words.
    """
    if raw is None:
        return ParsedAnswer(None, None)
    text = re.sub(r"```(?:json)?", "", raw).strip()
    if not text:
        return ParsedAnswer(None, None)
    obj = _mapping_in(text)
    if obj is not None:
        return _from_mapping(obj, classes)
    kv = _key_values(text, classes)
    if kv is not None:
        return kv
    return _free_text(text, classes)


# ---------------------------------------------------------------- template captions (pure)

_ATTRIBUTE_WORDS = {
    "vehicle.moving": ("moving", None),
    "vehicle.stopped": ("stopped", None),
    "vehicle.parked": ("parked", None),
    "cycle.with_rider": (None, "with a rider"),
    "cycle.without_rider": (None, "without a rider"),
    "pedestrian.moving": ("moving", None),
    "pedestrian.standing": ("standing", None),
    "pedestrian.sitting_lying_down": (None, "sitting or lying down"),
}

_CATEGORY_NOUNS = {
    "human.pedestrian.child": "child",
    "human.pedestrian.construction_worker": "construction worker",
    "human.pedestrian.police_officer": "police officer",
    "human.pedestrian.personal_mobility": "person on a personal mobility device",
    "human.pedestrian.stroller": "stroller",
    "human.pedestrian.wheelchair": "wheelchair user",
    "vehicle.bus.bendy": "bendy bus",
    "vehicle.emergency.ambulance": "ambulance",
    "vehicle.emergency.police": "police car",
    "animal": "animal",
    "movable_object.debris": "piece of debris",
    "movable_object.pushable_pullable": "pushable or pullable object",
    "static_object.bicycle_rack": "bicycle rack",
}


def template_caption(class_name: str, category: str | None = None, attributes: Sequence[str] | None = None) -> str:
    """``"a parked truck"``, ``"a moving pedestrian"``, ``"a bicycle with a rider"``: the class (or the
    more specific nuScenes category) with its nuScenes attributes, deterministic."""
    noun = _CATEGORY_NOUNS.get(category or "", class_name.replace("_", " "))
    before, after = [], []
    for attr in attributes if attributes is not None else ():
        adj, tail = _ATTRIBUTE_WORDS.get(attr, (None, None))
        if adj:
            before.append(adj)
        if tail:
            after.append(tail)
    phrase = " ".join([*before, noun, *after])
    article = "an" if phrase[:1].lower() in "aeiou" else "a"
    return f"{article} {phrase}"


# ---------------------------------------------------------------- requests and results


@dataclass(frozen=True)
class CaptionRequest:
    detection_id: str
    image_jpeg: bytes | None
    class_name: str
    category: str | None = None
    attributes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CaptionResult:
    status: str  # ok | failed
    raw_answer: str | None
    vlm_class: str | None
    description: str | None
    caption: str  # text for concept scoring; the class name when the answer is unusable
    error: str | None
    attempts: int
    latency_s: float


def _result(raw: str | None, classes: Sequence[str], class_name: str, attempts: int, latency: float) -> CaptionResult:
    parsed = parse_answer(raw, classes)
    if not parsed.usable:
        return _failed(class_name, f"unusable answer {raw!r:.200}", attempts, latency, raw)
    caption = parsed.description or (parsed.vlm_class or class_name).replace("_", " ")
    return CaptionResult("ok", raw, parsed.vlm_class, parsed.description, caption, None, attempts, latency)


def _failed(class_name: str, error: str, attempts: int, latency: float, raw: str | None = None) -> CaptionResult:
    return CaptionResult("failed", raw, None, None, class_name.replace("_", " "), error, attempts, latency)


class AnswerError(Exception):
    """One attempt to get an answer failed; ``retryable`` says whether another try may help."""

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


def _decode_image(jpeg: bytes | None) -> Image.Image:
    if not jpeg:
        raise AnswerError("crop has no image bytes", retryable=False)
    try:
        with Image.open(io.BytesIO(jpeg)) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise AnswerError(f"unreadable crop image: {exc}", retryable=False) from exc


# ---------------------------------------------------------------- local Qwen2-VL


@functools.lru_cache(maxsize=2)
def _load_qwen2_vl(model: str, device: str, precision: str) -> tuple[Any, Any]:
    """(model, processor), loaded once per process per (model, device, precision)."""
    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    try:
        processor = AutoProcessor.from_pretrained(model)
        net = Qwen2VLForConditionalGeneration.from_pretrained(model, dtype=dtype).to(device).eval()
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load Qwen2-VL model {model!r} on {device}: {exc}") from exc
    return net, processor


# ---------------------------------------------------------------- the resource


class CaptionerResource(dg.ConfigurableResource):
    """Captions crops with a VLM (``qwen2_vl`` local, ``openai`` server) or a template."""

    backend: Literal["template", "qwen2_vl", "openai"] = "template"
    model: str = "Qwen/Qwen2-VL-2B-Instruct"  # hub id or local path (qwen2_vl); served model name (openai)
    prompt: str = DEFAULT_PROMPT  # "{classes}" is replaced by the class list
    classes: list[str] = list(NUSCENES_CLASSES)
    max_new_tokens: int = 64
    # qwen2_vl
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    batch_size: int = 8
    min_pixels: int = 56 * 56  # image resize bounds for the Qwen2-VL processor
    max_pixels: int = 512 * 28 * 28  # at most 512 image tokens per crop
    # openai
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key: str | None = None
    timeout_s: float = 60.0
    max_attempts: int = 3  # total tries per crop, first one included
    backoff_s: float = 1.0  # sleep before retry k: backoff_s * 2**(k-1), capped
    backoff_max_s: float = 30.0
    concurrency: int = 4  # parallel requests

    @property
    def model_id(self) -> str:
        if self.backend == "template":
            return "template"
        if self.backend == "openai":
            return f"openai:{self.model}@{self.base_url}"
        return self.model

    def prompt_text(self) -> str:
        """The prompt with ``{classes}`` replaced by the comma-separated class list."""
        return self.prompt.replace("{classes}", ", ".join(self.classes))

    def caption(self, requests: Sequence[CaptionRequest]) -> list[CaptionResult]:
        """One result per request, in order; failures are results, not exceptions."""
        if not requests:
            return []
        if self.backend == "template":
            return [self._template(r) for r in requests]
        if self.backend == "openai":
            workers = max(1, min(self.concurrency, len(requests)))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="captioner") as pool:
                return list(pool.map(self._openai_one, requests))
        return self._qwen2_vl(requests)

    # -- template
    def _template(self, r: CaptionRequest) -> CaptionResult:
        started = time.perf_counter()
        text = template_caption(r.class_name, r.category, r.attributes)
        return CaptionResult("ok", text, None, text, text, None, 0, time.perf_counter() - started)

    # -- qwen2_vl
    def _qwen_precision(self, device: str) -> str:
        if self.precision == "auto":
            return "bf16" if device.startswith("cuda") else "fp32"
        if self.precision == "fp16" and not device.startswith("cuda"):
            raise ModelLoadError(f"captioner precision fp16 needs a GPU, but the device is {device!r}")
        return self.precision

    def _generate(self, images: list[Image.Image]) -> list[str]:
        import torch

        device = resolve_device(self.device)
        net, processor = _load_qwen2_vl(self.model, device, self._qwen_precision(device))
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt_text()}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(
            text=[text] * len(images),
            images=[[im] for im in images],
            padding=True,
            padding_side="left",
            size={"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
            return_tensors="pt",
        ).to(net.device)
        with torch.inference_mode():
            out = net.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        return processor.batch_decode(new_tokens, skip_special_tokens=True)

    def _qwen2_vl(self, requests: Sequence[CaptionRequest]) -> list[CaptionResult]:
        results: list[CaptionResult | None] = [None] * len(requests)
        ready: list[tuple[int, Image.Image]] = []
        for i, r in enumerate(requests):
            try:
                ready.append((i, _decode_image(r.image_jpeg)))
            except AnswerError as exc:
                results[i] = _failed(r.class_name, str(exc), 1, 0.0)
        for start in range(0, len(ready), max(1, self.batch_size)):
            batch = ready[start : start + max(1, self.batch_size)]
            for i, res in self._qwen_batch(requests, batch):
                results[i] = res
        return [r for r in results if r is not None]

    def _qwen_batch(
        self, requests: Sequence[CaptionRequest], batch: list[tuple[int, Image.Image]]
    ) -> list[tuple[int, CaptionResult]]:
        """Generate for a batch; if the batch fails, crop by crop so only the bad crop fails."""
        started = time.perf_counter()
        try:
            answers = self._generate([im for _, im in batch])
        except (RuntimeError, ValueError) as exc:
            if len(batch) == 1:
                i = batch[0][0]
                return [(i, _failed(requests[i].class_name, f"generation failed: {exc}", 1, time.perf_counter() - started))]
            return [pair for item in batch for pair in self._qwen_batch(requests, [item])]
        per_crop = (time.perf_counter() - started) / len(batch)
        return [
            (i, _result(raw, self.classes, requests[i].class_name, 1, per_crop)) for (i, _), raw in zip(batch, answers)
        ]

    # -- openai
    def _openai_payload(self, jpeg: bytes) -> dict:
        url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
        return {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "text", "text": self.prompt_text()},
                    ],
                }
            ],
            "max_tokens": self.max_new_tokens,
            "temperature": 0.0,
        }

    def _openai_request(self, payload: bytes) -> str:
        """One chat-completions call; the answer text, or :class:`AnswerError`."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = self.base_url.rstrip("/") + "/chat/completions"
        req = urllib.request.Request(url, data=payload, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            retry = exc.code in (408, 409, 425, 429) or exc.code >= 500
            raise AnswerError(f"HTTP {exc.code} from {url}: {exc.reason}", retryable=retry) from exc
        except urllib.error.URLError as exc:
            raise AnswerError(f"cannot reach {url}: {exc.reason}") from exc
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise AnswerError(f"no answer from {url} within {self.timeout_s}s: {exc!r}") from exc
        try:
            content = json.loads(body)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise AnswerError(f"malformed response from {url}: {body[:200]!r}") from exc
        if not isinstance(content, str):
            raise AnswerError(f"malformed response from {url}: content is {type(content).__name__}")
        return content

    def _openai_one(self, r: CaptionRequest) -> CaptionResult:
        started = time.perf_counter()
        try:
            payload = json.dumps(self._openai_payload(_decode_image_bytes(r.image_jpeg))).encode()
        except AnswerError as exc:
            return _failed(r.class_name, str(exc), 1, time.perf_counter() - started)
        error, raw = "no attempt made", None
        for attempt in range(1, max(1, self.max_attempts) + 1):
            if attempt > 1:
                time.sleep(min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 2)))
            try:
                raw = self._openai_request(payload)
            except AnswerError as exc:
                error = str(exc)
                if not exc.retryable:
                    return _failed(r.class_name, error, attempt, time.perf_counter() - started)
                continue
            result = _result(raw, self.classes, r.class_name, attempt, time.perf_counter() - started)
            if result.status == "ok":
                return result
            error = result.error or error
        return _failed(r.class_name, error, max(1, self.max_attempts), time.perf_counter() - started, raw)


def _decode_image_bytes(jpeg: bytes | None) -> bytes:
    """The crop's JPEG bytes after checking that they decode (so a bad crop is not sent)."""
    _decode_image(jpeg)
    return jpeg  # type: ignore[return-value]

