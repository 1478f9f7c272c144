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


def max_abs_diff(a, b) -> float:
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), (len(a), len(b))
        return max(max_abs_diff(x, y) for x, y in zip(a, b))
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return (a.float() - b.float()).abs().max().item()


# ---- training in a subprocess (the OpenMMLab train commands) --------------------------------
import json  # noqa: E402
import os  # noqa: E402
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
