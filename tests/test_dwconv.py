"""The C depthwise kernel (convnext_backbone/dwconv.py): exact against float64, used where it
applies, and a clean fallback where it cannot be built."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from convnext_backbone import build_backbone, dwconv

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
    assert dwconv.usable(x, conv)

    def grads(fn, dtype):
        conv.zero_grad()
        xi = x.detach().to(dtype).requires_grad_()
        wi, bi = (conv.weight.detach().to(dtype).requires_grad_(), conv.bias.detach().to(dtype).requires_grad_())
        y = fn(xi, wi, bi)
        y.backward(gy.to(dtype))
        return [t.double() for t in (y, xi.grad, wi.grad, bi.grad)]

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
        assert dwconv.usable(x, conv) and dwconv.norm_fusable(norm, c)
        fused = dwconv.depthwise7_norm(x, conv, norm)
        unfused = norm(conv(x).permute(0, 2, 3, 1))
        exact = norm.double()(conv.double()(x.double()).permute(0, 2, 3, 1))
    ours, theirs = (fused.double() - exact).abs().max().item(), (unfused.double() - exact).abs().max().item()
    assert fused.shape == (n, h, w, c)
    assert ours <= 2 * theirs + 1e-6, (ours, theirs)


def test_used_in_training_and_inference_not_under_tracing(monkeypatch):
    calls = []
    for name in ("depthwise7", "depthwise7_norm"):
        real = getattr(dwconv, name)
        monkeypatch.setattr(dwconv, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    model = build_backbone("convnextv2_atto", out_indices=[1, 2, 3, 4])
    blocks = sum(model.config.depths)
    x = torch.randn(1, 3, 64, 64)
    model.train()
    sum(f.sum() for f in model(x).feature_maps).backward()
    assert calls == ["depthwise7"] * blocks
    model.eval()
    with torch.inference_mode():
        fused = model(x).feature_maps
    assert calls[blocks:] == ["depthwise7_norm"] * blocks  # inference: conv + LayerNorm fused
    with torch.no_grad():
        model.requires_grad_(False)  # a traced lambda takes the parameters as constants
        traced = torch.jit.trace(lambda x: model(x).feature_maps, x, check_trace=False)
    assert len(calls) == 2 * blocks  # tracing takes conv2d: ctypes calls cannot be traced
    plain = traced(x)
    assert max((a - b).abs().max().item() for a, b in zip(fused, plain)) <= 1e-5


def test_not_used_for_nchw_float64_or_hooked_convs():
    conv = torch.nn.Conv2d(16, 16, 7, padding=3, groups=16)
    x = torch.randn(1, 16, 9, 9)
    assert not dwconv.usable(x, conv)  # NCHW memory
    xl = x.contiguous(memory_format=torch.channels_last)
    assert dwconv.usable(xl, conv)
    assert not dwconv.usable(xl.double(), conv.double())
    conv.register_forward_hook(lambda *a: None)
    assert not dwconv.usable(xl.float(), conv.float())  # module hooks must still fire


_FALLBACK_SCRIPT = r"""
import logging, sys, torch
logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
from convnext_backbone import build_backbone, dwconv
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
    code = "from convnext_backbone import dwconv; print(dwconv.native_status())"
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
