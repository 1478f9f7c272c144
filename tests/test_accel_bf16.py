"""The accelerator in bfloat16 (a whole model cast with ``model.to(torch.bfloat16)``): the C kernel's
bfloat16 functions against float64, the portable build, the model within bfloat16 rounding of the
reference model and no less accurate than it or timm, gradients, and the transparency guarantees
(hooks, parametrizations, tracing, autocast) as in float32.

"Within bfloat16 rounding": every result is float32 sums rounded to bfloat16 (2^-9 relative), at
the points where the reference rounds or, for a folded weight, once; the accelerated model's error
against float64 is held to the reference's own (and timm's), and each stage's difference from
the float32 model to STAGE_TOL.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convnext_backbone import ConvNextBackbone, build_backbone
from convnext_backbone.accel import native
from convnext_backbone.layers import Block

from helpers import conv_grads, max_abs_diff, randomize_

ROOT = Path(__file__).resolve().parents[1]
BF16 = torch.bfloat16
V1, V2 = "convnext_tiny", "convnextv2_atto"

# Relative L2 error of each stage's features (stage1..stage4) against the float32 model with the
# same (bfloat16) weights, for the bfloat16 model (accelerated or not), at the small widths below
# with randomize_'d weights: measured 0.45%, 0.6%, 0.7%, 0.8% (V1 and V2 alike); each block adds
# a few roundings of 2^-9 to the residual stream.
STAGE_TOL = (1e-2, 1.25e-2, 1.5e-2, 1.75e-2)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _ulp(t: torch.Tensor) -> torch.Tensor:
    """The bfloat16 spacing at |t| (float64): 2^(exponent - 7), normal numbers."""
    t = t.double().abs().clamp_min(2.0 ** -126)
    return torch.exp2(torch.floor(torch.log2(t)) - 7)


def _small(name: str, **kw) -> nn.Module:
    kw.setdefault("out_indices", [1, 2, 3, 4])
    return randomize_(build_backbone(name, depths=[1, 1, 2, 1], hidden_sizes=[40, 80, 160, 320], **kw))


def _reference(model, fn):
    model.accelerate = False
    try:
        return fn()
    finally:
        model.accelerate = True


# ---------------------------------------------------------------------------------------------
# the C kernel's bfloat16 functions
# ---------------------------------------------------------------------------------------------
def test_kernel_isa_and_cpu_bf16_are_reported():
    isa = native.kernel_isa()
    assert isa is not None and isa.split(" ")[0] in native._ISA_NAMES and isa.endswith("(native)"), isa
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.exists() else set()
    has, evidence = native.cpu_bf16()
    if flags:  # the CPU flags are the ground truth
        assert has == bool(flags & {"avx512_bf16", "amx_bf16", "bf16"}), evidence
    if isa.startswith("avx512bf16"):
        assert "avx512_bf16" in flags  # the compiler targeted what the host has
    assert native.describe_isa(isa) and native.describe_isa(None) == "no C kernel"


def _rounding_cases() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1 << 14, generator=g) * torch.exp2(torch.randint(-140, 127, (1 << 14,), generator=g).float())
    one = 1.0 + torch.arange(8) * 2.0 ** -8  # exact ties (half an ulp) and values either side
    ties = torch.cat([one + 2.0 ** -9, one + 2.0 ** -9 + 2.0 ** -20, one + 2.0 ** -9 - 2.0 ** -20])
    special = torch.tensor([float("inf"), -float("inf"), 0.0, -0.0, 3.3895314e38, -3.3895314e38, 3.4e38, 1e-40])
    return torch.cat([x, ties, -ties, special, torch.full((8,), float("nan"))])


def test_bf16_rounding_is_torchs():
    """Round to nearest even as ``.to(torch.bfloat16)``; the AVX512-BF16 instruction (as oneDNN's)
    flushes denormal results to zero, the integer path keeps them; NaN stays NaN."""
    x = _rounding_cases()
    ours, torchs = native.round_to_bf16(x), x.to(BF16)
    nan = torch.isnan(x)
    assert torch.isnan(ours[nan]).all()
    bits = lambda t: t[~nan].view(torch.int16)  # noqa: E731
    differ = bits(ours) != bits(torchs)
    denormal = (x[~nan].abs() < 2.0 ** -126) & (x[~nan] != 0)
    assert not (differ & ~denormal).any(), x[~nan][differ & ~denormal]
    if native.kernel_isa().startswith("avx512bf16"):
        assert (ours[~nan][differ] == 0).all()
    else:
        assert not differ.any()


def _conv_inputs(n, c, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(c, c, 7, padding=3, groups=c)
    norm = nn.LayerNorm(c, eps=1e-6)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / 7)
        conv.bias.copy_(torch.randn(c, generator=g))
        norm.weight.copy_(1 + 0.2 * torch.randn(c, generator=g))
        norm.bias.copy_(0.1 * torch.randn(c, generator=g))
    x = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    gy = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    return conv.to(BF16), norm.to(BF16), x.to(BF16), gy.to(BF16)


SHAPES = [(2, 96, 37, 45), (1, 8, 5, 3), (3, 40, 9, 12), (1, 64, 2, 30), (2, 768, 4, 7), (1, 24, 11, 13)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("threads", [1, 2])
def test_bf16_depthwise_and_gradients_match_float64(shape, threads):
    """Forward, input gradient and weight gradient in bfloat16: float32 sums rounded once, no less
    accurate than oneDNN's bfloat16 convolution (both against float64 of the same inputs)."""
    conv, _, x, gy = _conv_inputs(*shape)
    assert native.usable(x)

    def grads(fn, dtype):
        return conv_grads(fn, x, conv.weight, conv.bias, gy, dtype)

    def torch_conv(xi, wi, bi):
        return F.conv2d(xi, wi, bi, padding=3, groups=shape[1])

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours = grads(native._DepthwiseConv7.apply, BF16)
        theirs = grads(torch_conv, BF16)
    finally:
        torch.set_num_threads(before)
    exact = grads(torch_conv, torch.float64)
    for name, a, b, e in zip(("y", "grad_x", "grad_w", "grad_b"), ours, theirs, exact):
        assert a.dtype == torch.float64 and torch.isfinite(a).all()
        mine, ref = (a - e).abs().max().item(), (b - e).abs().max().item()
        assert mine <= 1.5 * ref + 1e-6, (name, mine, ref)
        if name != "grad_b":  # sums of float32 products rounded once: within an ulp of the exact value
            assert ((a - e).abs() <= _ulp(e) + 1e-5 * e.abs().max()).all(), name


@pytest.mark.parametrize("shape", [(2, 96, 37, 45), (1, 8, 5, 3), (3, 40, 9, 12), (1, 768, 3, 9)],
                         ids=lambda s: "x".join(map(str, s)))
def test_bf16_fused_conv_layernorm_rounds_where_the_reference_rounds(shape):
    """conv -> bfloat16 -> LayerNorm (float32 statistics) -> bfloat16, as ``norm(conv(x))`` in a
    bfloat16 model: the same two roundings, so the results are bit for bit the reference's but for
    the few conv outputs whose float32 sums (in another order) round the other way (measured: 3 in
    100000), and no less accurate against float64."""
    n, c, h, w = shape
    conv, norm, x, _ = _conv_inputs(*shape, seed=1)
    with torch.no_grad():
        fused = native.depthwise7_norm_rows(x, conv, norm, torch.empty(n * h * w, c, dtype=BF16), 0, n * h).view(n, h, w, c)
        rows = torch.cat([native.depthwise7_norm_rows(x, conv, norm, torch.empty((r1 - r0) * w, c, dtype=BF16), r0, r1)
                          for r0, r1 in ((0, 1), (1, n * h - 1), (n * h - 1, n * h)) if r1 > r0])
        reference = norm(conv(x).permute(0, 2, 3, 1))
        exact = norm.double()(conv.double()(x.double()).permute(0, 2, 3, 1))
    assert torch.equal(rows.view(n, h, w, c), fused)  # a chunk of rows computes exactly those rows
    assert fused.dtype == BF16
    differ = fused != reference
    assert differ.float().mean().item() < 1e-3
    assert (fused.double() - reference.double()).abs().max().item() <= 2 ** -8 * reference.double().abs().max().item()
    ours, theirs = (fused.double() - exact).abs().max().item(), (reference.double() - exact).abs().max().item()
    assert ours <= 1.5 * theirs + 1e-6, (ours, theirs)


@pytest.mark.parametrize("shape", [(2, 60001, 16), (1, 300, 1536), (3, 7, 8)], ids=lambda s: "x".join(map(str, s)))
def test_bf16_grn_statistic_is_summed_in_float32(shape):
    """GRN's sum of squares over a bfloat16 tensor, float32 sums (a bfloat16 sum of 60000 squares
    would be off by percents), no float32 copy of the tensor."""
    x = (torch.randn(*shape, generator=torch.Generator().manual_seed(2)) + 0.5).to(BF16)
    got = native.sum_of_squares(x)
    exact = (x.double() ** 2).sum(dim=1)
    assert got.dtype == torch.float32
    assert ((got.double() - exact).abs() / exact).max().item() < 2e-6


@pytest.mark.parametrize("dtype", [torch.float32, BF16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_bias_gelu_matches_float64(dtype, approximate):
    """The first projection's epilogue: GELU(h + bias) to ~1e-6 (torch's own CPU GELU is 1.2e-6 off),
    rounded once; with the statistic, the float32 sums of the stored results squared."""
    g = torch.Generator().manual_seed(3)
    h0 = (torch.randn(517, 96, generator=g) * 3).to(dtype)
    h0[0, :24] = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 30, -30, 1e4, -1e4, 88, -88, 5.5, -5.5, 3.9, -3.9, 1e-3, -1e-3,
                               6, -6, 10, -10, 0.5, -0.5, 2, -2]).to(dtype)
    bias = torch.randn(96, generator=g).to(dtype)
    h = h0.clone()
    sumsq = native.bias_gelu_(h, bias, approximate, sumsq=True)
    exact = F.gelu(h0.double() + bias.double(), approximate=approximate)
    err = (h.double() - exact).abs()
    if dtype == torch.float32:
        assert (err <= 1.5e-6 + 2.0 ** -23 * exact.abs()).all(), err.max()
    else:
        assert (err <= _ulp(exact) / 2 + 1.5e-6).all(), err.max()
    assert ((sumsq.double() - (h.double() ** 2).sum(0)).abs() <= 1e-6 * (h.double() ** 2).sum(0) + 1e-30).all()
    h2 = h0.clone()
    assert native.bias_gelu_(h2, bias, approximate) is None and torch.equal(h2, h)


@pytest.mark.parametrize("dtype", [torch.float32, BF16], ids=["fp32", "bf16"])
def test_residual_and_folded_weight_epilogues_round_once(dtype):
    """The second projection's epilogue ``x + (branch + bias)`` and a weight with a scale folded in:
    float32 arithmetic, one rounding to the dtype (within half an ulp of the float64 result)."""
    g = torch.Generator().manual_seed(15)
    x, branch = (torch.randn(301, 40, generator=g) * 4).to(dtype), (torch.randn(301, 40, generator=g) * 0.3).to(dtype)
    bias, rs, cs = torch.randn(40, generator=g).to(dtype), torch.rand(301, generator=g) + 0.5, torch.rand(40, generator=g) + 0.5
    half_ulp = (lambda e: _ulp(e) / 2) if dtype == BF16 else (lambda e: 2.0 ** -24 * e.abs())  # noqa: E731
    out = native.residual_(x, branch, bias, torch.empty_like(x))
    exact = x.double() + (branch.double() + bias.double())
    terms = x.double().abs() + branch.double().abs() + bias.double().abs()  # float32 sums: 2^-24 of these each
    assert out.dtype == dtype and ((out.double() - exact).abs() <= half_ulp(exact) + 2.0 ** -23 * terms).all()
    for row, col in ((rs, None), (None, cs)):
        folded = native.scale_(x, row, col, torch.empty_like(x))
        exact = x.double() * (row.double()[:, None] if row is not None else col.double()[None, :])
        assert ((folded.double() - exact).abs() <= half_ulp(exact) + 1e-6 * exact.abs()).all()


_PORTABLE_SCRIPT = r"""
import sys, torch
from convnext_backbone.accel import native
conv_w, conv_b, ln_w, ln_b, x, h, bias, r = torch.load(sys.argv[1])
conv = torch.nn.Conv2d(x.shape[1], x.shape[1], 7, padding=3, groups=x.shape[1]).to(x.dtype)
norm = torch.nn.LayerNorm(x.shape[1], eps=1e-6).to(x.dtype)
with torch.no_grad():
    conv.weight.copy_(conv_w); conv.bias.copy_(conv_b); norm.weight.copy_(ln_w); norm.bias.copy_(ln_b)
    n, c, hh, ww = x.shape
    y = native.depthwise7_norm_rows(x, conv, norm, torch.empty(n * hh * ww, c, dtype=x.dtype), 0, n * hh)
    s = native.bias_gelu_(h, bias, "none", sumsq=True)
print("ISA", native.kernel_isa())
torch.save((y, h, s, native.round_to_bf16(r)), sys.argv[2])
"""


def test_portable_kernel_builds_and_computes_the_same(tmp_path):
    """The fallback build for a compiler that cannot target the host (``-march=native`` failing),
    forced with CONVNEXT_BACKBONE_NATIVE=portable: it loads, says so, and computes the same."""
    conv, norm, x, _ = _conv_inputs(2, 48, 9, 13, seed=4)
    h = (torch.randn(64, 96, generator=torch.Generator().manual_seed(5)) * 2).to(BF16)
    bias = torch.randn(96, generator=torch.Generator().manual_seed(6)).to(BF16)
    r = _rounding_cases()
    r = r[: r.numel() // 8 * 8]
    torch.save((conv.weight.data, conv.bias.data, norm.weight.data, norm.bias.data, x, h.clone(), bias, r), tmp_path / "in.pt")
    env = dict(os.environ, CONVNEXT_BACKBONE_NATIVE="portable", CONVNEXT_BACKBONE_CACHE=str(tmp_path / "cache"),
               OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", _PORTABLE_SCRIPT, str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "(portable: CONVNEXT_BACKBONE_NATIVE=portable)" in done.stdout, done.stdout
    y_p, h_p, s_p, r_p = torch.load(tmp_path / "out.pt")
    n, c, hh, ww = x.shape
    with torch.no_grad():
        y = native.depthwise7_norm_rows(x, conv, norm, torch.empty(n * hh * ww, c, dtype=BF16), 0, n * hh)
        s = native.bias_gelu_(h, bias, "none", sumsq=True)
    assert ((y_p.double() - y.double()).abs() <= _ulp(y)).all()  # other sum order, no FMA: an ulp apart at most
    assert ((h_p.double() - h.double()).abs() <= _ulp(h) + 1e-6).all()
    assert ((s_p.double() - s.double()).abs() <= 1e-2 * s.double().abs()).all()
    nan = torch.isnan(r)
    assert torch.equal(r_p[~nan].view(torch.int16), r[~nan].to(BF16).view(torch.int16))  # integer rounding: torch's, bit for bit
    assert torch.isnan(r_p[nan]).all()


# ---------------------------------------------------------------------------------------------
# the model in bfloat16
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [V1, V2])
def test_bf16_takes_the_accelerator(name, spy):
    """Fails if bfloat16 silently stops taking the fast paths (a speed regression no parity test sees)."""
    model = _small(name, drop_path_rate=0.1).to(BF16).eval()
    blocks = sum(len(s) for s in model.stages)
    x = torch.randn(2, 3, 64, 64, dtype=BF16)
    with torch.profiler.profile() as prof, torch.inference_mode():
        model(x)
    assert spy == {"block": blocks, "downsample": 0}
    labels = [e.name for e in prof.events()]
    assert labels.count("convnext::dwconv7_layernorm") >= blocks  # the fused C conv + LayerNorm, in bfloat16
    assert labels.count("convnext::bias_gelu" + ("_sumsq" if name == V2 else "")) >= blocks
    model.train()
    sum(f.float().sum() for f in model(x).feature_maps).backward()
    assert spy == {"block": 2 * blocks, "downsample": model.config.num_stages}
    assert all(p.grad.dtype == BF16 for p in model.parameters())


def _features(model, x):
    with torch.no_grad():
        return list(model(x).feature_maps)


@pytest.mark.parametrize("name", [V1, V2])
@pytest.mark.parametrize("batch", [1, 3])
def test_bf16_features_within_rounding_at_odd_sizes(name, batch, spy):
    """Stage-1 maps of 33x47 (every later map odd-sized too): each stage within STAGE_TOL of the float32
    model, and the accelerated model's error against float64 no larger than the reference's."""
    model32 = _small(name).to(BF16).float().eval()  # the bfloat16 weights, exactly, in float32
    model = _small(name).to(BF16).eval()
    x = torch.randn(batch, 3, 4 * 33, 4 * 47, generator=torch.Generator().manual_seed(7)).to(BF16)
    ours = _features(model, x)
    assert spy["block"] == sum(len(s) for s in model.stages)
    reference = _reference(model, lambda: _features(model, x))
    fp32 = _features(model32, x.float())
    exact = _features(model32.double(), x.double())
    for stage, (a, r, f, e) in enumerate(zip(ours, reference, fp32, exact)):
        assert a.dtype == BF16 and a.shape == r.shape and torch.isfinite(a).all()
        assert _rel(a, f) < STAGE_TOL[stage], (stage, _rel(a, f))
        assert _rel(a, e) <= 1.1 * _rel(r, e) + 1e-4, (stage, _rel(a, e), _rel(r, e))


@pytest.mark.parametrize("name", ["convnext_tiny", "convnextv2_atto"])
def test_bf16_error_against_float64_no_worse_than_timm(name, tmp_path):
    """timm's model with the same weights, both in bfloat16: our error against float64 is at timm's level."""
    import timm

    ref = randomize_(timm.create_model(name, pretrained=False, features_only=True)).to(BF16).eval()
    torch.save(ref.state_dict(), tmp_path / "t.pth")
    ours = ConvNextBackbone.from_pretrained(tmp_path / "t.pth", out_indices=[1, 2, 3, 4], norm_outputs=False).to(BF16).eval()
    x = torch.randn(2, 3, 96, 160, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        timm_bf16 = ref(x.to(BF16))
        ours_bf16 = ours(x.to(BF16)).feature_maps
        exact = ref.double()(x.double())
    for stage, (a, t, e) in enumerate(zip(ours_bf16, timm_bf16, exact)):
        assert _rel(a, e) <= 1.1 * _rel(t, e) + 1e-4, (stage, _rel(a, e), _rel(t, e))


@pytest.mark.parametrize("name", [V1, V2])
def test_bf16_training_gradients_match_the_reference(name, spy):
    """A bfloat16 training step (drop path active): every gradient within bfloat16 rounding of the
    reference's, and over all of them no less accurate against the float32 model."""
    model = _small(name, drop_path_rate=0.2).to(BF16).train()
    model32 = _small(name, drop_path_rate=0.2).to(BF16).float().train()
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(9))

    def step(m, dtype):
        torch.manual_seed(0)  # the same drop-path masks in every run
        m.zero_grad()
        xi = x.to(dtype).requires_grad_()
        loss = sum((f.float() ** 2).mean() for f in m(xi).feature_maps)
        loss.backward()
        return [xi.grad] + [p.grad for p in m.parameters()]

    ours = step(model, BF16)
    assert spy["block"] == sum(len(s) for s in model.stages)
    reference = _reference(model, lambda: step(model, BF16))
    fp32 = step(model32, torch.float32)
    ours_err = [_rel(a, f) for a, f in zip(ours, fp32)]
    ref_err = [_rel(r, f) for r, f in zip(reference, fp32)]
    for a, r, re in zip(ours, reference, ref_err):
        assert a.dtype == BF16 and torch.isfinite(a).all()
        assert _rel(a, r) <= 3 * re + 2 ** -8, (_rel(a, r), re)
    assert sum(ours_err) <= 1.15 * sum(ref_err), (sum(ours_err), sum(ref_err))


@pytest.mark.parametrize("name", [V1, V2])
def test_bf16_second_order_gradients(name, spy):
    """A gradient penalty in bfloat16: the backward of the fast paths is differentiable (recomputed
    through the reference ops) and lands within rounding of the reference's."""
    model = _small(name).to(BF16).train()
    model32 = _small(name).to(BF16).float().train()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(10))

    def penalty(m, dtype):
        m.zero_grad()
        xi = x.to(dtype).requires_grad_()
        loss = sum((f.float() ** 2).mean() for f in m(xi).feature_maps)
        params = list(m.parameters())
        grads = torch.autograd.grad(loss, [xi, *params], create_graph=True)
        sum((g.float() ** 2).sum() for g in grads).backward()
        return [xi.grad] + [p.grad for p in params]

    ours = penalty(model, BF16)
    assert spy["block"] == sum(len(s) for s in model.stages)
    reference = _reference(model, lambda: penalty(model, BF16))
    fp32 = penalty(model32, torch.float32)
    ours_err = sum(_rel(a, f) for a, f in zip(ours, fp32))
    ref_err = sum(_rel(r, f) for r, f in zip(reference, fp32))
    assert all(a is not None and torch.isfinite(a).all() for a in ours)
    assert ours_err <= 1.15 * ref_err, (ours_err, ref_err)


# ---------------------------------------------------------------------------------------------
# transparency: what float32 guarantees holds in bfloat16
# ---------------------------------------------------------------------------------------------
LEAVES = ("dwconv", "norm", "pwconv1", "act", "grn", "pwconv2", "drop_path")


@pytest.mark.parametrize("name", [V1, V2])
@pytest.mark.parametrize("mode", ["infer", "train"])
def test_bf16_hooks_on_every_leaf_fire(name, mode, spy):
    model = _small(name, drop_path_rate=0.2).to(BF16).train(mode == "train")
    target = model.stages[1][0]
    fired = []
    for leaf in LEAVES:
        module = getattr(target, leaf, None)
        if module is None:
            continue
        module.register_forward_hook(lambda m, a, o, leaf=leaf: fired.append(("post", leaf)))
        module.register_full_backward_hook(lambda m, gi, go, leaf=leaf: fired.append(("backward", leaf)))
    x = torch.randn(2, 3, 64, 64, dtype=BF16)
    if mode == "infer":
        with torch.no_grad():
            model(x)
    else:
        sum(f.float().sum() for f in model(x).feature_maps).backward()
    present = [leaf for leaf in LEAVES if getattr(target, leaf, None) is not None]
    assert [leaf for kind, leaf in fired if kind == "post"] == present
    if mode == "train":
        assert sorted(leaf for kind, leaf in fired if kind == "backward") == sorted(present)
    assert spy["block"] == sum(len(s) for s in model.stages) - 1  # only the hooked block stepped aside


def test_bf16_parametrizations_and_customised_submodules_are_honoured(spy):
    from torch.nn.utils import parametrize

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    class TanhGELU(nn.GELU):
        def forward(self, x):
            return torch.tanh(x)

    model = _small(V1).to(BF16).eval()
    x = torch.randn(1, 3, 64, 64, dtype=BF16)
    plain = _features(model, x)
    parametrize.register_parametrization(model.stages[0][0].pwconv2, "weight", Double())
    model.stages[1][0].act = TanhGELU()
    model.stages[2][0].act.approximate = "tanh"  # a stock class with another setting: still accelerated
    before = spy["block"]
    got = _features(model, x)
    assert spy["block"] - before == sum(len(s) for s in model.stages) - 2
    reference = _reference(model, lambda: _features(model, x))
    assert max(_rel(a, b) for a, b in zip(got, reference)) < 5e-3  # within rounding (~0.5%, STAGE_TOL) ...
    assert max(_rel(a, b) for a, b in zip(got, plain)) > 1e-2  # ... of the changed model, not the plain one


class _LoRA(nn.Module):
    """A wrapped projection, as LoRA/PEFT write it: the frozen base plus a low-rank update."""

    def __init__(self, base: nn.Linear, rank: int = 4):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.A = nn.Parameter(0.1 * torch.randn(rank, base.in_features, dtype=base.weight.dtype))
        self.B = nn.Parameter(0.1 * torch.randn(base.out_features, rank, dtype=base.weight.dtype))

    def forward(self, x):
        return self.base(x) + (x @ self.A.t()) @ self.B.t()


def test_bf16_wrapped_layers_compute_what_they_compute(spy):
    model = _small(V2).to(BF16).eval()
    x = torch.randn(2, 3, 64, 64, dtype=BF16)
    before = _features(model, x)
    for block in model.stages[2]:
        block.pwconv1, block.pwconv2 = _LoRA(block.pwconv1), _LoRA(block.pwconv2)
    taken = spy["block"]
    after = _features(model, x)
    assert spy["block"] - taken == sum(len(s) for s in model.stages) - len(model.stages[2])
    reference = _reference(model, lambda: _features(model, x))
    model32 = model.float()
    fp32 = _reference(model32, lambda: _features(model32, x.float()))
    model.to(BF16)
    for stage, (a, r, f) in enumerate(zip(after, reference, fp32)):
        # as accurate as the reference bfloat16 run of the wrapped model (both round independently) ...
        assert _rel(a, f) <= 1.1 * _rel(r, f) + 1e-4, (stage, _rel(a, f), _rel(r, f))
    assert max(_rel(a, b) for a, b in zip(after[2:], before[2:])) > 5e-2  # ... whose update is not ignored
    model.train()
    sum((f.float() ** 2).mean() for f in model(x).feature_maps).backward()
    loras = [m for m in model.modules() if isinstance(m, _LoRA)]
    assert all(m.A.grad is not None and m.A.grad.abs().sum() > 0 and m.base.weight.grad is None for m in loras)


def test_bf16_tracing_and_flop_counting_see_the_reference_ops(spy):
    from torch.utils.flop_counter import FlopCounterMode
    from torchvision.models.feature_extraction import create_feature_extractor

    model = _small(V2).to(BF16).eval()
    x = torch.randn(1, 3, 64, 96, dtype=BF16)
    nodes = {f"stages.{i}": f"stage{i + 1}" for i in range(4)}
    with torch.no_grad():
        traced = create_feature_extractor(model, return_nodes=nodes).eval()(x)
        with FlopCounterMode(display=False) as counter:
            model(x)
        program = torch.export.export(model, (x,))
    assert spy["block"] == 0
    with torch.no_grad():
        hidden = model(x, output_hidden_states=True).hidden_states[1:]
        exported = program.module()(x).feature_maps
    assert max(_rel(traced[n], h) for n, h in zip(nodes.values(), hidden)) < 1e-2
    assert max(_rel(a, b) for a, b in zip(exported, _features(model, x))) < 1e-2
    model.accelerate = False
    with torch.no_grad(), FlopCounterMode(display=False) as reference:
        model(x)
    assert counter.get_total_flops() == reference.get_total_flops() > 0


def test_bf16_torch_compile_traces_the_reference():
    torch._dynamo.reset()
    model = _small(V1).to(BF16).eval()
    x = torch.randn(1, 3, 64, 64, dtype=BF16)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    with torch.no_grad():
        got = torch.compile(model, backend=backend, fullgraph=True)(x).feature_maps
    code = "\n".join(g.code for g in graphs)
    blocks = sum(len(s) for s in model.stages)
    assert code.count("torch.nn.functional.linear") + code.count("torch._C._nn.linear") == 2 * blocks
    assert max(_rel(a, b) for a, b in zip(got, _features(model, x))) < 1e-2


@pytest.mark.parametrize("name", [V1, V2])
def test_autocast_is_refused(name, spy):
    """bfloat16 autocast of a float32 model runs the reference (see accel/__init__.py for why)."""
    model = _small(name).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.autocast("cpu", dtype=BF16), torch.no_grad():
        got = model(x).feature_maps
    assert spy == {"block": 0, "downsample": 0}
    with torch.autocast("cpu", dtype=BF16), torch.no_grad():
        want = _reference(model, lambda: model(x).feature_maps)
    assert max_abs_diff(got, want) == 0


_FALLBACK_SCRIPT = r"""
import sys, torch
sys.path.insert(0, "tests")
from convnext_backbone import build_backbone
from helpers import randomize_
for name in ("convnext_tiny", "convnextv2_atto"):
    m = randomize_(build_backbone(name, depths=[1, 1, 2, 1], hidden_sizes=[40, 80, 160, 320], out_indices=[1, 2, 3, 4]))
    m = m.to(torch.bfloat16).eval()
    x = torch.randn(1, 3, 72, 88, generator=torch.Generator().manual_seed(11)).to(torch.bfloat16)
    with torch.no_grad():
        torch.save(list(m(x).feature_maps), sys.argv[1] + name)
"""


def test_bf16_without_the_c_kernel_gives_the_same_features(tmp_path):
    """CONVNEXT_BACKBONE_NATIVE=0: the fast block on torch ops alone, in bfloat16, within rounding."""
    outs = {}
    for label, extra in (("native", {}), ("fallback", {"CONVNEXT_BACKBONE_NATIVE": "0"})):
        env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
        prefix = str(tmp_path / label)
        done = subprocess.run([sys.executable, "-c", _FALLBACK_SCRIPT, prefix], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        outs[label] = {n: torch.load(prefix + n) for n in ("convnext_tiny", "convnextv2_atto")}
    for name in outs["native"]:
        for a, b in zip(outs["native"][name], outs["fallback"][name]):
            assert a.dtype == b.dtype == BF16
            assert _rel(a, b) < 1e-2, (name, _rel(a, b))


def test_bf16_stock_blocks_in_the_rule():
    """The dtype condition lives in accel.stock and the C kernel computes every dtype it admits."""
    from convnext_backbone.accel import accelerates, stock

    assert BF16 in stock.ACCELERATED_DTYPES and set(stock.ACCELERATED_DTYPES) <= set(native.DTYPES)
    block = Block(40, layer_scale_init_value=1.0).to(BF16)
    x = torch.randn(1, 40, 8, 8, dtype=BF16).contiguous(memory_format=torch.channels_last)
    assert accelerates(block, x)
    assert not accelerates(block, x.float())  # input and parameters of one dtype
    assert not accelerates(Block(40).to(torch.float16), x.half())
    assert math.isfinite(block(x).float().sum().item())


@pytest.mark.parametrize("dtype", [torch.float32, BF16], ids=["fp32", "bf16"])
def test_openmp_and_python_threads_compute_the_same(dtype, monkeypatch):
    """Where torch runs on GNU OpenMP the kernel runs on torch's threads; the Python thread pool
    (elsewhere, and in a forked child) computes the same: bit for bit, reductions to float32 order."""
    if "parallel backend: OpenMP" in torch.__config__.parallel_info() and os.path.exists("/proc/self/maps"):
        assert native.threading_mode() == "OpenMP (torch's threads)"
    conv, norm, x, gy = _conv_inputs(2, 48, 13, 17, seed=12)
    conv, norm, x, gy = conv.to(dtype), norm.to(dtype), x.to(dtype), gy.to(dtype)
    h = torch.randn(301, 96, generator=torch.Generator().manual_seed(13)).to(dtype)
    bias = torch.randn(96, generator=torch.Generator().manual_seed(14)).to(dtype)
    n, c, hh, ww = x.shape

    def run():
        with torch.no_grad():
            y = native.depthwise7_norm_rows(x, conv, norm, torch.empty(n * hh * ww, c, dtype=dtype), 0, n * hh)
            gw = native._grad_weight(x, gy)
            hx = h.clone()
            s = native.bias_gelu_(hx, bias, "none", sumsq=True)
            hy = h.clone()
            native.bias_gelu_(hy, bias, "tanh")
            return y, hx, hy, gw, s, native.sum_of_squares(h.view(1, 301, 96))

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        openmp = run()
        monkeypatch.setattr(native, "_openmp_pid", None)
        assert native.threading_mode() == "Python threads"
        python = run()
    finally:
        torch.set_num_threads(before)
    for a, b in zip(openmp[:3], python[:3]):
        assert torch.equal(a, b)
    for a, b in zip(openmp[3:], python[3:]):
        assert ((a.double() - b.double()).abs() <= 1e-5 * b.double().abs().max()).all()
