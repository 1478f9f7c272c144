"""``convnext-mmdet-train CONFIG``: train an MMDetection config with mmengine's Runner.

Same flags as MMDetection's ``tools/train.py`` (``--work-dir``, ``--resume [CHECKPOINT]``,
``--amp``, ``--auto-scale-lr``, ``--cfg-options``, ``--launcher``), plus ``--no-amp``. The
Runner is ``ConvNeXtDetRunner`` and the command is the one every OpenMMLab adapter shares
(``openmmlab_convnext.train``): resume works under torch's ``weights_only=True`` default
without turning it off, torchrun works on CPU, and configuration mistakes stop before training
with one line naming the problem.

Examples::

    convnext-mmdet-train configs/mmdet/mask_rcnn_convnext_tiny_fpn_3x_coco.py --work-dir work/t
    convnext-mmdet-train CONFIG --work-dir work/t --resume          # latest checkpoint in work/t
    torchrun --nproc_per_node 8 -m mmdet_convnext.train CONFIG --launcher pytorch
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from openmmlab_convnext import train as _shared
from openmmlab_convnext.train import load_config

__all__ = ["main", "build_parser", "load_config", "preflight"]

PROG = "convnext-mmdet-train"


def build_parser() -> argparse.ArgumentParser:
    return _shared.build_parser(PROG, "Train a detector (MMDetection + ConvNeXt).",
                                "configs/mmdet/mask_rcnn_convnext_tiny_fpn_3x_coco.py", auto_scale_lr=True)


def preflight(cfg) -> None:
    """Build the model on the meta device and check it (see ``openmmlab_convnext.train.preflight``)."""
    from mmdet.registry import MODELS

    _shared.preflight(cfg, MODELS, "mmdet")


def main(argv: Sequence[str] | None = None) -> int:
    from mmdet.registry import MODELS, RUNNERS

    import mmdet_convnext  # noqa: F401  registers the backbone, optimizer constructor and runner

    from .runner import ConvNeXtDetRunner

    return _shared.main(argv, parser=build_parser(), models=MODELS, runners=RUNNERS,
                        runner_cls=ConvNeXtDetRunner, default_scope="mmdet")


if __name__ == "__main__":
    sys.exit(main())
