"""Every public ConvNeXt checkpoint format -> the official layout our model uses.

Formats: official classification (V1 ``{'model': ...}``, V2 fine-tuned), official V2 FCMAE
pre-training (``encoder.``, sparse ``kernel`` tensors), official det/seg (``backbone.``,
``norm0..3``), Hugging Face transformers (V1/V2, Model/Backbone/ForImageClassification),
timm (V1/V2, plain or ``features_only``), mmpretrain, Detectron2 ``.pkl``, and our own
``save_pretrained``. Loading is strict by default and every key ends up in a report.

One module per step: ``reading`` (files -> state dict), ``formats`` (detection, rename tables,
architecture from shapes), ``loading`` (into a model, the report), ``pretrained`` (our directory
format, ``from_pretrained``), ``command`` (``convnext-backbone convert``).
"""
from .formats import Conversion, convert_state_dict, detect_format, infer_config
from .loading import STRICT_HINT, LoadReport, backbone_mismatch, describe_mismatch, load_checkpoint, load_converted, match_converted
from .pretrained import from_pretrained, open_checkpoint, save_pretrained
from .reading import WEIGHT_FILES, CheckpointError, read_checkpoint

__all__ = [
    "STRICT_HINT",
    "WEIGHT_FILES",
    "CheckpointError",
    "Conversion",
    "LoadReport",
    "backbone_mismatch",
    "convert_state_dict",
    "describe_mismatch",
    "detect_format",
    "from_pretrained",
    "infer_config",
    "load_checkpoint",
    "load_converted",
    "match_converted",
    "open_checkpoint",
    "read_checkpoint",
    "save_pretrained",
]
