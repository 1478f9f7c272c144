"""What the OpenMMLab adapters (``mmseg_convnext``, ``mmdet_convnext``) share; registers nothing.

Imports mmengine only, never MMSegmentation or MMDetection: each adapter takes these pieces and
registers them in its own framework's registries under its own names.

- ``backbone``: ``OpenMMLabConvNeXt``, the core backbone with the OpenMMLab interface (``arch``,
  ``out_indices`` 0..3, ``frozen_stages``, ``with_cp``, ``init_cfg`` Pretrained through the core
  converters with a logged load report);
- ``optim``: ``NoDecayRuleMixin``, the ConvNeXt no-weight-decay rule (V2's GRN) on top of a
  framework's ``LearningRateDecayOptimizerConstructor``; ``BackboneNoDecayMixin``, the same rule
  on the backbone's parameters on top of mmengine's ``DefaultOptimWrapperConstructor``;
- ``runner``: ``ConvNeXtRunnerMixin`` (weights-only-safe resume with a clear error for a
  truncated checkpoint, atomic saves, CPU torchrun with gloo, SyncBN -> BN on CPU, neck/head
  ``in_channels`` checks, the weights' pixel normalisation against the data preprocessor's) and
  the checkpoint helpers;
- ``train``: the train command's parser, config loading, preflight and main.
"""
from .backbone import OpenMMLabConvNeXt, backbone_config, out_features_from_indices
from .optim import BackboneNoDecayMixin, NoDecayRuleMixin, apply_no_decay_rule
from .runner import (
    MMENGINE_CHECKPOINT_GLOBALS,
    ConvNeXtRunnerMixin,
    check_in_channels,
    check_normalisation,
    checkpoint_problem,
    last_intact_checkpoint,
    mmengine_checkpoint_globals,
)

__all__ = [
    "BackboneNoDecayMixin",
    "ConvNeXtRunnerMixin",
    "MMENGINE_CHECKPOINT_GLOBALS",
    "NoDecayRuleMixin",
    "OpenMMLabConvNeXt",
    "apply_no_decay_rule",
    "backbone_config",
    "check_in_channels",
    "check_normalisation",
    "checkpoint_problem",
    "last_intact_checkpoint",
    "mmengine_checkpoint_globals",
    "out_features_from_indices",
]
