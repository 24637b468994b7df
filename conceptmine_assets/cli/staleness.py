"""What is missing or stale, from the instance's own records — what ``conceptmine run`` computes.

Dagster's notion, read through public instance APIs: an asset partition needs work when it has
never been materialised, when its recorded ``dagster/code_version`` differs from the asset's
code version, when an observed model or vocabulary it depends on now has another data version
than the one recorded at its materialisation (``dagster/input_data_version/<dep>``), or when an
upstream asset (partition) was materialised after it. A scene partition looks at the same scene
of its upstream assets; a global asset at every scene.

With :class:`StoreFiles`, a partition whose stored file is missing, truncated or altered (not
the sha256 its materialisation recorded) is stale too: it is recomputed, never trusted.

``outlier_reference`` is the exception automation makes too: new scenes are scored against the
existing reference, so only a change to a scene it was fitted on (a re-embedded scene) stales it.
"""

from __future__ import annotations

import graphlib
from pathlib import Path
from collections.abc import Iterable
from dataclasses import dataclass, field

import dagster as dg

CODE_VERSION_TAG = "dagster/code_version"
INPUT_VERSION_TAG = "dagster/input_data_version/"
DATA_VERSION_TAG = "dagster/data_version"
# Refit only when a scene it was fitted on changed, not when scenes are added (see automation.py).
REFIT_ON_CHANGE_ONLY = frozenset({"outlier_reference"})


@dataclass
class Latest:
    """One asset partition's materialisations: the latest's storage id, tags and recorded file
    contents (``{path relative to the store: (sha256, size)}``), the first's id."""

    storage_id: int
    first_storage_id: int
    tags: dict[str, str]
    content: dict[str, tuple[str, int | None]] = field(default_factory=dict)


def _content(metadata) -> dict[str, tuple[str, int | None]]:
    """The ``content_sha256`` / ``content_size`` output metadata of a materialisation."""
    from conceptmine_assets.resources.storage import CONTENT_KEY, SIZE_KEY

    digests = metadata.get(CONTENT_KEY)
    sizes = metadata.get(SIZE_KEY)
    if digests is None or not isinstance(digests.value, dict):
        return {}
    size_of = sizes.value if sizes is not None and isinstance(sizes.value, dict) else {}
    return {str(k): (str(v), size_of.get(k)) for k, v in digests.value.items()}


# Side files a global asset writes under the store (at their default place), with a record each.
SIDE_FOLDERS = {"mined_split": "splits", "gallery": "gallery"}


@dataclass
class StoreFiles:
    """Checks a partition's stored files against the digests its materialisation recorded (a
    local store; hashing only files whose size or mtime changed, ``lib/integrity.DigestCache``).
    ``found`` collects the damaged files seen, for the caller to report."""

    base: str
    cache: object  # DigestCache
    found: dict[str, str] = field(default_factory=dict)

    def damaged(self, asset: str, scene: str | None, latest: Latest) -> str | None:
        suffix = f"{asset}/{scene}." if scene is not None else None
        expected = {f"{self.base.rstrip('/')}/{relative}": record for relative, record in latest.content.items()
                    if suffix is None or relative.startswith(suffix)}  # not another scene of a multi-scene run
        if scene is None and asset in SIDE_FOLDERS:
            expected.update(self._side_files(Path(self.base) / SIDE_FOLDERS[asset]))
        for path, (sha256, size) in sorted(expected.items()):
            why = self.cache.damage(path, sha256, size) if sha256 else "no record"
            if why:
                self.found[path] = why
                return f"stored file {path} does not match its record ({why})"
        return None

    @staticmethod
    def _side_files(folder: Path) -> dict[str, tuple[str, int | None]]:
        """The side files under ``folder`` with the records written beside them ("" if none)."""
        from conceptmine_assets.lib.integrity import read_record

        found: dict[str, tuple[str, int | None]] = {}
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if path.is_file() and not path.name.startswith("."):
                record = read_record(path)
                found[str(path)] = (record.sha256, record.size) if record else ("", None)
        return found


@dataclass
class Records:
    """Latest materialisation per partition (None: unpartitioned) of each asset read so far."""

    instance: dg.DagsterInstance
    by_asset: dict[str, dict[str | None, Latest]] = field(default_factory=dict)
    observed: dict[str, str | None] = field(default_factory=dict)

    def of(self, asset: str) -> dict[str | None, Latest]:
        if asset not in self.by_asset:
            self.by_asset[asset] = _latest_per_partition(self.instance, dg.AssetKey(asset))
        return self.by_asset[asset]

    def observed_version(self, asset: str) -> str | None:
        if asset not in self.observed:
            result = self.instance.fetch_observations(dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset)), limit=1)
            tags = result.records[0].asset_observation.tags if result.records else {}
            self.observed[asset] = tags.get(DATA_VERSION_TAG)
        return self.observed[asset]

    def newest(self, asset: str) -> int:
        return max((r.storage_id for r in self.of(asset).values()), default=-1)


def _latest_per_partition(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str | None, Latest]:
    """Every materialisation of ``key``, newest first, folded to one entry per partition."""
    latest: dict[str | None, Latest] = {}
    cursor = None
    while True:
        page = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1000, cursor=cursor)
        for record in page.records:
            entry = latest.get(record.partition_key)
            if entry is None:
                tags = dict(record.asset_materialization.tags or {})
                content = _content(record.asset_materialization.metadata or {})
                latest[record.partition_key] = Latest(record.storage_id, record.storage_id, tags, content)
            else:
                entry.first_storage_id = min(entry.first_storage_id, record.storage_id)
        if not page.has_more:
            return latest
        cursor = page.cursor


@dataclass(frozen=True)
class Node:
    """What staleness needs to know of one asset."""

    name: str
    code_version: str | None
    partitioned: bool
    deps: tuple[str, ...]
    observable: bool  # an observed source (model identity, vocabulary): compare data versions


def graph_nodes(defs: dg.Definitions) -> dict[str, Node]:
    graph = defs.resolve_asset_graph()
    nodes = {}
    for spec in defs.resolve_all_asset_specs():
        name = spec.key.to_user_string()
        nodes[name] = Node(
            name, spec.code_version, spec.partitions_def is not None,
            tuple(d.asset_key.to_user_string() for d in spec.deps), graph.get(spec.key).is_observable,
        )
    return nodes


def topological(nodes: dict[str, Node], names: Iterable[str]) -> list[str]:
    """``names`` with every asset after the assets it depends on."""
    wanted = set(names)
    order = graphlib.TopologicalSorter({n: [d for d in nodes[n].deps if d in wanted] for n in sorted(wanted)})
    return list(order.static_order())


def _dep_changed(records: Records, nodes: dict[str, Node], node: Node, dep: str, scene: str | None, mine: Latest) -> str | None:
    """Why ``dep`` makes ``node`` (at ``scene``) stale, or None."""
    dep_node = nodes[dep]
    if dep_node.observable:
        now, then = records.observed_version(dep), mine.tags.get(INPUT_VERSION_TAG + dep)
        return f"{dep} changed" if now is not None and now != then else None
    upstream = records.of(dep)
    if dep_node.partitioned and node.partitioned:
        entry = upstream.get(scene)
        return f"{dep} newer" if entry and entry.storage_id > mine.storage_id else None
    if dep_node.partitioned and node.name in REFIT_ON_CHANGE_ONLY:
        changed = [s for s, e in upstream.items() if e.first_storage_id < mine.storage_id < e.storage_id]
        return f"{dep} of {len(changed)} fitted scene(s) changed" if changed else None
    if dep_node.partitioned:
        return f"{dep} newer" if records.newest(dep) > mine.storage_id else None
    entry = upstream.get(None)
    return f"{dep} newer" if entry and entry.storage_id > mine.storage_id else None


def why_stale(
    records: Records, nodes: dict[str, Node], name: str, scene: str | None, files: StoreFiles | None = None
) -> str | None:
    """Why asset ``name`` (partition ``scene``) needs work — missing, its stored file missing or
    not the recorded one (with ``files``), code or an input — or None."""
    node = nodes[name]
    mine = records.of(name).get(scene)
    if mine is None:
        return "missing"
    damaged = files.damaged(name, scene, mine) if files is not None else None
    if damaged:
        return damaged
    if node.code_version is not None and mine.tags.get(CODE_VERSION_TAG) != node.code_version:
        return f"code version {mine.tags.get(CODE_VERSION_TAG)} -> {node.code_version}"
    for dep in node.deps:
        reason = _dep_changed(records, nodes, node, dep, scene, mine)
        if reason:
            return reason
    return None


def plan_stage(
    records: Records, nodes: dict[str, Node], assets: Iterable[str], scenes: list[str], force: bool = False,
    files: StoreFiles | None = None,
) -> dict[str, list[str | None]]:
    """``{asset: [partitions to materialise]}`` for one stage's assets (scene order kept); an
    asset planned for a scene makes its downstream assets of the stage planned there too."""
    planned: dict[str, list[str | None]] = {}
    chosen: set[tuple[str, str | None]] = set()
    for name in topological(nodes, assets):
        node = nodes[name]
        keys: list[str | None] = list(scenes) if node.partitioned else [None]
        for key in keys:
            upstream_planned = any((d, key if nodes[d].partitioned else None) in chosen for d in node.deps)
            if not node.partitioned:
                upstream_planned = any(d == a for d in node.deps for a, _ in chosen)
            if force or upstream_planned or why_stale(records, nodes, name, key, files):
                chosen.add((name, key))
                planned.setdefault(name, []).append(key)
    return planned
