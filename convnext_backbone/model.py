"""The one ConvNeXt V1/V2 model definition.

Parameter names are the official checkpoint layout (``downsample_layers``, ``stages``,
``norm{i}`` output norms, ``norm``/``head`` for classification), so official classification
and det/seg checkpoints load with no renaming and MMSegmentation's layer-decay rule, which
keys on these names, works unchanged. Every other layout is converted in ``convert.py``.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from . import dwconv
from .config import ConvNextConfig, config_from_preset_name

__all__ = [
    "BackboneOutput",
    "ClassifierOutput",
    "ConvNextBackbone",
    "ConvNextForImageClassification",
    "build_backbone",
    "output_norm_name",
    "release_workspace",
]

LN_EPS = 1e-6  # every LayerNorm inside ConvNeXt (official, timm, HF) uses 1e-6


class BackboneOutput(NamedTuple):
    feature_maps: tuple[torch.Tensor, ...]
    hidden_states: tuple[torch.Tensor, ...] | None = None


class ClassifierOutput(NamedTuple):
    logits: torch.Tensor
    pooler_output: torch.Tensor


def output_norm_name(stage_index: int) -> str:
    """Official det/seg names: ``norm{i}`` for stage i+1; the stem's norm is ours."""
    return "norm_stem" if stage_index == 0 else f"norm{stage_index - 1}"


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of an NCHW tensor; the permutes are free views on channels_last."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class PatchConv2d(nn.Conv2d):
    """Non-overlapping conv (kernel == stride): the stem and the downsampling layers.

    In CPU training it runs as one GEMM over patches, whose backward is two GEMMs; oneDNN's
    backward for this conv is ~2x slower. Elsewhere it is ``nn.Conv2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size[0]
        if not (
            self.stride == self.kernel_size == (k, k) and self.padding == (0, 0) and self.groups == 1
            and torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad) and _eager_cpu(x)
        ):
            return super().forward(x)
        n, c, h, w = x.shape
        hk, wk = h // k, w // k  # like the conv, a remainder row/column is dropped
        patches = x[:, :, :hk * k, :wk * k].permute(0, 2, 3, 1).reshape(n, hk, k, wk, k, c)
        patches = patches.permute(0, 1, 3, 2, 4, 5).reshape(n * hk * wk, k * k * c)
        weight = self.weight.permute(0, 2, 3, 1).reshape(self.out_channels, k * k * c)
        y = torch.addmm(self.bias, patches, weight.t()) if self.bias is not None else patches.mm(weight.t())
        return y.view(n, hk, wk, self.out_channels).permute(0, 3, 1, 2)  # channels_last NCHW view


def _sum_of_squares(x: torch.Tensor, chunked: bool = False) -> torch.Tensor:
    """Sum of x*x over dim 1 of (N, L, C); ``chunked`` (plain eager inference only) avoids the
    whole-tensor ``x * x``: one pass in the C kernel, or else a loop over slices.

    ``x * x`` is a fresh 4x-wide allocation per block; large CPU allocations are fresh pages
    from the kernel each time, which costs about as much as the arithmetic. Both alternatives
    depend on the shape or call C, so tracing/export must not take them.
    """
    n, length, c = x.shape
    step = max(1, (1 << 20) // c)
    if not chunked or length <= step:
        return (x * x).sum(dim=1)
    native = dwconv.sum_of_squares(x)  # one pass in C, no temporaries
    if native is not None:
        return native
    acc = torch.zeros(n, c, dtype=x.dtype, device=x.device)
    for i in range(0, length, step):
        part = x[:, i:i + step]
        acc += (part * part).sum(dim=1)
    return acc


class GRN(nn.Module):
    """Global Response Normalization (ConvNeXt V2) on NHWC input; official (1,1,1,C) parameters.

    ``GRN(x) = gamma * (x * N(x)) + beta + x = x * scale(x) + beta``; the block uses ``scale``
    to fold GRN into its last projection.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.eps = eps

    def scale(self, x: torch.Tensor, chunked: bool = False) -> torch.Tensor:
        """(N, C) factor; the L2 norm over space as sqrt(sum(x*x)), ~6x faster than vector_norm on CPU."""
        n, c = x.shape[0], x.shape[-1]
        gx = _sum_of_squares(x.reshape(n, -1, c), chunked).sqrt()
        nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)
        return 1.0 + self.gamma.reshape(1, c) * nx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale(x).reshape(x.shape[0], *([1] * (x.ndim - 2)), -1)
        return x * s + self.beta


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
    """dwconv 7x7 -> LayerNorm -> Linear 4x -> GELU [-> GRN] -> Linear [-> layer scale] + residual.

    The math is the official block's; the evaluation order is chosen for memory traffic. Layer
    scale is folded into the last projection's weights. GRN is a per-sample channel scale plus a
    shift, so it is folded into per-sample weights of that projection: one reduction over the
    4x-wide hidden tensor instead of a norm and three elementwise passes. On channels_last input
    the permutes are free views, and the bias and residual are summed first so that the last
    GEMM accumulates into them. In plain CPU inference the hidden tensor lives in a reused
    per-thread workspace with GELU in place (see ``_eager_cpu``), and the depthwise conv
    runs through the C kernel in ``dwconv.py`` whenever it applies.
    """

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init_value: float = 0.0, use_grn: bool = False):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim) if use_grn else None
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init_value))) if layer_scale_init_value > 0 else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, hh, ww = x.shape
        eager = _eager_cpu(x)
        plain = eager and _inference(x, self.pwconv1.weight)
        native = eager and dwconv.usable(x, self.dwconv)
        if native and plain and dwconv.norm_fusable(self.norm, c):
            # conv + LayerNorm in one pass, into a reused buffer (consumed by pwconv1 below)
            t = dwconv.depthwise7_norm(x, self.dwconv, self.norm, _workspace(x.numel(), x.dtype, slot=1).view(n, hh, ww, c))
        else:
            t = self.norm((dwconv.depthwise7(x, self.dwconv) if native else self.dwconv(x)).permute(0, 2, 3, 1))
        if self.grn is None:
            w, b = self.pwconv2.weight, self.pwconv2.bias
            if self.gamma is not None:
                w, b = w * self.gamma[:, None], b * self.gamma
            if eager and not plain:  # CPU training: saves 1 of the 2 wide tensors, reuses buffers
                t = t.reshape(-1, c)
                mlp = lambda acc, may_write: _MLP.apply(t, self.pwconv1.weight, self.pwconv1.bias, w.t(), acc)  # noqa: E731
                return self._residual(x, (n * hh * ww,), b, mlp)
        if plain:
            # The 4x-wide hidden tensor goes into a reused per-thread buffer and GELU runs in
            # place: a fresh large CPU allocation is new pages from the kernel every time.
            t = t.reshape(-1, c)
            buf = _workspace(t.shape[0] * 4 * c, t.dtype).view(t.shape[0], 4 * c)
            h = _gelu_(torch.addmm(self.pwconv1.bias, t, self.pwconv1.weight.t(), out=buf))
        else:
            h = self.act(self.pwconv1(t))
        c4 = h.shape[-1]
        if self.grn is not None:
            h = h.reshape(n, hh * ww, c4)
            w = self.pwconv2.weight
            ws = self.grn.scale(h, chunked=plain).unsqueeze(-1) * w.t()  # (N, C4, C): GRN folded into the projection
            b = F.linear(self.grn.beta.reshape(1, c4), w, self.pwconv2.bias)
            gemm, gemm_ = torch.baddbmm, torch.Tensor.baddbmm_
        else:
            h = h.reshape(n * hh * ww, c4)
            ws = w.t()
            gemm, gemm_ = torch.addmm, torch.Tensor.addmm_
        # in place saves an allocation; autocast and autograd want the functional form
        project = lambda acc, may_write: gemm_(acc, h, ws) if plain and may_write else gemm(acc, h, ws)  # noqa: E731
        return self._residual(x, h.shape[:-1], b, project)

    def _residual(self, x: torch.Tensor, rows: tuple[int, ...], b: torch.Tensor, project) -> torch.Tensor:
        """``x + drop_path(project(b))`` when drop path is active; otherwise ``project(x + b)``:
        residual + bias summed first so that the last GEMM accumulates into them (no separate
        add pass). ``project(acc, may_write)`` may write into ``acc`` only when ``may_write``."""
        n, c, hh, ww = x.shape
        if self.training and isinstance(self.drop_path, DropPath):
            return x + self.drop_path(project(b, False).view(n, hh, ww, c).permute(0, 3, 1, 2))
        acc = x.permute(0, 2, 3, 1).reshape(*rows, c) + b  # the permute is a view on channels_last input
        return project(acc, True).view(n, hh, ww, c).permute(0, 3, 1, 2)


class _MLP(torch.autograd.Function):
    """``acc + gelu(t @ w1.T + b1) @ w2t`` for CPU training, saving ``t`` and the pre-activation only.

    Autograd would keep both the pre-activation and the GELU output (two 4x-wide tensors) and
    allocate two more 4x-wide gradients in backward. Here the GELU output is recomputed into
    the per-thread workspace, and the backward's wide gradient lives in that workspace too:
    one fresh wide tensor per block instead of four. Same GEMMs, same numerics.
    """

    @staticmethod
    def forward(ctx, t, w1, b1, w2t, acc):
        h = torch.addmm(b1, t, w1.t())
        a = torch.ops.aten.gelu.out(h, out=_workspace(h.numel(), h.dtype).view_as(h))
        ctx.save_for_backward(t, w1, h, w2t)
        ctx.acc_shape = acc.shape
        return torch.addmm(acc, a, w2t)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        t, w1, h, w2t = ctx.saved_tensors
        need_t, need_w1, need_b1, need_w2t, need_acc = ctx.needs_input_grad
        wide = _workspace(h.numel(), h.dtype).view_as(h)
        grad_w2t = torch.mm(torch.ops.aten.gelu.out(h, out=wide).t(), grad) if need_w2t else None
        grad_h = torch.mm(grad, w2t.t(), out=wide)
        torch.ops.aten.gelu_backward.grad_input(grad_h, h, grad_input=grad_h)
        grad_t = grad_h.mm(w1) if need_t else None
        grad_w1 = grad_h.t().mm(t) if need_w1 else None
        grad_b1 = grad_h.sum(0) if need_b1 else None
        grad_acc = (grad.sum(0) if len(ctx.acc_shape) == 1 else grad) if need_acc else None
        return grad_t, grad_w1, grad_b1, grad_w2t, grad_acc


_gelu_ = getattr(torch.ops.aten, "gelu_", None)
_thread_state = threading.local()


def _inference(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """No autograd recording: with ``_eager_cpu``, in-place tricks are invisible here."""
    return _gelu_ is not None and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))


def _eager_cpu(x: torch.Tensor) -> bool:
    """CPU eager execution, no autocast, no tracing/compiling/export: where the C kernel and
    in-place tricks may run (shape-dependent loops and ctypes calls must not be traced)."""
    return (
        x.device.type == "cpu"
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and not torch.compiler.is_compiling()
        and not torch.onnx.is_in_onnx_export()
    )


def _workspace(numel: int, dtype: torch.dtype, slot: int = 0) -> torch.Tensor:
    """A per-thread CPU buffer per (dtype, slot) that only grows; ``release_workspace()`` frees them.

    Slot 0 holds the 4x-wide hidden tensor, slot 1 the block's normalised input to pwconv1.
    """
    bufs = getattr(_thread_state, "buffers", None)
    if bufs is None:
        bufs = _thread_state.buffers = {}
    buf = bufs.get((dtype, slot))
    if buf is None or buf.numel() < numel:
        bufs.pop((dtype, slot), None)
        # A normal tensor, never an inference tensor: those cannot be written to outside
        # inference_mode, and the buffer outlives the mode it was created in.
        with torch.inference_mode(False):
            buf = bufs[(dtype, slot)] = torch.empty(numel, dtype=dtype)
    return buf[:numel]


def release_workspace() -> None:
    """Free this thread's inference workspace (it holds the largest 4x-wide activation seen)."""
    _thread_state.buffers = {}


class _ConvNextTrunk(nn.Module):
    """Stem, downsampling layers and stages shared by the backbone and the classifier."""

    config: ConvNextConfig

    def __init__(self, config: ConvNextConfig):
        super().__init__()
        self.config = config
        h = config.hidden_sizes
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(PatchConv2d(config.num_channels, h[0], config.patch_size, config.patch_size), LayerNorm2d(h[0], eps=LN_EPS))]
            + [nn.Sequential(LayerNorm2d(h[i - 1], eps=LN_EPS), PatchConv2d(h[i - 1], h[i], 2, 2)) for i in range(1, config.num_stages)]
        )
        rates = torch.linspace(0, config.drop_path_rate, sum(config.depths), device="cpu").tolist()  # cpu: works under torch.device("meta")
        self.stages = nn.ModuleList()
        start = 0
        for i, depth in enumerate(config.depths):
            self.stages.append(nn.Sequential(*[
                Block(h[i], rates[start + j], config.layer_scale_init_value, config.uses_grn) for j in range(depth)
            ]))
            start += depth
        self.gradient_checkpointing = config.gradient_checkpointing

    # -- init, as the official code: truncated normal for conv/linear, zero bias ------------
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def init_weights(self) -> None:
        self.apply(self._init_weights)

    # -- input checks -------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor, needed_stride: int) -> None:
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.jit.is_scripting():
            return
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"pixel_values must be a torch.Tensor of shape (N, {self.config.num_channels}, H, W), got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"pixel_values must be 4-D (N, {self.config.num_channels}, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values has {x.shape[1]} channels but the model expects num_channels={self.config.num_channels} "
                f"(shape (N, {self.config.num_channels}, H, W)); got {tuple(x.shape)}"
            )
        if x.shape[2] < needed_stride or x.shape[3] < needed_stride:
            raise ValueError(
                f"image of size {tuple(x.shape[2:])} is smaller than the total stride {needed_stride} of the requested "
                f"outputs; height and width must be >= {needed_stride}"
            )

    def _run_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            for block in self.stages[i]:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        return self.stages[i](x)

    def forward_trunk(self, x: torch.Tensor, last_index: int) -> list[torch.Tensor]:
        """Hidden states [stem, stage1, ...] up to ``last_index``; deeper stages are skipped."""
        stride = self.config.strides[last_index]
        self._check_input(x, stride)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.downsample_layers[0](x)
        hidden = [x]
        for i in range(last_index):
            if i > 0:
                x = self.downsample_layers[i](x)
            x = self._run_stage(i, x)
            hidden.append(x)
        return hidden

    def set_gradient_checkpointing(self, enable: bool = True) -> None:
        self.gradient_checkpointing = enable
        self.config.gradient_checkpointing = enable

    # -- persistence --------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (official layout) atomically."""
        from .convert import save_pretrained

        return save_pretrained(self, save_directory)

    @classmethod
    def from_pretrained(cls, path: str | Path, strict: bool = True, **config_overrides: Any):
        """Load any supported checkpoint format (file, directory or hub name), converting as needed."""
        from .convert import from_pretrained

        return from_pretrained(cls, path, strict=strict, **config_overrides)

    @classmethod
    def from_preset(cls, name: str, **config_overrides: Any):
        return cls(config_from_preset_name(name, **config_overrides))


class ConvNextBackbone(_ConvNextTrunk):
    """Multi-scale ConvNeXt backbone with the HF backbone contract.

    ``stage_names`` = ``("stem", "stage1", ...)``; ``out_features``/``out_indices`` select what
    ``forward`` returns, in that order, each through its own output LayerNorm unless
    ``config.norm_outputs`` is False.
    """

    def __init__(self, config: ConvNextConfig):
        super().__init__(config)
        if config.norm_outputs:
            for idx in config.out_indices:
                self.add_module(output_norm_name(idx), LayerNorm2d(config.channels_per_stage[idx], eps=LN_EPS))
        self.init_weights()
        self._freeze_stages()

    # -- the HF backbone contract -------------------------------------------------------------
    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(self.config.stage_names)

    @property
    def out_features(self) -> list[str]:
        return self.config.out_features

    @property
    def out_indices(self) -> list[int]:
        return self.config.out_indices

    @property
    def channels(self) -> list[int]:
        return [self.config.channels_per_stage[i] for i in self.out_indices]

    @property
    def strides(self) -> list[int]:
        return [self.config.strides[i] for i in self.out_indices]

    @property
    def num_features(self) -> list[int]:
        return self.config.channels_per_stage

    def output_norms(self) -> dict[str, nn.Module]:
        return {self.stage_names[i]: getattr(self, output_norm_name(i)) for i in self.out_indices if self.config.norm_outputs}

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> BackboneOutput:
        last = self.config.num_stages if output_hidden_states else max(self.out_indices)
        hidden = self.forward_trunk(pixel_values, last)
        maps = []
        for idx in self.out_indices:
            x = hidden[idx]
            if self.config.norm_outputs:
                x = getattr(self, output_norm_name(idx))(x)
            maps.append(x)
        return BackboneOutput(tuple(maps), tuple(hidden) if output_hidden_states else None)

    def forward_dict(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{out_feature: map}``, what Detectron2 and export consume."""
        return dict(zip(self.out_features, self.forward(pixel_values).feature_maps))

    # -- training knobs -----------------------------------------------------------------------
    def _frozen_modules(self) -> list[nn.Module]:
        k = self.config.frozen_stages
        if k < 0:
            return []
        mods: list[nn.Module] = [self.downsample_layers[0]]
        for i in range(k):
            if i > 0:
                mods.append(self.downsample_layers[i])
            mods.append(self.stages[i])
        return mods

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._frozen_modules():
            m.eval()  # frozen stages keep norms in eval and drop no paths
        return self


class ConvNextForImageClassification(_ConvNextTrunk):
    """Global average pool -> LayerNorm -> Linear, as the official classifier (``norm``, ``head``)."""

    def __init__(self, config: ConvNextConfig):
        super().__init__(config)
        self.norm = nn.LayerNorm(config.hidden_sizes[-1], eps=config.layer_norm_eps)
        self.head = nn.Linear(config.hidden_sizes[-1], config.num_labels)
        self.init_weights()

    def forward(self, pixel_values: torch.Tensor) -> ClassifierOutput:
        x = self.forward_trunk(pixel_values, self.config.num_stages)[-1]
        pooled = self.norm(x.mean(dim=(-2, -1)))
        return ClassifierOutput(self.head(pooled), pooled)


def build_backbone(name: str, **config_overrides: Any) -> ConvNextBackbone:
    """``build_backbone("convnextv2_tiny", out_indices=[1, 2, 3, 4], drop_path_rate=0.2)``."""
    return ConvNextBackbone(config_from_preset_name(name, **config_overrides))
