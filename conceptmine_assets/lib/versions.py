"""The oldest library versions the model code works with, checked before a model loads.

pyproject.toml states the same floors; this check catches an environment that ignored them
(a pinned image, ``pip install --no-deps``) with a message that says what to upgrade, instead of
an unknown-keyword error deep inside a library.
"""

from __future__ import annotations

from conceptmine_assets.errors import ModelLoadError
from conceptmine_assets.lib.identity import package_version

# distribution → (oldest supported version, what needs it). Keep in step with pyproject.toml.
FLOORS: dict[str, tuple[str, str]] = {
    "ultralytics": ("8.4.80", "predict(quantize=...) replaced half=/int8= in 8.4.80"),
    "transformers": ("4.56.0", "from_pretrained(dtype=...) arrived in 4.56.0"),
    "open_clip_torch": ("3.0.0", "create_model_and_transforms(cache_dir=...) and safetensors hub weights"),
    "openai": ("1.57.0", "openai.Omit, to send no Authorization header to a keyless server, is public from 1.57.0"),
}


def _parse(version: str) -> tuple[int, ...]:
    """Numeric release part of a version string (``5.0.0rc1`` → (5, 0, 0))."""
    from packaging.version import Version

    return Version(version).release


def require(package: str) -> str:
    """The installed version of ``package``; :class:`ModelLoadError` if it is missing or older than
    its floor in :data:`FLOORS`."""
    floor, why = FLOORS[package]
    installed = package_version(package)
    if installed is None:
        raise ModelLoadError(f"{package} is not installed; run: pip install '{package}>={floor}' ({why})")
    if _parse(installed) < _parse(floor):
        raise ModelLoadError(
            f"{package} {installed} is installed, but conceptmine needs {package}>={floor} ({why}); "
            f"run: pip install '{package}>={floor}'"
        )
    return installed
