"""MMSegmentation adapter: registers the ConvNeXt backbone with MMSegmentation.

``import mmseg_convnext`` (or ``custom_imports=dict(imports=['mmseg_convnext'])`` in a config)
registers, in MMSegmentation's registries:

- ``MODELS``: ``MMSegConvNeXt``, the core ConvNeXt V1/V2 backbone (see ``backbone``);
- ``OPTIM_WRAPPER_CONSTRUCTORS``: ``ConvNeXtV2LearningRateDecayOptimizerConstructor``
  (MMSeg's layer-wise lr decay plus V2's no-weight-decay for GRN) and
  ``ConvNeXtOptimWrapperConstructor`` (mmengine's default constructor, e.g. Mask2Former's backbone
  lr multiplier, plus the ConvNeXt backbone's no-weight-decay set), see ``optim``;
- ``RUNNERS``: ``ConvNeXtSegRunner`` (resume under ``weights_only``, CPU torchrun, config checks).

The code behind them is shared with the MMDetection adapter (``openmmlab_convnext``); this
package only registers it. ``convnext-mmseg-train`` (``mmseg_convnext.train``) trains a config
with that Runner, and ``mmseg_convnext.synthetic`` writes a small ADE20K-layout dataset for
smoke runs.
"""
from .backbone import MMSegConvNeXt, resolve_arch
from .optim import ConvNeXtOptimWrapperConstructor, ConvNeXtV2LearningRateDecayOptimizerConstructor
from .runner import ConvNeXtSegRunner, check_segmentor, mmengine_checkpoint_globals

__all__ = [
    "ConvNeXtOptimWrapperConstructor",
    "ConvNeXtSegRunner",
    "ConvNeXtV2LearningRateDecayOptimizerConstructor",
    "MMSegConvNeXt",
    "check_segmentor",
    "mmengine_checkpoint_globals",
    "resolve_arch",
]
