"""On-disk layout of a feature export, atomic writes, the manifest and ``--verify``.

``OUT/`` holds::

    export_config.json     settings + model fingerprint; a re-run with other settings is refused
    features/<rel>.<fmt>   one file per image, mirroring the input tree (<rel> keeps the extension)
    manifest.jsonl         one JSON line per input image, sorted by source, written at the end
    manifest.parts/        per-run, per-rank lines appended (and flushed) as files complete;
                           merged into manifest.jsonl and removed when a run finishes
    .partial/              temp files; a file is renamed into features/ only once complete
    .export.lock           while a run writes: its lock and who holds it (``OutputLock``)

Why: a file in ``features/`` is either complete or absent (``fileio.atomic_write``: temp file +
fsync + ``os.replace``), and its manifest line is written only after the rename, so a killed
run can always be resumed by re-running it, and ``verify`` can tell a finished export from an
interrupted one. Every file gets the permissions of the user's umask (a shared file system
needs group/other read), and two identical runs write byte-identical files: no time stamps or
run ids in any file that stays (the part files' names carry one; they are removed at the end).
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shlex
import shutil
import socket
import struct
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cli_errors import UserError
from ..fileio import atomic_write, safetensors_bytes

__all__ = [
    "CONFIG_NAME", "FEATURES_DIR", "FORMATS", "LOCK_NAME", "MANIFEST_NAME", "PARTS_DIR", "PARTIAL_DIR",
    "ManifestPart", "OutputInUse", "OutputLock", "describe_file", "describe_lock_record", "load_features", "merge_manifest", "read_manifest",
    "serialize", "sha256_file", "verify_export",
]

CONFIG_NAME = "export_config.json"
MANIFEST_NAME = "manifest.jsonl"
PARTS_DIR = "manifest.parts"
FEATURES_DIR = "features"
PARTIAL_DIR = ".partial"
LOCK_NAME = ".export.lock"
FORMATS = {"safetensors": ".safetensors", "npz": ".npz"}
_ST_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


# -- files ------------------------------------------------------------------------------------
def serialize(tensors: dict[str, torch.Tensor], fmt: str, metadata: dict[str, str] | None = None) -> bytes:
    """Bytes of one feature file (``safetensors``, or ``npz`` which cannot hold bfloat16).

    The same tensors and metadata always give the same bytes (files are content-addressed by
    their sha256 in the manifest): the safetensors header is re-written with sorted keys (the
    library writes its metadata in hash-map order, which changes from process to process), and
    the npz zip entries get a fixed time stamp instead of the current time. ``npz`` has no place
    for ``metadata``; the manifest holds the same information.
    """
    if fmt == "safetensors":
        return safetensors_bytes(tensors, metadata)
    if fmt == "npz":
        if any(v.dtype == torch.bfloat16 for v in tensors.values()):
            raise ValueError("npz (numpy) has no bfloat16; use --format safetensors or --dtype float16/float32")
        return _npz_bytes({k: v.numpy() for k, v in tensors.items()})
    raise ValueError(f"format must be one of {list(FORMATS)}, got {fmt!r}")


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """What ``np.savez`` writes (stored, zip64 entries named ``<key>.npy``), with a fixed entry time."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)
    return buf.getvalue()


def load_features(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read one exported feature file back as ``{feature: (C, H, W) tensor}``."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path) as z:
            return {k: torch.from_numpy(z[k]) for k in z.files}
    from safetensors.torch import load_file

    return load_file(str(path))


def describe_file(path: Path) -> dict[str, dict[str, Any]]:
    """``{feature: {"shape", "dtype"}}`` from the file's header (raises ValueError if unreadable)."""
    if path.suffix == ".npz":
        try:
            with np.load(path) as z:
                return {k: {"shape": list(z[k].shape), "dtype": str(z[k].dtype)} for k in z.files}
        except Exception as e:  # zipfile/numpy raise many types for damaged files
            raise ValueError(f"unreadable npz ({type(e).__name__}: {e})") from e
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("file shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:
            raise ValueError(f"implausible safetensors header length {n}")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"damaged safetensors header ({e})") from e
    header.pop("__metadata__", None)
    return {k: {"shape": list(v["shape"]), "dtype": _ST_DTYPES.get(v["dtype"], v["dtype"])} for k, v in header.items()}


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# -- lock ---------------------------------------------------------------------------------------
class OutputInUse(UserError):
    """Another export is writing into the same directory."""


class OutputLock:
    """One export run at a time writes into an output directory.

    ``fcntl.flock`` on ``OUT/.export.lock``: the kernel drops the lock when the process that
    holds it ends, however it ends (``kill -9`` too), so a lock left by a killed run is simply
    taken (and said so); no pid guessing, no time-outs. The file records the holder (pid, host,
    start time, command) for the message a refused run shows, and is removed when the run ends,
    so a finished export directory holds nothing that changes from run to run. Under torchrun
    rank 0 holds it for the whole run (the ranks of one run share it). On a file system without
    ``flock`` (or a system without ``fcntl``) the run goes on unlocked (``unsupported`` says why).
    """

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / LOCK_NAME
        self._fd: int | None = None
        self.previous: dict[str, Any] | None = None  # the record a run that did not finish left
        self.unsupported: str | None = None

    def acquire(self) -> OutputLock:
        """Take the lock; ``OutputInUse`` naming the holder if another run has it."""
        try:
            import fcntl  # POSIX only: imported here, the package stays importable elsewhere
        except ImportError:
            self.unsupported = f"{self.path.parent} cannot be locked on this system (no fcntl)"
            return self
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_record(fd)
                os.close(fd)
                raise OutputInUse(f"another export is writing into {self.path.parent} ({describe_lock_record(holder)}); wait for it "
                                  "to finish, or stop it and run the same command again to resume") from None
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                self.unsupported = f"{self.path.parent} cannot be locked ({e.strerror})"
                return self
            # the run before may have removed the file between our open and our flock: retry on the new one
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            st = os.fstat(fd)
            if current is not None and (current.st_dev, current.st_ino) == (st.st_dev, st.st_ino):
                break
            os.close(fd)
        else:
            raise OSError(f"{self.path}: could not take the lock (the file kept being replaced)")
        self._fd = fd
        self.previous = _read_record(fd) or None
        record = json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": shlex.join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
        }).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()  # while still held: a run that opened it meanwhile sees it gone and retries
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None


def _read_record(fd: int) -> dict[str, Any]:
    try:
        rec = json.loads(os.pread(fd, 65536, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def describe_lock_record(record: dict[str, Any] | None) -> str:
    if not record:
        return "it has not recorded itself yet"
    return (f"pid {record.get('pid')} on {record.get('host')}, started {record.get('started')}: "
            f"{record.get('command')}")


# -- manifest ---------------------------------------------------------------------------------
class ManifestPart:
    """One run's, one rank's manifest lines: appended and flushed as each file completes."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115  (held open for appends; closed by close())
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record) + "\n"
        with self._lock:
            self._f.write(line)
            self._f.flush()

    def close(self) -> None:
        with self._lock:
            self._f.close()


def _jsonl(path: Path) -> Iterator[dict[str, Any] | None]:
    """Records of a JSON-lines file; None for a line that does not parse (a kill mid-write)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                yield None
                continue
            yield rec if isinstance(rec, dict) and "source" in rec else None


def _manifest_files(out_dir: Path) -> list[Path]:
    files = [out_dir / MANIFEST_NAME] if (out_dir / MANIFEST_NAME).is_file() else []
    parts = out_dir / PARTS_DIR
    # part names start with a zero-padded time stamp: sorted = chronological, later lines win
    return files + (sorted(parts.glob("*.jsonl")) if parts.is_dir() else [])


def read_manifest(
    out_dir: Path, sources: set[str] | None = None, fields: tuple[str, ...] | None = None
) -> dict[str, dict[str, Any]]:
    """``{source: latest record}`` over the merged manifest and any unmerged parts.

    ``sources`` / ``fields`` keep only those records / keys: a rank of a huge export holds
    just what it needs to decide what is done.
    """
    records: dict[str, dict[str, Any]] = {}
    for path in _manifest_files(out_dir):
        for rec in _jsonl(path):
            if rec is not None and (sources is None or rec["source"] in sources):
                records[rec["source"]] = rec if fields is None else {k: rec.get(k) for k in fields}
    return records


def merge_manifest(out_dir: Path) -> dict[str, str]:
    """Fold the parts into ``manifest.jsonl`` (one line per source, sorted), then drop the parts.

    The new manifest replaces the old atomically before any part is removed, so a crash here
    loses nothing: the next run reads both again. -> ``{source: status or error reason}``.
    """
    files = _manifest_files(out_dir)
    lines: dict[str, str] = {}  # kept as text: a million parsed records would not fit comfortably
    outcome: dict[str, str] = {}
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    source = rec["source"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # blank, or cut by a kill
                lines[source] = line if line.endswith("\n") else line + "\n"
                outcome[source] = "ok" if rec.get("status") == "ok" else str(rec.get("error"))
    atomic_write(out_dir / MANIFEST_NAME, "".join(lines[s] for s in sorted(lines)), fsync=True)
    for f in files:
        if f.parent.name == PARTS_DIR:
            f.unlink(missing_ok=True)
    shutil.rmtree(out_dir / PARTS_DIR, ignore_errors=True)
    return outcome


def output_is_valid(out_dir: Path, record: dict[str, Any], check: str = "checksum") -> bool:
    """A recorded output counts as done if it exists with the recorded size (and sha256)."""
    if record.get("status") != "ok" or not record.get("output"):
        return False
    path = out_dir / record["output"]
    try:
        if path.stat().st_size != record.get("bytes"):
            return False
    except OSError:
        return False
    return check != "checksum" or sha256_file(path) == record.get("sha256")


# -- verify -----------------------------------------------------------------------------------
def _check_record(out_dir: Path, rec: dict[str, Any]) -> str | None:
    path = out_dir / rec["output"]
    if not path.is_file():
        return "missing file"
    size = path.stat().st_size
    if size != rec.get("bytes"):
        return f"size {size} bytes, manifest says {rec.get('bytes')}"
    if sha256_file(path) != rec.get("sha256"):
        return "sha256 mismatch (file content changed or damaged)"
    try:
        found = describe_file(path)
    except ValueError as e:
        return str(e)
    want = {k: {"shape": v["shape"], "dtype": v["dtype"]} for k, v in rec.get("features", {}).items()}
    if found != want:
        return f"features in file {found} differ from manifest {want}"
    return None


def verify_export(out_dir: str | os.PathLike, threads: int = 4, progress: bool = True) -> tuple[list[str], dict[str, int]]:
    """Recompute every checksum and check shapes; -> (problems naming files, counts)."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    problems: list[str] = []
    if not (out_dir / MANIFEST_NAME).is_file() and not (out_dir / PARTS_DIR).is_dir():
        return [f"{out_dir}: no {MANIFEST_NAME}; not a feature export directory"], {}
    if (out_dir / PARTS_DIR).is_dir() and any((out_dir / PARTS_DIR).glob("*.jsonl")):
        problems.append(
            f"{out_dir / PARTS_DIR}: unmerged manifest parts; the export was interrupted -- re-run the same export command to finish it"
        )
    seen: dict[str, int] = {}
    bad_lines = 0
    for path in _manifest_files(out_dir):
        if path.parent.name == PARTS_DIR:
            continue
        for rec in _jsonl(path):
            if rec is None:
                bad_lines += 1
            else:
                seen[rec["source"]] = seen.get(rec["source"], 0) + 1
    if bad_lines:
        problems.append(f"{out_dir / MANIFEST_NAME}: {bad_lines} line(s) are not valid JSON records")
    problems += [f"{src}: listed {n} times in {MANIFEST_NAME}" for src, n in sorted(seen.items()) if n > 1]
    records = read_manifest(out_dir)
    ok = [r for r in records.values() if r.get("status") == "ok"]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        results = pool.map(lambda r: (r, _check_record(out_dir, r)), ok)
        for rec, why in tqdm(results, total=len(ok), desc="verify", unit="file", disable=not progress):
            if why:
                problems.append(f"{out_dir / rec['output']}: {why} (source {rec['source']})")
    referenced = {str(Path(r["output"])) for r in ok}
    feat_dir = out_dir / FEATURES_DIR
    orphans = sorted(
        p for p in (feat_dir.rglob("*") if feat_dir.is_dir() else [])
        if p.is_file() and str(p.relative_to(out_dir)) not in referenced
    )
    problems += [f"{p}: not in the manifest (left by an interrupted run?)" for p in orphans]
    counts = {
        "ok": len(ok), "error": sum(r.get("status") == "error" for r in records.values()), "problems": len(problems),
    }
    return problems, counts
