"""``save_pretrained`` / ``from_pretrained``: our directory format (config.json +
model.safetensors in the official layout), and any other checkpoint or hub name read into a model."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..config import CONFIG_CLASSES
from ..fileio import atomic_write, safetensors_bytes
from ..hub import resolve_pretrained
from .formats import Conversion, convert_state_dict, infer_config
from .loading import is_classifier, load_converted
from .reading import CheckpointError, read_checkpoint

__all__ = ["from_pretrained", "open_checkpoint", "save_pretrained"]

def save_pretrained(model: nn.Module, save_directory: str | os.PathLike) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into ``save_directory``, atomically.

    Also into the directory the model was loaded from (fine-tune, then save back: the usual
    transformers workflow): the caller named that directory, and the whole model is in memory.
    What refuses to write over its input is every command with a SRC and a DST (``convert``,
    ``export-onnx``, ...: ``fileio.check_not_overwriting``), whose output keeps only part of SRC.
    """
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    arch = "ConvNextForImageClassification" if is_classifier(model) else "ConvNextBackbone"
    cfg = dict(model.config.to_dict(), architectures=[arch])
    atomic_write(out / "model.safetensors", safetensors_bytes(state, {"format": "pt", "layout": "convnext_backbone"}))
    atomic_write(out / "config.json", json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return out


def open_checkpoint(path: str | os.PathLike) -> tuple[Path, Conversion, dict[str, Any] | None]:
    """Resolve (hub id or path), read and convert: ``(local path, conversion, config.json or None)``."""
    local = resolve_pretrained(path)
    state, config_dict = read_checkpoint(local)
    conv = convert_state_dict(state)
    if config_dict and config_dict.get("model_type") not in CONFIG_CLASSES:
        raise CheckpointError(f"{local}: config.json model_type {config_dict.get('model_type')!r} is not a ConvNeXt")
    return local, conv, config_dict


def from_pretrained(cls: type, path: str | os.PathLike, strict: bool = True, **overrides: Any):
    local, conv, config_dict = open_checkpoint(path)
    config = infer_config(conv.state_dict, config_dict, **overrides)
    model = cls(config)
    model.load_report = load_converted(model, conv, strict=strict, source=str(local))
    return model
