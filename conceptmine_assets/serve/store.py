"""The store as the server reads it: ``store_sql``'s read-only views, reopened when files change.

One connection (``store_sql.open_store_views``, so it has whatever read-only settings that module
gives it) is kept open and shared under a lock. Before each query the server compares a cheap
signature of the store (the modification times of the store folder and of each asset folder: a
scene file written, atomically replaced or removed changes its folder's mtime); a different
signature re-lists the files, and the connection is reopened only when a query may need a file
it was not opened over (:class:`StoreReader`), so new scenes show up and replaced files are read
afresh without paying for a reopen on every change.
Per-scene reads (a crop's image, its detail, the frame's boxes) name that scene's file
directly (``read_parquet`` of one file), so they cost the same at 4 scenes and at 850.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.resources.store_query import StoreChanged
from conceptmine_assets.resources.store_sql import StoredTable, is_local, open_store_views, stored_tables
from upath import UPath

REVIEWS = "reviews"  # the review log's folder: read with pyarrow, never needs the connection reopened
REMOTE_SIGNATURE_SECONDS = 10  # an object store has no cheap folder mtime: its views are reopened this often


class ApiError(Exception):
    """A request the server answers with a JSON error: ``status`` and one clear ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def parse_count(name: str, text: str | None, default: int, most: int) -> int:
    """A query parameter that is a whole number in 1..``most`` (``default`` when absent)."""
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f"{name}={text!r} is not a whole number (1..{most})") from None
    if not 1 <= value <= most:
        raise bad_request(f"{name}={value} is out of range: use 1..{most}")
    return value


def not_found(message: str) -> ApiError:
    return ApiError(404, message)


@dataclass
class Listing:
    """The store's tables as of ``signature`` (cheap: a folder listing)."""

    signature: tuple
    tables: dict[str, StoredTable]

    def files(self, with_reviews: bool) -> frozenset[str]:
        return frozenset(f for name, t in self.tables.items() if with_reviews or name != REVIEWS for f in t.files)


@dataclass
class Connection:
    """An open read-only connection (``store_sql.open_store_views``) and the files it was opened over."""

    store: Any  # .execute(sql, params) and .close()
    files: frozenset[str]


class StoreReader:
    """Queries over the store at ``base_path`` (path or fsspec URL), safe to call from threads.

    The listing is refreshed whenever the signature moves; the connection (whose views, and in
    a locked read-only set-up whose allowed files, are fixed when it opens: opening one costs
    seconds at 850 scenes) is reopened only when a query could need a file it was not opened
    over: a new scene file for any query, and any new or removed file for free SQL, whose views
    must match the store. A replaced file keeps its path, so it needs no reopening."""

    def __init__(self, base_path: str, storage_options: dict[str, Any] | None = None):
        self.base_path = base_path
        self.storage_options = dict(storage_options or {})
        self._lock = threading.Lock()
        self._listing: Listing | None = None
        self._connection: Connection | None = None
        self._cache: dict[str, tuple[tuple, Any]] = {}
        self.reopened = 0

    def signature(self) -> tuple:
        """Changes whenever a scene file of any asset is added, replaced or removed."""
        root = UPath(self.base_path, **self.storage_options)
        if not is_local(root):
            return ("remote", int(time.time() // REMOTE_SIGNATURE_SECONDS))
        path = os.fspath(root.path if hasattr(root, "path") else root)
        try:
            entries = [("", os.stat(path).st_mtime_ns)]  # "": the store folder (its top-level files)
            with os.scandir(path) as it:
                for entry in it:
                    if entry.is_dir():
                        entries.append((entry.name, entry.stat().st_mtime_ns))
        except FileNotFoundError:
            return ("missing",)
        return tuple(sorted(entries))

    def cached(self, name: str, folders: tuple[str, ...], compute: Callable[[], Any]) -> Any:
        """``compute()``, recomputed only when one of ``folders`` (asset folder names; "" for the
        store folder, whose mtime moves with its top-level files) changed since."""
        mtimes = dict(self.signature())
        key = tuple(mtimes.get(f) for f in folders)
        hit = self._cache.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = compute()
        self._cache[name] = (key, value)
        return value

    def _listed(self) -> Listing:
        """The listing for the store as it is now (caller holds the lock)."""
        signature = self.signature()
        if self._listing is None or self._listing.signature != signature:
            tables = stored_tables(self.base_path, self.storage_options)
            if not tables:
                raise ApiError(503, f"nothing is stored under {self.base_path} yet; run `conceptmine run` first")
            self._listing = Listing(signature, tables)
        return self._listing

    def _connected(self, strict: bool) -> Connection:
        """A connection that can read every file a query may name (caller holds the lock)."""
        listing = self._listed()
        con = self._connection
        stale = con is None or (listing.files(True) != con.files if strict else not listing.files(False) <= con.files)
        if stale:
            self._close()
            self._connection = Connection(open_store_views(self.base_path, self.storage_options), listing.files(True))
            self.reopened += 1
        return self._connection

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.store.close()
            self._connection = None

    def warm(self) -> None:
        """Open the connection now (the first request then does not pay for it)."""
        with self._lock:
            self._connected(strict=True)

    def tables(self) -> dict[str, StoredTable]:
        with self._lock:
            return self._listed().tables

    def table(self, asset: str) -> StoredTable | None:
        return self.tables().get(asset)

    def query(self, sql: str, params: list[Any] | None = None, strict: bool = False) -> pd.DataFrame:
        """Run one statement (``strict``: free SQL over the views, which must match the store); a
        store rewritten under the query is a 503 that says to retry."""
        with self._lock:
            connection = self._connected(strict)
            try:
                return connection.store.execute(sql, params or []).df()
            except (duckdb.IOException, StoreChanged) as exc:
                self._close()  # reopen on the next request
                first = (str(exc).strip().splitlines() or ["I/O error"])[0]
                if isinstance(exc, StoreChanged):
                    raise ApiError(503, f"{first[:300]}; retry") from None
                raise ApiError(503, f"the store changed while it was read ({first[:200]}); retry") from None

    def source(self, asset: str, scenes: list[str] | None = None) -> str | None:
        """``read_parquet([...])`` over the files of ``asset`` (only ``scenes`` when given), or
        None when nothing of it is stored (for those scenes)."""
        table = self.table(asset)
        if table is None:
            return None
        if scenes is not None:
            table = table.only(scenes)
        return None if table.empty else table.source_sql()

    def scenes(self) -> list[str]:
        """The scenes that have crops (the grid's universe), in name order."""
        table = self.table("crops")
        return sorted(table.partitions) if table is not None else []

    def require_scene(self, scene: str) -> str:
        if scene not in set(self.scenes()):
            raise not_found(f"unknown scene {scene!r}: no crops are stored for it (see /api/facets for the scenes)")
        return scene


def jsonable(value: Any) -> Any:
    """A cell as JSON: NaN/NA -> null, arrays -> lists, bytes -> their length, numpy scalars -> numbers."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytes": len(value)}
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 6)
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, (str, int, bool)):
        return value
    return str(value)


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: jsonable(v) for k, v in row.items()} for row in df.to_dict(orient="records")]


def check_store_exists(base_path: str) -> None:
    """A clear error at start-up when the store holds nothing to serve."""
    if not stored_tables(base_path):
        raise ConceptmineError(f"nothing is stored under {base_path} yet; run `conceptmine run` first, then serve")
