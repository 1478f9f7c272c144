"""Multi-scale feature export: the ``extract_features`` API, the ``export`` / ``export-onnx`` /
``show`` commands, and the readers for what they write.

onnx, onnxruntime and matplotlib (the ``export`` extra) are imported only by the functions
that need them.
"""
from .features import extract_features, load_model
from .images import Letterbox, ProcessorResize, list_inputs, load_image, make_transform
from .store import load_features, read_manifest, verify_export

__all__ = [
    "Letterbox", "ProcessorResize", "extract_features", "list_inputs", "load_features", "load_image", "load_model",
    "make_transform", "read_manifest", "verify_export",
]
