"""Command line: register scenes, run the pipeline incrementally, query the store with SQL.

    conceptmine register-scenes     # add every scene of the dataroot as a partition
    conceptmine run [--force]       # materialise what is missing or stale (alias: demo)
    conceptmine sql "SELECT ..."    # SQL over the DuckDB views of the store
    conceptmine search "a person pushing a cart" [-k 10]   # free-text search over the crops
    conceptmine verify              # every stored file against its content record
    conceptmine serve [--port 8765] [--host 127.0.0.1]   # the explorer page + search/SQL API
    conceptmine reviews export --format csv|coco [--out FILE]   # the reviewed boxes
    conceptmine synth-dataroot --out DIR SRC [SRC ...]   # merge (and replicate) nuScenes dataroots
    conceptmine import-images SRC --out DIR   # a folder of images or videos as a nuScenes dataroot

Settings come from conceptmine.yaml and the environment (``conceptmine_assets/settings.py``).
The Dagster instance is ``$DAGSTER_HOME`` (``make`` sets ``data/dagster_home``): the runs show
up under their jobs in ``dagster dev``. Errors print one line (``--debug``: the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where needed: a no-change `conceptmine run` never imports Dagster
    import dagster as dg

    from conceptmine_assets.cli.uptodate import UpToDate


class UsageError(Exception):
    """A problem with what the user asked for (printed as one line, exit code 2)."""


def instance_from_env() -> dg.DagsterInstance:
    """The Dagster instance of ``$DAGSTER_HOME`` (where runs and materialisations are recorded)."""
    import dagster as dg

    if not os.environ.get("DAGSTER_HOME"):
        raise UsageError(
            "DAGSTER_HOME is not set: it names the Dagster instance that records the runs; e.g. "
            "export DAGSTER_HOME=$PWD/data/dagster_home (what `make demo` and `make ui` use)"
        )
    return dg.DagsterInstance.get()


def register_scenes(instance: dg.DagsterInstance, nuscenes=None) -> list[str]:
    """Add every scene of the dataroot as a partition (after the pre-flight checks)."""
    from conceptmine_assets.cli.preflight import preflight
    from conceptmine_assets.orchestration.sensors import register_scenes as register

    if nuscenes is None:
        _, nuscenes = preflight(instance.root_directory, load_models=False)
    return register(instance, nuscenes)


def run_pipeline(
    instance: dg.DagsterInstance, scenes: list[str] | None = None, force: bool = False, ops: dict | None = None,
    memo: UpToDate | None = None, signals=None, checked: tuple | None = None,
):
    """Pre-flight checks, register new scenes, then :func:`conceptmine_assets.cli.runner.run`; with
    ``memo``, a plan that then finds nothing to do is remembered (``uptodate.py``)."""
    from conceptmine_assets.cli.preflight import preflight
    from conceptmine_assets.cli.runner import pending, run

    from conceptmine_assets.resources.reviews_log import watch_log

    settings, nuscenes = checked or preflight(instance.root_directory)  # checked: run_command did it
    if signals is not None:
        signals.check()  # a safe point: nothing written yet
    watch_log(settings.store)  # a new review is a change the no-change memo must see (before its snapshot)
    check_scenes(scenes, nuscenes)
    new = register_scenes(instance, nuscenes)
    sys.stdout.write(f"registered {len(new)} new scene partitions\n")
    before = memo.snapshot() if memo is not None else None  # what run()'s plan is computed from
    executed = run(instance, scenes, force=force, ops=ops, signals=signals)
    if memo is not None and executed:  # runs wrote to the instance: check their result plans to nothing
        before = memo.snapshot()
        if pending(instance, scenes):
            before = None
    if memo is not None:
        memo.save(before, settings.store)  # only if nothing moved since `before` (uptodate.py)
    return executed


def check_scenes(scenes: list[str] | None, nuscenes) -> None:
    unknown = sorted(set(scenes or []) - set(nuscenes.scene_names()))
    if unknown:
        raise UsageError(f"--scenes {' '.join(unknown)}: not in {nuscenes.table_dir / 'scene.json'}")


def run_command(scenes: list[str] | None, force: bool, memo: UpToDate | None, wait: bool = False) -> int:
    """Check where the run writes, take the run lock (``runlock.py``), then run; SIGINT and
    SIGTERM end it with one line, the interrupted run marked CANCELED (``interrupts.py``); the
    runs' warnings are summed up in one line (``quiet.py``)."""
    import time

    from conceptmine_assets.cli.interrupts import watch_signals
    from conceptmine_assets.cli.preflight import preflight
    from conceptmine_assets.cli.quiet import summary
    from conceptmine_assets.cli.runlock import check_home, check_store, reap_orphaned_runs, run_lock
    from conceptmine_assets.settings import load_settings

    settings = load_settings()
    home = dagster_home()
    started = time.time()
    with watch_signals() as signals:
        check_home(home, settings.min_free_mb)
        checked = preflight(home)  # bad input stops here, before anything is written to the store or instance
        check_scenes(scenes, checked[1])
        signals.check()
        check_store(settings.store, settings.min_free_mb)
        with run_lock(home, settings.store, wait), instance_from_env() as instance:
            reap_orphaned_runs(instance)
            run_pipeline(instance, scenes, force, memo=memo, signals=signals, checked=checked)
            warned = summary(instance, started)  # warnings stay in the runs' logs: one line about them
    if warned:
        sys.stdout.write(warned + "\n")
    from conceptmine_assets.cli.commands import done

    return done(settings.store)


def dagster_home():
    """``$DAGSTER_HOME`` as a path, or the UsageError saying what to set."""
    from pathlib import Path

    instance_home = os.environ.get("DAGSTER_HOME")
    if not instance_home:
        instance_from_env()  # raises the UsageError
    return Path(instance_home).expanduser().absolute()


def run_memo(scenes: list[str] | None) -> UpToDate | None:
    """The no-change memo of this command (``uptodate.py``), made before anything is imported:
    its key is this process's environment and ``sys.path`` as the user started it."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        return None  # the planned path says what to set
    from conceptmine_assets.cli.uptodate import UpToDate

    return UpToDate(home, scenes)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="conceptmine", description=__doc__.splitlines()[0])
    top.add_argument("--debug", action="store_true", help="print the full traceback of an error")
    sub = top.add_subparsers(dest="command", required=True)
    sub.add_parser("register-scenes", help="add every scene of the dataroot as a partition")
    for name in ("run", "demo"):
        run = sub.add_parser(name, help="materialise what is missing or stale" + (" (alias of run)" if name == "demo" else ""))
        run.add_argument("--scenes", nargs="+", help="only these scenes (default: all)")
        run.add_argument("--force", action="store_true", help="recompute everything, stale or not")
        run.add_argument("--wait", action="store_true", help="wait for another run holding the run lock (default: stop)")
        run.add_argument("--verbose", action="store_true", help="show library output and every Dagster log line")
    synth = sub.add_parser("synth-dataroot", help="merge and replicate nuScenes dataroots (symlinked files)")
    synth.add_argument("sources", nargs="+", help="source dataroots")
    synth.add_argument("--out", required=True, help="output dataroot (created; re-running refreshes it)")
    synth.add_argument("--copies", type=int, default=1, help="copies of every scene (default 1)")
    sql = sub.add_parser("sql", help="run SQL over the DuckDB views of the store")
    sql.add_argument("query")
    sub.add_parser("verify", help="check every stored file against its content record (exit 1 on a mismatch)")
    search = sub.add_parser("search", help="rank the stored crops by a free-text query")
    search.add_argument("text", help='e.g. "a person pushing a cart"')
    search.add_argument("-k", type=int, default=10, help="number of crops to list (default 10)")
    serve = sub.add_parser("serve", help="the explorer page and the search / read-only SQL API on one local server")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1; anything else has NO authentication)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    serve.add_argument("--verbose", action="store_true", help="log every request")
    reviews = sub.add_parser("reviews", help="the review log (written by the explorer page)")
    actions = reviews.add_subparsers(dest="action", required=True)
    export = actions.add_parser("export", help="the reviewed boxes as CSV or COCO-style JSON")
    export.add_argument("--format", choices=["csv", "coco"], default="csv", help="csv (default) or coco")
    export.add_argument("--out", help="file to write (default: standard output)")
    add_import_parser(sub)
    return top


def _positive(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1000:
        raise argparse.ArgumentTypeError(f"{text} is not a number in (0, 1000]")
    return value


def add_import_parser(sub) -> None:
    """The ``import-images`` subcommand (``import_images.py``)."""
    cmd = sub.add_parser("import-images", help="turn a folder of images or videos into a nuScenes dataroot")
    cmd.add_argument("src", help="folder of images, of folders of images, or of videos; or one video")
    cmd.add_argument("--out", required=True, help="dataroot to write (new, or an earlier import of SRC)")
    cmd.add_argument("--fps", type=_positive, default=2.0, help="samples per second (default 2, as nuScenes)")
    cmd.add_argument("--gap", type=_positive, help="split a scene where samples are more than this many seconds apart")
    cmd.add_argument("--copy", action="store_true", help="copy the images (default: symlink them)")
    cmd.add_argument("--timestamps", choices=["auto", "filename", "exif", "order"], default="auto",
                     help="where frame times come from (default: file names, else EXIF, else file order)")
    cmd.add_argument("--version", default="v1.0-mini", help="table folder name (default v1.0-mini)")


def dispatch(args: argparse.Namespace, memo: UpToDate | None = None) -> int:
    if args.command == "sql":
        from conceptmine_assets.cli.commands import sql_command

        return sql_command(args.query)
    if args.command == "import-images":
        from conceptmine_assets.cli.import_images import import_command

        return import_command(args)
    if args.command == "search":
        from conceptmine_assets.cli.commands import search_command

        return search_command(args.text, args.k)
    if args.command == "verify":
        from conceptmine_assets.cli.verify import verify
        from conceptmine_assets.settings import load_settings

        return verify(load_settings().store, use_instance=bool(os.environ.get("DAGSTER_HOME")))
    if args.command == "serve":
        from conceptmine_assets.serve.main import serve

        return serve(args.host, args.port, args.verbose)
    if args.command == "reviews":
        from conceptmine_assets.cli.review_export import export_command

        return export_command(args.format, args.out)
    if args.command == "synth-dataroot":
        from conceptmine_assets.cli.commands import synth_command

        return synth_command(args.sources, args.out, args.copies)
    if args.command == "register-scenes":
        from conceptmine_assets.cli.runlock import check_home, run_lock
        from conceptmine_assets.settings import load_settings

        settings, home = load_settings(), dagster_home()
        check_home(home, settings.min_free_mb)
        with run_lock(home, settings.store), instance_from_env() as instance:  # the instance's one writer
            sys.stdout.write(f"registered {len(register_scenes(instance))} new scene partitions\n")
        return 0
    return run_command(args.scenes, args.force, memo, args.wait)


DAGSTER_RUNS = ("run", "demo")


DAGSTER_COMMANDS = ("run", "demo", "register-scenes")


def main(argv: list[str] | None = None) -> int:
    """Exit code 0, or 1 with one line on stderr for a known error (2 for a usage error)."""
    from conceptmine_assets.errors import ConceptmineError

    args = parser().parse_args(argv)
    try:
        memo = run_memo(args.scenes) if args.command in ("run", "demo") else None
        if memo is not None and not args.force:
            from conceptmine_assets.cli.commands import remembered_up_to_date

            code = remembered_up_to_date(memo)
            if code is not None:
                return code
        if args.command not in DAGSTER_COMMANDS:  # sql, search and serve start without Dagster
            return dispatch(args, memo)
        import dagster as dg

        from conceptmine_assets.cli.quiet import quiet_terminal

        warnings.filterwarnings("ignore", category=dg.BetaWarning)  # raised where the asset modules load
        warnings.filterwarnings("ignore", category=dg.PreviewWarning)
        if args.debug and args.command in DAGSTER_RUNS:
            from conceptmine_assets.cli.runner import CONSOLE_LEVEL

            CONSOLE_LEVEL["level"] = "WARNING"  # Dagster's own console log, stack traces included
        with quiet_terminal(getattr(args, "verbose", False) or args.debug):  # quiet.py: no library banners or bars
            return dispatch(args, memo)
    except KeyboardInterrupt:  # outside `conceptmine run`'s own handling (e.g. while importing)
        if args.debug:
            raise
        sys.stderr.write(f"conceptmine {args.command}: interrupted\n")
        return 130
    except Exception as exc:  # one line for the user; the traceback with --debug
        if args.debug:
            raise
        known = isinstance(exc, (ConceptmineError, UsageError))
        message = str(exc).strip() if known else f"unexpected {type(exc).__name__}: {str(exc).strip()}"
        if type(exc).__name__ == "OperationalError" and os.environ.get("DAGSTER_HOME"):  # SQLite: full, read-only
            known, message = True, (f"the Dagster instance in DAGSTER_HOME {os.environ['DAGSTER_HOME']} cannot be "
                                    f"written: {str(exc).strip().splitlines()[0][:200]}; free space or fix its "
                                    "permissions, then re-run (it resumes)")
        lines = message.splitlines() or [type(exc).__name__]
        more = "" if known and len(lines) == 1 else " (rerun with --debug for details)"
        sys.stderr.write(f"conceptmine {args.command}: {lines[0][:500]}{more}\n")
        return 2 if isinstance(exc, UsageError) else getattr(exc, "exit_code", 1)
