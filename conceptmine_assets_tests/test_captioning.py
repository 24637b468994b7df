"""The two prompt styles (JSON and the paper's bare class name): prompts, parsing, skipped
classes, and both running through the tiny Qwen2-VL twin."""

import io

import numpy as np
import pytest
from PIL import Image

from conceptmine_assets.lib.captioning import (
    VLM_BACKENDS,
    CaptionRequest,
    answer_result,
    parse,
    parse_label,
)
from conceptmine_assets.resources.captioner import TemplateCaptioner
from conceptmine_assets.resources.openai_captioner import OpenAICaptioner, retry_after_seconds
from conceptmine_assets.resources.qwen2_vl_captioner import Qwen2VLCaptioner
from conceptmine_assets_tests.tiny_qwen2_vl import build_tiny_qwen2_vl


@pytest.mark.parametrize(
    "raw, vlm_class",
    [
        ("truck", "truck"),
        ("Construction vehicle.", "construction_vehicle"),
        ("others", "others"),
        ("Others", "others"),
        ("The object is a bicycle.", "bicycle"),
        ("It is a bus, not a truck.", "bus"),  # earliest class named
        ('{"class": "trailer"}', "trailer"),  # a JSON answer to the paper prompt still parses
        ("class: barrier", "barrier"),
        ("a shopping cart", None),
        ("", None),
        (None, None),
    ],
)
def test_paper_answers_are_a_class_and_no_description(raw, vlm_class):
    parsed = parse_label(raw)
    assert parsed.vlm_class == vlm_class
    if vlm_class is not None:
        assert parsed.description is None  # the paper's answer is a label, never a description


def test_a_paper_answer_without_a_class_keeps_its_text_and_json_style_keeps_descriptions():
    assert parse_label("a shopping cart").description == "a shopping cart"
    json_answer = '{"class": "truck", "description": "a white truck"}'
    assert (parse(json_answer, "json").vlm_class, parse(json_answer, "json").description) == ("truck", "a white truck")
    result = answer_result("Truck.", "paper", ["truck", "car"], "car", 1, 0.1)
    assert (result.status, result.vlm_class, result.description, result.caption) == ("ok", "truck", None, "truck")


def test_paper_prompt_names_the_detector_class_and_uses_the_paper_generation():
    paper = Qwen2VLCaptioner(prompt_style="paper", device="cpu")
    prompt = paper.prompt_for("construction_vehicle")
    assert "detector says it is a construction vehicle" in prompt and "class name only" in prompt
    assert "others" in prompt and "traffic_cone" in prompt and "JSON" not in prompt
    assert paper.new_tokens() == 150
    json_style = Qwen2VLCaptioner(device="cpu")
    assert "JSON" in json_style.prompt_for("truck") and "detector says" not in json_style.prompt_for("truck")
    assert json_style.new_tokens() == 64


def test_vlm_backend_names_are_the_classes_backends():
    assert {Qwen2VLCaptioner.backend, OpenAICaptioner.backend} == set(VLM_BACKENDS)
    assert TemplateCaptioner.backend not in VLM_BACKENDS and not TemplateCaptioner.is_vlm


@pytest.mark.parametrize("value, seconds", [("3", 3.0), ("0.5", 0.5), ("-2", 0.0), ("soon", None), (None, None),
                                           ("Thu, 01 Jan 1970 00:01:40 GMT", 40.0)])
def test_retry_after_header(value, seconds):
    assert retry_after_seconds(value, now=60.0) == seconds


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-vl-styles"))


@pytest.mark.parametrize("style", ["json", "paper"])
def test_both_prompt_styles_run_on_the_tiny_twin(tiny_qwen, style, monkeypatch):
    captioner = Qwen2VLCaptioner(model=str(tiny_qwen), device="cpu", prompt_style=style, max_new_tokens=6)
    generated: list[list[str]] = []
    real = Qwen2VLCaptioner.generate
    monkeypatch.setattr(Qwen2VLCaptioner, "generate", lambda self, ims, cls: generated.append(cls) or real(self, ims, cls))
    reqs = [CaptionRequest("d-truck", _jpeg(1), "truck"), CaptionRequest("d-bike", _jpeg(2), "bicycle"),
            CaptionRequest("d-car", _jpeg(3), "car")]
    results = captioner.caption(reqs)
    assert len(results) == 3 and all(r.raw_answer for r in (results[0], results[2]))
    sent = [c for batch in generated for c in batch]
    if style == "paper":  # bicycle and motorcycle crops never reach the VLM
        assert sent == ["truck", "car"]
        assert (results[1].status, results[1].caption, results[1].attempts) == ("class_name", "bicycle", 0)
    else:
        assert sent == ["truck", "bicycle", "car"] and results[1].raw_answer
    for r in (results[0], results[2]):  # status follows the style's parse of the raw (random) answer
        assert r.vlm_class == parse(r.raw_answer, style).vlm_class
