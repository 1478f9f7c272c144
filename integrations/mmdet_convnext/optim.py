"""Layer-wise lr decay for ConvNeXt V2 detectors: MMDetection's rule plus V2's no-decay set.

``ConvNeXtV2LearningRateDecayOptimizerConstructor`` is MMDetection's own
``LearningRateDecayOptimizerConstructor`` (the official layer-/stage-wise rates) with the
ConvNeXt no-weight-decay rule on top (``openmmlab_convnext.optim``): GRN ``gamma``/``beta``
move to the ``no_decay`` group of their layer (same lr). For V1 models it builds exactly the
same groups as MMDetection's.
"""
from __future__ import annotations

from mmdet.engine.optimizers import LearningRateDecayOptimizerConstructor
from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS

from openmmlab_convnext.optim import NoDecayRuleMixin

__all__ = ["ConvNeXtV2LearningRateDecayOptimizerConstructor"]


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ConvNeXtV2LearningRateDecayOptimizerConstructor(NoDecayRuleMixin, LearningRateDecayOptimizerConstructor):
    """MMDetection's ``LearningRateDecayOptimizerConstructor``; GRN gamma/beta get no weight decay."""
