"""Content records: every stored file's sha256 and size are recorded when it is written (beside
it and as the materialisation's metadata); a missing, truncated or altered file is named, stale
for planning, and refused on load. (Through the command line: test_faults_cli.py.)"""

import hashlib
import json

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
import pytest
from upath import UPath

from conceptmine_assets.cli.staleness import Latest, StoreFiles
from conceptmine_assets.cli.verify import check_files
from conceptmine_assets.errors import IntegrityError
from conceptmine_assets.lib.integrity import DigestCache, damage, read_record, record_path
from conceptmine_assets.resources.storage import CONTENT_KEY, SIZE_KEY, ParquetIOManager, atomic_write

SCENES = dg.DynamicPartitionsDefinition(name="scenes_test")


@dg.asset(partitions_def=SCENES)
def table(context: dg.AssetExecutionContext) -> pd.DataFrame:
    return pd.DataFrame({"scene": [context.partition_key] * 3, "x": [1.5, 2.5, 3.5]})


@dg.asset(partitions_def=SCENES)
def reader(table: pd.DataFrame) -> pd.DataFrame:
    return table


def test_atomic_write_records_what_it_wrote(tmp_path):
    record = atomic_write(UPath(tmp_path / "a" / "f.bin"), lambda fh: fh.write(b"hello" * 1000))
    data = (tmp_path / "a" / "f.bin").read_bytes()
    assert record.sha256 == hashlib.sha256(data).hexdigest() and record.size == len(data)
    assert json.loads(record_path(tmp_path / "a" / "f.bin").read_text()) == {"sha256": record.sha256, "size": record.size}
    assert read_record(tmp_path / "a" / "f.bin") == record
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [".f.bin.sha256", "f.bin"]  # no temporaries left


@pytest.mark.parametrize(
    ("spoil", "said"),
    [
        (lambda d: d[:100], "truncated: 100 bytes, 5000 recorded"),
        (lambda d: d + b"x", "grown: 5001 bytes"),
        (lambda d: d[:10] + bytes([d[10] ^ 1]) + d[11:], "altered: sha256"),
    ],
)
def test_damage_names_what_changed(tmp_path, spoil, said):
    path = tmp_path / "f.bin"
    record = atomic_write(UPath(path), lambda fh: fh.write(bytes(range(250)) * 20))
    assert damage(path, record.sha256, record.size) is None
    path.write_bytes(spoil(path.read_bytes()))
    assert said in damage(path, record.sha256, record.size)
    path.unlink()
    assert damage(path, record.sha256, record.size) == "missing"


def test_digest_cache_rehashes_a_file_whose_mtime_changed(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"a" * 10)
    cache = DigestCache(tmp_path / "digests.json")
    first = cache.digest(path)
    cache.save()
    again = DigestCache(tmp_path / "digests.json")
    assert again.entries and again.digest(path) == first
    path.write_bytes(b"b" * 10)  # same size, new content and mtime
    assert again.digest(path) != first and again.damage(path, first[0], 10).startswith("altered")


def test_io_manager_records_digests_and_refuses_a_damaged_file(tmp_path):
    store = tmp_path / "store"
    resources = {"io_manager": ParquetIOManager(base_path=str(store))}
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("scenes_test", ["s1"])
        result = dg.materialize([table], partition_key="s1", instance=instance, resources=resources)
        [event] = result.get_asset_materialization_events()
        meta = event.materialization.metadata
        path = store / "table" / "s1.parquet"
        assert meta[CONTENT_KEY].value == {"table/s1.parquet": hashlib.sha256(path.read_bytes()).hexdigest()}
        assert meta[SIZE_KEY].value == {"table/s1.parquet": path.stat().st_size}
        assert pq.read_table(path).num_rows == 3

        path.write_bytes(path.read_bytes()[:-10])  # truncated after it was written
        with pytest.raises(IntegrityError, match=f"stored file {path} does not match its record \\(truncated"):
            dg.materialize([table, reader], partition_key="s1", instance=instance, resources=resources,
                           selection=["reader"])


def test_planning_sees_a_damaged_partition_file(tmp_path):
    record = atomic_write(UPath(tmp_path / "emb" / "s1.parquet"), lambda fh: fh.write(b"x" * 64))
    latest = Latest(1, 1, {}, {"emb/s1.parquet": (record.sha256, record.size), "emb/s2.parquet": ("0" * 64, 5)})
    files = StoreFiles(str(tmp_path), DigestCache())
    assert files.damaged("emb", "s1", latest) is None  # s2's entry (same multi-scene run) is not s1's file
    (tmp_path / "emb" / "s1.parquet").write_bytes(b"y" * 64)
    assert "does not match its record (altered" in files.damaged("emb", "s1", latest)
    assert str(tmp_path / "emb" / "s1.parquet") in files.found


def test_verify_checks_every_file_against_its_record(tmp_path):
    for name in ("a/one.parquet", "two.parquet", "splits/mined.txt"):
        atomic_write(UPath(tmp_path / name), lambda fh, n=name: fh.write(n.encode() * 50))
    assert check_files(tmp_path) == (3, [])
    (tmp_path / "a" / "one.parquet").write_bytes(b"z")
    (tmp_path / "splits" / "mined.txt").unlink()
    (tmp_path / "by_hand.parquet").write_bytes(b"PAR1")
    checked, problems = check_files(tmp_path)
    assert checked == 2 and len(problems) == 3, problems
    assert any(p.startswith(f"damaged: {tmp_path / 'a' / 'one.parquet'} (truncated") for p in problems)
    assert any(p.startswith(f"missing: {tmp_path / 'splits' / 'mined.txt'}") for p in problems)
    assert any(p.startswith(f"no record: {tmp_path / 'by_hand.parquet'}") for p in problems)
