"""The core ConvNeXt V1/V2 backbone, registered in MMSegmentation's ``MODELS`` as ``MMSegConvNeXt``.

Usage in an MMSegmentation config::

    custom_imports = dict(imports=['mmseg_convnext'], allow_failed_imports=False)
    model = dict(backbone=dict(
        type='MMSegConvNeXt', arch='convnextv2_tiny', out_indices=(0, 1, 2, 3),
        drop_path_rate=0.4, init_cfg=dict(type='Pretrained', checkpoint='/path/to/any/convnext/checkpoint')))

The class is ``openmmlab_convnext.OpenMMLabConvNeXt`` (shared with MMDetection's
``MMDetConvNeXt``; its docstring lists the arguments and why it looks the way it does) under
the name MMSegmentation's registry knows. ``resolve_arch`` is the core's.
"""
from __future__ import annotations

from mmseg.registry import MODELS

from convnext_backbone.arch import resolve_arch
from openmmlab_convnext.backbone import OpenMMLabConvNeXt

__all__ = ["MMSegConvNeXt", "resolve_arch"]


@MODELS.register_module()
class MMSegConvNeXt(OpenMMLabConvNeXt):
    __doc__ = OpenMMLabConvNeXt.__doc__
