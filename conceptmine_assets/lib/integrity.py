"""Content records of stored files: the sha256 and size of what was written, to tell a missing,
truncated or altered file from the one a materialisation produced.

Each file written through ``atomic_write`` gets a record beside it, ``<folder>/.<name>.sha256``
(JSON ``{"sha256", "size"}``; hidden, so never read as a table), written atomically after the
file; the IO manager also records the digests as the materialisation's ``content_sha256``
metadata (``{path relative to the store: sha256}``), which is what ``conceptmine run`` plans
with. A file is *intact* when it exists and its size and sha256 equal its record.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

RECORD_SUFFIX = ".sha256"
CHUNK = 1 << 20


def record_path(path: str | os.PathLike) -> Path:
    """Where the record of ``path`` lives: a hidden sibling."""
    path = Path(path)
    return path.with_name(f".{path.name}{RECORD_SUFFIX}")


def is_record(path: str | os.PathLike) -> bool:
    name = Path(path).name
    return name.startswith(".") and name.endswith(RECORD_SUFFIX)


def record_target(path: str | os.PathLike) -> Path:
    """The data file a record belongs to."""
    path = Path(path)
    return path.with_name(path.name[1 : -len(RECORD_SUFFIX)])


class HashingWriter:
    """A binary file wrapper that hashes and counts what is written through it."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh, self._hash, self.size = fh, hashlib.sha256(), 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self._hash.update(view)
        self.size += len(view)
        return self._fh.write(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def __getattr__(self, name: str):  # flush, tell, closed, ... of the wrapped file
        return getattr(self._fh, name)


@dataclass(frozen=True)
class Record:
    sha256: str
    size: int

    def dumps(self) -> str:
        return json.dumps({"sha256": self.sha256, "size": self.size})


def read_record(path: str | os.PathLike) -> Record | None:
    """The record of the data file ``path``, or None (none, or not a record)."""
    try:
        data = json.loads(record_path(path).read_text())
        return Record(str(data["sha256"]), int(data["size"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def sha256_file(path: str | os.PathLike) -> tuple[str, int]:
    """(sha256 hex digest, size) of a file, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def damage(path: str | os.PathLike, sha256: str, size: int | None = None) -> str | None:
    """Why the file ``path`` is not the one recorded (missing, truncated, grown, altered), or None."""
    try:
        actual = os.stat(path).st_size
    except FileNotFoundError:
        return "missing"
    if size is not None and actual != size:
        return f"{'truncated' if actual < size else 'grown'}: {actual} bytes, {size} recorded"
    digest, _ = sha256_file(path)
    if digest != sha256:
        return f"altered: sha256 {digest[:12]}..., {sha256[:12]}... recorded"
    return None


class DigestCache:
    """sha256 of files by (size, mtime): a file is hashed again only when either changed (a
    tampered file gets a new mtime). Persisted as JSON where ``path`` is given."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path else None
        self.entries: dict[str, list] = {}
        if self.path is not None:
            try:
                loaded = json.loads(self.path.read_text())
                self.entries = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                self.entries = {}
        self.changed = False

    def digest(self, path: str | os.PathLike) -> tuple[str, int] | None:
        """(sha256, size) of ``path``, or None when it does not exist."""
        key = os.fspath(path)
        try:
            st = os.stat(key)
        except FileNotFoundError:
            return None
        entry = self.entries.get(key)
        if entry and entry[0] == st.st_size and entry[1] == st.st_mtime_ns:
            return entry[2], st.st_size
        digest, size = sha256_file(key)
        self.entries[key] = [st.st_size, st.st_mtime_ns, digest]
        self.changed = True
        return digest, size

    def damage(self, path: str | os.PathLike, sha256: str, size: int | None = None) -> str | None:
        """:func:`damage`, hashing only a file whose size or mtime changed since last seen."""
        found = self.digest(path)
        if found is None:
            return "missing"
        digest, actual = found
        if size is not None and actual != size:
            return f"{'truncated' if actual < size else 'grown'}: {actual} bytes, {size} recorded"
        if digest != sha256:
            return f"altered: sha256 {digest[:12]}..., {sha256[:12]}... recorded"
        return None

    def save(self) -> None:
        if self.path is None or not self.changed:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.entries))
        os.replace(tmp, self.path)
        self.changed = False
