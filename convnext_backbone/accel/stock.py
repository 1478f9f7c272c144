""""Exactly stock": the one definition the dispatch rule admits and the fast paths rely on.

The fast paths (``fused.py``, ``native.py``) read a block's parts directly: the conv's weight
as a 7x7 depthwise kernel, both projections' biases, GELU's ``approximate``, GRN's parameters
as (1, 1, 1, C4), layer scale as (C,). Whatever they read is checked here, so a module the
rule admits is one they compute exactly as its own forward would; everything else (a pruned
block replaced by ``nn.Identity``, a bias switched off, another activation, a subclass, an
instance-level ``forward``, a patched class, a hook, a parametrization, a parameter of another
dtype) runs the module itself.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..layers import GRN, Block, DropPath, LayerNorm2d

__all__ = ["ACCELERATED_DTYPES", "block_is_stock", "downsample_is_stock"]

# Parameter/activation dtypes the fast paths compute (a model entirely in one of them: the block's
# input and every parameter of it, as ``_plain`` checks). What the fast paths assume of each:
# - the C kernel (``native.DTYPES``) reads and writes it, summing in float32;
# - torch's CPU GEMMs (addmm, baddbmm) sum it in float32 and round the result once, as the
#   reference's ``F.linear`` does;
# - GRN's statistic is summed in float32 (``native.sum_of_squares`` / ``fused._SumOfSquares``)
#   and N(x) rounded to it, as ``GRN.forward`` does; LayerNorm statistics are float32 (C kernel
#   and ``F.layer_norm``);
# - folded weights are computed in float32 and rounded to it once (``fused._scaled``).
# float16 is not here: its range needs the reference's ordering of each rounding (and CPUs have no
# float16 GEMM faster than bfloat16). float64 is not here: nothing in the fast paths is faster in it.
ACCELERATED_DTYPES = frozenset({torch.float32, torch.bfloat16})

# Each class's forward as this package was imported: a class patched later computes something else.
_FORWARDS = {cls: cls.forward for cls in (Block, GRN, DropPath, LayerNorm2d, nn.Conv2d, nn.LayerNorm, nn.Linear,
                                          nn.GELU, nn.Identity, nn.Sequential)}
_BLOCK_PARTS = {"dwconv", "norm", "pwconv1", "act", "pwconv2", "drop_path"}


def _plain(m: object, cls: type, dtype: torch.dtype) -> bool:
    """``m`` is exactly a ``cls`` running its own forward, unobserved, with plain ``dtype`` CPU parameters."""
    if not (
        type(m) is cls
        and cls.forward is _FORWARDS[cls]
        and "forward" not in m.__dict__
        and not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)
        and not parametrize.is_parametrized(m)
    ):
        return False
    return all(
        p is None or (type(p) is nn.Parameter and p.dtype == dtype and p.device.type == "cpu" and p.layout == torch.strided)
        for p in m._parameters.values()
    )


def block_is_stock(block: nn.Module, dtype: torch.dtype) -> bool:
    """``block`` is a ``Block`` the fast path computes as ``Block.forward`` does."""
    if not _plain(block, Block, dtype) or dtype not in ACCELERATED_DTYPES:
        return False
    parts = block._modules
    grn = parts.get("grn")
    if set(parts) != (_BLOCK_PARTS | {"grn"} if grn is not None else _BLOCK_PARTS) or set(block._parameters) - {"gamma"}:
        return False
    conv, norm, fc1, act, fc2, drop = (parts[k] for k in ("dwconv", "norm", "pwconv1", "act", "pwconv2", "drop_path"))
    if not (_plain(conv, nn.Conv2d, dtype) and _plain(norm, nn.LayerNorm, dtype) and _plain(fc1, nn.Linear, dtype)
            and _plain(act, nn.GELU, dtype) and _plain(fc2, nn.Linear, dtype)
            and (_plain(drop, nn.Identity, dtype) or _plain(drop, DropPath, dtype))):
        return False
    c, c4 = conv.in_channels, fc1.out_features
    gamma = block.gamma
    return (
        # the C kernel's depthwise 7x7, stride 1, zero padding 3
        conv.out_channels == conv.groups == c
        and conv.kernel_size == (7, 7) and conv.stride == (1, 1) and conv.padding == (3, 3)
        and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
        # LayerNorm over the channels with both affine parameters (fused into the conv's tiles)
        and tuple(norm.normalized_shape) == (c,) and norm.weight is not None and norm.bias is not None
        # both projections with biases (residual and bias are summed before the last GEMM)
        and fc1.in_features == c and fc1.bias is not None
        and fc2.in_features == c4 and fc2.out_features == c and fc2.bias is not None
        and act.approximate in ("none", "tanh")
        and (grn is None or (_plain(grn, GRN, dtype) and grn.gamma.shape == grn.beta.shape == (1, 1, 1, c4)))
        and (gamma is None or (type(gamma) is nn.Parameter and gamma.shape == (c,)))
    )


def downsample_is_stock(layers: nn.Module, dtype: torch.dtype) -> bool:
    """The stem or a downsampling layer: a plain ``nn.Sequential`` of convs and ``LayerNorm2d``s."""
    return (
        dtype in ACCELERATED_DTYPES
        and _plain(layers, nn.Sequential, dtype)
        and all(_plain(m, nn.Conv2d, dtype) or _plain(m, LayerNorm2d, dtype) for m in layers._modules.values())
    )
