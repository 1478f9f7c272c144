"""Real Mask2Former training (MMSegmentation 1.2.2's Mask2Former head on the ConvNeXt backbone), on disk data.

Through ``convnext-mmseg-train`` and through MMSegmentation's own ``tools/train.py``, in
subprocesses as a user runs them: the Mask2Former smoke config (the ConvNeXt Mask2Former recipe on a
V2-A, shrunk for CPU runs) on the generated ADE20K-layout dataset (``mmseg_convnext.synthetic``),
evaluated by MMSegmentation's ``IoUMetric``; a run killed with SIGKILL after a checkpoint resumes at
the right iteration with its poly schedule.
"""
from __future__ import annotations

import math
import re
import signal
import sys
from pathlib import Path

import mmseg
import pytest

from mmseg_convnext.synthetic import make_ade20k_like
from mmseg_convnext.train import main as train_main

from helpers import REPO, kill_after_checkpoint, load_mmengine_checkpoint, log_tail, logged_scalars, run_logged

SMOKE = REPO / "configs" / "mmseg" / "smoke" / "mask2former_convnextv2_atto_64x64_synthetic.py"
MMSEG_TRAIN = Path(mmseg.__file__).parent / ".mim" / "tools" / "train.py"  # MMSegmentation's own script
BASE_LR, POLY_END = 5e-4, 200


def _options(data_root: Path, **overrides) -> list[str]:
    opts = [f"{k}.dataset.data_root={data_root}" for k in ("train_dataloader", "val_dataloader", "test_dataloader")]
    return opts + [f"{k}={v}" for k, v in overrides.items()]


@pytest.fixture(scope="module")
def ade(tmp_path_factory) -> Path:
    return make_ade20k_like(tmp_path_factory.mktemp("m2f_data") / "ade", num_train=32, num_val=8, size=64, seed=0)


def test_mask2former_trains_evaluates_is_killed_and_resumes_at_the_right_iteration(ade, tmp_path):
    work = tmp_path / "work"
    sched = {"default_hooks.checkpoint.interval": 3, "default_hooks.logger.interval": 1, "log_processor.window_size": 1}
    cmd = [sys.executable, "-m", "mmseg_convnext.train", str(SMOKE), "--work-dir", str(work), "--cfg-options",
           *_options(ade, **{"train_cfg.max_iters": 1000, "train_cfg.val_interval": 1000}, **sched)]
    n, returncode = kill_after_checkpoint(cmd, work, tmp_path / "run1.log", 6, timeout=400)
    assert returncode == -signal.SIGKILL
    for ckpt in work.glob("iter_*.pth"):  # written atomically: every visible checkpoint is whole
        assert load_mmengine_checkpoint(ckpt)["meta"]["iter"] == int(ckpt.stem.split("_")[1])
    run1 = {r["iter"]: r for r in logged_scalars(work)[-1] if "loss" in r}

    log2 = tmp_path / "run2.log"
    cmd = [sys.executable, "-m", "mmseg_convnext.train", str(SMOKE), "--work-dir", str(work), "--resume", "--cfg-options",
           *_options(ade, **{"train_cfg.max_iters": n + 3, "train_cfg.val_interval": n + 3}, **sched)]
    proc2 = run_logged(cmd, log2, timeout=400)
    assert proc2.returncode == 0, log_tail(log2)
    text = log2.read_text()
    assert f"resumed epoch: 0, iter: {n}" in text and f"Advance dataloader {n} steps" in text
    run2 = logged_scalars(work)[-1]
    trained = {r["iter"]: r for r in run2 if "loss" in r}
    assert sorted(trained) == [n + 1, n + 2, n + 3], "the resumed run trains exactly the missing iterations"
    # the poly schedule went on where it stopped (a fresh scheduler would restart at the base lr)
    assert run1[1]["base_lr"] == pytest.approx(BASE_LR)
    got = trained[n + 1]["base_lr"]  # mmengine logs it within 1e-4 of the closed form
    assert got == pytest.approx(BASE_LR * (1 - n / POLY_END) ** 0.9, rel=1e-3) and got != pytest.approx(BASE_LR, rel=1e-2)
    losses = [r for r in list(run1.values()) + list(trained.values())]
    assert all(math.isfinite(v) for r in losses for k, v in r.items() if "loss" in k)
    assert {"decode.loss_cls", "decode.loss_mask", "decode.loss_dice", "decode.d0.loss_mask"} <= set(trained[n + 1])
    assert run1[min(run1)]["loss"] > trained[n + 3]["loss"], "the loss fell"
    final = load_mmengine_checkpoint(work / f"iter_{n + 3}.pth")
    assert final["meta"]["iter"] == n + 3 and "optimizer" in final and "param_schedulers" in final
    assert "backbone.stages.3.1.grn.gamma" in final["state_dict"] and "decode_head.query_embed.weight" in final["state_dict"]
    # evaluated by IoUMetric on the 150 ADE20K classes
    val = [r for r in run2 if "mIoU" in r]
    assert len(val) == 1 and val[0]["step"] == n + 3 and 0.0 <= val[0]["mIoU"] <= 100.0
    assert "per class results" in text and re.search(r"^\|\s+flag\s+\|", text, re.M)  # class 150 of ADE20K


def test_a_mask2former_head_that_does_not_fit_stops_with_one_line(tmp_path, capsys):
    rc = train_main([str(SMOKE), "--work-dir", str(tmp_path / "w"), "--cfg-options", *_options(tmp_path / "d"),
                     "model.decode_head.in_channels=[96,192,384,768]"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("convnext-mmseg-train: error:")]
    assert rc == 2 and len(lines) == 1 and not (tmp_path / "w").exists()
    assert ("decode_head.in_channels=[96, 192, 384, 768] does not match the backbone: MMSegConvNeXt (arch='convnextv2_atto', "
            "outputs ['stage1', 'stage2', 'stage3', 'stage4']) gives 4 maps with channels [40, 80, 160, 320], "
            "so set model.decode_head.in_channels=[40, 80, 160, 320]") in lines[0]


def test_mmsegmentation_own_train_script_runs_and_resumes_a_user_mask2former_config(ade, tmp_path):
    """``python mmseg/.mim/tools/train.py user.py`` (MMSegmentation's own script), then ``--resume``;
    the user config inherits our Mask2Former smoke config and changes the head."""
    user = tmp_path / "my_mask2former.py"
    user.write_text(f"_base_ = [{str(SMOKE)!r}]\nmodel = dict(decode_head=dict(num_queries=20))\n")
    work = tmp_path / "work"
    base = [sys.executable, str(MMSEG_TRAIN), str(user), "--work-dir", str(work)]
    opts = ["default_hooks.checkpoint.interval=2", "train_cfg.val_interval=3", *_options(ade)]
    first = run_logged(base + ["--cfg-options", "train_cfg.max_iters=2", *opts], tmp_path / "first.log", timeout=600)
    assert first.returncode == 0, log_tail(tmp_path / "first.log")
    second = run_logged(base + ["--resume", "--cfg-options", "train_cfg.max_iters=3", *opts], tmp_path / "second.log", timeout=600)
    assert second.returncode == 0, log_tail(tmp_path / "second.log")
    text = (tmp_path / "second.log").read_text()
    assert "resumed epoch: 0, iter: 2" in text and "mIoU" in text  # IoUMetric at iteration 3
    final = load_mmengine_checkpoint(work / "iter_3.pth")
    assert final["meta"]["iter"] == 3 and final["state_dict"]["decode_head.query_embed.weight"].shape[0] == 20
