"""Deployment settings, read from the environment when the definitions load (never at import).

| variable | default | meaning |
|---|---|---|
| ``NUSCENES_DATAROOT`` | (required) | nuScenes dataroot; resolved by ``dg.EnvVar`` in the run |
| ``NUSCENES_VERSION`` | ``v1.0-mini`` | table folder under the dataroot |
| ``CONCEPTMINE_STORE`` | ``data/store`` | where Parquet outputs go: a path or fsspec URL (``s3://...``) |
| ``CONCEPTMINE_PROFILE`` | ``offline`` | model profile: ``offline`` (weights shipped by pip) or ``paper`` |
| ``CONCEPTMINE_DETECTOR`` | ``yolo`` | ``yolo`` or ``annotations`` (the dataset's own boxes) |
| ``CONCEPTMINE_CAPTIONER`` | by profile | ``template``, ``qwen2_vl`` or ``openai`` |
| ``CONCEPTMINE_VOCABULARY`` | packaged ``concepts_v1.yaml`` | path of a concept vocabulary file |
| ``CONCEPTMINE_REMINE_CRON`` | ``0 3 * * 1`` | cron of the global re-mining (outlier reference, split) |
| ``CONCEPTMINE_EXECUTOR`` | ``multiprocess`` | ``multiprocess``, ``dask`` or ``k8s`` (see ``scaling.py``) |
| ``CONCEPTMINE_DASK_SCHEDULER`` | none | scheduler address for ``dask``, e.g. ``tcp://127.0.0.1:8786`` |
| ``CONCEPTMINE_GPU_ROUTING`` | ``0`` | ``1``: model steps run only on GPU workers |
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
    detector: Literal["yolo", "annotations"] = "yolo"
    captioner: Literal["template", "qwen2_vl", "openai"] | None = None  # None: the profile's
    vocabulary: str | None = None  # None: the packaged vocabulary
    remine_cron: str = "0 3 * * 1"
    executor: Literal["multiprocess", "dask", "k8s"] = "multiprocess"
    dask_scheduler: str | None = None
    gpu_routing: bool = False
    yolo_weights: str | None = None  # detector weights; paper default yolov8l.pt, offline: CONCEPTMINE_YOLO_WEIGHTS
    openclip_checkpoint: str | None = None  # local open_clip checkpoint file instead of the paper's hub weights
    qwen2_vl_model: str | None = None  # Qwen2-VL hub id or local directory; None: Qwen/Qwen2-VL-2B-Instruct
    hub_cache: str | None = None  # Hugging Face hub cache; None: HF_HUB_CACHE / HF_HOME default
    prompt_style: Literal["json", "paper"] = "json"  # VLM question: JSON class+description, or the paper's

    @classmethod
    def from_env(cls) -> Settings:
        profile = os.environ.get("CONCEPTMINE_PROFILE", "offline")
        if profile not in PROFILES:
            raise ValueError(f"CONCEPTMINE_PROFILE={profile!r}; choose one of {PROFILES}")
        detector = os.environ.get("CONCEPTMINE_DETECTOR", "yolo")
        if detector not in ("yolo", "annotations"):
            raise ValueError(f"CONCEPTMINE_DETECTOR={detector!r}; choose yolo or annotations")
        captioner = os.environ.get("CONCEPTMINE_CAPTIONER") or None
        if captioner not in (None, "template", "qwen2_vl", "openai"):
            raise ValueError(f"CONCEPTMINE_CAPTIONER={captioner!r}; choose template, qwen2_vl or openai")
        executor = os.environ.get("CONCEPTMINE_EXECUTOR", "multiprocess")
        if executor not in ("multiprocess", "dask", "k8s"):
            raise ValueError(f"CONCEPTMINE_EXECUTOR={executor!r}; choose multiprocess, dask or k8s")
        routing = os.environ.get("CONCEPTMINE_GPU_ROUTING", "").strip().lower()
        if routing not in ("", "0", "false", "no", "1", "true", "yes"):
            raise ValueError(f"CONCEPTMINE_GPU_ROUTING={routing!r}; use 1 or 0")
        return cls(
            store=os.environ.get("CONCEPTMINE_STORE", cls.store),
            nuscenes_version=os.environ.get("NUSCENES_VERSION", cls.nuscenes_version),
            profile=profile,  # type: ignore[arg-type]
            detector=detector,  # type: ignore[arg-type]
            captioner=captioner,  # type: ignore[arg-type]
            vocabulary=os.environ.get("CONCEPTMINE_VOCABULARY") or None,
            remine_cron=os.environ.get("CONCEPTMINE_REMINE_CRON", cls.remine_cron),
            executor=executor,  # type: ignore[arg-type]
            dask_scheduler=os.environ.get("CONCEPTMINE_DASK_SCHEDULER") or None,
            gpu_routing=routing in ("1", "true", "yes"),
            yolo_weights=os.environ.get("CONCEPTMINE_YOLO_WEIGHTS") or None,
            openclip_checkpoint=os.environ.get("CONCEPTMINE_OPENCLIP_CHECKPOINT") or None,
            qwen2_vl_model=os.environ.get("CONCEPTMINE_QWEN2_VL_MODEL") or None,
            hub_cache=os.environ.get("CONCEPTMINE_HUB_CACHE") or None,
            prompt_style=os.environ.get("CONCEPTMINE_PROMPT_STYLE") or "json",  # type: ignore[arg-type]
        )
