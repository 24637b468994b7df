"""Deterministic, order-independent sampling of nuScenes samples."""

from __future__ import annotations

import hashlib


def unit_hash(seed: int, key: str) -> float:
    """A stable pseudo-random number in [0, 1) for ``key`` under ``seed``.

    Unlike ``random.sample`` over a list, the decision for one sample does not depend on which
    other samples exist, so a scene that grows keeps its earlier choices.
    """
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def keep(seed: int, key: str, rate: float) -> bool:
    """Whether ``key`` is in a ``rate`` share sample under ``seed``."""
    return rate >= 1.0 or unit_hash(seed, key) < rate
