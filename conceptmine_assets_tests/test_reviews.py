"""Reviews: the effective review (last one wins), the append-only log in the store, the content
hash the `reviews` observable records, the CSV / COCO export, and the review endpoints of
`conceptmine serve` (bad input refused with nothing written, concurrent batches all kept)."""

import json
import threading
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
from starlette.testclient import TestClient

from conceptmine_assets.lib.reviews import (
    EFFECTIVE_COLUMNS,
    ReviewError,
    coco_export,
    crop_reviews,
    csv_frame,
    effective_reviews,
    parse_verdict,
    reviews_version,
    sample_reviews,
)
from conceptmine_assets.resources.reviews_log import batch_files, read_effective, read_log, reviews_version_of, write_batch
from conceptmine_assets.serve.app import create_app
from conceptmine_assets_tests.serve_helpers import grid_store

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)


def log(*rows) -> pd.DataFrame:
    """(detection_id, sample_token, verdict, concept, minutes after T0, batch, seq) rows."""
    return pd.DataFrame([{"review_id": f"r{i}", "batch": b, "seq": q, "scene_name": "s", "detection_id": d,
                          "sample_token": t, "verdict": v, "concept": c, "reviewer": "ana",
                          "reviewed_at": pd.Timestamp(T0 + timedelta(minutes=m)), "note": None}
                         for i, (d, t, v, c, m, b, q) in enumerate(rows)])


def test_the_last_review_wins_per_crop_and_per_sample():
    eff = effective_reviews(log(
        ("d1", "t1", "confirmed", None, 0, "b1", 0),
        ("d1", "t1", "relabel", "tow_truck", 5, "b2", 0),  # later: wins
        ("d2", "t1", "reject", None, 5, "b2", 1),
        ("d2", "t1", "confirmed", None, 5, "b3", 0),  # same time, later batch: wins
        ("d3", "t2", "confirmed", None, 9, "b4", 1),
        ("d3", "t2", "reject", None, 9, "b4", 0),  # same batch, earlier in it: loses
        (None, "t2", "reject", None, 1, "b5", 0),  # a whole sample
        (None, "t2", "confirmed", None, 0, "b0", 0),
    ))
    assert list(eff.columns) == EFFECTIVE_COLUMNS
    rows = [(d, t, v, c) for d, t, v, c in eff[["detection_id", "sample_token", "verdict", "concept"]].itertuples(index=False)]
    assert rows == [("d1", "t1", "relabel", "tow_truck"), ("d2", "t1", "confirmed", None),
                    ("d3", "t2", "confirmed", None), (None, "t2", "reject", None)]
    assert crop_reviews(eff).loc["d1", "concept"] == "tow_truck"
    assert sample_reviews(eff).loc["t2", "verdict"] == "reject"
    assert effective_reviews(log()).empty and list(effective_reviews(log()).columns) == EFFECTIVE_COLUMNS


def test_version_changes_with_what_is_in_force_only():
    a = log(("d1", "t1", "confirmed", None, 0, "b1", 0))
    repeated = log(("d1", "t1", "confirmed", None, 0, "b1", 0), ("d1", "t1", "confirmed", None, 7, "b2", 0))
    changed = log(("d1", "t1", "confirmed", None, 0, "b1", 0), ("d1", "t1", "reject", None, 1, "b2", 0))
    assert reviews_version(effective_reviews(a)) == reviews_version(effective_reviews(repeated))
    assert reviews_version(effective_reviews(a)) != reviews_version(effective_reviews(changed))
    assert reviews_version(effective_reviews(log())).startswith("reviews:0:")


@pytest.mark.parametrize("verdict, concept, want", [
    ("confirmed", None, ("confirmed", None)), ("reject", "", ("reject", None)),
    ("relabel:tow_truck", None, ("relabel", "tow_truck")), ("relabel", " crane ", ("relabel", "crane")),
])
def test_verdicts(verdict, concept, want):
    assert parse_verdict(verdict, concept) == want


@pytest.mark.parametrize("verdict, concept, words", [
    (None, None, "verdict is missing"), ("maybe", None, "'maybe' is not one of"), ("relabel", None, "names its concept"),
    ("relabel:", None, "names its concept"), ("confirmed", "car", "only a relabel takes a concept"),
])
def test_bad_verdicts_say_what_to_send(verdict, concept, words):
    with pytest.raises(ReviewError, match=words):
        parse_verdict(verdict, concept)


def test_log_batches_are_separate_files_and_read_back(store):
    first = write_batch(str(store), [{"scene_name": "s", "detection_id": "d1", "sample_token": "t1",
                                      "verdict": "confirmed", "reviewer": "ana"}], now=T0)
    second = write_batch(str(store), [{"scene_name": "s", "detection_id": "d1", "sample_token": "t1",
                                       "verdict": "reject", "reviewer": "bo", "note": "a shadow"}],
                         now=T0 + timedelta(seconds=1))
    assert first != second and [p.name for p in batch_files(str(store))] == [f"{first}.parquet", f"{second}.parquet"]
    assert not [p for p in (store / "reviews").iterdir() if ".tmp" in p.name]  # no temporary file left
    from conceptmine_assets.cli.verify import check_files

    assert check_files(store) == (2, [])  # each batch has its content record: `conceptmine verify` passes
    raw = read_log(str(store))
    assert raw["verdict"].tolist() == ["confirmed", "reject"] and raw["review_id"].is_unique
    eff = read_effective(str(store))
    assert eff[["verdict", "reviewer", "note"]].values.tolist() == [["reject", "bo", "a shadow"]]
    assert reviews_version_of(str(store)) == reviews_version(eff)


def test_exports_carry_the_boxes_and_labels():
    reviewed = pd.DataFrame([
        {"detection_id": "d1", "sample_token": "t1", "scene_name": "s", "verdict": "relabel", "concept": "tow_truck",
         "reviewer": "ana", "reviewed_at": pd.Timestamp(T0), "note": None, "channel": "CAM_FRONT",
         "class_name": "truck", "top_concept": "truck", "x1": 10.0, "y1": 20.0, "x2": 50.0, "y2": 80.0,
         "image_path": "samples/CAM_FRONT/a.jpg", "width": 1600, "height": 900},
        {"detection_id": "d2", "sample_token": "t1", "scene_name": "s", "verdict": "confirmed", "concept": None,
         "reviewer": "ana", "reviewed_at": pd.Timestamp(T0), "note": "yes", "channel": "CAM_FRONT",
         "class_name": "car", "top_concept": "police_car", "x1": 0.0, "y1": 0.0, "x2": 10.0, "y2": 10.0,
         "image_path": "samples/CAM_FRONT/a.jpg", "width": 1600, "height": 900},
        {"detection_id": "d3", "sample_token": "t1", "scene_name": "s", "verdict": "reject", "concept": None,
         "reviewer": "bo", "reviewed_at": pd.Timestamp(T0), "note": None, "channel": "CAM_BACK",
         "class_name": "car", "top_concept": "car", "x1": 1.0, "y1": 2.0, "x2": 3.0, "y2": 4.0,
         "image_path": "samples/CAM_BACK/b.jpg", "width": 1600, "height": 900},
        {"detection_id": None, "sample_token": "t9", "scene_name": "s", "verdict": "reject", "concept": None,
         "reviewer": "bo", "reviewed_at": pd.Timestamp(T0), "note": None},
    ])
    csv = csv_frame(reviewed)
    assert csv["label"].tolist() == ["tow_truck", "police_car", "car", None]
    coco = coco_export(reviewed)
    assert [c["name"] for c in coco["categories"]] == ["tow_truck", "police_car"]
    assert [(a["attributes"]["detection_id"], a["bbox"], a["category_id"]) for a in coco["annotations"]] == [
        ("d1", [10.0, 20.0, 40.0, 60.0], 1), ("d2", [0.0, 0.0, 10.0, 10.0], 2)]
    assert [r["attributes"]["detection_id"] for r in coco["rejected"]] == ["d3"]
    assert len(coco["images"]) == 2 and json.dumps(coco)  # JSON as is


# ---------------------------------------------------------------- the endpoints


@pytest.fixture
def served(tmp_path):
    store = tmp_path / "store"
    truth = grid_store(store, scenes=4)  # 12 crops
    with TestClient(create_app(str(store), encoder=None)) as client:
        yield client, store, truth


def post(client, reviewer="ana", **item):
    return client.post("/api/reviews", json={"reviewer": reviewer, "items": [item]})


def test_reviews_are_written_and_in_force(served):
    client, store, truth = served
    crop = truth.iloc[0]
    assert post(client, scene=crop["scene_name"], detection_id=crop["detection_id"], verdict="confirmed").status_code == 201
    r = post(client, reviewer="bo", scene=crop["scene_name"], detection_id=crop["detection_id"], verdict="relabel:truck",
             note="a pickup")
    assert r.status_code == 201 and r.json()["written"] == 1
    assert post(client, scene=crop["scene_name"], sample_token=crop["sample_token"], verdict="reject").status_code == 201
    rows = client.get("/api/reviews").json()["reviews"]
    assert [(x["detection_id"], x["verdict"], x["concept"], x["reviewer"]) for x in rows] == [
        (crop["detection_id"], "relabel", "truck", "bo"), (None, "reject", None, "ana")]
    detail = client.get(f"/api/crops/{crop['scene_name']}/{crop['detection_id']}").json()
    assert detail["review"]["verdict"] == "relabel" and detail["review"]["note"] == "a pickup"
    assert len(batch_files(str(store))) == 3
    sql = client.get("/api/sql", params={"q": "SELECT count(*) AS n FROM reviews"}).json()
    assert sql["rows"] == [{"n": 3}]  # the raw log is a view like any other


@pytest.mark.parametrize("body, status, words", [
    ({"reviewer": "ana", "items": [{"scene": "scene-0000", "detection_id": "gone", "verdict": "confirmed"}]}, 404,
     ["crop 'gone' is not stored", "nothing written"]),
    ({"reviewer": "ana", "items": [{"scene": "scene-9999", "detection_id": "d00000", "verdict": "confirmed"}]}, 404,
     ["unknown scene 'scene-9999'"]),
    ({"reviewer": "ana", "items": [{"scene": "scene-0000", "detection_id": "d00000", "verdict": "maybe"}]}, 400,
     ["items[0]", "'maybe'"]),
    ({"reviewer": "ana", "items": [{"scene": "scene-0000", "detection_id": "d00000", "verdict": "relabel:unicorn"}]},
     400, ["'unicorn' is not in the vocabulary"]),
    ({"reviewer": "ana", "items": [{"scene": "scene-0000", "sample_token": "t-scene-0000-0", "verdict": "relabel:car"}]},
     400, ["relabel applies to a crop"]),
    ({"reviewer": "", "items": [{"scene": "scene-0000", "detection_id": "d00000", "verdict": "confirmed"}]}, 400,
     ["reviewer is missing"]),
    ({"reviewer": "ana", "items": []}, 400, ["items is missing or empty"]),
    ({"reviewer": "ana", "items": [{"scene": "scene-0000", "detection_id": "d00000", "verdict": "confirmed"},
                                   {"scene": "scene-0000", "detection_id": "nope", "verdict": "reject"}]}, 404,
     ["items[1]"]),  # one bad item refuses the whole batch
    ({"reviewer": "ana", "items": [{"scene": "scene-0000", "detection_id": "d00000", "verdict": "confirmed",
                                    "score": 3}]}, 400, ["unknown field 'score'"]),
    ("not an object", 400, ["send a JSON object"]),
])
def test_bad_reviews_are_refused_and_nothing_is_written(served, body, status, words):
    client, store, _ = served
    response = client.post("/api/reviews", json=body)
    assert response.status_code == status
    assert all(w in response.json()["error"] for w in words), response.json()
    assert batch_files(str(store)) == []
    bad_json = client.post("/api/reviews", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400 and "not JSON" in bad_json.json()["error"]


def test_concurrent_reviews_from_two_tabs_are_all_kept(served):
    client, store, truth = served
    crops = truth.head(10)
    errors: list[int] = []

    def tab(name: str) -> None:
        for _, c in crops.iterrows():
            r = post(client, reviewer=name, scene=c["scene_name"], detection_id=c["detection_id"], verdict="confirmed")
            if r.status_code != 201:
                errors.append(r.status_code)

    threads = [threading.Thread(target=tab, args=(n,)) for n in ("tab-a", "tab-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    raw = read_log(str(store))
    assert len(raw) == 20 and len(batch_files(str(store))) == 20
    assert sorted(raw["reviewer"].value_counts().tolist()) == [10, 10]
    assert len(client.get("/api/reviews").json()["reviews"]) == 10  # one in force per crop


def test_export_cli_writes_csv_and_coco(real_run, tmp_path, monkeypatch, capsys):
    from conceptmine_assets import cli
    from conceptmine_assets_tests.serve_helpers import copy_store
    from conceptmine_assets_tests.helpers import stored

    store = copy_store(real_run["store"], tmp_path / "store")
    crop = stored(store, "crops", "scene-0061").iloc[0]
    monkeypatch.setenv("CONCEPTMINE_STORE", str(store))
    assert cli.main(["reviews", "export"]) == 2
    assert "no reviews under" in capsys.readouterr().err
    write_batch(str(store), [{"scene_name": "scene-0061", "detection_id": crop["detection_id"],
                              "sample_token": crop["sample_token"], "verdict": "confirmed", "reviewer": "ana"}])
    assert cli.main(["reviews", "export", "--format", "csv", "--out", str(tmp_path / "r.csv")]) == 0
    rows = pd.read_csv(tmp_path / "r.csv")
    assert rows[["detection_id", "verdict", "x1"]].values.tolist() == [[crop["detection_id"], "confirmed", pytest.approx(crop["x1"])]]
    assert str(rows["image_path"].iloc[0]).startswith("samples/CAM_FRONT/")
    assert cli.main(["reviews", "export", "--format", "coco"]) == 0
    coco = json.loads(capsys.readouterr().out)
    assert len(coco["annotations"]) == 1 and coco["images"][0]["width"] == 1600


def test_the_reviews_observable_records_what_is_in_force(store):
    """Its data version moves when a review changes what is in force, not when one is repeated
    (a second confirmation, later);
    the log folder is watched, so `conceptmine run`'s no-change memo notices a new review."""
    import dagster as dg

    from conceptmine_assets.assets.reviews import observe_reviews
    from conceptmine_assets.lib.watched import watched
    from conceptmine_assets.resources.store_views import StoreViews

    job = dg.define_asset_job("observe_reviews_job", selection=dg.AssetSelection.assets("reviews"))
    defs = dg.Definitions(assets=[observe_reviews], jobs=[job], resources={"store_views": StoreViews(base_path=str(store))})
    review = {"scene_name": "s", "detection_id": "d1", "sample_token": "t1", "verdict": "confirmed", "reviewer": "ana"}
    versions = []
    with dg.DagsterInstance.ephemeral() as instance:
        for rows in ([], [review], [review], [{**review, "verdict": "reject"}]):
            if rows:
                write_batch(str(store), rows)
            assert defs.resolve_job_def("observe_reviews_job").execute_in_process(instance=instance).success
            versions.append(instance.get_latest_data_version_record(dg.AssetKey("reviews")).asset_observation.data_version)
    assert versions[0].startswith("reviews:0:") and versions[1].startswith("reviews:1:")
    assert versions[1] != versions[0] and versions[2] == versions[1] and versions[3] != versions[2]
    assert str(store / "reviews") in watched()
