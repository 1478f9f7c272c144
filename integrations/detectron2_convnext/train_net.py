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

import json
import logging
import os
import re
import weakref

import torch
import yaml
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.engine import DefaultTrainer, HookBase, default_argument_parser, default_setup
from detectron2.engine.train_loop import AMPTrainer, SimpleTrainer, TrainerBase
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from tqdm import tqdm

from convnext_backbone.cli_errors import config_error
from convnext_backbone.fileio import atomic_write
from convnext_backbone.messages import suggestion

from ._cli import UserError, check_no_flags_in_overrides, launch_cli, user_errors
from .checkpoint import ConvNextCheckpointer
from .config import add_convnext_config
from .data import build_train_mapper
from .distributed import cpu_sync_batchnorm, create_ddp_model, setup_cpu_worker
from .optim import build_convnext_optimizer
from .synthetic import register_coco

__all__ = ["Trainer", "ProgressBar", "load_config", "preflight", "setup", "build", "run", "main", "argument_parser"]

PROG = "convnext-d2-train"
logger = logging.getLogger("detectron2_convnext")


class ProgressBar(HookBase):
    """A tqdm bar over iterations with the latest total loss and lr (main process only)."""

    def before_train(self):
        t = self.trainer
        self._bar = tqdm(total=t.max_iter, initial=t.start_iter, desc="train", unit="it", dynamic_ncols=True, mininterval=1.0)

    def after_step(self):
        storage = self.trainer.storage
        post = {}
        if "total_loss" in storage.histories():
            post["loss"] = f"{storage.history('total_loss').latest():.3f}"
        if "lr" in storage.histories():
            post["lr"] = f"{storage.history('lr').latest():.2e}"
        self._bar.set_postfix(post, refresh=False)
        self._bar.update(1)

    def after_train(self):
        self._bar.close()


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


def _cpu_fallbacks(cfg) -> list[str]:
    """Official recipes assume CUDA (and AMP); on a CPU-only machine run them on CPU, loudly."""
    notes = []
    if torch.cuda.is_available():
        return notes
    if cfg.MODEL.DEVICE.startswith("cuda"):
        notes.append(f"CUDA is not available: MODEL.DEVICE {cfg.MODEL.DEVICE} -> cpu")
        cfg.MODEL.DEVICE = "cpu"
    if cfg.SOLVER.AMP.ENABLED:
        notes.append("SOLVER.AMP.ENABLED needs CUDA (Detectron2's AMPTrainer): disabled on CPU")
        cfg.SOLVER.AMP.ENABLED = False
    return notes


def _config_keys(node, prefix="") -> list[str]:
    keys = []
    for k, v in node.items():
        keys += _config_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return keys


def load_config(args):
    """``(cfg, notes)``: the frozen config with the command line applied, and the CPU fallbacks taken."""
    if args.config_file and not os.path.isfile(args.config_file):
        raise UserError(f"config file not found: {args.config_file}")
    check_no_flags_in_overrides(args.opts)
    cfg = get_cfg()
    add_convnext_config(cfg)
    try:
        if args.config_file:
            cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
    except yaml.YAMLError as e:
        raise config_error(args.config_file, e) from e
    except (KeyError, AssertionError) as e:  # yacs checks overrides with assert (odd-length list, unknown key)
        msg = str(e.args[0]) if e.args else str(e)
        unknown = re.match(r"Non-existent (?:config )?key: (\S+)", msg)
        if not unknown:
            raise UserError(f"bad config override: {msg}") from e
        key = unknown.group(1)
        close = suggestion(key, _config_keys(cfg), cutoff=0.75)
        where = "" if key in (args.opts or [])[::2] else f" (in {args.config_file})"
        raise UserError(f"unknown config key {key}{where}" + (f"; did you mean {close}?" if close else "")) from e
    notes = _cpu_fallbacks(cfg)
    cfg.freeze()
    return cfg, notes


def _register_datasets(args) -> None:
    for name, json_file, image_root in args.register_coco or []:
        if not os.path.isfile(json_file):
            raise UserError(f"--register-coco {name}: annotation file not found: {json_file}")
        if not os.path.isdir(image_root):
            raise UserError(f"--register-coco {name}: image directory not found: {image_root}")
        register_coco(name, json_file, image_root)


# where registered datasets keep their files (Detectron2's COCO, LVIS, Cityscapes, VOC, ADE20K metadata)
_DATASET_PATHS = ("json_file", "image_root", "panoptic_json", "panoptic_root", "sem_seg_root", "image_dir", "gt_dir", "dirname")


def check_datasets(key: str, names, example: str) -> None:
    """Each dataset is registered, and the files its registration names exist: a built-in name such
    as ``coco_2017_val`` is registered whether or not ``$DETECTRON2_DATASETS`` holds its data."""
    known = set(DatasetCatalog.list())
    for name in names:
        if name not in known:
            raise UserError(
                f"{key}: dataset {name!r} is not registered; register a COCO-format dataset with "
                f"--register-coco {name} JSON IMAGE_ROOT{example}"
            )
        meta = MetadataCatalog.get(name)
        for attr in _DATASET_PATHS:
            path = meta.get(attr)
            if isinstance(path, (str, os.PathLike)) and path and not os.path.exists(path):
                raise UserError(
                    f"{key}: dataset {name!r} is registered, but its {attr} {path} does not exist (Detectron2's built-in "
                    f"datasets are read from $DETECTRON2_DATASETS, default ./datasets); put the data there, or register "
                    f"your copy with --register-coco {name} JSON IMAGE_ROOT"
                )


def check_weights(key: str, weights: str, output_dir: str, args) -> None:
    """A local checkpoint to start from exists, and ``--eval-only`` has weights to evaluate."""
    resuming = args.resume and os.path.isfile(os.path.join(output_dir, "last_checkpoint"))
    if weights and "://" not in weights and not resuming and not os.path.exists(weights):
        raise UserError(f"{key} not found: {weights}")
    if args.eval_only and not weights and not resuming:
        raise UserError(f"--eval-only with no weights would evaluate a randomly initialised model: set {key} "
                        f"(e.g. {os.path.join(output_dir, 'model_final.pth')}), or --resume from {output_dir}/last_checkpoint")


def preflight(args, cfg) -> None:
    """Checks that stop a bad job in the launching process, before any worker starts.

    ``SOLVER.IMS_PER_BATCH`` splits evenly over the processes, a local ``MODEL.WEIGHTS`` exists
    (``--eval-only`` has weights to evaluate), the model builds (on the meta device: no memory,
    no init), so backbone / head config mistakes surface here as one line, and last, the
    datasets are registered and their files are there.
    """
    _register_datasets(args)
    world = args.num_gpus * args.num_machines
    if not args.eval_only:
        try:  # SOLVER.REFERENCE_WORLD_SIZE: Detectron2 rescales the batch to the world size first
            batch = DefaultTrainer.auto_scale_workers(cfg, world).SOLVER.IMS_PER_BATCH
        except AssertionError as e:
            raise UserError(f"SOLVER.REFERENCE_WORLD_SIZE {cfg.SOLVER.REFERENCE_WORLD_SIZE}: {e}") from e
        if batch % world:
            raise UserError(
                f"SOLVER.IMS_PER_BATCH {batch} (the total over all processes) does not split evenly over "
                f"{world} processes (--num-gpus {args.num_gpus} x --num-machines {args.num_machines})"
            )
    check_weights("MODEL.WEIGHTS", cfg.MODEL.WEIGHTS, cfg.OUTPUT_DIR, args)
    with torch.device("meta"):
        META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    for key in (("DATASETS.TEST",) if args.eval_only else ("DATASETS.TRAIN", "DATASETS.TEST")):
        check_datasets(key, cfg.DATASETS.get(key.split(".")[1]), " (or use a name Detectron2 knows, e.g. coco_2017_train)")


def setup(args):
    """Per-process: the config, Detectron2's ``default_setup`` (logs, config dump, seed), our logger."""
    cfg, notes = load_config(args)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="detectron2_convnext")
    for note in notes:
        logger.warning(note)
    setup_cpu_worker()
    return cfg


def _write_results(cfg, results) -> None:
    if comm.is_main_process() and results:
        path = os.path.join(cfg.OUTPUT_DIR, "eval_results.json")
        atomic_write(path, json.dumps(results, indent=2, default=float))


def build(args, trainer_class=Trainer):
    """Per-process setup: datasets, config, then the trainer (or, with ``--eval-only``, the model)
    with its weights loaded. Returns ``(cfg, trainer_or_model)``."""
    _register_datasets(args)
    cfg = setup(args)
    if args.eval_only:
        model = trainer_class.build_model(cfg)
        ConvNextCheckpointer(model, save_dir=cfg.OUTPUT_DIR, strict=cfg.MODEL.CONVNEXT.STRICT_LOAD).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return cfg, model
    trainer = trainer_class(cfg)
    trainer.resume_or_load(resume=args.resume)
    return cfg, trainer


def _execute(args, cfg, job, trainer_class=Trainer):
    results = trainer_class.test(cfg, job) if args.eval_only else job.train()
    _write_results(cfg, results)
    return results


def run(args, trainer_class=Trainer):
    """The per-process job that Detectron2's ``launch`` runs: ``build``, then train or evaluate."""
    cfg, job = build(args, trainer_class)
    return _execute(args, cfg, job, trainer_class)


def _worker(args, trainer_class):
    with user_errors(PROG):  # setup mistakes: one line; errors while training keep their traceback
        cfg, job = build(args, trainer_class)
    return _execute(args, cfg, job, trainer_class)


def argument_parser():
    parser = default_argument_parser(epilog=__doc__)
    parser.prog = PROG
    parser.add_argument(
        "--register-coco", nargs=3, action="append", metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format dataset under NAME (repeatable); use NAME in DATASETS.TRAIN / DATASETS.TEST",
    )
    return parser


def main(argv=None, *, trainer_class=Trainer):
    """``convnext-d2-train``: parse, check, then hand over to Detectron2's ``launch``.

    ``trainer_class``: a subclass of ``Trainer`` (e.g. with extra hooks) to run instead.
    Returns the exit status (0, 2 after a one-line error, 130 after Ctrl-C).
    """
    args = argument_parser().parse_args(argv)
    print("Command Line Args:", args)

    def check() -> str:
        cfg, _ = load_config(args)
        preflight(args, cfg)
        return cfg.OUTPUT_DIR

    return launch_cli(PROG, check, _worker, args, trainer_class)


if __name__ == "__main__":
    raise SystemExit(main())
