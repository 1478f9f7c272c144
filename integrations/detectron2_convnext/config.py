"""Detectron2 config keys for the ConvNeXt backbone, its optimizer and its training augmentation.

``add_convnext_config(cfg)`` must run before ``cfg.merge_from_file``: yacs rejects keys it has
not seen, and these are the keys the YAML files in ``configs/detectron2/`` set.
"""
from __future__ import annotations

from detectron2.config import CfgNode as CN

__all__ = ["add_convnext_config"]


def add_convnext_config(cfg: CN) -> CN:
    """Add ``MODEL.CONVNEXT.*``, ``SOLVER.{OPTIMIZER,BETAS,LAYER_DECAY}`` and ``INPUT.DETR_AUG``.

    Idempotent, so a script and a library may both call it.
    """
    if "CONVNEXT" in cfg.MODEL:
        return cfg
    c = cfg.MODEL.CONVNEXT = CN()
    # A preset name ("convnext_tiny", "convnextv2_atto", ...) or, with NAME = "", an explicit
    # architecture from VERSION ("v1" | "v2"), DEPTHS and DIMS.
    c.NAME = "convnextv2_atto"
    c.VERSION = "v2"
    c.DEPTHS = []
    c.DIMS = []
    c.OUT_FEATURES = ["stage1", "stage2", "stage3", "stage4"]
    c.DROP_PATH_RATE = 0.0
    c.LAYER_SCALE_INIT_VALUE = 1e-6  # V1 only; V2 has GRN instead of layer scale and ignores it
    c.FROZEN_STAGES = -1  # -1: train all; 0: freeze the stem; k: stem and stages 1..k
    c.NORM_OUTPUTS = True  # one LayerNorm per returned map, as the official det/seg backbones
    c.GRADIENT_CHECKPOINTING = False
    # MODEL.WEIGHTS must fit the backbone completely (missing or mis-shaped tensors are an error).
    # False: load the backbone tensors that fit and list the rest as warnings.
    c.STRICT_LOAD = True
    # Where MODEL.WEIGHTS come from (convnext_backbone.families: fb_in1k, dinov3_lvd1689m, clip_laion2b, ...):
    # it decides the pixel normalisation the weights expect. "" = told by the checkpoint (layout, head, name).
    c.WEIGHTS_FAMILY = ""
    # MODEL.PIXEL_MEAN / PIXEL_STD (in INPUT.FORMAT's channel order) must be the weights' family's when
    # weights load: otherwise an error naming both. False: a warning, and training goes on.
    c.STRICT_NORMALISATION = True

    cfg.SOLVER.OPTIMIZER = "ADAMW"  # "ADAMW" (the ConvNeXt recipe) or "SGD" (Detectron2's default)
    cfg.SOLVER.BETAS = (0.9, 0.999)
    cfg.SOLVER.LAYER_DECAY = CN()
    cfg.SOLVER.LAYER_DECAY.RATE = 1.0  # 1.0 = no decay; official det recipes use 0.7-0.95
    cfg.SOLVER.LAYER_DECAY.TYPE = "layer_wise"  # or "stage_wise"
    cfg.SOLVER.LAYER_DECAY.NUM_LAYERS = 0  # 0 = derived from the depths (6 for T, 12 for S/B, as official)

    # Cascade (ClassSpecificCascadeROIHeads): weight of each stage's box losses.
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.STAGE_LOSS_WEIGHTS = (1.0, 1.0, 1.0)

    # Flip, then either multi-scale resize (INPUT.MIN_SIZE_TRAIN) or DETR's resize-crop-resize.
    cfg.INPUT.DETR_AUG = CN()
    cfg.INPUT.DETR_AUG.ENABLED = False
    cfg.INPUT.DETR_AUG.RESIZE_SIZES = (400, 500, 600)
    cfg.INPUT.DETR_AUG.CROP_SIZE = (384, 600)  # absolute_range: side lengths in [384, 600]
    return cfg
