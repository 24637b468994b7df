"""A snapshot of the asset graph, so that a change to lineage shows in review.

The project's definitions are serialised to plain data (every asset key with its group, kinds,
dependencies and their partition mappings, partitions, automation condition, code version and
backfill policy; the asset checks; every job's steps; sensors and schedules; resource keys) and
compared with ``__snapshots__/test_defs.ambr``. After an intended change, update and review:

    pytest conceptmine_assets_tests/test_defs.py --snapshot-update && git diff conceptmine_assets_tests/__snapshots__
"""

import dagster as dg
import pytest

from conceptmine_assets.definitions import build_definitions
from conceptmine_assets.settings import Settings


@pytest.fixture(scope="module")
def defs(tmp_path_factory: pytest.TempPathFactory) -> dg.Definitions:
    return build_definitions(Settings(store=str(tmp_path_factory.mktemp("store"))))


def condition_text(condition: dg.AutomationCondition | None) -> str | None:
    """An automation condition as text: its label where it has one, else its name and operands."""
    if condition is None:
        return None
    if condition.get_label():
        return condition.get_label()
    children = [condition_text(c) for c in condition.children]
    return f"{condition.name}({', '.join(children)})" if children else condition.name


def partitions_text(partitions: dg.PartitionsDefinition | None) -> str | None:
    if partitions is None:
        return None
    name = getattr(partitions, "name", None)
    return f"{type(partitions).__name__}({name})" if name else type(partitions).__name__


def asset_entry(defs: dg.Definitions, spec: dg.AssetSpec) -> dict:
    assets_def = defs.resolve_assets_def(spec.key)
    policy = assets_def.backfill_policy
    return {
        "group": spec.group_name,
        "kinds": sorted(spec.kinds),
        "executable": assets_def.is_executable,
        "deps": {
            dep.asset_key.to_user_string(): type(dep.partition_mapping).__name__ if dep.partition_mapping else None
            for dep in sorted(spec.deps, key=lambda d: d.asset_key.to_user_string())
        },
        "partitions": partitions_text(spec.partitions_def),
        "automation": condition_text(spec.automation_condition),
        "code_version": spec.code_version,
        "backfill_policy": f"{policy.policy_type.value} <= {policy.max_partitions_per_run}" if policy else None,
    }


def graph(defs: dg.Definitions) -> dict:
    """The structure of ``defs`` as plain, sorted data."""
    specs = sorted(defs.resolve_all_asset_specs(), key=lambda s: s.key.to_user_string())
    checks = defs.resolve_asset_graph().asset_check_keys
    return {
        "assets": {spec.key.to_user_string(): asset_entry(defs, spec) for spec in specs},
        "checks": sorted(f"{k.asset_key.to_user_string()}:{k.name}" for k in checks),
        "jobs": {
            job.name: sorted(node.name for node in job.graph.nodes)
            for job in sorted(defs.resolve_all_job_defs(), key=lambda j: j.name)
            if not job.name.startswith("__")  # Dagster's implicit asset job
        },
        "sensors": sorted(s.name for s in defs.sensors or []),
        "schedules": sorted(s.name for s in defs.schedules or []),
        "resources": sorted(defs.resources or {}),
    }


def test_asset_graph_matches_the_snapshot(defs, snapshot):
    assert graph(defs) == snapshot


def without_dep(defs: dg.Definitions, asset: str, dep: str | None) -> dg.Definitions:
    """``defs`` with ``asset`` as a plain spec of itself (its data inputs cannot be dropped from a
    built op) and the edge ``dep -> asset`` removed (none removed for ``dep=None``)."""
    key = dg.AssetKey(asset)
    spec = next(s for s in defs.resolve_all_asset_specs() if s.key == key)
    spec = spec.replace_attributes(deps=[d for d in spec.deps if d.asset_key != dg.AssetKey(dep or "")])
    others = [a for a in defs.assets or [] if not (isinstance(a, dg.AssetsDefinition) and key in a.keys)]
    return dg.Definitions(assets=[*others, spec], sensors=defs.sensors, schedules=defs.schedules,
                          resources=defs.resources)


def removable_edges(defs: dg.Definitions) -> list[tuple[str, str]]:
    """Every (asset, dep) edge of an executable asset."""
    edges = []
    for spec in defs.resolve_all_asset_specs():
        if defs.resolve_assets_def(spec.key).is_executable:
            edges += [(spec.key.to_user_string(), d.asset_key.to_user_string()) for d in spec.deps]
    return sorted(edges)


def test_removing_any_dependency_edge_changes_the_snapshot(defs):
    """The snapshot catches a lost edge: each graph with one edge removed differs from the same
    graph with it, in exactly that edge."""
    edges = removable_edges(defs)
    assert len(edges) >= 3, edges
    for asset, dep in edges:
        before, after = graph(without_dep(defs, asset, None)), graph(without_dep(defs, asset, dep))
        assert after != before
        assert set(before["assets"][asset]["deps"]) - set(after["assets"][asset]["deps"]) == {dep}
        after["assets"][asset]["deps"] = before["assets"][asset]["deps"]
        assert after == before, f"removing {dep} -> {asset} changed more than that edge"
