"""mmengine Runner for ConvNeXt segmentors: safe resume under torch>=2.6, CPU-distributed, checks.

Resume and ``weights_only``
    torch >= 2.6 calls ``torch.load(weights_only=True)`` by default. mmengine 0.10.7 calls
    ``torch.load`` without the argument, and its full checkpoints (``iter_N.pth``) hold more than
    tensors: a ``MessageHub`` with ``HistoryBuffer`` objects made of numpy arrays, numpy scalars,
    so resume fails as shipped. Two ways out were considered:

    * ``weights_only=False`` for files "this run wrote": it trusts a path, and anything that can
      drop a file into the work dir (a copied, downloaded or tampered checkpoint) then runs code.
    * keep ``weights_only=True`` and allow, only while mmengine loads a checkpoint, the few
      *data* classes its checkpoints contain (``MMENGINE_CHECKPOINT_GLOBALS``): numpy array
      reconstruction and dtypes, mmengine's ``HistoryBuffer``, and in place of ``getattr`` a
      stand-in that only fetches ``HistoryBuffer``'s statistics methods (the one use mmengine's
      pickles make of it). None of them can call an arbitrary function, so any file stays as
      safe to load as a plain state dict.

    The second is what ``ConvNeXtSegRunner.load_checkpoint`` does (``resume`` and ``load_from``
    both go through it). A pickle that references anything else (``os.system``, ``eval``, a
    custom class) is still refused with torch's ``UnpicklingError``.

Other things this Runner adds, each small:
    * checkpoints are written to a temporary name and renamed, so a run killed while saving
      never leaves a truncated ``iter_N.pth`` behind;
    * ``launcher='pytorch'`` on a machine without CUDA (torchrun on CPU) initialises ``gloo`` and
      wraps the model in DDP without ``device_ids`` (mmengine assumes one GPU per rank), and turns
      SyncBN, which has no CPU kernel, into BN with a warning;
    * after the model is built, decode/auxiliary head ``in_channels`` are checked against the
      backbone's channels so a mismatch stops before training with a message saying what to set.

It is registered in MMSegmentation's ``RUNNERS`` as ``ConvNeXtSegRunner``: configs that set
``runner_type = 'ConvNeXtSegRunner'`` get the same behaviour from MMSegmentation's own
``tools/train.py``.
"""
from __future__ import annotations

import contextlib
import os
import os.path as osp
import pickle
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as torch_dist
from mmengine.dist import master_only
from mmengine.logging import HistoryBuffer, print_log
from mmengine.model import revert_sync_batchnorm
from mmengine.runner import Runner
from mmseg.registry import RUNNERS

__all__ = ["ConvNeXtSegRunner", "MMENGINE_CHECKPOINT_GLOBALS", "mmengine_checkpoint_globals", "check_segmentor"]


def _numpy_globals() -> list[Any]:
    """numpy array/scalar reconstruction and every concrete dtype class (numpy 1.x and 2.x names)."""
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    found: list[Any] = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25: np.dtypes.Float64DType, ...
    if dtypes is not None:
        found += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and isinstance(getattr(dtypes, n), type)]
    return found


_HISTORY_STATISTICS = ("min", "max", "current", "mean")


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """What ``builtins.getattr`` may do while loading: fetch a ``HistoryBuffer`` statistics method.

    A ``HistoryBuffer`` pickles its ``_statistics_methods`` (``HistoryBuffer.min`` ...) as
    ``getattr(HistoryBuffer, 'min')``. Allowing the real ``getattr`` would let a crafted file
    reach arbitrary bound methods, so this stand-in answers exactly those lookups and refuses
    the rest.
    """
    if obj is HistoryBuffer and (name in _HISTORY_STATISTICS or name in HistoryBuffer._statistics_methods):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f"refusing getattr({getattr(obj, '__name__', type(obj).__name__)}, {name!r}) while loading an mmengine checkpoint "
        "(only HistoryBuffer statistics methods are allowed)"
    )


# Found in mmengine 0.10 checkpoints (message hub history buffers, numpy values in runtime info).
# Data classes only, plus the restricted getattr above: nothing that can call arbitrary code.
MMENGINE_CHECKPOINT_GLOBALS: list[Any] = [
    HistoryBuffer,
    (_history_buffer_getattr, "builtins.getattr"),
    *_numpy_globals(),
]


@contextlib.contextmanager
def mmengine_checkpoint_globals() -> Iterator[None]:
    """``torch.load`` stays ``weights_only``; inside, mmengine's data classes are allowed too."""
    with torch.serialization.safe_globals(MMENGINE_CHECKPOINT_GLOBALS):
        yield


def _head_list(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    heads = [("decode_head", getattr(model, "decode_head", None))]
    aux = getattr(model, "auxiliary_head", None)
    if isinstance(aux, torch.nn.ModuleList):
        heads += [(f"auxiliary_head[{i}]", h) for i, h in enumerate(aux)]
    else:
        heads.append(("auxiliary_head", aux))
    return [(n, h) for n, h in heads if h is not None]


def check_segmentor(model: torch.nn.Module) -> None:
    """Raise ``ValueError`` if a head (no neck in between) expects other channels than the backbone gives."""
    backbone = getattr(model, "backbone", None)
    channels = getattr(backbone, "channels", None)
    if channels is None or getattr(model, "with_neck", False) or getattr(model, "neck", None) is not None:
        return  # not our backbone, or a neck re-maps channels
    channels = list(channels)
    for name, head in _head_list(model):
        in_index, in_channels = getattr(head, "in_index", None), getattr(head, "in_channels", None)
        if in_index is None or in_channels is None:
            continue
        idx = list(in_index) if isinstance(in_index, (list, tuple)) else [in_index]
        want = list(in_channels) if isinstance(in_channels, (list, tuple)) else [in_channels]
        bad_idx = [i for i in idx if not -len(channels) <= i < len(channels)]
        if bad_idx:
            raise ValueError(
                f"{name}.in_index {in_index} refers to backbone outputs {bad_idx}, but the backbone returns "
                f"{len(channels)} maps (out_indices {getattr(backbone, 'out_features', '')}, channels {channels})"
            )
        have = [channels[i] for i in idx]
        if getattr(head, "input_transform", None) == "resize_concat" and len(want) == 1 and len(have) > 1:
            have = [sum(have)]
        if have != want:
            arch = getattr(backbone, "arch", type(backbone).__name__)
            fix = have if isinstance(in_channels, (list, tuple)) else have[0]
            raise ValueError(
                f"{name}.in_channels={in_channels} does not match the backbone: {type(backbone).__name__} "
                f"(arch={arch!r}, outputs {list(backbone.out_features)}) gives channels {channels}, so "
                f"{name} with in_index={in_index} needs in_channels={fix}"
            )


@RUNNERS.register_module()
class ConvNeXtSegRunner(Runner):
    """mmengine's Runner with weights-only-safe resume and CPU torchrun support (see module doc)."""

    def load_checkpoint(self, filename: str, *args: Any, **kwargs: Any) -> dict:
        with mmengine_checkpoint_globals():
            return super().load_checkpoint(filename, *args, **kwargs)

    @master_only
    def save_checkpoint(self, out_dir: str, filename: str, *args: Any, **kwargs: Any) -> None:
        if "://" in str(out_dir) or kwargs.get("backend_args") or kwargs.get("file_client_args"):
            return super().save_checkpoint(out_dir, filename, *args, **kwargs)
        tmp = f".{filename}.partial"
        super().save_checkpoint(out_dir, tmp, *args, **kwargs)
        os.replace(osp.join(out_dir, tmp), osp.join(out_dir, filename))

    def setup_env(self, env_cfg: dict) -> None:
        if self.distributed and not torch_dist.is_initialized() and not torch.cuda.is_available():
            if self.launcher != "pytorch":
                raise ValueError(f"launcher={self.launcher!r} needs CUDA; on CPU use torchrun with --launcher pytorch")
            torch_dist.init_process_group(backend="gloo")  # env:// from torchrun
        super().setup_env(env_cfg)

    def build_model(self, model: Any) -> torch.nn.Module:
        built = super().build_model(model)
        check_segmentor(built)
        return built

    def wrap_model(self, model_wrapper_cfg: dict | None, model: torch.nn.Module) -> torch.nn.Module:
        if not (self.distributed and not torch.cuda.is_available()):
            return super().wrap_model(model_wrapper_cfg, model)
        if any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules()):
            print_log("SyncBN has no CPU implementation: using per-process BatchNorm for this CPU run",
                      logger="current", level=30)
        reverted = revert_sync_batchnorm(model)
        cfg = dict(type="MMDistributedDataParallel", broadcast_buffers=False,
                   find_unused_parameters=self.cfg.get("find_unused_parameters", False))
        cfg.update(model_wrapper_cfg or {})
        cfg["device_ids"] = None  # CPU module: DDP must not be given a device
        return super().wrap_model(cfg, reverted)
