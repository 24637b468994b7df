"""The local files a plan of ``conceptmine run`` was computed from, and their stamps.

Whatever reads a file that decides the settings, a model's identity or the dataroot's scenes
names it here (:func:`watch`): the config file and the files it ``extends``, the files a model
identity hashes (:func:`conceptmine_assets.lib.identity.fingerprint`), a hub model's cache
folder, the dataroot's tables, the vocabulary. ``conceptmine_assets/cli/uptodate.py`` stamps them,
with the package's own files and the Dagster instance's, to remember a no-change plan.

A stamp is (size, mtime in ns) per file, found by ``os.stat`` (symlinks followed); a folder is
stamped file by file (``__pycache__`` left out), so a file added, removed or rewritten changes
it, while a folder's own mtime (SQLite journals come and go on a read) does not. Standard
library only: the up-to-date check runs before anything heavy is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

Stamp = list[int] | None  # [size, mtime_ns]; None: absent
_WATCHED: dict[str, str] = {}  # path -> "tree" (a file or every file below) | "listing" (a folder's names)


def watch(path: str | os.PathLike, kind: str = "tree") -> None:
    """Remember that this process's plan depends on ``path`` (existing or not)."""
    resolved = str(Path(path).expanduser().absolute())
    if _WATCHED.get(resolved) != "tree":
        _WATCHED[resolved] = kind


def watched() -> dict[str, str]:
    """Every path named by :func:`watch` in this process, with its kind."""
    return dict(_WATCHED)


def file_stamp(path: str | os.PathLike) -> Stamp:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return [st.st_size, st.st_mtime_ns]


def tree_stamp(path: str | os.PathLike, skip: frozenset[str] = frozenset()) -> dict[str, Stamp] | Stamp:
    """A file's stamp, or ``{relative path: stamp}`` of every file below a folder (names in
    ``skip`` and ``__pycache__`` left out at any depth); None when nothing is there."""
    root = Path(path)
    if not root.is_dir():
        return file_stamp(root)
    stamps: dict[str, Stamp] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in skip and d != "__pycache__")
        for name in sorted(files):
            if name in skip:
                continue
            full = os.path.join(folder, name)
            stamps[os.path.relpath(full, root)] = file_stamp(full)
    return stamps


def listing_stamp(path: str | os.PathLike) -> list[str] | None:
    """The names in a folder (not their contents): what a new install or a download changes."""
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return None


def newest_mtime(stamp) -> int:
    """The newest mtime in a stamp of any kind (-1 when it has none)."""
    if isinstance(stamp, dict):
        return max((newest_mtime(s) for s in stamp.values()), default=-1)
    if isinstance(stamp, list) and len(stamp) == 2 and all(isinstance(v, int) for v in stamp):
        return stamp[1]
    return -1
