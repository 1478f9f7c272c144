"""What ``convnext-d2-train`` and ``convnext-d2-lazy-train`` share around Detectron2's ``launch``.

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
import os
import sys
from typing import Callable, Iterator

from detectron2.engine import launch
from detectron2.utils import comm
from torch.multiprocessing import ProcessExitedException

from convnext_backbone import cli_errors
from convnext_backbone.cli_errors import EXIT_USER_ERROR, UserError

from .distributed import cpu_launch_notice

__all__ = ["UserError", "EXIT_USER_ERROR", "RESUME_FLAG", "user_errors", "check_no_flags_in_overrides", "launch_cli"]

RESUME_FLAG = "add --resume to the same command (before the config overrides)"


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
            try:
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

    return cli_errors.run_cli(prog, body)
