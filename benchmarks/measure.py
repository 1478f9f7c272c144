"""Timing, peak memory and statistics for one step of a model.

Peak memory on CPU: tracemalloc cannot see torch's allocations, and ``ru_maxrss`` only ever
grows, so we (1) collect garbage and ``malloc_trim`` so freed heap pages go back to the OS
and are not silently reused, (2) reset the kernel's RSS high-water mark (write ``5`` to
``/proc/self/clear_refs``), (3) run the step, (4) report ``VmHWM`` minus the RSS before the
step: the extra resident memory the step needed at its peak (activations, gradients,
workspaces, our reused CPU buffer included: it is released first), not counting weights
already resident. glibc keeps freed blocks below its dynamic mmap threshold (up to 32 MiB)
in its heap, so by default this includes heap retention; with ``MALLOC_MMAP_THRESHOLD_``
pinned (e.g. 1048576) freed tensors go back to the OS and it is live memory. On CUDA: ``max_memory_allocated`` minus
``memory_allocated`` before the step, after resetting the peak counter.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import statistics
import time
from collections.abc import Callable

import torch

from convnext_backbone.accel import release_workspace
from convnext_backbone.export.features import DTYPES

MiB = 1024.0 * 1024.0


def shape_str(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def autocast_context(device: str, dtype: str) -> Callable[[], contextlib.AbstractContextManager]:
    """fp32 runs as is; bf16/fp16 run under ``torch.autocast`` (weights stay fp32, as in training)."""
    if dtype == "float32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device, dtype=DTYPES[dtype])


def make_step(model: torch.nn.Module, features: Callable, x: torch.Tensor, mode: str, autocast: Callable) -> Callable[[], None]:
    """Inference: eval + inference_mode. Train: zero grads, forward, sum of all maps, backward."""
    if mode == "infer":
        def step() -> None:
            with torch.inference_mode(), autocast():
                features(x)
    elif mode == "train":
        def step() -> None:
            model.zero_grad(set_to_none=True)
            with autocast():
                maps = features(x)
            sum(m.float().sum() for m in maps).backward()
    else:
        raise ValueError(f"unknown mode {mode!r}; expected 'infer' or 'train'")
    return step


def set_mode(model: torch.nn.Module, mode: str) -> None:
    model.train(mode == "train")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_once(step: Callable[[], None], device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - t0


class PeakMemory:
    """Extra memory a step needs at its peak, in MiB (see the module docstring for how)."""

    def __init__(self, device: str):
        self.device = device
        self.unavailable: str | None = None
        if device == "cpu":
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self._status("VmHWM")
            except OSError as e:
                self.unavailable = f"CPU peak memory needs Linux /proc/self/clear_refs and VmHWM ({e})"
            name = ctypes.util.find_library("c")
            libc = ctypes.CDLL(name) if name else None
            self._trim = getattr(libc, "malloc_trim", None)

    @property
    def method(self) -> str:
        if self.unavailable:
            return self.unavailable
        if self.device == "cuda":
            return "torch.cuda.max_memory_allocated - memory_allocated before the step"
        method = "VmHWM after the step - VmRSS before it (high-water mark reset via /proc/self/clear_refs, after malloc_trim)"
        pinned = os.environ.get("MALLOC_MMAP_THRESHOLD_")
        if pinned:
            return method + f"; glibc MALLOC_MMAP_THRESHOLD_={pinned}: freed tensors return to the OS, so this is live memory"
        return method + (
            "; glibc default: freed blocks below its dynamic mmap threshold (up to 32 MiB) stay in its heap and count "
            "(run with MALLOC_MMAP_THRESHOLD_=1048576 for live memory)"
        )

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise OSError(f"{field} not in /proc/self/status")

    def measure(self, step: Callable[[], None]) -> tuple[float, float | None]:
        """Run ``step`` once; return ``(seconds, peak MiB or None)``."""
        release_workspace()  # our reused CPU buffer counts as the step's memory, as a fresh tensor would
        gc.collect()
        if self.unavailable:
            return time_once(step, self.device), None
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            dt = time_once(step, self.device)
            return dt, (torch.cuda.max_memory_allocated() - base) / MiB
        if self._trim is not None:
            self._trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = self._status("VmRSS")
        dt = time_once(step, self.device)
        return dt, (self._status("VmHWM") - base) / MiB


def summarize(samples: list[float]) -> dict[str, float]:
    """Median and spread; quartiles need at least 2 samples (else they equal the median)."""
    s = sorted(samples)
    med = statistics.median(s)
    q1, _, q3 = statistics.quantiles(s, n=4, method="inclusive") if len(s) >= 2 else (med, med, med)
    return {"median_s": med, "min_s": s[0], "max_s": s[-1], "q1_s": q1, "q3_s": q3, "n": len(s)}


def forward_flops(model: torch.nn.Module, shape: tuple[int, ...]) -> float | None:
    """Forward FLOPs counted by torch on a meta-device copy (no compute); None if it cannot."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    try:
        meta = copy.deepcopy(model).to("meta").eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            meta(torch.empty(shape, device="meta"))
        return float(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - a counting aid, never a reason to fail the benchmark
        return None
