"""``conceptmine import-images``: check, read, then write a camera-only nuScenes dataroot.

Reading the source (scan, images, videos) is ``importer.py``; the tables are ``lib/importer.py``.
All-or-nothing: every path and setting is checked, every image decoded and every video decoded
into a staging folder before the dataroot is touched; a failure removes the staging folder (and
the output folder if this run created it). A re-import of the same source writes byte-identical
tables; one of a source that grew keeps every old token and adds the new scenes.
"""

from __future__ import annotations

import argparse
import filecmp
import io
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from conceptmine_assets.cli.importer import (
    IMAGE_SUFFIXES,
    MARKER,
    VIDEO_SUFFIXES,
    ImportOptions,
    image_group,
    probe_images,
    scan,
    video_frames,
)
from conceptmine_assets.errors import ConceptmineError, DatasetError
from conceptmine_assets.lib.importer import (
    MAP_FILENAME,
    Frame,
    Group,
    Tables,
    build_tables,
    check_timestamps,
    plan_scenes,
)
from conceptmine_assets.resources.nuscenes import NUSCENES_TABLES


@dataclass
class ImportSummary:
    out: Path
    scenes: list[str]
    new_scenes: list[str]
    frames: int
    left_out: int
    ignored: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [
            f"{self.out}: {len(self.scenes)} scenes ({len(self.new_scenes)} new), {self.frames} frames, "
            "identity calibration and poses (no 3D geometry), no annotations",
        ]
        if self.new_scenes:
            lines.append(f"new scenes: {', '.join(self.new_scenes[:10])}{' ...' if len(self.new_scenes) > 10 else ''}")
        if self.left_out:
            lines.append(f"{self.left_out} frames of other cameras left out (another frame was nearer their sample)")
        if self.ignored:
            lines.append(f"ignored {len(self.ignored)} files that are not images or videos: {', '.join(self.ignored[:5])}")
        return "\n".join(lines)


def check_paths(src: Path, out: Path) -> None:
    """The source exists, the output is not inside it, and the output is new, empty or an earlier
    import of this same source."""
    if not src.exists():
        raise DatasetError(f"source {src} does not exist")
    source, target = src.resolve(), out.resolve()
    if src.is_dir() and (target == source or source in target.parents):
        raise ConceptmineError(f"output {out} is inside the source {src}: choose an output folder outside it")
    if out.exists() and not out.is_dir():
        raise ConceptmineError(f"output {out} exists and is not a folder")
    marker = out / MARKER
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text())["source"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConceptmineError(f"{marker} is unreadable ({exc}): use a new output folder") from exc
        if recorded != str(source):
            raise ConceptmineError(f"{out} was imported from {recorded}, not {source}: use another output folder")
    elif out.exists() and any(out.iterdir()):
        raise ConceptmineError(f"output {out} is not empty and holds no {MARKER}: choose a new or empty folder")


def read_source(src: Path, staging: Path, opts: ImportOptions) -> tuple[list[Group], list[str]]:
    """Every group of the source (images probed first, then videos decoded into ``staging``)."""
    found = scan(src)
    if not found.images and not found.videos:
        kinds = " ".join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)
        raise DatasetError(f"no images or videos in {src} (looked for {kinds})")
    root = src if src.is_dir() else src.parent
    by_group: dict[str, dict[str, list[Path]]] = {}
    for (group, channel), paths in sorted(found.images.items()):
        by_group.setdefault(group, {})[channel] = paths
    probe = probe_images([p for paths in found.images.values() for p in paths])
    groups = [image_group(g, found.origins[g], chans, root, probe, opts) for g, chans in by_group.items()]
    for group in groups:
        check_timestamps(group)
    for name, channel, path in found.videos:
        rel = path.relative_to(root).as_posix()
        groups.append(Group(name, rel, "video", video_frames(path, name, channel, rel, staging, opts)))
    return groups, found.ignored


def _replace(dest: Path, make) -> None:
    """Create ``dest`` through a temporary sibling (``make(tmp)``) and ``os.replace``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    make(tmp)
    os.replace(tmp, dest)


def place_images(out: Path, frames: list[Frame], copy: bool) -> None:
    """Symlink (or copy) each source image to its dataroot path; an identical one is left alone."""
    for frame in frames:
        source, dest = Path(frame.source).resolve(), out / frame.filename
        if copy and dest.is_file() and not dest.is_symlink() and filecmp.cmp(source, dest, shallow=False):
            continue
        if not copy and dest.is_symlink() and Path(os.readlink(dest)) == source:
            continue
        _replace(dest, (lambda t: shutil.copyfile(source, t)) if copy else (lambda t: t.symlink_to(source)))


def write_tables(table_dir: Path, tables: Tables) -> None:
    """All 13 tables to temporary files first, then into place with ``scene.json`` last."""
    table_dir.mkdir(parents=True, exist_ok=True)
    order = [t for t in NUSCENES_TABLES if t != "scene"] + ["scene"]
    staged = []
    for name in order:
        tmp = table_dir / f".{name}.json.tmp-{os.getpid()}"
        with tmp.open("w") as fh:
            json.dump(tables[name], fh, indent=0)
        staged.append((tmp, table_dir / f"{name}.json"))
    for tmp, dest in staged:
        os.replace(tmp, dest)


def _placeholder_map() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    return buf.getvalue()


def _previous_scenes(out: Path, version: str) -> set[str]:
    path = out / version / "scene.json"
    return {rec["name"] for rec in json.loads(path.read_text())} if path.is_file() else set()


def import_images(src: Path, out: Path, opts: ImportOptions = ImportOptions()) -> ImportSummary:
    """Import ``src`` (folder of images / folders / videos, or one video) as a dataroot at ``out``."""
    src, out = Path(src), Path(out)
    check_paths(src, out)
    previous, created = _previous_scenes(out, opts.version), not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-staging-", dir=out))
    try:
        groups, ignored = read_source(src, staging, opts)
        scenes, left_out = plan_scenes(groups, opts.fps, opts.gap)
        tables = build_tables(scenes)
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            dest = out / path.relative_to(staging)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
        place_images(out, [f for g in groups if g.clock != "video" for f in g.frames], opts.copy)
        if not (out / MAP_FILENAME).is_file():
            _replace(out / MAP_FILENAME, lambda t: t.write_bytes(_placeholder_map()))
        write_tables(out / opts.version, tables)
        marker = {"source": str(src.resolve()), "version": opts.version}
        _replace(out / MARKER, lambda t: t.write_text(json.dumps(marker, indent=1) + "\n"))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    names = [s.name for s in scenes]
    frames = sum(len(sample) for s in scenes for sample in s.samples)
    return ImportSummary(out, names, [n for n in names if n not in previous], frames, left_out, ignored)


def import_command(args: argparse.Namespace) -> int:
    """Run ``import-images``; a bad source or output is one line on stderr and exit code 2."""
    opts = ImportOptions(fps=args.fps, gap=args.gap, copy=args.copy, timestamps=args.timestamps, version=args.version)
    try:
        summary = import_images(Path(args.src), Path(args.out), opts)
    except ConceptmineError as exc:
        sys.stderr.write(f"conceptmine import-images: {exc}\n")
        return 2
    sys.stdout.write(summary.describe() + "\n")
    sys.stdout.write(f"next: NUSCENES_DATAROOT={Path(args.out).resolve()} conceptmine demo\n")
    return 0
