"""MMDetection 3.x adapter: registers the ConvNeXt backbone with MMDetection.

``import mmdet_convnext`` (or ``custom_imports=dict(imports=['mmdet_convnext'])`` in a config)
registers, in MMDetection's registries:

- ``MODELS``: ``MMDetConvNeXt``, the core ConvNeXt V1/V2 backbone (see ``backbone``);
- ``OPTIM_WRAPPER_CONSTRUCTORS``: ``ConvNeXtV2LearningRateDecayOptimizerConstructor``
  (MMDetection's layer-wise lr decay plus V2's no-weight-decay for GRN) and
  ``ConvNeXtOptimWrapperConstructor`` (mmengine's default constructor, e.g. a backbone lr
  multiplier, plus the ConvNeXt backbone's no-weight-decay set), see ``optim``;
- ``RUNNERS``: ``ConvNeXtDetRunner`` (resume under ``weights_only``, CPU torchrun, config checks).

The code behind them is shared with the MMSegmentation adapter (``openmmlab_convnext``); this
package only registers it. ``convnext-mmdet-train`` (``mmdet_convnext.train``) trains a config
with that Runner; the configs are in ``configs/mmdet/``.
"""
from .backbone import MMDetConvNeXt
from .optim import ConvNeXtOptimWrapperConstructor, ConvNeXtV2LearningRateDecayOptimizerConstructor
from .runner import ConvNeXtDetRunner

__all__ = ["ConvNeXtDetRunner", "ConvNeXtOptimWrapperConstructor", "ConvNeXtV2LearningRateDecayOptimizerConstructor", "MMDetConvNeXt"]
