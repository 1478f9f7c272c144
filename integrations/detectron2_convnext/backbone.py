"""The core ConvNeXt as a Detectron2 ``Backbone``, and its ``BACKBONE_REGISTRY`` builders.

``D2ConvNeXt`` *is* a ``convnext_backbone.ConvNextBackbone`` (subclass, not a wrapper), so its
parameters keep the official names (``backbone.bottom_up.stages.*`` under FPN): official and
Detectron2 checkpoints convert with no renaming and the layer-decay rule keys on them.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

from convnext_backbone import ConvNextBackbone, ConvNextConfig
from convnext_backbone.arch import config_from_arch
from convnext_backbone.messages import in_callers_terms

__all__ = ["D2ConvNeXt", "build_convnext_backbone", "build_convnext_fpn_backbone", "convnext_config_from_cfg", "find_convnext"]


class D2ConvNeXt(ConvNextBackbone, Backbone):
    """ConvNeXt V1/V2 returning ``{stage name: map}`` with ``output_shape()`` from the core.

    ``D2ConvNeXt(config)`` or, for LazyConfig, ``L(D2ConvNeXt)(name="convnextv2_tiny",
    out_features=["stage1", ..., "stage4"], drop_path_rate=0.2)``.
    """

    def __init__(self, config: ConvNextConfig | None = None, *, name: str | None = None, **config_overrides: Any):
        if (config is None) == (name is None):
            raise ValueError("D2ConvNeXt needs exactly one of `config` (a ConvNextConfig) or `name` (a preset such as 'convnextv2_atto')")
        # LazyConfig hands lists over as omegaconf ListConfig; the core takes plain lists
        config_overrides = {k: list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v for k, v in config_overrides.items()}
        if config is None:
            config = config_from_arch(name, **config_overrides)  # the core's one name resolver
        elif config_overrides:
            config = config.copy(**config_overrides)
        super().__init__(config)

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Detectron2's format, ``{stage name: map}``; the core contract stays ``forward_features``."""
        return self.forward_dict(pixel_values)

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {n: ShapeSpec(channels=c, stride=s) for n, c, s in zip(self.out_features, self.channels, self.strides)}

    @property
    def size_divisibility(self) -> int:
        return 32  # the total stride: every stage halves, so inputs padded to 32 keep maps aligned


def find_convnext(model: torch.nn.Module) -> tuple[str, ConvNextBackbone]:
    """``(prefix, module)`` of the one ConvNeXt in a detector, e.g. ``("backbone.bottom_up.", ...)``."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, ConvNextBackbone)]
    if len(found) != 1:
        raise ValueError(f"expected exactly one ConvNeXt backbone in the model, found {len(found)}: {[n for n, _ in found]}")
    name, module = found[0]
    return (name + "." if name else ""), module


# core field -> MODEL.CONVNEXT key, so that an error names the key the YAML sets (out_features keeps
# the HF contract's name, which the stage-selection messages of every adapter share)
_CFG_KEYS = {
    "depths": "DEPTHS", "dims": "DIMS", "hidden_sizes": "DIMS", "version": "VERSION",
    "drop_path_rate": "DROP_PATH_RATE", "frozen_stages": "FROZEN_STAGES", "norm_outputs": "NORM_OUTPUTS",
    "gradient_checkpointing": "GRADIENT_CHECKPOINTING", "layer_scale_init_value": "LAYER_SCALE_INIT_VALUE",
}


def convnext_config_from_cfg(cfg, input_shape: ShapeSpec | None = None) -> ConvNextConfig:
    """``MODEL.CONVNEXT.*`` -> core config; a bad value raises ValueError naming the key."""
    c = cfg.MODEL.CONVNEXT
    # the values as given: the core checks each (a cast here would turn FROZEN_STAGES 1.5 into 1)
    kw: dict[str, Any] = dict(
        out_features=c.OUT_FEATURES,
        drop_path_rate=c.DROP_PATH_RATE,
        frozen_stages=c.FROZEN_STAGES,
        norm_outputs=c.NORM_OUTPUTS,
        gradient_checkpointing=c.GRADIENT_CHECKPOINTING,
    )
    if input_shape is not None and input_shape.channels is not None:
        kw["num_channels"] = input_shape.channels
    try:
        if c.NAME:
            if c.DEPTHS or c.DIMS:
                raise ValueError(f"set either NAME ({c.NAME!r}) or DEPTHS/DIMS, not both")
            arch, version = c.NAME, None
        else:
            if not c.DEPTHS or not c.DIMS:
                raise ValueError("with NAME empty, DEPTHS and DIMS must both be set (e.g. [3, 3, 9, 3] and [96, 192, 384, 768])")
            arch, version = dict(depths=list(c.DEPTHS), dims=list(c.DIMS)), c.VERSION
        # LAYER_SCALE_INIT_VALUE is documented as V1-only (its default is V1's): V2 ignores it.
        return config_from_arch(arch, version, layer_scale_init_value=c.LAYER_SCALE_INIT_VALUE,
                                layer_scale_v1_only=True, **kw)
    except ValueError as e:
        raise ValueError(f"invalid MODEL.CONVNEXT config: {in_callers_terms(str(e), _CFG_KEYS)}") from e


@BACKBONE_REGISTRY.register()
def build_convnext_backbone(cfg, input_shape: ShapeSpec) -> D2ConvNeXt:
    """``MODEL.BACKBONE.NAME: build_convnext_backbone``: the stage maps, no FPN."""
    return D2ConvNeXt(convnext_config_from_cfg(cfg, input_shape))


@BACKBONE_REGISTRY.register()
def build_convnext_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """``MODEL.BACKBONE.NAME: build_convnext_fpn_backbone``: ConvNeXt + FPN (P2-P6, P6 by max pool)."""
    bottom_up = build_convnext_backbone(cfg, input_shape)
    produced = bottom_up.output_shape()
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    missing = [f for f in in_features if f not in produced]
    if missing:
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES {in_features} asks for {missing}, which the ConvNeXt backbone does not produce; "
            f"it produces MODEL.CONVNEXT.OUT_FEATURES = {list(produced)} (choose from {list(bottom_up.stage_names)})"
        )
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
