"""ConvNeXt V1/V2 as a multi-scale backbone and as a classifier: the one model definition.

Parameter names are the official checkpoint layout (``downsample_layers``, ``stages``,
``norm{i}`` output norms, ``norm``/``head`` for classification), so official classification
and det/seg checkpoints load with no renaming and MMSegmentation's layer-decay rule, which
keys on these names, works unchanged. Every other layout is converted in ``convert.py``.

The blocks are the reference ones from ``layers.py``. Each stage hands its blocks to
``accel.run_block``, which computes a block faster only when the block is exactly the stock
one and nothing can observe the difference; otherwise it calls the block. ``model.accelerate
= False`` (or ``CONVNEXT_BACKBONE_ACCEL=0`` for the process) always calls the blocks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import accel
from .arch import config_from_preset_name
from .config import ConvNextConfig, output_norm_name
from .convert import from_pretrained, save_pretrained
from .layers import GRN, Block, LayerNorm2d

__all__ = [
    "BackboneOutput",
    "ClassifierOutput",
    "ConvNextBackbone",
    "ConvNextForImageClassification",
    "Stage",
    "build_backbone",
    "init_weights_",
    "output_norm_name",
]


class BackboneOutput(NamedTuple):
    """What transformers' ``BackboneOutput`` holds; ConvNeXt has no attentions (always None)."""

    feature_maps: tuple[torch.Tensor, ...]
    hidden_states: tuple[torch.Tensor, ...] | None = None

    @property
    def attentions(self) -> None:
        return None


class ClassifierOutput(NamedTuple):
    logits: torch.Tensor
    pooler_output: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None


class Stage(nn.Sequential):
    """The blocks of one stage, each run through the accelerator's dispatch (see module doc)."""

    def __init__(self, *blocks: Block):
        super().__init__(*blocks)
        self.accelerate = True
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        run = accel.run_block if self.accelerate else _call
        for block in self:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(run, block, x, use_reentrant=False)
            else:
                x = run(block, x)
        return x


def _call(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return module(x)


def _flag(value: bool | None, default: bool) -> bool:
    """An optional bool argument; fx symbolic tracing passes every argument as a Proxy, which
    cannot steer control flow, so a traced graph takes the config's default."""
    return default if value is None or isinstance(value, torch.fx.Proxy) else bool(value)


def init_weights_(module: nn.Module, initializer_range: float, layer_scale_init_value: float, init=nn.init) -> None:
    """The official init of one module (``model.apply`` visits them all): truncated normal for
    conv/linear with zero bias, LayerNorm (1, 0), GRN 0 (identity), layer scale its init value.
    ``init`` provides the functions (transformers passes its own, which skip loaded weights)."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        init.trunc_normal_(module.weight, std=initializer_range)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        init.ones_(module.weight)
        init.zeros_(module.bias)
    elif isinstance(module, GRN):
        init.zeros_(module.gamma)
        init.zeros_(module.beta)
    elif isinstance(module, Block) and module.gamma is not None:
        init.constant_(module.gamma, layer_scale_init_value)


def _official_init(model: _ConvNextTrunk) -> None:
    config = model.config
    model.apply(lambda m: init_weights_(m, config.initializer_range, config.layer_scale_init_value))


class _ConvNextTrunk(nn.Module):
    """Stem, downsampling layers and stages shared by the backbone and the classifier."""

    config: ConvNextConfig

    def __init__(self, config: ConvNextConfig):
        super().__init__()
        # The model's own copy: a config shared by two models (or kept by the caller) would make
        # `model.out_features = ...` on one of them change the other's outputs.
        self.config = config = config.copy()
        h, patch = config.hidden_sizes, config.patch_size
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(config.num_channels, h[0], kernel_size=patch, stride=patch), LayerNorm2d(h[0], eps=config.norm_eps))]
            + [nn.Sequential(LayerNorm2d(h[i - 1], eps=config.norm_eps), nn.Conv2d(h[i - 1], h[i], kernel_size=2, stride=2))
               for i in range(1, config.num_stages)]
        )
        rates = torch.linspace(0, config.drop_path_rate, sum(config.depths), device="cpu").tolist()  # cpu: works under torch.device("meta")
        self.stages = nn.ModuleList()
        start = 0
        for i, depth in enumerate(config.depths):
            self.stages.append(Stage(*[
                Block(h[i], rates[start + j], config.layer_scale_init_value, config.uses_grn, config.norm_eps) for j in range(depth)
            ]))
            start += depth
        self._accelerate = True
        self.set_gradient_checkpointing(config.gradient_checkpointing)

    def init_weights(self) -> None:
        """The official init of every weight (frameworks override this name with their own init
        step; the constructor uses ``_official_init``, which they cannot change)."""
        _official_init(self)

    # -- switches -------------------------------------------------------------------------------
    @property
    def accelerate(self) -> bool:
        """Whether stock blocks may run through ``convnext_backbone.accel`` (same results; default on)."""
        return self._accelerate

    @accelerate.setter
    def accelerate(self, enabled: bool) -> None:
        self._accelerate = bool(enabled)
        for stage in self.stages:
            stage.accelerate = self._accelerate

    @property
    def gradient_checkpointing(self) -> bool:
        return self.config.gradient_checkpointing

    def set_gradient_checkpointing(self, enable: bool = True) -> None:
        self.config.gradient_checkpointing = bool(enable)
        for stage in self.stages:
            stage.gradient_checkpointing = bool(enable)

    # -- input checks -------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor, needed_stride: int) -> None:
        if accel.is_tracing():  # shapes are symbolic there; the traced graph checks nothing
            return
        n_ch = self.config.num_channels
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"pixel_values must be a torch.Tensor of shape (N, {n_ch}, H, W), got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(
                f"pixel_values must be floating point (normalised pixels, e.g. (x / 255 - mean) / std), got dtype {x.dtype}; "
                "convert with .float() and normalise, or use ConvNextImageProcessor"
            )
        if x.ndim != 4:
            raise ValueError(f"pixel_values must be 4-D (N, {n_ch}, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != n_ch:
            raise ValueError(
                f"pixel_values has {x.shape[1]} channels but the model expects num_channels={n_ch} "
                f"(shape (N, {n_ch}, H, W)); got {tuple(x.shape)}"
            )
        if x.shape[2] < needed_stride or x.shape[3] < needed_stride:
            raise ValueError(
                f"image of size {tuple(x.shape[2:])} is smaller than the total stride {needed_stride} of the requested "
                f"outputs; height and width must be >= {needed_stride}"
            )

    def forward_trunk(self, x: torch.Tensor, last_index: int) -> list[torch.Tensor]:
        """Hidden states [stem, stage1, ...] up to ``last_index``; deeper stages are skipped."""
        self._check_input(x, self.config.strides[last_index])
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        run = accel.run_downsample if self._accelerate else _call
        x = run(self.downsample_layers[0], x)
        hidden = [x]
        for i in range(last_index):
            if i > 0:
                x = run(self.downsample_layers[i], x)
            x = self.stages[i](x)
            hidden.append(x)
        return hidden

    # -- persistence --------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (official layout) atomically."""
        return save_pretrained(self, save_directory)

    @classmethod
    def from_pretrained(cls, path: str | Path, strict: bool = True, **config_overrides: Any):
        """Load any supported checkpoint format (file, directory or hub name), converting as needed;
        the model is returned in eval mode, as transformers does."""
        return from_pretrained(cls, path, strict=strict, **config_overrides).eval()

    @classmethod
    def from_preset(cls, name: str, **config_overrides: Any):
        return cls(config_from_preset_name(name, **config_overrides))


class ConvNextBackbone(_ConvNextTrunk):
    """Multi-scale ConvNeXt backbone with the HF backbone contract.

    ``stage_names`` = ``("stem", "stage1", ...)``; ``out_features``/``out_indices`` select what
    ``forward`` returns, in that order, each through its own output LayerNorm unless
    ``config.norm_outputs`` is False. Framework adapters override ``forward`` to return their
    own format; ``forward_features``, ``forward_dict`` and export use the core contract.
    """

    backbone_type = "transformers"  # the value of transformers' BackboneType for its own (non-timm) backbones

    def __init__(self, config: ConvNextConfig):
        super().__init__(config)
        self._sync_output_norms()
        _official_init(self)
        self._freeze_stages()

    # -- the HF backbone contract -------------------------------------------------------------
    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(self.config.stage_names)

    @property
    def out_features(self) -> list[str]:
        return self.config.out_features

    @out_features.setter
    def out_features(self, value) -> None:
        self.config.out_features = value  # validated and aligned by the config, as BackboneMixin does
        self._sync_output_norms()

    @property
    def out_indices(self) -> list[int]:
        return self.config.out_indices

    @out_indices.setter
    def out_indices(self, value) -> None:
        self.config.out_indices = value
        self._sync_output_norms()

    @property
    def channels(self) -> list[int]:
        return [self.config.channels_per_stage[i] for i in self.out_indices]

    @property
    def strides(self) -> list[int]:
        return [self.config.strides[i] for i in self.out_indices]

    @property
    def num_features(self) -> list[int]:
        return self.config.channels_per_stage

    @property
    def out_feature_channels(self) -> dict[str, int]:
        """Channels of every stage name (not only the selected ones), as transformers has it."""
        return dict(zip(self.stage_names, self.config.channels_per_stage))

    def output_norms(self) -> dict[str, nn.Module]:
        return {self.stage_names[i]: getattr(self, output_norm_name(i)) for i in self.out_indices if self.config.norm_outputs}

    def _sync_output_norms(self) -> None:
        """One output LayerNorm per selected stage and none for the others; a new one starts as identity."""
        want = set(self.out_indices) if self.config.norm_outputs else set()
        ref = self.downsample_layers[0][0].weight
        norms = {}
        for i in range(len(self.stage_names)):
            name = output_norm_name(i)
            norm = self._modules.pop(name, None)
            if i in want and norm is None:
                norm = LayerNorm2d(self.config.channels_per_stage[i], eps=self.config.norm_eps)
                if ref.device.type != "meta":
                    norm.to(device=ref.device, dtype=ref.dtype)
            if i in want:
                norms[name] = norm
        for name, norm in norms.items():  # in stage order, after the trunk: a stable state-dict order
            self.add_module(name, norm)

    def forward_features(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None) -> BackboneOutput:
        """The core contract every adapter keeps: ``BackboneOutput(feature_maps, hidden_states)``."""
        output_hidden_states = _flag(output_hidden_states, self.config.output_hidden_states)
        last = self.config.num_stages if output_hidden_states else max(self.out_indices)
        hidden = self.forward_trunk(pixel_values, last)
        maps = []
        for idx in self.out_indices:
            x = hidden[idx]
            if self.config.norm_outputs:
                x = getattr(self, output_norm_name(idx))(x)
            maps.append(x)
        return BackboneOutput(tuple(maps), tuple(hidden) if output_hidden_states else None)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None) -> BackboneOutput:
        return self.forward_features(pixel_values, output_hidden_states)

    def forward_dict(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{out_feature: map}``, what Detectron2 and export consume."""
        return dict(zip(self.out_features, self.forward_features(pixel_values).feature_maps))

    # -- training knobs -----------------------------------------------------------------------
    def _frozen_modules(self) -> list[nn.Module]:
        k = self.config.frozen_stages
        if k < 0:
            return []
        mods: list[nn.Module] = [self.downsample_layers[0]]
        for i in range(k):
            if i > 0:
                mods.append(self.downsample_layers[i])
            mods.append(self.stages[i])
        return mods

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._frozen_modules():
            m.eval()  # frozen stages keep norms in eval and drop no paths
        return self


class ConvNextForImageClassification(_ConvNextTrunk):
    """Global average pool -> LayerNorm -> Linear, as the official classifier (``norm``, ``head``)."""

    def __init__(self, config: ConvNextConfig):
        super().__init__(config)
        self.norm = nn.LayerNorm(config.hidden_sizes[-1], eps=config.layer_norm_eps)
        self.head = nn.Linear(config.hidden_sizes[-1], config.num_labels)
        _official_init(self)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None) -> ClassifierOutput:
        output_hidden_states = _flag(output_hidden_states, self.config.output_hidden_states)
        hidden = self.forward_trunk(pixel_values, self.config.num_stages)
        pooled = self.norm(hidden[-1].mean(dim=(-2, -1)))
        return ClassifierOutput(self.head(pooled), pooled, tuple(hidden) if output_hidden_states else None)


def build_backbone(name: str, **config_overrides: Any) -> ConvNextBackbone:
    """``build_backbone("convnextv2_tiny", out_indices=[1, 2, 3, 4], drop_path_rate=0.2)``."""
    return ConvNextBackbone(config_from_preset_name(name, **config_overrides))
