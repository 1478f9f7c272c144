"""transformers adapter: the ConvNeXt V1/V2 backbone in transformers' ``AutoConfig`` / ``AutoBackbone``.

``import transformers_convnext`` registers model type ``"convnext_backbone"``:

- ``ConvNextBackboneConfig`` (``AutoConfig``), a ``PreTrainedConfig`` with ``BackboneConfigMixin``
  semantics; ``ConvNextBackboneConfig.from_preset("convnextv2_tiny", out_features=[...])``;
- ``ConvNextBackboneModel`` (``AutoBackbone`` and ``AutoModel``), a ``PreTrainedModel`` + ``BackboneMixin`` wrapping the
  core model under the core's parameter names.

Then ``UperNetConfig`` / ``Mask2FormerConfig`` / ``DetrConfig(backbone_config=...)`` build on it, and
``save_pretrained`` / ``from_pretrained`` work as for any transformers model (import this package
first in the loading process). ``checkpoint`` converts transformers checkpoints that use HF's
ConvNeXt backbone (or DINOv3's) and loads any core checkpoint format into the backbone part, and
checks an image processor's normalisation against the backbone's weights family.
"""
from transformers import AutoBackbone, AutoConfig, AutoModel

from .checkpoint import (
    NormalisationWarning,
    check_image_processor,
    convert_hf_checkpoint,
    find_backbone,
    from_hf_pretrained,
    load_backbone_weights,
)
from .configuration import MODEL_TYPE, ConvNextBackboneConfig
from .modeling import ConvNextBackboneModel, ConvNextBackbonePreTrainedModel

AutoConfig.register(MODEL_TYPE, ConvNextBackboneConfig, exist_ok=True)
AutoBackbone.register(ConvNextBackboneConfig, ConvNextBackboneModel, exist_ok=True)
AutoModel.register(ConvNextBackboneConfig, ConvNextBackboneModel, exist_ok=True)  # a local-directory Auto path (see README)

__all__ = [
    "MODEL_TYPE",
    "ConvNextBackboneConfig",
    "ConvNextBackboneModel",
    "ConvNextBackbonePreTrainedModel",
    "NormalisationWarning",
    "check_image_processor",
    "convert_hf_checkpoint",
    "find_backbone",
    "from_hf_pretrained",
    "load_backbone_weights",
]
