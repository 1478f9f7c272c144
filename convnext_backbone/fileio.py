"""Writing files whole or not at all, with the permissions the user expects."""
from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

__all__ = ["atomic_write", "default_file_mode", "safetensors_bytes"]


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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
