"""A stage's config-file values are part of its code version: changing one makes that asset stale
(for the UI, automation and `conceptmine run` alike); restating a default changes nothing."""

import dagster as dg
import pydantic
import pytest
from pydantic import Field

from conceptmine_assets import settings as settings_module
from conceptmine_assets.settings import Settings, SettingsError, check_stage_names, stage_config, stage_values_version


class ProbeConfig(dg.Config):
    cameras: list[str] = Field(default=["CAM_FRONT"], description="channels")
    frac: float = Field(default=0.1, ge=0.0, le=1.0, description="a share")
    other: float = Field(default=0.1, ge=0.0, le=1.0, description="another share")

    @pydantic.model_validator(mode="after")
    def _at_most_one(self):
        if self.frac + self.other > 1:
            raise ValueError(f"shares must sum to at most 1, got {self.frac + self.other}")
        return self


@pytest.fixture
def registry(monkeypatch) -> dict:
    """A private registry of applied stage values (the real one holds the deployed assets')."""
    fresh: dict = {}
    monkeypatch.setattr(settings_module, "APPLIED_STAGE_VALUES", fresh)
    return fresh


def version_with(config_file, text: str) -> str | None:
    config_file(text)
    stage_config("probe")(ProbeConfig)
    return stage_values_version("probe")


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    def write(text: str):
        path = tmp_path / "conceptmine.yaml"
        path.write_text(text)
        monkeypatch.setenv("CONCEPTMINE_CONFIG", str(path))
        return path

    return write


def test_only_values_other_than_the_defaults_make_a_version(config_file, registry):
    assert version_with(config_file, "stages: {}\n") is None
    assert version_with(config_file, "stages:\n  probe: {frac: 0.10, cameras: [CAM_FRONT]}\n") is None  # restated
    changed = version_with(config_file, "stages:\n  probe: {frac: 0.25}\n")
    assert changed is not None and len(changed) == 8
    assert version_with(config_file, "stages:\n  probe: {frac: 0.3}\n") not in (None, changed)
    assert version_with(config_file, "stages:\n  probe: {frac: 0.25, cameras: [CAM_FRONT]}\n") == changed
    assert version_with(config_file, "stages:\n  probe: {cameras: [CAM_BACK]}\n") not in (None, changed)


def test_a_check_across_fields_is_applied_to_file_values(config_file, registry):
    path = config_file("stages:\n  probe: {frac: 0.7, other: 0.7}\n")
    with pytest.raises(SettingsError) as info:
        stage_config("probe")(ProbeConfig)
    assert str(path) in str(info.value) and "stages.probe" in str(info.value) and "at most 1" in str(info.value)


def test_a_stages_entry_must_name_a_stage_with_settings(config_file, registry):
    config_file("stages:\n  probe: {frac: 0.2}\n")
    stage_config("probe")(ProbeConfig)
    check_stage_names(Settings(store="unused", stages={"probe": {"frac": 0.2}}))
    with pytest.raises(SettingsError, match=r"stages\.prob is not a stage with settings.*probe"):
        check_stage_names(Settings(store="unused", stages={"prob": {"frac": 0.2}}))


def test_a_changed_value_changes_only_that_assets_code_version(monkeypatch):
    from conceptmine_assets.definitions import build_definitions

    def code_versions() -> dict[str, str]:
        graph = build_definitions(Settings(store="unused")).resolve_asset_graph()
        return {k.to_user_string(): graph.get(k).code_version for k in graph.materializable_asset_keys}

    before = code_versions()
    _, split_config = settings_module.APPLIED_STAGE_VALUES["mined_split"]
    monkeypatch.setitem(settings_module.APPLIED_STAGE_VALUES, "mined_split", ({"random_frac": 0.3}, split_config))
    after = code_versions()
    assert {k for k in before if before[k] != after[k]} == {"mined_split"}
    assert after["mined_split"].startswith(f"{before['mined_split']}+cfg.")
