"""``ConvNextBackboneModel``: the core ConvNeXt backbone as a transformers backbone (``PreTrainedModel`` + ``BackboneMixin``).

The wrapper builds the core ``convnext_backbone.ConvNextBackbone`` and adopts its submodules as its
own, so the parameter names under the wrapper are the core's (the official checkpoint layout:
``downsample_layers.*``, ``stages.*``, ``norm{i}``) and ``forward`` is the core's forward, with
every accelerated path of the core. Inside a transformers model the backbone's keys are therefore
``backbone.stages.0.0.dwconv.weight`` etc. The core model is kept as ``core_model`` (not a
registered submodule: its parameters are the wrapper's, listed once).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BackboneOutput

try:  # transformers >= 5.x
    from transformers.backbone_utils import BackboneMixin
except ImportError:  # pragma: no cover - older 5.x layout
    from transformers.utils.backbone_utils import BackboneMixin

try:
    from transformers import initialization as init  # honours transformers' "already initialised" flags
except ImportError:  # pragma: no cover
    init = nn.init

from convnext_backbone import ConvNextBackbone as CoreConvNextBackbone
from convnext_backbone.model import init_weights_

from .configuration import ConvNextBackboneConfig

__all__ = ["ConvNextBackboneModel", "ConvNextBackbonePreTrainedModel"]


class ConvNextBackbonePreTrainedModel(PreTrainedModel):
    config_class = ConvNextBackboneConfig
    config: ConvNextBackboneConfig
    base_model_prefix = "convnext_backbone"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules: list[str] = []

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The core's (= official ConvNeXt) init, through transformers' init functions, which skip
        weights a checkpoint provided."""
        init_weights_(module, self.config.initializer_range, self.config.layer_scale_init_value, init=init)


class ConvNextBackboneModel(BackboneMixin, ConvNextBackbonePreTrainedModel):
    """ConvNeXt V1/V2 multi-scale backbone for transformers' dense-prediction models.

    ``AutoBackbone.from_config(ConvNextBackboneConfig.from_preset("convnextv2_tiny", out_features=[...]))``,
    or as ``backbone_config`` of ``UperNetConfig`` / ``Mask2FormerConfig`` / ``DetrConfig``.
    ``forward(pixel_values)`` returns transformers' ``BackboneOutput`` (``feature_maps`` in
    ``out_features`` order; ``hidden_states`` = stem + every stage when asked).
    """

    has_attentions = False

    def __init__(self, config: ConvNextBackboneConfig):
        core = CoreConvNextBackbone(config.to_core_config())
        # A plain attribute (its modules are registered below, once), set before transformers'
        # constructor, which already sets out_features and the training mode through this class.
        self.__dict__["core_model"] = core
        super().__init__(config)
        for name, child in core.named_children():
            self.add_module(name, child)
        for name, param in core.named_parameters(recurse=False):
            self.register_parameter(name, param)
        persistent = set(core.state_dict())
        for name, buf in core.named_buffers(recurse=False):
            self.register_buffer(name, buf, persistent=name in persistent)
        ours, theirs = list(self.state_dict()), list(core.state_dict())
        if ours != theirs:  # the wrapper must expose exactly the core's parameter names
            raise RuntimeError(f"wrapper keys differ from the core's: {sorted(set(ours) ^ set(theirs))[:10]}")
        self.num_features = list(core.num_features)
        # frozen_stages: transformers' loading replaces parameters (requires_grad=True); train()/eval() restore it
        self.frozen_parameter_names = tuple(n for n, p in core.named_parameters() if not p.requires_grad)
        self.post_init()
        self.train(self.training)  # core's mode and frozen stages follow the wrapper

    core_model: CoreConvNextBackbone

    # -- backbone contract --------------------------------------------------------------------------
    @property
    def strides(self) -> list[int]:
        """Stride of each returned map, in ``out_features`` order."""
        return self.core_model.strides

    # What forward returns is the core's: these read it, and setting them changes the core (its
    # output norms follow: new ones start as identity, dropped ones go) and the config with it.
    @property
    def out_features(self) -> list[str]:
        return self.core_model.out_features

    @out_features.setter
    def out_features(self, value: list[str]) -> None:
        self._set_outputs("out_features", value)

    @property
    def out_indices(self) -> list[int]:
        return self.core_model.out_indices

    @out_indices.setter
    def out_indices(self, value: list[int]) -> None:
        self._set_outputs("out_indices", value)

    def _set_outputs(self, name: str, value: Any) -> None:
        core = self.core_model
        setattr(core, name, value)  # validated by the core (ValueError naming the allowed values)
        self._modules.clear()  # adopt the core's children again, in its order
        for child_name, child in core.named_children():
            self.add_module(child_name, child)
        self.config.out_features = core.out_features  # the config's setter realigns out_indices

    # -- training mode, frozen stages, gradient checkpointing: the core's ---------------------------
    def train(self, mode: bool = True) -> ConvNextBackboneModel:
        """The core's ``train``: frozen stages stay in eval mode and without gradients.

        ``from_pretrained`` (of this class or of a model containing it) swaps in new parameters
        with ``requires_grad=True`` and ends with ``eval()``: the frozen ones are frozen again here.
        """
        super().train(mode)
        self.core_model.train(mode)  # keeps frozen stages in eval, sets the core's own flag
        for name in getattr(self, "frozen_parameter_names", ()):  # set once the wrapper has adopted the core's parameters
            self.get_parameter(name).requires_grad_(False)
        return self

    @property
    def gradient_checkpointing(self) -> bool:
        return self.core_model.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enable: bool) -> None:
        # transformers' gradient_checkpointing_enable()/disable() set this; the core checkpoints per block.
        self.core_model.set_gradient_checkpointing(bool(enable))

    # -- the core contract, as on every adapter's backbone -------------------------------------------
    @property
    def channels(self) -> list[int]:
        """Channels of each returned map, in ``out_features`` order."""
        return self.core_model.channels

    def forward_features(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None):
        """The core's ``BackboneOutput(feature_maps, hidden_states)``."""
        return self.core_model.forward_features(pixel_values, output_hidden_states)

    def forward_dict(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{out_feature: map}``."""
        return self.core_model.forward_dict(pixel_values)

    def output_norms(self) -> dict[str, nn.Module]:
        return self.core_model.output_norms()

    # -- forward ------------------------------------------------------------------------------------
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BackboneOutput | tuple:
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if return_dict is None:
            return_dict = self.config.return_dict
        out = self.core_model(pixel_values, output_hidden_states=bool(output_hidden_states))
        hidden = tuple(out.hidden_states) if output_hidden_states else None
        if not return_dict:
            return (tuple(out.feature_maps),) + ((hidden,) if hidden is not None else ())
        return BackboneOutput(feature_maps=tuple(out.feature_maps), hidden_states=hidden, attentions=None)
