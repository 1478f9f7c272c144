"""Optimizer rules of the ConvNeXt recipes that do not depend on a framework.

``no_weight_decay(name, param)``: the parameters the official ConvNeXt V1 detection/segmentation
and V2 fine-tuning code exclude from weight decay: every 1-D parameter (norm weights, biases,
V1 layer scale ``gamma``), every ``.bias``, and every ``.gamma`` / ``.beta`` (V2's GRN stores
them with shape ``(1, 1, 1, C)``, so a rule on ``ndim`` alone would decay them). Adapters build
their parameter groups with their framework's machinery and take this rule from here.
"""
from __future__ import annotations

from typing import Any

__all__ = ["NO_DECAY_SUFFIXES", "no_weight_decay"]

# Name endings that never get weight decay, whatever their shape (GRN gamma/beta are 4-D).
NO_DECAY_SUFFIXES = (".bias", ".gamma", ".beta")


def no_weight_decay(name: str, param: Any) -> bool:
    """True if the parameter ``name`` (any prefix) must be trained without weight decay."""
    return len(param.shape) <= 1 or name.endswith(NO_DECAY_SUFFIXES)
