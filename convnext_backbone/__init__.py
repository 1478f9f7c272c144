"""ConvNeXt V1/V2 as a multi-scale backbone: one model, HF backbone semantics, every checkpoint format.

Imports torch only; the Detectron2, MMSegmentation, MMDetection and transformers adapters live in
``integrations/`` (their package names: ``convnext_backbone.adapters.ADAPTERS``).
"""
from .accel import release_workspace
from .config import ConvNextConfig, ConvNextV2Config
from .convert import CheckpointError, LoadReport, load_checkpoint
from .export import extract_features  # the multi-scale feature export API (convnext_backbone.export)
from .model import BackboneOutput, ConvNextBackbone, ConvNextForImageClassification, build_backbone
from .presets import list_presets
from .processing import ConvNextImageProcessor

__version__ = "0.1.0"

__all__ = [
    "BackboneOutput",
    "CheckpointError",
    "ConvNextBackbone",
    "ConvNextConfig",
    "ConvNextForImageClassification",
    "ConvNextImageProcessor",
    "ConvNextV2Config",
    "LoadReport",
    "build_backbone",
    "extract_features",
    "list_presets",
    "load_checkpoint",
    "release_workspace",
]
