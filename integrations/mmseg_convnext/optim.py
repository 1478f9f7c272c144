"""Layer-wise lr decay for ConvNeXt V2 segmentors: MMSegmentation's rule plus V2's no-decay set.

``ConvNeXtV2LearningRateDecayOptimizerConstructor`` is MMSegmentation's own
``LearningRateDecayOptimizerConstructor`` (the official layer-/stage-wise rates) with the
ConvNeXt no-weight-decay rule on top (``openmmlab_convnext.optim``): GRN ``gamma``/``beta``
move to the ``no_decay`` group of their layer (same lr). For V1 models it builds exactly the
same groups as MMSegmentation's.
"""
from __future__ import annotations

from mmseg.engine.optimizers import LearningRateDecayOptimizerConstructor
from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS

from openmmlab_convnext.optim import NoDecayRuleMixin

__all__ = ["ConvNeXtV2LearningRateDecayOptimizerConstructor"]


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ConvNeXtV2LearningRateDecayOptimizerConstructor(NoDecayRuleMixin, LearningRateDecayOptimizerConstructor):
    """MMSegmentation's ``LearningRateDecayOptimizerConstructor``; GRN gamma/beta get no weight decay."""
