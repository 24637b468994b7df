"""Deployment settings, read from the environment when the definitions load (never at import).

| variable | default | meaning |
|---|---|---|
| ``NUSCENES_DATAROOT`` | (required) | nuScenes dataroot; resolved by ``dg.EnvVar`` in the run |
| ``NUSCENES_VERSION`` | ``v1.0-mini`` | table folder under the dataroot |
| ``CONCEPTMINE_STORE`` | ``data/store`` | where Parquet outputs go: a path or fsspec URL (``s3://...``) |
| ``CONCEPTMINE_PROFILE`` | ``offline`` | model profile: ``offline`` (weights shipped by pip) or ``paper`` |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

Profile = Literal["offline", "paper"]
PROFILES: tuple[str, ...] = ("offline", "paper")


@dataclass(frozen=True)
class Settings:
    store: str = "data/store"
    nuscenes_version: str = "v1.0-mini"
    profile: Profile = "offline"

    @classmethod
    def from_env(cls) -> Settings:
        profile = os.environ.get("CONCEPTMINE_PROFILE", "offline")
        if profile not in PROFILES:
            raise ValueError(f"CONCEPTMINE_PROFILE={profile!r}; choose one of {PROFILES}")
        return cls(
            store=os.environ.get("CONCEPTMINE_STORE", cls.store),
            nuscenes_version=os.environ.get("NUSCENES_VERSION", cls.nuscenes_version),
            profile=profile,  # type: ignore[arg-type]
        )
