"""``ConvNeXtDetRunner``: mmengine's Runner with the shared OpenMMLab pieces, in MMDetection's ``RUNNERS``.

What it adds (``openmmlab_convnext.runner`` explains each): resume under torch's
``weights_only=True`` default without turning it off, a one-line error naming the last intact
checkpoint when the one to resume from is truncated or corrupt, atomic checkpoint saves,
torchrun on CPU (gloo; the Cascade heads' SyncBN -> BN), and the neck's ``in_channels``
checked against the backbone right after the model is built. Configs that set
``runner_type = 'mmdet.ConvNeXtDetRunner'`` (all of ``configs/mmdet/``) get it from
MMDetection's own ``tools/train.py`` too; the ``mmdet.`` scope is needed there, because that
script builds the runner from mmengine's root registry, which finds a bare name only among its
own runners.
"""
from __future__ import annotations

from mmdet.registry import RUNNERS
from mmengine.runner import Runner

from openmmlab_convnext.runner import ConvNeXtRunnerMixin

__all__ = ["ConvNeXtDetRunner"]


@RUNNERS.register_module()
class ConvNeXtDetRunner(ConvNeXtRunnerMixin, Runner):
    """mmengine's Runner with weights-only-safe resume and CPU torchrun support (see the module doc)."""
