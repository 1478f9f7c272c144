"""How every command line ends when the user got something wrong, or pressed Ctrl-C.

One mechanism for ``convnext-backbone`` and the training commands (``convnext-d2-train``,
``convnext-d2-lazy-train``, ``convnext-mmseg-train``, ``convnext-mmdet-train``), each of whose
``main`` runs its body through ``run_cli``:

* a user mistake: ``PROG: error: <message>`` on stderr, exit status 2 (the training commands,
  whose tracebacks run long, add a line ``(set CONVNEXT_DEBUG=1 for the traceback)``);
* Ctrl-C: ``PROG: interrupted; <how to resume>`` on stderr, exit status 130 (128 + SIGINT, as a
  shell reports it); the note comes from the innermost ``interrupt_note`` the command was in;
* anything else is a bug and keeps its traceback.

What counts as a user mistake (``is_user_error``): a ``UserError`` (the core's ``CheckpointError``
and each command's own error types are ones) anywhere, and a file-system error (missing file,
permission denied, read-only file system, disk full...). Inside a ``user_errors()`` block (a
command's setup: reading its config, its images, building its model) any ``ValueError``,
``KeyError`` or ``OSError`` counts too: config libraries, registries and image decoders raise
them for a bad value, name or file, while in the middle of training they would more likely be
bugs.

Imports nothing beyond the standard library: ``convnext-backbone --help`` stays fast.
"""
from __future__ import annotations

import contextlib
import errno
import os
import sys
import traceback
from collections.abc import Callable, Iterator

__all__ = [
    "DEBUG_ENV", "EXIT_INTERRUPTED", "EXIT_USER_ERROR", "Interrupted", "UserError", "config_error", "interrupt_note",
    "is_user_error", "print_user_error", "run_cli", "training_resume_note", "user_errors",
]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
DEBUG_ENV = "CONVNEXT_DEBUG"
DEBUG_HINT = f"(set {DEBUG_ENV}=1 for the traceback)"
_GENERIC_NOTE = "files are written whole or not at all; run the same command again"

# errors of the file system, not of the program: reported as one line naming the path
_FILE_SYSTEM_ERRNOS = frozenset(
    getattr(errno, name) for name in (
        "ENOENT", "EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT", "EEXIST", "ENOTDIR", "EISDIR", "ENAMETOOLONG",
        "ELOOP", "ENOTEMPTY", "EMFILE", "ENFILE", "EIO", "EFBIG", "ETXTBSY",
    ) if hasattr(errno, name)
)


class UserError(ValueError):
    """A mistake in what the user asked for (arguments, config, files): reported as one line.

    A ``ValueError`` so that code which caught ``ValueError`` for bad arguments still does."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C with the note saying how to resume (``args[0]``; None: say nothing, e.g. rank > 0)."""


def is_user_error(e: BaseException) -> bool:
    if isinstance(e, UserError):
        return True
    return isinstance(e, OSError) and e.errno in _FILE_SYSTEM_ERRNOS


def _message(e: BaseException) -> str:
    if isinstance(e, KeyError) and len(e.args) == 1:
        return str(e.args[0])  # str(KeyError) adds quotes
    return str(e) or type(e).__name__


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Inside: a ``ValueError``, ``KeyError`` or ``OSError`` is the user's mistake (re-raised as ``UserError``)."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, KeyError, OSError) as e:
        if os.environ.get(DEBUG_ENV):
            raise  # the original, with its own type, for the traceback
        raise UserError(_message(e)) from e


def config_error(path: str, e: BaseException) -> UserError:
    """The one line for what reading the config file ``path`` raised (a Python config is the user's
    code, a YAML one the user's text): the file, the line when known, the problem."""
    if isinstance(e.__cause__, SyntaxError):  # Detectron2 and mmengine re-raise it with less in the message
        e = e.__cause__
    if isinstance(e, SyntaxError) and e.lineno:
        where = e.filename if e.filename and not e.filename.startswith("<") else path  # ast.parse: "<unknown>"
        return UserError(f"{where}, line {e.lineno}: {e.msg}")
    mark = getattr(e, "problem_mark", None)  # YAML
    if mark is not None:
        return UserError(f"{mark.name or path}, line {mark.line + 1}: {getattr(e, 'problem', None) or e}")
    here = os.path.abspath(path)
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename) == here]
    return UserError(f"{path}{f', line {lines[-1]}' if lines else ''}: {type(e).__name__}: {_message(e)}")


@contextlib.contextmanager
def interrupt_note(note: Callable[[], str | None]) -> Iterator[None]:
    """Ctrl-C inside: ``note()`` (called then, so it can count what is done) says how to resume.

    The innermost block's note wins; a note that fails to compute gives way to the generic one.
    """
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt:
        try:
            text = note()
        except Exception:
            text = _GENERIC_NOTE
        raise Interrupted(text).with_traceback(sys.exc_info()[2]) from None  # where it was interrupted, for CONVNEXT_DEBUG


def print_user_error(prog: str, e: BaseException, prefix: str = "", debug_hint: bool = True) -> None:
    print(f"{prog}: error: {prefix}{_message(e)}" + (f"\n{DEBUG_HINT}" if debug_hint else ""), file=sys.stderr, flush=True)


def run_cli(prog: str, body: Callable[[], int | None], debug_hint: bool = True) -> int:
    """Run a command's ``body``; -> its exit status, 2 after a user mistake, 130 after Ctrl-C."""
    try:
        return int(body() or 0)
    except KeyboardInterrupt as e:
        if os.environ.get(DEBUG_ENV):
            raise
        note = e.args[0] if isinstance(e, Interrupted) else _GENERIC_NOTE
        if note:
            print(f"{prog}: interrupted; {note}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as e:
        if not is_user_error(e) or os.environ.get(DEBUG_ENV):
            raise
        print_user_error(prog, e, debug_hint=debug_hint)
        return EXIT_USER_ERROR


def training_resume_note(work_dir: str, resuming: bool, resume_flag: str = "add --resume to the same command") -> str:
    """Where the last checkpoint is (``WORK_DIR/last_checkpoint``, as Detectron2 and mmengine both
    write it) and how to continue from it."""
    try:
        with open(os.path.join(work_dir, "last_checkpoint"), encoding="utf-8") as f:
            name = f.read().strip()
    except OSError:
        name = ""
    # Detectron2 records a name in work_dir, mmengine a path
    last = next((p for p in (os.path.join(work_dir, name), name) if name and os.path.isfile(p)), None)
    if last is None:
        return f"no checkpoint was saved in {work_dir} yet; run the same command again to start over"
    how = "run the same command again" if resuming else resume_flag
    return f"the last checkpoint is {last}; {how} to continue from it"
