"""Pre-flight checks of `conceptmine run`: the table and model load checks are remembered by what
they checked, so a re-run with nothing changed skips them and any change is checked again."""

import os

import pytest

from conceptmine_assets.cli.preflight import RECORD, CheckedRecord, check_dataroot, check_models_load
from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.resources.captioner import TemplateCaptioner
from conceptmine_assets.resources.detector import YoloDetector
from conceptmine_assets.resources.nuscenes import NuScenesResource
from conceptmine_assets.resources.offline_embedder import OfflineEmbedder
from conceptmine_assets.resources.profiles import model_resources
from conceptmine_assets.settings import Settings
from conceptmine_assets_tests.helpers import copy_dataroot


@pytest.fixture
def verified(monkeypatch) -> list[str]:
    """The backends whose ``verify`` ran, in order (nothing is loaded)."""
    calls: list[str] = []
    for cls in (YoloDetector, OfflineEmbedder, TemplateCaptioner):
        monkeypatch.setattr(cls, "verify", lambda self, name=cls.__name__: calls.append(name))
    return calls


def test_the_record_round_trips_and_remembers_nothing_without_a_folder(tmp_path):
    record = CheckedRecord(tmp_path)
    assert not record.holds("model detector", "yolo@1")
    record.add("model detector", "yolo@1")
    record.save()
    again = CheckedRecord(tmp_path)
    assert again.holds("model detector", "yolo@1") and not again.holds("model detector", "yolo@2")
    assert not list(tmp_path.glob("conceptmine/.preflight.*"))  # no temp file left behind

    nowhere = CheckedRecord(None)
    nowhere.add("model detector", "yolo@1")
    nowhere.save()
    assert nowhere.path is None


def test_a_damaged_record_is_an_error_naming_it(tmp_path):
    (tmp_path / RECORD).parent.mkdir()
    (tmp_path / RECORD).write_text("[1, 2")
    with pytest.raises(ConceptmineError, match="preflight.json.*delete it"):
        CheckedRecord(tmp_path)


def test_models_are_verified_once_per_identity(tmp_path, yolo_tflite, verified):
    settings = Settings(detector="yolo", yolo_weights=str(yolo_tflite), store=str(tmp_path / "store"))
    record = CheckedRecord(tmp_path)
    check_models_load(model_resources(settings), record)
    assert verified == ["YoloDetector", "OfflineEmbedder", "TemplateCaptioner"]
    check_models_load(model_resources(settings), record)
    assert verified == ["YoloDetector", "OfflineEmbedder", "TemplateCaptioner"]  # nothing changed

    # other weights content (same name elsewhere): only the detector is verified again
    other = tmp_path / "other" / yolo_tflite.name
    other.parent.mkdir()
    other.write_bytes(yolo_tflite.read_bytes() + b"\0")
    check_models_load(model_resources(settings.model_copy(update={"yolo_weights": str(other)})), record)
    assert verified[3:] == ["YoloDetector"]


def test_tables_are_loaded_again_when_one_is_rewritten(tmp_path, highway, monkeypatch):
    loads: list[str] = []
    monkeypatch.setattr(NuScenesResource, "nusc", property(lambda self: loads.append(self.dataroot)))
    root = copy_dataroot(highway, tmp_path / "root")
    settings = Settings(dataroot=str(root), store=str(tmp_path / "store"))
    record = CheckedRecord(tmp_path)
    check_dataroot(settings, record)
    check_dataroot(settings, record)
    assert len(loads) == 1

    table = root / "v1.0-mini" / "sample.json"
    table.write_text(table.read_text())  # same content, new mtime: checked again
    stat = table.stat()
    os.utime(table, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    check_dataroot(settings, record)
    assert len(loads) == 2
