"""Model identities: cheap to observe, and they change exactly when the weights or settings do."""

from pathlib import Path

from conceptmine_assets.assets.models import detector_version, embedding_version
from conceptmine_assets.resources.detector import DetectorResource
from conceptmine_assets.resources.embedder import EmbedderResource


def test_embedding_version_follows_the_checkpoint_without_loading_it(tmp_path: Path):
    checkpoint = tmp_path / "clip.pt"
    checkpoint.write_bytes(b"not a real checkpoint: loading it would fail")
    embedder = EmbedderResource(backend="open_clip", model="ViT-B-32", pretrained=str(checkpoint))
    first = embedding_version(embedder)  # no load: a load of these bytes would raise
    assert embedding_version(embedder) == first
    checkpoint.write_bytes(b"other weights, other vectors")
    assert embedding_version(embedder) != first
    assert embedding_version(embedder.model_copy(update={"precision": "fp16"})) != embedding_version(embedder)
    assert embedding_version(EmbedderResource(backend="offline")) != embedding_version(embedder)


def test_detector_version_follows_weights_and_thresholds(tmp_path: Path):
    weights = tmp_path / "det.tflite"
    weights.write_bytes(b"v1")
    detector = DetectorResource(backend="yolo", weights=str(weights))
    first = detector_version(detector)
    assert detector_version(detector.model_copy(update={"conf": 0.5})) != first
    assert detector_version(detector.model_copy(update={"batch_size": 64})) == first  # batching changes nothing
    weights.write_bytes(b"v2")
    assert detector_version(detector) != first
