"""Writing files whole or not at all, with the permissions the user expects."""
from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "check_not_overwriting", "default_file_mode", "safetensors_bytes"]


def default_file_mode() -> int:
    """What ``open(path, "w")`` would give a new file: 0666 minus the process umask."""
    try:
        with open("/proc/self/status") as f:  # reading it does not change the umask (thread-safe)
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read it the only other way, and put it back at once
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], object] | bytes | str, *,
                 tmp_dir: str | os.PathLike | None = None, suffix: str = ".tmp", fsync: bool = False) -> Path:
    """Fill a temp file next to ``path`` (``write(tmp_path)``, or the given bytes/text), then rename it into place.

    A reader never sees a half-written ``path``, and a failure leaves the old file (or none)
    and no temp file behind. ``tmp_dir`` must be on the same file system. The file gets the
    mode a normally created file would (``mkstemp`` alone gives 0600, unreadable to a group
    sharing the results). ``fsync`` makes the content durable before the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir or path.parent, prefix=f".{path.name[:64]}.", suffix=suffix)
    try:
        if isinstance(write, (bytes, str)):
            with os.fdopen(fd, "wb") as f:
                f.write(write.encode("utf-8") if isinstance(write, str) else write)
                if fsync:
                    f.flush()
                    os.fsync(f.fileno())
        else:
            os.close(fd)
            write(tmp)
            if fsync:
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename == tmp:  # name the user's file, not our temp name
            e.filename, e.filename2 = str(path), None
        raise
    return path


def safetensors_bytes(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> bytes:
    """A safetensors file as bytes, identical for identical content: the library writes its JSON
    header in a varying key order, so the header is rewritten with sorted keys (data offsets are
    relative to the end of the header, so the tensor bytes stay as they are), padded to 8 bytes."""
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=dict(metadata) if metadata else None)
    (n,) = struct.unpack("<Q", data[:8])
    header = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(",", ":")).encode("utf-8")
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data[8 + n:]


def _identity(path: str) -> tuple[int, int] | None:
    """The file behind ``path`` (links followed), or None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_not_overwriting(sources: Iterable[str | os.PathLike | None], destination: str | os.PathLike, *,
                          directory: bool = False) -> None:
    """Raise ``ValueError`` when writing ``destination`` could destroy one of ``sources``.

    The one check of every command that reads SRC and writes DST (``convert``, ``export-onnx``,
    ``show``, the transformers converter): the output is derived from the input and loses part of
    it (a classifier head, a config), so writing it over the input is never what was meant. With
    links resolved (``dst/.``, a symlinked directory, a hard link all count), refused are: DST is
    a source; for a ``directory`` DST, DST holds a source file, or a file in DST is a source file
    (a link to it). ``sources`` are files or directories (all files directly in them count);
    None and paths that do not exist (a hub id) are skipped. ``save_pretrained(dir)`` does not
    call this: the caller asks for exactly that directory, with the whole model in memory.
    """
    dest = os.path.realpath(destination)
    kind = "directory" if directory else "file"
    for src in sources:
        if src is None or not os.path.exists(src):
            continue
        real = os.path.realpath(src)
        if dest == real:
            via = f" (both are {real})" if os.path.abspath(src) != os.path.abspath(destination) else ""
            raise ValueError(f"{destination} is the input {src}{via}: the output would replace it; choose another output {kind}")
        if os.path.isdir(real):
            files = [e.path for e in os.scandir(real) if e.is_file()]
            holders = set()
        else:  # the folder it is in, reached through the path given and through its links
            files = [real]
            holders = {os.path.dirname(real), os.path.realpath(os.path.dirname(os.path.abspath(src)))}
        if directory and dest in holders:
            raise ValueError(f"{destination} is the directory that holds the input {src}: the output would be written "
                             f"over or beside it; choose another output directory")
        inputs = {_identity(f): f for f in files}
        inputs.pop(None, None)
        outputs = [os.path.join(destination, e.name) for e in os.scandir(dest)] if directory and os.path.isdir(dest) else [destination]
        for out in outputs:
            same = inputs.get(_identity(out))
            if same is not None:
                link = "" if os.path.abspath(out) == same else " (a link to it)"
                raise ValueError(f"{out} is the input file {same}{link}: {'writing into ' + str(destination) if directory else 'the output'} "
                                 f"would replace it; choose another output {kind}")
