"""Detectron2 adapter for the ConvNeXt V1/V2 backbone.

Importing this package registers ``build_convnext_backbone`` and ``build_convnext_fpn_backbone``
in ``BACKBONE_REGISTRY`` and ``ClassSpecificCascadeROIHeads`` in ``ROI_HEADS_REGISTRY``.
Call ``add_convnext_config(cfg)`` before merging a config from ``configs/detectron2/``.
"""
from .backbone import D2ConvNeXt, build_convnext_backbone, build_convnext_fpn_backbone, convnext_config_from_cfg
from .checkpoint import ConvNextCheckpointer
from .config import add_convnext_config
from .data import RandomChoice, build_train_augmentation, build_train_mapper
from .optim import build_convnext_optimizer, convnext_param_groups
from .roi_heads import ClassSpecificCascadeROIHeads

__all__ = [
    "ClassSpecificCascadeROIHeads",
    "ConvNextCheckpointer",
    "D2ConvNeXt",
    "RandomChoice",
    "add_convnext_config",
    "build_convnext_backbone",
    "build_convnext_fpn_backbone",
    "build_convnext_optimizer",
    "build_train_augmentation",
    "build_train_mapper",
    "convnext_config_from_cfg",
    "convnext_param_groups",
]
