"""Train / evaluate / resume a Detectron2 LazyConfig with a ConvNeXt backbone (``configs/detectron2/lazy/``).

    convnext-d2-lazy-train --config-file configs/detectron2/lazy/mask_rcnn_convnext_tiny_fpn_3x_coco.py \\
        --num-gpus 8 train.init_checkpoint=convnext_tiny_1k_224.pth
    convnext-d2-lazy-train --config-file ... --resume        # continue from train.output_dir/last_checkpoint
    convnext-d2-lazy-train --config-file ... --eval-only train.init_checkpoint=output/model_final.pth

Overrides are ``key=value`` (Detectron2's ``LazyConfig.apply_overrides``). The loop is the one
Detectron2's ``tools/lazyconfig_train_net.py`` runs (SimpleTrainer / AMPTrainer, LR scheduler,
periodic checkpoints, evaluation, writers), with the pieces ``convnext-d2-train`` has:
``ConvNextCheckpointer`` (``train.init_checkpoint`` takes any ConvNeXt checkpoint format;
``train.init_checkpoint_strict=False`` loads the backbone tensors that fit), ``--register-coco``,
the CPU fallbacks (``train.device`` cuda -> cpu, AMP off), ``COCOEvaluator(use_fast_impl=False)``
where Detectron2's compiled ops are missing, and the same distributed behaviour: ``--num-gpus N``
on a machine without CUDA runs N CPU processes (gloo) through Detectron2's ``launch``.
Mistakes stop with one ``convnext-d2-lazy-train: error: ...`` line (exit status 2); Ctrl-C with one
line naming the last checkpoint and how to continue from it (exit status 130).
"""
from __future__ import annotations

import inspect

from detectron2.config import LazyConfig, instantiate
from detectron2.engine import default_writers, hooks
from detectron2.engine.train_loop import AMPTrainer, SimpleTrainer
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from omegaconf import DictConfig

from convnext_backbone.cli_errors import config_error
from convnext_backbone.messages import suggestion

from . import _cli
from ._cli import ProgressBar, TrainCommand, UserError, config_value
from .checkpoint import ConvNextCheckpointer
from .distributed import cpu_sync_batchnorm, create_ddp_model

__all__ = ["LazyTrainCommand", "load_config", "preflight", "build", "run", "main", "argument_parser", "STRICT_KEY"]

EPILOG = __doc__  # the --help epilog (inside a class body, __doc__ is the class's)
PROG = "convnext-d2-lazy-train"
STRICT_KEY = "train.init_checkpoint_strict"  # ours: read by this script, not by Detectron2's
LAZY_STRICT_HINT = (
    f"To load only the backbone tensors that fit (the rest are then listed as warnings), add {STRICT_KEY}=False "
    f"to the {PROG} command line."
)
SECTIONS = ("model", "dataloader", "train", "optimizer", "lr_multiplier")

try:
    from hydra.errors import OverrideParseException

    _OVERRIDE_ERRORS: tuple[type[Exception], ...] = (OverrideParseException, ValueError, KeyError)
except ImportError:  # apply_overrides then parses without hydra
    _OVERRIDE_ERRORS = (ValueError, KeyError)


def _has_fast_coco_eval() -> bool:
    try:
        from detectron2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


def _fast_coco_eval_fallback(cfg) -> list[str]:
    """The recipes ask for the fast COCO evaluator; without detectron2's compiled ops use pycocotools."""
    evaluator = cfg.dataloader.get("evaluator")
    is_coco = isinstance(evaluator, DictConfig) and "COCOEvaluator" in str(evaluator.get("_target_", ""))
    if is_coco and evaluator.get("use_fast_impl", True) and not _has_fast_coco_eval():
        evaluator.use_fast_impl = False
        return ["COCOEvaluator use_fast_impl needs Detectron2's compiled ops (detectron2._C): "
                "using the pycocotools path"]
    return []


def _accepts(target, name: str) -> bool:
    if isinstance(target, str):
        return True  # not resolved here: let instantiate judge
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _check_override_keys(cfg, overrides: list[str]) -> None:
    """An override of a key that does not exist would silently add it: refuse, with the closest key."""
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key == STRICT_KEY or "=" not in item:
            continue  # our own key; a malformed item is left to the override parser
        parent_key, _, leaf = key.rpartition(".")
        parent = cfg if not parent_key else config_value(cfg, parent_key)
        if not isinstance(parent, DictConfig) or leaf in parent:
            continue
        if "_target_" in parent:
            if _accepts(parent._target_, leaf):
                continue
            target = getattr(parent._target_, "__qualname__", parent._target_)
            raise UserError(f"override {item!r}: {target} takes no argument {leaf!r} (set at {parent_key})")
        siblings = [f"{parent_key}.{k}" if parent_key else str(k) for k in parent]
        close = suggestion(key, siblings, cutoff=0.6)
        raise UserError(f"override {item!r}: the config has no key {key}" + (f" (did you mean {close}?)" if close else ""))


def _evaluate(cfg, model):
    if "evaluator" not in cfg.dataloader:
        return {}
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process() and results:
        print_csv_format(results)
    return results


class _Job:
    def __init__(self, cfg, model, trainer=None, start_iter=0):
        self.cfg, self.model, self.trainer, self.start_iter = cfg, model, trainer, start_iter
        self.results = None


class LazyTrainCommand(TrainCommand):
    """``convnext-d2-lazy-train``: a LazyConfig (``key=value`` overrides), the loop of Detectron2's
    ``tools/lazyconfig_train_net.py`` with our checkpointer."""

    prog = PROG
    doc = EPILOG
    device_key, amp_key = "train.device", "train.amp.enabled"
    weights_key, strict_key, output_dir_key = "train.init_checkpoint", STRICT_KEY, "train.output_dir"
    dataset_names_key = "dataloader.{split}.dataset.names"
    dataset_names_help = "dataloader.*.dataset.names"
    config_required = ("--config-file is required (a LazyConfig .py, e.g. "
                       "configs/detectron2/lazy/mask_rcnn_convnext_tiny_fpn_3x_coco.py)")
    strict_hint = LAZY_STRICT_HINT

    def read_config(self, args):
        try:
            cfg = LazyConfig.load(args.config_file)
        except Exception as e:  # the config is the user's Python: any error in it is theirs
            raise config_error(args.config_file, e) from e
        opts = list(args.opts or [])
        _check_override_keys(cfg, opts)
        try:
            cfg = LazyConfig.apply_overrides(cfg, opts)
        except _OVERRIDE_ERRORS as e:  # a malformed key=value
            raise UserError(f"bad override in {opts}: {e}") from e
        for section in SECTIONS:
            if section not in cfg:
                raise UserError(f"{args.config_file} defines no `{section}` "
                                f"(a LazyConfig for this script needs {', '.join(SECTIONS)})")
        return cfg

    def cpu_fallbacks(self, cfg) -> list[str]:
        return super().cpu_fallbacks(cfg) + _fast_coco_eval_fallback(cfg)

    def check_batch(self, args, cfg) -> None:
        world = args.num_gpus * args.num_machines
        batch = cfg.dataloader.train.get("total_batch_size")
        if batch and batch % world:
            raise UserError(f"dataloader.train.total_batch_size {batch} does not split evenly over {world} processes")

    def meta_model(self, cfg):
        return instantiate(cfg.model)

    def _model(self, cfg):
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        return cpu_sync_batchnorm(model)

    def build_evaluation(self, args, cfg) -> _Job:
        model = self._model(cfg)
        self.load_weights(args, cfg, model)
        return _Job(cfg, model)

    def build_trainer(self, args, cfg) -> _Job:
        model = self._model(cfg)
        cfg.optimizer.params.model = model
        optimizer = instantiate(cfg.optimizer)
        train_loader = instantiate(cfg.dataloader.train)
        model = create_ddp_model(model, **cfg.train.get("ddp", {}))
        trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optimizer)
        checkpointer = ConvNextCheckpointer(
            model, cfg.train.output_dir, strict=self.strict(cfg), strict_hint=self.strict_hint, trainer=trainer
        )  # saves on rank 0 only
        job = _Job(cfg, model, trainer)
        trainer.register_hooks(_hooks(cfg, job, checkpointer))
        checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
        job.start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
        return job

    def train(self, cfg, job: _Job):
        job.trainer.train(job.start_iter, cfg.train.max_iter)
        return job.results

    def evaluate(self, cfg, job: _Job):
        return _evaluate(cfg, job.model)


def _hooks(cfg, job: _Job, checkpointer) -> list:
    """The hooks of Detectron2's ``lazyconfig_train_net.py``, the progress bar added; the periodic
    evaluation keeps its results on the job (the trainer returns none)."""
    def evaluate():
        job.results = _evaluate(cfg, job.model)
        return job.results

    main = comm.is_main_process()
    writers = default_writers(cfg.train.output_dir, cfg.train.max_iter) if main else None  # they open files
    return [
        hooks.IterationTimer(),
        ProgressBar() if main else None,
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
        hooks.EvalHook(cfg.train.eval_period, evaluate),
        hooks.PeriodicWriter(writers, period=cfg.train.log_period) if main else None,
    ]


_COMMAND = LazyTrainCommand()
argument_parser = _COMMAND.argument_parser
load_config = _COMMAND.load_config  # -> (cfg, notes): the overrides applied, the fallbacks taken
preflight = _COMMAND.preflight      # as convnext-d2-train's: checks before any worker starts


def build(args) -> _Job:
    """Per-process: datasets, config, model (weights loaded) and, unless ``--eval-only``, the trainer."""
    return _COMMAND.build(args)[1]


def run(args):
    """The per-process job that Detectron2's ``launch`` runs: ``build``, then train or evaluate."""
    cfg, job = _COMMAND.build(args)
    return _COMMAND.execute(args, cfg, job)


def main(argv=None) -> int:
    """``convnext-d2-lazy-train``: parse, check, then hand over to Detectron2's ``launch``."""
    return _cli.run(_COMMAND, argv)


if __name__ == "__main__":
    raise SystemExit(main())
