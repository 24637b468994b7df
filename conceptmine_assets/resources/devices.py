"""Where and in which precision a torch model runs: one answer for every model resource."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import threading
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
    in a fresh process (by ~6e-8), so a run resumed in a new process was not byte-identical. (A
    row's vector still depends on the batch size, on any thread count: measured with MobileNetV2,
    batches of 1, 4 and 8 each give other last bits than 32; the size is the resource's setting.)"""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads or available_cpus())
    try:
        yield
    finally:
        torch.set_num_threads(before)


# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
_AFTER = {M_MMAP_MAX: 65536, M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20}
_heap_lock = threading.Lock()
_heap_depth = 0


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (``mallopt``/``malloc_trim``); None elsewhere (musl, macOS)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(None)


@contextlib.contextmanager
def steady_heap() -> Iterator[None]:
    """Keep the memory a model's forward passes free for the next pass, instead of handing it
    back to the kernel and faulting it in again (nested scopes: the outermost one counts).

    Every forward pass allocates its activations afresh (tens of MB for a batch of 32 crops).
    glibc serves blocks above its mmap threshold with a new ``mmap`` and gives them back on
    ``free``, and trims the heap's top above its trim threshold, so each pass faults its pages
    in again: measured with the offline MobileNetV2 at batch 32 on one thread, 57 % of the
    embedding time was the kernel's (1.6 M minor faults per 96 crops), and the speed depended
    on what the process had allocated before (glibc raises the threshold after large frees):
    the same model ran twice as fast after the detector had decoded a scene's frames. That was
    the embeddings step's 2x over its "bare" model inside ``perception_job`` (issue 21).

    Inside the scope nothing is mmapped (``M_MMAP_MAX`` 0) and the heap is not trimmed, so the
    second batch reuses the first one's pages (no faults; the vectors are bit-identical, peak RSS
    +0.14 GB on that case). On exit the heap is trimmed once (``malloc_trim``) and glibc gets
    fixed limits: blocks from 32 MiB are mmapped, a free top above 64 MiB is trimmed (setting
    any limit turns glibc's adaptive ones off, whose ceilings these are). No-op off glibc."""
    global _heap_depth
    libc = _glibc()
    if libc is None:
        yield
        return
    with _heap_lock:
        _heap_depth += 1
        if _heap_depth == 1:
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield
    finally:
        with _heap_lock:
            _heap_depth -= 1
            if _heap_depth == 0:
                for param, value in _AFTER.items():
                    libc.mallopt(param, value)
                libc.malloc_trim(0)
