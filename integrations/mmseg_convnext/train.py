"""``convnext-mmseg-train CONFIG``: train an MMSegmentation config with mmengine's Runner.

Same flags as MMSegmentation's ``tools/train.py`` (``--work-dir``, ``--resume``, ``--amp``,
``--cfg-options``, ``--launcher``), plus ``--resume PATH`` and ``--no-amp``. The Runner is
``ConvNeXtSegRunner`` and the command is the one every OpenMMLab adapter shares
(``openmmlab_convnext.train``): resume works under torch's ``weights_only=True`` default without
turning it off, torchrun works on CPU, and configuration mistakes stop before training with a
message instead of a shape error deep in a forward pass.

Examples::

    convnext-mmseg-train configs/mmseg/upernet_convnext_tiny_512x512_160k_ade20k.py --work-dir work/t
    convnext-mmseg-train CONFIG --work-dir work/t --resume          # latest checkpoint in work/t
    torchrun --nproc_per_node 8 -m mmseg_convnext.train CONFIG --launcher pytorch
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from openmmlab_convnext import train as _shared
from openmmlab_convnext.train import load_config

__all__ = ["main", "build_parser", "load_config", "preflight"]

PROG = "convnext-mmseg-train"


def build_parser() -> argparse.ArgumentParser:
    return _shared.build_parser(PROG, "Train a segmentor (MMSegmentation + ConvNeXt).",
                                "configs/mmseg/upernet_convnextv2_tiny_512x512_160k_ade20k.py")


def preflight(cfg) -> None:
    """Build the model on the meta device and check it (see ``openmmlab_convnext.train.preflight``)."""
    from mmseg.registry import MODELS

    _shared.preflight(cfg, MODELS, "mmseg")


def main(argv: Sequence[str] | None = None) -> int:
    from mmseg.registry import MODELS, RUNNERS

    import mmseg_convnext  # noqa: F401  registers the backbone, optimizer constructor and runner

    from .runner import ConvNeXtSegRunner

    return _shared.main(argv, parser=build_parser(), models=MODELS, runners=RUNNERS,
                        runner_cls=ConvNeXtSegRunner, default_scope="mmseg")


if __name__ == "__main__":
    sys.exit(main())
