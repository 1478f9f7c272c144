"""What torch is doing right now, as far as the dispatch rule must know: every private torch
API the accelerator depends on lives here, and nowhere else.

Each probe answers "could something observe or transform this call?" (a tracer, a compiler, a
torch function or dispatch mode, a functorch transform, forward-mode AD, a global module
hook). Some of these have no public API; ``PRIVATE_APIS`` lists them, ``check_private_apis()``
verifies them (a test calls it, so a torch upgrade that moves one fails loudly instead of
silently accelerating something it should not).
"""
from __future__ import annotations

import importlib

import torch
from torch.nn.modules import module as _module_globals

__all__ = ["PRIVATE_APIS", "check_private_apis", "cpu_bf16_supported", "forward_ad_active", "global_module_hooks", "is_tracing", "plain_execution"]

# (module, attribute) of each private torch name used below.
PRIVATE_APIS = (
    ("torch._C", "_is_torch_function_mode_enabled"),
    ("torch._C", "_len_torch_dispatch_stack"),
    ("torch._C._functorch", "is_functorch_wrapped_tensor"),
    ("torch.fx._symbolic_trace", "is_fx_symbolic_tracing"),
    ("torch.autograd.forward_ad", "_current_level"),
    ("torch.nn.modules.module", "_global_forward_hooks"),
    ("torch.nn.modules.module", "_global_forward_pre_hooks"),
    ("torch.nn.modules.module", "_global_backward_hooks"),
    ("torch.nn.modules.module", "_global_backward_pre_hooks"),
    ("torch.cpu", "_is_avx512_bf16_supported"),
    ("torch.cpu", "_is_amx_tile_supported"),
)


def check_private_apis() -> list[str]:
    """The private torch names this module needs that this torch lacks (empty when all is well)."""
    missing = []
    for mod, attr in PRIVATE_APIS:
        try:
            if not hasattr(importlib.import_module(mod), attr):
                missing.append(f"{mod}.{attr}")
        except ImportError:
            missing.append(f"{mod}.{attr}")
    return missing


def is_tracing() -> bool:
    """Any tracer or compiler is recording: jit trace/script, fx, dynamo / torch.export, ONNX export."""
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
        or torch.fx._symbolic_trace.is_fx_symbolic_tracing()
    )


def forward_ad_active() -> bool:
    """A forward-mode AD level is open (``torch.autograd.forward_ad.dual_level``): tangents may ride
    on any tensor, and the accelerator's out= ops and C kernel carry none."""
    return torch.autograd.forward_ad._current_level >= 0


def global_module_hooks() -> bool:
    """A hook registered for every module (``register_module_forward_hook`` and friends)."""
    g = _module_globals
    return bool(g._global_forward_hooks or g._global_forward_pre_hooks or g._global_backward_hooks
                or g._global_backward_pre_hooks)


def plain_execution(x: torch.Tensor) -> bool:
    """Eager CPU execution on a plain dense tensor that nothing records, transforms or intercepts."""
    return (
        not is_tracing()  # first: under a tracer even x.numel() is recorded
        and type(x) is torch.Tensor
        and x.device.type == "cpu"
        and x.layout == torch.strided
        and x.numel() > 0
        and not torch.is_autocast_enabled("cpu")
        and not torch._C._is_torch_function_mode_enabled()
        and not torch._C._len_torch_dispatch_stack()
        and not torch._C._functorch.is_functorch_wrapped_tensor(x)
        and not forward_ad_active()
        and not global_module_hooks()
    )


def cpu_bf16_supported() -> bool:
    """torch's own answer to "does this CPU compute bfloat16 natively" (oneDNN's bf16 ISA check);
    the accelerator asks /proc/cpuinfo first and this only where there is none."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
