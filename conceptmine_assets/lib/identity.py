"""Content fingerprints of local model files, for model identities that change with the weights."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(path: str | os.PathLike) -> str | None:
    """``sha256:<12 hex>`` of a local file (or of a directory's files), None if it does not exist.

    Cached by (path, size, mtime), so observing an unchanged multi-GB checkpoint is free.
    """
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p] if p.is_file() else []
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        st = f.stat()
        digest.update(f"{f.relative_to(p) if p.is_dir() else f.name}:{_sha256(str(f), st.st_size, st.st_mtime_ns)}".encode())
    return f"sha256:{digest.hexdigest()[:12]}"
