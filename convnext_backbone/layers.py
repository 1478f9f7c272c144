"""The ConvNeXt building blocks, written as the papers describe them.

This is the reference: every submodule is an ordinary module called in order, so forward
hooks, wrapped or quantised layers, parametrizations, fx tracing, ``torch.compile``, export
and half precision all see exactly this computation. ``convnext_backbone.accel`` may compute
a stock block faster, but only where nothing could tell the difference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LN_EPS", "Block", "DropPath", "GRN", "LayerNorm2d"]

LN_EPS = 1e-6  # the LayerNorm eps of ConvNeXt (official, timm, HF, DINOv3); timm's CLIP convnext_xxlarge uses 1e-5


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor; the permutes are free views on channels_last.

    Statistics are accumulated in float32 for float16/bfloat16 input (``F.layer_norm`` does so on
    CPU and CUDA), so half precision never overflows here.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GRN(nn.Module):
    """Global Response Normalization (ConvNeXt V2) on NHWC input; official (1, 1, 1, C) parameters.

    ``GRN(x) = gamma * (x * N(x)) + beta + x`` with ``N(x) = |x|_2 / mean_c |x|_2`` over space.
    The L2 norm is accumulated and kept in float32 (float64 for a float64 model): in float16 a sum
    of squares over a large feature map passes 65504, and even its square root is better kept wide.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # An exported graph says float32 explicitly: runtimes differ in how they accumulate a half reduction.
        wide = torch.promote_types(x.dtype, torch.float32)  # float32 for half types; float64 stays float64
        src = x.to(wide) if torch.onnx.is_in_onnx_export() and x.dtype != wide else x
        gx = torch.linalg.vector_norm(src, ord=2, dim=(1, 2), keepdim=True, dtype=wide)
        nx = (gx / (gx.mean(dim=-1, keepdim=True) + self.eps)).to(x.dtype)
        return self.gamma * (x * nx) + self.beta + x


class DropPath(nn.Module):
    """Stochastic depth per sample; identity in eval."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Block(nn.Module):
    """ConvNeXt block: dwconv 7x7 -> LayerNorm -> Linear 4x -> GELU [-> GRN] -> Linear [-> layer scale],
    then drop path and the residual.

    Layer scale (V1) stays a parameter named ``gamma`` on the block, where the official
    checkpoints put it; V2 replaces it with GRN.
    """

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init_value: float = 0.0, use_grn: bool = False,
                 norm_eps: float = LN_EPS):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim) if use_grn else None
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init_value))) if layer_scale_init_value > 0 else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C): a free view on channels_last
        x = self.norm(x)
        x = self.pwconv1(x)
        x = self.act(x)
        if self.grn is not None:
            x = self.grn(x)
        x = self.pwconv2(x)
        if self.gamma is not None:
            x = self.gamma * x
        x = x.permute(0, 3, 1, 2)
        return shortcut + self.drop_path(x)
