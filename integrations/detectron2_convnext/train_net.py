"""Train / evaluate / resume a Detectron2 model with a ConvNeXt backbone.

    convnext-d2-train --config-file configs/detectron2/mask_rcnn_convnext_tiny_fpn_3x_coco.yaml \\
        --num-gpus 8 MODEL.WEIGHTS convnext_tiny_1k_224.pth
    convnext-d2-train --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    convnext-d2-train --config-file ... --resume          # continue from OUTPUT_DIR/last_checkpoint

``--num-gpus/--num-machines/--machine-rank/--dist-url`` go to Detectron2's own ``launch``.
``--register-coco NAME JSON IMAGE_ROOT`` registers a COCO-format dataset (in every worker).
Evaluation results are also written to ``OUTPUT_DIR/eval_results.json``.
"""
from __future__ import annotations

import json
import logging
import os
import weakref

import torch
from detectron2.config import get_cfg
from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer, HookBase, default_argument_parser, default_setup, launch
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from tqdm import tqdm

from .checkpoint import ConvNextCheckpointer, _atomic_write
from .config import add_convnext_config
from .data import build_train_mapper
from .optim import build_convnext_optimizer
from .synthetic import register_coco

__all__ = ["Trainer", "ProgressBar", "setup", "run", "main", "argument_parser"]

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
    """DefaultTrainer with the ConvNeXt optimizer, augmentation, checkpointer and COCO evaluation."""

    def build_hooks(self):
        # DefaultTrainer builds a DetectionCheckpointer in __init__; swap it before hooks capture it.
        self.checkpointer = ConvNextCheckpointer(self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        hooks = super().build_hooks()
        if comm.is_main_process():
            hooks.insert(1, ProgressBar())
        return hooks

    def train(self):
        """Train; return the evaluation Detectron2 runs when training ends (DefaultTrainer keeps it)."""
        super().train()
        return getattr(self, "_last_eval_results", None)

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


def setup(args):
    cfg = get_cfg()
    add_convnext_config(cfg)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    notes = _cpu_fallbacks(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="detectron2_convnext")
    for note in notes:
        logger.warning(note)
    return cfg


def _write_results(cfg, results) -> None:
    if comm.is_main_process() and results:
        path = os.path.join(cfg.OUTPUT_DIR, "eval_results.json")
        _atomic_write(path, lambda tmp: open(tmp, "w").write(json.dumps(results, indent=2, default=float)))


def run(args):
    """The per-process job that Detectron2's ``launch`` runs."""
    for name, json_file, image_root in args.register_coco or []:
        register_coco(name, json_file, image_root)
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        ConvNextCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        _write_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    _write_results(cfg, results)
    return results


def argument_parser():
    parser = default_argument_parser(epilog=__doc__)
    parser.add_argument(
        "--register-coco", nargs=3, action="append", metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format dataset under NAME (repeatable); use NAME in DATASETS.TRAIN / DATASETS.TEST",
    )
    return parser


def main(argv=None):
    """``convnext-d2-train``: parse, then hand over to Detectron2's ``launch``."""
    args = argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    return launch(
        run,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    main()
