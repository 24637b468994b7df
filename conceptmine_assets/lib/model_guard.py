"""The one guard against mixing embeddings of different models (stored vs expected)."""

from __future__ import annotations

from collections.abc import Iterable

from conceptmine_assets.errors import ConceptmineError


def check_embedding_model(found: Iterable[str | None], expected: str, where: str, fix: str) -> None:
    """Refuse embeddings whose ``model_id`` differs from ``expected``.

    ``found``: the model ids of the embeddings about to be used (nulls ignored; none at all is
    fine: nothing to compare); ``where``: what holds them (a scene, the store); ``fix``: what
    the user should re-materialise.
    """
    models = sorted({str(m) for m in found if m is not None})
    if models and models != [expected]:
        raise ConceptmineError(
            f"{where}: embeddings were made by {models}, but {expected!r} is expected here; {fix}"
        )
