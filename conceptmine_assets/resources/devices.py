"""Where and in which precision a torch model runs: one answer for every model resource."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
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


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def fixed_torch_threads(threads: int | None = None) -> Iterator[None]:
    """Run a model's forward passes on a fixed number of torch CPU threads (None or 0: every
    available CPU), whatever the process set before, then restore it.

    Torch's CPU kernels split their sums by thread, so the last bits of a result depend on the
    intra-op thread count, and that count is process state: ultralytics sets it to
    ``cpu_count - 1`` when it loads a detector (``select_device``). Without this, a caption or
    concept embedding computed in a process that loaded YOLO earlier differed from one computed
    in a fresh process (by ~6e-8), so a run resumed in a new process was not byte-identical. On
    one thread the result of a row also stops depending on the other rows of its batch."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads or available_cpus())
    try:
        yield
    finally:
        torch.set_num_threads(before)
