"""``ConvNeXtSegRunner``: mmengine's Runner with the shared OpenMMLab pieces, in MMSegmentation's ``RUNNERS``.

What it adds (``openmmlab_convnext.runner`` explains each): resume under torch's
``weights_only=True`` default without turning it off, a one-line error naming the last intact
checkpoint when the one to resume from is truncated or corrupt, atomic checkpoint saves,
torchrun on CPU (gloo, SyncBN -> BN), and decode/auxiliary head (or neck) ``in_channels``
checked against the backbone right after the model is built. Configs that set
``runner_type = 'ConvNeXtSegRunner'`` get it from MMSegmentation's own ``tools/train.py`` too.
"""
from __future__ import annotations

from mmengine.runner import Runner
from mmseg.registry import RUNNERS

from openmmlab_convnext.runner import MMENGINE_CHECKPOINT_GLOBALS, ConvNeXtRunnerMixin, check_in_channels, mmengine_checkpoint_globals

__all__ = ["ConvNeXtSegRunner", "MMENGINE_CHECKPOINT_GLOBALS", "check_segmentor", "mmengine_checkpoint_globals"]

# The segmentor check is the shared one: heads against the backbone, or the neck if there is one.
check_segmentor = check_in_channels


@RUNNERS.register_module()
class ConvNeXtSegRunner(ConvNeXtRunnerMixin, Runner):
    """mmengine's Runner with weights-only-safe resume and CPU torchrun support (see the module doc)."""
