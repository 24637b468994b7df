"""The Dagster UI and the gallery page in a real headless Chromium (Debian's /usr/bin/chromium).

The pipeline is materialised on the real slice in a temporary DAGSTER_HOME and store (the session's
``real_run`` fixture, shared with test_explainability_real_slice), ``dagster-webserver`` serves it
from its own process session, and Playwright (the Python package's bundled driver, never
``playwright install``) drives Chromium.
Set ``CONCEPTMINE_UPDATE_SCREENSHOTS=1`` to copy the screenshots to ``docs/`` for the README.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conceptmine_assets_tests.helpers import REAL_SCENE, REPO, screenshot

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
STAGES = ["frames", "detections", "crops", "embeddings", "outlier_flags", "captions", "concept_scores", "mined_split"]
SCENE_STAGES = {"perception": STAGES[:4], "mining_scene": STAGES[4:7]}
SERVER_START_S = 120


def _sync_playwright():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)")
    module = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    return module.sync_playwright


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _graphql(base: str, query: str) -> dict:
    request = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT to the server's process group, then wait; SIGKILL if it does not stop."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def webserver(real_run, tmp_path_factory):
    """``dagster-webserver`` on a free port over the materialised instance; yields its base URL."""
    _sync_playwright()
    port = _free_port()
    log = tmp_path_factory.mktemp("webserver") / "webserver.log"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(real_run["home"]),
        "NUSCENES_DATAROOT": str(real_run["dataroot"]),
        "CONCEPTMINE_STORE": str(real_run["store"]),
        "CONCEPTMINE_DETECTOR": "annotations",
        "CONCEPTMINE_PROFILE": "offline",
    }
    cmd = [sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port), "-w", str(REPO / "workspace.yaml")]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dagster-webserver exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                assert b"dagster_webserver_version" in _get(f"{base}/server_info")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"dagster-webserver did not answer in {SERVER_START_S}s:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        assert _graphql(base, "mutation { setNuxSeen }")["data"]["setNuxSeen"] is True  # no community pop-up
        yield base
    finally:
        _stop(proc)
    assert proc.returncode is not None


@pytest.fixture(scope="module")
def browser():
    sync_playwright = _sync_playwright()
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()



def test_asset_graph_shows_the_stages_and_scene_partitions(webserver, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1800, "height": 1000})
    page.goto(f"{webserver}/asset-groups", wait_until="networkidle", timeout=60_000)
    page.get_by_text("perception", exact=True).first.wait_for(timeout=60_000)
    page.keyboard.press("Alt+KeyE")  # the graph's "Expand all groups" shortcut
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(2000)  # materialisation statuses colour the nodes
    screenshot(page, tmp_path, "asset-graph.png")

    # every stage is a node of its group's graph (the whole graph no longer fits one viewport), and
    # each scene-partitioned stage shows its one materialised scene partition there
    for group, stages in SCENE_STAGES.items():
        page.goto(f"{webserver}/locations/conceptmine/asset-groups/{group}/lineage", wait_until="networkidle")
        for stage in stages:
            page.get_by_text(stage, exact=True).first.wait_for(state="visible", timeout=30_000)
        partition_badges = page.get_by_text("1 partition", exact=True)
        partition_badges.nth(len(stages) - 1).wait_for(timeout=30_000)
        assert partition_badges.count() == len(stages)
    page.goto(f"{webserver}/locations/conceptmine/asset-groups/mining_global/lineage", wait_until="networkidle")
    page.get_by_text(STAGES[-1], exact=True).first.wait_for(state="visible", timeout=30_000)
    page.goto(f"{webserver}/assets/frames?view=partitions", wait_until="networkidle")
    page.get_by_text(REAL_SCENE, exact=True).first.wait_for(timeout=30_000)
    page.get_by_text("Materialized (1)").first.wait_for(timeout=30_000)
    page.close()


def test_gallery_page_shows_crops_and_filters(real_run, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(real_run["gallery"].as_uri())
    items = page.locator(".item")
    total = items.count()
    assert total > 10 and page.inner_text("#shown") == str(total)
    loaded = page.evaluate("Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length")
    assert loaded == total  # every crop JPEG decodes in the browser
    screenshot(page, tmp_path, "gallery.png")

    page.click("button[data-group=target]")
    visible = page.locator(".item:visible")
    n_target = visible.count()
    assert 0 < n_target < total and page.inner_text("#shown") == str(n_target)
    assert set(visible.evaluate_all("els => els.map(e => e.dataset.group)")) == {"target"}
    page.select_option("#class-filter", "truck")
    trucks = page.locator(".item:visible")
    assert 0 < trucks.count() <= n_target
    assert set(trucks.evaluate_all("els => els.map(e => e.dataset.class)")) == {"truck"}
    page.click("button[data-group=all]")
    page.select_option("#class-filter", "all")
    assert page.locator(".item:visible").count() == total
    page.close()


def test_runs_of_conceptmine_run_are_listed_under_their_jobs(webserver, browser, tmp_path):
    """dagster#17707: a job's page lists runs by the repository label tag, which only runs launched
    through a workspace get; runner.py sets it on the runs of `conceptmine run`. Checked the way
    the job page queries its runs, and on the page itself."""
    from conceptmine_assets.cli.runner import REPOSITORY_LABEL, REPOSITORY_LABEL_TAG

    query = (
        '{ runsOrError(filter: {pipelineName: "perception_job", tags: [{key: "%s", value: "%s"}]}) '
        "{ ... on Runs { results { runId tags { key value } } } } }" % (REPOSITORY_LABEL_TAG, REPOSITORY_LABEL)
    )
    runs = _graphql(webserver, query)["data"]["runsOrError"]["results"]
    assert runs and all({"key": "conceptmine/launched_by", "value": "conceptmine run"} in r["tags"] for r in runs)
    page = browser.new_page(viewport={"width": 1500, "height": 900})
    page.goto(f"{webserver}/locations/conceptmine/jobs/perception_job/runs", wait_until="networkidle", timeout=60_000)
    page.get_by_text(runs[0]["runId"][:8]).first.wait_for(timeout=30_000)
    assert page.get_by_text("No runs found").count() == 0
    screenshot(page, tmp_path, "job-runs.png")
    page.close()
