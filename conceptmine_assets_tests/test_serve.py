"""`conceptmine serve` through a real HTTP client (httpx, Starlette's TestClient) against the ASGI
app: the grid's filters and keyset paging (a 40-scene hand-written store), and on the real slice's
store (the session's ``real_run``) crop detail, images, the frame, search, "more like this",
index reload, read-only SQL, the split, and clear 4xx errors. The server itself starts as a
process on 127.0.0.1 in the last test."""

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import httpx
import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from conceptmine_assets.resources.search_index import SearchIndexFiles, search_crops
from conceptmine_assets.resources.text_query import LightTextEncoder
from conceptmine_assets.serve.app import create_app
from conceptmine_assets.serve.frame import CHOSEN
from conceptmine_assets.serve.main import host_warning, is_loopback
from conceptmine_assets_tests.helpers import REPO, stored
from conceptmine_assets_tests.serve_helpers import copy_store, grid_store


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    store = tmp_path_factory.mktemp("grid") / "store"
    truth = grid_store(store)
    with TestClient(create_app(str(store), encoder=None)) as client:
        yield client, truth


@pytest.fixture(scope="module")
def real(real_run, tmp_path_factory):
    store = copy_store(real_run["store"], tmp_path_factory.mktemp("real") / "store")
    with TestClient(create_app(str(store), LightTextEncoder(), str(real_run["dataroot"]))) as client:
        yield client, store


def walk(client, params: dict, limit: int) -> list[dict]:
    """Every page of the grid for ``params``; checks each page's size."""
    rows, cursor = [], None
    while True:
        page = client.get("/api/crops", params={**params, "limit": limit, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["crops"]) <= limit and (body["next_cursor"] is None or len(body["crops"]) == limit)
        rows += body["crops"]
        cursor = body["next_cursor"]
        if cursor is None:
            return rows


@pytest.mark.parametrize("limit", [7, 60, 200])
def test_paging_walks_every_crop_once_in_key_order(grid, limit):
    client, truth = grid
    rows = walk(client, {}, limit)
    assert [r["detection_id"] for r in rows] == truth["detection_id"].tolist()  # 120 crops over 40 scenes


@pytest.mark.parametrize("params, select", [
    ({"group": "rare"}, lambda t: t["group"] == "rare"),
    ({"class": "truck", "group": "target"}, lambda t: (t["class_name"] == "truck") & (t["group"] == "target")),
    ({"detector": "lof"}, lambda t: t["outlier_detectors"].map(lambda d: "lof" in d)),
    ({"detector": "any"}, lambda t: t["outlier_detectors"].map(bool)),
    ({"detector": "none"}, lambda t: ~t["outlier_detectors"].map(bool)),
    ({"reason": "target"}, lambda t: t["reason"] == "target"),
    ({"reason": "none"}, lambda t: t["reason"].isna()),
    ({"scene": "scene-0031", "concept": "car"}, lambda t: (t["scene_name"] == "scene-0031") & (t["top_concept"] == "car")),
])
def test_filters_select_exactly_the_matching_crops(grid, params, select):
    client, truth = grid
    want = truth[select(truth)]["detection_id"].tolist()
    assert want  # every case selects something
    assert [r["detection_id"] for r in walk(client, params, 5)] == want


def test_facets_count_the_stored_values(grid):
    client, truth = grid
    facets = client.get("/api/facets").json()
    assert facets["class"] == truth["class_name"].value_counts().to_dict()
    assert facets["group"] == truth["group"].value_counts().to_dict()
    assert len(facets["scenes"]) == 40 and set(facets["reason"]) == {"target", "random"}


@pytest.mark.parametrize("url, status, words", [
    ("/api/crops?group=bogus", 400, ["group='bogus'", "common, rare, target"]),
    ("/api/crops?class=spaceship", 400, ["class='spaceship'"]),
    ("/api/crops?scene=scene-9999", 400, ["scene='scene-9999'"]),
    ("/api/crops?colour=red", 400, ["unknown parameter 'colour'"]),
    ("/api/crops?limit=0", 400, ["limit=0", "1..200"]),
    ("/api/crops?limit=ten", 400, ["limit='ten'"]),
    ("/api/crops?cursor=nocursor", 400, ["cursor='nocursor'"]),
    ("/api/crops/scene-0001/d99999", 404, ["unknown crop id 'd99999'"]),
    ("/api/crops/scene-9999/d00001/image", 404, ["unknown scene 'scene-9999'"]),
    ("/api/split?reason=lucky", 400, ["reason='lucky'"]),
    ("/api/split?offset=-1", 400, ["offset='-1'"]),
    ("/api/nothing-here", 404, ["no such endpoint"]),
])
def test_bad_input_is_a_clear_json_error(grid, url, status, words):
    client, _ = grid
    response = client.get(url)
    assert response.status_code == status
    assert all(w in response.json()["error"] for w in words), response.json()


def test_crop_image_and_detail_on_the_real_store(real):
    client, store = real
    crops = stored(store, "crops", "scene-0061")
    split = stored(store, "mined_split")
    chosen = split["detection_ids"].iloc[0][0]  # a crop that qualified the mined sample
    row = crops[crops["detection_id"] == chosen].iloc[0]
    image = client.get(f"/api/crops/scene-0061/{chosen}/image")
    assert image.headers["content-type"] == "image/jpeg" and image.content == row["image_jpeg"]
    detail = client.get(f"/api/crops/scene-0061/{chosen}").json()
    assert detail["crop"]["class_name"] == row["class_name"] and "image_jpeg" not in detail["crop"]
    assert detail["qualified"] and detail["why"].startswith(f"Mined: this crop qualified its sample for the split as {split['reason'].iloc[0]}")
    assert detail["lidar"]["points"] == row["lidar_points"]
    assert detail["concepts"] and detail["concepts"][0]["concept"] == detail["scores"]["top_concept"]
    assert detail["caption"]["caption"] and detail["outliers"] is not None
    other = crops[~crops["sample_token"].isin(split["sample_token"])]
    if len(other):  # a crop whose sample is not in the split says so
        assert client.get(f"/api/crops/scene-0061/{other['detection_id'].iloc[0]}").json()["why"].startswith("Not mined")


def test_frame_draws_every_box_and_highlights_the_crop(real):
    client, store = real
    crop = stored(store, "crops", "scene-0061").iloc[0]
    frame = client.get(f"/api/crops/scene-0061/{crop['detection_id']}/frame")
    assert frame.status_code == 200 and frame.headers["content-type"] == "image/jpeg"
    image = np.asarray(Image.open(io.BytesIO(frame.content)).convert("RGB")).astype(int)
    assert image.shape[1] == 1280  # 1600 px frames scaled to 1280
    scale = 1280 / 1600
    y = int((crop["y1"] + crop["y2"]) / 2 * scale)
    x = int(crop["x1"] * scale) + 1  # on the left edge of the highlighted box
    assert np.abs(image[y, x] - np.array(CHOSEN)).max() < 60


def test_search_equals_the_cli_search(real):
    client, store = real
    body = client.get("/api/search", params={"q": "a parked truck", "k": 5}).json()
    want, stale = search_crops(SearchIndexFiles(str(store)), LightTextEncoder(), "a parked truck", 5)
    assert body["mode"] == "caption_text" and body["stale"] == stale == []
    assert [h["detection_id"] for h in body["hits"]] == want.hits["detection_id"].tolist()
    np.testing.assert_allclose([h["score"] for h in body["hits"]], want.hits["score"], atol=1e-5)
    assert client.get("/api/search", params={"q": "  "}).status_code == 400


def test_more_like_this_is_the_index_neighbours_of_the_stored_vector(real):
    client, store = real
    captions = stored(store, "captions", "scene-0061").dropna(subset=["caption"])
    crop = captions.iloc[0]
    body = client.get(f"/api/crops/scene-0061/{crop['detection_id']}/similar", params={"k": 3}).json()
    assert body["mode"] == "caption_text" and 0 < len(body["hits"]) <= 3
    assert crop["detection_id"] not in [h["detection_id"] for h in body["hits"]]
    loaded = SearchIndexFiles(str(store)).load()
    want = loaded.search("caption_text", np.asarray(crop["caption_embedding"], np.float32), 4)
    want = want[want["detection_id"] != crop["detection_id"]].head(3)
    assert [h["detection_id"] for h in body["hits"]] == want["detection_id"].tolist()


def test_index_reloads_when_search_index_is_rematerialised(real):
    from conceptmine_assets.assets.search_index import SearchIndexConfig, build
    from conceptmine_assets.resources.store_sql import stored_tables

    client, store = real
    before = client.get("/api/health").json()["index"]["reloads"]
    client.get("/api/search", params={"q": "a car"})
    assert client.get("/api/health").json()["index"]["reloads"] == before  # no change, no reload
    tables = stored_tables(str(store))
    SearchIndexFiles(str(store)).publish(build(tables["embeddings"], tables["captions"], tables["concept_scores"], False,
                                               SearchIndexConfig(nprobe=7)))  # another build id
    assert client.get("/api/search", params={"q": "a car"}).status_code == 200
    assert client.get("/api/health").json()["index"]["reloads"] == before + 1


def test_sql_is_read_only_and_answers_queries(real):
    client, store = real
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{store}/crops/*.parquet')").fetchall()[0][0]
    body = client.get("/api/sql", params={"q": "SELECT count(*) AS n FROM crops"}).json()
    assert body["rows"] == [{"n": n}] and body["columns"] == ["n"]
    posted = client.post("/api/sql", json={"sql": "SELECT class_name, image_jpeg FROM crops LIMIT 1"}).json()
    assert set(posted["rows"][0]["image_jpeg"]) == {"bytes"}  # binary shown as its size
    for statement in (f"COPY (SELECT 1) TO '{store}/x.csv'", "CREATE TABLE t (a INT)", "ATTACH 'x.db'"):
        refused = client.post("/api/sql", json={"sql": statement})
        assert refused.status_code == 400 and "refused" in refused.json()["error"]
    assert not (store / "x.csv").exists()
    bad = client.get("/api/sql", params={"q": "SELECT nope FROM crops"})
    assert bad.status_code == 400 and bad.json()["error"].startswith("SQL error:")


def test_split_lists_samples_with_reasons(real):
    client, store = real
    split = stored(store, "mined_split").sort_values("rank")
    body = client.get("/api/split").json()
    assert body["total"] == len(split)
    assert [(s["sample_token"], s["reason"]) for s in body["samples"]] == list(zip(split["sample_token"], split["reason"]))


def test_page_and_static_files_are_served(real):
    client, _ = real
    page = client.get("/")
    assert page.status_code == 200 and "explorer.js" in page.text
    assert client.get("/static/explorer.js").status_code == 200


def test_only_loopback_is_quiet():
    assert all(is_loopback(h) and host_warning(h) is None for h in ("127.0.0.1", "::1", "localhost", "127.0.0.2"))
    for host in ("0.0.0.0", "192.168.1.10", "example.org"):
        assert "NO authentication" in host_warning(host)


def test_the_server_process_answers_on_loopback(real_run, tmp_path):
    """`conceptmine serve --port P` as a process; a real HTTP request; SIGTERM stops it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CONCEPTMINE_STORE": str(real_run["store"]), "CONCEPTMINE_PROFILE": "offline",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "conceptmine_assets.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "slow"
                time.sleep(0.2)
        assert health.json()["index"]["modes"] == ["caption_text"]
        hits = httpx.get(f"http://127.0.0.1:{port}/api/search", params={"q": "a truck", "k": 1}, timeout=10).json()
        assert len(hits["hits"]) == 1
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert out.splitlines()[0] == f"conceptmine serve: http://127.0.0.1:{port}/  (store {real_run['store']}; Ctrl-C stops)"
    assert "Traceback" not in out


def test_a_store_rewritten_under_a_request_is_a_503_then_reads_afresh(tmp_path, monkeypatch):
    """A scene file removed between the views' opening and a query (the signature check raced):
    the read-only store sees its files changed and reads afresh within the request; a store it
    cannot read afresh is a 503 that says to retry, and the next request reopens."""
    from conceptmine_assets.serve.store import StoreReader

    store = tmp_path / "store"
    grid_store(store, scenes=3)
    with TestClient(create_app(str(store), encoder=None)) as client:
        assert client.get("/api/sql", params={"q": "SELECT count(*) AS n FROM crops"}).json()["rows"] == [{"n": 9}]
        frozen = StoreReader.signature(client.app.state.explorer.reader)
        monkeypatch.setattr(StoreReader, "signature", lambda self: frozen)  # the race: the change is not seen yet
        (store / "crops" / "scene-0002.parquet").unlink()
        raced = client.get("/api/sql", params={"q": "SELECT count(*) AS n FROM crops"})
        assert raced.status_code == 200 and raced.json()["rows"] == [{"n": 6}]  # read afresh, nothing stale
        monkeypatch.setattr("conceptmine_assets.resources.store_query.ReadOnlyStore.changed", lambda self: False)
        (store / "crops" / "scene-0001.parquet").unlink()  # ... and when it cannot tell: a 503 to retry
        gone = client.get("/api/crops", params={"limit": 50})
        assert gone.status_code == 503 and "the store changed while it was read" in gone.json()["error"], gone.text
        monkeypatch.undo()
        assert client.get("/api/sql", params={"q": "SELECT count(*) AS n FROM crops"}).json()["rows"] == [{"n": 3}]


def test_the_connection_is_reopened_only_for_new_files(tmp_path):
    """A review (a new log file) or a replaced scene file does not reopen the store's views
    (seconds at 850 scenes); a new scene does, and free SQL always sees the store as it is."""
    import shutil

    store = tmp_path / "store"
    truth = grid_store(store, scenes=3)
    with TestClient(create_app(str(store), encoder=None)) as client:
        reader = client.app.state.explorer.reader
        assert len(walk(client, {}, 50)) == 9
        opened = reader.reopened
        crop = truth.iloc[0]
        assert client.post("/api/reviews", json={"reviewer": "ana", "items": [
            {"scene": crop["scene_name"], "detection_id": crop["detection_id"], "verdict": "reject"}]}).status_code == 201
        replaced = store / "crops" / "scene-0001.parquet"
        shutil.copyfile(replaced, tmp_path / "copy.parquet")
        os.replace(tmp_path / "copy.parquet", replaced)  # a scene re-materialised: same path, new file
        assert len(walk(client, {}, 50)) == 9
        assert client.get(f"/api/crops/{crop['scene_name']}/{crop['detection_id']}").json()["review"]["verdict"] == "reject"
        assert reader.reopened == opened
        sql = client.get("/api/sql", params={"q": "SELECT count(*) AS n FROM reviews"}).json()
        assert sql["rows"] == [{"n": 1}] and reader.reopened == opened + 1  # the views must show the new log file
        grid_store(tmp_path / "more", scenes=10)
        shutil.copyfile(tmp_path / "more" / "crops" / "scene-0009.parquet", store / "crops" / "scene-0009.parquet")
        assert [r["scene_name"] for r in walk(client, {}, 50)].count("scene-0009") == 3
        assert reader.reopened == opened + 2
