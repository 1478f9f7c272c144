"""AdamW with ConvNeXt layer-wise (or stage-wise) lr decay, as the official detection code.

The layer ids are those of the official ``get_num_layer_layer_wise`` /
``get_num_layer_stage_wise`` (ConvNeXt ``object_detection/mmcv_custom``): with ``n`` =
NUM_LAYERS, the stem is layer 0, stage 1 is 1, stage 2 (and its downsampling) 2, stage 3's
downsampling 3 and its blocks ``3 + block // 3``, stage 4 (and its downsampling) ``n``, and
everything else (output norms, FPN, heads) ``n + 1``. A parameter of layer ``i`` gets
``lr = base_lr * rate ** (n + 1 - i)``. Stage-wise: downsampling layers 0, stage ``s`` is
``s``, the rest ``n + 1``. No weight decay where the core's rule says so
(``convnext_backbone.optim.no_weight_decay``: 1-D parameters such as norms, biases and layer
scale, and GRN's gamma/beta), for the whole detector. Groups are merged with Detectron2's
``reduce_param_groups``.
"""
from __future__ import annotations

import math
from functools import partial

import torch
from detectron2.solver import build_optimizer as d2_build_optimizer
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups

from convnext_backbone.optim import no_weight_decay

from .backbone import find_convnext

__all__ = ["convnext_layer_id", "convnext_lr_factor", "convnext_param_groups", "build_convnext_optimizer", "default_num_layers"]

LAYER_WISE, STAGE_WISE = "layer_wise", "stage_wise"


def default_num_layers(depths) -> int:
    """The official NUM_LAYERS: 3 + ceil(depth of stage 3 / 3) -> 6 for depth 9 (T), 12 for 27 (S, B)."""
    return 3 + math.ceil(depths[2] / 3) if len(depths) == 4 else len(depths) + 1


def convnext_layer_id(name: str, num_layers: int, decay_type: str = LAYER_WISE) -> int:
    """Layer id of a parameter named relative to the ConvNeXt trunk (``stages.2.5.dwconv.weight``)."""
    parts = name.split(".")
    if decay_type == STAGE_WISE:
        if parts[0] == "downsample_layers":
            return 0
        if parts[0] == "stages":
            return int(parts[1]) + 1
        return num_layers + 1
    if decay_type != LAYER_WISE:
        raise ValueError(f"SOLVER.LAYER_DECAY.TYPE must be {LAYER_WISE!r} or {STAGE_WISE!r}, got {decay_type!r}")
    if parts[0] == "downsample_layers":
        return {0: 0, 1: 2, 2: 3}.get(int(parts[1]), num_layers)
    if parts[0] == "stages":
        stage, block = int(parts[1]), int(parts[2])
        return {0: 1, 1: 2, 2: 3 + block // 3}.get(stage, num_layers)
    return num_layers + 1


def convnext_lr_factor(full_name: str, *, prefix: str, rate: float, num_layers: int, decay_type: str = LAYER_WISE) -> float:
    """lr multiplier of a model parameter; ``prefix`` is where the trunk sits (``backbone.bottom_up.``)."""
    inner = full_name[len(prefix):] if full_name.startswith(prefix) else "<not backbone>"
    # The official code numbers layer_wise ids 0..n+1 and stage_wise ids against n+2 layers.
    top = num_layers + 1
    return rate ** (top - convnext_layer_id(inner, num_layers, decay_type))


def convnext_param_groups(
    model: torch.nn.Module,
    base_lr: float,
    weight_decay: float,
    layer_decay_rate: float = 1.0,
    num_layers: int = 0,
    decay_type: str = LAYER_WISE,
) -> list[dict]:
    """Parameter groups for any optimizer; usable as a LazyConfig ``params=L(convnext_param_groups)(...)``."""
    prefix, trunk = find_convnext(model)
    num_layers = num_layers or default_num_layers(trunk.config.depths)
    factor = partial(convnext_lr_factor, prefix=prefix, rate=float(layer_decay_rate), num_layers=num_layers, decay_type=decay_type)
    factor(prefix + "stages.0.0.dwconv.weight")  # validates decay_type before any work
    groups, seen = [], set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:  # frozen, or shared and already placed
            continue
        seen.add(id(param))
        groups.append({"params": [param], "lr": base_lr * factor(name),
                       "weight_decay": 0.0 if no_weight_decay(name, param) else weight_decay})
    return reduce_param_groups(groups)


def build_convnext_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER`` ADAMW: the ConvNeXt recipe; SGD: Detectron2's own builder."""
    kind = str(cfg.SOLVER.OPTIMIZER).upper()
    if kind == "SGD":
        return d2_build_optimizer(cfg, model)
    if kind != "ADAMW":
        raise ValueError(f"SOLVER.OPTIMIZER must be 'ADAMW' or 'SGD', got {cfg.SOLVER.OPTIMIZER!r}")
    ld = cfg.SOLVER.LAYER_DECAY
    params = convnext_param_groups(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        layer_decay_rate=ld.RATE,
        num_layers=ld.NUM_LAYERS,
        decay_type=ld.TYPE,
    )
    return maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(
        params, lr=cfg.SOLVER.BASE_LR, betas=tuple(cfg.SOLVER.BETAS), weight_decay=cfg.SOLVER.WEIGHT_DECAY
    )
