"""The qwen2_vl captioner backend on a tiny random twin: batched generation equals one-by-one
generation straight with transformers, a bad crop fails alone, a missing model is a load error."""

import io
import time
from pathlib import Path

import pytest
from PIL import Image

from conceptmine_assets.lib.captioning import CaptionRequest, parse_answer
from conceptmine_assets.resources.qwen2_vl_captioner import Qwen2VLCaptioner
from conceptmine_assets_tests.helpers import jpeg


def _reference_answers(model_dir: Path, prompt: str, images: list[bytes], max_new_tokens: int) -> list[str]:
    """Generate one image at a time straight with transformers (no batching, no resource)."""
    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir).eval()
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    out = []
    for data in images:
        inputs = processor(text=[text], images=[Image.open(io.BytesIO(data)).convert("RGB")], return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        out.append(processor.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0])
    return out


def test_qwen2_vl_backend_generates_through_the_real_code_path(tiny_qwen):
    cap = Qwen2VLCaptioner(model=str(tiny_qwen), device="cpu", batch_size=2, max_new_tokens=16)
    images = [jpeg(64, 40, 1), jpeg(30, 90, 2), jpeg(120, 60, 3)]
    reqs = [CaptionRequest(f"d{i}", b, "truck") for i, b in enumerate(images)]
    reqs.insert(1, CaptionRequest("bad", b"not a jpeg", "car"))
    started = time.perf_counter()
    results = cap.caption(reqs)
    elapsed = time.perf_counter() - started
    assert len(results) == 4
    bad = results[1]
    assert (bad.status, bad.attempts, bad.caption) == ("failed", 1, "car")
    assert "unreadable crop image" in bad.error
    good = [results[0], results[2], results[3]]
    expected = _reference_answers(tiny_qwen, cap.prompt_for("truck"), images, 16)
    assert [r.raw_answer for r in good] == expected  # batched, left-padded == one by one
    assert all(len(r.raw_answer) > 0 for r in good)
    for r in good:  # status follows the parse of the raw answer; random weights answer noise
        parsed = parse_answer(r.raw_answer)
        assert r.status == ("ok" if parsed.usable else "failed")
        assert r.vlm_class == parsed.vlm_class and r.latency_s > 0 and r.attempts == 1
    assert cap.model_id.startswith(f"qwen2_vl:{tiny_qwen.name}@")
    assert elapsed < 60


def test_qwen2_vl_missing_model_is_a_load_error(tmp_path):
    from conceptmine_assets.errors import ModelLoadError

    cap = Qwen2VLCaptioner(model=str(tmp_path / "no-such-model"), device="cpu")
    with pytest.raises(ModelLoadError, match="no-such-model"):
        cap.caption([CaptionRequest("d", jpeg(32, 32, 0), "car")])
