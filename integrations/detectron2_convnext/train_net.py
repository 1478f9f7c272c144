"""Train / evaluate / resume a Detectron2 model with a ConvNeXt backbone.

    convnext-d2-train --config-file configs/detectron2/mask_rcnn_convnext_tiny_fpn_3x_coco.yaml \\
        --num-gpus 8 MODEL.WEIGHTS convnext_tiny_1k_224.pth
    convnext-d2-train --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    convnext-d2-train --config-file ... --resume          # continue from OUTPUT_DIR/last_checkpoint
    convnext-d2-train --config-file ... --num-gpus 8 --num-machines 2 --machine-rank 0 \\
        --dist-url tcp://NODE0_ADDRESS:29500              # on node 0; node 1 the same with --machine-rank 1

``--num-gpus/--num-machines/--machine-rank/--dist-url`` go to Detectron2's own ``launch``; on a
machine without CUDA, ``--num-gpus N`` runs N CPU processes (gloo) through the same code path
(see ``detectron2_convnext.distributed``). ``--register-coco NAME JSON IMAGE_ROOT`` registers a
COCO-format dataset in every worker. Evaluation results are also written to
``OUTPUT_DIR/eval_results.json``. A configuration mistake (unknown key, bad value, missing file,
unregistered dataset or one whose files are missing, weights that do not fit or are not a
checkpoint) stops with one ``convnext-d2-train: error: ...`` line and exit status 2;
``CONVNEXT_DEBUG=1`` shows the traceback instead. Ctrl-C stops with one line naming the last
checkpoint and how to continue from it (exit status 130).
"""
from __future__ import annotations

import logging
import os
import re
import weakref

import yaml
from detectron2.config import get_cfg
from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.engine.train_loop import AMPTrainer, SimpleTrainer, TrainerBase
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from convnext_backbone.cli_errors import config_error
from convnext_backbone.messages import suggestion

from . import _cli
from ._cli import ProgressBar, TrainCommand, UserError
from .checkpoint import ConvNextCheckpointer
from .config import add_convnext_config
from .data import build_train_mapper
from .distributed import cpu_sync_batchnorm, create_ddp_model
from .optim import build_convnext_optimizer

__all__ = ["Trainer", "ProgressBar", "YacsTrainCommand", "load_config", "preflight", "setup", "build", "run", "main",
           "argument_parser"]

EPILOG = __doc__  # the --help epilog (inside a class body, __doc__ is the class's)
PROG = "convnext-d2-train"


class Trainer(DefaultTrainer):
    """DefaultTrainer with the ConvNeXt optimizer, augmentation, checkpointer and COCO evaluation.

    It also trains with several processes on a machine without CUDA (gloo): the model is
    wrapped in DDP without ``device_ids`` and SyncBN becomes a CPU-capable synchronised BN
    (``detectron2_convnext.distributed``). Checkpoints are written by rank 0 only.
    """

    def __init__(self, cfg):
        # DefaultTrainer.__init__ builds these same pieces, but wraps the model with a
        # create_ddp_model that always passes device_ids (refused for a CPU module); so build
        # them here, in its order, with the CPU-aware wrapper.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):  # default_setup not called
            setup_logger()
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        # save_to_disk defaults to "rank 0 only" (DetectionCheckpointer)
        self.checkpointer = ConvNextCheckpointer(
            model, cfg.OUTPUT_DIR, strict=cfg.MODEL.CONVNEXT.STRICT_LOAD, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        hooks = super().build_hooks()
        if comm.is_main_process():
            hooks.insert(1, ProgressBar())
        return hooks

    def train(self):
        """Train; return the evaluation Detectron2 runs when training ends (DefaultTrainer keeps it)."""
        super().train()
        return getattr(self, "_last_eval_results", None)

    @classmethod
    def build_model(cls, cfg):
        return cpu_sync_batchnorm(super().build_model(cfg))

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_convnext_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=build_train_mapper(cfg))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        # use_fast_impl=False: the fast evaluator needs detectron2's compiled _C extension
        return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=False)


def _config_keys(node, prefix="") -> list[str]:
    keys = []
    for k, v in node.items():
        keys += _config_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return keys


def _merge_error(args, cfg, e: Exception) -> UserError:
    """yacs reports a bad override with ``assert`` / ``KeyError``: one line, with the closest key."""
    msg = str(e.args[0]) if e.args else str(e)
    unknown = re.match(r"Non-existent (?:config )?key: (\S+)", msg)
    if not unknown:
        return UserError(f"bad config override: {msg}")
    key = unknown.group(1)
    close = suggestion(key, _config_keys(cfg), cutoff=0.75)
    where = "" if key in (args.opts or [])[::2] else f" (in {args.config_file})"
    return UserError(f"unknown config key {key}{where}" + (f"; did you mean {close}?" if close else ""))


class YacsTrainCommand(TrainCommand):
    """``convnext-d2-train``: a yacs config (``KEY VALUE`` overrides), ``trainer_class`` builds and trains."""

    prog = PROG
    doc = EPILOG
    device_key, amp_key = "MODEL.DEVICE", "SOLVER.AMP.ENABLED"
    weights_key, strict_key, output_dir_key = "MODEL.WEIGHTS", "MODEL.CONVNEXT.STRICT_LOAD", "OUTPUT_DIR"
    dataset_names_key = "DATASETS.{SPLIT}"
    dataset_names_help = "DATASETS.TRAIN / DATASETS.TEST"
    dataset_example = " (or use a name Detectron2 knows, e.g. coco_2017_train)"

    def __init__(self, trainer_class=Trainer):
        self.trainer_class = trainer_class  # travels to each worker with the command

    def read_config(self, args):
        cfg = get_cfg()
        add_convnext_config(cfg)
        try:
            if args.config_file:
                cfg.merge_from_file(args.config_file)
            cfg.merge_from_list(args.opts)
        except yaml.YAMLError as e:
            raise config_error(args.config_file, e) from e
        except (KeyError, AssertionError) as e:  # yacs checks overrides with assert (odd-length list, unknown key)
            raise _merge_error(args, cfg, e) from e
        return cfg

    def load_config(self, args):
        """``(cfg, notes)``: the frozen config with the command line applied, and the CPU fallbacks taken."""
        cfg, notes = super().load_config(args)
        cfg.freeze()
        return cfg, notes

    def check_batch(self, args, cfg) -> None:
        world = args.num_gpus * args.num_machines
        try:  # SOLVER.REFERENCE_WORLD_SIZE: Detectron2 rescales the batch to the world size first
            batch = DefaultTrainer.auto_scale_workers(cfg, world).SOLVER.IMS_PER_BATCH
        except AssertionError as e:
            raise UserError(f"SOLVER.REFERENCE_WORLD_SIZE {cfg.SOLVER.REFERENCE_WORLD_SIZE}: {e}") from e
        if batch % world:
            raise UserError(
                f"SOLVER.IMS_PER_BATCH {batch} (the total over all processes) does not split evenly over "
                f"{world} processes (--num-gpus {args.num_gpus} x --num-machines {args.num_machines})"
            )

    def meta_model(self, cfg):
        return META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)

    def build_trainer(self, args, cfg):
        trainer = self.trainer_class(cfg)
        trainer.resume_or_load(resume=args.resume)
        return trainer

    def build_evaluation(self, args, cfg):
        model = self.trainer_class.build_model(cfg)
        self.load_weights(args, cfg, model)
        return model

    def train(self, cfg, job):
        return job.train()

    def evaluate(self, cfg, job):
        return self.trainer_class.test(cfg, job)


_COMMAND = YacsTrainCommand()
argument_parser = _COMMAND.argument_parser
load_config = _COMMAND.load_config  # -> (cfg, notes): frozen, the command line applied, the CPU fallbacks taken
preflight = _COMMAND.preflight      # checks in the launching process, before any worker starts
setup = _COMMAND.setup              # per process: config, default_setup, our logger


def build(args, trainer_class=Trainer):
    """Per-process setup: datasets, config, then the trainer (or, with ``--eval-only``, the model)
    with its weights loaded. Returns ``(cfg, trainer_or_model)``."""
    return YacsTrainCommand(trainer_class).build(args)


def run(args, trainer_class=Trainer):
    """The per-process job that Detectron2's ``launch`` runs: ``build``, then train or evaluate."""
    command = YacsTrainCommand(trainer_class)
    return command.execute(args, *command.build(args))


def main(argv=None, *, trainer_class=Trainer):
    """``convnext-d2-train``: parse, check, then hand over to Detectron2's ``launch``.

    ``trainer_class``: a subclass of ``Trainer`` (e.g. with extra hooks) to run instead.
    Returns the exit status (0, 2 after a one-line error, 130 after Ctrl-C).
    """
    return _cli.run(YacsTrainCommand(trainer_class), argv)


if __name__ == "__main__":
    raise SystemExit(main())
