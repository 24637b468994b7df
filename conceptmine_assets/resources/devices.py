"""Where and in which precision a torch model runs: one answer for every model resource."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conceptmine_assets.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"  # declarative check of every resource's ``device`` field


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda:0`` when torch sees a GPU, else ``cpu``; a clear error for an unusable device."""
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} requested, but torch sees no CUDA device")
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ModelLoadError(f"device {device!r}: torch sees {torch.cuda.device_count()} CUDA device(s)")
        return device
    raise ModelLoadError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:<n>")


def torch_dtype(precision: str, device: str) -> torch.dtype:
    """fp32 anywhere; fp16/bf16 only on a GPU (CPU half-precision kernels are slow or missing)."""
    import torch

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in dtypes:
        raise ModelLoadError(f"unknown precision {precision!r}; use one of {sorted(dtypes)}")
    if precision != "fp32" and not device.startswith("cuda"):
        raise ModelLoadError(f"precision {precision} needs a GPU, but the device is {device!r}; use fp32")
    return dtypes[precision]
