"""Faster CPU float32 / bfloat16 computation of a stock block, stem or downsampling layer.

Called only by ``accel.run_block`` / ``accel.run_downsample`` after the dispatch rule admitted
the module; the math is the reference block's, in an order chosen for memory traffic:

- Inference: depthwise conv + LayerNorm in the C kernel (one pass, the tile normalised while
  in cache), the first projection into a reused buffer, GELU in place, the second projection
  accumulated onto residual + bias. V1 streams the block over chunks of image rows, so its
  4x-wide hidden tensor never exists whole (a chunk's stays in cache). V2's GRN needs the
  whole map's statistic before the second projection, so V2 goes one sample at a time: its
  hidden tensor, the sum of squares in one C pass, and GRN folded into per-sample weights of
  that projection.
- Training: the C depthwise kernel (its weight gradient is ~7x faster than oneDNN's), for V1 a
  custom MLP function that keeps one 4x-wide tensor for backward instead of two and computes
  its backward in a reused buffer, for V2 GRN folded into a batched GEMM; residual and bias
  are summed first so that the last GEMM accumulates into them. Patch convs (stem and
  downsampling, kernel == stride) run as GEMMs, whose backward is ~2x faster than oneDNN's.

bfloat16 runs the same code: the GEMMs are torch's bfloat16 GEMMs (float32 sums), the C kernel
reads and writes bfloat16 with float32 sums, and GRN's statistic is summed in float32 in one
pass over the bfloat16 hidden tensor; N(x) is rounded to bfloat16 as the reference rounds it,
and each folded weight (GRN's scale or layer scale times the projection) is computed in
float32 and rounded once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import DropPath
from . import native
from .workspace import workspace

__all__ = ["block_forward", "downsample_forward"]

# Rows of a streamed chunk are chosen so that its 4x-wide hidden tensor is about this large:
# the chunk, its input and the block's weights stay in the last-level cache.
CHUNK_BYTES = 16 << 20


def block_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if not x.is_contiguous(memory_format=torch.channels_last):
        return block(x)  # the fast paths index NHWC memory; nothing to gain from a copy
    params = block.parameters()
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))
    drop_path_active = block.training and isinstance(block.drop_path, DropPath) and block.drop_path.drop_prob > 0
    if needs_grad or drop_path_active:
        return _autograd_forward(block, x)
    return _streamed_forward(block, x)


# ---------------------------------------------------------------------------------------------
# inference: the block streamed over chunks of image rows
# ---------------------------------------------------------------------------------------------
def _streamed_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    n, c, hh, ww = x.shape
    c4 = block.pwconv1.out_features
    conv, norm, fc1, fc2 = block.dwconv, block.norm, block.pwconv1, block.pwconv2
    approximate = block.act.approximate
    if native.usable(x):
        def normed(r0: int, r1: int) -> torch.Tensor:  # LayerNorm(dwconv(x)) for image rows [r0, r1)
            out = workspace((r1 - r0) * ww * c, x.dtype, "normed").view((r1 - r0) * ww, c)
            return native.depthwise7_norm_rows(x, conv, norm, out, r0, r1)
    else:  # C kernel unavailable for this shape: torch ops for the narrow part, the wide part still streamed
        whole = norm(conv(x).permute(0, 2, 3, 1)).reshape(-1, c)

        def normed(r0: int, r1: int) -> torch.Tensor:
            return whole[r0 * ww:r1 * ww]

    out = x.new_empty((n, hh, ww, c))
    x_rows, out_rows = x.permute(0, 2, 3, 1).reshape(-1, c), out.view(-1, c)
    w1t = fc1.weight.t()
    epilogue = native.usable_rows(x.new_empty((0, c4)))  # the C kernel adds the bias and applies GELU
    residual_epilogue = native.usable_rows(x_rows)  # ... and sums residual, branch and bias

    def hidden_of(t: torch.Tensor, h: torch.Tensor, sumsq: bool = False) -> torch.Tensor | None:
        """``h = gelu(t @ w1t + b1)``; with ``sumsq``, return GRN's float32 statistic of it too."""
        if epilogue:  # the GEMM without its bias, then bias + GELU (+ the statistic) in one pass
            torch.mm(t, w1t, out=h)
            return native.bias_gelu_(h, fc1.bias, approximate, sumsq)
        torch.addmm(fc1.bias, t, w1t, out=h)
        torch.ops.aten.gelu_(h, approximate=approximate)
        return _sum_of_squares(h.unsqueeze(0))[0] if sumsq else None

    def residual(p0: int, p1: int, h: torch.Tensor, w2t: torch.Tensor, b2: torch.Tensor) -> None:
        """Rows [p0, p1) of the output: ``x + h @ w2t + b2``."""
        if x.dtype == torch.float32:  # the last GEMM accumulates onto residual + bias
            torch.add(x_rows[p0:p1], b2, out=out_rows[p0:p1]).addmm_(h, w2t)
        else:  # the branch rounded to the dtype before the residual sum, as the reference rounds it
            branch = workspace((p1 - p0) * c, x.dtype, "branch").view(p1 - p0, c)
            if residual_epilogue:  # x + (branch + bias) summed in float32, rounded once
                native.residual_(x_rows[p0:p1], torch.mm(h, w2t, out=branch), b2, out_rows[p0:p1])
            else:
                torch.add(x_rows[p0:p1], torch.addmm(b2, h, w2t, out=branch), out=out_rows[p0:p1])

    if block.grn is None:
        step = max(1, CHUNK_BYTES // (ww * c4 * x.element_size()))  # image rows per chunk
        w2t, b2 = fc2.weight.t(), fc2.bias
        if block.gamma is not None:  # layer scale folded into the projection
            w2t, b2 = _scaled(w2t, block.gamma, epilogue), _scaled(b2, block.gamma)
        hidden = workspace(min(step, n * hh) * ww * c4, x.dtype, "hidden")
        for r0 in range(0, n * hh, step):
            r1 = min(n * hh, r0 + step)
            p0, p1 = r0 * ww, r1 * ww
            h = hidden[:(p1 - p0) * c4].view(p1 - p0, c4)
            hidden_of(normed(r0, r1), h)
            residual(p0, p1, h, w2t, b2)
        return out.permute(0, 3, 1, 2)

    grn = block.grn
    w2t = fc2.weight.t()
    b2 = F.linear(grn.beta.reshape(1, c4), fc2.weight, fc2.bias)  # GRN's shift through the projection
    hidden = workspace(hh * ww * c4, x.dtype, "hidden").view(hh * ww, c4)  # one sample at a time
    for i in range(n):
        sumsq = hidden_of(normed(i * hh, (i + 1) * hh), hidden, sumsq=True)
        scale = _grn_scale(grn, sumsq.unsqueeze(0))[0]
        residual(i * hh * ww, (i + 1) * hh * ww, hidden, _scaled(w2t, scale.unsqueeze(1), epilogue), b2)  # GRN folded in
    return out.permute(0, 3, 1, 2)


def _scaled(w: torch.Tensor, scale: torch.Tensor, in_c: bool = False) -> torch.Tensor:
    """``w * scale`` in float32, rounded once to ``w``'s dtype (no-op casts for float32). ``in_c``: for
    the transposed weight ``w`` of a projection, in one C pass into a reused buffer (the scale is
    per row or per column of ``w``, each a column or a row of the contiguous weight)."""
    if not in_c or w.dim() != 2 or w.is_contiguous() or not w.t().is_contiguous():
        return (w.float() * scale.float()).to(w.dtype)
    weight = w.t()  # the projection's contiguous (out, in) weight
    out = workspace(weight.numel(), w.dtype, "folded").view(weight.shape)
    per_row = scale.dim() == 1 or scale.shape[-1] != 1  # a scale over w's columns is one over weight's rows
    native.scale_(weight, scale.reshape(-1) if per_row else None, None if per_row else scale.reshape(-1), out)
    return out.t()


def _sum_of_squares(h: torch.Tensor) -> torch.Tensor:
    """Float32 sums of h*h over dim 1 of an (N, L, C) tensor: one pass in C, no temporary."""
    got = native.sum_of_squares(h)
    if got is not None:
        return got
    # without the C kernel: float32 sums as the reference's GRN takes them (float32 for float32 too)
    return (h * h).sum(1) if h.dtype == torch.float32 else torch.linalg.vector_norm(h, dim=1, dtype=torch.float32).square()


def _grn_scale(grn: nn.Module, sumsq: torch.Tensor) -> torch.Tensor:
    """GRN as a per-sample channel scale in float32: ``GRN(x) = x * scale + beta``; ``sumsq`` is (N, C),
    float32. N(x) is rounded to the model's dtype first, as the reference rounds it."""
    gx = sumsq.sqrt()
    nx = (gx / (gx.mean(dim=-1, keepdim=True) + grn.eps)).to(grn.gamma.dtype).float()
    return 1.0 + grn.gamma.reshape(1, -1).float() * nx


# ---------------------------------------------------------------------------------------------
# training (and inference with drop path active): autograd through lean custom pieces
# ---------------------------------------------------------------------------------------------
def _autograd_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    n, c, hh, ww = x.shape
    conv = block.dwconv
    t = native.depthwise7(x, conv) if native.usable(x) else conv(x)
    t = block.norm(t.permute(0, 2, 3, 1))
    fc1, fc2 = block.pwconv1, block.pwconv2
    c4 = fc1.out_features
    if block.grn is None:
        w, b = fc2.weight, fc2.bias
        if block.gamma is not None:
            w, b = _scaled(w, block.gamma[:, None]), _scaled(b, block.gamma)
        t = t.reshape(-1, c)
        approximate = block.act.approximate
        return _residual(block, x, (n * hh * ww,), b,
                         lambda acc: _LeanMLP.apply(t, fc1.weight, fc1.bias, w.t(), acc, approximate))
    h = block.act(fc1(t)).reshape(n, hh * ww, c4)
    sumsq = (h * h).sum(dim=1) if h.dtype == torch.float32 else _SumOfSquares.apply(h)
    ws = _scaled(fc2.weight.t(), _grn_scale(block.grn, sumsq).unsqueeze(-1))  # (N, C4, C)
    b = F.linear(block.grn.beta.reshape(1, c4), fc2.weight, fc2.bias)
    return _residual(block, x, (n, hh * ww), b, lambda acc: torch.baddbmm(acc, h, ws))


def _residual(block: nn.Module, x: torch.Tensor, rows: tuple[int, ...], b: torch.Tensor, project) -> torch.Tensor:
    """``x + drop_path(project(b))`` when drop path is active or the dtype is not float32 (the branch
    rounded before the residual sum, as the reference rounds it); otherwise ``project(x + b)``: the
    residual and bias summed first, so that the last GEMM accumulates into them."""
    n, c, hh, ww = x.shape
    drop = block.training and isinstance(block.drop_path, DropPath) and block.drop_path.drop_prob > 0
    if drop or x.dtype != torch.float32:
        branch = project(b).view(n, hh, ww, c).permute(0, 3, 1, 2)
        return x + (block.drop_path(branch) if drop else branch)
    acc = x.permute(0, 2, 3, 1).reshape(*rows, c) + b  # the permute is a view on channels_last input
    return project(acc).view(n, hh, ww, c).permute(0, 3, 1, 2)


class _SumOfSquares(torch.autograd.Function):
    """Float32 sums of h*h over dim 1 of a bfloat16 (N, L, C) tensor in one pass (the C kernel),
    never a float32 copy of ``h``; the gradient ``2 h g`` in ``h``'s dtype."""

    @staticmethod
    def forward(ctx, h):
        ctx.save_for_backward(h)
        return _sum_of_squares(h)

    @staticmethod
    def backward(ctx, grad):
        (h,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: through the reference ops
            return native.differentiable_grads(lambda h: h.float().square().sum(1), (h,), (True,), grad)
        return h * (2 * grad).to(h.dtype).unsqueeze(1)


class _LeanMLP(torch.autograd.Function):
    """``acc + gelu(t @ w1.T + b1) @ w2t``, saving ``t`` and the pre-activation only.

    Autograd would keep both the pre-activation and the GELU output (two 4x-wide tensors) and
    allocate two more 4x-wide gradients in backward. Here the GELU output is recomputed into
    a reused buffer, and the backward's wide gradient lives in that buffer too: one fresh wide
    tensor per block instead of four. Same GEMMs, same numerics.
    """

    @staticmethod
    def forward(ctx, t, w1, b1, w2t, acc, approximate):
        h = torch.addmm(b1, t, w1.t())
        a = torch.ops.aten.gelu.out(h, approximate=approximate, out=workspace(h.numel(), h.dtype, "hidden").view_as(h))
        ctx.save_for_backward(t, w1, h, w2t, b1)  # b1: only a second-order backward reads it
        ctx.acc_shape, ctx.approximate = acc.shape, approximate
        return torch.addmm(acc, a, w2t)

    @staticmethod
    def backward(ctx, grad):
        t, w1, h, w2t, b1 = ctx.saved_tensors
        need_t, need_w1, need_b1, need_w2t, need_acc, _ = ctx.needs_input_grad
        grad_acc = (grad.sum(0) if len(ctx.acc_shape) == 1 else grad) if need_acc else None
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward through the reference ops
            def mlp(t, w1, b1, w2t):
                return F.gelu(F.linear(t, w1, b1), approximate=ctx.approximate).mm(w2t)

            return (*native.differentiable_grads(mlp, (t, w1, b1, w2t), (need_t, need_w1, need_b1, need_w2t), grad),
                    grad_acc, None)
        wide = workspace(h.numel(), h.dtype, "hidden").view_as(h)
        grad_w2t = torch.mm(torch.ops.aten.gelu.out(h, approximate=ctx.approximate, out=wide).t(), grad) if need_w2t else None
        grad_h = torch.mm(grad, w2t.t(), out=wide)
        torch.ops.aten.gelu_backward.grad_input(grad_h, h, approximate=ctx.approximate, grad_input=grad_h)
        grad_t = grad_h.mm(w1) if need_t else None
        grad_w1 = grad_h.t().mm(t) if need_w1 else None
        grad_b1 = grad_h.sum(0) if need_b1 else None
        return grad_t, grad_w1, grad_b1, grad_w2t, grad_acc, None


# ---------------------------------------------------------------------------------------------
# stem and downsampling layers
# ---------------------------------------------------------------------------------------------
def downsample_forward(layers: nn.Module, x: torch.Tensor) -> torch.Tensor:
    for m in layers:
        x = _patch_conv(m, x) if _is_patch_conv(m) and (x.requires_grad or m.weight.requires_grad) else m(x)
    return x


def _is_patch_conv(m: nn.Module) -> bool:
    k = m.kernel_size[0] if isinstance(m, nn.Conv2d) else 0
    return k > 0 and m.stride == m.kernel_size == (k, k) and m.padding == (0, 0) and m.groups == 1 and m.dilation == (1, 1)


def _patch_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A non-overlapping conv (kernel == stride) as one GEMM over patches; its backward is two GEMMs."""
    k = conv.kernel_size[0]
    n, c, h, w = x.shape
    hk, wk = h // k, w // k  # like the conv, a remainder row/column is dropped
    patches = x[:, :, :hk * k, :wk * k].permute(0, 2, 3, 1).reshape(n, hk, k, wk, k, c)
    patches = patches.permute(0, 1, 3, 2, 4, 5).reshape(n * hk * wk, k * k * c)
    weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, k * k * c)
    y = torch.addmm(conv.bias, patches, weight.t()) if conv.bias is not None else patches.mm(weight.t())
    return y.view(n, hk, wk, conv.out_channels).permute(0, 3, 1, 2)  # channels_last NCHW view
