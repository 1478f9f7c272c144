"""Detectron2's ``launch`` on machines without CUDA: N gloo processes, the multi-GPU code path.

Detectron2's ``launch`` already starts its workers with the gloo backend when CUDA is absent.
What stops a CPU run comes after, and is handled here, in each worker:

* ``create_ddp_model`` always passes ``device_ids=[local_rank]``, which DistributedDataParallel
  refuses for a module on the CPU: ours passes none for a CPU module (GPU modules: unchanged).
* ``nn.SyncBatchNorm`` (``NORM: "SyncBN"``, e.g. the Cascade box heads) has no CPU kernel and
  raises once more than one process runs. ``cpu_sync_batchnorm`` swaps each one for Detectron2's
  ``NaiveSyncBatchNorm(stats_mode="N")``: statistics still all-reduced across processes (over
  gloo), weighted by batch size as ``nn.SyncBatchNorm`` does, with the same state-dict keys, so
  every rank keeps identical running statistics and checkpoints load either way.
* N processes that each use every core oversubscribe the CPU: unless ``OMP_NUM_THREADS`` is
  set, each worker takes its share of the cores (``worker_threads``).
"""
from __future__ import annotations

import logging
import os
from itertools import chain

import torch
from detectron2.engine import create_ddp_model as _d2_create_ddp_model
from detectron2.layers import NaiveSyncBatchNorm
from detectron2.utils import comm
from torch import nn

__all__ = ["create_ddp_model", "cpu_sync_batchnorm", "cpu_launch_notice", "worker_threads", "usable_cores"]

logger = logging.getLogger("detectron2_convnext")


def _on_cpu(model: nn.Module) -> bool:
    tensors = list(chain(model.parameters(), model.buffers()))
    return bool(tensors) and all(t.device.type == "cpu" for t in tensors)


def create_ddp_model(model: nn.Module, **kwargs) -> nn.Module:
    """Detectron2's ``create_ddp_model``, but a CPU module gets DDP without ``device_ids``."""
    if comm.get_world_size() > 1 and _on_cpu(model):
        kwargs["device_ids"] = None  # Detectron2 fills in [local_rank] only when the key is absent
    return _d2_create_ddp_model(model, **kwargs)


def _to_naive_sync(bn: nn.SyncBatchNorm) -> NaiveSyncBatchNorm:
    new = NaiveSyncBatchNorm(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                             track_running_stats=bn.track_running_stats, stats_mode="N")
    new.load_state_dict(bn.state_dict())
    new.train(bn.training)
    return new


def cpu_sync_batchnorm(model: nn.Module) -> nn.Module:
    """In a multi-process CPU run, replace every ``nn.SyncBatchNorm`` (see the module doc).

    Returns the model (the same object unless the model itself is a SyncBatchNorm); a no-op
    with one process or on GPU. Call it before the optimizer is built.
    """
    if comm.get_world_size() == 1 or not _on_cpu(model):
        return model
    if isinstance(model, nn.SyncBatchNorm):
        return _to_naive_sync(model)
    swapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.SyncBatchNorm):
                setattr(module, child_name, _to_naive_sync(child))
                swapped.append(f"{name}.{child_name}" if name else child_name)
    if swapped:
        logger.warning(
            f"SyncBN has no CPU implementation in PyTorch: {len(swapped)} SyncBatchNorm layers "
            f"({swapped[0]}{', ...' if len(swapped) > 1 else ''}) use Detectron2's NaiveSyncBatchNorm instead "
            f"(BatchNorm with statistics all-reduced over gloo across the {comm.get_world_size()} processes)"
        )
    return model


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_threads(processes_per_machine: int) -> int | None:
    """Threads per CPU worker: ``None`` when ``OMP_NUM_THREADS`` decides, else cores // processes."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, usable_cores() // max(1, processes_per_machine))


def cpu_launch_notice(prog: str, num_gpus: int, num_machines: int) -> str | None:
    """The one line a CPU-only multi-process launch prints, or ``None`` if this is not one."""
    if torch.cuda.is_available() or num_gpus * num_machines <= 1:
        return None
    threads = worker_threads(num_gpus)
    here = f"{num_gpus} CPU process{'es' if num_gpus > 1 else ''}"
    if num_machines > 1:
        here += f" here, {num_gpus * num_machines} in all over --num-machines {num_machines}"
    each = f"{threads} threads each; set OMP_NUM_THREADS to change" if threads else f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} each"
    return f"{prog}: CUDA is not available: --num-gpus {num_gpus} runs {here} (gloo, DistributedDataParallel without device_ids, {each})"


def setup_cpu_worker() -> None:
    """In a CPU worker of a multi-process run: its share of the cores (see ``worker_threads``)."""
    if comm.get_world_size() == 1 or torch.cuda.is_available():
        return
    threads = worker_threads(comm.get_local_size())
    if threads:
        torch.set_num_threads(threads)
