"""Model identities (one definition, no loading, every output-relevant setting), library floors,
profiles and their settings, and the vLLM deployment."""

import sys
from pathlib import Path

import pytest
import yaml

from conceptmine_assets.errors import ModelLoadError
from conceptmine_assets.lib import versions
from conceptmine_assets.lib.identity import hub_revision, model_identity
from conceptmine_assets.resources.captioner import TemplateCaptioner
from conceptmine_assets.resources.detector import AnnotationsDetector, YoloDetector
from conceptmine_assets.resources.offline_embedder import OfflineEmbedder
from conceptmine_assets.resources.open_clip_embedder import OpenClipEmbedder
from conceptmine_assets.resources.openai_captioner import OpenAICaptioner
from conceptmine_assets.resources.profiles import model_resources
from conceptmine_assets.resources.qwen2_vl_captioner import Qwen2VLCaptioner
from conceptmine_assets.settings import Settings
from conceptmine_assets_tests.helpers import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_embedding_version_follows_the_checkpoint_without_loading_it(tmp_path: Path):
    checkpoint = tmp_path / "clip.pt"
    checkpoint.write_bytes(b"not a real checkpoint: loading it would fail")
    embedder = OpenClipEmbedder(model="ViT-B-32", pretrained=str(checkpoint))
    first = embedder.model_id  # no load: a load of these bytes would raise
    assert embedder.model_id == embedder.image_model_id  # CLIP: one model, observed = stored
    checkpoint.write_bytes(b"other weights, other vectors")
    assert embedder.model_id != first
    assert embedder.model_copy(update={"precision": "fp16"}).model_id != embedder.model_id
    assert embedder.model_copy(update={"batch_size": 7}).model_id == embedder.model_id
    offline = OfflineEmbedder()
    assert offline.model_id == f"{offline.image_model_id}|{offline.text_model_id}"


def test_detector_version_follows_weights_thresholds_and_precision(tmp_path: Path):
    weights = tmp_path / "det.tflite"
    weights.write_bytes(b"v1")
    detector = YoloDetector(weights=str(weights))
    first = detector.model_id
    assert first.startswith("yolo:det.tflite@")
    assert detector.model_copy(update={"conf": 0.5}).model_id != first
    assert detector.model_copy(update={"precision": "fp16"}).model_id != first
    assert detector.model_copy(update={"batch_size": 64}).model_id == first  # batching changes nothing
    weights.write_bytes(b"v2")
    assert detector.model_id != first
    assert AnnotationsDetector(min_visibility=2).model_id != AnnotationsDetector().model_id


@pytest.mark.parametrize(
    "change",
    [{"min_pixels": 28 * 28}, {"max_pixels": 256 * 28 * 28}, {"prompt_style": "paper"}, {"max_new_tokens": 7},
     {"revision": "v1.0"}, {"classes": ["truck"]}],
)
def test_captioner_identity_has_every_output_relevant_setting(change):
    base = Qwen2VLCaptioner(device="cpu")
    assert base.model_copy(update=change).model_id != base.model_id
    assert base.model_copy(update={"batch_size": 1}).model_id == base.model_id


def test_captioner_identity_follows_precision_not_the_machine():
    cpu = Qwen2VLCaptioner(device="cpu")
    assert cpu.model_copy(update={"precision": "bf16"}).model_id != cpu.model_id
    # observed in the code server, stored by a GPU worker: the same identity wherever it is computed
    assert Qwen2VLCaptioner(device="cuda:0").model_id == Qwen2VLCaptioner(device="auto").model_id == cpu.model_id


def test_hub_revision_is_read_from_the_cache(tmp_path: Path):
    assert hub_revision("org/model", "config.json", None, str(tmp_path)) == "unresolved:main"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--org--model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    assert hub_revision("org/model", "config.json", None, str(tmp_path)) == commit
    before = Qwen2VLCaptioner(model="org/model", device="cpu").model_id
    assert Qwen2VLCaptioner(model="org/model", device="cpu", cache_dir=str(tmp_path)).model_id != before


def test_identity_is_pure_and_orders_nothing():
    a = model_identity("m", {"x": 1, "y": 2}, packages=["torch", "numpy"])
    b = model_identity("m", {"y": 2, "x": 1}, packages=["numpy", "torch"])
    assert a == b and a.model_id == f"m@{a.digest}" and len(a.digest) == 12


# ---------------------------------------------------------------- library floors


def test_pyproject_floors_are_the_runtime_floors():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for package, (floor, _) in versions.FLOORS.items():
        assert any(d.replace(" ", "").startswith(f"{package}>={floor}") for d in deps), (package, floor)


@pytest.mark.parametrize(
    "package, old, load",
    [
        ("ultralytics", "8.3.40", lambda tmp: YoloDetector(weights=str(tmp / "w.pt")).load()),
        ("transformers", "4.55.4", lambda tmp: Qwen2VLCaptioner(model=str(tmp), device="cpu").load()),
        ("open_clip_torch", "2.24.0", lambda tmp: OpenClipEmbedder(pretrained=None, device="cpu").load()),
    ],
)
def test_an_unsupported_library_version_is_a_clear_error(monkeypatch, tmp_path, package, old, load):
    (tmp_path / "w.pt").write_bytes(b"x")
    real = versions.package_version
    monkeypatch.setattr(versions, "package_version", lambda p: old if p == package else real(p))
    with pytest.raises(ModelLoadError, match=rf"{package} {old} is installed, but conceptmine needs {package}>="):
        load(tmp_path)


def test_installed_libraries_meet_the_floors():
    for package in versions.FLOORS:
        versions.require(package)


# ---------------------------------------------------------------- profiles


@pytest.fixture
def no_config(tmp_path, monkeypatch):
    """Settings from keyword arguments and defaults only (no config file, no CONCEPTMINE_* variables)."""
    import os

    for name in [n for n in os.environ if n.startswith("CONCEPTMINE_")]:
        monkeypatch.delenv(name)
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    monkeypatch.setenv("CONCEPTMINE_CONFIG", str(empty))


def test_paper_profile_models_come_from_settings(tmp_path, no_config):
    weights, ckpt, qwen = tmp_path / "yolov8l.pt", tmp_path / "clip.safetensors", tmp_path / "qwen"
    settings = Settings(profile="paper", yolo_weights=str(weights), openclip_checkpoint=str(ckpt),
                        qwen2_vl_model=str(qwen), hub_cache=str(tmp_path / "hub"), prompt_style="paper")
    res = model_resources(settings)
    assert isinstance(res["detector"], YoloDetector) and res["detector"].weights == str(weights)
    assert isinstance(res["embedder"], OpenClipEmbedder) and res["embedder"].pretrained == str(ckpt)
    cap = res["captioner"]
    assert isinstance(cap, Qwen2VLCaptioner) and cap.model == str(qwen) and cap.prompt_style == "paper"
    assert cap.cache_dir == str(tmp_path / "hub")
    defaults = model_resources(Settings(profile="paper"))
    assert defaults["detector"].weights == "yolov8l.pt" and defaults["embedder"].pretrained == "laion2b_s34b_b79k"
    assert defaults["captioner"].model == "Qwen/Qwen2-VL-2B-Instruct"


def test_offline_profile_and_keyless_openai(no_config):
    res = model_resources(Settings(detector="annotations"))
    assert isinstance(res["detector"], AnnotationsDetector) and isinstance(res["embedder"], OfflineEmbedder)
    assert isinstance(res["captioner"], TemplateCaptioner)
    cap = model_resources(Settings(captioner="openai"))["captioner"]
    assert isinstance(cap, OpenAICaptioner) and cap.api_key is None


def test_vllm_deployment_serves_the_paper_model():
    docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "vllm.yaml").read_text()) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--model") + 1] == "Qwen/Qwen2-VL-2B-Instruct"
