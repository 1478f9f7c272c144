"""Reading a checkpoint file or directory into a state dict: safetensors, torch.save (always
``weights_only``), Detectron2 ``.pkl`` (numpy arrays only), training-checkpoint wrappers peeled."""
from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..cli_errors import UserError

__all__ = ["WEIGHT_FILES", "CheckpointError", "read_checkpoint"]

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class CheckpointError(UserError):
    """A checkpoint that cannot be read, recognised or loaded as asked (a ``ValueError``; one line in a CLI)."""


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Detectron2 ``.pkl`` files are pickled dicts of numpy arrays; allow nothing else."""

    _allowed = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict"), ("builtins", "set"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only numpy arrays are allowed in .pkl weights)")


def _find_weight_file(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    candidates = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin", ".pth", ".pt", ".pkl", ".ckpt"))
    if len(candidates) == 1:
        return candidates[0]
    raise CheckpointError(
        f"{directory}: expected one of {list(WEIGHT_FILES)} (or a single .safetensors/.pth/.pkl file); found "
        f"{[p.name for p in candidates] or 'none'}"
    )


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Peel training-checkpoint wrappers: {'model': ...}, {'state_dict': ...}, {'module': ...}."""
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        if isinstance(obj, Mapping):
            for key in ("model", "state_dict", "model_state", "module", "params"):
                if key in obj and isinstance(obj[key], Mapping):
                    obj = obj[key]
                    break
            else:
                break
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError(f"{path}: no state dict of tensors found (top-level keys: {list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__})")


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Return ``(state_dict, config_dict_or_None)`` from a file or a directory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    config = None
    if path.is_dir():
        if (path / "config.json").is_file():
            try:
                config = json.loads((path / "config.json").read_text())
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{path / 'config.json'} is not valid JSON: {e}") from e
        path = _find_weight_file(path)
    elif (path.parent / "config.json").is_file() and path.name in WEIGHT_FILES:
        config = json.loads((path.parent / "config.json").read_text())
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        elif path.suffix == ".pkl":
            with open(path, "rb") as f:
                obj = _NumpyOnlyUnpickler(f, encoding="latin1").load()
            state = _numpy_to_torch(obj)
        else:
            # weights_only=True: never execute code from a file a user downloaded.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # torch, pickle, zip and safetensors each raise their own types
        raise CheckpointError(f"{path}: not a readable checkpoint ({_why_unreadable(path, e)})") from e
    return _unwrap(state, path), config


def _why_unreadable(path: Path, e: Exception) -> str:
    """One line. torch's own messages run to paragraphs, and for a file that is no checkpoint at
    all they advise ``weights_only=False``, which would execute whatever the file holds."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror}"
    if not head:
        return "the file is empty"
    if path.suffix not in (".safetensors", ".pkl"):
        if head.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(path):
            return "a zip archive as torch.save writes, but cut short: a truncated download or copy?"
        if not head.startswith(b"PK\x03\x04") and not head.startswith(b"\x80"):
            return "neither a zip archive (torch.save) nor a pickle: not a checkpoint file"
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    if "Unsupported" in text:  # torch.load(weights_only=True) met something other than tensors
        detail = text[text.index("Unsupported"):].split(". ")[0].split("\n")[0]
        return f"it holds objects that are not loaded, for safety ({detail})"
    return f"{type(e).__name__}: {text.strip().splitlines()[0] if text.strip() else ''}"


def _numpy_to_torch(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, Mapping):
        return {k: _numpy_to_torch(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    return obj
