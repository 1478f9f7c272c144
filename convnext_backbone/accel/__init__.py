"""The accelerator: faster CPU computation of stock ConvNeXt blocks, never observable.

The model (``model.py``, ``layers.py``) is the reference. This package may compute a block,
or a stem/downsampling layer, another way (a C depthwise kernel, a fused streaming block,
reused buffers, a memory-lean training MLP, patch convs as GEMMs) under one rule, checked
per module and per call by ``accelerates(module, x)``:

- the process switch is on (``CONVNEXT_BACKBONE_ACCEL=0`` or ``set_enabled(False)`` turns it
  off; ``model.accelerate = False`` turns it off for one model);
- plain eager execution on CPU in float32: no autocast, no jit/fx tracing, no
  ``torch.compile`` / ``torch.export`` / ONNX export, no torch function or dispatch mode
  (FlopCounterMode, FakeTensor, ...), no functorch transform, a plain dense tensor;
- the module is exactly the stock one: every submodule of an exact stock class, no forward,
  pre-forward or backward hooks on any of them (nor global module hooks), no parametrizations,
  plain float32 CPU parameters.

Anything else runs the module itself, so hooks fire, wrapped, quantised or customised layers
compute what they compute, and tracing sees the reference ops. Where the rule admits a module
the result equals the reference within float32 rounding (the tests hold it to 1e-5).
"""
from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn.modules import module as _module_globals
from torch.nn.utils import parametrize

from ..layers import GRN, Block, DropPath, LayerNorm2d
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

# Exact classes (not subclasses: a subclass may compute something else) a stock module is made of.
STOCK_TYPES = frozenset({Block, GRN, DropPath, LayerNorm2d, nn.Conv2d, nn.LayerNorm, nn.Linear, nn.GELU, nn.Identity, nn.Sequential})

_enabled = os.environ.get("CONVNEXT_BACKBONE_ACCEL", "1") != "0"


def set_enabled(enabled: bool) -> None:
    """Turn the accelerator on or off for the whole process (the reference path is always correct)."""
    global _enabled
    _enabled = bool(enabled)


def enabled() -> bool:
    return _enabled


def is_tracing() -> bool:
    """Any tracer or compiler is recording: jit trace/script, fx, dynamo / torch.export, ONNX export."""
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
        or torch.fx._symbolic_trace.is_fx_symbolic_tracing()
    )


def _plain_execution(x: torch.Tensor) -> bool:
    return (
        not is_tracing()
        and type(x) is torch.Tensor
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.layout == torch.strided
        and x.numel() > 0
        and not torch.is_autocast_enabled("cpu")
        and not torch._C._is_torch_function_mode_enabled()
        and not torch._C._len_torch_dispatch_stack()
        and not torch._C._functorch.is_functorch_wrapped_tensor(x)
    )


def _global_hooks() -> bool:
    g = _module_globals
    return bool(g._global_forward_hooks or g._global_forward_pre_hooks or g._global_backward_hooks
                or g._global_backward_pre_hooks)


def _stock(module: nn.Module) -> bool:
    for m in module.modules():
        if (
            type(m) not in STOCK_TYPES
            or m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
            or parametrize.is_parametrized(m)
        ):
            return False
        for p in m._parameters.values():
            if p is not None and (type(p) is not nn.Parameter or p.dtype != torch.float32 or p.device.type != "cpu"
                                  or p.layout != torch.strided):
                return False
    return True


def accelerates(module: nn.Module, x: torch.Tensor) -> bool:
    """The one dispatch rule (see the module doc): may ``module(x)`` be computed by the accelerator?"""
    return _enabled and _plain_execution(x) and not _global_hooks() and _stock(module)


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
