"""``convnext-mmseg-train CONFIG``: train an MMSegmentation config with mmengine's Runner.

Same flags as MMSegmentation's ``tools/train.py`` (``--work-dir``, ``--resume``, ``--amp``,
``--cfg-options``, ``--launcher``), plus ``--resume PATH`` and ``--no-amp``. The Runner is
``ConvNeXtSegRunner`` (see ``mmseg_convnext.runner``): resume works under torch's
``weights_only=True`` default without turning it off, torchrun works on CPU, and configuration
mistakes stop before training with a message instead of a shape error deep in a forward pass.

Examples::

    convnext-mmseg-train configs/mmseg/upernet_convnext_tiny_512x512_160k_ade20k.py --work-dir work/t
    convnext-mmseg-train CONFIG --work-dir work/t --resume          # latest checkpoint in work/t
    torchrun --nproc_per_node 8 -m mmseg_convnext.train CONFIG --launcher pytorch
"""
from __future__ import annotations

import argparse
import logging
import os
import os.path as osp
import sys
from typing import Sequence

__all__ = ["main", "build_parser", "load_config", "preflight"]


def build_parser() -> argparse.ArgumentParser:
    from mmengine.config import DictAction

    p = argparse.ArgumentParser(prog="convnext-mmseg-train", description="Train a segmentor (MMSegmentation + ConvNeXt).")
    p.add_argument("config", help="config file, e.g. configs/mmseg/upernet_convnextv2_tiny_512x512_160k_ade20k.py")
    p.add_argument("--work-dir", help="where logs and checkpoints go (default: ./work_dirs/<config name>)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="resume training: from CHECKPOINT, or without a value from the latest checkpoint in the work dir")
    amp = p.add_mutually_exclusive_group()
    amp.add_argument("--amp", action="store_true", help="mixed precision (AmpOptimWrapper, dynamic loss scale)")
    amp.add_argument("--no-amp", action="store_true", help="full precision even if the config asks for AMP (e.g. on CPU)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, metavar="KEY=VALUE",
                   help="override config entries, e.g. train_cfg.max_iters=1000 'model.backbone.out_indices=[1,2,3]'")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                   help="'pytorch' under torchrun / torch.distributed.run (CPU: gloo)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    return p


def load_config(args: argparse.Namespace):
    """The config with the command line applied (what ``main`` hands to the Runner)."""
    from mmengine.config import Config
    from mmengine.logging import print_log

    if not osp.isfile(args.config):
        raise FileNotFoundError(f"config file not found: {args.config}")
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    wrapper = cfg.get("optim_wrapper")
    if args.amp:
        if wrapper is None or wrapper.get("type", "OptimWrapper") not in ("OptimWrapper", "AmpOptimWrapper"):
            raise ValueError(f"--amp needs optim_wrapper type OptimWrapper or AmpOptimWrapper, got {wrapper and wrapper.get('type')}")
        if wrapper.get("type") == "AmpOptimWrapper":
            print_log("AMP is already enabled in the config", logger="current", level=logging.WARNING)
        wrapper.type = "AmpOptimWrapper"
        wrapper.setdefault("loss_scale", "dynamic")
    if args.no_amp and wrapper is not None and wrapper.get("type") == "AmpOptimWrapper":
        wrapper.type = "OptimWrapper"
        for key in ("loss_scale", "dtype", "use_fsdp"):
            wrapper.pop(key, None)
    if args.resume is not None:
        cfg.resume = True
        if args.resume != "auto":
            if not osp.isfile(args.resume):
                raise FileNotFoundError(f"--resume checkpoint not found: {args.resume}")
            cfg.load_from = args.resume
    return cfg


def preflight(cfg) -> None:
    """Build the model on the meta device (no memory, no init) and check heads against the backbone.

    Config mistakes (unknown arch, bad out_indices, head in_channels that do not match the
    backbone) then stop in a second, before the Runner collects the environment, creates the
    work dir and builds data loaders.
    """
    import torch
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from .runner import check_segmentor

    init_default_scope(cfg.get("default_scope", "mmseg"))
    with torch.device("meta"):
        model = MODELS.build(cfg.model)
    check_segmentor(model)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    from convnext_backbone import CheckpointError

    import mmseg_convnext  # noqa: F401  registers the backbone, optimizer constructor and runner
    from mmseg.registry import RUNNERS

    from .runner import ConvNeXtSegRunner

    try:
        cfg = load_config(args)
        preflight(cfg)
        if cfg.get("runner_type") in (None, "ConvNeXtSegRunner"):
            runner = ConvNeXtSegRunner.from_cfg(cfg)
        else:
            runner = RUNNERS.build(cfg)  # the user's choice of Runner: their resume semantics
        runner.train()
    except (ValueError, FileNotFoundError, CheckpointError, KeyError) as e:
        if os.environ.get("CONVNEXT_DEBUG"):
            raise
        print(f"convnext-mmseg-train: error: {e}\n(set CONVNEXT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
