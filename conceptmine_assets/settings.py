"""Deployment settings: one typed model read from the environment and a config file.

Precedence, highest first: keyword arguments (tests), environment variables, the config file,
the defaults below. The config file is ``$CONCEPTMINE_CONFIG`` or, unset, the repository's
``conceptmine.yaml``; relative paths in it are relative to the file. A file may start from
another one (``extends: conceptmine.yaml``: its values, then this file's on top).

The file's ``stages`` section holds the defaults of the assets' ``dg.Config`` classes (cameras,
split fractions, thresholds…): ``stage_config("frames")`` applied to ``FramesConfig`` makes the
file's ``stages.frames`` its defaults, so the UI's launchpad, automation, schedules, backfills
and ``conceptmine run`` all use the same values without any run config.

To add a setting: add a field here with ``Field(description=...)``; its environment variable is
``CONCEPTMINE_<NAME>`` and its file key ``<name>``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import typing
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import AliasChoices, Field
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, InitSettingsSource, SettingsConfigDict

from conceptmine_assets.errors import ConceptmineError
from conceptmine_assets.lib.watched import watch

Profile = Literal["offline", "paper"]
PROFILES: tuple[str, ...] = ("offline", "paper")
REPO_CONFIG = Path(__file__).resolve().parents[1] / "conceptmine.yaml"
CONFIG_ENV = "CONCEPTMINE_CONFIG"
# File keys holding paths: resolved against the file's folder (URLs such as s3://... are kept).
_PATH_KEYS = ("dataroot", "store", "vocabulary", "yolo_weights", "openclip_checkpoint", "hub_cache")


class SettingsError(ConceptmineError):
    """A setting (environment variable or config file entry) is missing or invalid."""


def config_path() -> Path | None:
    """The config file in force: ``$CONCEPTMINE_CONFIG``, else the repository's, if it exists."""
    named = os.environ.get(CONFIG_ENV)
    watch(REPO_CONFIG)  # the one in force without CONCEPTMINE_CONFIG, even before it exists
    if named:
        path = Path(named).expanduser().resolve()
        if not path.is_file():
            raise SettingsError(f"{CONFIG_ENV}={named}: no such config file; unset it or point it at a YAML file")
        return path
    return REPO_CONFIG if REPO_CONFIG.is_file() else None


@functools.cache
def _read_file(path: Path, mtime: float) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"config file {path} is not readable YAML ({exc}); fix or replace it") from None
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    base = data.pop("extends", None)
    for key in _PATH_KEYS:
        value = data.get(key)
        if isinstance(value, str) and "://" not in value:
            data[key] = str((path.parent / value).resolve())
    if base is None:
        return data
    merged = dict(file_values((path.parent / str(base)).resolve()))
    stages = {**merged.get("stages", {})}
    for asset, values in (data.get("stages") or {}).items():
        stages[asset] = {**stages.get(asset, {}), **(values or {})}
    return {**merged, **data, "stages": stages}


def file_values(path: Path | None = None) -> dict[str, Any]:
    """The settings of a config file (``extends`` merged, paths resolved); {} without a file."""
    path = path or config_path()
    if path is None:
        return {}
    watch(path)
    if not path.is_file():
        raise SettingsError(f"config file {path} does not exist (named by `extends`?)")
    return _read_file(path, path.stat().st_mtime)


class Settings(BaseSettings):
    """Everything a deployment chooses; see the module docstring for where values come from."""

    model_config = SettingsConfigDict(
        env_prefix="CONCEPTMINE_", env_ignore_empty=True, extra="forbid", frozen=True, populate_by_name=True
    )

    dataroot: str | None = Field(
        None, validation_alias=AliasChoices("NUSCENES_DATAROOT", "dataroot"),
        description="nuScenes dataroot (env NUSCENES_DATAROOT); required to run the per-scene stages",
    )
    nuscenes_version: str = Field(
        "v1.0-mini", validation_alias=AliasChoices("NUSCENES_VERSION", "nuscenes_version"),
        description="table folder under the dataroot (env NUSCENES_VERSION), e.g. v1.0-trainval",
    )
    store: str = Field("data/store", description="where Parquet outputs go: a path or fsspec URL (s3://...)")
    profile: Profile = Field("offline", description="model profile: offline (weights shipped by pip) or paper")
    detector: Literal["yolo", "annotations"] = Field("yolo", description="yolo, or annotations (the dataset's own boxes)")
    yolo_weights: str | None = Field(
        None, description="detector weights (any file ultralytics loads); unset: the paper profile's yolov8l.pt"
    )
    captioner: Literal["template", "qwen2_vl", "openai"] | None = Field(None, description="captioner; unset: the profile's")
    openclip_checkpoint: str | None = Field(
        None, description="local open_clip checkpoint file for the paper profile; unset: laion2b_s34b_b79k from the hub cache"
    )
    qwen2_vl_model: str | None = Field(
        None, description="Qwen2-VL hub id or local model directory; unset: Qwen/Qwen2-VL-2B-Instruct"
    )
    hub_cache: str | None = Field(None, description="Hugging Face hub cache folder; unset: HF_HUB_CACHE / HF_HOME")
    prompt_style: Literal["json", "paper"] = Field(
        "json", description="VLM question: json (class + description) or paper (the original's bare class name)"
    )
    vocabulary: str | None = Field(None, description="concept vocabulary file; unset: the packaged concepts_v1.yaml")
    remine_cron: str = Field("0 3 * * 1", description="cron of the global re-mining (outlier reference refit, split)")
    executor: Literal["multiprocess", "dask", "k8s"] = Field("multiprocess", description="run executor (scaling.py)")
    dask_scheduler: str | None = Field(None, description="scheduler address for the dask executor, e.g. tcp://127.0.0.1:8786")
    gpu_routing: bool = Field(False, description="model steps run only on GPU workers")
    min_free_mb: float = Field(
        64.0, ge=0.0, description="`conceptmine run` stops before any work when the store or DAGSTER_HOME has less free space (MB)"
    )
    stages: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="dg.Config defaults per asset name (file only), e.g. frames: {cameras: [...]}"
    )
    models: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="settings of the model resources (file only): detector, embedder or "
        "captioner, e.g. embedder: {cpu_threads: 2, batch_size: 32}; any field of the profile's resource class",
    )

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=file_values())

    @classmethod
    def from_env(cls) -> Settings:
        """The settings in force, or a SettingsError naming the bad setting and where it came from."""
        return load_settings()


def _describe(error: dict) -> str:
    name = ".".join(str(p) for p in error["loc"])
    field = Settings.model_fields.get(str(error["loc"][0])) if error["loc"] else None
    env = "NUSCENES_" + name.upper() if field and field.validation_alias else f"CONCEPTMINE_{name.upper()}"
    where = f"{env} or `{name}` in {config_path() or 'the config file'}"
    return f"setting {name} = {error.get('input')!r} ({where}): {error['msg']}"


def load_settings(**overrides: Any) -> Settings:
    """``Settings(**overrides)`` with a short SettingsError instead of pydantic's report."""
    try:
        return Settings(**overrides)
    except pydantic.ValidationError as exc:
        raise SettingsError("; ".join(_describe(e) for e in exc.errors()[:3])) from None


# asset -> the config file's values applied to its dg.Config class's built-in defaults, and that class
APPLIED_STAGE_VALUES: dict[str, tuple[dict[str, Any], type[pydantic.BaseModel]]] = {}


def stage_config(asset: str):
    """Class decorator: the config file's ``stages.<asset>`` values become the class's defaults.

    Unknown keys, values of another YAML type than the field's (``"0.2"`` or ``true`` for a
    number: no conversion) and values the field would reject (one field's bounds, or a check
    across fields) raise a SettingsError naming the file and key (when the asset module is
    imported, i.e. before anything runs)."""

    def apply(cls: type[pydantic.BaseModel]) -> type[pydantic.BaseModel]:
        values = (file_values().get("stages") or {}).get(asset) or {}
        unknown = sorted(set(values) - set(cls.model_fields))
        if unknown:
            raise SettingsError(
                f"{config_path()}: stages.{asset} has unknown setting(s) {unknown}; known: {sorted(cls.model_fields)}"
            )
        for key, value in values.items():  # types first, strictly: no "0.2" or true for a number
            check_yaml_type(f"stages.{asset}", key, value, cls)
        try:
            cls.model_validate(values)  # the fields' own validation, validators included
        except pydantic.ValidationError as exc:
            bad = [e for e in exc.errors() if not e["loc"] or e["loc"][0] in values]  # () : a check across fields
            if bad:
                raise SettingsError(f"{config_path()}: stages.{asset}{_bad_value(bad[0], values, cls)}") from None
        APPLIED_STAGE_VALUES[asset] = (values, cls)
        fields = {
            name: (cls.model_fields[name].annotation, FieldInfo.merge_field_infos(cls.model_fields[name], default=value))
            for name, value in values.items()
        }
        if not fields:
            return cls
        return pydantic.create_model(cls.__name__, __base__=cls, __module__=cls.__module__, __doc__=cls.__doc__, **fields)

    return apply


def _bad_value(error: dict, values: dict[str, Any], cls: type[pydantic.BaseModel]) -> str:
    """``.key = value: why`` for a field's error, ``: why`` for a check across fields."""
    if not error["loc"]:
        return f": {error['msg']}"
    return f".{error['loc'][0]} = {values[error['loc'][0]]!r}: {error['msg']}"


@functools.cache
def _strict_adapter(annotation: Any) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(annotation, config=pydantic.ConfigDict(strict=True))


_EXAMPLES = {float: "as a number without quotes, e.g. 0.2", int: "as a whole number without quotes, e.g. 3",
             bool: "as true or false without quotes", str: "as text", list: "as a YAML list, e.g. [a, b]"}


def _example(annotation: Any) -> str:
    """How to write a value of ``annotation`` in YAML (``X | None``: as X, or null)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return "as one of " + ", ".join(map(str, args))
    base = typing.get_origin(annotation) or annotation
    if args and base not in (list, dict, typing.Literal) and len(args) == 1:
        return _example(args[0]) + ", or null"
    return _EXAMPLES.get(base, "as the launchpad describes it")


def check_yaml_type(section: str, key: str, value: Any, cls: type[pydantic.BaseModel]) -> None:
    """A SettingsError naming ``<section>.<key>`` of the config file (``stages.frames``,
    ``models.embedder``) unless the YAML ``value`` has the field's type as it is, not after a
    conversion: pydantic's strict mode on the field's annotation (an int is a float; a string,
    a bool or a float are not an int; a string or a bool are not a float). ``dg.Config``
    classes validate leniently even when asked to be strict, so the type is checked here."""
    annotation = cls.model_fields[key].annotation
    try:
        _strict_adapter(annotation).validate_python(value)
    except pydantic.ValidationError as exc:
        wanted = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
        raise SettingsError(
            f"{config_path()}: {section}.{key} = {json.dumps(value, default=str)} is a YAML "
            f"{type(value).__name__}, not a {wanted}"
            f" ({exc.errors()[0]['msg']}); write it {_example(annotation)}"
        ) from None


def stage_values_version(asset: str) -> str | None:
    """A digest of the config file's values for ``asset`` that differ from its config class's
    built-in defaults (None when none differ): part of the asset's code version, so a changed
    value makes the asset stale for the UI, automation and ``conceptmine run`` alike, while a
    file that restates a default changes nothing."""
    values, cls = APPLIED_STAGE_VALUES.get(asset, ({}, None))
    changed = {}
    for name, value in values.items():
        adapter = pydantic.TypeAdapter(cls.model_fields[name].annotation)
        as_set = adapter.dump_python(adapter.validate_python(value), mode="json")
        if as_set != adapter.dump_python(cls.model_fields[name].get_default(call_default_factory=True), mode="json"):
            changed[name] = as_set
    if not changed:
        return None
    return hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:8]


def check_stage_names(settings: Settings) -> None:
    """Every ``stages`` entry names an asset with a config (call after the asset modules are imported)."""
    unknown = sorted(set(settings.stages) - set(APPLIED_STAGE_VALUES))
    if unknown:
        raise SettingsError(
            f"{config_path() or 'the config file'}: stages.{unknown[0]} is not a stage with settings; "
            f"those are {sorted(APPLIED_STAGE_VALUES)}"
        )
