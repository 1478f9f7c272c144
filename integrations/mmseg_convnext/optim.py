"""Layer-wise lr decay for ConvNeXt V2 segmentors: MMSegmentation's rule plus V2's no-decay set.

``ConvNeXtV2LearningRateDecayOptimizerConstructor`` is MMSegmentation's own
``LearningRateDecayOptimizerConstructor`` (the official layer-/stage-wise rates) with the
ConvNeXt no-weight-decay rule on top (``openmmlab_convnext.optim``): GRN ``gamma``/``beta``
move to the ``no_decay`` group of their layer (same lr). For V1 models it builds exactly the
same groups as MMSegmentation's.

``ConvNeXtOptimWrapperConstructor`` is mmengine's ``DefaultOptimWrapperConstructor`` (what the
query-based recipes use: a backbone lr multiplier through ``paramwise_cfg.custom_keys``) with the
ConvNeXt no-weight-decay rule on the backbone's parameters (``openmmlab_convnext.optim``).
"""
from __future__ import annotations

from mmengine.optim import DefaultOptimWrapperConstructor
from mmseg.engine.optimizers import LearningRateDecayOptimizerConstructor
from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS

from openmmlab_convnext.optim import BackboneNoDecayMixin, NoDecayRuleMixin

__all__ = ["ConvNeXtOptimWrapperConstructor", "ConvNeXtV2LearningRateDecayOptimizerConstructor"]


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ConvNeXtV2LearningRateDecayOptimizerConstructor(NoDecayRuleMixin, LearningRateDecayOptimizerConstructor):
    """MMSegmentation's ``LearningRateDecayOptimizerConstructor``; GRN gamma/beta get no weight decay."""


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ConvNeXtOptimWrapperConstructor(BackboneNoDecayMixin, DefaultOptimWrapperConstructor):
    """mmengine's ``DefaultOptimWrapperConstructor``; the ConvNeXt backbone's norms, biases, layer scale and GRN get no weight decay."""
