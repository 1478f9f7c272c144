"""Loading a converted state dict into a model: every tensor used, dropped for a stated reason,
or an error naming both architectures; the report says which."""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import OUTPUT_NORM_KEY, ConvNextConfig
from ..families import FAMILIES, detect_family, get_family
from ..messages import shortened
from .formats import Conversion, convert_state_dict, infer_config
from .reading import CheckpointError, read_checkpoint

__all__ = ["STRICT_HINT", "LoadReport", "backbone_mismatch", "describe_mismatch", "is_classifier", "load_checkpoint", "load_converted", "match_converted"]

@dataclass
class LoadReport:
    source_format: str
    loaded: list[str] = field(default_factory=list)
    initialized: list[str] = field(default_factory=list)  # output norms absent from the file: fresh init
    dropped: list[tuple[str, str]] = field(default_factory=list)  # recognised but unused here, with why
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # key, file, model
    weights_family: str | None = None  # where the weights come from (families.FAMILIES), if known
    weights_family_source: str = ""  # how that was told: the layout, the name, the config

    @property
    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """``(mean, std)`` the weights were trained with (0..1 pixels, RGB), if the family is known."""
        family = FAMILIES.get(self.weights_family or "")
        return (family.mean, family.std) if family else None

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def errors(self, prefix: str = "") -> list[str]:
        """Shape mismatches first: they say most about what went wrong (another architecture).
        ``prefix``: where the model sits in a larger one (``backbone.bottom_up.``), put before each key."""
        lines = [f"shape mismatch for {prefix}{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in self.mismatched]
        lines += [f"missing from checkpoint: {prefix}{k}" for k in self.missing]
        lines += [f"unexpected key in checkpoint: {prefix}{k}" for k in self.unexpected]
        return lines

    def summary(self) -> str:
        parts = [f"format={self.source_format}", f"loaded={len(self.loaded)}"]
        if self.initialized:
            parts.append(f"initialized (not in checkpoint)={', '.join(sorted({k.split('.')[0] for k in self.initialized}))}")
        if self.dropped:
            groups = sorted({k.split('.')[0] for k, _ in self.dropped})
            parts.append(f"dropped={len(self.dropped)} ({', '.join(groups[:6])}{'...' if len(groups) > 6 else ''})")
        if self.weights_family:
            parts.append(f"weights={self.weights_family} ({FAMILIES[self.weights_family].license})")
        if not self.ok:
            parts.append(f"errors={len(self.errors())}")
        return "; ".join(parts)


def is_classifier(model: nn.Module) -> bool:
    """A classification model (final norm + head) rather than a backbone."""
    return hasattr(model, "head")


def _classify_extra(key: str, model: nn.Module) -> str | None:
    """Why a recognised key is legitimately unused by this model, or None if it is an error."""
    if key.startswith(("head.", "norm.")) and not is_classifier(model):
        return "classification head / final norm (not used by a backbone)"
    if OUTPUT_NORM_KEY.match(key) and is_classifier(model):
        return "det/seg output norm (not used by a classifier)"
    if OUTPUT_NORM_KEY.match(key):
        return "output norm of a stage not in out_features (or norm_outputs=False)"
    return None


STRICT_HINT = "Pass strict=False to load what matches and get the report instead."


def load_checkpoint(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
    strict: bool = True,
    hint: str | None = STRICT_HINT,
) -> LoadReport:
    """Load any supported format into ``model``; strict raises on any real mismatch (``hint`` ends the message)."""
    state = read_checkpoint(checkpoint)[0] if isinstance(checkpoint, (str, os.PathLike)) else dict(checkpoint)
    conv = convert_state_dict(state)
    source = str(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "state dict"
    return load_converted(model, conv, strict=strict, source=source, hint=hint)


def _architectures(conv: Conversion, model: nn.Module) -> str:
    """``checkpoint is convnextv2_atto, model is convnextv2_small. `` when they differ, else ``''``."""
    config = getattr(model, "config", None)
    try:
        theirs = infer_config(conv.state_dict).architecture
    except (CheckpointError, ValueError, KeyError, IndexError):
        return ""
    ours = config.architecture if isinstance(config, ConvNextConfig) else type(model).__name__
    return f"checkpoint is {theirs}, model is {ours}. " if theirs != ours else ""


def match_converted(model: nn.Module, conv: Conversion) -> tuple[LoadReport, dict[str, torch.Tensor]]:
    """What loading ``conv`` into ``model`` would do, without doing it: the report, and the tensors that fit.

    Every tensor of the checkpoint is used, or dropped for a stated reason (a classifier head in
    a backbone, an output norm not returned), or an error: a key the model lacks (a deeper stage,
    an extra stage, layer scale into a model without it) is ``unexpected``, never ignored.
    """
    report = LoadReport(conv.source_format, dropped=list(conv.dropped), unexpected=list(conv.unknown))
    own = model.state_dict()
    to_load: dict[str, torch.Tensor] = {}
    for k, v in conv.state_dict.items():
        if k not in own:
            why = _classify_extra(k, model)
            if why:
                report.dropped.append((k, why))
            else:
                report.unexpected.append(k)
            continue
        if tuple(v.shape) != tuple(own[k].shape):
            report.mismatched.append((k, tuple(v.shape), tuple(own[k].shape)))
            continue
        to_load[k] = v
    for k in own:
        if k in to_load:
            continue
        if OUTPUT_NORM_KEY.match(k):
            report.initialized.append(k)
        elif not any(k == m for m, _, _ in report.mismatched):
            report.missing.append(k)
    return report, to_load


def describe_mismatch(report: LoadReport, conv: Conversion, model: nn.Module, prefix: str = "") -> str:
    """``checkpoint is <arch>, model is <arch>. N problem(s):`` and the first 20 (keys under ``prefix``)."""
    errs = report.errors(prefix)
    shown = "\n  ".join(shortened(errs))
    return f"{_architectures(conv, model)}{len(errs)} problem(s):\n  {shown}"


def backbone_mismatch(model: nn.Module, state: Mapping[str, object], prefix: str) -> str | None:
    """What does not fit when the ``prefix`` part of a whole detector's or segmentor's checkpoint (its
    backbone, in our names) is loaded into ``model`` by the core's rules: a missing, mis-shaped or
    unused tensor, naming both architectures; None when it fits. The adapters' loaders decide
    whether that is an error."""
    part = {k[len(prefix):]: torch.as_tensor(v) for k, v in state.items() if k.startswith(prefix)}
    conv = convert_state_dict(part, fmt="official")
    report, _ = match_converted(model, conv)
    return None if report.ok else describe_mismatch(report, conv, model, prefix)


def load_converted(model: nn.Module, conv: Conversion, strict: bool = True, source: str = "checkpoint",
                   hint: str | None = STRICT_HINT, name: str | None = None, family: str | None = None) -> LoadReport:
    """Load a converted state dict; with ``strict`` any real mismatch raises ``CheckpointError``
    naming both architectures when they differ, then the keys (shape mismatches first), then ``hint``
    (how to load anyway, in the terms of the caller: a keyword, a flag, a config key; None: no hint).

    The weights' family (``families``) goes into the report and, unless the model's config already
    names one (the user's word wins), into ``model.config.weights_family``. ``name``: the name the
    user gave (a hub id, a file name), whose tokens tell the family; default ``source``. ``family``:
    what the checkpoint's own config says (a ``save_pretrained`` / ``convert`` directory's
    config.json); the model's configured family wins over it, and it over detection."""
    report, to_load = match_converted(model, conv)
    if strict and not report.ok:
        raise CheckpointError(
            f"{source} ({conv.source_format} layout) does not match {type(model).__name__}: {describe_mismatch(report, conv, model)}"
            + (f"\n{hint}" if hint else "")
        )
    own = model.state_dict()
    with torch.no_grad():
        for k, v in to_load.items():
            own[k].copy_(v.to(own[k].dtype))
    report.loaded = sorted(to_load)
    _record_family(model, conv, report, name or source, family)
    return report


def _record_family(model: nn.Module, conv: Conversion, report: LoadReport, name: str, given: str | None) -> None:
    config = getattr(model, "config", None)
    configured = config.weights_family if isinstance(config, ConvNextConfig) else None
    if configured or given:
        report.weights_family = get_family(configured or given).name
        report.weights_family_source = "set in the config" if configured else "from the checkpoint's config.json"
    else:
        found, how = detect_family(conv.layout, any(".grn." in k for k in conv.state_dict), conv.head_classes, str(name))
        report.weights_family, report.weights_family_source = (found.name if found else None), how
    if report.weights_family and isinstance(config, ConvNextConfig):
        config.weights_family = report.weights_family
