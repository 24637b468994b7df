"""`conceptmine sql` is read-only: statements that would write, reach outside the store or loosen
DuckDB's sandbox are refused with one line, and no file is created or changed; an unreadable file
breaks only the queries of its own asset, naming the file."""

from pathlib import Path

import pandas as pd
import pytest

from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.resources.store_query import QueryRefused, UnreadableAsset, open_read_only
from conceptmine_assets.resources.store_sql import StoreViews, connect, stored_tables
from conceptmine_assets_tests.fault_helpers import cli_env, one_line_error, run_cli, tree_digest
from conceptmine_assets_tests.store_helpers import frames_df, write_stored


@pytest.fixture
def deployment(tmp_path: Path) -> dict:
    """A store of two scenes of `frames` and a global `mined_split`, and the CLI's environment."""
    store = tmp_path / "store"
    for s in range(2):
        write_stored(store, "frames", frames_df(f"scene-{s}", [f"tok{s}{i}" for i in range(3)]), f"scene-{s}")
    write_stored(store, "mined_split", pd.DataFrame({"sample_token": ["tok00", "tok11"], "reason": ["target", "random"]}))
    (store / "splits").mkdir()
    (store / "splits" / "mined.txt").write_text("tok00\ntok11\n")
    work = tmp_path / "work"  # the command's working directory: relative paths land here
    work.mkdir()
    env = cli_env(CONCEPTMINE_STORE=str(store), CONCEPTMINE_CONFIG=str(tmp_path / "none.yaml"))
    (tmp_path / "none.yaml").write_text("{}\n")
    return {"store": store, "work": work, "env": env, "tmp": tmp_path}


def test_select_queries_read_the_store(deployment):
    proc = run_cli(["sql", "SELECT scene_name, count(*) AS n FROM frames GROUP BY 1 ORDER BY 1"],
                   deployment["env"], deployment["work"])
    assert proc.returncode == 0, proc.stderr
    assert "scene-0" in proc.stdout and "scene-1" in proc.stdout and "3" in proc.stdout
    shown = run_cli(["sql", "SHOW TABLES"], deployment["env"], deployment["work"])
    assert shown.returncode == 0 and "frames" in shown.stdout and "mined_split" in shown.stdout


OUTSIDE = "outside.csv"  # relative: would land in the working directory


def hostile(store: Path, tmp: Path) -> dict[str, tuple[str, str]]:
    """Statement -> (what the one line must say, a path that must not appear or change)."""
    split = store / "mined_split.parquet"
    return {
        "copy_outside": (f"COPY (SELECT 1 AS x) TO '{tmp / 'out.parquet'}'", "COPY"),
        "copy_relative": (f"COPY (SELECT 1 AS x) TO '{OUTSIDE}'", "COPY"),
        "copy_over_split": (f"COPY (SELECT 1 AS x) TO '{split}'", "COPY"),
        "copy_over_split_direct": (f"COPY (SELECT 1 AS x) TO '{split}' (USE_TMP_FILE false)", "COPY"),
        "copy_split_list": (f"COPY (SELECT 'x') TO '{store / 'splits' / 'mined.txt'}' (HEADER false)", "COPY"),
        "copy_after_select": (f"SELECT 1; COPY (SELECT 1) TO '{tmp / 'out2.csv'}'", "COPY"),
        "attach": (f"ATTACH '{store / 'evil.duckdb'}' AS evil", "ATTACH"),
        "create_table": ("CREATE TABLE t AS SELECT 1 AS x", "CREATE"),
        "create_view": ("CREATE VIEW frames2 AS SELECT * FROM frames", "CREATE"),
        "export": (f"EXPORT DATABASE '{tmp / 'export'}'", "EXPORT"),
        "read_text": ("SELECT * FROM read_text('/etc/hostname')", "/etc/hostname"),
        "read_csv": ("SELECT * FROM read_csv('/etc/passwd')", "/etc/passwd"),
        "glob_root": ("SELECT * FROM glob('/root/**')", "/root/**"),
        "glob_store": (f"SELECT * FROM glob('{store}/**')", "disabled"),
        "parquet_outside": (f"SELECT * FROM read_parquet('{tmp / 'none.yaml'}')", "none.yaml"),
        "set_external": ("SET enable_external_access = true", "SET"),
        "set_directories": ("SET allowed_directories = ['/']", "SET"),
        "reset_lock": ("RESET lock_configuration", "SET"),
        "pragma": (f"PRAGMA profiling_output = '{tmp / 'profile.json'}'", "PRAGMA"),
        "install": ("INSTALL httpfs", "INSTALL"),
        "load": ("LOAD httpfs", "LOAD"),
    }


@pytest.mark.parametrize("case", list(hostile(Path("/s"), Path("/t"))))
def test_hostile_statement_is_refused_with_one_line_and_nothing_written(deployment, case):
    store, tmp = deployment["store"], deployment["tmp"]
    sql, said = hostile(store, tmp)[case]
    before_store, before_tmp = tree_digest(store), sorted(p.name for p in tmp.iterdir())
    proc = run_cli(["sql", sql], deployment["env"], deployment["work"])
    line = one_line_error(proc)
    assert "refused" in line and said in line, line
    assert tree_digest(store) == before_store
    assert sorted(p.name for p in tmp.iterdir()) == before_tmp
    assert list(deployment["work"].iterdir()) == []


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_unreadable_file_breaks_only_its_asset_and_is_named(deployment, damage):
    store = deployment["store"]
    bad = store / "frames" / "scene-1.parquet"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage" * 64)

    other = run_cli(["sql", "SELECT count(*) AS n FROM mined_split"], deployment["env"], deployment["work"])
    assert other.returncode == 0 and "2" in other.stdout, other.stderr
    for sql in ("SELECT count(*) FROM frames", "SELECT * FROM mined_split JOIN Frames USING (sample_token)"):
        line = one_line_error(run_cli(["sql", sql], deployment["env"], deployment["work"]))
        assert "`frames` cannot be read" in line and str(bad) in line, line

    # the asset checks' views (in process) behave the same
    views = StoreViews(base_path=str(store))
    assert views.query("SELECT count(*) AS n FROM mined_split")["n"][0] == 2
    with pytest.raises(UnreadableAsset, match=str(bad)):
        views.query("SELECT count(*) FROM frames")
    # a pipeline asset reading it fails at once, naming the file
    with pytest.raises(ConceptmineError, match=str(bad)):
        connect(stored_tables(str(store))["frames"])


def test_placeholder_view_of_an_unreadable_asset_fails_when_read(deployment):
    """Used directly (bypassing the name check, as a tool holding the connection could), the
    unreadable asset's view keeps its columns and fails when its rows are read."""
    bad = deployment["store"] / "frames" / "scene-0.parquet"
    bad.write_bytes(bad.read_bytes()[:100])
    with open_read_only(str(deployment["store"])) as ro:
        assert set(ro.unreadable) == {"frames"}
        assert "scene_name" in ro.con.execute("DESCRIBE frames").df()["column_name"].tolist()
        with pytest.raises(Exception, match=str(bad)):
            ro.con.execute("SELECT count(*) FROM frames").fetchall()


def test_refusals_in_process(deployment):
    with open_read_only(str(deployment["store"])) as ro:
        with pytest.raises(QueryRefused, match="COPY"):
            ro.execute("COPY frames TO 'x.parquet'")
        assert ro.df("SELECT count(*) AS n FROM frames")["n"][0] == 6
        assert ro.df("EXPLAIN SELECT * FROM frames").shape[0] == 1


@pytest.mark.parametrize(
    ("sql", "views"),
    [
        ("SELECT count(*) FROM frames", {"frames"}),
        ("SELECT * FROM frames JOIN mined_split USING (sample_token)", {"frames", "mined_split"}),
        ("WITH f AS (SELECT * FROM FRAMES) SELECT count(*) FROM f", {"frames"}),
        ("SELECT 1; SELECT count(*) FROM mined_split", {"mined_split"}),
        ("SHOW TABLES", None),  # names no asset: every view
        ("SELECT * FROM information_schema.tables", None),
        ("SELEC nonsense", None),  # does not parse: the locked connection reports it
    ],
)
def test_a_query_opens_views_only_for_the_assets_it_names(sql, views):
    from conceptmine_assets.resources.store_query import views_for

    assert views_for(sql, ["frames", "mined_split", "crops"]) == (frozenset(views) if views else None)


def test_views_of_other_assets_are_not_opened(deployment):
    """A query of one asset does not bind (or read) another's files, even an unreadable one."""
    (deployment["store"] / "crops").mkdir()
    (deployment["store"] / "crops" / "scene-0.parquet").write_bytes(b"not parquet")
    with open_read_only(str(deployment["store"]), only=frozenset({"frames"})) as ro:
        assert set(ro.tables) == {"frames"} and not ro.unreadable
        assert ro.execute("SELECT count(*) FROM frames").fetchone()[0] == 6
    proc = run_cli(["sql", "SELECT count(*) AS n FROM frames"], deployment["env"], deployment["work"])
    assert proc.returncode == 0 and proc.stdout.split()[-1] == "6", proc.stderr
