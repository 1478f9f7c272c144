"""``ConvNextBackboneConfig``: the core ConvNeXt V1/V2 config as a transformers ``PreTrainedConfig``.

One ``model_type`` (``"convnext_backbone"``) covers V1 and V2; the ``version`` field (``"v1"`` /
``"v2"``) picks the block, exactly as the core's two config classes differ only in GRN vs layer
scale. Field names are transformers' ``ConvNextConfig`` / ``ConvNextV2Config`` names plus the
core's backbone knobs (``norm_outputs``, ``frozen_stages``, ``channels_last``). Every value is
checked by building the core config, so a bad preset, ``out_features`` or field raises the core's
``ValueError``.
"""
from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

try:  # transformers >= 5.x
    from transformers.backbone_utils import BackboneConfigMixin
except ImportError:  # pragma: no cover - older 5.x layout
    from transformers.utils.backbone_utils import BackboneConfigMixin

from convnext_backbone.arch import config_from_preset_name
from convnext_backbone.config import CONFIG_CLASSES, FIELDS, ConvNextConfig, fields_in
from convnext_backbone.presets import model_type_of_version, version_of

__all__ = ["ConvNextBackboneConfig", "MODEL_TYPE"]

MODEL_TYPE = "convnext_backbone"

_SHAPE_FIELDS = fields_in("shape")  # shared with transformers' ConvNextConfig / ConvNextV2Config
_CORE_FIELDS = fields_in("shape", "arch", "knob", "meta")  # shared with the core config


def _version(value: Any) -> str:
    """Any spelling of a version (``'V2'``, ``'convnextv2'``) -> ``'v1'`` / ``'v2'``."""
    return version_of(model_type_of_version(value))


def _core_fields_namespace() -> dict[str, Any]:
    """The core's fields with the core's defaults, as dataclass fields of the class below:
    transformers' config machinery reads a config's fields from its class body, and the one
    list of them is the core's ``FIELDS``. ``layer_scale_init_value=None`` means the version's."""
    defaults = {name: FIELDS[name].default for name in _CORE_FIELDS}
    return dict(defaults, layer_scale_init_value=None)


class ConvNextBackboneConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""Configuration of [`ConvNextBackboneModel`], the convnext-backbone ConvNeXt V1/V2 backbone.

    Build it from a preset with ``ConvNextBackboneConfig.from_preset("convnextv2_tiny",
    out_features=["stage1", "stage2", "stage3", "stage4"])``, from a core config with
    ``from_core_config``, or from transformers' own ``ConvNextConfig`` / ``ConvNextV2Config`` with
    ``from_hf_config``.

    Args:
        version (`str`, defaults to `"v1"`): `"v1"` (ConvNeXt, layer scale) or `"v2"` (ConvNeXt V2,
            GRN, no layer scale); `"convnext"` / `"convnextv2"` are accepted too.
        num_channels, patch_size, num_stages, hidden_sizes, depths, hidden_act, initializer_range,
        layer_norm_eps, drop_path_rate, image_size: as in transformers' `ConvNextConfig`.
        layer_scale_init_value (`float`, *optional*): V1 layer-scale init (default 1e-6); must be 0
            (the default) for V2.
        out_features / out_indices: which of `stage_names = ["stem", "stage1", ...]` the backbone
            returns; transformers' rules (negative indices normalised). Default: the last stage.
        norm_outputs (`bool`, defaults to `True`): a LayerNorm on each returned map (as HF's and the
            official det/seg backbones).
        frozen_stages (`int`, defaults to -1): -1 none, 0 the stem, k the stem and stages 1..k.
        channels_last (`bool`, defaults to `True`): NHWC activations inside (same outputs, faster).
    """

    model_type = MODEL_TYPE

    version: str = "v1"
    vars().update(_core_fields_namespace())
    __annotations__.update({name: "Any" for name in _core_fields_namespace()})
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        out_features = kwargs.pop("out_features", None)
        out_indices = kwargs.pop("out_indices", None)
        kwargs.pop("stage_names", None)  # always derived from num_stages
        self.version = _version(self.version)
        if self.layer_scale_init_value is None:
            self.layer_scale_init_value = 1e-6 if self.version == "v1" else 0.0
        # The core checks every field and out_features/out_indices, with its own messages; its
        # values are kept (hidden_sizes=(96, ...) becomes a list, as transformers' ConvNeXt needs).
        core = self._build_core_config(out_features=out_features, out_indices=out_indices)
        for name in _CORE_FIELDS:
            setattr(self, name, getattr(core, name))
        self.stage_names = list(core.stage_names)
        self._out_features, self._out_indices = core.out_features, core.out_indices
        super().__post_init__(**kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        """``config.depths = [...]`` after construction is checked by the core as at construction
        (an error names the field and leaves the config as it was)."""
        if not self.__dict__.get("_post_init_done") or name not in _CORE_FIELDS + ("version",):
            return super().__setattr__(name, value)
        old = self.__dict__[name]
        super().__setattr__(name, _version(value) if name == "version" else value)
        try:
            core = self._build_core_config(out_features=self._out_features)
        except ValueError:
            super().__setattr__(name, old)
            raise
        if name != "version":
            super().__setattr__(name, getattr(core, name))

    # -- out_features / out_indices: the core's rules and messages ------------------------------
    def set_output_features_output_indices(self, out_features: list | None, out_indices: list | None) -> None:
        core = self._build_core_config(out_features=out_features, out_indices=out_indices)
        self._out_features, self._out_indices = core.out_features, core.out_indices

    def verify_out_features_out_indices(self) -> None:
        self._build_core_config(out_features=self._out_features, out_indices=self._out_indices)

    # -- the core config ----------------------------------------------------------------------------
    def _build_core_config(self, out_features: Any = None, out_indices: Any = None) -> ConvNextConfig:
        kwargs: dict[str, Any] = {k: getattr(self, k) for k in _CORE_FIELDS}
        if self.version == "v2":
            kwargs["layer_scale_init_value"] = kwargs["layer_scale_init_value"] or 0.0
        return CONFIG_CLASSES[model_type_of_version(self.version)](out_features=out_features, out_indices=out_indices, **kwargs)

    def to_core_config(self) -> ConvNextConfig:
        """The core ``ConvNextConfig`` / ``ConvNextV2Config`` this config describes."""
        return self._build_core_config(out_features=self._out_features)

    @property
    def core_model_type(self) -> str:
        """``"convnext"`` or ``"convnextv2"``: the core's model type (and preset prefix)."""
        return model_type_of_version(self.version)

    @property
    def strides(self) -> list[int]:
        """Stride of every stage name (stem 4, stage1 4, stage2 8, ...)."""
        return self.to_core_config().strides

    # -- constructors -------------------------------------------------------------------------------
    def with_overrides(self, **kwargs: Any) -> ConvNextBackboneConfig:
        """A new config with some fields changed (``out_features`` or ``out_indices`` replaces both)."""
        d = self.to_dict()
        for key in ("model_type", "transformers_version", "stage_names"):
            d.pop(key, None)
        if "out_features" in kwargs or "out_indices" in kwargs:
            d.pop("out_features", None)
            d.pop("out_indices", None)
        d.update(kwargs)
        return type(self)(**d)

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> ConvNextBackboneConfig:
        """``from_preset("convnextv2_tiny", out_features=[...], drop_path_rate=0.2)``; names as ``list_presets()``."""
        return cls.from_core_config(config_from_preset_name(name), **kwargs)

    @classmethod
    def from_core_config(cls, core: ConvNextConfig, **kwargs: Any) -> ConvNextBackboneConfig:
        """From a core config; ``kwargs`` override its fields (and may set transformers' own ones)."""
        if not isinstance(core, ConvNextConfig):
            raise ValueError(f"expected a convnext_backbone ConvNextConfig / ConvNextV2Config, got {type(core).__name__}")
        fields: dict[str, Any] = {k: getattr(core, k) for k in _CORE_FIELDS}
        fields["version"] = version_of(core.model_type)
        if "out_features" not in kwargs and "out_indices" not in kwargs:
            fields["out_features"] = core.out_features
        if core.gradient_checkpointing and "gradient_checkpointing" not in kwargs:
            fields["gradient_checkpointing"] = True  # consumed by transformers' PreTrainedModel.post_init
        fields.update(kwargs)
        return cls(**fields)

    @classmethod
    def from_hf_config(cls, hf_config: Any, **kwargs: Any) -> ConvNextBackboneConfig:
        """From transformers' ``ConvNextConfig`` / ``ConvNextV2Config`` (or their dicts), same outputs and weights."""
        d = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
        model_type = d.get("model_type")
        if model_type not in CONFIG_CLASSES:  # transformers' ConvNeXt model types are the core's
            raise ValueError(
                f"expected a transformers ConvNeXt config (model_type one of {list(CONFIG_CLASSES)}), got model_type {model_type!r}"
            )
        fields: dict[str, Any] = {k: d[k] for k in _SHAPE_FIELDS if d.get(k) is not None}
        patch = fields.get("patch_size")
        if isinstance(patch, (list, tuple)):
            if len(set(patch)) != 1:
                raise ValueError(f"patch_size must be square, got {patch}")
            fields["patch_size"] = patch[0]
        image = fields.get("image_size")
        if isinstance(image, (list, tuple)):
            fields["image_size"] = image[0]
        fields["version"] = version_of(model_type)
        if fields["version"] == "v2":
            fields.pop("layer_scale_init_value", None)
        if "out_features" not in kwargs and "out_indices" not in kwargs:
            fields["out_features"] = d.get("out_features")
        fields.update(kwargs)
        return cls(**fields)
