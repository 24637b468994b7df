"""The IO manager and the DuckDB views on ``s3://`` paths, against a real local S3 server (moto)."""

import boto3
import dagster as dg
import pytest

from conceptmine_assets.assets.frames import frames
from conceptmine_assets.resources.nuscenes import NuScenesResource
from upath import UPath

from conceptmine_assets.partitions import SCENE_PARTITIONS_NAME
from conceptmine_assets.resources.vocabulary import VocabularyResource
from conceptmine_assets.resources.storage import ParquetIOManager, StoreViews
from conceptmine_assets_tests.helpers import HIGHWAY_SCENES, materialize_scene
from conceptmine_assets_tests.store_helpers import upstream_specs

moto_server = pytest.importorskip("moto.server", reason="moto[server] is a dev dependency")


@pytest.fixture
def s3_options():
    """A moto S3 server on 127.0.0.1 (a real HTTP server in this process) with one bucket."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    boto3.client(
        "s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    ).create_bucket(Bucket="conceptmine")
    yield {"endpoint_url": url, "key": "test", "secret": "test"}
    server.stop()


def test_scene_round_trip_on_s3(highway, instance, s3_options):
    base = "s3://conceptmine/store"
    resources = {
        "nuscenes": NuScenesResource(dataroot=str(highway)),
        "io_manager": ParquetIOManager(base_path=base, storage_options=s3_options),
    }
    for scene in HIGHWAY_SCENES[:2]:
        assert materialize_scene([frames], scene, instance, resources).success
    # Re-running a scene replaces its object.
    assert materialize_scene([frames], HIGHWAY_SCENES[0], instance, resources).success

    views = StoreViews(base_path=base, storage_options=s3_options)
    tables = views.tables()
    assert list(tables) == ["frames"] and tables["frames"].partitions == tuple(sorted(HIGHWAY_SCENES[:2]))
    assert tables["frames"].files == tuple(f"{base}/frames/{s}.parquet" for s in sorted(HIGHWAY_SCENES[:2]))
    counts = views.query("SELECT scene_name, count(*) AS n FROM frames GROUP BY 1 ORDER BY 1")
    assert dict(zip(counts["scene_name"], counts["n"])) == {HIGHWAY_SCENES[0]: 2, HIGHWAY_SCENES[1]: 1}

    # Reading back through the IO manager gives the same rows.
    loaded = ParquetIOManager(base_path=base, storage_options=s3_options).create_io_manager(None)
    ctx = dg.build_input_context(asset_key=dg.AssetKey("frames"), partition_key=HIGHWAY_SCENES[1],
                                 asset_partitions_def=frames.partitions_def, instance=instance)
    df = loaded.load_input(ctx)
    assert list(df["scene_name"]) == [HIGHWAY_SCENES[1]]


def test_split_and_gallery_side_files_live_under_an_s3_store(instance, s3_options, tmp_path):
    """mined_split reads its inputs from s3:// and writes its token list next to them, reported as a URL."""
    from conceptmine_assets.assets.splits import mined_split
    from conceptmine_assets_tests.store_helpers import seed_store

    local = tmp_path / "seed"
    local.mkdir()
    seed_store(local)  # hand-written frames, concept_scores, outlier_flags, copied to the bucket
    base = "s3://conceptmine/store"
    fs = UPath(base, **s3_options).fs
    for path in sorted(local.glob("*/*.parquet")):
        fs.put_file(str(path), f"{base}/{path.parent.name}/{path.name}")
    instance.add_dynamic_partitions(SCENE_PARTITIONS_NAME, ["scene-0", "scene-1"])
    result = dg.materialize(
        [mined_split, *upstream_specs(["frames", "detections", "concept_scores", "outlier_flags", "embeddings", "reviews"])],
        selection=[mined_split],
        instance=instance, resources={"io_manager": ParquetIOManager(base_path=base, storage_options=s3_options),
                                      "vocabulary": VocabularyResource()},
        run_config={"ops": {"mined_split": {"config": {"target_frac": 0.1, "random_frac": 0.1}}}},
    )
    md = result.asset_materializations_for_node("mined_split")[0].metadata
    assert md["token_list"].value == f"{base}/splits/mined.txt"
    tokens = fs.cat_file(f"{base}/splits/mined.txt").decode().splitlines()
    assert len(tokens) == md["num_selected"].value == 8
    assert not (tmp_path / "data").exists()  # nothing relative to the working directory
