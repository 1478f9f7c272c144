"""Weights for transformers models built on ``ConvNextBackboneModel``.

- ``from_hf_pretrained(path)``: a transformers checkpoint of a model whose backbone is HF's
  ``ConvNextBackbone`` / ``ConvNextV2Backbone`` / ``DINOv3ConvNextBackbone`` (e.g.
  ``openmmlab/upernet-convnext-tiny``) becomes the
  same model with our backbone: the config's ``backbone_config`` is translated field by field, the
  backbone's tensors are renamed by the core converter (``convnext_backbone.convert``, the single
  rule set), every other tensor loads through transformers' own ``from_pretrained``. Same weights,
  same outputs.
- ``convert_hf_checkpoint(src, dst)``: the same, saved with ``save_pretrained`` so that plain
  ``UperNetForSemanticSegmentation.from_pretrained(dst)`` loads it afterwards.
- ``load_backbone_weights(model, checkpoint)``: any checkpoint format the core reads (official,
  FCMAE, HF, timm, mmpretrain, Detectron2 ``.pkl``, MMSeg/our own) into the backbone part of a
  model (or into a bare ``ConvNextBackboneModel``), strictly, with the core's load report.
- ``check_image_processor(model, processor)``: the processor's ``image_mean`` / ``image_std`` against
  the pixel normalisation of the backbone's weights family (``convnext_backbone.families``; told by
  the checkpoint, or ``weights_family`` in the backbone config). A mismatch raises ``ValueError``
  naming both (``strict=False``: a warning). ``load_backbone_weights(..., image_processor=...)``
  runs it after loading; ``from_hf_pretrained`` runs it, as a warning, against the checkpoint's own
  ``preprocessor_config.json``: that is how the saved model was trained, so it is reported, not refused.
The family the weights were told to be goes into the backbone config (``weights_family``), so
``save_pretrained`` keeps it.

Command line: ``python -m transformers_convnext.checkpoint SRC DST`` runs ``convert_hf_checkpoint``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convnext_backbone import CheckpointError, LoadReport
from convnext_backbone.convert import convert_state_dict, load_converted, read_checkpoint
from convnext_backbone.families import get_family, normalisation_mismatch
from convnext_backbone.fileio import check_not_overwriting
from convnext_backbone.hub import resolve_pretrained
from convnext_backbone.messages import shortened

from .configuration import ConvNextBackboneConfig
from .modeling import ConvNextBackboneModel

__all__ = [
    "NormalisationWarning", "check_image_processor", "convert_hf_checkpoint", "find_backbone", "from_hf_pretrained",
    "load_backbone_weights",
]


class NormalisationWarning(UserWarning):
    """An image processor normalises pixels otherwise than the backbone's weights were trained with."""


def find_backbone(model: nn.Module) -> tuple[str, ConvNextBackboneModel]:
    """``(module path, backbone)`` of the one ``ConvNextBackboneModel`` in ``model`` (``""`` if it is the model)."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, ConvNextBackboneModel)]
    if len(found) != 1:
        raise ValueError(
            f"{type(model).__name__} contains {len(found)} ConvNextBackboneModel modules"
            f"{' at ' + str([n for n, _ in found]) if found else ''}; expected exactly one "
            "(build it with backbone_config=ConvNextBackboneConfig...)"
        )
    return found[0]


def load_backbone_weights(
    model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, torch.Tensor], strict: bool = True,
    image_processor: Any = None, strict_normalisation: bool = True,
) -> LoadReport:
    """Initialise the backbone part of ``model`` from any checkpoint format the core converter reads.

    ``checkpoint``: a file, a directory, a Hub id or a state dict; whole-model checkpoints (a
    detector, a segmentor, transformers' UperNet) contribute their backbone tensors. Strict by
    default: a missing, unexpected or mis-shaped backbone tensor raises ``CheckpointError``.
    The weights' family (from the checkpoint, unless the backbone config names one) goes into the
    backbone config. ``image_processor``: the processor that will feed the model; its mean/std are
    checked against that family's (``check_image_processor``; ``strict_normalisation=False``: a warning).
    """
    _, backbone = find_backbone(model)
    name = "state dict"
    if isinstance(checkpoint, (str, os.PathLike)):
        name = os.fspath(checkpoint)
        checkpoint = resolve_pretrained(checkpoint)
    report = _load_core(backbone, checkpoint, strict, name)
    if image_processor is not None:
        check_image_processor(model, image_processor, strict=strict_normalisation)
    return report


def _load_core(backbone: ConvNextBackboneModel, checkpoint: Path | Mapping[str, torch.Tensor], strict: bool, name: str) -> LoadReport:
    """The core's load into ``backbone``; ``name`` (what the user called the weights) tells their family
    best. A directory's ``config.json`` family counts when the backbone config names none. The family
    ends up in the backbone's transformers config too (``save_pretrained`` writes it)."""
    core = backbone.core_model
    file_config = None
    if isinstance(checkpoint, Path):
        state, file_config = read_checkpoint(checkpoint)
    else:
        state = dict(checkpoint)
    source = str(checkpoint) if isinstance(checkpoint, Path) else "state dict"
    file_config = file_config or {}
    # a backbone directory says it at the top; a whole model's (UperNet ...) in its backbone_config
    said = file_config.get("weights_family") or (file_config.get("backbone_config") or {}).get("weights_family")
    report = load_converted(core, convert_state_dict(state), strict=strict, source=source, name=name, family=said)
    if report.weights_family and backbone.config.weights_family != report.weights_family:
        backbone.config.weights_family = report.weights_family
    return report


def _processor_values(processor: Any) -> tuple[list[float], list[float], float] | None:
    """``(mean, std, scale of the pixels they apply to)`` of a transformers image processor (object or
    ``preprocessor_config.json`` dict); None when it does not normalise."""
    def get(key: str, default: Any = None) -> Any:
        return processor.get(key, default) if isinstance(processor, Mapping) else getattr(processor, key, default)

    mean, std = get("image_mean"), get("image_std")
    if not get("do_normalize", True) or mean is None or std is None:
        return None
    def as_list(v: Any) -> list[float]:
        return [float(v)] * 3 if isinstance(v, (int, float)) else [float(x) for x in v]

    # transformers rescales (1/255 by default) before it normalises: the mean/std apply to that scale
    scale = 255.0 * float(get("rescale_factor", 1 / 255)) if get("do_rescale", True) else 255.0
    return as_list(mean), as_list(std), scale


def check_image_processor(model: nn.Module, processor: Any, strict: bool = True) -> str | None:
    """The processor's normalisation against the backbone's weights family: None when they agree (or
    either is unknown); else the message, raised as ``ValueError`` when ``strict``, a
    ``NormalisationWarning`` otherwise. ``model``: a model with one ``ConvNextBackboneModel`` (or it);
    ``processor``: an image processor or its ``preprocessor_config.json`` as a dict."""
    _, backbone = find_backbone(model)
    family = backbone.core_model.config.weights_family or backbone.config.weights_family
    values = _processor_values(processor) if family else None
    if values is None:
        return None
    mean, std, scale = values
    what = "preprocessor_config.json" if isinstance(processor, Mapping) else type(processor).__name__
    problem = normalisation_mismatch(get_family(family), mean, std, scale=round(scale, 6),
                                     where=f"the image processor ({what})", keys="its image_mean / image_std")
    if problem is None:
        return None
    message = (f"{problem}. If the weights are not of that family, set weights_family in the backbone config to theirs"
               + ("; to go on with this processor, pass strict_normalisation=False." if strict else "."))
    if strict:
        raise ValueError(message)
    warnings.warn(message, NormalisationWarning, stacklevel=2)
    return message


def _transformers_class(config: Any, model_class: type | None) -> type:
    if model_class is not None:
        return model_class
    import transformers

    names = list(getattr(config, "architectures", None) or [])
    cls = getattr(transformers, names[0], None) if names else None
    if cls is None:
        raise ValueError(
            f"cannot tell which transformers model class the checkpoint is (config.architectures={names}); pass model_class="
        )
    return cls


def from_hf_pretrained(
    pretrained: str | os.PathLike,
    model_class: type | None = None,
    strict: bool = True,
    **backbone_kwargs: Any,
) -> nn.Module:
    """Load a transformers model checkpoint whose backbone is a ConvNeXt, with our backbone inside.

    ``pretrained``: a ``save_pretrained`` directory (or a Hub id) of e.g. ``UperNetForSemanticSegmentation``
    with transformers' ``ConvNextBackbone`` / ``ConvNextV2Backbone`` (the layout of
    ``openmmlab/upernet-convnext-*``) or ``DINOv3ConvNextBackbone`` (no output norms: the translated
    config has ``norm_outputs=False``), or one that already uses ``convnext_backbone``.
    ``model_class``: defaults to ``config.architectures[0]``. ``backbone_kwargs`` override fields of
    the translated backbone config (e.g. ``drop_path_rate=0.3``, ``frozen_stages=0``).

    Everything but the backbone loads through transformers' own ``from_pretrained`` (its key
    conversions, dtype, shards); the backbone's tensors go through the core converter. Strict:
    any tensor of either part that does not fit raises ``CheckpointError``. Returns the model in
    eval mode; ``model.load_report`` is the core's report. When the weights' family is known and the
    checkpoint has a ``preprocessor_config.json``, a processor normalising otherwise gets a
    ``NormalisationWarning`` (``check_image_processor``).
    """
    local = resolve_pretrained(pretrained)
    directory = local if local.is_dir() else local.parent
    config = _config_with_our_backbone(directory, backbone_kwargs)
    cls = _transformers_class(config, model_class)
    model, info = _load_quietly(cls, directory, config)
    prefix, backbone = find_backbone(model)
    lead = f"{prefix}." if prefix else ""
    report = _load_backbone_tensors(backbone, local, lead, strict, os.fspath(pretrained))
    foreign = _mismatches_outside_backbone(info, lead)
    if strict and foreign:
        raise CheckpointError(
            f"{local}: outside the backbone, the checkpoint does not match {cls.__name__}:\n  "
            + "\n  ".join(shortened(foreign, 20))
        )
    model.eval()
    model.load_report = report
    processor = directory / "preprocessor_config.json"
    if report.weights_family and processor.is_file():
        check_image_processor(model, json.loads(processor.read_text()), strict=False)
    return model


def _config_with_our_backbone(directory: Path, backbone_kwargs: Mapping[str, Any]) -> Any:
    """The checkpoint's transformers config with its ``backbone_config`` translated to ours
    (``backbone_kwargs`` applied); a ValueError for a config without a backbone."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(directory))
    source_backbone = getattr(config, "backbone_config", None)
    if source_backbone is None:
        raise ValueError(
            f"{directory}: {type(config).__name__} has no backbone_config, nothing to convert; for a bare backbone "
            "checkpoint use load_backbone_weights(ConvNextBackboneModel(config), path)"
        )
    if isinstance(source_backbone, ConvNextBackboneConfig):
        config.backbone_config = source_backbone.with_overrides(**backbone_kwargs) if backbone_kwargs else source_backbone
    else:
        config.backbone_config = ConvNextBackboneConfig.from_hf_config(source_backbone, **backbone_kwargs)
    return config


def _load_quietly(cls: type, directory: Path, config: Any) -> tuple[nn.Module, dict[str, Any]]:
    """transformers' own ``from_pretrained`` and its loading info, its log silenced: its report would
    list the backbone tensors (loaded next, by the core converter) as missing/unexpected."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return cls.from_pretrained(str(directory), config=config, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)


def _load_backbone_tensors(backbone: ConvNextBackboneModel, local: Path, lead: str, strict: bool, name: str) -> LoadReport:
    """The checkpoint's backbone tensors (found under ``lead`` or the stem's prefix) through the core converter."""
    state = _read_state(local)
    disk_lead = _backbone_prefix_on_disk(state, lead, local)
    backbone_state = {k[len(disk_lead):]: v for k, v in state.items() if k.startswith(disk_lead)}
    try:
        return _load_core(backbone, backbone_state, strict, name)
    except CheckpointError as e:
        raise CheckpointError(f"{local}: the backbone tensors (under {disk_lead!r}): {e}") from None


def _mismatches_outside_backbone(info: Mapping[str, Any], lead: str) -> list[str]:
    """What transformers left unloaded, in the model's names, that is not the backbone (must be nothing)."""
    foreign = [f"missing from checkpoint: {k}" for k in sorted(info["missing_keys"]) if not k.startswith(lead)]
    foreign += [f"unexpected key in checkpoint: {k}" for k in sorted(info["unexpected_keys"]) if not k.startswith(lead)]
    foreign += [f"shape mismatch: {m}" for m in info.get("mismatched_keys", ())]
    return foreign


def _read_state(local: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint, by their names on disk (sharded safetensors included)."""
    directory = local if local.is_dir() else local.parent
    index = directory / "model.safetensors.index.json"
    if local.is_dir() and index.is_file() and not (directory / "model.safetensors").is_file():
        from safetensors.torch import load_file

        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(str(directory / shard)).items()}
    return read_checkpoint(local)[0]


def _backbone_prefix_on_disk(state: Mapping[str, torch.Tensor], lead: str, where: Any) -> str:
    """Where the backbone's tensors are in the file: the model's own path, or (for models whose
    transformers save renames that path, e.g. DETR's ``backbone.conv_encoder``) the prefix of HF
    ConvNeXt's stem weight."""
    if any(k.startswith(lead) for k in state):
        return lead
    stems = ("embeddings.patch_embeddings.weight", "model.stages.0.downsample_layers.0.weight")  # HF ConvNeXt, DINOv3
    found = sorted({k[: -len(stem)] for k in state for stem in stems if k.endswith(stem)})
    if len(found) == 1:
        return found[0]
    raise CheckpointError(
        f"{where}: no backbone tensors under {lead!r} (where the model keeps its backbone) and "
        f"{'several' if found else 'no'} HF ConvNeXt stem weight(s) ({found or stems[0]!r}) to find them by"
    )


def _convert(src: str | os.PathLike, dst: str | os.PathLike, model_class: type | None = None, **backbone_kwargs: Any) -> nn.Module:
    """The converted model, written to ``dst`` (refused before anything is read if ``dst`` is ``src``
    or the directory it is in: the output would replace the input's files)."""
    check_not_overwriting([src], dst, directory=True)
    model = from_hf_pretrained(src, model_class=model_class, **backbone_kwargs)
    check_not_overwriting([resolve_pretrained(src)], dst, directory=True)  # a hub id is a local snapshot only now
    model.save_pretrained(str(dst))
    return model


def convert_hf_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, model_class: type | None = None, **backbone_kwargs: Any
) -> Path:
    """``from_hf_pretrained(src)`` then ``save_pretrained(dst)``; ``dst`` loads with the plain transformers class.
    ``dst`` must not be ``src`` or the directory ``src`` is in (``ValueError``)."""
    _convert(src, dst, model_class, **backbone_kwargs)
    return Path(dst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m transformers_convnext.checkpoint",
        description="Convert a transformers checkpoint with HF's ConvNeXt backbone (e.g. openmmlab/upernet-convnext-tiny) "
        "to the same model with the convnext_backbone backbone.",
    )
    parser.add_argument("src", help="save_pretrained directory or Hub id")
    parser.add_argument("dst", help="output directory (not SRC, nor the directory SRC is in)")
    args = parser.parse_args(argv)
    try:
        model = _convert(args.src, args.dst)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"convert failed: {e}", file=sys.stderr)
        return 2
    print(f"{type(model).__name__}: backbone {model.load_report.summary()}; saved to {args.dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
