"""Pure captioning logic: the prompts, parsing of VLM answers (JSON and the paper's bare class
name), template captions, and the request/result records the captioner backends share.

Two prompt styles:

- ``json`` (default): the class among the nuScenes classes (or "others") and a one-sentence
  description, as JSON.
- ``paper``: the original research code's question: only the class name among the classes or
  "others", with the detector's class as a hint to verify; greedy, up to 150 new tokens; bicycle
  and motorcycle crops are not sent to the VLM.

Parsing is lenient for both: JSON or Python-literal objects, ``key: value`` lines, or free text
(the earliest class named).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

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

PromptStyle = Literal["json", "paper"]
VLM_BACKENDS: tuple[str, ...] = ("qwen2_vl", "openai")  # captioner backends whose captions are VLM answers

JSON_PROMPT = (
    "You see one object cropped from a driving scene. Which of these classes is it: {classes}? "
    'If none fits, say "others". Then describe the object in one short sentence. '
    'Answer only with JSON: {"class": "<class name or others>", "description": "<short description>"}'
)
PAPER_PROMPT = (
    "You see one object cropped from a camera image of a car driving. Which of these classes is it: "
    "{classes}? If it is none of them, answer others.{class_hint} Answer with the class name only."
)
PAPER_CLASS_HINT = " Note that the detector says it is a {class_name}, but it can be wrong: verify it."
PROMPTS: dict[str, str] = {"json": JSON_PROMPT, "paper": PAPER_PROMPT}
MAX_NEW_TOKENS: dict[str, int] = {"json": 64, "paper": 150}  # paper: as the original generates
SKIP_CLASSES: dict[str, tuple[str, ...]] = {"json": (), "paper": ("bicycle", "motorcycle")}


def prompt_text(template: str, classes: Sequence[str], class_name: str | None = None) -> str:
    """``template`` with ``{classes}`` → the comma-separated classes and ``{class_hint}`` → the
    detector-class hint (empty without a class)."""
    hint = PAPER_CLASS_HINT.replace("{class_name}", class_name.replace("_", " ")) if class_name else ""
    return template.replace("{classes}", ", ".join(classes)).replace("{class_hint}", hint)


OTHERS = "others"
_OTHER_WORDS = {"others", "other", "none", "unknown", "no class"}
_CLASS_KEYS = ("class", "label", "category", "class_name", "name")
_DESC_KEYS = ("description", "desc", "caption", "explanation")


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


def parse_label(raw: str | None, classes: Sequence[str] = NUSCENES_CLASSES) -> ParsedAnswer:
    """Parse a ``paper``-style answer (a bare class name, perhaps in a sentence): the class it names,
    no description. An answer that names no class is parsed as a ``json`` answer would be."""
    if raw is None:
        return ParsedAnswer(None, None)
    text = re.sub(r"```(?:json)?", "", raw).strip()
    exact = match_class(text, classes)
    if exact is not None:
        return ParsedAnswer(exact, None)
    if _mapping_in(text) is None and _key_values(text, classes) is None:
        named = _free_text(text, classes).vlm_class
        if named is not None:
            return ParsedAnswer(named, None)
    return parse_answer(raw, classes)


def parse(raw: str | None, style: PromptStyle, classes: Sequence[str] = NUSCENES_CLASSES) -> ParsedAnswer:
    """Parse an answer to a prompt of ``style``."""
    return parse_label(raw, classes) if style == "paper" else parse_answer(raw, classes)


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


UNKNOWN_NOUN = "unidentified object"  # a detection mapped to "others" with no word of the detector's


def detector_noun(class_name: str, source_class: str | None = None) -> str:
    """The detector's own word for the object when it says more than the mapped class ("cat" for
    animal, "boat" for others), with the mapped class in brackets where that helps ("cat
    (animal)"); the class alone otherwise. A nuScenes category name ("vehicle.car") is no word."""
    mapped = class_name.replace("_", " ")
    own = (source_class or "").strip().replace("_", " ")
    if not own or "." in own or own.lower() == mapped.lower():
        return UNKNOWN_NOUN if class_name == OTHERS else mapped
    return own if class_name == OTHERS else f"{own} ({mapped})"


def object_noun(class_name: str, category: str | None = None, source_class: str | None = None) -> str:
    """The nuScenes category's noun ("ambulance"), else :func:`detector_noun`."""
    return _CATEGORY_NOUNS.get(category or "") or detector_noun(class_name, source_class)


def template_caption(class_name: str, category: str | None = None, attributes: Sequence[str] | None = None,
                     source_class: str | None = None) -> str:
    """``"a parked truck"``, ``"a moving pedestrian"``, ``"a bicycle with a rider"``, ``"a cat
    (animal)"``: the nuScenes category's noun, else the detector's own word
    (:func:`detector_noun`), with the nuScenes attributes; deterministic."""
    noun = object_noun(class_name, category, source_class)
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


@dataclass(frozen=True)
class CaptionRequest:
    detection_id: str
    image_jpeg: bytes | None
    class_name: str
    category: str | None = None
    attributes: tuple[str, ...] = ()
    source_class: str | None = None  # the detector's own class name ("cat" for class_name "animal")


@dataclass(frozen=True)
class CaptionResult:
    status: str  # ok | failed | class_name (not sent to the VLM)
    raw_answer: str | None
    vlm_class: str | None
    description: str | None
    caption: str  # text for concept scoring; the class name when the answer is unusable
    error: str | None
    attempts: int
    latency_s: float


def answer_result(
    raw: str | None, style: PromptStyle, classes: Sequence[str], class_name: str, attempts: int, latency: float
) -> CaptionResult:
    """The result of one answer: ``ok`` with its class and description, or ``failed`` when unusable."""
    parsed = parse(raw, style, classes)
    if not parsed.usable:
        return failed_result(class_name, f"unusable answer {raw!r:.200}", attempts, latency, raw)
    caption = parsed.description or (parsed.vlm_class or class_name).replace("_", " ")
    return CaptionResult("ok", raw, parsed.vlm_class, parsed.description, caption, None, attempts, latency)


def failed_result(class_name: str, error: str, attempts: int, latency: float, raw: str | None = None) -> CaptionResult:
    """No usable answer: the caption falls back to the class name."""
    return CaptionResult("failed", raw, None, None, class_name.replace("_", " "), error, attempts, latency)


def class_name_result(class_name: str) -> CaptionResult:
    """A crop the prompt style does not send to the VLM (paper: bicycle, motorcycle): its class name."""
    return CaptionResult("class_name", None, None, None, class_name.replace("_", " "), None, 0, 0.0)
