"""One configuration: the typed settings model over the environment and the config file."""

from pathlib import Path

import dagster as dg
import pytest
from pydantic import Field

from conceptmine_assets.settings import REPO_CONFIG, Settings, SettingsError, file_values, load_settings, stage_config

REPO = REPO_CONFIG.parent


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    """Write a config file, select it with CONCEPTMINE_CONFIG and clear the variables it sets."""
    for name in ("CONCEPTMINE_PROFILE", "CONCEPTMINE_STORE", "NUSCENES_DATAROOT", "CONCEPTMINE_GPU_ROUTING"):
        monkeypatch.delenv(name, raising=False)

    def write(text: str, name: str = "conceptmine.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        monkeypatch.setenv("CONCEPTMINE_CONFIG", str(path))
        return path

    return write


def test_file_values_with_relative_paths_resolved_and_environment_on_top(config_file, tmp_path, monkeypatch):
    config_file("store: out/store\ndataroot: nusc\nprofile: paper\ngpu_routing: true\n")
    settings = load_settings()
    assert settings.store == str(tmp_path / "out" / "store") and settings.dataroot == str(tmp_path / "nusc")
    assert settings.profile == "paper" and settings.gpu_routing is True
    monkeypatch.setenv("CONCEPTMINE_PROFILE", "offline")
    monkeypatch.setenv("NUSCENES_DATAROOT", "/elsewhere")
    settings = load_settings()
    assert settings.profile == "offline" and settings.dataroot == "/elsewhere"
    assert load_settings(store="s3://bucket/x").store == "s3://bucket/x"  # keyword arguments win


def test_extends_merges_stage_sections(config_file, tmp_path):
    config_file("profile: paper\nstages:\n  frames: {cameras: [CAM_FRONT], seed: 3}\n", "base.yaml")
    config_file("extends: base.yaml\nstages:\n  frames: {cameras: [CAM_BACK]}\n")
    values = file_values()
    assert values["profile"] == "paper" and values["stages"]["frames"] == {"cameras": ["CAM_BACK"], "seed": 3}


@pytest.mark.parametrize(
    ("text", "env", "words"),
    [
        ("profile: fast\n", {}, ["profile", "'fast'", "CONCEPTMINE_PROFILE", "offline"]),
        ("", {"CONCEPTMINE_GPU_ROUTING": "maybe"}, ["gpu_routing", "'maybe'"]),
        ("colour: red\n", {}, ["colour", "Extra inputs"]),
        ("stages: [1\n", {}, ["not readable YAML"]),
    ],
)
def test_bad_settings_give_one_short_message(config_file, monkeypatch, text, env, words):
    path = config_file(text)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert all(w in message for w in words), message
    assert len(message.splitlines()) <= 10 and (str(path) in message or "CONCEPTMINE_" in message)


def test_stage_config_makes_the_file_values_the_config_defaults(config_file):
    config_file("stages:\n  demo_stage: {cameras: [CAM_BACK], frac: 0.25}\n")

    @stage_config("demo_stage")
    class DemoConfig(dg.Config):
        """A stage's settings."""

        cameras: list[str] = Field(default=["CAM_FRONT"], description="channels")
        frac: float = Field(default=0.1, ge=0.0, le=1.0, description="a share")
        seed: int = Field(default=0, description="a seed")

    assert DemoConfig() == DemoConfig(cameras=["CAM_BACK"], frac=0.25, seed=0)
    assert DemoConfig.model_fields["frac"].description == "a share"
    with pytest.raises(Exception):
        DemoConfig(frac=2.0)  # the field's validation stays

    @dg.asset
    def probe(config: DemoConfig) -> None: ...

    launchpad = dg.Definitions(assets=[probe]).resolve_implicit_global_asset_job_def().run_config_schema
    fields = launchpad.config_type.fields["ops"].config_type.fields["probe"].config_type.fields["config"].config_type.fields
    assert fields["cameras"].default_value == ["CAM_BACK"] and fields["frac"].default_value == 0.25


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("stages:\n  demo_stage: {frac: 1.5}\n", ["stages.demo_stage.frac", "1.5", "less than or equal"]),
        ("stages:\n  demo_stage: {fraction: 0.2}\n", ["stages.demo_stage", "fraction", "known"]),
    ],
)
def test_stage_config_rejects_bad_file_values(config_file, text, words):
    path = config_file(text)

    class DemoConfig(dg.Config):
        frac: float = Field(default=0.1, ge=0.0, le=1.0, description="a share")

    with pytest.raises(SettingsError) as info:
        stage_config("demo_stage")(DemoConfig)
    assert str(path) in str(info.value) and all(w in str(info.value) for w in words), str(info.value)


def test_demo_config_holds_the_tiny_data_choices(monkeypatch):
    monkeypatch.setenv("CONCEPTMINE_CONFIG", str(REPO / "conceptmine.demo.yaml"))
    demo = file_values()
    assert demo["dataroot"] == str(REPO / "data" / "demo-dataroot")
    assert len(demo["stages"]["frames"]["cameras"]) == 6
    assert demo["stages"]["mined_split"]["random_frac"] == demo["stages"]["mined_split"]["target_frac"] == 0.2
    assert demo["profile"] == file_values(REPO_CONFIG)["profile"]  # the rest comes from conceptmine.yaml


def test_the_deployed_launchpad_defaults_are_the_config_file(monkeypatch):
    """The code location's job config defaults (what the UI and automation run with) are the
    repository config file's stage values."""
    from conceptmine_assets.definitions import build_definitions

    stages = file_values()["stages"]  # the file in force when the asset modules were imported
    defs = build_definitions(Settings(store="unused"))
    for job, op, field in [("perception_job", "frames", "cameras"), ("mining_global_job", "mined_split", "random_frac")]:
        ops = defs.resolve_job_def(job).run_config_schema.config_type.fields["ops"].config_type.fields
        assert ops[op].config_type.fields["config"].config_type.fields[field].default_value == stages[op][field]


@pytest.mark.parametrize(
    ("module", "config", "params"),
    [
        ("splits", "SplitConfig", "conceptmine_assets.lib.splits:SplitParams"),
        ("outliers", "OutlierReferenceConfig", "conceptmine_assets.lib.outliers:OutlierParams"),
        ("outliers", "OutlierFlagsConfig", "conceptmine_assets.lib.quality:QualityThresholds"),
        ("search_index", "SearchIndexConfig", "conceptmine_assets.lib.search:IndexParams"),
    ],
)
def test_a_stage_config_is_its_lib_params_and_the_launchpad_explains_them(module, config, params):
    """Parameters stated once, in lib/: the asset's config class inherits the lib model (so the lib
    functions take the config itself) and the launchpad shows each inherited field with the lib's
    description and default; the lib's bounds hold for the config too."""
    import importlib

    cls = getattr(importlib.import_module(f"conceptmine_assets.assets.{module}"), config)
    lib_module, lib_name = params.split(":")
    base = getattr(importlib.import_module(lib_module), lib_name)
    assert issubclass(cls, base)

    @dg.asset
    def probe(config: cls) -> None: ...

    job = dg.Definitions(assets=[probe]).resolve_implicit_global_asset_job_def()
    shown = job.run_config_schema.config_type.fields["ops"].config_type.fields["probe"].config_type.fields
    shown = shown["config"].config_type.fields
    for name, field in base.model_fields.items():
        assert field.description and shown[name].description == field.description, name
        assert shown[name].default_value == cls.model_fields[name].default, name
        assert cls.model_fields[name].metadata == field.metadata, name  # the bounds (ge/le/gt/lt)

