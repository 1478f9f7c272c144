"""``save_pretrained`` / ``from_pretrained``: our directory format (config.json +
model.safetensors in the official layout), and any other checkpoint or hub name read into a model."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..config import CONFIG_CLASSES
from ..families import get_family
from ..fileio import atomic_write, safetensors_bytes
from ..hub import resolve_pretrained
from ..processing import ConvNextImageProcessor
from .formats import Conversion, convert_state_dict, infer_config
from .loading import is_classifier, load_converted
from .reading import CheckpointError, read_checkpoint

__all__ = ["FOREIGN_CONVNEXT_TYPES", "from_pretrained", "open_checkpoint", "preprocessor_config", "save_pretrained"]

# config.json model types of other libraries' ConvNeXts whose weights convert (their fields are not ours).
FOREIGN_CONVNEXT_TYPES = ("dinov3_convnext",)

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
    processor = preprocessor_config(model.config.weights_family)
    if processor is not None:
        atomic_write(out / "preprocessor_config.json", json.dumps(processor, indent=2, sort_keys=True) + "\n")
    return out


def preprocessor_config(weights_family: str | None) -> dict[str, Any] | None:
    """transformers' ``preprocessor_config.json`` for weights of this family (its mean/std), or None
    when the family is not known (nothing is claimed about the weights then)."""
    if not weights_family:
        return None
    family = get_family(weights_family)
    processor = ConvNextImageProcessor(size={"shortest_edge": 224}, image_mean=family.mean, image_std=family.std)
    return {"image_processor_type": "ConvNextImageProcessor", **processor.to_dict()}


def open_checkpoint(path: str | os.PathLike) -> tuple[Path, Conversion, dict[str, Any] | None]:
    """Resolve (hub id or path), read and convert: ``(local path, conversion, config.json or None)``."""
    local = resolve_pretrained(path)
    state, config_dict = read_checkpoint(local)
    conv = convert_state_dict(state)
    if config_dict and config_dict.get("model_type") in FOREIGN_CONVNEXT_TYPES:
        config_dict = None  # another library's ConvNeXt config: the architecture is read off the shapes
    if config_dict and config_dict.get("model_type") not in CONFIG_CLASSES:
        raise CheckpointError(f"{local}: config.json model_type {config_dict.get('model_type')!r} is not a ConvNeXt")
    return local, conv, config_dict


def from_pretrained(cls: type, path: str | os.PathLike, strict: bool = True, **overrides: Any):
    """``cls`` built for the checkpoint at ``path`` (file, directory or hub id) with its weights; the
    report is ``model.load_report``. ``weights_family=...`` says where the weights come from when the
    file cannot (it decides the normalisation a processor, export and the adapters' checks expect)."""
    local, conv, config_dict = open_checkpoint(path)
    config = infer_config(conv.state_dict, config_dict, **overrides)
    model = cls(config)
    model.load_report = load_converted(model, conv, strict=strict, source=str(local), name=str(path))
    return model
