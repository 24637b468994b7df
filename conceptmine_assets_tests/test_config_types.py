"""A stage setting of the wrong YAML type is one line naming the file and key, before any work:
no quoted number, no ``true`` for a number, no float for an int (no silent conversion)."""

import json

import dagster as dg
import pytest
from pydantic import Field

from conceptmine_assets.lib.splits import SplitParams
from conceptmine_assets.settings import SettingsError, stage_config
from conceptmine_assets_tests.fault_helpers import cli_env, one_line_error, run_cli
from conceptmine_assets_tests.helpers import HIGHWAY, require


class DemoConfig(dg.Config):
    frac: float = Field(default=0.1, ge=0.0, le=1.0, description="a share")
    count: int = Field(default=3, description="a count")
    flag: bool = Field(default=False, description="a switch")
    cameras: list[str] = Field(default=["CAM_FRONT"], description="channels")
    limit: int | None = Field(default=None, description="an optional bound")


def apply(tmp_path, monkeypatch, cls, values: dict):
    path = tmp_path / "conceptmine.yaml"
    path.write_text(json.dumps({"stages": {"demo_stage": values}}))  # JSON is YAML
    monkeypatch.setenv("CONCEPTMINE_CONFIG", str(path))
    return path, stage_config("demo_stage")(cls)


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("frac", "0.2", ['stages.demo_stage.frac = "0.2"', "YAML str", "float", "without quotes"]),
        ("frac", True, ["stages.demo_stage.frac = true", "YAML bool", "float"]),
        ("count", 2.5, ["stages.demo_stage.count = 2.5", "YAML float", "int"]),
        ("count", "3", ['stages.demo_stage.count = "3"', "YAML str", "int"]),
        ("flag", "yes", ['stages.demo_stage.flag = "yes"', "bool", "true or false"]),
        ("flag", 1, ["stages.demo_stage.flag = 1", "YAML int", "bool"]),
        ("cameras", "CAM_BACK", ['stages.demo_stage.cameras = "CAM_BACK"', "list"]),
        ("limit", "10", ['stages.demo_stage.limit = "10"', "int", "or null"]),
    ],
)
def test_wrong_type_is_one_line_naming_file_and_key(tmp_path, monkeypatch, key, value, words):
    with pytest.raises(SettingsError) as info:
        apply(tmp_path, monkeypatch, DemoConfig, {key: value})
    message = str(info.value)
    assert len(message.splitlines()) == 1 and str(tmp_path / "conceptmine.yaml") in message, message
    assert all(w in message for w in words), message


def test_right_types_are_accepted_and_dagster_takes_them_as_defaults(tmp_path, monkeypatch):
    values = {"frac": 1, "count": 5, "flag": True, "cameras": ["CAM_BACK"], "limit": None}  # an int is a float
    _, cls = apply(tmp_path, monkeypatch, DemoConfig, values)
    assert cls().model_dump() == DemoConfig(**values).model_dump()

    @dg.asset
    def probe(config: cls) -> None: ...

    schema = dg.Definitions(assets=[probe]).resolve_implicit_global_asset_job_def().run_config_schema
    fields = schema.config_type.fields["ops"].config_type.fields["probe"].config_type.fields["config"].config_type.fields
    assert fields["frac"].default_value == 1 and fields["flag"].default_value is True


def test_params_inherited_from_lib_are_checked_strictly(tmp_path, monkeypatch):
    class SplitLike(SplitParams, dg.Config):  # as assets/splits.py builds SplitConfig
        pass

    with pytest.raises(SettingsError, match=r'stages\.demo_stage\.random_frac = "0\.2" is a YAML str'):
        apply(tmp_path, monkeypatch, SplitLike, {"random_frac": "0.2"})
    with pytest.raises(SettingsError, match=r"stages\.demo_stage\.seed = true is a YAML bool"):
        apply(tmp_path, monkeypatch, SplitLike, {"seed": True})


@pytest.mark.parametrize("value", ['"0.2"', "true"])
def test_conceptmine_run_stops_with_one_line_before_any_work(tmp_path, value):
    config = tmp_path / "conceptmine.yaml"
    config.write_text(f"detector: annotations\nstages:\n  mined_split:\n    random_frac: {value}\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = cli_env(CONCEPTMINE_CONFIG=str(config), DAGSTER_HOME=str(home), NUSCENES_DATAROOT=str(require(HIGHWAY)),
                  CONCEPTMINE_STORE=str(tmp_path / "store"))
    line = one_line_error(run_cli(["run"], env, tmp_path))
    assert f"{config}: stages.mined_split.random_frac = {value} is a YAML" in line, line
    assert not (tmp_path / "store").exists()
    assert not (home / "storage").exists() or not any((home / "storage").iterdir())


def _models(tmp_path, monkeypatch, models: dict, **top) -> dict:
    from conceptmine_assets.resources.profiles import model_resources
    from conceptmine_assets.settings import load_settings

    path = tmp_path / "conceptmine.yaml"
    path.write_text(json.dumps({"models": models, **top}))
    monkeypatch.setenv("CONCEPTMINE_CONFIG", str(path))
    return model_resources(load_settings(yolo_weights="weights.tflite"))


def test_model_settings_from_the_file_reach_the_resources(tmp_path, monkeypatch):
    resources = _models(tmp_path, monkeypatch, {"embedder": {"cpu_threads": 2, "batch_size": 8},
                                                "detector": {"cpu_threads": 1, "conf": 0.4}})
    assert (resources["embedder"].cpu_threads, resources["embedder"].batch_size) == (2, 8)
    assert (resources["detector"].cpu_threads, resources["detector"].conf) == (1, 0.4)
    default = _models(tmp_path, monkeypatch, {})["detector"]
    assert resources["detector"].model_id != default.model_id  # conf is part of the detector's identity
    assert resources["detector"].identity() == default.model_copy(update={"conf": 0.4}).identity()  # threads are not


@pytest.mark.parametrize(
    ("models", "words"),
    [
        ({"embedder": {"cpu_threads": -1}}, ["models.embedder.cpu_threads = -1", "OfflineEmbedder", "greater than"]),
        ({"embedder": {"cpu_threads": "2"}}, ['models.embedder.cpu_threads = "2" is a YAML str', "without quotes"]),
        ({"embedder": {"cpu_threads": 2.5}}, ["models.embedder.cpu_threads = 2.5 is a YAML float", "whole number"]),
        ({"detector": {"conf": True}}, ["models.detector.conf = true is a YAML bool", "float"]),
        ({"detector": {"thread": 2}}, ["models.detector.thread is not a setting of YoloDetector", "cpu_threads"]),
        ({"captioner": {"cpu_threads": 2}}, ["models.captioner.cpu_threads", "TemplateCaptioner"]),
        ({"embeder": {"cpu_threads": 2}}, ["models has unknown key(s) ['embeder']", "embedder"]),
    ],
)
def test_a_bad_model_setting_is_one_line_naming_file_key_and_resource(tmp_path, monkeypatch, models, words):
    with pytest.raises(SettingsError) as info:
        _models(tmp_path, monkeypatch, models)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and str(tmp_path / "conceptmine.yaml") in message, message
    assert all(w in message for w in words), message
