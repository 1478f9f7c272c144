"""The ConvNeXt backbone for OpenMMLab frameworks: one class, registered by each adapter.

``OpenMMLabConvNeXt`` holds everything MMSegmentation and MMDetection have in common; the
adapters only subclass it under their own name and register it in their own ``MODELS``
(``mmseg_convnext.MMSegConvNeXt``, ``mmdet_convnext.MMDetConvNeXt``). Config usage::

    model = dict(backbone=dict(
        type='MMDetConvNeXt',  # or 'MMSegConvNeXt'
        arch='convnextv2_tiny', out_indices=(0, 1, 2, 3), drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint='/path/to/any/convnext/checkpoint')))

Why the class looks the way it does:

- It *is* the core ``ConvNextBackbone`` (subclass, no second model definition), so parameter
  names are ``backbone.downsample_layers.*`` / ``backbone.stages.*`` inside a detector or
  segmentor and the class name contains ``ConvNeXt``: MMSegmentation's and MMDetection's own
  ``LearningRateDecayOptimizerConstructor`` key on exactly these two things and work unchanged.
- Registry names (``MMSegConvNeXt``, ``MMDetConvNeXt``) cannot clash with mmpretrain's
  ``mmpretrain.ConvNeXt``, which the frameworks' own ConvNeXt configs use.
- ``arch`` goes through the core resolver (``convnext_backbone.config.config_from_arch``): a
  preset name, a size name with ``version``, or ``dict(depths, dims)``.
- ``out_indices`` follow the OpenMMLab / mmpretrain / official det-seg convention, ``0..3`` =
  stage1..stage4 (strides 4, 8, 16, 32). The core uses Hugging Face indices where ``0`` is the
  stem, so index ``i`` here is HF index ``i + 1``. HF names are accepted too, via
  ``out_features=['stage1', ...]`` (which may include ``'stem'``).
- ``frozen_stages`` uses the OpenMMLab ResNet convention, the same as the core: ``-1`` trains
  everything, ``0`` freezes the stem, ``k`` freezes the stem and stages 1..k.
- ``init_cfg=dict(type='Pretrained', checkpoint=...)`` goes through the core converter, so any
  format it reads loads (official classification / det-seg / FCMAE, HF, timm, mmpretrain,
  Detectron2 ``.pkl``, ``save_pretrained`` directories, MMSeg / MMDet training checkpoints),
  always with ``torch.load(weights_only=True)``, strictly by default, and the load report is
  logged.
"""
from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.model.weight_init import initialize

from convnext_backbone import CheckpointError, ConvNextBackbone, load_checkpoint
from convnext_backbone.arch import config_from_arch, resolve_arch
from convnext_backbone.config import ConvNextConfig, resolve_out_features_out_indices, stage_names_for
from convnext_backbone.convert import read_checkpoint
from convnext_backbone.hub import resolve_pretrained
from convnext_backbone.messages import in_callers_terms

__all__ = ["OpenMMLabConvNeXt", "backbone_config", "out_features_from_indices"]

ALL_STAGES = (0, 1, 2, 3)
_ARGUMENT_NAMES = {"num_channels": "in_channels", "gradient_checkpointing": "with_cp"}  # core field -> argument here


def out_features_from_indices(out_indices: Sequence[int] | int, num_stages: int) -> list[str]:
    """OpenMMLab ``out_indices`` (0 = stage1) -> HF stage names; the core checks order and duplicates."""
    allowed = (f"ints in 0..{num_stages - 1} (0 = stage1, stride 4 ... {num_stages - 1} = stage{num_stages}, "
               f"stride {4 * 2 ** (num_stages - 1)}; negatives count from the end)")
    if isinstance(out_indices, int) and not isinstance(out_indices, bool):
        out_indices = [out_indices]
    raw = list(out_indices) if isinstance(out_indices, (list, tuple)) else []
    if not raw or not all(isinstance(i, int) and not isinstance(i, bool) for i in raw):
        raise ValueError(f"out_indices must be a non-empty list of {allowed}, got {out_indices!r}")
    bad = [i for i in raw if not -num_stages <= i < num_stages]
    if bad:
        raise ValueError(f"invalid out_indices {bad} in {raw}: ConvNeXt has {num_stages} stages, so out_indices must be {allowed}")
    names = stage_names_for(num_stages)
    hf = [i + 1 if i >= 0 else i for i in raw]  # HF index 0 is the stem; negatives count from the end in both
    try:
        return resolve_out_features_out_indices(None, hf, names)[0]
    except ValueError as e:
        raise ValueError(f"out_indices {raw} (= {[names[i] for i in hf]}): {e}") from None


def backbone_config(arch: str | dict = "convnext_tiny", version: str | None = None,
                    out_indices: Sequence[int] | None = ALL_STAGES, out_features: Sequence[str] | None = None,
                    drop_path_rate: float = 0.0, layer_scale_init_value: float | None = None, frozen_stages: int = -1,
                    norm_outputs: bool = True, with_cp: bool = False, channels_last: bool = True,
                    in_channels: int = 3) -> ConvNextConfig:
    """The core config for the OpenMMLab backbone arguments; ``ValueError`` naming the bad one."""
    num_stages = len(resolve_arch(arch, version)[1]["depths"])  # what out_indices may say
    if out_features is not None:
        if out_indices is not None and not (isinstance(out_indices, (list, tuple)) and tuple(out_indices) == ALL_STAGES):
            names = out_features_from_indices(out_indices, num_stages)
            if list(out_features) != names:
                raise ValueError(
                    f"out_features {list(out_features)} and out_indices {out_indices} (= {names}) disagree; give one of them"
                )
        features = list(out_features)
    else:
        features = out_features_from_indices(ALL_STAGES if out_indices is None else out_indices, num_stages)
    return config_from_arch(
        arch, version, layer_scale_init_value=layer_scale_init_value,
        num_channels=in_channels, out_features=features, drop_path_rate=drop_path_rate, frozen_stages=frozen_stages,
        norm_outputs=norm_outputs, gradient_checkpointing=with_cp, channels_last=channels_last,
        layer_norm_eps=1e-6,  # the official det/seg backbones
    )


class OpenMMLabConvNeXt(ConvNextBackbone, BaseModule):
    """ConvNeXt V1/V2 backbone for OpenMMLab; ``forward`` returns a tuple of NCHW maps.

    Not registered itself: ``MMSegConvNeXt`` / ``MMDetConvNeXt`` are this class under the name
    each framework's registry knows.

    Args:
        arch: preset name (``'convnext_tiny'``, ``'convnextv2_atto'``), size name with
            ``version``, or ``dict(depths=[...], dims=[...])``.
        version: ``'v1'`` or ``'v2'``; only needed with a bare size name that exists in both
            (tiny/base/large), which otherwise means V1.
        out_indices: OpenMMLab convention, 0..3 = stage1..stage4. Default: all four.
        out_features: HF stage names instead of ``out_indices`` (may include ``'stem'``).
        drop_path_rate: stochastic depth, linear over all blocks.
        layer_scale_init_value: V1 layer scale init (the official det/seg configs use 1.0; the
            checkpoint overwrites it). ``None`` means the core default. Must be 0/None for V2.
        frozen_stages: -1 none, 0 stem, k stem + stages 1..k (frozen parts stay in eval mode).
        norm_outputs: a LayerNorm per returned map (``norm0..3``, official det/seg names).
        with_cp: gradient checkpointing per block (saves memory, costs a second forward).
        channels_last: run NHWC internally (same outputs; faster ConvNeXt blocks).
        in_channels: input image channels.
        pretrained: deprecated spelling of ``init_cfg=dict(type='Pretrained', checkpoint=...)``.
        init_cfg: ``dict(type='Pretrained', checkpoint=path_or_url, prefix=None, strict=True)``
            and/or mmengine initializer configs.
    """

    def __init__(
        self,
        arch: str | dict = "convnext_tiny",
        version: str | None = None,
        out_indices: Sequence[int] | None = ALL_STAGES,
        out_features: Sequence[str] | None = None,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float | None = None,
        frozen_stages: int = -1,
        norm_outputs: bool = True,
        with_cp: bool = False,
        channels_last: bool = True,
        in_channels: int = 3,
        pretrained: str | None = None,
        init_cfg: dict | list | None = None,
    ):
        name = type(self).__name__
        try:
            config = backbone_config(arch, version, out_indices, out_features, drop_path_rate, layer_scale_init_value,
                                     frozen_stages, norm_outputs, with_cp, channels_last, in_channels)
        except ValueError as e:  # say which part of a detector / segmentor config is wrong, in its own words
            raise ValueError(f"{name} backbone: {in_callers_terms(str(e), _ARGUMENT_NAMES)}") from None
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError(f"{name} backbone: give either init_cfg or the deprecated pretrained, not both")
            print_log(f"{name}: 'pretrained' is deprecated, use init_cfg=dict(type='Pretrained', checkpoint=...)",
                      logger="current", level=30)
            init_cfg = dict(type="Pretrained", checkpoint=pretrained)
        super().__init__(config)  # core model (its own init) + BaseModule(init_cfg=None)
        self.arch = arch
        self.init_cfg = copy.deepcopy(init_cfg)

    # -- OpenMMLab interface -------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        """A tuple of contiguous NCHW maps in ``out_indices`` order, what necks and heads index into.

        Contiguous, not channels-last: mmcv's compiled ops (``RoIAlign`` in every MMDetection
        ROI extractor) read raw NCHW memory and silently return garbage for a channels-last
        tensor, and the convolutions of a neck keep the memory format they are given.
        """
        return tuple(m.contiguous() for m in self.forward_features(x).feature_maps)

    def init_weights(self) -> None:
        """Apply ``init_cfg``: mmengine initializers first, then ``Pretrained`` through the core loader."""
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg] if self.init_cfg else []
        pretrained = [c for c in cfgs if c.get("type") == "Pretrained"]
        others = [c for c in cfgs if c.get("type") != "Pretrained"]
        if others:
            initialize(self, others)
        if len(pretrained) > 1:
            raise ValueError(f"init_cfg has {len(pretrained)} Pretrained entries; give one")
        if pretrained:
            self.load_pretrained(**{k: v for k, v in pretrained[0].items() if k != "type"})
        self._is_init = True

    def load_pretrained(self, checkpoint: str, prefix: str | None = None, strict: bool = True,
                        map_location: Any = None) -> Any:
        """Load any format the core converts, log the report; ``prefix`` keeps only keys under it (mmengine semantics)."""
        name = type(self).__name__
        if not checkpoint:
            raise ValueError("init_cfg Pretrained needs checkpoint=<path, directory, URL or HF hub id>")
        path = _local_checkpoint(str(checkpoint), name)
        source: Any = path
        if prefix:
            state = read_checkpoint(path)[0]
            source = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if not source:
                raise CheckpointError(f"{checkpoint}: no keys start with prefix {prefix!r} (first keys: {list(state)[:5]})")
        report = load_checkpoint(self, source, strict=strict, hint=(
            "To load what fits (the rest is logged), set strict=False in init_cfg=dict(type='Pretrained', ...)."))
        print_log(f"{name}: loaded {checkpoint}: {report.summary()}", logger="current")
        if report.initialized:
            print_log(f"{name}: not in the checkpoint, freshly initialised: {report.initialized}", logger="current")
        for line in report.errors():
            print_log(f"{name}: {line}", logger="current", level=30)
        self._freeze_stages()
        return report


def _local_checkpoint(checkpoint: str, who: str) -> str | Path:
    """URLs are fetched once into torch's hub cache (as mmengine does); paths and HF hub ids via the core."""
    if not checkpoint.startswith(("http://", "https://", "file://")):
        return resolve_pretrained(checkpoint)  # local file/dir, or a Hugging Face Hub id
    from urllib.parse import urlparse

    from torch.hub import download_url_to_file, get_dir

    target = Path(get_dir()) / "checkpoints" / (os.path.basename(urlparse(checkpoint).path) or "checkpoint.pth")
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        print_log(f"{who}: downloading {checkpoint} to {target}", logger="current")
        download_url_to_file(checkpoint, str(target), progress=True)  # writes a temp file, then renames
    return target
