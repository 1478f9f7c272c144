"""Real DINO training (MMDetection 3.3.0's DINO-4scale on the ConvNeXt backbone), on disk data.

Through ``convnext-mmdet-train`` and through MMDetection's own ``tools/train.py``, in
subprocesses as a user runs them: the DINO smoke config (the V2-A DINO recipe shrunk for CPU runs:
100 queries, 2 + 2 transformer layers) on the generated COCO-format shapes dataset
(``convnext_backbone.synthetic``), evaluated by MMDetection's ``CocoMetric``. One run is killed
with SIGKILL after a checkpoint and resumed to the end; it also serves as the learning check.
"""
from __future__ import annotations

import math
import signal
import sys
import time
from pathlib import Path

import mmdet
import pytest

from convnext_backbone.synthetic import SyntheticSpec, make_coco_split
from mmdet_convnext.train import main as train_main

from helpers import REPO, kill_after_checkpoint, load_mmengine_checkpoint, log_tail, logged_scalars, run_logged

SMOKE = REPO / "configs" / "mmdet" / "smoke" / "dino_4scale_convnextv2_atto_shapes.py"
MMDET_TRAIN = Path(mmdet.__file__).parent / ".mim" / "tools" / "train.py"  # MMDetection's own script
LEARN_ITERS, CKPT_INTERVAL, STEP_AT, BASE_LR = 80, 15, 65, 4e-4
# Box AP50 on the held-out split (16 images) after 80 iterations from random init (48 training
# images, batch 4, seed 0, the smoke config's lr 4e-4, x0.1 at iteration 65). The untrained model
# scores 0.0-0.1 (the same CocoMetric on the same split, seeds 0 and 1). Measured here: 39 for this
# killed-and-resumed run (seed 0); 42 and 54 for uninterrupted runs of this schedule with seeds 1
# and 2; the smoke config's own 100 iterations (step at 80) 53-58. The bar is far above an untrained
# model and about half the lowest measured value: a resumed run replays a few iterations with
# other augmentation draws, and thread counts and CPUs change the arithmetic.
AP50_BAR = 20.0


def _data_options(root: Path) -> list[str]:
    d = f"{root}/"
    return ([f"{k}.dataset.data_root={d}" for k in ("train_dataloader", "val_dataloader", "test_dataloader")]
            + [f"{k}.ann_file={d}annotations/instances_val.json" for k in ("val_evaluator", "test_evaluator")])


def _train_cmd(work: Path, data: Path, *extra: str, **overrides) -> list[str]:
    opts = _data_options(data) + [f"{k}={v}" for k, v in overrides.items()]
    return [sys.executable, "-m", "mmdet_convnext.train", str(SMOKE), "--work-dir", str(work), *extra, "--cfg-options", *opts]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dino_data") / "shapes"
    make_coco_split(root, "train", SyntheticSpec(num_images=48, seed=0), progress=False)
    make_coco_split(root, "val", SyntheticSpec(num_images=16, seed=1), progress=False)
    return root


@pytest.fixture(scope="module")
def run(shapes, tmp_path_factory):
    """Train to a checkpoint, SIGKILL, ``--resume`` to the end; CocoMetric evaluates at the end."""
    root = tmp_path_factory.mktemp("dino_run")
    work = root / "work"
    schedule = {"train_cfg.max_iters": LEARN_ITERS, "train_cfg.val_interval": LEARN_ITERS,
                "default_hooks.checkpoint.interval": CKPT_INTERVAL, "default_hooks.logger.interval": 1,
                "log_processor.window_size": 1, "param_scheduler.0.milestones": f"[{STEP_AT}]",
                "param_scheduler.0.end": LEARN_ITERS}
    t0 = time.monotonic()
    log1 = root / "run1.log"
    killed_at, returncode1 = kill_after_checkpoint(_train_cmd(work, shapes, **schedule), work, log1, 2 * CKPT_INTERVAL, timeout=600)
    checkpoints_after_kill = {p.name: load_mmengine_checkpoint(p)["meta"]["iter"] for p in work.glob("iter_*.pth")}
    log2 = root / "run2.log"
    proc2 = run_logged(_train_cmd(work, shapes, "--resume", **schedule), log2, timeout=900)
    assert proc2.returncode == 0, log_tail(log2)
    runs = logged_scalars(work)
    return dict(work=work, killed_at=killed_at, returncode1=returncode1, checkpoints_after_kill=checkpoints_after_kill,
                log2=log2.read_text(), run1=runs[0], run2=runs[-1], seconds=time.monotonic() - t0)


def test_killed_dino_run_resumes_at_the_next_iteration_with_the_schedule(run):
    assert run["returncode1"] == -signal.SIGKILL
    assert run["checkpoints_after_kill"] and all(int(n[5:-4]) == it for n, it in run["checkpoints_after_kill"].items())
    n = run["killed_at"]
    assert f"resumed epoch: 0, iter: {n}" in run["log2"] and f"Advance dataloader {n} steps" in run["log2"]
    assert [r["iter"] for r in run["run2"] if "loss" in r] == list(range(n + 1, LEARN_ITERS + 1))
    final = load_mmengine_checkpoint(run["work"] / f"iter_{LEARN_ITERS}.pth")
    assert final["meta"]["iter"] == LEARN_ITERS and "optimizer" in final and "param_schedulers" in final
    assert "backbone.stages.3.1.grn.gamma" in final["state_dict"] and "neck.convs.2.conv.weight" in final["state_dict"]
    lr = {r["iter"]: r["base_lr"] for r in run["run2"] if "base_lr" in r}
    assert lr[n + 1] == pytest.approx(BASE_LR) and lr[LEARN_ITERS] == pytest.approx(BASE_LR * 0.1)  # the step at STEP_AT


def test_dino_losses_are_finite_and_fall(run):
    by_iter = {r["iter"]: r for r in run["run1"] + run["run2"] if "loss" in r}  # run 2 repeats nothing
    its = sorted(by_iter)
    assert len(its) >= LEARN_ITERS - CKPT_INTERVAL
    assert all(math.isfinite(v) for r in by_iter.values() for k, v in r.items() if "loss" in k)
    first, last = its[:10], its[-10:]
    for key in ("loss", "loss_cls", "loss_bbox", "loss_iou", "enc_loss_cls"):  # (denoising losses fall slowly)
        before, after = (sum(by_iter[i][key] for i in part) / len(part) for part in (first, last))
        assert after < 0.85 * before, (key, before, after)


def test_dino_learns_the_shapes_by_coco_metric(run):
    val = [r for r in run["run2"] if "coco/bbox_mAP" in r]
    assert len(val) == 1 and val[0]["step"] == LEARN_ITERS
    assert all(0.0 <= val[0][f"coco/bbox_{k}"] <= 1.0 for k in ("mAP", "mAP_50", "mAP_75"))
    assert "Evaluating bbox..." in run["log2"]
    ap50 = 100 * val[0]["coco/bbox_mAP_50"]
    print(f"\nDINO learning test: box AP50 {ap50:.1f} after {LEARN_ITERS} iterations (bar {AP50_BAR}; untrained 0.0-0.1); "
          f"train + kill + resume + eval {run['seconds']:.0f} s")
    assert ap50 >= AP50_BAR


def test_a_dino_neck_that_does_not_fit_stops_with_one_line(tmp_path, capsys):
    rc = train_main([str(SMOKE), "--work-dir", str(tmp_path / "w"), "--cfg-options", *_data_options(tmp_path / "d"),
                     "model.neck.in_channels=[192,384,768]"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("convnext-mmdet-train: error:")]
    assert rc == 2 and len(lines) == 1 and not (tmp_path / "w").exists()
    assert "neck.in_channels=[192, 384, 768] does not match the backbone: MMDetConvNeXt (arch='convnextv2_atto', outputs " \
           "['stage2', 'stage3', 'stage4']) gives 3 maps with channels [80, 160, 320], so set model.neck.in_channels=[80, 160, 320]" \
           in lines[0]


def test_mmdetection_own_train_script_runs_and_resumes_a_user_dino_config(shapes, tmp_path):
    """``python mmdet/.mim/tools/train.py user.py`` (MMDetection's own script), then ``--resume``; the
    user config inherits our DINO smoke config and changes the model."""
    user = tmp_path / "my_dino.py"
    user.write_text(f"_base_ = [{str(SMOKE)!r}]\nmodel = dict(num_queries=50, decoder=dict(num_layers=1))\n")
    work = tmp_path / "work"
    base = [sys.executable, str(MMDET_TRAIN), str(user), "--work-dir", str(work)]
    opts = ["default_hooks.checkpoint.interval=2", "train_cfg.val_interval=3", *_data_options(shapes)]
    first = run_logged(base + ["--cfg-options", "train_cfg.max_iters=2", *opts], tmp_path / "first.log", timeout=600)
    assert first.returncode == 0, log_tail(tmp_path / "first.log")
    second = run_logged(base + ["--resume", "--cfg-options", "train_cfg.max_iters=3", *opts], tmp_path / "second.log", timeout=600)
    assert second.returncode == 0, log_tail(tmp_path / "second.log")
    text = (tmp_path / "second.log").read_text()
    assert "resumed epoch: 0, iter: 2" in text and "coco/bbox_mAP" in text  # CocoMetric at iteration 3
    final = load_mmengine_checkpoint(work / "iter_3.pth")
    assert final["meta"]["iter"] == 3 and final["state_dict"]["query_embedding.weight"].shape[0] == 50
    assert "decoder.layers.0.ffn.layers.1.weight" in final["state_dict"] and "decoder.layers.1.ffn.layers.1.weight" not in final["state_dict"]
