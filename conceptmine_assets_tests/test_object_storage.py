"""The IO manager and the DuckDB views on ``s3://`` paths, against a real local S3 server (moto)."""

import boto3
import dagster as dg
import pytest

from conceptmine_assets.assets.frames import frames
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.resources.storage import DuckDBResource, ParquetIOManager
from conceptmine_assets_tests.helpers import HIGHWAY_SCENES, materialize_scene

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

    views = DuckDBResource(base_path=base, storage_options=s3_options)
    assert views.stored_assets() == {"frames": f"{base}/frames/*.parquet"}
    counts = views.query("SELECT scene_name, count(*) AS n FROM frames GROUP BY 1 ORDER BY 1")
    assert dict(zip(counts["scene_name"], counts["n"])) == {HIGHWAY_SCENES[0]: 2, HIGHWAY_SCENES[1]: 1}

    # Reading back through the IO manager gives the same rows.
    loaded = ParquetIOManager(base_path=base, storage_options=s3_options).create_io_manager(None)
    ctx = dg.build_input_context(asset_key=dg.AssetKey("frames"), partition_key=HIGHWAY_SCENES[1],
                                 asset_partitions_def=frames.partitions_def, instance=instance)
    df = loaded.load_input(ctx)
    assert list(df["scene_name"]) == [HIGHWAY_SCENES[1]]
