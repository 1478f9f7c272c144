"""The skeleton of ``convnext-d2-train`` and ``convnext-d2-lazy-train``: one ``TrainCommand``.

Both commands parse the same flags, register ``--register-coco`` datasets, check a job before
launching it (batch split, weights, model, datasets), fall back to CPU where CUDA is missing,
build a trainer in each process and write ``eval_results.json``. That flow is written once here;
a subclass says only what differs: how its config is read and merged, how its trainer is built,
how it evaluates. ``run(command, argv)`` drives it.

A mistake in what the user asked for (config key or value, missing file, unregistered dataset,
weights that do not fit) is reported as one line, as every command of this project does
(``convnext_backbone.cli_errors``)::

    convnext-d2-train: error: <message>
    (set CONVNEXT_DEBUG=1 for the traceback)

with exit status 2, whether it is found before launching (``check``) or while a worker sets up
(``user_errors``: the worker exits with status 2, ``launch`` stops the others). Errors during
training keep their traceback. Ctrl-C stops with one line saying where the last checkpoint is
and how to continue from it (exit status 130).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase, default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.multiprocessing import ProcessExitedException
from tqdm import tqdm

from convnext_backbone import cli_errors
from convnext_backbone.cli_errors import EXIT_USER_ERROR, UserError
from convnext_backbone.fileio import atomic_write

from .checkpoint import ConvNextCheckpointer
from .distributed import cpu_launch_notice, setup_cpu_worker
from .synthetic import register_coco

__all__ = [
    "UserError", "EXIT_USER_ERROR", "RESUME_FLAG", "TrainCommand", "ProgressBar", "run", "user_errors",
    "check_no_flags_in_overrides", "check_datasets", "check_weights", "register_datasets", "launch_cli",
    "config_value", "set_config_value",
]

RESUME_FLAG = "add --resume to the same command (before the config overrides)"
logger = logging.getLogger("detectron2_convnext")

# where registered datasets keep their files (Detectron2's COCO, LVIS, Cityscapes, VOC, ADE20K metadata)
_DATASET_PATHS = ("json_file", "image_root", "panoptic_json", "panoptic_root", "sem_seg_root", "image_dir", "gt_dir", "dirname")


# --- errors and launching ------------------------------------------------------------------------
@contextlib.contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """In a worker: a user mistake raised inside is printed as the one-line error, then ``SystemExit(2)``
    (an exception would reach ``launch`` as a traceback)."""
    try:
        with cli_errors.user_errors():
            yield
    except Exception as e:
        if not cli_errors.is_user_error(e) or os.environ.get(cli_errors.DEBUG_ENV):
            raise
        cli_errors.print_user_error(prog, e, f"[rank {comm.get_rank()}] " if comm.get_world_size() > 1 else "")
        raise SystemExit(EXIT_USER_ERROR) from None


def check_no_flags_in_overrides(opts) -> None:
    """``... SOLVER.MAX_ITER 10 --resume``: argparse hands ``--resume`` to the overrides; say so."""
    flags = [o for o in opts or [] if str(o).startswith("--")]
    if flags:
        raise UserError(f"{flags[0]} comes after the config overrides: put flags before the overrides (KEY VALUE / key=value)")


def _launch(worker: Callable, args, worker_args: tuple) -> int:
    """Detectron2's ``launch`` with the command line's distributed flags; a worker that stopped on
    a user mistake (its line is printed) becomes exit status 2, not a second traceback."""
    try:
        launch(worker, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args, *worker_args))
    except SystemExit as e:  # one process: the error line is printed
        if e.code == EXIT_USER_ERROR:
            return EXIT_USER_ERROR
        raise
    except ProcessExitedException as e:  # a worker printed its error line and exited with 2
        if e.exit_code == EXIT_USER_ERROR:
            return EXIT_USER_ERROR
        raise
    return 0


def launch_cli(prog: str, check: Callable[[], str], worker: Callable, args, *worker_args) -> int:
    """``check()`` here (-> the output directory), then ``launch(worker, ...)`` with the command
    line's distributed flags.

    Returns the exit status: 0, 2 after a one-line error (here or in a worker), 130 after Ctrl-C.
    """
    def body() -> int:
        with cli_errors.user_errors():
            output_dir = check()
        notice = cpu_launch_notice(prog, args.num_gpus, args.num_machines)
        if notice:
            print(notice, file=sys.stderr, flush=True)
        with cli_errors.interrupt_note(lambda: cli_errors.training_resume_note(output_dir, args.resume, RESUME_FLAG)):
            return _launch(worker, args, worker_args)

    return cli_errors.run_cli(prog, body)


# --- checks before launching ---------------------------------------------------------------------
def register_datasets(args) -> None:
    """``--register-coco NAME JSON IMAGE_ROOT``: in the launcher (for the checks) and in each worker
    (Detectron2's catalogs are per process)."""
    for name, json_file, image_root in args.register_coco or []:
        if not os.path.isfile(json_file):
            raise UserError(f"--register-coco {name}: annotation file not found: {json_file}")
        if not os.path.isdir(image_root):
            raise UserError(f"--register-coco {name}: image directory not found: {image_root}")
        register_coco(name, json_file, image_root)


def _check_registration_files(key: str, name: str) -> None:
    """The files a registered dataset names exist (a built-in one is registered without its data)."""
    meta = MetadataCatalog.get(name)
    for attr in _DATASET_PATHS:
        path = meta.get(attr)
        if isinstance(path, (str, os.PathLike)) and path and not os.path.exists(path):
            raise UserError(
                f"{key}: dataset {name!r} is registered, but its {attr} {path} does not exist (Detectron2's built-in "
                f"datasets are read from $DETECTRON2_DATASETS, default ./datasets); put the data there, or register "
                f"your copy with --register-coco {name} JSON IMAGE_ROOT"
            )


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
        _check_registration_files(key, name)


def check_weights(key: str, weights: str, output_dir: str, args) -> None:
    """A local checkpoint to start from exists, and ``--eval-only`` has weights to evaluate."""
    resuming = args.resume and os.path.isfile(os.path.join(output_dir, "last_checkpoint"))
    if weights and "://" not in weights and not resuming and not os.path.exists(weights):
        raise UserError(f"{key} not found: {weights}")
    if args.eval_only and not weights and not resuming:
        raise UserError(f"--eval-only with no weights would evaluate a randomly initialised model: set {key} "
                        f"(e.g. {os.path.join(output_dir, 'model_final.pth')}), or --resume from {output_dir}/last_checkpoint")


# --- config access common to yacs CfgNode and OmegaConf DictConfig (both Mappings) ---------------
def config_value(cfg, key: str, default: Any = None) -> Any:
    """``cfg["a"]["b"]`` for ``"a.b"``, or ``default`` where a part is missing."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def set_config_value(cfg, key: str, value: Any) -> None:
    parent, _, leaf = key.rpartition(".")
    setattr(config_value(cfg, parent) if parent else cfg, leaf, value)


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


class TrainCommand:
    """One Detectron2 training command: the steps both commands take, in order.

    What differs between the two is data (the class attributes: which config keys hold the
    device, AMP, weights, output directory, dataset names) and the methods above the "shared"
    line: reading the config, checking the batch, building the model and the trainer, training
    and evaluating. An instance travels to each worker process (pickled by ``launch``): keep it small.
    """

    prog = ""
    doc = ""                   # the --help epilog: the command module's docstring
    device_key = amp_key = ""  # what the CPU fallbacks turn off
    weights_key = ""           # the checkpoint to start from / evaluate
    strict_key = ""            # False: load only the backbone tensors that fit
    output_dir_key = ""
    dataset_names_key = ""     # "{split}" / "{SPLIT}": train or test
    dataset_names_help = ""    # where --register-coco's NAME goes
    dataset_example = ""       # what an unregistered dataset's error adds
    config_required: str | None = None  # the error for a missing --config-file, where one is needed
    strict_hint: str | None = None      # how to load non-strictly here (None: the yacs key)

    # -- the command's --------------------------------------------------------------------------
    def read_config(self, args):
        """The config file with the command line's overrides merged (mistakes as ``UserError``)."""
        raise NotImplementedError

    def check_batch(self, args, cfg) -> None:
        """The total batch splits evenly over ``--num-gpus x --num-machines`` processes."""
        raise NotImplementedError

    def meta_model(self, cfg):
        """The model from the config alone (no device move, no weights): ``preflight`` builds it on
        the meta device, so backbone / head mistakes show before launching."""
        raise NotImplementedError

    def build_trainer(self, args, cfg):
        """The trainer, weights loaded (or resumed): the job ``train`` runs."""
        raise NotImplementedError

    def build_evaluation(self, args, cfg):
        """With ``--eval-only``: the job ``evaluate`` runs (the model, ``load_weights`` done)."""
        raise NotImplementedError

    def train(self, cfg, job):
        """Train; -> the last evaluation's results (for ``eval_results.json``)."""
        raise NotImplementedError

    def evaluate(self, cfg, job):
        raise NotImplementedError

    # -- shared: config values -----------------------------------------------------------------
    def output_dir(self, cfg) -> str:
        return config_value(cfg, self.output_dir_key)

    def weights(self, cfg) -> str:
        return config_value(cfg, self.weights_key, "")

    def strict(self, cfg) -> bool:
        return bool(config_value(cfg, self.strict_key, True))

    def datasets(self, cfg, split: str) -> tuple[str, list]:
        """``(config key, dataset names)`` for ``split`` ("train" or "test"); one name may be a string."""
        key = self.dataset_names_key.format(split=split, SPLIT=split.upper())
        names = config_value(cfg, key, [])
        return key, [names] if isinstance(names, str) else list(names)

    # -- shared: parsing and config ----------------------------------------------------------------
    def argument_parser(self):
        parser = default_argument_parser(epilog=self.doc)
        parser.prog = self.prog
        parser.add_argument(
            "--register-coco", nargs=3, action="append", metavar=("NAME", "JSON", "IMAGE_ROOT"),
            help=f"register a COCO-format dataset under NAME (repeatable); use NAME in {self.dataset_names_help}",
        )
        return parser

    def load_config(self, args):
        """``(cfg, notes)``: the config with the command line applied, and the CPU fallbacks taken."""
        if not args.config_file and self.config_required:
            raise UserError(self.config_required)
        if args.config_file and not os.path.isfile(args.config_file):
            raise UserError(f"config file not found: {args.config_file}")
        check_no_flags_in_overrides(args.opts)
        cfg = self.read_config(args)
        return cfg, self.cpu_fallbacks(cfg)

    def cpu_fallbacks(self, cfg) -> list[str]:
        """Official recipes assume CUDA (and AMP); on a CPU-only machine run them on CPU, loudly."""
        notes = []
        if torch.cuda.is_available():
            return notes
        device = config_value(cfg, self.device_key, "cuda")
        if str(device).startswith("cuda"):
            notes.append(f"CUDA is not available: {self.device_key} {device} -> cpu")
            set_config_value(cfg, self.device_key, "cpu")
        if config_value(cfg, self.amp_key, False):
            notes.append(f"{self.amp_key} needs CUDA (Detectron2's AMPTrainer): disabled on CPU")
            set_config_value(cfg, self.amp_key, False)
        return notes

    # -- shared: the launching process -------------------------------------------------------------
    def preflight(self, args, cfg) -> None:
        """Checks that stop a bad job in the launching process, before any worker starts.

        The batch splits evenly over the processes, a local checkpoint to start from exists
        (``--eval-only`` has weights to evaluate), the model builds (on the meta device: no memory,
        no init), so backbone / head config mistakes surface here as one line, and last, the
        datasets are registered and their files are there.
        """
        register_datasets(args)
        if not args.eval_only:
            self.check_batch(args, cfg)
        check_weights(self.weights_key, self.weights(cfg), self.output_dir(cfg), args)
        with torch.device("meta"):
            self.meta_model(cfg)
        for split in ("test",) if args.eval_only else ("train", "test"):
            key, names = self.datasets(cfg, split)
            check_datasets(key, names, self.dataset_example)

    def check(self, args) -> str:
        """What the launcher checks before ``launch``; -> the output directory (for the Ctrl-C note)."""
        cfg, _ = self.load_config(args)
        self.preflight(args, cfg)
        return self.output_dir(cfg)

    # -- shared: each worker process ---------------------------------------------------------------
    def setup(self, args):
        """Per-process: the config, Detectron2's ``default_setup`` (logs, config dump, seed), our logger."""
        cfg, notes = self.load_config(args)
        default_setup(cfg, args)
        setup_logger(self.output_dir(cfg), distributed_rank=comm.get_rank(), name="detectron2_convnext")
        for note in notes:
            logger.warning(note)
        setup_cpu_worker()
        return cfg

    def load_weights(self, args, cfg, model) -> None:
        """``--eval-only``: the weights to evaluate (any ConvNeXt checkpoint format), or the last checkpoint."""
        checkpointer = ConvNextCheckpointer(
            model, self.output_dir(cfg), strict=self.strict(cfg), strict_hint=self.strict_hint
        )
        checkpointer.resume_or_load(self.weights(cfg), resume=args.resume)

    def build(self, args):
        """Per-process setup: datasets, config, then the job (trainer, or the model to evaluate).
        -> ``(cfg, job)``."""
        register_datasets(args)
        cfg = self.setup(args)
        return cfg, (self.build_evaluation if args.eval_only else self.build_trainer)(args, cfg)

    def execute(self, args, cfg, job):
        """Train or evaluate; the results also go to ``eval_results.json`` (rank 0)."""
        results = self.evaluate(cfg, job) if args.eval_only else self.train(cfg, job)
        self.write_results(cfg, results)
        return results

    def write_results(self, cfg, results) -> None:
        if comm.is_main_process() and results:
            path = os.path.join(self.output_dir(cfg), "eval_results.json")
            atomic_write(path, json.dumps(results, indent=2, default=float))

    def work(self, args):
        """The per-process job that Detectron2's ``launch`` runs: ``build``, then train or evaluate."""
        with user_errors(self.prog):  # setup mistakes: one line; errors while training keep their traceback
            cfg, job = self.build(args)
        return self.execute(args, cfg, job)


def _worker(args, command: TrainCommand):
    return command.work(args)


def run(command: TrainCommand, argv=None) -> int:
    """A training command line: parse, check here, then hand over to Detectron2's ``launch``.

    Returns the exit status (0, 2 after a one-line error, 130 after Ctrl-C).
    """
    args = command.argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    return launch_cli(command.prog, lambda: command.check(args), _worker, args, command)
