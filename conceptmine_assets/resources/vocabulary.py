"""The concept vocabulary as a resource, so its identity can be observed and make scores stale."""

from __future__ import annotations

import dagster as dg

from conceptmine_assets.lib.vocabulary import Vocabulary, load_vocabulary


class VocabularyResource(dg.ConfigurableResource):
    """A concept vocabulary file (default: the packaged ``concepts_v1.yaml``).

    ``extra_concepts`` are free-text outlier concepts (VL4AD) appended at test time without
    editing the file. The identity (``<version>+<content hash>``) changes with either, which
    makes `concept_scores` and everything downstream stale, and nothing upstream.
    """

    path: str | None = None
    extra_concepts: list[str] = []

    def load(self) -> Vocabulary:
        """Parse and validate the file (cheap; a clear error naming the file when invalid)."""
        return load_vocabulary(self.path, self.extra_concepts)

    @property
    def identity(self) -> str:
        return self.load().identity
