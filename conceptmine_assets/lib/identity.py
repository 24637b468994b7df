"""A model's identity, defined once: what makes its outputs what they are, computed without loading it.

Both the observed data version of the model source assets (``assets/models.py``) and the
``model_id`` stored with every detection, embedding and caption come from :func:`model_identity`,
so a stored row is stale exactly when its model's observed version moved.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from conceptmine_assets.lib.watched import watch


@dataclass(frozen=True)
class ModelIdentity:
    """``name`` says what the model is (``open_clip:ViT-B-32/laion2b_s34b_b79k``); ``digest`` hashes
    everything that changes its outputs (settings, file contents, library versions, hub revision)."""

    name: str
    digest: str

    @property
    def model_id(self) -> str:
        """The value stored in ``model_id`` columns and observed as the model's data version."""
        return f"{self.name}@{self.digest}"


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
    p = Path(path).expanduser()
    watch(p)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p] if p.is_file() else []
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        st = f.stat()
        name = f.relative_to(p) if p.is_dir() else f.name
        digest.update(f"{name}:{_sha256(str(f), st.st_size, st.st_mtime_ns)}".encode())
    return f"sha256:{digest.hexdigest()[:12]}"


@functools.lru_cache(maxsize=None)
def package_version(package: str) -> str | None:
    """The installed version of a distribution, None when it is not installed (read once per
    process: a running process keeps the modules it imported whatever is installed later)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def hub_snapshot(repo_id: str, probe_file: str, revision: str | None, cache_dir: str | None) -> Path | None:
    """The local snapshot folder of ``repo_id`` at ``revision`` in a Hugging Face hub cache, if
    ``probe_file`` is there (``cache_dir`` None: the hub's default, HF_HUB_CACHE / HF_HOME)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, probe_file, cache_dir=cache_dir, revision=revision)
    if isinstance(found, str):  # <cache>/models--org--name/snapshots/<commit>/<file>: refs and snapshots decide
        watch(next(p.parent for p in Path(found).parents if p.name == "snapshots"))
    else:  # not downloaded yet: a download adds the repository's folder to the cache
        from huggingface_hub import constants

        watch(cache_dir or constants.HF_HUB_CACHE, "listing")
    return Path(found).parent if isinstance(found, str) else None


def hub_revision(repo_id: str, probe_file: str, revision: str | None, cache_dir: str | None) -> str:
    """The commit hash of ``repo_id`` at ``revision`` as the local hub cache has it; the requested
    revision (``main`` by default) when the cache does not have it yet."""
    snapshot = hub_snapshot(repo_id, probe_file, revision, cache_dir)
    return snapshot.name if snapshot is not None else f"unresolved:{revision or 'main'}"


def model_identity(
    name: str,
    settings: Mapping[str, object],
    files: Iterable[str | os.PathLike] = (),
    packages: Iterable[str] = (),
    revision: str | None = None,
) -> ModelIdentity:
    """The identity of a model from its output-relevant ``settings``, the content of its local
    ``files`` (missing ones count as absent), the installed versions of ``packages`` and, for a
    hub model, its resolved ``revision``. Nothing is loaded."""
    parts = {
        "name": name,
        "settings": dict(sorted(settings.items())),
        "files": [fingerprint(f) for f in files],
        "packages": {p: package_version(p) for p in sorted(packages)},
        "revision": revision,
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return ModelIdentity(name, digest)
