"""Air-gapped loading: the paper's hub models load from a pre-populated Hugging Face hub cache
(random weights under the real repository and file names), through the real resolution code
(open_clip's pretrained table → hub cache; transformers' hub cache), with HF_HUB_OFFLINE=1."""

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conceptmine_assets.errors import ModelLoadError
from conceptmine_assets.lib.captioning import CaptionRequest
from conceptmine_assets.lib.identity import hub_revision
from conceptmine_assets.resources.open_clip_embedder import OpenClipEmbedder, hub_weights
from conceptmine_assets.resources.qwen2_vl_captioner import PAPER_MODEL, Qwen2VLCaptioner
from conceptmine_assets_tests.tiny_qwen2_vl import build_tiny_qwen2_vl

COMMIT = "4f6d1a1b2c3d4e5f60718293a4b5c6d7e8f90123"  # any 40-hex commit: the cache names the snapshot by it


def hub_snapshot(cache: Path, repo_id: str, commit: str = COMMIT) -> Path:
    """An empty snapshot folder of ``repo_id`` in a hub cache, ``refs/main`` pointing at it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    return snapshot


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_offline_mode_is_on():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest: a hub look-up would fail, not download


def test_qwen2_vl_hub_id_loads_from_a_prepopulated_cache(tmp_path):
    cache = tmp_path / "hub"
    build_tiny_qwen2_vl(hub_snapshot(cache, PAPER_MODEL))
    captioner = Qwen2VLCaptioner(cache_dir=str(cache), device="cpu", max_new_tokens=4)  # the profile's hub id
    assert captioner.model == "Qwen/Qwen2-VL-2B-Instruct"
    results = captioner.caption([CaptionRequest("d1", _jpeg(0), "truck")])
    assert len(results) == 1 and results[0].raw_answer  # the twin answered through the cached files
    assert hub_revision(PAPER_MODEL, "config.json", None, str(cache)) == COMMIT
    uncached = Qwen2VLCaptioner(cache_dir=str(tmp_path / "empty"), device="cpu", max_new_tokens=4)
    assert captioner.model_id != uncached.model_id  # the cached commit is part of the identity
    with pytest.raises(ModelLoadError, match="Qwen/Qwen2-VL-2B-Instruct"):
        uncached.caption([CaptionRequest("d1", _jpeg(0), "truck")])


def test_open_clip_hub_location_of_the_paper_weights():
    repo, files = hub_weights("ViT-B-32", "laion2b_s34b_b79k")
    assert repo == "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    assert files[0] == "open_clip_model.safetensors"


def _random_vit_b32(path: Path) -> None:
    """Random fp16 weights of the real ViT-B-32 architecture (shapes from a meta-device build)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in open_clip.create_model("ViT-B-32", device="meta").state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    save_file({k: (torch.randn(s, generator=gen) * 0.02).half() for k, s in shapes.items()}, str(path))


@pytest.mark.slow
def test_open_clip_tag_loads_from_a_prepopulated_cache(tmp_path):
    cache = tmp_path / "hub"
    repo, files = hub_weights("ViT-B-32", "laion2b_s34b_b79k")
    _random_vit_b32(hub_snapshot(cache, repo) / files[0])
    embedder = OpenClipEmbedder(cache_dir=str(cache), device="cpu")  # the paper profile's model and tag
    vectors = embedder.encode_images([Image.open(io.BytesIO(_jpeg(i))) for i in range(2)])
    assert vectors.shape == (2, 512) and np.isfinite(vectors).all()
    uncached = OpenClipEmbedder(cache_dir=str(tmp_path / "empty"), device="cpu")
    assert embedder.image_model_id != uncached.image_model_id  # the cached commit is part of the identity
