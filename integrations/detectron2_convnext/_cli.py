"""What ``convnext-d2-train`` and ``convnext-d2-lazy-train`` share around Detectron2's ``launch``.

A mistake in what the user asked for (config key or value, missing file, unregistered dataset,
weights that do not fit) is reported as one line, as the MMSegmentation CLI does::

    convnext-d2-train: error: <message>
    (set CONVNEXT_DEBUG=1 for the traceback)

with exit status 2, whether it is found before launching (``check``) or while a worker sets up
(``user_errors``: the worker exits with status 2, ``launch`` stops the others). Errors during
training keep their traceback.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator

from detectron2.engine import launch
from detectron2.utils import comm
from torch.multiprocessing import ProcessExitedException

from .distributed import cpu_launch_notice

__all__ = ["UserError", "USER_ERRORS", "EXIT_USER_ERROR", "user_errors", "check_no_flags_in_overrides", "launch_cli"]

EXIT_USER_ERROR = 2


class UserError(ValueError):
    """A mistake in the command line or config, reported as one line."""


# CheckpointError and UserError are ValueErrors; Detectron2's registries and yacs raise KeyError.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError)


def _message(e: BaseException) -> str:
    if isinstance(e, KeyError) and len(e.args) == 1:
        return str(e.args[0])  # str(KeyError) adds quotes
    return str(e)


@contextlib.contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """Turn a user mistake raised inside into the one-line error and ``SystemExit(2)``."""
    try:
        yield
    except USER_ERRORS as e:
        if os.environ.get("CONVNEXT_DEBUG"):
            raise
        rank = f"[rank {comm.get_rank()}] " if comm.get_world_size() > 1 else ""
        print(f"{prog}: error: {rank}{_message(e)}\n(set CONVNEXT_DEBUG=1 for the traceback)", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None


def check_no_flags_in_overrides(opts) -> None:
    """``... SOLVER.MAX_ITER 10 --resume``: argparse hands ``--resume`` to the overrides; say so."""
    flags = [o for o in opts or [] if str(o).startswith("--")]
    if flags:
        raise UserError(f"{flags[0]} comes after the config overrides: put flags before the overrides (KEY VALUE / key=value)")


def launch_cli(prog: str, check: Callable[[], None], worker: Callable, args, *worker_args) -> int:
    """``check()`` here, then ``launch(worker, ...)`` with the command line's distributed flags.

    Returns the exit status: 0, or 2 after a one-line error (here or in a worker).
    """
    try:
        with user_errors(prog):
            check()
        notice = cpu_launch_notice(prog, args.num_gpus, args.num_machines)
        if notice:
            print(notice, file=sys.stderr, flush=True)
        launch(
            worker,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args, *worker_args),
        )
    except SystemExit as e:  # one process: the error line is printed
        if e.code == EXIT_USER_ERROR:
            return EXIT_USER_ERROR
        raise
    except ProcessExitedException as e:  # a worker printed its error line and exited with 2
        if e.exit_code == EXIT_USER_ERROR:
            return EXIT_USER_ERROR
        raise
    return 0
