"""The concept vocabulary: a versioned YAML data file, loaded and validated here.

A vocabulary is a list of concepts with a group (common | rare | target), a superclass (class
merging) and alternatives (the prompt ensemble). Its identity is ``<version>+<content hash>``,
where the hash covers the file and any extra outlier concepts appended from the run config, so
scores computed with different vocabularies never look alike.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.lib.watched import watch

GROUPS = ("common", "rare", "target")
DEFAULT_VOCABULARY = "concepts_v1.yaml"
_NAME = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*$")
_CONCEPT_KEYS = {"name", "group", "superclass", "alternatives", "aliases"}


class VocabularyError(ConceptmineError):
    """The vocabulary file (or the extra concepts) is malformed."""


def normalize(text: str) -> str:
    """Lower-case, with runs of spaces, underscores and hyphens folded to one space."""
    return re.sub(r"[\s_\-]+", " ", str(text).strip().lower()).strip()


def humanize(name: str) -> str:
    """``traffic_cone`` → ``traffic cone``."""
    return name.replace("_", " ")


def slugify(text: str) -> str:
    """A concept name for free text: ``"Person in a costume"`` → ``person_in_a_costume``."""
    return re.sub(r"[^a-z0-9]+", "_", text.strip().lower()).strip("_")


@dataclass(frozen=True)
class Concept:
    name: str
    group: str
    superclass: str
    alternatives: tuple[str, ...]
    aliases: tuple[str, ...] = ()

    def prompts(self) -> tuple[str, ...]:
        """The concept's prompt ensemble: its humanised name, then its alternatives, deduplicated."""
        seen: dict[str, None] = {}
        for text in (humanize(self.name), *self.alternatives):
            seen.setdefault(text.strip(), None)
        return tuple(seen)


@dataclass(frozen=True)
class Vocabulary:
    """A validated list of concepts; see :func:`load_vocabulary`."""

    version: str
    source: str
    content_hash: str
    concepts: tuple[Concept, ...]
    _by_key: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def identity(self) -> str:
        """``<version>+<first 12 hex digits of the content hash>``: recorded with every score."""
        return f"{self.version}+{self.content_hash[:12]}"

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.concepts]

    def concept(self, name: str) -> Concept:
        for c in self.concepts:
            if c.name == name:
                return c
        raise KeyError(name)

    def resolve(self, label: str | None) -> str | None:
        """The concept a detector/dataset/VLM label names (by name or alias), or None."""
        if label is None:
            return None
        return self._by_key.get(normalize(label))

    def group_of(self, name: str) -> str:
        return self.concept(name).group

    def superclass_of(self, name: str) -> str:
        return self.concept(name).superclass

    def is_target(self, label: str | None) -> bool:
        """Whether ``label`` maps to a target concept, directly or through its superclass."""
        name = self.resolve(label)
        if name is None:
            return False
        return self.group_of(name) == "target" or self.group_of(self.superclass_of(name)) == "target"

    def candidate_kind(self, label: str | None) -> str:
        """How a detector class ranks for captioning: ``target``, ``rare``, ``unknown`` or ``common``.

        Unknown labels (not in the vocabulary) are candidates: nothing says they are common.
        """
        name = self.resolve(label)
        if name is None:
            return "unknown"
        if self.is_target(name):
            return "target"
        return self.group_of(name)

    def prompt_table(self, template: str = "{}") -> tuple[list[str], np.ndarray]:
        """All prompts (``template`` applied) and, per prompt, the index of its concept."""
        prompts: list[str] = []
        owners: list[int] = []
        for i, c in enumerate(self.concepts):
            for text in c.prompts():
                prompts.append(template.format(text))
                owners.append(i)
        return prompts, np.asarray(owners, dtype=np.int64)

    def superclass_table(self) -> tuple[list[str], np.ndarray]:
        """Superclass names (in first-seen order) and, per concept, its superclass index."""
        supers = list(dict.fromkeys(c.superclass for c in self.concepts))
        index = {s: i for i, s in enumerate(supers)}
        return supers, np.asarray([index[c.superclass] for c in self.concepts], dtype=np.int64)


def default_vocabulary_path() -> str:
    """Path of the packaged vocabulary (``conceptmine_assets/data/concepts_v1.yaml``)."""
    return str(resources.files("conceptmine_assets") / "data" / DEFAULT_VOCABULARY)


def _str_list(value: object, where: str, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise VocabularyError(f"{where}: {key!r} must be a list of non-empty strings, got {value!r}")
    return tuple(v.strip() for v in value)


def _parse_concept(raw: object, where: str) -> Concept:
    if not isinstance(raw, dict):
        raise VocabularyError(f"{where}: each concept must be a mapping, got {raw!r}")
    unknown = sorted(set(raw) - _CONCEPT_KEYS)
    if unknown:
        raise VocabularyError(f"{where}: unknown keys {unknown}; allowed {sorted(_CONCEPT_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise VocabularyError(f"{where}: concept name {name!r} must be snake_case (a-z, 0-9, _)")
    group = raw.get("group")
    if group not in GROUPS:
        raise VocabularyError(f"{where}: concept {name!r} has group {group!r}; choose one of {list(GROUPS)}")
    superclass = raw.get("superclass", name)
    if not isinstance(superclass, str):
        raise VocabularyError(f"{where}: concept {name!r} has superclass {superclass!r}, not a name")
    return Concept(
        name=name,
        group=group,
        superclass=superclass,
        alternatives=_str_list(raw.get("alternatives"), f"{where}: concept {name!r}", "alternatives"),
        aliases=_str_list(raw.get("aliases"), f"{where}: concept {name!r}", "aliases"),
    )


def _check_names(concepts: Sequence[Concept], where: str) -> None:
    names = [c.name for c in concepts]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise VocabularyError(f"{where}: duplicate concept names {dupes}")
    by_name = {c.name: c for c in concepts}
    for c in concepts:
        sup = by_name.get(c.superclass)
        if sup is None:
            raise VocabularyError(f"{where}: concept {c.name!r} has superclass {c.superclass!r}, which is not a concept")
        if sup.superclass != sup.name:
            raise VocabularyError(
                f"{where}: concept {c.name!r} has superclass {sup.name!r}, which itself has superclass "
                f"{sup.superclass!r}; superclasses must be top-level concepts"
            )


def _label_index(concepts: Sequence[Concept], where: str) -> dict[str, str]:
    """Map of normalised name/alias to concept name; an alias shared by two concepts is an error."""
    index: dict[str, str] = {}
    for c in concepts:
        for label in (c.name, *c.aliases):
            key = normalize(label)
            owner = index.setdefault(key, c.name)
            if owner != c.name:
                raise VocabularyError(f"{where}: label {label!r} names both {owner!r} and {c.name!r}")
    return index


def extra_concepts(texts: Iterable[str], group: str = "rare") -> list[Concept]:
    """Concepts for free-text outlier prompts appended at test time (VL4AD), one per text."""
    out = []
    for text in texts:
        name = slugify(text)
        if not name:
            raise VocabularyError(f"extra concept {text!r} has no letters or digits")
        out.append(Concept(name=name, group=group, superclass=name, alternatives=(text.strip(),)))
    return out


def build_vocabulary(
    version: str, concepts: Sequence[Concept], source: str, content: bytes, extras: Sequence[Concept] = ()
) -> Vocabulary:
    """Validate ``concepts`` (+ ``extras``) and hash ``content`` + extras into the identity."""
    everything = [*concepts, *extras]
    where = source if not extras else f"{source} (+ {len(extras)} extra concepts)"
    if not everything:
        raise VocabularyError(f"{where}: no concepts")
    _check_names(everything, where)
    index = _label_index(everything, where)
    digest = hashlib.sha256(content)
    if extras:
        digest.update(json.dumps([[c.name, c.group, list(c.alternatives)] for c in extras]).encode())
    return Vocabulary(
        version=version, source=source, content_hash=digest.hexdigest(), concepts=tuple(everything), _by_key=index
    )


# libyaml's safe loader where PyYAML was built with it (~10x faster), else the pure-Python one.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_vocabulary(path: str | Path | None = None, extra: Iterable[str] = ()) -> Vocabulary:
    """Load and validate a vocabulary file (default: the packaged v1), appending ``extra`` concepts.

    Raises :class:`VocabularyError` naming the file on any problem.
    """
    source = str(path) if path else default_vocabulary_path()
    watch(source)
    try:
        content = Path(source).read_bytes()
    except OSError as exc:
        raise VocabularyError(f"vocabulary file {source}: cannot read it: {exc}") from exc
    try:
        doc = yaml.load(content, Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        raise VocabularyError(f"vocabulary file {source}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise VocabularyError(f"vocabulary file {source}: expected a mapping with 'version' and 'concepts'")
    version = doc.get("version")
    if not isinstance(version, (str, int, float)) or not str(version).strip():
        raise VocabularyError(f"vocabulary file {source}: missing or empty 'version'")
    raw = doc.get("concepts")
    if not isinstance(raw, list) or not raw:
        raise VocabularyError(f"vocabulary file {source}: 'concepts' must be a non-empty list")
    concepts = [_parse_concept(item, f"vocabulary file {source}") for item in raw]
    return build_vocabulary(str(version).strip(), concepts, source, content, extra_concepts(extra))
