"""The nuScenes dataset as a resource: scene listing without the devkit, the devkit loaded lazily."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg

from conceptmine_assets.errors import DatasetError
from conceptmine_assets.lib.images import restore_pixel_guard
from conceptmine_assets.lib.watched import watch

if TYPE_CHECKING:
    from nuscenes.nuscenes import NuScenes

# The tables nuscenes-devkit 1.2 loads; it fails on a missing one with an unhelpful assertion.
NUSCENES_TABLES = (
    "attribute",
    "calibrated_sensor",
    "category",
    "ego_pose",
    "instance",
    "log",
    "map",
    "sample",
    "sample_annotation",
    "sample_data",
    "scene",
    "sensor",
    "visibility",
)


def _find_bad_table(table_dir: Path) -> str | None:
    """Name the first table that is not a JSON list of records with a ``token`` (only called
    after the devkit failed, so a healthy load never parses the tables twice)."""
    for name in NUSCENES_TABLES:
        path = table_dir / f"{name}.json"
        try:
            with path.open() as fh:
                records = json.load(fh)
        except (OSError, ValueError) as exc:
            return f"{path}: {exc}"
        if not isinstance(records, list):
            return f"{path}: expected a list of records, found a {type(records).__name__}"
        key = "level" if name == "visibility" else "token"
        bad = next((i for i, r in enumerate(records) if not isinstance(r, dict) or key not in r), None)
        if bad is not None:
            return f"{path}: record {bad} has no {key!r}"
    return None


def _tables_stamp(table_dir: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime) of every table: a dataroot that grows gets a fresh devkit."""
    stats = ((t, (table_dir / f"{t}.json").stat()) for t in NUSCENES_TABLES)
    return tuple((t, st.st_size, st.st_mtime_ns) for t, st in stats)


@functools.lru_cache(maxsize=4)
def _load_nuscenes(dataroot: str, version: str, stamp: tuple) -> NuScenes:
    """Load the devkit once per (dataroot, version, table stamp) per process."""
    from nuscenes.nuscenes import NuScenes

    restore_pixel_guard()  # the devkit's import switched PIL's decompression-bomb guard off
    try:
        return NuScenes(version=version, dataroot=dataroot, verbose=False)
    except Exception as exc:  # the devkit raises bare AssertionError/JSONDecodeError/KeyError
        bad = _find_bad_table(Path(dataroot) / version)
        detail = f"malformed table {bad}" if bad else f"{type(exc).__name__}: {exc}"
        raise DatasetError(f"nuScenes {version} at {dataroot} could not be loaded: {detail}") from exc


class NuScenesResource(dg.ConfigurableResource):
    """A nuScenes dataroot (``v1.0-mini``, ``v1.0-trainval``, ...).

    ``scene_names()`` reads only ``scene.json``, so sensors stay cheap; ``nusc`` loads the full
    devkit on first use and keeps it for the life of the process.
    """

    dataroot: str
    version: str = "v1.0-mini"

    @property
    def table_dir(self) -> Path:
        return Path(self.dataroot) / self.version

    def check(self) -> None:
        """Fail with a message that names the missing dataroot, version folder or tables."""
        watch(self.table_dir)  # its scenes are the partitions, its tables what the stages read
        root = Path(self.dataroot)
        if not root.is_dir():
            raise DatasetError(f"nuScenes dataroot {root} does not exist (set NUSCENES_DATAROOT)")
        if not self.table_dir.is_dir():
            raise DatasetError(f"nuScenes version folder {self.table_dir} does not exist")
        missing = [f"{t}.json" for t in NUSCENES_TABLES if not (self.table_dir / f"{t}.json").is_file()]
        if missing:
            raise DatasetError(f"nuScenes tables missing in {self.table_dir}: {', '.join(missing)}")

    def scene_names(self) -> list[str]:
        """Scene names in ``scene.json`` order, without loading the other tables."""
        self.check()
        path = self.table_dir / "scene.json"
        try:
            with path.open() as fh:
                return [rec["name"] for rec in json.load(fh)]
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"malformed table {path}: {exc}") from exc

    def tables_stamp(self) -> str:
        """A digest of every table's (name, size, mtime): changes whenever a table is rewritten."""
        self.check()
        return hashlib.sha256(repr(_tables_stamp(self.table_dir)).encode()).hexdigest()[:16]

    @property
    def nusc(self) -> NuScenes:
        self.check()
        return _load_nuscenes(str(Path(self.dataroot).resolve()), self.version, _tables_stamp(self.table_dir))

    def scene(self, name: str) -> dict[str, Any]:
        """The scene record called ``name``; a clear error if the dataroot has no such scene."""
        nusc = self.nusc
        for rec in nusc.scene:
            if rec["name"] == name:
                return rec
        raise DatasetError(
            f"scene {name!r} is not in nuScenes {self.version} at {self.dataroot} "
            f"({len(nusc.scene)} scenes there)"
        )

    def sample_tokens(self, scene: dict[str, Any]) -> list[str]:
        """The keyframe sample tokens of a scene in time order."""
        tokens, token = [], scene["first_sample_token"]
        while token:
            tokens.append(token)
            try:
                token = self.nusc.get("sample", token)["next"]
            except KeyError as exc:
                raise DatasetError(
                    f"scene {scene['name']}: sample {token} is not in {self.table_dir / 'sample.json'} "
                    f"(reached through the scene's sample chain)"
                ) from exc
        return tokens

    def path(self, relative: str) -> Path:
        """Absolute path of a file given relative to the dataroot."""
        return Path(self.dataroot) / relative
