"""A ``DetectionCheckpointer`` whose ``MODEL.WEIGHTS`` also takes any ConvNeXt checkpoint.

- A Detectron2 checkpoint of this model (``model_final.pth``, ``last_checkpoint``): loaded as
  Detectron2 does (resume restores optimizer, scheduler and iteration), but the backbone
  must fit exactly: a missing, mis-shaped or unused backbone tensor (a deeper model's extra
  blocks) is an error, not Detectron2's warning; other keys (FPN, heads) stay Detectron2's.
- Anything else (official classification / FCMAE / det-seg, HF, timm, mmpretrain, Detectron2
  ``.pkl`` backbones, ``save_pretrained`` directories): converted by the core and loaded into
  the backbone only; the log lists what was loaded and what was left at init.
- Weights of another architecture stop with a ``CheckpointError`` that says so.
- ``strict=False`` (``MODEL.CONVNEXT.STRICT_LOAD False`` in a config) loads the backbone tensors
  that fit and logs the rest as warnings; a strict error says how to ask for that in
  Detectron2 (``strict_hint``), not with the core's ``strict=False`` advice, which a
  Detectron2 user cannot follow.
- After weights load, their family's input normalisation (``convnext_backbone.families``: told by
  the checkpoint, or ``MODEL.CONVNEXT.WEIGHTS_FAMILY``) is compared with the model's
  ``pixel_mean`` / ``pixel_std`` (0..255, in ``input_format``'s channel order): CLIP weights fed
  ImageNet-normalised pixels train and evaluate worse, silently. A mismatch is an error naming
  both values and the keys to change (``pixel_keys``); ``strict_normalisation=False``
  (``MODEL.CONVNEXT.STRICT_NORMALISATION False``) makes it a warning.
Checkpoints are written atomically, so a run killed while saving never leaves a torn file.
"""
from __future__ import annotations

import os
import re

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

from convnext_backbone import CheckpointError
from convnext_backbone.convert import backbone_mismatch, convert_state_dict, load_converted, read_checkpoint
from convnext_backbone.families import get_family, normalisation_mismatch
from convnext_backbone.fileio import atomic_write
from convnext_backbone.messages import shortened

from .backbone import find_convnext

__all__ = ["ConvNextCheckpointer", "NORMALISATION_HINT", "PIXEL_KEYS", "STRICT_HINT"]

STRICT_HINT = (
    "To load only the backbone tensors that fit (the rest are then listed as warnings), set "
    "MODEL.CONVNEXT.STRICT_LOAD False (in the config, or on the convnext-d2-train command line)."
)
PIXEL_KEYS = "MODEL.PIXEL_MEAN / MODEL.PIXEL_STD"  # where a yacs config sets the model's normalisation
NORMALISATION_HINT = (
    "If the weights are not of that family, set MODEL.CONVNEXT.WEIGHTS_FAMILY to theirs. To train with this "
    "normalisation anyway (then a warning), set MODEL.CONVNEXT.STRICT_NORMALISATION False."
)
# Formats the core reads itself (fvcore would torch.load them or fail on a directory).
_CORE_SUFFIXES = (".safetensors", ".bin", ".pkl")


class ConvNextCheckpointer(DetectionCheckpointer):
    """Drop-in for ``DetectionCheckpointer`` on models with a ConvNeXt backbone.

    ``strict`` (default True): the backbone must load completely. ``strict_hint``: the sentence a
    strict error ends with, saying how to turn strictness off where this checkpointer is used
    (default: the ``MODEL.CONVNEXT.STRICT_LOAD`` config key).

    ``strict_normalisation`` (default True): after a load, the model's pixel mean/std must be the
    weights' family's (``ValueError`` otherwise; False: a warning). ``pixel_keys`` and
    ``normalisation_hint``: where the caller's config sets those and how to set the family or
    opt out (default: the yacs keys).
    """

    def __init__(self, model, save_dir="", *, strict: bool = True, strict_hint: str | None = None,
                 strict_normalisation: bool = True, pixel_keys: str = PIXEL_KEYS,
                 normalisation_hint: str | None = None, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.strict = bool(strict)
        self.strict_hint = STRICT_HINT if strict_hint is None else strict_hint
        self.strict_normalisation = bool(strict_normalisation)
        self.pixel_keys = pixel_keys
        self.normalisation_hint = NORMALISATION_HINT if normalisation_hint is None else normalisation_hint

    def _error(self, message: str, hint: bool = True) -> CheckpointError:
        return CheckpointError(f"{message}\n{self.strict_hint}" if hint and self.strict_hint else message)

    # -- reading ---------------------------------------------------------------------------------
    def load(self, path, checkpointables=None):
        self.load_report = None  # set when a ConvNeXt checkpoint (not a Detectron2 one) is converted
        if path and os.path.isdir(path):  # a save_pretrained / HF directory: backbone weights
            self.logger.info(f"[ConvNextCheckpointer] Loading backbone weights from directory {path} ...")
            state, config = read_checkpoint(path)
            self._load_backbone(state, path, (config or {}).get("weights_family"))
            extra = {}
        else:
            extra = super().load(path, checkpointables)
        if path:  # weights were loaded: do they suit the pixels the model will feed them?
            self.check_normalisation()
        return extra

    def check_normalisation(self) -> str | None:
        """The model's ``pixel_mean`` / ``pixel_std`` against its weights' family: None when they agree
        (or the family is not known); else the message, raised as ``ValueError`` when
        ``strict_normalisation``, logged as a warning otherwise."""
        _, trunk = find_convnext(self.model)
        if not trunk.config.weights_family:
            return None
        holder = next((m for m in self.model.modules()
                       if isinstance(getattr(m, "pixel_mean", None), torch.Tensor) and isinstance(getattr(m, "pixel_std", None), torch.Tensor)), None)
        if holder is None or holder.pixel_mean.is_meta:
            return None
        fmt = getattr(holder, "input_format", "BGR")  # Detectron2's default INPUT.FORMAT
        report = getattr(self, "load_report", None)
        how = report.weights_family_source if report is not None and report.weights_family else "set in the config"
        problem = normalisation_mismatch(
            get_family(trunk.config.weights_family), holder.pixel_mean.flatten().tolist(), holder.pixel_std.flatten().tolist(),
            scale=255.0, bgr=fmt == "BGR", where=f"the model ({self.pixel_keys}, input format {fmt})", keys=self.pixel_keys)
        if problem is None:
            return None
        message = f"{problem} (the weights' family was {how}). {self.normalisation_hint}"
        if self.strict_normalisation:
            raise ValueError(message)
        self.logger.warning(f"[ConvNextCheckpointer] {message}")
        return message

    def _load_file(self, filename: str):
        if filename.endswith(_CORE_SUFFIXES):
            # the core's reader: safetensors, and .pkl through an unpickler that only allows numpy
            state, _ = read_checkpoint(filename)
            return {"model": state, "__author__": "convnext_backbone", "__source__": filename}
        try:
            loaded = super()._load_file(filename)
        except Exception:  # fvcore's torch.load: a truncated or non-checkpoint file
            read_checkpoint(filename)  # the core's reader says what is wrong with it, in one line (CheckpointError)
            raise
        if not all(isinstance(v, (torch.Tensor, np.ndarray)) for v in loaded["model"].values()):
            # a wrapped state dict ({'state_dict': ...}, {'module': ...}): the core unwraps it
            loaded = {"model": read_checkpoint(filename)[0]}
        loaded["__source__"] = filename
        return loaded

    def _load_model(self, checkpoint):
        source = checkpoint.pop("__source__", "checkpoint")
        state = checkpoint["model"]
        prefix, _ = find_convnext(self.model)
        own = self.model.state_dict()
        if self._is_detectron2_checkpoint(state, prefix, own):
            self._check_backbone(state, prefix, source)  # before loading: a refused file leaves the model as it was
            return super()._load_model(checkpoint)
        checkpoint.pop("matching_heuristics", None)
        self._load_backbone(state, source)
        return None

    @staticmethod
    def _is_detectron2_checkpoint(state, prefix: str, own) -> bool:
        """Saved from a Detectron2 model with this backbone: backbone and head keys both ours."""
        keys = [k for k in state if k in own]
        return any(k.startswith(prefix + "stages.") for k in keys) and any(not k.startswith(prefix) for k in keys)

    def _check_backbone(self, state, prefix: str, source: str) -> None:
        """The backbone part of a Detectron2 checkpoint must be this architecture, by the core's rules:
        a missing, mis-shaped or unused backbone tensor (a deeper or extra stage) is an error naming both
        architectures; output norms the model does not return are fine. Keys outside the backbone (FPN,
        heads) are Detectron2's business, with its own warnings."""
        _, trunk = find_convnext(self.model)
        mismatch = backbone_mismatch(trunk, state, prefix)
        if mismatch is None:
            return
        message = f"{source}: Detectron2 checkpoint does not fit this model's ConvNeXt backbone: {mismatch}"
        if self.strict:
            raise self._error(message)
        self.logger.warning(f"{message}\n(non-strict load: the rest is loaded)")

    def _load_backbone(self, state, source: str, family: str | None = None) -> None:
        """``family``: what the checkpoint's own config says (a ``save_pretrained`` / ``convert`` directory)."""
        prefix, trunk = find_convnext(self.model)
        state = {k: v if isinstance(v, torch.Tensor) else torch.as_tensor(v) for k, v in state.items()}
        try:
            conv = convert_state_dict(state)
        except CheckpointError as e:
            raise self._error(
                f"MODEL.WEIGHTS {source} is neither a Detectron2 checkpoint of this model nor a ConvNeXt checkpoint "
                f"(weights of another architecture?): {e}", hint=False,
            ) from e
        report = load_converted(trunk, conv, strict=self.strict, source=str(source), hint=self.strict_hint, family=family)
        if not report.ok:  # strict=False: what did not fit stays at init, listed here
            errs = report.errors()
            self.logger.warning(
                f"[ConvNextCheckpointer] {source}: {len(errs)} backbone tensors did not fit and stay at init "
                f"(non-strict load):\n  " + "\n  ".join(shortened(errs))
            )
        norms = sorted({prefix + k.split(".")[0] for k in report.initialized})
        self.logger.info(
            f"[ConvNextCheckpointer] {source}: {conv.source_format} ConvNeXt checkpoint -> {prefix.rstrip('.') or 'model'} "
            f"({report.summary()}).\n  loaded: {len(report.loaded)} backbone tensors"
            f"\n  left at init: {', '.join(norms) or 'no backbone tensor'} (output norms absent from the checkpoint) and "
            f"{', '.join(self._outside_groups(prefix)) or 'nothing else'}"
            + (f"\n  not used: {len(report.dropped)} tensors ({', '.join(sorted({w for _, w in report.dropped}))})" if report.dropped else "")
        )
        self.load_report = report

    def _outside_groups(self, prefix: str) -> list[str]:
        """Module groups outside the trunk (FPN, RPN, ROI heads), for the load log."""
        parent = prefix.split(".")[0]
        groups = set()
        for k in self.model.state_dict():
            if k.startswith(prefix):
                continue
            parts = k.split(".")
            groups.add(f"{parts[0]}.{re.sub(r'[0-9]+$', '', parts[1])}" if parts[0] == parent and len(parts) > 2 else parts[0])
        return sorted(groups)

    # -- writing ---------------------------------------------------------------------------------
    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        atomic_write(path, lambda tmp: torch.save(data, tmp))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)
