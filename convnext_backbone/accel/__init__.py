"""The accelerator: faster CPU computation of stock ConvNeXt blocks, never observable.

The model (``model.py``, ``layers.py``) is the reference. This package may compute a block,
or a stem/downsampling layer, another way (a C depthwise kernel, a fused streaming block,
reused buffers, a memory-lean training MLP, patch convs as GEMMs) under one rule, checked
per module and per call by ``accelerates(module, x)``:

- the process switch is on (``CONVNEXT_BACKBONE_ACCEL=0`` or ``set_enabled(False)`` turns it
  off; ``model.accelerate = False`` turns it off for one model);
- plain eager execution on CPU in float32 or bfloat16 (``stock.ACCELERATED_DTYPES``; a whole
  bfloat16 model, ``model.to(torch.bfloat16)``) (``torch_state.plain_execution``): no autocast, no
  jit/fx tracing, no ``torch.compile`` / ``torch.export`` / ONNX export, no torch function or
  dispatch mode (FlopCounterMode, FakeTensor, ...), no functorch transform, no forward-mode AD,
  no global module hooks, a plain dense tensor;
- the module is exactly the stock one (``stock.py``, the definition the fast paths rely on):
  every part of its exact class and stock configuration, running its class's own forward, no
  hooks, no parametrizations, plain CPU parameters of the input's dtype.

Anything else runs the module itself, so hooks fire, wrapped, quantised or customised layers
compute what they compute, and tracing sees the reference ops. Where the rule admits a module
the result equals the reference within the dtype's rounding (float32: the tests hold it to 1e-5;
bfloat16: the same float32 sums, rounded to bfloat16 where the reference rounds, or once where a
weight is folded), and so do its gradients, of any order: a backward recorded with
``create_graph=True`` is itself differentiable (it recomputes through the reference ops).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ..layers import Block
from .stock import ACCELERATED_DTYPES, block_is_stock, downsample_is_stock
from .torch_state import is_tracing, plain_execution
from .workspace import release_workspace, workspace_bytes

__all__ = [
    "accelerates",
    "enabled",
    "is_tracing",
    "native_status",
    "release_workspace",
    "run_block",
    "run_downsample",
    "set_enabled",
    "workspace_bytes",
]

_enabled: bool | None = None  # None: not set in this process; CONVNEXT_BACKBONE_ACCEL decides


def set_enabled(enabled: bool | None) -> None:
    """Turn the accelerator on or off for the whole process (the reference path is always correct);
    ``None`` goes back to what ``CONVNEXT_BACKBONE_ACCEL`` says."""
    global _enabled
    _enabled = None if enabled is None else bool(enabled)


def enabled() -> bool:
    """``set_enabled``'s value, else ``CONVNEXT_BACKBONE_ACCEL`` (read now, not at import: set it any time)."""
    return _enabled if _enabled is not None else os.environ.get("CONVNEXT_BACKBONE_ACCEL", "1") != "0"


def accelerates(module: nn.Module, x: torch.Tensor) -> bool:
    """The one dispatch rule (see the module doc): may ``module(x)`` be computed by the accelerator?"""
    if not (enabled() and x.dtype in ACCELERATED_DTYPES and plain_execution(x)):
        return False
    return block_is_stock(module, x.dtype) if type(module) is Block else downsample_is_stock(module, x.dtype)


def run_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block(x)``, computed by the accelerator when the rule admits it."""
    if accelerates(block, x):
        from . import fused

        return fused.block_forward(block, x)
    return block(x)


def run_downsample(layers: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layers(x)`` for the stem or a downsampling layer: patch convs as GEMMs in CPU training."""
    if torch.is_grad_enabled() and accelerates(layers, x):
        from . import fused

        return fused.downsample_forward(layers, x)
    return layers(x)


def native_status() -> str:
    """'ok', or why the C kernel is not used (builds it on first call)."""
    from . import native

    return native.native_status()
