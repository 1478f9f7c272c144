"""ConvNeXt V1/V2 configurations with Hugging Face field names and backbone semantics.

Field names follow ``transformers.ConvNextConfig`` / ``ConvNextV2Config`` so that a HF
``config.json`` reads unchanged; ``out_features`` / ``out_indices`` follow the rules of HF's
``BackboneConfigMixin`` (checked against transformers itself in the tests), except that
negative indices are normalised and tuples are accepted. ``FIELDS`` is the one list of fields:
their defaults, their rules, and which of them transformers' ConvNeXt configs share.
"""
from __future__ import annotations

import copy
import inspect
import json
import math
import numbers
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .families import get_family
from .fileio import atomic_write
from .hf_keys import HF_GENERIC_KEYS
from .messages import closest
from .presets import PRESETS, preset_kwargs, preset_name

__all__ = [
    "CONFIG_CLASSES",
    "FIELDS",
    "OUTPUT_NORM_KEY",
    "ConvNextConfig",
    "ConvNextV2Config",
    "output_norm_name",
    "resolve_out_features_out_indices",
    "stage_names_for",
]


def stage_names_for(num_stages: int) -> list[str]:
    return ["stem"] + [f"stage{i}" for i in range(1, num_stages + 1)]


def output_norm_name(stage_index: int) -> str:
    """The output LayerNorm of stage name ``stage_names[stage_index]``: the official det/seg names,
    ``norm{i}`` for stage i+1; the stem's norm (``norm_stem``) is ours."""
    return "norm_stem" if stage_index == 0 else f"norm{stage_index - 1}"


OUTPUT_NORM_KEY = re.compile(r"^(norm_stem|norm\d+)\.")  # state-dict keys of those norms


# ---- out_features / out_indices: transformers' rules, verified then derived ------------------------
def _verify_out_features_out_indices(
    out_features: Sequence[str] | None, out_indices: Sequence[int] | None, stage_names: Sequence[str]
) -> tuple[list[str] | None, list[int] | None]:
    """Check each given selection against ``stage_names`` (a subset, no duplicates, stage order,
    both naming the same stages); return them as lists, ``out_indices`` normalised (``-1`` -> last).
    Every violation is a ``ValueError`` naming the allowed values."""
    if stage_names is None or isinstance(stage_names, str) or not isinstance(stage_names, (list, tuple)):
        raise ValueError(f"stage_names must be a list of stage names such as ['stem', 'stage1', ...], got {stage_names!r}")
    names = list(stage_names)
    for arg, value in (("out_features", out_features), ("out_indices", out_indices)):
        if isinstance(value, (list, tuple)) and len(value) == 0:
            raise ValueError(f"{arg} is empty; select at least one stage from {names} (or leave it unset for the last stage)")
    features = None if out_features is None else _verified_features(out_features, names)
    indices = None if out_indices is None else _verified_indices(out_indices, names)
    if features is not None and indices is not None:
        if len(features) != len(indices):
            raise ValueError(f"out_features {features} and out_indices {indices} must have the same length when both are set")
        if features != [names[i] for i in indices]:
            raise ValueError(
                f"out_features {features} and out_indices {indices} must name the same stages "
                f"(out_indices {indices} are {[names[i] for i in indices]})"
            )
    return features, indices


def _verified_features(out_features: Any, names: list[str]) -> list[str]:
    if isinstance(out_features, str) or not isinstance(out_features, (list, tuple)):
        raise ValueError(f"out_features must be a list of stage names from {names}, got {out_features!r}")
    features = list(out_features)
    unknown = [f for f in features if f not in names]
    if unknown:
        raise ValueError(f"out_features must be a subset of stage_names {names}; unknown: {unknown}")
    if len(set(features)) != len(features):
        raise ValueError(f"out_features must not contain duplicates, got {features} (allowed: {names})")
    ordered = [f for f in names if f in features]
    if ordered != features:
        raise ValueError(f"out_features must follow the order of stage_names {names}: expected {ordered}, got {features}")
    return features


def _verified_indices(out_indices: Any, names: list[str]) -> list[int]:
    n = len(names)
    if isinstance(out_indices, (str, bytes)) or not isinstance(out_indices, (list, tuple)):
        raise ValueError(f"out_indices must be a list of ints in [-{n}, {n - 1}], got {out_indices!r}")
    raw = list(out_indices)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in raw):
        raise ValueError(f"out_indices must be ints in [-{n}, {n - 1}] (for {names}), got {raw}")
    if any(not -n <= i < n for i in raw):
        raise ValueError(f"out_indices must be valid indices for stage_names {names} (range [-{n}, {n - 1}]), got {raw}")
    norm = [i % n for i in raw]
    if len(set(norm)) != len(norm):
        raise ValueError(f"out_indices must not contain duplicates, got {raw} (normalised {norm}; allowed 0..{n - 1} = {names})")
    if norm != sorted(norm):
        raise ValueError(f"out_indices must follow the order of stage_names {names}: expected {sorted(norm)}, got {raw}")
    return norm


def _derive_out_features_out_indices(
    out_features: list[str] | None, out_indices: list[int] | None, stage_names: Sequence[str]
) -> tuple[list[str], list[int]]:
    """Verified selections -> aligned ``(out_features, out_indices)``: neither given means the last
    stage, one given derives the other."""
    names = list(stage_names)
    if out_features is None and out_indices is None:
        return [names[-1]], [len(names) - 1]
    if out_features is None:
        return [names[i] for i in out_indices], list(out_indices)
    if out_indices is None:
        return list(out_features), [names.index(f) for f in out_features]
    return list(out_features), list(out_indices)


def resolve_out_features_out_indices(
    out_features: Sequence[str] | None,
    out_indices: Sequence[int] | None,
    stage_names: Sequence[str],
) -> tuple[list[str], list[int]]:
    """Apply HF backbone rules; return aligned ``(out_features, out_indices)`` (verify, then derive)."""
    return _derive_out_features_out_indices(*_verify_out_features_out_indices(out_features, out_indices, stage_names), stage_names)


# ---- the fields: one table of defaults and rules ---------------------------------------------------
def _integer(field: str, value: Any) -> int:
    """``int(value)`` for an integral value; ``frozen_stages=1.5`` or ``"2"`` is an error, not 1 or 2."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value != int(value):
        raise ValueError(f"{field} must be an integer, got {value!r}")
    return int(value)


class _Range:
    """An allowed interval, written as the messages say it: ``>= 1``, ``> 0``, ``in [0, 1)``."""

    def __init__(self, low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False):
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open

    def __contains__(self, v: float) -> bool:
        above = v > self.low if self.low_open else v >= self.low
        below = self.high is None or (v < self.high if self.high_open else v <= self.high)
        return math.isfinite(v) and above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


def _whole(field: str, value: Any, allowed: _Range, why: str) -> int:
    value = _integer(field, value)
    if value not in allowed:
        raise ValueError(f"{field} must be an integer {allowed} ({why}), got {value}")
    return value


def _wholes(field: str, value: Any, allowed: _Range, why: str) -> list[int]:
    """A list of integers, one per stage (a tuple, a ListConfig, ... are read as lists)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable) or isinstance(value, Mapping):
        raise ValueError(f"{field} must be a list of integers {allowed}, one per stage ({why}), got {value!r}")
    values = [_integer(field, v) for v in value]
    if not values or any(v not in allowed for v in values):
        raise ValueError(f"{field} must be a list of integers {allowed}, one per stage ({why}), got {values}")
    return values


def _real(field: str, value: Any, allowed: _Range, why: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or float(value) not in allowed:
        what = "a number " if allowed.high is None else ""
        raise ValueError(f"{field} must be {what}{allowed} ({why}), got {value!r}")
    return float(value)


def _flag(field: str, value: Any, why: str) -> bool:
    """True/False (1/0 too, as YAML and JSON may give); a string such as ``"false"`` is an error, not True."""
    if isinstance(value, (str, bytes)) or value is None or value not in (True, False):
        raise ValueError(f"{field} must be True or False ({why}), got {value!r}")
    return bool(value)


def _family(field: str, value: Any) -> str | None:
    """A known weights family name (``convnext_backbone.families``), or None (not known)."""
    return None if value is None else get_family(value).name


def _activation(field: str, value: Any) -> str:
    if value != "gelu":
        raise ValueError(f"{field} must be 'gelu' (the only activation ConvNeXt uses), got {value!r}")
    return value


_AT_LEAST_1 = _Range(1)
_NON_NEGATIVE = _Range(0)


@dataclass(frozen=True)
class Field:
    """A config field: its default, its own rule (type and range, applied at construction and on
    every later assignment), and its group: ``shape`` (transformers' ConvNeXt fields), ``arch``
    (architecture fields transformers' configs lack), ``knob`` (the backbone's training/output
    settings), ``meta`` (what the weights are), ``runtime`` / ``head`` (the rest)."""

    default: Any
    rule: Callable[[str, Any], Any]
    group: str


# Rules between fields (lengths, frozen_stages' range, V2's layer scale) are in `ConvNextConfig._validate`.
FIELDS: dict[str, Field] = {
    "num_channels": Field(3, lambda f, v: _whole(f, v, _AT_LEAST_1, "channels of the input image"), "shape"),
    "patch_size": Field(4, lambda f, v: _whole(f, v, _AT_LEAST_1, "kernel size and stride of the stem"), "shape"),
    "num_stages": Field(4, lambda f, v: _whole(f, v, _AT_LEAST_1, "number of stages"), "shape"),
    "hidden_sizes": Field((96, 192, 384, 768), lambda f, v: _wholes(f, v, _AT_LEAST_1, "channels of each stage"), "shape"),
    # A stage is its blocks: one without blocks has no `stages.i.*` tensor in any checkpoint layout.
    "depths": Field((3, 3, 9, 3), lambda f, v: _wholes(f, v, _AT_LEAST_1, "blocks of each stage"), "shape"),
    "hidden_act": Field("gelu", _activation, "shape"),
    "initializer_range": Field(0.02, lambda f, v: _real(f, v, _NON_NEGATIVE, "std of the truncated-normal weight init"), "shape"),
    "layer_norm_eps": Field(1e-12, lambda f, v: _real(f, v, _Range(0, low_open=True), "added to the variance in LayerNorm"), "shape"),
    "layer_scale_init_value": Field(1e-6, lambda f, v: _real(f, v, _NON_NEGATIVE, "initial layer scale; 0 = no layer scale"), "shape"),
    "drop_path_rate": Field(0.0, lambda f, v: _real(f, v, _Range(0, 1, high_open=True),
                                                    "stochastic depth, rising linearly over the blocks to this rate"), "shape"),
    "image_size": Field(224, lambda f, v: _whole(f, v, _AT_LEAST_1, "the pre-training image size, metadata only"), "shape"),
    # timm's convnext_xxlarge (the CLIP ConvNeXt-XXL) uses 1e-5; every other ConvNeXt 1e-6.
    "norm_eps": Field(1e-6, lambda f, v: _real(f, v, _Range(0, low_open=True), "eps of every LayerNorm in the trunk and output norms"), "arch"),
    "norm_outputs": Field(True, lambda f, v: _flag(f, v, "a LayerNorm on each returned map"), "knob"),
    "frozen_stages": Field(-1, lambda f, v: _integer(f, v), "knob"),  # its range depends on num_stages: `_validate`
    "channels_last": Field(True, lambda f, v: _flag(f, v, "NHWC activations inside"), "knob"),
    "gradient_checkpointing": Field(False, lambda f, v: _flag(f, v, "recompute each block in backward"), "runtime"),
    "output_hidden_states": Field(False, lambda f, v: _flag(f, v, "forward's default for output_hidden_states"), "runtime"),
    "weights_family": Field(None, _family, "meta"),  # e.g. clip_laion2b: its input normalisation and license
    "num_labels": Field(1000, lambda f, v: _whole(f, v, _AT_LEAST_1, "classes of the classification head"), "head"),
}


def fields_in(*groups: str) -> tuple[str, ...]:
    """Field names of the given groups, in table order."""
    return tuple(name for name, f in FIELDS.items() if f.group in groups)


def _signature(cls: type) -> inspect.Signature:
    """``ConvNextConfig(num_channels=3, ...)`` as help() and IDEs show it, from ``FIELDS``."""
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter(n, kw, default=cls._defaults.get(n, f.default)) for n, f in FIELDS.items()]
    params += [inspect.Parameter("out_features", kw, default=None), inspect.Parameter("out_indices", kw, default=None)]
    return inspect.Signature(params)


class ConvNextConfig:
    """ConvNeXt V1 configuration (HF field names) plus the backbone training knobs.

    ``norm_outputs``: each returned feature map gets its own LayerNorm, as in the official
    det/seg backbones and HF. ``frozen_stages``: -1 trains everything, 0 freezes the stem,
    k freezes the stem and stages 1..k. ``channels_last`` keeps activations NHWC in memory,
    which makes the block's permutes free (outputs are the same either way). The fields, their
    defaults and their rules are ``FIELDS``.
    """

    model_type = "convnext"
    uses_grn = False
    _defaults: dict[str, Any] = {}  # a subclass's own defaults over FIELDS'

    def __init__(self, out_features: Sequence[str] | None = None, out_indices: Sequence[int] | None = None, **values: Any):
        unknown = sorted(k for k in values if k not in FIELDS and k not in HF_GENERIC_KEYS)
        if unknown:
            k = unknown[0]
            raise ValueError(f"unknown {type(self).__name__} field {k!r}{closest(k, tuple(FIELDS) + ('out_features', 'out_indices'), 'the fields')}")
        if "id2label" in values and "num_labels" not in values:  # HF classification configs carry the label count so
            values["num_labels"] = len(values["id2label"])
        for name, f in FIELDS.items():  # each assignment checks its field (__setattr__); _validate then checks them together
            setattr(self, name, values[name] if name in values else self._defaults.get(name, f.default))
        self._validate()
        self.stage_names = stage_names_for(self.num_stages)
        self._out_features, self._out_indices = resolve_out_features_out_indices(out_features, out_indices, self.stage_names)
        self._complete = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__signature__ = _signature(cls)

    def __setattr__(self, name: str, value: Any) -> None:
        """A field is checked where it is set, in the constructor and afterwards (``cfg.depths = [...]``):
        a config never holds a value no model can have, and the error names the field."""
        field = FIELDS.get(name)
        if field is None:
            return object.__setattr__(self, name, value)
        value = field.rule(name, value)
        if not self.__dict__.get("_complete"):
            return object.__setattr__(self, name, value)
        old = self.__dict__[name]
        object.__setattr__(self, name, value)
        try:
            self._validate()
        except ValueError:
            object.__setattr__(self, name, old)
            raise

    def _validate(self) -> None:
        """The rules between fields (each field's own rule ran when it was set)."""
        if len(self.hidden_sizes) != self.num_stages or len(self.depths) != self.num_stages:
            raise ValueError(
                f"hidden_sizes ({self.hidden_sizes}) and depths ({self.depths}) must both have num_stages={self.num_stages} entries"
                + ("; to change the number of stages, make a new config: "
                   "config.copy(num_stages=..., depths=[...], hidden_sizes=[...], out_features=[...])" if self.__dict__.get("_complete") else "")
            )
        if not -1 <= self.frozen_stages <= self.num_stages:
            raise ValueError(
                f"frozen_stages must be in [-1, {self.num_stages}] (-1 none, 0 the stem, k the stem and stages 1..k), got {self.frozen_stages}"
            )
        if self.uses_grn and self.layer_scale_init_value:
            raise ValueError(
                f"ConvNeXt V2 has no layer scale (GRN replaces it); layer_scale_init_value must be 0, got {self.layer_scale_init_value}"
            )

    # HF-style properties: setting one re-derives the other.
    @property
    def out_features(self) -> list[str]:
        return list(self._out_features)

    @out_features.setter
    def out_features(self, value: Sequence[str] | None) -> None:
        self._out_features, self._out_indices = resolve_out_features_out_indices(value, None, self.stage_names)

    @property
    def out_indices(self) -> list[int]:
        return list(self._out_indices)

    @out_indices.setter
    def out_indices(self, value: Sequence[int] | None) -> None:
        self._out_features, self._out_indices = resolve_out_features_out_indices(None, value, self.stage_names)

    @property
    def strides(self) -> list[int]:
        """Stride of every stage name: stem = patch, then x2 per stage."""
        return [self.patch_size] + [self.patch_size * 2**i for i in range(self.num_stages)]

    @property
    def channels_per_stage(self) -> list[int]:
        return [self.hidden_sizes[0]] + list(self.hidden_sizes)

    @property
    def architecture(self) -> str:
        """The preset name (``convnextv2_atto``) when the shape is a published one, else the shape."""
        name = preset_name(self.model_type, self.depths, self.hidden_sizes)
        if name is not None and self.num_channels == 3 and self.patch_size == 4:
            return name
        return f"{self.model_type}(depths={self.depths}, hidden_sizes={self.hidden_sizes})"

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ConvNextConfig:
        presets = PRESETS[cls.model_type]
        if name not in presets:
            raise ValueError(f"unknown {cls.model_type} preset {name!r}{closest(name, presets, 'the presets')}")
        return cls(**{**preset_kwargs(cls.model_type, name), **overrides})

    def to_dict(self) -> dict[str, Any]:
        d = {k: copy.deepcopy(getattr(self, k)) for k in FIELDS}
        d["model_type"] = self.model_type
        d["out_features"] = self.out_features
        d["out_indices"] = self.out_indices
        d["stage_names"] = list(self.stage_names)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides: Any) -> ConvNextConfig:
        d = dict(d)
        model_type = d.pop("model_type", cls.model_type)
        target = CONFIG_CLASSES.get(model_type)
        if target is None:
            raise ValueError(f"config model_type {model_type!r} is not a ConvNeXt; expected one of {list(CONFIG_CLASSES)}")
        d.pop("stage_names", None)
        d.pop("architectures", None)
        if "out_features" in overrides or "out_indices" in overrides:
            d.pop("out_features", None)
            d.pop("out_indices", None)
        d.update(overrides)
        return target(**d)

    def to_json_file(self, path: str | Path) -> None:
        atomic_write(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json_file(cls, path: str | Path, **overrides: Any) -> ConvNextConfig:
        return cls.from_dict(json.loads(Path(path).read_text()), **overrides)

    def copy(self, **overrides: Any) -> ConvNextConfig:
        return self.from_dict(self.to_dict(), **overrides)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConvNextConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(self.to_dict(), sort_keys=True)})"


class ConvNextV2Config(ConvNextConfig):
    """ConvNeXt V2: GRN in every block and no layer scale (HF ``ConvNextV2Config`` fields)."""

    model_type = "convnextv2"
    uses_grn = True

    _defaults = {"layer_scale_init_value": 0.0}  # must stay 0: `_validate`

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.pop("layer_scale_init_value")
        return d


CONFIG_CLASSES: dict[str, type[ConvNextConfig]] = {"convnext": ConvNextConfig, "convnextv2": ConvNextV2Config}


ConvNextConfig.__signature__ = _signature(ConvNextConfig)
