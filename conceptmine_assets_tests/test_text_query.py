"""The light query encoder (NumPy MiniLM) against the pipeline's torch encoder, and `conceptmine
search` / `conceptmine sql` starting without Dagster, torch or transformers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conceptmine_assets.resources.text_query import OFFLINE_TEXT_MAX_TOKENS, LightTextEncoder, offline_text_model_dir

TEXTS = [
    "a person pushing a cart",
    "A PARKED truck, with an open cargo bed!",
    "car",
    "Émile's naïve café near 東京 station",
    " ".join(["a truck with an open cargo bed"] * 60),  # > 256 tokens: truncated like the torch path
]
HEAVY = ("dagster", "torch", "transformers", "ultralytics", "sklearn", "open_clip")


@pytest.mark.real_model
def test_light_encoder_equals_the_torch_encoder(offline):
    light = LightTextEncoder()
    got, want = light.encode_texts(TEXTS), offline.encode_texts(TEXTS)
    assert got.shape == want.shape == (len(TEXTS), 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert light.text_model_id == offline.text_model_id  # the index's model check accepts its queries


@pytest.mark.real_model
def test_light_tokenizer_equals_the_transformers_tokenizer():
    from transformers import AutoTokenizer

    from conceptmine_assets.resources.text_query import _load_minilm

    reference = AutoTokenizer.from_pretrained(offline_text_model_dir())
    tokenizer, _ = _load_minilm(str(offline_text_model_dir()))
    for text in TEXTS:
        want = reference(text, truncation=True, max_length=OFFLINE_TEXT_MAX_TOKENS)["input_ids"]
        assert tokenizer.encode(text).ids == want


def _fresh(args: list[str], env: dict) -> tuple[list[str], list[str]]:
    """Run the CLI in a fresh interpreter; (its output lines, the heavy modules it imported)."""
    code = (
        "import sys, json\nfrom conceptmine_assets import cli\nrc = cli.main(sys.argv[1:])\n"
        f"print(json.dumps([rc, sorted(m for m in {HEAVY!r} if m in sys.modules)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    rc, heavy = json.loads(lines[-1])
    assert rc == 0, out.stderr
    return lines[:-1], heavy


def test_search_and_sql_import_no_ml_stack_or_dagster(real_run):
    """On the real slice's store (caption mode, offline profile), as a user runs them."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "CONCEPTMINE_STORE": str(real_run["store"]), "CONCEPTMINE_PROFILE": "offline",
           "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    lines, heavy = _fresh(["search", "a parked truck", "-k", "1"], env)
    assert lines[0].startswith("mode: caption_text") and "truck" in lines[2]
    assert heavy == []
    lines, heavy = _fresh(["sql", "SELECT count(*) > 0 AS some FROM crops"], env)
    assert lines[-1].split() == ["0", "True"]
    assert heavy == []
