"""The openai captioner backend against a real HTTP server on 127.0.0.1 (``fake_openai.py``): the
request's form, retries with backoff and Retry-After, failing or unreachable servers survived."""

import time

import pytest

from conceptmine_assets.lib.captioning import CaptionRequest
from conceptmine_assets_tests.fake_openai import GOOD_ANSWER, closed_port_url, openai, server_url
from conceptmine_assets_tests.helpers import jpeg


def test_openai_good_answer_is_parsed_and_request_is_well_formed(server):
    img = jpeg(40, 30, 0)
    results = openai(server_url(server)).caption([CaptionRequest("d1", img, "truck"), CaptionRequest("d2", img, "car")])
    assert [(r.status, r.vlm_class, r.description, r.attempts) for r in results] == [
        ("ok", "construction_vehicle", "a yellow excavator", 1)] * 2
    assert results[0].raw_answer == GOOD_ANSWER and results[0].caption == "a yellow excavator"
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    content = req["body"]["messages"][0]["content"]
    assert req["body"]["model"] == "qwen2-vl"
    url = content[0]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    import base64

    assert base64.b64decode(url.split(",", 1)[1]) == img
    assert "construction_vehicle" in content[1]["text"] and "others" in content[1]["text"]


def test_openai_retries_with_backoff_then_succeeds(server):
    server.mode = "flaky"  # 503 twice, then a good answer
    [r] = openai(server_url(server)).caption([CaptionRequest("d1", jpeg(40, 30, 0), "truck")])
    assert (r.status, r.attempts, r.vlm_class) == ("ok", 3, "construction_vehicle")
    assert len(server.requests) == 3


@pytest.mark.parametrize(
    "mode, error",
    [("malformed", "malformed response"), ("slow", "within 0.3s"), ("http503", "HTTP 503"),
     ("empty_content", "unusable answer")],
)
def test_openai_failing_server_is_survived(server, mode, error):
    server.mode = mode
    reqs = [CaptionRequest(f"d{i}", jpeg(40, 30, i), "truck") for i in range(3)]
    results = openai(server_url(server), max_attempts=2).caption(reqs)
    assert [(r.status, r.attempts, r.caption) for r in results] == [("failed", 2, "truck")] * 3
    assert all(error in r.error for r in results)
    assert len(server.requests) == 6


def test_openai_honours_retry_after(server):
    server.mode = "busy"
    started = time.perf_counter()
    [r] = openai(server_url(server), timeout_s=5).caption([CaptionRequest("d1", jpeg(40, 30, 0), "truck")])
    waited = time.perf_counter() - started
    assert (r.status, r.attempts) == ("ok", 2)
    assert waited >= 0.95  # Retry-After: 1 s, not the 0.01 s backoff


def test_openai_without_a_key_sends_no_authorization(server):
    [r] = openai(server_url(server), api_key=None).caption([CaptionRequest("d1", jpeg(40, 30, 0), "truck")])
    assert r.status == "ok" and server.requests[0]["auth"] is None


def test_openai_refused_connection_is_survived():
    [r] = openai(closed_port_url(), max_attempts=3).caption([CaptionRequest("d1", jpeg(40, 30, 0), "truck")])
    assert (r.status, r.attempts) == ("failed", 3)
    assert "cannot reach" in r.error and "refused" in r.error.lower()


def test_openai_client_error_is_not_retried(server):
    server.mode = "http401"
    [r] = openai(server_url(server)).caption([CaptionRequest("d1", jpeg(40, 30, 0), "truck")])
    assert (r.status, r.attempts) == ("failed", 1) and "HTTP 401" in r.error
    assert len(server.requests) == 1
