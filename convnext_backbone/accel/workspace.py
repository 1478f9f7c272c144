"""Reused per-thread CPU buffers for the accelerated blocks.

A fresh large CPU allocation is new pages from the kernel every time (page faults cost about
as much as the arithmetic on them), so the accelerated paths write their wide temporaries into
buffers that only grow. Each thread has its own (concurrent inference stays correct);
``release_workspace()`` frees the buffers of every thread.
"""
from __future__ import annotations

import threading
import weakref

import torch

__all__ = ["release_workspace", "workspace", "workspace_bytes"]


class _Buffers(dict):
    """One thread's buffers, keyed by (dtype, slot). A dict subclass so that it can be weakly referenced."""

    __hash__ = object.__hash__  # identity: each thread's holder is one member of the WeakSet


_local = threading.local()
_all: weakref.WeakSet[_Buffers] = weakref.WeakSet()  # every live thread's buffers (gone with the thread)
_all_lock = threading.Lock()


def _mine() -> _Buffers:
    bufs = getattr(_local, "buffers", None)
    if bufs is None:
        bufs = _local.buffers = _Buffers()
        with _all_lock:
            _all.add(bufs)
    return bufs


def workspace(numel: int, dtype: torch.dtype, slot: str) -> torch.Tensor:
    """A flat CPU tensor of ``numel`` elements from this thread's buffer ``slot`` (contents undefined)."""
    bufs = _mine()
    buf = bufs.get((dtype, slot))
    if buf is None or buf.numel() < numel:
        bufs.pop((dtype, slot), None)  # free the old one before the larger one is allocated
        # A normal tensor, never an inference tensor: those cannot be written to outside
        # inference_mode, and the buffer outlives the mode it was created in.
        with torch.inference_mode(False):
            buf = bufs[(dtype, slot)] = torch.empty(numel, dtype=dtype)
    return buf[:numel]


def release_workspace() -> None:
    """Free the accelerator's reused buffers in every thread (a thread using one keeps it until it is done)."""
    with _all_lock:
        holders = list(_all)
    for bufs in holders:
        bufs.clear()


def workspace_bytes() -> int:
    """Bytes held in reused buffers by all threads (for benchmarks and tests)."""
    with _all_lock:
        holders = list(_all)
    return sum(t.numel() * t.element_size() for bufs in holders for t in list(bufs.values()))
