"""The published ConvNeXt architectures and how they are named: the one source of preset names,
sizes and version spellings for the core, every adapter, the benchmarks and the tests."""
from __future__ import annotations

from typing import Any

from .messages import closest

__all__ = ["PRESETS", "PRESET_FIELDS", "VERSIONS", "list_presets", "model_type_of_version", "preset_kwargs", "preset_name", "split_preset_name", "version_of"]

# (depths, hidden_sizes) as published: V1 in "A ConvNet for the 2020s", V2 in "ConvNeXt V2", and the
# CLIP ConvNeXt-XXL of "Reproducible scaling laws for contrastive language-image learning" (open_clip).
PRESETS: dict[str, dict[str, tuple[tuple[int, ...], tuple[int, ...]]]] = {
    "convnext": {
        "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
        "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
        "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
        "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
        "xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
        "xxlarge": ((3, 4, 30, 3), (384, 768, 1536, 3072)),  # CLIP's largest ConvNeXt (open_clip / timm)
    },
    "convnextv2": {
        "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
        "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
        "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
        "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
        "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
        "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
        "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
        "huge": ((3, 3, 27, 3), (352, 704, 1408, 2816)),
    },
}

# Fields a preset sets besides its shape (as timm builds that model).
PRESET_FIELDS: dict[str, dict[str, Any]] = {"convnext_xxlarge": {"norm_eps": 1e-5}}

# Every accepted spelling of a version -> the model type (= preset prefix, config.json model_type).
VERSIONS = {"v1": "convnext", "v2": "convnextv2", "convnext": "convnext", "convnextv2": "convnextv2"}


def preset_kwargs(model_type: str, size: str) -> dict[str, Any]:
    """A preset's config fields: its depths and widths, and any field it sets apart (PRESET_FIELDS)."""
    depths, hidden_sizes = PRESETS[model_type][size]
    return {"depths": list(depths), "hidden_sizes": list(hidden_sizes), **PRESET_FIELDS.get(f"{model_type}_{size}", {})}


def model_type_of_version(version: Any) -> str:
    """``'v1'`` / ``'V2'`` / ``'convnextv2'`` -> ``'convnext'`` / ``'convnextv2'``; anything else a ValueError."""
    model_type = VERSIONS.get(str(version).strip().lower())
    if model_type is None:
        raise ValueError(f"version must be one of 'v1', 'v2' (or 'convnext', 'convnextv2'), got {version!r}")
    return model_type


def version_of(model_type: str) -> str:
    """``'convnext'`` -> ``'v1'``, ``'convnextv2'`` -> ``'v2'``."""
    return "v2" if model_type == "convnextv2" else "v1"


def list_presets(version: str | None = None) -> list[str]:
    """Model names accepted by ``build_backbone``, e.g. ``convnext_tiny``, ``convnextv2_atto``."""
    types = [version] if version else list(PRESETS)
    for t in types:
        if t not in PRESETS:
            raise ValueError(f"unknown ConvNeXt version {t!r}; expected one of {list(PRESETS)}")
    return [f"{t}_{size}" for t in types for size in PRESETS[t]]


def split_preset_name(name: str, what: str = "preset") -> tuple[str, str]:
    """``'convnextv2_atto'`` (also ``'ConvNeXtV2-atto'``) -> ``('convnextv2', 'atto')``; a ValueError
    that suggests the closest preset otherwise."""
    key = str(name).strip().lower().replace("-", "_")
    model_type, _, size = key.partition("_")
    if model_type not in PRESETS or size not in PRESETS[model_type]:
        raise ValueError(f"unknown {what} {name!r}{closest(key, list_presets(), 'the presets')}")
    return model_type, size


def preset_name(model_type: str, depths, hidden_sizes) -> str | None:
    """The preset with this shape (``'convnextv2_atto'``), or None for a shape nobody published."""
    shape = (tuple(depths), tuple(hidden_sizes))
    size = next((s for s, preset in PRESETS.get(model_type, {}).items() if preset == shape), None)
    return f"{model_type}_{size}" if size else None
