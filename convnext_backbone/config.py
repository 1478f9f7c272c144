"""ConvNeXt V1/V2 configurations with Hugging Face field names and backbone semantics.

Field names follow ``transformers.ConvNextConfig`` / ``ConvNextV2Config`` so that a HF
``config.json`` reads unchanged; ``out_features`` / ``out_indices`` follow the rules of HF's
``BackboneConfigMixin`` (checked against transformers itself in the tests), except that
negative indices are normalised and tuples are accepted.
"""
from __future__ import annotations

import copy
import difflib
import json
import math
import numbers
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .fileio import atomic_write

__all__ = [
    "OUTPUT_NORM_KEY",
    "ConvNextConfig",
    "ConvNextV2Config",
    "PRESETS",
    "list_presets",
    "resolve_out_features_out_indices",
    "config_from_preset_name",
    "output_norm_name",
]

# (depths, hidden_sizes) as published: V1 in "A ConvNet for the 2020s", V2 in "ConvNeXt V2".
PRESETS: dict[str, dict[str, tuple[tuple[int, ...], tuple[int, ...]]]] = {
    "convnext": {
        "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
        "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
        "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
        "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
        "xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
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


def list_presets(version: str | None = None) -> list[str]:
    """Model names accepted by ``build_backbone``, e.g. ``convnext_tiny``, ``convnextv2_atto``."""
    types = [version] if version else list(PRESETS)
    for t in types:
        if t not in PRESETS:
            raise ValueError(f"unknown ConvNeXt version {t!r}; expected one of {list(PRESETS)}")
    return [f"{t}_{size}" for t in types for size in PRESETS[t]]


def stage_names_for(num_stages: int) -> list[str]:
    return ["stem"] + [f"stage{i}" for i in range(1, num_stages + 1)]


def output_norm_name(stage_index: int) -> str:
    """The output LayerNorm of stage name ``stage_names[stage_index]``: the official det/seg names,
    ``norm{i}`` for stage i+1; the stem's norm (``norm_stem``) is ours."""
    return "norm_stem" if stage_index == 0 else f"norm{stage_index - 1}"


OUTPUT_NORM_KEY = re.compile(r"^(norm_stem|norm\d+)\.")  # state-dict keys of those norms


def resolve_out_features_out_indices(
    out_features: Sequence[str] | None,
    out_indices: Sequence[int] | None,
    stage_names: Sequence[str],
) -> tuple[list[str], list[int]]:
    """Apply HF backbone rules; return aligned ``(out_features, out_indices)``.

    Neither given: the last stage. One given: the other derived. Both: they must agree.
    Always a subset of ``stage_names``, without duplicates, in stage order.
    """
    if stage_names is None or isinstance(stage_names, str) or not isinstance(stage_names, (list, tuple)):
        raise ValueError(f"stage_names must be a list of stage names such as ['stem', 'stage1', ...], got {stage_names!r}")
    names = list(stage_names)
    n = len(names)
    for arg, value in (("out_features", out_features), ("out_indices", out_indices)):
        if isinstance(value, (list, tuple)) and len(value) == 0:
            raise ValueError(f"{arg} is empty; select at least one stage from {names} (or leave it unset for the last stage)")
    if out_features is not None:
        if isinstance(out_features, str) or not isinstance(out_features, (list, tuple)):
            raise ValueError(f"out_features must be a list of stage names from {names}, got {out_features!r}")
        out_features = list(out_features)
        unknown = [f for f in out_features if f not in names]
        if unknown:
            raise ValueError(f"out_features must be a subset of stage_names {names}; unknown: {unknown}")
        if len(set(out_features)) != len(out_features):
            raise ValueError(f"out_features must not contain duplicates, got {out_features} (allowed: {names})")
        ordered = [f for f in names if f in out_features]
        if ordered != out_features:
            raise ValueError(f"out_features must follow the order of stage_names {names}: expected {ordered}, got {out_features}")
    if out_indices is not None:
        if isinstance(out_indices, (str, bytes)) or not isinstance(out_indices, (list, tuple)):
            raise ValueError(f"out_indices must be a list of ints in [-{n}, {n - 1}], got {out_indices!r}")
        raw = list(out_indices)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in raw):
            raise ValueError(f"out_indices must be ints in [-{n}, {n - 1}] (for {names}), got {raw}")
        bad = [i for i in raw if not -n <= i < n]
        if bad:
            raise ValueError(f"out_indices must be valid indices for stage_names {names} (range [-{n}, {n - 1}]), got {raw}")
        norm = [i % n for i in raw]
        if len(set(norm)) != len(norm):
            raise ValueError(f"out_indices must not contain duplicates, got {raw} (normalised {norm}; allowed 0..{n - 1} = {names})")
        if norm != sorted(norm):
            raise ValueError(f"out_indices must follow the order of stage_names {names}: expected {sorted(norm)}, got {raw}")
        out_indices = norm
    if out_features is None and out_indices is None:
        return [names[-1]], [n - 1]
    if out_features is None:
        return [names[i] for i in out_indices], out_indices
    if out_indices is None:
        return out_features, [names.index(f) for f in out_features]
    if len(out_features) != len(out_indices):
        raise ValueError(f"out_features {out_features} and out_indices {out_indices} must have the same length when both are set")
    if out_features != [names[i] for i in out_indices]:
        raise ValueError(
            f"out_features {out_features} and out_indices {out_indices} must name the same stages "
            f"(out_indices {out_indices} are {[names[i] for i in out_indices]})"
        )
    return out_features, out_indices


def suggestion(name: str, choices, cutoff: float = 0.8) -> str | None:
    """The valid name closest to a misspelt ``name``, if one is close enough to be what was meant."""
    match = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=cutoff)
    return match[0] if match else None


def closest(name: str, choices, what: str) -> str:
    """``; did you mean 'x'? (the presets are [...])`` for a misspelt ``name``: the suggestion only
    when one is close, the valid names always."""
    choices = [str(c) for c in choices]
    match = suggestion(name, choices)
    listed = f"{what} are {choices}"
    return f"; did you mean {match!r}? ({listed})" if match else f"; {listed}"


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


def _activation(field: str, value: Any) -> str:
    if value != "gelu":
        raise ValueError(f"{field} must be 'gelu' (the only activation ConvNeXt uses), got {value!r}")
    return value


_AT_LEAST_1 = _Range(1)
_NON_NEGATIVE = _Range(0)
# Every field's own rule (type and range), applied at construction and on every later
# assignment; rules between fields (lengths, frozen_stages, V2 layer scale) are in `_validate`.
_FIELD_RULES: dict[str, Callable[[str, Any], Any]] = {
    "num_channels": lambda f, v: _whole(f, v, _AT_LEAST_1, "channels of the input image"),
    "patch_size": lambda f, v: _whole(f, v, _AT_LEAST_1, "kernel size and stride of the stem"),
    "num_stages": lambda f, v: _whole(f, v, _AT_LEAST_1, "number of stages"),
    "hidden_sizes": lambda f, v: _wholes(f, v, _AT_LEAST_1, "channels of each stage"),
    # A stage is its blocks: one without blocks has no `stages.i.*` tensor in any checkpoint layout.
    "depths": lambda f, v: _wholes(f, v, _AT_LEAST_1, "blocks of each stage"),
    "hidden_act": _activation,
    "initializer_range": lambda f, v: _real(f, v, _NON_NEGATIVE, "std of the truncated-normal weight init"),
    "layer_norm_eps": lambda f, v: _real(f, v, _Range(0, low_open=True), "added to the variance in LayerNorm"),
    "layer_scale_init_value": lambda f, v: _real(f, v, _NON_NEGATIVE, "initial layer scale; 0 = no layer scale"),
    "drop_path_rate": lambda f, v: _real(f, v, _Range(0, 1, high_open=True), "stochastic depth, rising linearly over the blocks to this rate"),
    "image_size": lambda f, v: _whole(f, v, _AT_LEAST_1, "the pre-training image size, metadata only"),
    "frozen_stages": lambda f, v: _integer(f, v),  # its range depends on num_stages: `_validate`
    "num_labels": lambda f, v: _whole(f, v, _AT_LEAST_1, "classes of the classification head"),
    "norm_outputs": lambda f, v: _flag(f, v, "a LayerNorm on each returned map"),
    "gradient_checkpointing": lambda f, v: _flag(f, v, "recompute each block in backward"),
    "channels_last": lambda f, v: _flag(f, v, "NHWC activations inside"),
    "output_hidden_states": lambda f, v: _flag(f, v, "forward's default for output_hidden_states"),
}


def in_callers_terms(message: str, names: Mapping[str, str]) -> str:
    """A core error message in an adapter's vocabulary: each core field name (a whole word) becomes
    the key the user wrote, e.g. ``num_channels`` -> ``in_channels`` for the OpenMMLab backbone."""
    return re.sub(r"\b(" + "|".join(map(re.escape, names)) + r")\b", lambda m: names[m.group(1)], message)


# Keys of a transformers config.json that are not ConvNeXt fields (PretrainedConfig's generic
# attributes and bookkeeping): read and ignored. Any other unknown key is a typo and an error.
HF_GENERIC_KEYS = frozenset({
    "_name_or_path", "_commit_hash", "_attn_implementation_autoset", "_output_attentions", "add_cross_attention",
    "architectures", "bad_words_ids", "begin_suppress_tokens", "bos_token_id", "chunk_size_feed_forward",
    "cross_attention_hidden_size", "decoder_start_token_id", "diversity_penalty", "do_sample", "dtype",
    "early_stopping", "encoder_no_repeat_ngram_size", "eos_token_id", "exponential_decay_length_penalty",
    "finetuning_task", "forced_bos_token_id", "forced_eos_token_id", "id2label", "is_decoder", "is_encoder_decoder",
    "label2id", "length_penalty", "max_length", "min_length", "model_type", "no_repeat_ngram_size",
    "num_beam_groups", "num_beams", "num_return_sequences", "output_attentions", "output_scores", "pad_token_id",
    "prefix", "problem_type", "pruned_heads", "remove_invalid_values", "repetition_penalty", "return_dict",
    "return_dict_in_generate", "sep_token_id", "stage_names", "suppress_tokens", "task_specific_params",
    "temperature", "tf_legacy_loss", "tie_encoder_decoder", "tie_word_embeddings", "tokenizer_class", "top_k",
    "top_p", "torch_dtype", "torchscript", "transformers_version", "typical_p", "use_bfloat16", "use_cache",
})


class ConvNextConfig:
    """ConvNeXt V1 configuration (HF field names) plus the backbone training knobs.

    ``norm_outputs``: each returned feature map gets its own LayerNorm, as in the official
    det/seg backbones and HF. ``frozen_stages``: -1 trains everything, 0 freezes the stem,
    k freezes the stem and stages 1..k. ``channels_last`` keeps activations NHWC in memory,
    which makes the block's permutes free (outputs are the same either way).
    """

    model_type = "convnext"
    uses_grn = False
    _fields = (
        "num_channels", "patch_size", "num_stages", "hidden_sizes", "depths", "hidden_act",
        "initializer_range", "layer_norm_eps", "layer_scale_init_value", "drop_path_rate",
        "image_size", "norm_outputs", "frozen_stages", "gradient_checkpointing", "channels_last",
        "num_labels", "output_hidden_states",
    )

    def __init__(
        self,
        num_channels: int = 3,
        patch_size: int = 4,
        num_stages: int = 4,
        hidden_sizes: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (3, 3, 9, 3),
        hidden_act: str = "gelu",
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        layer_scale_init_value: float = 1e-6,
        drop_path_rate: float = 0.0,
        image_size: int = 224,
        out_features: Sequence[str] | None = None,
        out_indices: Sequence[int] | None = None,
        norm_outputs: bool = True,
        frozen_stages: int = -1,
        gradient_checkpointing: bool = False,
        channels_last: bool = True,
        num_labels: int = 1000,
        output_hidden_states: bool = False,
        **unused: Any,
    ):
        unknown = sorted(k for k in unused if k not in HF_GENERIC_KEYS)
        if unknown:
            k = unknown[0]
            raise ValueError(f"unknown {type(self).__name__} field {k!r}{closest(k, self._fields + ('out_features', 'out_indices'), 'the fields')}")
        # each assignment checks its field (__setattr__); _validate then checks them together
        self.num_channels = num_channels
        self.patch_size = patch_size
        self.num_stages = num_stages
        self.hidden_sizes = hidden_sizes
        self.depths = depths
        self.hidden_act = hidden_act
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.layer_scale_init_value = layer_scale_init_value
        self.drop_path_rate = drop_path_rate
        self.image_size = image_size
        self.norm_outputs = norm_outputs
        self.frozen_stages = frozen_stages
        self.gradient_checkpointing = gradient_checkpointing
        self.channels_last = channels_last
        # HF classification configs carry the label count as id2label.
        self.num_labels = len(unused["id2label"]) if "id2label" in unused else num_labels
        self.output_hidden_states = output_hidden_states  # the default of forward's argument, as in transformers
        self._validate()
        self.stage_names = stage_names_for(self.num_stages)
        self._out_features, self._out_indices = resolve_out_features_out_indices(out_features, out_indices, self.stage_names)
        self._complete = True

    def __setattr__(self, name: str, value: Any) -> None:
        """A field is checked where it is set, in the constructor and afterwards (``cfg.depths = [...]``):
        a config never holds a value no model can have, and the error names the field."""
        rule = _FIELD_RULES.get(name)
        if rule is None:
            return object.__setattr__(self, name, value)
        value = rule(name, value)
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
        shape = (tuple(self.depths), tuple(self.hidden_sizes))
        name = next((size for size, preset in PRESETS[self.model_type].items() if preset == shape), None)
        if name is not None and self.num_channels == 3 and self.patch_size == 4:
            return f"{self.model_type}_{name}"
        return f"{self.model_type}(depths={self.depths}, hidden_sizes={self.hidden_sizes})"

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ConvNextConfig":
        presets = PRESETS[cls.model_type]
        if name not in presets:
            raise ValueError(f"unknown {cls.model_type} preset {name!r}{closest(name, presets, 'the presets')}")
        depths, hidden_sizes = presets[name]
        kwargs: dict[str, Any] = {"depths": depths, "hidden_sizes": hidden_sizes}
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = {k: copy.deepcopy(getattr(self, k)) for k in self._fields if hasattr(self, k)}
        d["model_type"] = self.model_type
        d["out_features"] = self.out_features
        d["out_indices"] = self.out_indices
        d["stage_names"] = list(self.stage_names)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides: Any) -> "ConvNextConfig":
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
    def from_json_file(cls, path: str | Path, **overrides: Any) -> "ConvNextConfig":
        return cls.from_dict(json.loads(Path(path).read_text()), **overrides)

    def copy(self, **overrides: Any) -> "ConvNextConfig":
        return self.from_dict(self.to_dict(), **overrides)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConvNextConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(self.to_dict(), sort_keys=True)})"


class ConvNextV2Config(ConvNextConfig):
    """ConvNeXt V2: GRN in every block and no layer scale (HF ``ConvNextV2Config`` fields)."""

    model_type = "convnextv2"
    uses_grn = True

    def __init__(self, *args: Any, layer_scale_init_value: float = 0.0, **kwargs: Any):
        super().__init__(*args, layer_scale_init_value=layer_scale_init_value, **kwargs)  # must be 0: `_validate`

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.pop("layer_scale_init_value")
        return d


CONFIG_CLASSES: dict[str, type[ConvNextConfig]] = {"convnext": ConvNextConfig, "convnextv2": ConvNextV2Config}


def config_from_preset_name(name: str, **overrides: Any) -> ConvNextConfig:
    """``convnext_tiny`` / ``convnextv2_atto`` (also ``convnext-tiny``) -> config."""
    key = name.strip().lower().replace("-", "_")
    version, _, size = key.partition("_")
    if version not in CONFIG_CLASSES or size not in PRESETS[version]:
        raise ValueError(f"unknown preset {name!r}{closest(key, list_presets(), 'the presets')}")
    return CONFIG_CLASSES[version].from_preset(size, **overrides)


# ---- architecture names: the one resolver every adapter uses -------------------------------------
# `version` spellings. A size that exists in one version only picks that version when `version`
# is not given; tiny/base/large exist in both and then mean V1 (as mmpretrain's and the official
# `arch`, and Detectron2's NAME).
_ARCH_VERSIONS = {"v1": "convnext", "v2": "convnextv2", "convnext": "convnext", "convnextv2": "convnextv2"}


def resolve_arch(arch: str | dict, version: str | None = None) -> tuple[str, dict[str, Any]]:
    """``arch`` (+ ``version``) -> ``(model_type, dict(depths=[...], hidden_sizes=[...]))``.

    The one place where architecture names are read, for every adapter (MMSegmentation /
    MMDetection ``arch=``, Detectron2 ``MODEL.CONVNEXT.NAME`` / ``VERSION`` + ``DEPTHS`` /
    ``DIMS``, LazyConfig ``name=``). Accepted:

    - a preset name: ``'convnext_tiny'``, ``'convnextv2_atto'`` (``-`` for ``_`` and any case);
    - a size name: ``'tiny'``, with ``version='v1'|'v2'`` where the size exists in both;
    - ``dict(depths=[...], dims=[...])`` (official name) or ``hidden_sizes`` (HF name), V1
      unless ``version='v2'``.

    Every bad value is a ``ValueError`` naming the accepted ones.
    """
    if version is not None and str(version).strip().lower() not in _ARCH_VERSIONS:
        raise ValueError(f"version must be one of 'v1', 'v2' (or None to infer it from arch), got {version!r}")
    model_type = _ARCH_VERSIONS[str(version).strip().lower()] if version is not None else None
    if isinstance(arch, dict):
        arch = dict(arch)
        depths, dims, hidden = arch.pop("depths", None), arch.pop("dims", None), arch.pop("hidden_sizes", None)
        widths = _FIELD_RULES["hidden_sizes"]
        if dims is not None and hidden is not None and widths("dims", dims) != widths("hidden_sizes", hidden):
            raise ValueError(f"arch gives both dims={dims} and hidden_sizes={hidden}; give one of them")
        dims = dims if dims is not None else hidden
        if arch:
            raise ValueError(f"arch as a dict takes only 'depths' and 'dims' (or 'hidden_sizes'); unknown keys {sorted(arch)}")
        if not depths or not dims:
            raise ValueError(
                "arch as a dict needs both 'depths' and 'dims' (or 'hidden_sizes'), e.g. "
                f"dict(depths=[3, 3, 9, 3], dims=[96, 192, 384, 768]); got depths={depths}, dims={dims}"
            )
        width = "dims" if hidden is None else "hidden_sizes"  # the error names the key the caller wrote
        return model_type or "convnext", {"depths": _FIELD_RULES["depths"]("depths", depths), "hidden_sizes": widths(width, dims)}
    if not isinstance(arch, str):
        raise ValueError(f"arch must be a preset name such as 'convnext_tiny' / 'convnextv2_atto' or a dict(depths, dims), got {arch!r}")
    key = arch.strip().lower().replace("-", "_")
    if "_" in key:
        prefix, _, size = key.partition("_")
        if prefix not in PRESETS or size not in PRESETS[prefix]:
            raise ValueError(f"unknown arch {arch!r}{closest(key, list_presets(), 'the presets')} "
                             "(or a size name with version='v1'|'v2')")
        if model_type is not None and model_type != prefix:
            raise ValueError(f"arch {arch!r} is a {prefix} preset but version={version!r} asks for {model_type}")
        model_type = prefix
    else:
        size = key
        owners = [t for t in PRESETS if size in PRESETS[t]]
        if not owners:
            sizes = sorted({s for t in PRESETS for s in PRESETS[t]})
            raise ValueError(
                f"unknown arch {arch!r}{closest(key, sizes, 'the sizes')} "
                f"(with version='v1'|'v2'), or a full preset name from {list_presets()}"
            )
        if model_type is None:
            model_type = "convnext" if "convnext" in owners else owners[0]
        elif model_type not in owners:
            raise ValueError(
                f"arch {arch!r} does not exist in ConvNeXt {'V2' if model_type == 'convnextv2' else 'V1'}; "
                f"{model_type} sizes are {list(PRESETS[model_type])}"
            )
    depths, hidden = PRESETS[model_type][size]
    return model_type, {"depths": list(depths), "hidden_sizes": list(hidden)}


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
