"""The explorer page of `conceptmine serve` in a real headless Chromium (Debian's /usr/bin/chromium):
filter, search, "more like this", the detail panel with the frame, a review, the split list.

The app runs in a uvicorn server on 127.0.0.1 (a free port, in a thread of this process) over a
copy of the real slice's store (the session's ``real_run``). Set ``CONCEPTMINE_UPDATE_SCREENSHOTS=1``
to copy the screenshots to ``docs/`` for the README.
"""

import httpx
import pytest

from conceptmine_assets.resources.reviews_log import read_log
from conceptmine_assets.resources.text_query import LightTextEncoder
from conceptmine_assets.serve.app import create_app
from conceptmine_assets_tests.helpers import screenshot
from conceptmine_assets_tests.serve_helpers import CHROMIUM, CHROMIUM_ARGS, copy_store, served

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def explorer(real_run, tmp_path_factory):
    """The server on a free loopback port; yields (base URL, store)."""
    store = copy_store(real_run["store"], tmp_path_factory.mktemp("explorer") / "store")
    encoder = LightTextEncoder()
    encoder.load()
    with served(create_app(str(store), encoder, str(real_run["dataroot"]))) as base:
        yield base, store


@pytest.fixture(scope="module")
def page(explorer):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        yield page
        browser.close()
    assert errors == []  # no JavaScript error on the way



def _images_loaded(page, selector: str) -> bool:
    return page.evaluate(f"Array.from(document.querySelectorAll('{selector}')).every(i => i.complete && i.naturalWidth > 0)")


def test_filter_search_more_like_this_detail_and_review(explorer, page, tmp_path):
    base, store = explorer
    page.goto(base, wait_until="networkidle")
    cards = page.locator("#grid .card")
    cards.first.wait_for(timeout=30_000)
    total = cards.count()
    assert total > 5 and _images_loaded(page, "#grid img")

    # filter: the grid shows exactly what the API lists for the same filter
    page.select_option("#f-group", "common")
    page.locator("#status", has_text="group: common").wait_for(timeout=15_000)
    want = httpx.get(f"{base}/api/crops", params={"group": "common", "limit": 200}).json()["crops"]
    assert 0 < cards.count() == len(want) < total
    assert [c.get_attribute("data-id") for c in cards.all()] == [c["detection_id"] for c in want]
    page.click("#clear-filters")
    page.wait_for_function(f"document.querySelectorAll('#grid .card').length === {total}", timeout=15_000)

    # free-text search
    page.fill("#search-q", "a parked truck")
    page.press("#search-q", "Enter")
    page.locator("#status", has_text='search "a parked truck"').wait_for(timeout=15_000)
    assert cards.count() > 0 and "truck" in cards.first.inner_text()

    # more like this, from the first hit
    first = cards.first.get_attribute("data-id")
    cards.first.locator("button.similar").click()
    page.locator("#status", has_text="more like").wait_for(timeout=15_000)
    assert first not in [c.get_attribute("data-id") for c in cards.all()]

    # the detail panel: frame with boxes, why, evidence
    cards.first.click()
    page.locator("#detail img.frame").wait_for(timeout=15_000)
    page.wait_for_load_state("networkidle")
    assert _images_loaded(page, "#detail img.frame")
    why = page.inner_text("#detail .why")
    assert why.startswith(("Mined:", "Not mined:", "Its sample is in the split")) and "This crop: group" in why
    screenshot(page, tmp_path, "explorer.png")

    # a review: written to the store's log, shown in the panel
    page.fill("#reviewer", "ana")
    page.fill("#review-note", "clearly a truck")
    page.click("#review-confirm")
    page.locator("#detail .review", has_text="confirmed by ana").wait_for(timeout=15_000)
    log = read_log(str(store))
    assert log[["verdict", "reviewer", "note"]].values.tolist() == [["confirmed", "ana", "clearly a truck"]]

    # the split list
    page.click("button[data-tab=split]")
    page.locator("#split-table tbody tr").first.wait_for(timeout=15_000)
    assert "in the mined split" in page.inner_text("#split-status")
    assert _images_loaded(page, "#split-table img")
    screenshot(page, tmp_path, "explorer-split.png")
