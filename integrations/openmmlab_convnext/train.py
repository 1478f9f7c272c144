"""The train command every OpenMMLab adapter shares (``convnext-mmseg-train``, ``convnext-mmdet-train``).

Same flags as the frameworks' own ``tools/train.py`` (``--work-dir``, ``--resume [PATH]``,
``--amp``, ``--cfg-options``, ``--launcher``; MMDetection's ``--auto-scale-lr``), plus
``--no-amp``. Each adapter's ``train.py`` passes its name, its registries and its Runner (which
mixes in ``openmmlab_convnext.runner.ConvNeXtRunnerMixin``): resume works under torch's
``weights_only=True`` default without turning it off, torchrun works on CPU, and configuration
mistakes stop before training with one ``PROG: error: ...`` line instead of a shape error deep
in a forward pass. Ctrl-C stops with one line naming the last checkpoint and how to continue
from it (exit status 130); both through ``convnext_backbone.cli_errors``, as every command here.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import os.path as osp
import re
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["build_parser", "load_config", "preflight", "main"]


def build_parser(prog: str, description: str, example: str, auto_scale_lr: bool = False) -> argparse.ArgumentParser:
    from mmengine.config import DictAction

    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("config", help=f"config file, e.g. {example}")
    p.add_argument("--work-dir", help="where logs and checkpoints go (default: ./work_dirs/<config name>)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="resume training: from CHECKPOINT, or without a value from the latest checkpoint in the work dir")
    amp = p.add_mutually_exclusive_group()
    amp.add_argument("--amp", action="store_true", help="mixed precision (AmpOptimWrapper, dynamic loss scale; needs a GPU)")
    amp.add_argument("--no-amp", action="store_true", help="full precision even if the config asks for AMP (e.g. on CPU)")
    if auto_scale_lr:
        p.add_argument("--auto-scale-lr", action="store_true",
                       help="scale the lr by the actual total batch size over the config's auto_scale_lr.base_batch_size")
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

    from convnext_backbone.cli_errors import config_error

    if not osp.isfile(args.config):
        raise FileNotFoundError(f"config file not found: {args.config}")
    try:
        cfg = Config.fromfile(args.config)
    except Exception as e:  # the config is the user's Python: any error in it is theirs
        raise config_error(args.config, e) from e
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
    if getattr(args, "auto_scale_lr", False):
        if "auto_scale_lr" not in cfg or "base_batch_size" not in cfg.auto_scale_lr:
            raise ValueError("--auto-scale-lr needs auto_scale_lr=dict(base_batch_size=...) in the config")
        cfg.auto_scale_lr.enable = True
    if args.resume is not None:
        cfg.resume = True
        if args.resume != "auto":
            if not osp.isfile(args.resume):
                raise FileNotFoundError(f"--resume checkpoint not found: {args.resume}")
            cfg.load_from = args.resume
    return cfg


def _config_keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(map(str, node)).union(*(_config_keys(v) for v in node.values()))
    if isinstance(node, (list, tuple)):
        return set().union(*(_config_keys(v) for v in node))
    return set()


@contextlib.contextmanager
def config_arguments(cfg) -> Iterator[None]:
    """mmengine builds each object from a config dict (``cls(**args)``, passed on through
    ``**kwargs``): a ``TypeError`` for an unexpected keyword that is a key of the config is a key
    the class does not take, a mistake in the config, reported as one line."""
    from convnext_backbone.cli_errors import DEBUG_ENV, UserError

    try:
        yield
    except TypeError as e:
        m = re.search(r"got an unexpected keyword argument '(\w+)'", str(e))
        if not m or m.group(1) not in _config_keys(cfg.to_dict()) or os.environ.get(DEBUG_ENV):
            raise
        raise UserError(f"{e} (a key in the config or --cfg-options that it does not take?)") from e


def preflight(cfg, models: Any, default_scope: str) -> None:
    """Build the model on the meta device (no memory, no init) and check it before any work.

    Config mistakes (unknown arch, bad out_indices, an argument a model part does not take,
    neck/head in_channels that do not match the backbone, AMP asked for on a machine without a
    GPU, a truncated checkpoint to resume from) then stop in a second, before the Runner
    collects the environment, creates the work dir and builds data loaders. (The Runner checks
    the resume checkpoint again, for the frameworks' own ``tools/train.py``.)
    """
    import torch
    from mmengine.registry import DefaultScope

    from convnext_backbone import CheckpointError

    from .runner import check_in_channels, checkpoint_problem, resume_problem

    if cfg.get("resume"):
        target = cfg.get("load_from")
        last = osp.join(cfg.work_dir, "last_checkpoint")
        if target is None and osp.isfile(last):  # what mmengine's auto-resume picks
            with open(last) as f:
                target = f.read().strip() or None
        problem = resume_problem(target) if target else None
        if problem:
            raise CheckpointError(problem)
    elif cfg.get("load_from") and "://" not in str(cfg.load_from):  # weights to start from, checked the same way
        problem = checkpoint_problem(cfg.load_from)
        if problem:
            raise CheckpointError(f"load_from {cfg.load_from}: {problem}")

    wrapper = cfg.get("optim_wrapper") or {}
    if wrapper.get("type") == "AmpOptimWrapper" and not torch.cuda.is_available():
        raise ValueError("the config trains with mixed precision (optim_wrapper type AmpOptimWrapper), which mmengine "
                         "runs on GPUs only; on this machine add --no-amp")
    # the config's scope for this build only: a library call leaves mmengine's global scope alone
    with DefaultScope.overwrite_default_scope(cfg.get("default_scope", default_scope)), torch.device("meta"), config_arguments(cfg):
        model = models.build(cfg.model)
    check_in_channels(model)


def main(argv: Sequence[str] | None, *, parser: argparse.ArgumentParser, models: Any, runners: Any,
         runner_cls: type, default_scope: str) -> int:
    """Parse, check, build the Runner (``runner_cls`` unless the config names another) and train."""
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    from convnext_backbone.cli_errors import interrupt_note, run_cli, training_resume_note, user_errors

    def resume_note(work_dir: str) -> str | None:
        if int(os.environ.get("RANK", "0")):
            return None  # said once, by rank 0
        how = "add --resume to the same command" if args.resume is None else "run the same command with --resume and no path"
        return training_resume_note(work_dir, args.resume == "auto", how)

    def body() -> int:
        runner = None
        try:
            with user_errors():  # config mistakes surface while the Runner builds and starts, too
                cfg = load_config(args)
                preflight(cfg, models, default_scope)
                with interrupt_note(lambda: resume_note(cfg.work_dir)), config_arguments(cfg):
                    if cfg.get("runner_type") in (None, runner_cls.__name__, f"{default_scope}.{runner_cls.__name__}"):
                        runner = runner_cls.from_cfg(cfg)
                    else:
                        runner = runners.build(cfg)  # the user's choice of Runner: their resume semantics
                    runner.train()
        finally:
            runner = None
            _close_process_group()
        return 0

    return run_cli(parser.prog, body)


def _close_process_group() -> None:
    """Free the process group while the interpreter is whole. mmengine's Runner sits in reference
    cycles, so without this the DDP model (and the gloo group it holds) is freed by the garbage
    collector during interpreter shutdown, when gloo's worker thread can no longer take the GIL
    to release a finished broadcast's tensors: the process aborts ('terminate called without an
    active exception') after a run that succeeded (seen in about 1 of 6 two-process runs)."""
    import gc

    import torch.distributed as dist

    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()
