"""Shared test utilities: weight randomisation that exercises every parameter."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Perturb every parameter so that norms, layer scale and GRN all matter.

    Reference inits leave LayerNorms at (1, 0), GRN at 0 (identity) and layer scale at 1e-6
    (blocks almost skipped): a parity test on such weights could not see a wrong mapping.
    """
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        leaf = name.rsplit(".", 1)[-1]
        if p.ndim == 1 and leaf == "weight":  # norm weights
            p.copy_(1.0 + 0.2 * noise)
        elif "grn" in name or leaf in ("gamma", "layer_scale_parameter", "beta"):
            # GRN multiplies activations by up to ~3x its gamma: keep features O(1) as in trained models
            p.copy_((0.03 if "grn" in name or leaf == "beta" else 0.1) * noise)
        elif leaf == "bias":
            p.copy_(0.05 * noise)
        else:
            fan_in = max(1, p[0].numel())
            # Residual branches of trained ConvNeXts are small next to the stream; V2 has no layer
            # scale to damp them, so a unit-gain last projection would grow features ~2x per stage.
            gain = 0.25 if any(s in name for s in ("pwconv2", "fc2")) else 1.0
            p.copy_(gain * noise / fan_in**0.5)
    return model


def conv_grads(fn, x, weight, bias, grad_y, dtype) -> list[torch.Tensor]:
    """``fn(x, weight, bias)`` on copies in ``dtype``, backward of ``grad_y``: [y, grad x, grad
    weight, grad bias] in float64, to compare a convolution with another and with float64."""
    xi = x.detach().to(dtype).requires_grad_()
    wi, bi = weight.detach().to(dtype).requires_grad_(), bias.detach().to(dtype).requires_grad_()
    y = fn(xi, wi, bi)
    y.backward(grad_y.to(dtype))
    return [t.double() for t in (y, xi.grad, wi.grad, bi.grad)]


def max_abs_diff(a, b) -> float:
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), (len(a), len(b))
        return max(max_abs_diff(x, y) for x, y in zip(a, b))
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return (a.float() - b.float()).abs().max().item()


# ---- training in a subprocess (the OpenMMLab train commands) --------------------------------
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def subprocess_env() -> dict:
    """This checkout's packages first, warnings off, one OpenMP thread: tiny tensors gain nothing
    from a second thread, and on two shared cores OpenMP's spin-waiting makes 2 threads ~10x slower."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    paths = [str(REPO), str(REPO / "integrations"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def run_logged(cmd: list[str], log: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run ``cmd`` from the repo root with ``subprocess_env()``, stdout and stderr into ``log``."""
    with open(log, "w") as f:
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=subprocess_env(), timeout=timeout, cwd=REPO)


def log_tail(log: Path, n: int = 40) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if not line.lstrip().startswith(('"', "set param"))]
    return "\n".join(lines[-n:])


def logged_scalars(work: Path) -> list[list[dict]]:
    """mmengine's logged scalars per run (one list per timestamped run directory, oldest first)."""
    runs = []
    for path in sorted(work.glob("*/vis_data/scalars.json")):
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # the last line of a killed run may be cut short
                pass
        runs.append(rows)
    return runs


# ---- OpenMMLab training runs: checkpoints, and a run killed between two of them ------------------
def load_mmengine_checkpoint(path: Path) -> dict:
    """An mmengine checkpoint under torch's ``weights_only=True`` default."""
    from openmmlab_convnext import mmengine_checkpoint_globals

    with mmengine_checkpoint_globals():
        return torch.load(path, map_location="cpu")


def _last_checkpoint_iter(work: Path) -> int:
    """The iteration of the checkpoint mmengine's ``last_checkpoint`` names (-1: none yet)."""
    last = work / "last_checkpoint"
    m = re.search(r"iter_(\d+)\.pth$", last.read_text()) if last.is_file() else None
    return int(m.group(1)) if m else -1


def kill_after_checkpoint(cmd: list[str], work: Path, log: Path, at_least: int, timeout: float) -> tuple[int, int]:
    """Start a training command (output into ``log``) and SIGKILL it once its last checkpoint is at
    iteration ``at_least`` or later: a run caught between checkpoints, whatever the machine's speed.
    -> (that checkpoint's iteration, the command's return code)."""
    import signal
    import time

    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=subprocess_env(), cwd=REPO)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None and _last_checkpoint_iter(work) < at_least:
            time.sleep(0.2)
        assert proc.poll() is None, f"run 1 ended before it could be killed:\n{log_tail(log)}"
        assert _last_checkpoint_iter(work) >= at_least, f"no checkpoint at iteration >= {at_least} in time:\n{log_tail(log)}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return _last_checkpoint_iter(work), proc.returncode


# ---- the official layer-wise lr decay rule, restated independently of the code under test ----
def official_layer_id(name: str, decay_type: str, num_layers: int) -> int:
    """The official ConvNeXt det/seg layer-id rule (facebookresearch/ConvNeXt, mmcv_custom), restated.

    layer_wise: stem 0; stage1 1; stage2 and its downsampling 2; stage3 and its downsampling
    3 + block // 3; stage4 and its downsampling ``num_layers``; anything else num_layers + 1.
    stage_wise: stem and every downsampling 0; stage i (1-based) i; anything else num_layers + 1.
    lr = base_lr * decay_rate ** (num_layers + 1 - layer_id).
    """
    parts = name.split(".")
    if parts[0] != "backbone" or parts[1] not in ("downsample_layers", "stages"):
        return num_layers + 1
    stage = int(parts[2])
    if decay_type == "stage_wise":
        return 0 if parts[1] == "downsample_layers" else stage + 1
    if parts[1] == "downsample_layers":
        return {0: 0, 1: 2, 2: 3, 3: num_layers}[stage]
    return {0: 1, 1: 2, 3: num_layers}.get(stage, 3 + int(parts[3]) // 3)


# ---- Ctrl-C in the OpenMMLab train commands ------------------------------------------------------
def ctrl_c_note(train_main, runner_cls, argv: list[str], work: Path, capsys, monkeypatch) -> str:
    """Run ``train_main(argv)`` with a Runner whose training writes a checkpoint (as mmengine records
    it: its path in ``work/last_checkpoint``) and is then hit by a real SIGINT; -> the one line the
    command printed last on stderr, after checking exit status 130 and no traceback."""
    import signal
    import time

    import pytest
    import torch

    class Training:
        def train(self):
            work.mkdir(parents=True, exist_ok=True)
            torch.save({"meta": {"iter": 4}}, work / "iter_4.pth")
            (work / "last_checkpoint").write_text(str(work / "iter_4.pth"))
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)

    monkeypatch.setattr(runner_cls, "from_cfg", classmethod(lambda cls, cfg: Training()))
    capsys.readouterr()
    try:
        rc = train_main(argv)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped the train command as a KeyboardInterrupt traceback")
    err = capsys.readouterr().err
    assert rc == 130 and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


# ---- weight families: an open_clip checkpoint and CLIP's pixel statistics ------------------------
CLIP_MEAN_255 = [122.7709383, 116.7460125, 104.09373615]  # CLIP's mean/std x 255, RGB (as FC-CLIP's configs)
CLIP_STD_255 = [68.5005327, 66.6321579, 70.32316305]
IMAGENET_MEAN_255 = [123.675, 116.28, 103.53]
IMAGENET_STD_255 = [58.395, 57.12, 57.375]


def write_open_clip_checkpoint(path: Path, timm_name: str = "convnextv2_atto", seed: int = 0) -> Path:
    """A whole open_clip model as its training saves it: the timm image trunk under ``visual.trunk.``,
    a projection head and (a piece of) the text tower, wrapped in ``{"state_dict": ..., "epoch": ...}``.
    The converter tells the CLIP family from this layout alone: keep ``path``'s name neutral."""
    import timm
    import torch

    trunk = randomize_(timm.create_model(timm_name, pretrained=False, num_classes=0), seed=seed)
    width = trunk.num_features
    g = torch.Generator().manual_seed(seed)
    state = {f"visual.trunk.{k}": v for k, v in trunk.state_dict().items()}
    state["visual.head.proj.weight"] = torch.randn(16, width, generator=g)
    state["transformer.resblocks.0.attn.in_proj_weight"] = torch.randn(48, 16, generator=g)
    state["token_embedding.weight"] = torch.randn(10, 16, generator=g)
    state["logit_scale"] = torch.tensor(4.6)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "epoch": 32}, path)
    return path
