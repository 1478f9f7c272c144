"""Architecture names -> configs: the one resolver every adapter uses.

MMSegmentation / MMDetection ``arch=``, Detectron2 ``MODEL.CONVNEXT.NAME`` / ``VERSION`` +
``DEPTHS`` / ``DIMS``, LazyConfig ``name=``, ``build_backbone`` and ``export --preset`` all come
here, so a name means the same everywhere and every mistake gets the same message.
"""
from __future__ import annotations

from typing import Any

from .config import CONFIG_CLASSES, FIELDS, ConvNextConfig
from .messages import closest
from .presets import PRESETS, list_presets, model_type_of_version, preset_kwargs, split_preset_name

__all__ = ["config_from_arch", "config_from_preset_name", "resolve_arch"]


def config_from_preset_name(name: str, **overrides: Any) -> ConvNextConfig:
    """``convnext_tiny`` / ``convnextv2_atto`` (also ``convnext-tiny``) -> config."""
    model_type, size = split_preset_name(name)
    return CONFIG_CLASSES[model_type].from_preset(size, **overrides)


def resolve_arch(arch: str | dict, version: str | None = None) -> tuple[str, dict[str, Any]]:
    """``arch`` (+ ``version``) -> ``(model_type, dict(depths=[...], hidden_sizes=[...], ...))`` (a preset
    adds the fields it sets besides its shape, e.g. ``norm_eps`` for ``convnext_xxlarge``). Accepted:

    - a preset name: ``'convnext_tiny'``, ``'convnextv2_atto'`` (``-`` for ``_`` and any case);
    - a size name: ``'tiny'``, with ``version='v1'|'v2'`` where the size exists in both (without a
      version, tiny/base/large mean V1, as mmpretrain's and the official ``arch`` and Detectron2's
      NAME have it; a size of one version only picks that version);
    - ``dict(depths=[...], dims=[...])`` (official name) or ``hidden_sizes`` (HF name), V1
      unless ``version='v2'``.

    Every bad value is a ``ValueError`` naming the accepted ones.
    """
    if version is not None:
        try:
            model_type = model_type_of_version(version)
        except ValueError:
            raise ValueError(f"version must be one of 'v1', 'v2' (or None to infer it from arch), got {version!r}") from None
    else:
        model_type = None
    if isinstance(arch, dict):
        return model_type or "convnext", _shape_from_dict(arch)
    if not isinstance(arch, str):
        raise ValueError(f"arch must be a preset name such as 'convnext_tiny' / 'convnextv2_atto' or a dict(depths, dims), got {arch!r}")
    model_type, size = _preset_from_name(arch, model_type, version)
    return model_type, preset_kwargs(model_type, size)


def _shape_from_dict(arch: dict) -> dict[str, list[int]]:
    """``dict(depths, dims)`` (or ``hidden_sizes``) -> checked ``{depths, hidden_sizes}``; an error
    names the key the caller wrote."""
    arch = dict(arch)
    depths, dims, hidden = arch.pop("depths", None), arch.pop("dims", None), arch.pop("hidden_sizes", None)
    widths = FIELDS["hidden_sizes"].rule
    if dims is not None and hidden is not None and widths("dims", dims) != widths("hidden_sizes", hidden):
        raise ValueError(f"arch gives both dims={dims} and hidden_sizes={hidden}; give one of them")
    width_key = "dims" if hidden is None else "hidden_sizes"
    dims = dims if dims is not None else hidden
    if arch:
        raise ValueError(f"arch as a dict takes only 'depths' and 'dims' (or 'hidden_sizes'); unknown keys {sorted(arch)}")
    if not depths or not dims:
        raise ValueError(
            "arch as a dict needs both 'depths' and 'dims' (or 'hidden_sizes'), e.g. "
            f"dict(depths=[3, 3, 9, 3], dims=[96, 192, 384, 768]); got depths={depths}, dims={dims}"
        )
    return {"depths": FIELDS["depths"].rule("depths", depths), "hidden_sizes": widths(width_key, dims)}


def _preset_from_name(arch: str, model_type: str | None, version: Any) -> tuple[str, str]:
    """A preset or size name (+ the model type ``version`` asked for) -> ``(model_type, size)``."""
    key = arch.strip().lower().replace("-", "_")
    if "_" in key:
        try:
            prefix, size = split_preset_name(arch, what="arch")
        except ValueError as e:
            raise ValueError(f"{e} (or a size name with version='v1'|'v2')") from None
        if model_type is not None and model_type != prefix:
            raise ValueError(f"arch {arch!r} is a {prefix} preset but version={version!r} asks for {model_type}")
        return prefix, size
    owners = [t for t in PRESETS if key in PRESETS[t]]
    if not owners:
        sizes = sorted({s for t in PRESETS for s in PRESETS[t]})
        raise ValueError(
            f"unknown arch {arch!r}{closest(key, sizes, 'the sizes')} "
            f"(with version='v1'|'v2'), or a full preset name from {list_presets()}"
        )
    if model_type is None:
        return ("convnext" if "convnext" in owners else owners[0]), key
    if model_type not in owners:
        raise ValueError(
            f"arch {arch!r} does not exist in ConvNeXt {'V2' if model_type == 'convnextv2' else 'V1'}; "
            f"{model_type} sizes are {list(PRESETS[model_type])}"
        )
    return model_type, key


def config_from_arch(
    arch: str | dict,
    version: str | None = None,
    *,
    layer_scale_init_value: float | None = None,
    layer_scale_v1_only: bool = False,
    **overrides: Any,
) -> ConvNextConfig:
    """The core config for an architecture name (see ``resolve_arch``) plus config fields.

    The V2 layer-scale rule lives here: ConvNeXt V2 has no layer scale (GRN replaces it).
    ``layer_scale_init_value=None`` keeps the version's default (1e-6 for V1, none for V2); a
    non-zero value for a V2 architecture is a ``ValueError``, unless ``layer_scale_v1_only`` says
    the value comes from a framework setting documented as V1-only (Detectron2's
    ``MODEL.CONVNEXT.LAYER_SCALE_INIT_VALUE``, whose default is V1's 1e-6): then V2 ignores it.
    """
    clash = sorted(set(overrides) & {"depths", "hidden_sizes", "num_stages"})
    if clash:
        raise ValueError(f"{clash} come from arch={arch!r}; give the architecture once, through arch")
    model_type, shape = resolve_arch(arch, version)
    kwargs: dict[str, Any] = dict(shape, num_stages=len(shape["depths"]))
    if layer_scale_init_value is not None:
        if model_type == "convnext":
            kwargs["layer_scale_init_value"] = layer_scale_init_value
        elif layer_scale_init_value and not layer_scale_v1_only:
            raise ValueError(
                f"layer_scale_init_value={layer_scale_init_value} is not allowed for ConvNeXt V2 "
                "(GRN replaces layer scale); leave it unset or 0"
            )
    kwargs.update(overrides)
    return CONFIG_CLASSES[model_type](**kwargs)
