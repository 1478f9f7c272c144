"""The accelerator (convnext_backbone/accel): the C kernel exact against float64 with a clean
fallback, the dispatch rule (taken on the stock model, stepping aside for anything a user can
observe or customise), and the fast paths equal to the reference model."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from convnext_backbone import build_backbone
from convnext_backbone.accel import native as dwconv

ROOT = Path(__file__).resolve().parents[1]


def test_kernel_builds_on_this_machine():
    # CI machines have a C compiler (mmcv is built from source); a silent fallback would hide
    # a 5x slower CPU training step, so the build itself is under test.
    assert dwconv.native_status() == "ok"


def _errors(n, c, h, w, threads, seed=0):
    """max |ours - float64| and |torch float32 conv - float64| for y, grad x, grad w, grad b."""
    g = torch.Generator().manual_seed(seed)
    conv = torch.nn.Conv2d(c, c, 7, padding=3, groups=c)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / 7)
        conv.bias.copy_(torch.randn(c, generator=g))
    x = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    gy = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    assert dwconv.usable(x)

    def grads(fn, dtype):
        return conv_grads(fn, x, conv.weight, conv.bias, gy, dtype)

    def ours(xi, wi, bi):
        return dwconv._DepthwiseConv7.apply(xi, wi, bi)

    def torch_conv(xi, wi, bi):
        return F.conv2d(xi, wi, bi, padding=3, groups=c)

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        mine, fp32 = grads(ours, torch.float32), grads(torch_conv, torch.float32)
    finally:
        torch.set_num_threads(before)
    exact = grads(torch_conv, torch.float64)
    return [(a - e).abs().max().item() for a, e in zip(mine, exact)], [(a - e).abs().max().item() for a, e in zip(fp32, exact)]


@pytest.mark.parametrize(
    "shape",
    [(2, 96, 37, 45), (1, 8, 5, 3), (1, 16, 1, 1), (3, 40, 9, 12), (1, 64, 2, 30), (2, 768, 4, 7)],
    ids=lambda s: "x".join(map(str, s)),
)
@pytest.mark.parametrize("threads", [1, 2])
def test_forward_and_gradients_match_float64(shape, threads):
    ours, torch_fp32 = _errors(*shape, threads)
    for name, mine, theirs in zip(("y", "grad_x", "grad_w", "grad_b"), ours, torch_fp32):
        # float32 summation either way: no worse than PyTorch's own float32 conv (+ rounding slack)
        assert mine <= 2 * theirs + 1e-6, (name, mine, theirs)


@pytest.mark.parametrize("shape", [(2, 96, 37, 45), (1, 8, 5, 3), (3, 40, 9, 12), (1, 768, 3, 9)],
                         ids=lambda s: "x".join(map(str, s)))
def test_fused_conv_layernorm_matches_float64(shape):
    n, c, h, w = shape
    g = torch.Generator().manual_seed(1)
    conv = torch.nn.Conv2d(c, c, 7, padding=3, groups=c)
    norm = torch.nn.LayerNorm(c, eps=1e-6)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / 7)
        conv.bias.copy_(torch.randn(c, generator=g))
        norm.weight.copy_(1 + 0.2 * torch.randn(c, generator=g))
        norm.bias.copy_(0.1 * torch.randn(c, generator=g))
        x = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
        assert dwconv.usable(x)
        fused = dwconv.depthwise7_norm_rows(x, conv, norm, torch.empty(n * h * w, c), 0, n * h).view(n, h, w, c)
        rows = torch.cat([dwconv.depthwise7_norm_rows(x, conv, norm, torch.empty((r1 - r0) * w, c), r0, r1)
                          for r0, r1 in ((0, 1), (1, n * h - 1), (n * h - 1, n * h)) if r1 > r0])
        assert torch.equal(rows.view(n, h, w, c), fused)  # a chunk of rows computes exactly those rows
        unfused = norm(conv(x).permute(0, 2, 3, 1))
        exact = norm.double()(conv.double()(x.double()).permute(0, 2, 3, 1))
    ours, theirs = (fused.double() - exact).abs().max().item(), (unfused.double() - exact).abs().max().item()
    assert fused.shape == (n, h, w, c)
    assert ours <= 2 * theirs + 1e-6, (ours, theirs)


def test_kernel_domain():
    x = torch.randn(1, 16, 9, 9)
    assert not dwconv.usable(x)  # NCHW memory
    xl = x.contiguous(memory_format=torch.channels_last)
    assert dwconv.usable(xl)
    assert not dwconv.usable(xl.double())
    assert not dwconv.usable(torch.randn(1, 12, 9, 9).contiguous(memory_format=torch.channels_last))  # C % 8


_FALLBACK_SCRIPT = r"""
import logging, sys, torch
logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
from convnext_backbone import build_backbone
from convnext_backbone.accel import native as dwconv
torch.manual_seed(0)
m = build_backbone("convnextv2_atto", out_indices=[4]).eval()
x = torch.randn(1, 3, 64, 64)
with torch.no_grad():
    y = m(x).feature_maps[0]
print("STATUS", dwconv.native_status())
torch.save(y, sys.argv[1])
"""


@pytest.mark.parametrize("env", [{"CONVNEXT_BACKBONE_NATIVE": "0"}, {"CC": "/bin/false"}], ids=["disabled", "no-compiler"])
def test_fallback_gives_the_same_features(tmp_path, env):
    outs = {}
    for label, extra in (("native", {}), ("fallback", env)):
        cache = tmp_path / f"cache-{label}"  # fresh cache: the fallback run really has to build
        run_env = dict(os.environ, CONVNEXT_BACKBONE_CACHE=str(cache), OMP_NUM_THREADS="1", **extra)
        out = tmp_path / f"{label}.pt"
        done = subprocess.run([sys.executable, "-c", _FALLBACK_SCRIPT, str(out)], env=run_env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        outs[label] = (torch.load(out), done.stdout)
    assert "STATUS ok" in outs["native"][1]
    status_line = outs["fallback"][1]
    assert "STATUS ok" not in status_line
    if "CC" in env:
        assert "native depthwise kernel unavailable" in status_line  # one warning says why
        assert not list((tmp_path / "cache-fallback").rglob("*.so"))  # nothing half-built left behind
    else:
        assert "disabled by CONVNEXT_BACKBONE_NATIVE=0" in status_line
    assert (outs["native"][0] - outs["fallback"][0]).abs().max().item() <= 1e-5


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_forked_child_after_threaded_use_does_not_hang():
    conv = torch.nn.Conv2d(16, 16, 7, padding=3, groups=16)
    x = torch.randn(2, 16, 12, 12).contiguous(memory_format=torch.channels_last)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            expected = dwconv.depthwise7(x, conv)  # starts the worker threads in this process
        pid = os.fork()
        if pid == 0:  # child: the same call must run (the parent's threads do not exist here)
            ok = False
            try:
                with torch.no_grad():
                    ok = torch.equal(dwconv.depthwise7(x, conv), expected)
            finally:
                os._exit(0 if ok else 1)
        deadline = time.monotonic() + 60
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                pytest.fail("forked child hung in the depthwise kernel")
            time.sleep(0.1)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        torch.set_num_threads(before)


def test_unwritable_cache_folder_builds_in_the_temp_dir(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    env = dict(os.environ, CONVNEXT_BACKBONE_CACHE=str(blocker))
    code = "from convnext_backbone.accel import native_status; print(native_status())"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok", done.stdout + done.stderr


@pytest.mark.parametrize("shape", [(2, 60001, 16), (1, 300, 1536), (3, 7, 8)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("threads", [1, 2])
def test_grn_sum_of_squares_matches_float64(shape, threads):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2)) + 0.5  # a mean: sums grow like L
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours = dwconv.sum_of_squares(x)
        theirs = (x * x).sum(dim=1)
    finally:
        torch.set_num_threads(before)
    exact = (x.double() ** 2).sum(dim=1)
    rel = lambda a: ((a.double() - exact).abs() / exact).max().item()  # noqa: E731
    assert rel(ours) <= max(2 * rel(theirs), 1e-6), (rel(ours), rel(theirs))


# ---------------------------------------------------------------------------------------------
# the dispatch rule: taken on the stock model, never where a user could see the difference
# ---------------------------------------------------------------------------------------------
import ast  # noqa: E402
import copy  # noqa: E402
import threading  # noqa: E402

from torch import nn  # noqa: E402

from convnext_backbone import accel  # noqa: E402
from convnext_backbone.layers import Block  # noqa: E402

from helpers import conv_grads, max_abs_diff, randomize_  # noqa: E402

LEAVES = ("dwconv", "norm", "pwconv1", "act", "grn", "pwconv2", "drop_path")


def _small(name="convnextv2_atto", **kw):
    kw.setdefault("out_indices", [1, 2, 3, 4])
    return randomize_(build_backbone(name, depths=[1, 1, 2, 1], **kw))


def _blocks(model):
    return [m for m in model.modules() if type(m) is Block]


def _reference(model, x, **kw):
    """The same model with the accelerator switched off."""
    model.accelerate = False
    try:
        return model(x, **kw)
    finally:
        model.accelerate = True


@pytest.mark.parametrize("name", ["convnext_tiny", "convnextv2_atto"])
def test_accelerator_is_taken_on_the_stock_model(name, spy):
    """Fails if the fast paths silently stop being used (a speed regression no parity test sees)."""
    model = _small(name, drop_path_rate=0.1).eval()
    blocks = len(_blocks(model))
    x = torch.randn(2, 3, 64, 64)
    with torch.profiler.profile() as prof, torch.inference_mode():
        model(x)
    assert spy == {"block": blocks, "downsample": 0}  # downsampling: only training has a faster way
    labels = [e.name for e in prof.events()]
    assert labels.count("convnext::dwconv7_layernorm") >= blocks  # the fused C conv + LayerNorm ran
    model.train()
    sum(f.sum() for f in model(x).feature_maps).backward()
    assert spy == {"block": 2 * blocks, "downsample": model.config.num_stages}
    model.accelerate = False
    model(x)
    assert spy == {"block": 2 * blocks, "downsample": model.config.num_stages}


@pytest.mark.parametrize("name", ["convnext_tiny", "convnextv2_atto"])
@pytest.mark.parametrize("mode", ["infer", "train"])
def test_hooks_on_every_leaf_of_a_block_fire(name, mode, spy):
    model = _small(name, drop_path_rate=0.2)
    model.train(mode == "train")
    target = model.stages[1][0]
    fired = []
    for leaf in LEAVES:
        module = getattr(target, leaf, None)
        if module is None:
            continue
        module.register_forward_pre_hook(lambda m, a, leaf=leaf: fired.append(("pre", leaf)))
        module.register_forward_hook(lambda m, a, o, leaf=leaf: fired.append(("post", leaf)))
        module.register_full_backward_hook(lambda m, gi, go, leaf=leaf: fired.append(("backward", leaf)))
    x = torch.randn(2, 3, 64, 64)
    if mode == "infer":
        with torch.no_grad():
            model(x)
    else:
        sum(f.sum() for f in model(x).feature_maps).backward()
    present = [leaf for leaf in LEAVES if getattr(target, leaf, None) is not None]
    assert [leaf for kind, leaf in fired if kind == "post"] == present
    assert [leaf for kind, leaf in fired if kind == "pre"] == present
    if mode == "train":
        assert sorted(leaf for kind, leaf in fired if kind == "backward") == sorted(present)
    blocks = len(_blocks(model))
    assert spy["block"] == blocks - 1  # only the hooked block stepped aside


def test_a_hook_that_changes_an_output_is_honoured():
    model = _small("convnext_tiny").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        plain = model(x).feature_maps
        handle = model.stages[2][1].pwconv1.register_forward_hook(lambda m, a, out: out * 0.5)
        hooked = model(x).feature_maps
        reference = _reference(model, x).feature_maps
        handle.remove()
    assert max_abs_diff(hooked, reference) < 1e-5
    assert max_abs_diff(hooked[2:], plain[2:]) > 1e-3 and max_abs_diff(hooked[:2], plain[:2]) == 0


def test_global_module_hooks_fire_for_every_submodule():
    model = _small("convnextv2_atto").eval()
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, a, o: seen.append(type(m).__name__))
    try:
        with torch.no_grad():
            model(torch.randn(1, 3, 64, 64))
    finally:
        handle.remove()
    blocks = len(_blocks(model))
    assert seen.count("Block") == blocks and seen.count("GRN") == blocks and seen.count("Linear") == 2 * blocks


class _LoRA(nn.Module):
    """LoRA as users write it: the frozen base layer plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int = 4, forward_weight: bool = False):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.A = nn.Parameter(0.1 * torch.randn(rank, base.in_features))
        self.B = nn.Parameter(0.1 * torch.randn(base.out_features, rank))
        self.forward_weight = forward_weight

    def __getattr__(self, name):
        if name in ("weight", "bias", "in_features", "out_features") and self.__dict__.get("forward_weight"):
            return getattr(self._modules["base"], name)  # a wrapper that looks like a Linear
        return super().__getattr__(name)

    def forward(self, x):
        return self.base(x) + (x @ self.A.t()) @ self.B.t()


@pytest.mark.parametrize("name", ["convnext_tiny", "convnextv2_atto"])
@pytest.mark.parametrize("forward_weight", [False, True], ids=["plain", "exposes-weight"])
def test_lora_wrapped_linears_change_the_output_and_train(name, forward_weight):
    model = _small(name).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x).feature_maps
    for block in _blocks(model):
        block.pwconv1 = _LoRA(block.pwconv1, forward_weight=forward_weight)
        block.pwconv2 = _LoRA(block.pwconv2, forward_weight=forward_weight)
    with torch.no_grad():
        after = model(x).feature_maps
        reference = _reference(model, x).feature_maps
    assert max_abs_diff(after, before) > 1e-2  # the low-rank update is not ignored
    assert max_abs_diff(after, reference) < 1e-5
    model.train()
    sum((f * f).mean() for f in model(x).feature_maps).backward()
    loras = [m for m in model.modules() if isinstance(m, _LoRA)]
    assert all(m.A.grad is not None and m.A.grad.abs().sum() > 0 and m.B.grad.abs().sum() > 0 for m in loras)
    assert all(m.base.weight.grad is None for m in loras)


def test_peft_lora_trains_the_adapters():
    import peft  # in the test extra: a missing peft is a failure, not a skip
    model = _small("convnextv2_atto").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x).feature_maps
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["pwconv1", "pwconv2"], init_lora_weights=False)
    wrapped = peft.get_peft_model(model, config)
    with torch.no_grad():
        after = wrapped(x).feature_maps
    assert max_abs_diff(after, before) > 1e-3
    wrapped.train()
    sum((f * f).mean() for f in wrapped(x).feature_maps).backward()
    lora = [(n, p) for n, p in wrapped.named_parameters() if "lora_" in n]
    assert lora and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in lora)
    assert all(p.grad is None for n, p in wrapped.named_parameters() if "lora_" not in n)


def test_dynamic_quantisation_runs_and_stays_close():
    model = _small("convnext_tiny").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x).feature_maps
        quantised = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
        got = quantised(x).feature_maps
    assert sum(type(m) is torch.ao.nn.quantized.dynamic.Linear for m in quantised.modules()) == 2 * len(_blocks(model))
    for a, b in zip(got, ref):
        assert (a - b).norm() / b.norm() < 0.05  # int8 weights: a few percent
        assert (a - b).abs().max() > 0  # it really ran the quantised layers


def test_parametrizations_and_customised_submodules_are_honoured():
    from torch.nn.utils import parametrize

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    class TanhGELU(nn.GELU):  # a subclass may compute anything
        def forward(self, x):
            return torch.tanh(x)

    model = _small("convnext_tiny").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        plain = model(x).feature_maps
        parametrize.register_parametrization(model.stages[0][0].pwconv2, "weight", Double())
        model.stages[1][0].act = TanhGELU()
        model.stages[2][0].act.approximate = "tanh"  # a stock class with another setting
        got = model(x).feature_maps
        reference = _reference(model, x).feature_maps
    assert max_abs_diff(got, reference) < 1e-5 and max_abs_diff(got, plain) > 1e-3


def test_flop_counter_sees_the_reference_ops():
    from torch.utils.flop_counter import FlopCounterMode

    model = _small("convnextv2_atto").eval()
    x = torch.randn(1, 3, 64, 64)

    def flops():
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
        return counter.get_total_flops()

    fast = flops()
    model.accelerate = False
    assert fast == flops() > 0


def test_fx_feature_extraction_matches_hidden_states():
    from torchvision.models.feature_extraction import create_feature_extractor

    model = _small("convnextv2_atto", drop_path_rate=0.1).eval()
    nodes = {"downsample_layers.0": "stem", **{f"stages.{i}": f"stage{i + 1}" for i in range(4)}}
    extractor = create_feature_extractor(model, return_nodes=nodes).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        got = extractor(x)
        hidden = model(x, output_hidden_states=True).hidden_states
    assert max_abs_diff([got[n] for n in nodes.values()], list(hidden)) < 1e-5


def _graph_backend(graphs):
    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    return backend


@pytest.mark.parametrize("name", ["convnext_tiny", "convnextv2_atto"])
def test_torch_compile_traces_the_reference_and_matches(name):
    torch._dynamo.reset()
    model = _small(name).eval()
    x = torch.randn(2, 3, 64, 64)
    graphs = []
    compiled = torch.compile(model, backend=_graph_backend(graphs), fullgraph=True)
    with torch.no_grad():
        got = compiled(x).feature_maps
        eager = model(x).feature_maps
    code = "\n".join(g.code for g in graphs)
    assert code.count("torch.nn.functional.linear") + code.count("torch._C._nn.linear") == 2 * len(_blocks(model))
    assert max_abs_diff(got, eager) < 1e-5


def test_torch_compile_inductor_matches():
    torch._dynamo.reset()
    model = _small("convnextv2_atto").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got = torch.compile(model)(x).feature_maps
        eager = model(x).feature_maps
    assert max_abs_diff(got, eager) < 1e-4


def test_torch_export_traces_the_reference(spy):
    model = _small("convnext_tiny").eval()
    x = torch.randn(1, 3, 64, 64)
    program = torch.export.export(model, (x,))
    assert spy["block"] == 0
    with torch.no_grad():
        assert max_abs_diff(program.module()(x).feature_maps, model(x).feature_maps) < 1e-5


def test_switches_turn_it_off_for_a_model_or_the_process(spy):
    model = _small("convnextv2_atto").eval()
    x = torch.randn(1, 3, 64, 64)
    model.accelerate = False
    with torch.no_grad():
        model(x)
    assert spy["block"] == 0
    model.accelerate = True
    accel.set_enabled(False)
    try:
        with torch.no_grad():
            model(x)
    finally:
        accel.set_enabled(True)
    assert spy["block"] == 0
    code = ("import torch; from convnext_backbone import accel, build_backbone; "
            "print(accel.enabled(), accel.accelerates(build_backbone('convnextv2_atto').stages[0][0], torch.randn(1, 40, 8, 8)))")
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, CONVNEXT_BACKBONE_ACCEL="0"),
                          capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["False", "False"], done.stderr


def test_kernel_compiles_on_first_use_not_at_import(tmp_path):
    code = (
        "import sys, torch, pathlib\n"
        "import convnext_backbone\n"
        "m = convnext_backbone.build_backbone('convnextv2_atto').eval()\n"
        "cache = pathlib.Path(sys.argv[1])\n"
        "print('imported', 'convnext_backbone.accel.native' in sys.modules, len(list(cache.rglob('*.so'))))\n"
        "with torch.no_grad(): m(torch.randn(1, 3, 64, 64))\n"
        "print('used', 'convnext_backbone.accel.native' in sys.modules, len(list(cache.rglob('*.so'))))\n"
    )
    cache = tmp_path / "cache"
    done = subprocess.run([sys.executable, "-c", code, str(cache)], env=dict(os.environ, CONVNEXT_BACKBONE_CACHE=str(cache)),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["imported False 0", "used True 1"]


def test_release_workspace_frees_every_threads_buffers():
    model = _small("convnext_tiny").eval()
    accel.release_workspace()
    ready, release = threading.Event(), threading.Event()

    def worker():
        with torch.no_grad():
            model(torch.randn(1, 3, 128, 128))
        ready.set()
        release.wait(60)  # the thread stays alive, its buffers with it

    t = threading.Thread(target=worker)
    t.start()
    try:
        assert ready.wait(60)
        assert accel.workspace_bytes() > 0
        accel.release_workspace()  # called from another thread
        assert accel.workspace_bytes() == 0
    finally:
        release.set()
        t.join()


def test_empty_batch_and_odd_layouts_take_the_reference():
    for name in ("convnext_tiny", "convnextv2_atto"):
        model = _small(name).eval()
        with torch.no_grad():
            out = model(torch.randn(0, 3, 64, 64)).feature_maps
        assert [tuple(f.shape) for f in out] == [(0, c, 64 // s, 64 // s) for c, s in zip(model.channels, model.strides)]
        model.config.channels_last = False  # NCHW activations: the block runs the reference ops
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            nchw = model(x).feature_maps
        model.config.channels_last = True
        with torch.no_grad():
            assert max_abs_diff(nchw, model(x).feature_maps) < 1e-5


def _imports(path: Path, package: str) -> set[str]:
    """Modules of our own tree that a file imports (module level or inside functions)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.update(f"{mod}.{a.name}" for a in node.names)
            found.add(mod)  # what is not a submodule comes from the module itself (unless that is a package's own parent)
    return found


def test_no_import_cycles_in_the_package_adapters_or_benchmarks():
    files = {}
    for root in (ROOT, ROOT / "integrations"):
        for path in root.glob("*/**/*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            if parts and parts[0] in ("convnext_backbone", "benchmarks") or root.name == "integrations":
                files[".".join(parts)] = path
    graph = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        # `from . import sibling` names the parent package too; importing a submodule always runs
        # its parents' __init__ first, so an edge to an enclosing package is not a cycle.
        graph[mod] = {m for m in _imports(path, package) if m in files and m != mod and not mod.startswith(m + ".")}
    # Tarjan-free cycle search: a module that reaches itself
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    pytest.fail("import cycle: " + " -> ".join(trail + [start]))
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
