"""A review changes the next split, as a user gets there: the demo is mined with `conceptmine run`;
in the explorer (`conceptmine serve`'s page in headless Chromium) the user opens the split, clicks
the crop that mined the top sample and rejects it; the next `conceptmine run` re-mines only the
global mining stages, and the reloaded split no longer holds that crop. A repeated, unchanged
review then changes nothing."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from starlette.testclient import TestClient

from conceptmine_assets.serve.app import create_app
from conceptmine_assets_tests.helpers import REPO
from conceptmine_assets_tests.serve_helpers import CHROMIUM, CHROMIUM_ARGS, served


def _cli(args: list[str], env: dict) -> str:
    proc = subprocess.run([sys.executable, "-m", "conceptmine_assets.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.browser
def test_a_rejected_crop_never_mines_its_sample_again(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("NUSCENES_", "CONCEPTMINE_", "DAGSTER_"))}
    store = tmp_path / "store"
    env = {**keep, "PYTHONPATH": str(REPO), "DAGSTER_HOME": str(home), "HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1",
           "YOLO_CONFIG_DIR": str(tmp_path / "yolo"), "CONCEPTMINE_CONFIG": str(REPO / "conceptmine.demo.yaml"),
           "NUSCENES_DATAROOT": str(tmp_path / "dataroot"), "CONCEPTMINE_STORE": str(store)}
    fixtures = REPO / "data" / "fixtures"
    _cli(["synth-dataroot", "--out", str(tmp_path / "dataroot"), str(fixtures / "nuscenes-real-slice"),
          str(fixtures / "nuscenes-udacity-highway")], env)
    _cli(["run"], env)
    before = pd.read_parquet(store / "mined_split.parquet")
    top = before[~before["reason"].str.startswith("random")].iloc[0]
    rejected = top["detection_ids"][0]

    with TestClient(create_app(str(store), encoder=None)) as client:  # a crop that does not exist: refused
        assert client.post("/api/reviews", json={"reviewer": "ana", "items": [
            {"scene": top["scene_name"], "detection_id": "no-such-crop", "verdict": "reject"}]}).status_code == 404
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with served(create_app(str(store), None, str(tmp_path / "dataroot"))) as base, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(base, wait_until="networkidle")
        page.click("button[data-tab=split]")
        page.locator(f'#split-table a[title="{rejected}"]').click()  # the crop that mined the top sample
        page.locator("#detail img.frame").wait_for(timeout=30_000)
        page.fill("#reviewer", "ana")
        page.fill("#review-note", "a false alarm")
        page.click("#review-reject")
        page.locator("#detail .review", has_text="ana").wait_for(timeout=15_000)

        out = _cli(["run"], env)
        assert "mining_global_job" in out and "perception_job" not in out and "mining_scene_job" not in out, out
        page.reload(wait_until="networkidle")
        page.click("button[data-tab=split]")
        page.locator("#split-table tbody tr").first.wait_for(timeout=15_000)
        assert page.locator(f'#split-table a[title="{rejected}"]').count() == 0  # the page shows the new split
        browser.close()
    after = pd.read_parquet(store / "mined_split.parquet")
    assert all(rejected not in list(ids) for ids in after["detection_ids"])
    assert after["sample_token"].tolist() != before["sample_token"].tolist() or \
        after["detection_ids"].map(list).tolist() != before["detection_ids"].map(list).tolist()

    with TestClient(create_app(str(store), encoder=None)) as client:  # the same verdict again: nothing new
        client.post("/api/reviews", json={"reviewer": "ana", "items": [
            {"scene": top["scene_name"], "detection_id": rejected, "verdict": "reject"}]})
    out = _cli(["run"], env)
    assert "scene-stages" not in out, out  # no stage ran
    assert json.dumps(pd.read_parquet(store / "mined_split.parquet")["sample_token"].tolist()) == \
        json.dumps(after["sample_token"].tolist())
