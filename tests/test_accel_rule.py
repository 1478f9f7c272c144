"""The accelerator supports or steps aside for everything the reference model supports:
higher-order gradients (a differentiable backward), forward-mode AD (refused by the rule), and
a table of module variations, each either accelerated with the reference's results and
gradients or refused (and then computed by the module itself)."""
from __future__ import annotations

import types

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.nn.utils import prune

from convnext_backbone import build_backbone
from convnext_backbone.accel import torch_state
from convnext_backbone.layers import GRN, Block, DropPath, LayerNorm2d

from helpers import max_abs_diff, randomize_

V1, V2 = "convnext_tiny", "convnextv2_atto"


def _small(name, **kw):
    """Both versions at atto width (V1 keeps its layer scale): the rule, not the size, is under test."""
    return randomize_(build_backbone(name, depths=[1, 1, 2, 1], hidden_sizes=[40, 80, 160, 320], out_indices=[1, 2, 3, 4], **kw))


def _rel(a, b) -> float:
    """Largest relative L2 difference over a list of tensors."""
    return max(((x.double() - y.double()).norm() / y.double().norm().clamp_min(1e-30)).item() for x, y in zip(a, b))


def _twin32(model, mutate, name):
    """The same (mutated) model in float32 with the bfloat16 model's weights (exact in float32),
    built again: a pruned module cannot be deep-copied."""
    twin = _small(name)
    mutate(twin)
    twin.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    return twin.train(model.training)


def _within_bf16_rounding(got, want, exact) -> None:
    """bfloat16: the accelerated model and the reference round at different points (folded weights,
    another GELU polynomial, another order of float32 sums), so they agree within bfloat16 rounding,
    not bit for bit: each tensor's difference from the reference is at most three times the
    reference's own bfloat16 error (against the same model in float32), plus one rounding (2^-8).
    That error is ~0.5% for features and 1-5% for gradients; two independent roundings of that size
    differ by ~1.4x it, and a gradient of a few hundred elements summed over a few pixels
    fluctuates by ~1.5x more. A wrong fold, scale, bias or statistic is an O(1) difference.
    test_accel_bf16.py holds the accelerated model's own error against float64 to the reference's,
    on tensors large enough to measure it."""
    for i, (g, w, e) in enumerate(zip(got, want, exact)):
        assert g.dtype == w.dtype
        assert _rel([g], [w]) <= 3 * _rel([w], [e]) + 2 ** -8, (i, _rel([g], [w]), _rel([w], [e]))


def _reference(model, fn):
    model.accelerate = False
    try:
        return fn()
    finally:
        model.accelerate = True


def test_private_torch_apis_this_torch_has():
    """The rule's private torch probes all exist: a torch upgrade that moves one fails here, loudly,
    instead of the rule silently admitting what it should refuse."""
    assert torch_state.check_private_apis() == []
    assert not torch_state.forward_ad_active()
    with fwAD.dual_level():
        assert torch_state.forward_ad_active()


# ---------------------------------------------------------------------------------------------
# higher-order gradients: gradient penalty / R1 (through the input) and MAML (through the weights)
# ---------------------------------------------------------------------------------------------
def _second_order(model, x):
    """Gradient of a gradient penalty w.r.t. every parameter and the input."""
    model.zero_grad()
    x = x.detach().requires_grad_()
    loss = sum((f * f).mean() for f in model(x).feature_maps)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [x, *params], create_graph=True)
    penalty = sum((g * g).sum() for g in grads)
    penalty.backward()
    return [x.grad] + [p.grad for p in params]


@pytest.mark.parametrize("name", [V1, V2])
def test_second_order_gradients_match_the_reference(name, spy):
    model = _small(name).train()
    x = torch.randn(2, 3, 64, 64)
    got = _second_order(model, x)
    assert spy["block"] == 5 and spy["downsample"] == 4  # the fast paths ran, and were differentiated twice
    want = _reference(model, lambda: _second_order(model, x))
    assert all(g is not None for g in got)
    assert max_abs_diff(got, want) < 1e-4 * max(w.abs().max().item() for w in want)


@pytest.mark.parametrize("name", [V1, V2])
def test_double_backward_of_the_input_gradient_only(name):
    """R1 with frozen weights: only the input requires grad."""
    model = _small(name).train().requires_grad_(False)
    model.stages[3].requires_grad_(True)
    x = torch.randn(1, 3, 64, 64)

    def r1():
        model.zero_grad()
        xi = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(model(xi).feature_maps[-1].sum(), xi, create_graph=True)
        (g * g).sum().backward()
        return [p.grad for p in model.stages[3].parameters()]

    got, want = r1(), _reference(model, r1)
    assert max_abs_diff(got, want) < 1e-4 * max(w.abs().max().item() for w in want)


# ---------------------------------------------------------------------------------------------
# forward-mode AD: refused by the rule, the reference computes the tangent
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [V1, V2])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_forward_mode_ad_gets_the_reference_tangent(name, mode, spy):
    model = _small(name).train(mode == "train")
    x, v = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)

    def tangents():
        with fwAD.dual_level():
            out = model(fwAD.make_dual(x, v)).feature_maps
            return [fwAD.unpack_dual(o).tangent for o in out]

    got = tangents()
    assert spy == {"block": 0, "downsample": 0}
    want = _reference(model, tangents)
    eps = 1e-3  # and they are the derivative: a central difference in float64 agrees
    model64 = model.double()
    with torch.no_grad():
        fd = [(a - b) / (2 * eps) for a, b in zip(model64((x + eps * v).double()).feature_maps,
                                                   model64((x - eps * v).double()).feature_maps)]
    model.float()
    assert max_abs_diff(got, want) == 0
    assert max_abs_diff(got, fd) < 1e-3 * max(f.abs().max().item() for f in fd)

    (_, jvp) = torch.func.jvp(lambda t: model(t).feature_maps, (x,), (v,))  # functorch's forward AD
    assert max_abs_diff(list(jvp), got) < 1e-5


# ---------------------------------------------------------------------------------------------
# the rule against module variations: accelerated with equal results, or refused
# ---------------------------------------------------------------------------------------------
def _linear(old: nn.Linear, bias: bool = True, cls=nn.Linear, features: tuple[int, int] | None = None) -> nn.Linear:
    fin, fout = features or (old.in_features, old.out_features)
    new = cls(fin, fout, bias=bias)
    if features is None:
        with torch.no_grad():
            new.weight.copy_(old.weight)
            if bias:
                new.bias.copy_(old.bias)
    return new


def _conv(old: nn.Conv2d, **kw) -> nn.Conv2d:
    c = old.in_channels
    args = dict(kernel_size=7, padding=3, groups=c) | kw
    new = nn.Conv2d(c, c, **args)
    if new.weight.shape == old.weight.shape:
        with torch.no_grad():
            new.weight.copy_(old.weight)
    return new


def _expand3(b: Block) -> None:
    c = b.dwconv.in_channels
    b.pwconv1 = _linear(b.pwconv1, features=(c, 3 * c))
    b.pwconv2 = _linear(b.pwconv2, features=(3 * c, c))
    if b.grn is not None:
        b.grn = GRN(3 * c)
        nn.init.normal_(b.grn.gamma, std=0.1)


class _SubGELU(nn.GELU):
    pass


class _SubBlock(Block):
    pass


def _forward_override(b: Block) -> None:
    b.forward = types.MethodType(lambda self, x: Block.forward(self, x) * 0.5, b)


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone())



# name -> (mutation of stages[1][0] (or of its stage, for "model:..."), accelerated?)
BLOCK_VARIATIONS = {
    "stock": (lambda b: None, True),
    "gelu-tanh": (lambda b: setattr(b.act, "approximate", "tanh"), True),
    "norm-eps-1e-5": (lambda b: setattr(b.norm, "eps", 1e-5), True),
    "dwconv-no-bias": (lambda b: setattr(b.dwconv, "bias", None), True),
    "non-contiguous-weight": (lambda b: setattr(b.pwconv1, "weight", nn.Parameter(b.pwconv1.weight.detach().t().contiguous().t())), True),
    "expansion-3x": (_expand3, True),
    "weights-frozen": (lambda b: b.requires_grad_(False), True),
    "drop-path-active": (lambda b: setattr(b, "drop_path", DropPath(0.3)), True),
    "pwconv1-no-bias": (lambda b: setattr(b, "pwconv1", _linear(b.pwconv1, bias=False)), False),
    "pwconv2-no-bias": (lambda b: setattr(b, "pwconv2", _linear(b.pwconv2, bias=False)), False),
    "linear-subclass": (lambda b: setattr(b, "pwconv1", _linear(b.pwconv1, cls=type("L", (nn.Linear,), {}))), False),
    "relu": (lambda b: setattr(b, "act", nn.ReLU()), False),
    "act-identity": (lambda b: setattr(b, "act", nn.Identity()), False),
    "gelu-subclass": (lambda b: setattr(b, "act", _SubGELU()), False),
    "gelu-approximate-unknown": (lambda b: setattr(b.act, "approximate", "erf"), False),
    "norm-no-affine": (lambda b: setattr(b, "norm", nn.LayerNorm(b.norm.normalized_shape, eps=1e-6, elementwise_affine=False)), False),
    "norm-no-bias": (lambda b: setattr(b, "norm", nn.LayerNorm(b.norm.normalized_shape, eps=1e-6, bias=False)), False),
    "dwconv-5x5": (lambda b: setattr(b, "dwconv", _conv(b.dwconv, kernel_size=5, padding=2)), False),
    "dwconv-reflect": (lambda b: setattr(b, "dwconv", _conv(b.dwconv, padding_mode="reflect")), False),
    "dwconv-dilated": (lambda b: setattr(b, "dwconv", _conv(b.dwconv, padding=6, dilation=2)), False),
    "dwconv-dense": (lambda b: setattr(b, "dwconv", _conv(b.dwconv, groups=1)), False),
    "drop-path-sequential": (lambda b: setattr(b, "drop_path", nn.Sequential()), False),
    "extra-child": (lambda b: setattr(b, "extra", nn.Identity()), False),
    "instance-forward": (_forward_override, False),
    "block-subclass": ("model:subclass", False),
    "block-replaced-by-identity": ("model:identity", False),
    "weight-norm": (lambda b: nn.utils.parametrizations.weight_norm(b.pwconv1), False),
    "pruned": (lambda b: prune.l1_unstructured(b.pwconv2, "weight", 0.5), False),
    "float64-block-in-float32-model": (lambda b: b.double(), False),
}
V1_ONLY = {
    "no-layer-scale": (lambda b: setattr(b, "gamma", None), True),
    "layer-scale-scalar": (lambda b: setattr(b, "gamma", nn.Parameter(torch.tensor(0.7))), False),
}
V2_ONLY = {
    "grn-eps": (lambda b: setattr(b.grn, "eps", 1e-3), True),
    "grn-identity": (lambda b: setattr(b, "grn", nn.Identity()), False),
    "grn-flat-parameters": (lambda b: setattr(b.grn, "gamma", _param(b.grn.gamma.reshape(-1))), False),
}
REFERENCE_RAISES = {"gelu-approximate-unknown", "float64-block-in-float32-model"}
AFTER_CAST = {"float64-block-in-float32-model"}  # a bfloat16 model: the block is cast after the model
CASES = ([(V1, k, *v) for k, v in {**BLOCK_VARIATIONS, **V1_ONLY}.items()]
         + [(V2, k, *v) for k, v in {**BLOCK_VARIATIONS, **V2_ONLY}.items()])
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _mutate(model, mutation) -> None:
    stage = model.stages[1]
    if mutation == "model:identity":
        stage[0] = nn.Identity()
    elif mutation == "model:subclass":
        old = stage[0]
        sub = _SubBlock(old.dwconv.in_channels, layer_scale_init_value=1.0 if old.gamma is not None else 0.0,
                        use_grn=old.grn is not None)
        sub.load_state_dict(old.state_dict())
        stage[0] = sub
    else:
        mutation(stage[0])


def _run(model, x, train: bool):
    """Features (inference) or the loss, input gradient and parameter gradients (training), seeded
    so that an active drop path draws the same masks on both paths."""
    torch.manual_seed(0)
    if not train:
        with torch.no_grad():
            return list(model(x).feature_maps)
    model.zero_grad()
    xi = x.clone().requires_grad_()
    feats = model(xi).feature_maps
    loss = sum((f * f).mean() for f in feats)
    loss.backward()
    return [*feats, xi.grad] + [p.grad for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name,variation,mutation,accelerated", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_rule_admits_only_what_the_fast_path_computes(name, variation, mutation, accelerated, dtype, spy):
    """float32: the reference's results within 1e-5; bfloat16 (the whole model cast, as deployed):
    within bfloat16 rounding (BF16_REL_TOL). Refused variations run the module itself."""
    model = _small(name)
    _mutate(model, mutation)
    randomize_(model, seed=1)
    model.to(DTYPES[dtype])
    if variation in AFTER_CAST:
        _mutate(model, mutation)
    model32 = _twin32(model, lambda m: _mutate(m, mutation), name)  # bfloat16: the rounding scale
    x = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(2)).to(DTYPES[dtype])
    blocks = sum(len(stage) for stage in model.stages)
    expect_taken = blocks if accelerated else blocks - 1
    if variation in REFERENCE_RAISES:  # refused, and the reference's own error surfaces
        with pytest.raises(RuntimeError) as fast:
            _run(model.eval(), x, False)
        with pytest.raises(RuntimeError) as ref:
            _reference(model, lambda: _run(model, x, False))
        assert str(fast.value) == str(ref.value)
        return
    for train in (False, True):
        model.train(train)
        before = spy["block"]
        got = _run(model, x, train)
        taken = spy["block"] - before
        want = _reference(model, lambda train=train: _run(model, x, train))
        assert len(got) == len(want)
        if dtype == "fp32":
            assert max_abs_diff(got, want) < 1e-5, (variation, train)
        else:
            exact = _reference(model32, lambda train=train: _run(model32.train(train), x.float(), train))
            _within_bf16_rounding(got, want, exact)
        assert taken == expect_taken, (variation, train, taken, expect_taken)


DOWNSAMPLE_VARIATIONS = {
    "stock": (lambda m: None, True),
    "conv-no-bias": (lambda m: setattr(m.downsample_layers[1][1], "bias", None), True),
    "overlapping-conv": (lambda m: m.downsample_layers[1].__setitem__(
        1, nn.Conv2d(m.downsample_layers[1][1].in_channels, m.downsample_layers[1][1].out_channels, 3, stride=2, padding=1)), True),
    "extra-gelu": (lambda m: m.downsample_layers[2].append(nn.GELU()), False),
    "norm-replaced-by-identity": (lambda m: m.downsample_layers[1].__setitem__(0, nn.Identity()), False),
    "sequential-subclass": (lambda m: m.downsample_layers.__setitem__(
        1, type("Seq", (nn.Sequential,), {})(*m.downsample_layers[1])), False),
    "hooked-conv": (lambda m: m.downsample_layers[1][1].register_forward_hook(lambda mod, a, o: o * 2), False),
    "stem-layernorm2d-subclass": (lambda m: m.downsample_layers[0].__setitem__(
        1, type("LN", (LayerNorm2d,), {})(m.downsample_layers[0][1].normalized_shape, eps=1e-6)), False),
}


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("variation", list(DOWNSAMPLE_VARIATIONS))
@pytest.mark.parametrize("name", [V1, V2])
def test_rule_on_stem_and_downsampling_variations(name, variation, dtype, spy):
    mutation, accelerated = DOWNSAMPLE_VARIATIONS[variation]
    model = _small(name)
    mutation(model)
    randomize_(model, seed=1)
    model.to(DTYPES[dtype])
    x = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(2)).to(DTYPES[dtype])
    model.train()
    got = _run(model, x, True)
    want = _reference(model, lambda: _run(model, x, True))
    if dtype == "fp32":
        assert max_abs_diff(got, want) < 1e-5
    else:
        model32 = _twin32(model, mutation, name)
        _within_bf16_rounding(got, want, _reference(model32, lambda: _run(model32, x.float(), True)))
    assert spy["downsample"] == (4 if accelerated else 3)


def test_a_patched_class_forward_is_honoured(monkeypatch, spy):
    """Patching a stock class (``nn.GELU.forward``) changes the reference: the rule sees it."""
    model = _small(V1).eval()
    x = torch.randn(1, 3, 40, 56)
    monkeypatch.setattr(nn.GELU, "forward", lambda self, t: torch.tanh(t))
    with torch.no_grad():
        got = model(x).feature_maps
        want = _reference(model, lambda: model(x).feature_maps)
    assert spy["block"] == 0 and max_abs_diff(got, want) == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_other_model_dtypes_take_the_reference(dtype, spy):
    model = _small(V2).to(dtype).eval()
    x = torch.randn(1, 3, 40, 56, dtype=dtype)
    with torch.no_grad():
        got = model(x).feature_maps
        want = _reference(model, lambda: model(x).feature_maps)
    assert max_abs_diff(got, want) == 0 and spy["block"] == 0
