"""The core ConvNeXt V1/V2 backbone, registered in MMDetection's ``MODELS`` as ``MMDetConvNeXt``.

Usage in an MMDetection config::

    custom_imports = dict(imports=['mmdet_convnext'], allow_failed_imports=False)
    model = dict(
        backbone=dict(_delete_=True, type='MMDetConvNeXt', arch='convnextv2_tiny', out_indices=(0, 1, 2, 3),
                      drop_path_rate=0.4, init_cfg=dict(type='Pretrained', checkpoint='/path/to/any/convnext/checkpoint')),
        neck=dict(in_channels=[96, 192, 384, 768]))

The class is ``openmmlab_convnext.OpenMMLabConvNeXt`` (shared with MMSegmentation's
``MMSegConvNeXt``; its docstring lists the arguments) under the name MMDetection's registry
knows. The name contains ``ConvNeXt`` and the parameters are ``backbone.downsample_layers.*`` /
``backbone.stages.*``: MMDetection's own ``LearningRateDecayOptimizerConstructor`` applies.
"""
from __future__ import annotations

from mmdet.registry import MODELS

from openmmlab_convnext.backbone import OpenMMLabConvNeXt

__all__ = ["MMDetConvNeXt"]


@MODELS.register_module()
class MMDetConvNeXt(OpenMMLabConvNeXt):
    __doc__ = OpenMMLabConvNeXt.__doc__
