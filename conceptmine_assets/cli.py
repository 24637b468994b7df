"""Command line: register scenes, run the pipeline end to end, query the store with SQL.

    conceptmine register-scenes     # add every scene of $NUSCENES_DATAROOT as a partition
    conceptmine demo                # the whole pipeline on the configured dataroot, in process
    conceptmine sql "SELECT ..."    # SQL over the DuckDB views of the store
    conceptmine search "a person pushing a cart" [-k 10]   # free-text search over the crops
    conceptmine synth-dataroot --out DIR SRC [SRC ...]   # merge (and replicate) nuScenes dataroots
    conceptmine import-images SRC --out DIR   # a folder of images or videos as a nuScenes dataroot

The Dagster instance is ``$DAGSTER_HOME`` (``make`` sets ``data/dagster_home``), so the runs
show up in ``dagster dev`` afterwards.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import dagster as dg


def _definitions() -> dg.Definitions:
    from conceptmine_assets.definitions import build_definitions
    from conceptmine_assets.settings import Settings

    return build_definitions(Settings.from_env())


def _nuscenes():
    from conceptmine_assets.resources.nuscenes import NuScenesResource

    from conceptmine_assets.settings import load_settings

    settings = load_settings()
    if not settings.dataroot:
        raise SystemExit("set NUSCENES_DATAROOT (or `dataroot` in the config file) to a nuScenes dataroot")
    return NuScenesResource(dataroot=settings.dataroot, version=settings.nuscenes_version)


def register_scenes(instance: dg.DagsterInstance) -> list[str]:
    from conceptmine_assets.sensors import register_scenes as register

    return register(instance, _nuscenes())


def run_pipeline(
    instance: dg.DagsterInstance,
    scenes: list[str],
    cameras: list[str] | None = None,
    split: dict | None = None,
    defs: dg.Definitions | None = None,
) -> None:
    """Per-scene stages for every scene, then the global stages, each as a recorded run.

    Settings come from the config file (``conceptmine.yaml``); ``cameras`` and ``split`` override
    it for this call only (tests); ``defs`` replaces the deployment's definitions (the benchmark)."""
    from conceptmine_assets.definitions import PIPELINE

    defs = defs or _definitions()
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    run_config = {**quiet, "ops": {"frames": {"config": {"cameras": cameras}}}} if cameras else quiet
    for stage_job, global_job in PIPELINE:
        for scene in scenes if stage_job else []:
            started = time.perf_counter()
            job = defs.resolve_job_def(stage_job)
            config = run_config if "frames" in {n.name for n in job.graph.node_defs} else quiet
            job.execute_in_process(partition_key=scene, instance=instance, run_config=config)
            sys.stdout.write(f"{stage_job} {scene}: ok in {time.perf_counter() - started:.1f}s\n")
        started = time.perf_counter()
        global_config = {**quiet, "ops": {"mined_split": {"config": split}}} if split and global_job == "mining_global_job" else quiet
        defs.resolve_job_def(global_job).execute_in_process(instance=instance, run_config=global_config)
        sys.stdout.write(f"{global_job}: ok in {time.perf_counter() - started:.1f}s\n")


def search_command(text: str, k: int) -> int:
    """Print the ``k`` best crops for ``text`` from the search index, and which mode ranked them."""
    from conceptmine_assets.definitions import model_resources
    from conceptmine_assets.resources.search_index import SearchIndexResource, search_crops
    from conceptmine_assets.settings import Settings

    settings = Settings.from_env()
    embedder = model_resources(settings)["embedder"]
    result, stale = search_crops(SearchIndexResource(base_path=settings.store), embedder, text, k)
    for line in stale:
        sys.stdout.write(f"warning: the search index is older than the store ({line}); re-materialise search_index\n")
    table = result.hits.to_string(index=False, max_colwidth=50, float_format=lambda v: f"{v:.3f}")
    sys.stdout.write(f"{result.describe()}\n{table}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="conceptmine", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("register-scenes", help="add every scene of the dataroot as a partition")
    demo = sub.add_parser("demo", help="run the whole pipeline on the configured dataroot")
    demo.add_argument("--scenes", nargs="+", help="only these scenes (default: all)")
    synth = sub.add_parser("synth-dataroot", help="merge and replicate nuScenes dataroots (symlinked files)")
    synth.add_argument("sources", nargs="+", help="source dataroots")
    synth.add_argument("--out", required=True, help="output dataroot (created; re-running refreshes it)")
    synth.add_argument("--copies", type=int, default=1, help="copies of every scene (default 1)")
    sql = sub.add_parser("sql", help="run SQL over the DuckDB views of the store")
    sql.add_argument("query")
    search = sub.add_parser("search", help="rank the stored crops by a free-text query")
    search.add_argument("text", help='e.g. "a person pushing a cart"')
    search.add_argument("-k", type=int, default=10, help="number of crops to list (default 10)")
    from conceptmine_assets.import_images import add_import_parser, import_command

    add_import_parser(sub)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    # Jobs mix the model stages' multi-scene backfill policy with single-scene stages; the CLI runs
    # one scene per run anyway (asset backfills from the UI are where the model stages batch).
    warnings.filterwarnings("ignore", message="Asset job .* varying BackfillPolicies")

    if args.command == "sql":
        from conceptmine_assets.resources.storage import open_store_views
        from conceptmine_assets.settings import Settings

        df = open_store_views(Settings.from_env().store).execute(args.query).df()
        sys.stdout.write(df.to_string(max_rows=200, max_colwidth=60) + "\n")
        return 0

    if args.command == "import-images":
        return import_command(args)
    if args.command == "search":
        return search_command(args.text, args.k)
    if args.command == "synth-dataroot":
        from pathlib import Path

        from conceptmine_assets.lib.synth import synth_dataroot

        names = synth_dataroot([Path(s) for s in args.sources], Path(args.out), args.copies)
        sys.stdout.write(f"{args.out}: {len(names)} scenes ({', '.join(names[:8])}{' ...' if len(names) > 8 else ''})\n")
        return 0

    with dg.DagsterInstance.get() as instance:
        new = register_scenes(instance)
        sys.stdout.write(f"registered {len(new)} new scene partitions\n")
        if args.command == "demo":
            scenes = args.scenes or _nuscenes().scene_names()
            run_pipeline(instance, scenes)
            from conceptmine_assets.settings import load_settings

            store = load_settings().store
            sys.stdout.write(
                f"\ndone. Outputs: {store}/<asset>/<scene>.parquet\n"
                f"Mined split: {store}/splits/mined.txt   Gallery: {store}/gallery/index.html (open in a browser)\n"
                "Browse lineage and metadata: make ui  (then open http://127.0.0.1:3000)\n"
                'Query: .venv/bin/conceptmine sql "SELECT * FROM mined_split"   '
                '.venv/bin/conceptmine search "a parked truck"\n'
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
