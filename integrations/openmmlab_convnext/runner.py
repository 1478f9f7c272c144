"""The mmengine Runner pieces every OpenMMLab adapter shares: safe resume, atomic saves, CPU torchrun.

Resume and ``weights_only``
    torch >= 2.6 calls ``torch.load(weights_only=True)`` by default. mmengine 0.10.7 calls
    ``torch.load`` without the argument, and its full checkpoints (``iter_N.pth``,
    ``epoch_N.pth``) hold more than tensors: a ``MessageHub`` with ``HistoryBuffer`` objects
    made of numpy arrays, numpy scalars, so resume fails as shipped. Two ways out were
    considered:

    * ``weights_only=False`` for files "this run wrote": it trusts a path, and anything that can
      drop a file into the work dir (a copied, downloaded or tampered checkpoint) then runs code.
    * keep ``weights_only=True`` and allow, only while mmengine loads a checkpoint, the few
      *data* classes its checkpoints contain (``MMENGINE_CHECKPOINT_GLOBALS``): numpy array
      reconstruction and dtypes, mmengine's ``HistoryBuffer``, and in place of ``getattr`` a
      stand-in that only fetches ``HistoryBuffer``'s statistics methods (the one use mmengine's
      pickles make of it). None of them can call an arbitrary function, so any file stays as
      safe to load as a plain state dict.

    The second is what ``ConvNeXtRunnerMixin.load_checkpoint`` does (``resume`` and
    ``load_from`` both go through it). A pickle that references anything else (``os.system``,
    ``eval``, a custom class) is still refused with torch's ``UnpicklingError``.

A truncated or corrupt checkpoint
    ``resume`` first checks the file (``checkpoint_problem``: present, a complete zip archive,
    every member's CRC right). A bad one stops with one line that names it and the newest intact
    checkpoint next to it, and how to resume from that (``--resume PATH``), instead of a
    ``PytorchStreamReader`` traceback.

A checkpoint of another backbone
    ``load_from`` and resume load through mmengine non-strictly (so that a new head may differ);
    the backbone part is checked by the core's rules afterwards (``check_backbone_weights``):
    a deeper, wider or longer ConvNeXt is an error naming both architectures, not a log line.

The pixel normalisation the weights were trained with
    After the weights are in (``init_cfg`` Pretrained, ``load_from``, resume), the backbone's
    weights family (told by the checkpoint, or the backbone's ``weights_family`` argument) is
    compared with the ``data_preprocessor``'s mean/std (0..255; RGB when it converts the BGR
    images mmcv loads, ``bgr_to_rgb=True``, else BGR): CLIP weights fed ImageNet-normalised pixels
    train and evaluate worse and nothing else would say so. A mismatch is a ``ValueError`` naming
    both values and the keys to change, unless the config sets ``strict_normalisation=False``
    (then a warning). This is the Runner's job because the backbone never sees the data
    preprocessor; ``check_normalisation`` does it for any built model.

Other things the mixin adds, each small:
    * checkpoints are written to a temporary name and renamed, so a run killed while saving
      never leaves a truncated ``iter_N.pth`` behind;
    * ``launcher='pytorch'`` on a machine without CUDA (torchrun on CPU) initialises ``gloo`` and
      wraps the model in DDP without ``device_ids`` (mmengine assumes one GPU per rank), and turns
      SyncBN, which has no CPU kernel, into BN with a warning;
    * after the model is built, the ``in_channels`` of what follows the backbone (a neck, or a
      segmentor's heads; read from the model config where a module does not keep them) are
      checked against the backbone's channels, so a mismatch stops before training with a
      message saying what to set (``check_in_channels``).

Each adapter mixes it into mmengine's ``Runner`` and registers the result in its framework's
``RUNNERS`` (``ConvNeXtSegRunner``, ``ConvNeXtDetRunner``); configs that set ``runner_type``
get the same behaviour from the framework's own ``tools/train.py``.
"""
from __future__ import annotations

import contextlib
import os
import os.path as osp
import pickle
import re
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from mmengine.dist import master_only
from mmengine.logging import HistoryBuffer, print_log
from mmengine.model import is_model_wrapper, revert_sync_batchnorm

from convnext_backbone import CheckpointError, ConvNextBackbone
from convnext_backbone.convert import backbone_mismatch
from convnext_backbone.families import get_family, normalisation_mismatch

__all__ = [
    "ConvNeXtRunnerMixin",
    "MMENGINE_CHECKPOINT_GLOBALS",
    "STRICT_NORMALISATION_KEY",
    "check_backbone_weights",
    "check_in_channels",
    "check_normalisation",
    "checkpoint_problem",
    "last_intact_checkpoint",
    "mmengine_checkpoint_globals",
]


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


# ---- truncated / corrupt checkpoints ------------------------------------------------------------
_TRAINING_CHECKPOINT = re.compile(r"^(iter|epoch)_(\d+)\.pth$")


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why the training checkpoint at ``path`` cannot be resumed from, or ``None`` if it is intact.

    torch writes checkpoints as zip archives; one cut short has no central directory, and a
    damaged one fails a member's CRC. Reads the whole file once, unpickles nothing.
    """
    path = os.fspath(path)
    if not osp.isfile(path):
        return "the file does not exist"
    size = osp.getsize(path)
    if size == 0:
        return "the file is empty"
    if not zipfile.is_zipfile(path):
        return f"the file is truncated or corrupt ({size} bytes, no complete zip archive as torch.save writes)"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as e:
        return f"the file is corrupt ({type(e).__name__}: {e})"
    if bad is not None:
        return f"the file is corrupt (CRC mismatch in {bad})"
    return None


def last_intact_checkpoint(directory: str | os.PathLike, exclude: str | os.PathLike | None = None) -> str | None:
    """The newest ``iter_N.pth`` / ``epoch_N.pth`` in ``directory`` that passes ``checkpoint_problem``."""
    directory = os.fspath(directory)
    if not osp.isdir(directory):
        return None
    skip = osp.realpath(exclude) if exclude is not None else None
    found = []
    for name in os.listdir(directory):
        m = _TRAINING_CHECKPOINT.match(name)
        if m:
            found.append((int(m.group(2)), m.group(1) == "iter", name))
    for _, _, name in sorted(found, reverse=True):
        path = osp.join(directory, name)
        if osp.realpath(path) != skip and checkpoint_problem(path) is None:
            return path
    return None


def resume_problem(filename: str) -> str | None:
    """One-line message if ``filename`` is a local training checkpoint that cannot be resumed from."""
    if "://" in str(filename):
        return None  # remote storage: left to mmengine's file backends
    problem = checkpoint_problem(filename)
    if problem is None:
        return None
    good = last_intact_checkpoint(osp.dirname(osp.abspath(filename)), exclude=filename)
    where = osp.dirname(osp.abspath(filename))
    advice = (f"the last intact checkpoint is {good}; resume from it with --resume {good}" if good else
              f"there is no intact checkpoint in {where}; start again without --resume")
    return f"cannot resume from {filename}: {problem}; {advice}"


# ---- the model after the backbone must take the backbone's channels -------------------------------
def _head_list(model: torch.nn.Module, model_cfg: Any) -> list[tuple[str, torch.nn.Module, Any]]:
    """``(name, head, its config or None)`` for a segmentor's decode and auxiliary heads."""
    aux_cfg = _part(model_cfg, "auxiliary_head")
    heads = [("decode_head", getattr(model, "decode_head", None), _part(model_cfg, "decode_head"))]
    aux = getattr(model, "auxiliary_head", None)
    if isinstance(aux, torch.nn.ModuleList):
        cfgs = list(aux_cfg) if isinstance(aux_cfg, (list, tuple)) and len(aux_cfg) == len(aux) else [None] * len(aux)
        heads += [(f"auxiliary_head[{i}]", h, c) for i, (h, c) in enumerate(zip(aux, cfgs))]
    else:
        heads.append(("auxiliary_head", aux, aux_cfg))
    return [(n, h, c) for n, h, c in heads if h is not None]


def _part(model_cfg: Any, key: str) -> Any:
    return model_cfg.get(key) if isinstance(model_cfg, dict) else None


def _declared_in_channels(module: torch.nn.Module, cfg: Any) -> Any:
    """What a neck or head was told to take: its ``in_channels`` attribute, or (for modules that do
    not keep it, e.g. MMDetection's ``ChannelMapper`` or the Mask2Former heads) its config's."""
    found = getattr(module, "in_channels", None)
    if found is None and isinstance(cfg, dict):
        found = cfg.get("in_channels")
    return found


def _describe(backbone: torch.nn.Module) -> str:
    arch = getattr(backbone, "arch", None)
    return f"{type(backbone).__name__} (arch={arch!r}, outputs {list(backbone.out_features)})"


def check_in_channels(model: torch.nn.Module, model_cfg: dict | None = None) -> None:
    """``ValueError`` if what follows the ConvNeXt backbone expects other channels than it gives.

    A neck (MMDetection's FPN or ChannelMapper, MMSegmentation's necks) must take the backbone's
    channels, in order; without a neck, a segmentor's decode/auxiliary heads must take the
    channels at their ``in_index`` (all the maps, in order, for a head without one: Mask2Former).
    ``model_cfg`` (the config the model was built from) supplies ``in_channels`` for the modules
    that do not keep it as an attribute. Models with another backbone are not checked.
    """
    backbone = getattr(model, "backbone", None)
    channels = getattr(backbone, "channels", None)
    if channels is None or not hasattr(backbone, "out_features"):
        return
    channels = list(channels)
    neck = getattr(model, "neck", None)
    neck_cfg = _part(model_cfg, "neck")
    if isinstance(neck, torch.nn.Sequential) and len(neck):
        neck, neck_cfg = neck[0], (neck_cfg[0] if isinstance(neck_cfg, (list, tuple)) and neck_cfg else None)
    if neck is not None:
        want = _declared_in_channels(neck, neck_cfg)
        if isinstance(want, (list, tuple)) and list(want) != channels:
            raise ValueError(
                f"neck.in_channels={list(want)} does not match the backbone: {_describe(backbone)} gives "
                f"{len(channels)} maps with channels {channels}, so set model.neck.in_channels={channels}"
            )
        return  # heads read the neck's outputs
    for name, head, head_cfg in _head_list(model, model_cfg):
        in_channels = _declared_in_channels(head, head_cfg)
        if in_channels is None:
            continue
        in_index = getattr(head, "in_index", None)
        if in_index is None:  # a head that takes every map (Mask2Former)
            if isinstance(in_channels, (list, tuple)) and list(in_channels) != channels:
                raise ValueError(
                    f"{name}.in_channels={list(in_channels)} does not match the backbone: {_describe(backbone)} gives "
                    f"{len(channels)} maps with channels {channels}, so set model.{name}.in_channels={channels}"
                )
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
            fix = have if isinstance(in_channels, (list, tuple)) else have[0]
            raise ValueError(
                f"{name}.in_channels={in_channels} does not match the backbone: {_describe(backbone)} gives "
                f"channels {channels}, so {name} with in_index={in_index} needs in_channels={fix}"
            )


STRICT_KEY = "load_from_strict_backbone"


def check_backbone_weights(model: torch.nn.Module, checkpoint: dict, source: str, strict: bool = True) -> None:
    """The backbone part of a ``load_from`` / resume checkpoint must be this model's ConvNeXt.

    mmengine loads those non-strictly (a new dataset's head may differ, and that stays a warning),
    so a deeper backbone's extra blocks, or a mis-shaped one, went by as "unexpected key" lines in
    the log. Here the ``backbone.`` tensors go through the core's rules: anything missing,
    mis-shaped or unused is a ``CheckpointError`` naming both architectures, unless the config
    sets ``load_from_strict_backbone=False`` (then a warning). Models with another backbone: no check.
    """
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, ConvNextBackbone):
        return
    state = checkpoint.get("state_dict", checkpoint)
    state = {re.sub(r"^module\.", "", k): v for k, v in state.items()}
    mismatch = backbone_mismatch(backbone, state, "backbone.")
    if mismatch is None:
        return
    message = f"{source}: the checkpoint's backbone does not fit this model's ConvNeXt backbone: {mismatch}"
    if strict:
        raise CheckpointError(f"{message}\nTo load what fits (the rest is logged), set {STRICT_KEY}=False in the config "
                              f"(or --cfg-options {STRICT_KEY}=False).")
    print_log(f"{message}\n(non-strict load: the rest is loaded)", logger="current", level=30)


# ---- the pixel normalisation the backbone's weights expect ---------------------------------------
STRICT_NORMALISATION_KEY = "strict_normalisation"


def _preprocessor_normalisation(pre: torch.nn.Module) -> tuple[list[float], list[float], bool] | None:
    """``(mean, std, channels converted)`` an mmengine / MMDetection / MMSegmentation data preprocessor
    applies (no mean/std: 0 and 1); None for a preprocessor of another kind or on the meta device."""
    converted = getattr(pre, "_channel_conversion", getattr(pre, "channel_conversion", None))
    if converted is None:
        return None
    if not getattr(pre, "_enable_normalize", False):
        return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], bool(converted)
    mean, std = getattr(pre, "mean", None), getattr(pre, "std", None)
    if not isinstance(mean, torch.Tensor) or not isinstance(std, torch.Tensor) or mean.is_meta:
        return None
    return mean.flatten().tolist(), std.flatten().tolist(), bool(converted)


def check_normalisation(model: torch.nn.Module, strict: bool = True, data_preprocessor: torch.nn.Module | None = None) -> str | None:
    """The ``data_preprocessor``'s mean/std against the pixel normalisation of the ConvNeXt backbone's
    weights family: None when they agree or nothing is known (no family, another backbone); else
    the message, raised as ``ValueError`` when ``strict``, logged as a warning otherwise.

    ``data_preprocessor``: the one to check instead of ``model.data_preprocessor`` (a model built on
    the meta device has no values to read). Images are taken to arrive as mmcv loads them, BGR: the
    mean/std are RGB when the preprocessor converts the channels (``bgr_to_rgb``), BGR otherwise.
    """
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, ConvNextBackbone) or not backbone.config.weights_family:
        return None
    found = _preprocessor_normalisation(data_preprocessor if data_preprocessor is not None else getattr(model, "data_preprocessor", None))
    if found is None:
        return None
    mean, std, converted = found
    report = getattr(backbone, "load_report", None)
    how = report.weights_family_source if report is not None and report.weights_family else "set by the backbone's weights_family"
    problem = normalisation_mismatch(
        get_family(backbone.config.weights_family), mean, std, scale=255.0, bgr=not converted,
        where=f"model.data_preprocessor (bgr_to_rgb={converted})", keys="model.data_preprocessor mean / std")
    if problem is None:
        return None
    message = (f"{problem} (the weights' family was {how}). If the weights are not of that family, set "
               f"model.backbone.weights_family to theirs. To train with this normalisation anyway (then a warning), set "
               f"{STRICT_NORMALISATION_KEY}=False in the config (or --cfg-options {STRICT_NORMALISATION_KEY}=False).")
    if strict:
        raise ValueError(message)
    print_log(message, logger="current", level=30)
    return message


# ---- the Runner mixin ------------------------------------------------------------------------------
class ConvNeXtRunnerMixin:
    """``class ConvNeXtXRunner(ConvNeXtRunnerMixin, mmengine.runner.Runner)`` (see the module doc)."""

    def load_checkpoint(self, filename: str, *args: Any, **kwargs: Any) -> dict:
        with mmengine_checkpoint_globals():
            checkpoint = super().load_checkpoint(filename, *args, **kwargs)  # type: ignore[misc]
        model = self.model.module if is_model_wrapper(self.model) else self.model  # type: ignore[attr-defined]
        check_backbone_weights(model, checkpoint, filename, strict=self.cfg.get(STRICT_KEY, True))  # type: ignore[attr-defined]
        return checkpoint

    def load_or_resume(self) -> None:
        """mmengine's, then the weights' normalisation against the data preprocessor's (``train`` has
        applied ``init_cfg`` just before; ``val`` / ``test`` load here)."""
        super().load_or_resume()  # type: ignore[misc]
        model = self.model.module if is_model_wrapper(self.model) else self.model  # type: ignore[attr-defined]
        check_normalisation(model, strict=self.cfg.get(STRICT_NORMALISATION_KEY, True))  # type: ignore[attr-defined]

    def resume(self, filename: str, *args: Any, **kwargs: Any) -> None:
        problem = resume_problem(filename)
        if problem is not None:
            raise CheckpointError(problem)
        with mmengine_checkpoint_globals():
            return super().resume(filename, *args, **kwargs)  # type: ignore[misc]

    @master_only
    def save_checkpoint(self, out_dir: str, filename: str, *args: Any, **kwargs: Any) -> None:
        if "://" in str(out_dir) or kwargs.get("backend_args") or kwargs.get("file_client_args"):
            return super().save_checkpoint(out_dir, filename, *args, **kwargs)  # type: ignore[misc]
        tmp = f".{filename}.partial"
        super().save_checkpoint(out_dir, tmp, *args, **kwargs)  # type: ignore[misc]
        os.replace(osp.join(out_dir, tmp), osp.join(out_dir, filename))

    def setup_env(self, env_cfg: dict) -> None:
        if self.distributed and not torch_dist.is_initialized() and not torch.cuda.is_available():  # type: ignore[attr-defined]
            if self.launcher != "pytorch":  # type: ignore[attr-defined]
                raise ValueError(f"launcher={self.launcher!r} needs CUDA; on CPU use torchrun with --launcher pytorch")  # type: ignore[attr-defined]
            torch_dist.init_process_group(backend="gloo")  # env:// from torchrun
        super().setup_env(env_cfg)  # type: ignore[misc]

    def build_model(self, model: Any) -> torch.nn.Module:
        built = super().build_model(model)  # type: ignore[misc]
        check_in_channels(built, model if isinstance(model, dict) else None)
        return built

    def wrap_model(self, model_wrapper_cfg: dict | None, model: torch.nn.Module) -> torch.nn.Module:
        if not (self.distributed and not torch.cuda.is_available()):  # type: ignore[attr-defined]
            return super().wrap_model(model_wrapper_cfg, model)  # type: ignore[misc]
        if any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules()):
            print_log("SyncBN has no CPU implementation: using per-process BatchNorm for this CPU run",
                      logger="current", level=30)
        reverted = revert_sync_batchnorm(model)
        cfg = dict(type="MMDistributedDataParallel", broadcast_buffers=False,
                   find_unused_parameters=self.cfg.get("find_unused_parameters", False))  # type: ignore[attr-defined]
        cfg.update(model_wrapper_cfg or {})
        cfg["device_ids"] = None  # CPU module: DDP must not be given a device
        return super().wrap_model(cfg, reverted)  # type: ignore[misc]
