"""Real MMSegmentation training through ``convnext-mmseg-train`` (mmengine Runner), on disk data.

The dataset is generated in the ADE20K layout (``images/training`` JPEG, ``annotations/training``
PNG, raw labels 0..150, ``reduce_zero_label``) by ``mmseg_convnext.synthetic``; the model is the
smoke config (UperNet + ConvNeXt V2-Atto, the ADE20K recipe shrunk to 64x64 CPU runs); the
metric is MMSegmentation's ``IoUMetric``. Training runs in subprocesses, as a user would run it,
so a run can be killed with SIGKILL and resumed, and torchrun can start two CPU processes.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmseg_convnext.synthetic import make_ade20k_like
from mmseg_convnext.train import main as train_main

from helpers import REPO, ctrl_c_note, kill_after_checkpoint, load_mmengine_checkpoint, log_tail, logged_scalars, run_logged

SMOKE = REPO / "configs" / "mmseg" / "smoke" / "upernet_convnextv2_atto_64x64_synthetic.py"
# Measured: see test_training_learns_the_easy_dataset; the bar sits well below the measured
# value and far above what a constant (majority-class) predictor scores.
LEARN_ITERS = 120
MIOU_BAR = 60.0


def _options(data_root: Path, **overrides) -> list[str]:
    opts = [f"{k}.dataset.data_root={data_root}" for k in ("train_dataloader", "val_dataloader", "test_dataloader")]
    return opts + [f"{k}={v}" for k, v in overrides.items()]


def _train_cmd(work_dir: Path, data_root: Path, *extra: str, **overrides) -> list[str]:
    return [sys.executable, "-m", "mmseg_convnext.train", str(SMOKE), "--work-dir", str(work_dir), *extra,
            "--cfg-options", *_options(data_root, **overrides)]


@pytest.fixture(scope="module")
def ade(tmp_path_factory) -> Path:
    root = make_ade20k_like(tmp_path_factory.mktemp("data") / "ade", num_train=32, num_val=8, size=64, seed=0)
    return root


def test_synthetic_dataset_has_the_ade20k_layout_and_label_range(ade):
    for split, n in (("training", 32), ("validation", 8)):
        images = sorted((ade / "images" / split).glob("*.jpg"))
        annotations = sorted((ade / "annotations" / split).glob("*.png"))
        assert len(images) == len(annotations) == n
        assert [p.stem for p in images] == [p.stem for p in annotations]
    labels = np.concatenate([np.asarray(Image.open(p)).ravel() for p in (ade / "annotations" / "training").glob("*.png")])
    assert set(np.unique(labels)) == {0, 1, 13, 77, 150}  # 0 = ignored "other"; 150 = the last class
    with pytest.raises(FileExistsError):
        make_ade20k_like(ade)


def test_train_eval_checkpoint_kill_and_resume_at_the_right_iteration(ade, tmp_path):
    """SIGKILL mid-run, then ``--resume``: training continues from the last checkpoint's iteration."""
    work = tmp_path / "work"
    cmd = _train_cmd(work, ade, **{"train_cfg.max_iters": 1000, "train_cfg.val_interval": 1000,
                                   "default_hooks.checkpoint.interval": 2, "default_hooks.logger.interval": 1})
    n, returncode = kill_after_checkpoint(cmd, work, tmp_path / "run1.log", 4, timeout=400)
    assert returncode == -signal.SIGKILL
    for ckpt in work.glob("iter_*.pth"):  # written atomically: every visible checkpoint is whole
        assert load_mmengine_checkpoint(ckpt)["meta"]["iter"] == int(ckpt.stem.split("_")[1])
    run1 = logged_scalars(work)[-1]
    run1_lr = {r["iter"]: r["base_lr"] for r in run1 if "base_lr" in r}
    assert set(range(1, n + 1)) <= set(run1_lr)

    log2 = tmp_path / "run2.log"
    cmd = _train_cmd(work, ade, "--resume", **{"train_cfg.max_iters": n + 2, "train_cfg.val_interval": n + 2,
                                               "default_hooks.checkpoint.interval": 2, "default_hooks.logger.interval": 1})
    proc2 = run_logged(cmd, log2, timeout=400)
    assert proc2.returncode == 0, log_tail(log2)
    text = log2.read_text()
    assert f"resumed epoch: 0, iter: {n}" in text
    assert f"Advance dataloader {n} steps" in text
    final = load_mmengine_checkpoint(work / f"iter_{n + 2}.pth")
    assert final["meta"]["iter"] == n + 2 and "optimizer" in final and "param_schedulers" in final
    run2 = logged_scalars(work)[-1]
    trained = [r["iter"] for r in run2 if "base_lr" in r]
    assert trained == [n + 1, n + 2], "the resumed run must train exactly the missing iterations"
    # the warmup schedule resumed too (a fresh scheduler would restart at run 1's first lr)
    slope = run1_lr[2] - run1_lr[1]
    expected = run1_lr[1] + slope * n
    got = next(r["base_lr"] for r in run2 if r.get("iter") == n + 1)
    assert got == pytest.approx(expected, rel=1e-6) and got != pytest.approx(run1_lr[1])
    # evaluated by IoUMetric on the 150 ADE20K classes
    val = [r for r in run2 if "mIoU" in r]
    assert len(val) == 1 and val[0]["step"] == n + 2 and 0.0 <= val[0]["mIoU"] <= 100.0
    assert "per class results" in text and re.search(r"^\|\s+flag\s+\|", text, re.M)  # class 150 of ADE20K


def test_resume_refuses_a_foreign_malicious_checkpoint(ade, tmp_path):
    """Resume allows mmengine's data classes only; code in a pickle still does not run."""
    marker = tmp_path / "pwned"

    class Shell:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    class GetAttr:  # the one non-class global we stand in for: only HistoryBuffer methods pass
        def __reduce__(self):
            return (getattr, (np.ndarray, "tofile"))

    for payload, message in ((Shell(), "posix.system|os.system|Unsupported global"),
                             (GetAttr(), r"refusing getattr\(ndarray, 'tofile'\)")):
        evil = tmp_path / "iter_4.pth"
        torch.save({"meta": {"iter": 4, "epoch": 0}, "state_dict": {}, "message_hub": payload}, evil)
        with pytest.raises(Exception, match=message) as err:
            load_mmengine_checkpoint(evil)
        assert "UnpicklingError" in type(err.value).__name__
        assert not marker.exists()
    # and through the training command: the run stops, nothing is executed
    work = tmp_path / "work"
    torch.save({"meta": {"iter": 4, "epoch": 0}, "state_dict": {}, "message_hub": Shell()}, evil)
    with pytest.raises(Exception, match="Weights only load failed") as err:
        train_main([str(SMOKE), "--work-dir", str(work), "--resume", str(evil), "--cfg-options",
                    *_options(ade)])
    assert "UnpicklingError" in type(err.value).__name__ and not marker.exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (["model.decode_head.in_channels=[96,192,384,768]"],
         r"decode_head\.in_channels=\[96, 192, 384, 768\] does not match the backbone.*needs in_channels=\[40, 80, 160, 320\]"),
        (["model.auxiliary_head.in_channels=384"], r"auxiliary_head\.in_channels=384 .* needs in_channels=160"),
        (["model.backbone.arch=convnext_gigantic"], r"MMSegConvNeXt backbone: unknown arch 'convnext_gigantic'"),
        (["model.backbone.out_indices=[0,1,2,4]"], r"MMSegConvNeXt backbone: invalid out_indices \[4\]"),
        (["model.backbone.out_indices=[1,2,3]"], r"decode_head\.in_index \[0, 1, 2, 3\] refers to backbone outputs \[3\]"),
    ],
)
def test_bad_config_stops_with_a_message_naming_the_problem(options, message, tmp_path, capsys):
    rc = train_main([str(SMOKE), "--work-dir", str(tmp_path / "w"), "--cfg-options", *_options(tmp_path / "d"), *options])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("convnext-mmseg-train: error:")
    assert re.search(message, err), err


def test_config_files_and_arguments_that_do_not_fit_are_one_line(tmp_path, capsys):
    """A config that does not run (syntax, a name error: it is the user's Python), a key a class does
    not take (found by the preflight, or while the Runner builds its loop), a truncated load_from."""
    cases = []
    for name, text, message in (
        ("syntax.py", f"_base_ = '{SMOKE}'\nmodel = dict(\n", "line 2: '(' was never closed"),
        ("name.py", f"_base_ = '{SMOKE}'\nx = undefined_name\n", "line 2: NameError: name 'undefined_name' is not defined"),
    ):
        (tmp_path / name).write_text(text)
        cases.append(([str(tmp_path / name)], f"{tmp_path / name}, {message}"))
    cut = tmp_path / "cut.pth"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, cut)
    cut.write_bytes(cut.read_bytes()[:-300])
    base = [str(SMOKE), "--work-dir", str(tmp_path / "w"), "--cfg-options", *_options(tmp_path / "d")]
    cases += [
        (base + ["model.backbone.drop_path=0.1"],
         "OpenMMLabConvNeXt.__init__() got an unexpected keyword argument 'drop_path' (a key in the config or --cfg-options that it does not take?)"),
        (base + ["train_cfg.max_iterz=2"],
         "IterBasedTrainLoop.__init__() got an unexpected keyword argument 'max_iterz' (a key in the config or --cfg-options that it does not take?)"),
        (base + [f"load_from={cut}"], f"load_from {cut}: the file is truncated or corrupt"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        rc = train_main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err, err
        lines = [line for line in err.splitlines() if line.startswith("convnext-mmseg-train: error:")]
        assert len(lines) == 1 and lines[0].startswith(f"convnext-mmseg-train: error: {message}"), err


@pytest.mark.parametrize("resume, how", [
    ([], "add --resume to the same command"),
    (["--resume"], "run the same command again"),
    (["--resume", "CKPT"], "run the same command with --resume and no path"),
])
def test_ctrl_c_names_the_last_checkpoint_and_how_to_resume(resume, how, tmp_path, capsys, monkeypatch):
    from mmseg_convnext.runner import ConvNeXtSegRunner

    work = tmp_path / "work"
    if resume:  # what the run resumes from must be an intact checkpoint
        work.mkdir()
        torch.save({"meta": {"iter": 2}}, work / "iter_2.pth")
        (work / "last_checkpoint").write_text(str(work / "iter_2.pth"))
    resume = [str(work / "iter_2.pth") if a == "CKPT" else a for a in resume]
    argv = [str(SMOKE), "--work-dir", str(work), *resume, "--cfg-options", *_options(tmp_path / "d")]
    line = ctrl_c_note(train_main, ConvNeXtSegRunner, argv, work, capsys, monkeypatch)
    assert line == f"convnext-mmseg-train: interrupted; the last checkpoint is {work / 'iter_4.pth'}; {how} to continue from it"


def test_resume_from_a_truncated_checkpoint_names_the_last_intact_one(tmp_path, capsys):
    """A checkpoint cut short (a full disk, a partial copy): one line naming it and what to do."""
    work = tmp_path / "work"
    work.mkdir()
    good, bad = work / "iter_4.pth", work / "iter_6.pth"
    torch.save({"meta": {"iter": 4}, "state_dict": {"w": torch.zeros(10)}}, good)
    torch.save({"meta": {"iter": 6}, "state_dict": {"w": torch.zeros(1000)}}, bad)
    bad.write_bytes(bad.read_bytes()[:-300])
    (work / "last_checkpoint").write_text(str(bad))  # what auto-resume picks
    rc = train_main([str(SMOKE), "--work-dir", str(work), "--resume", "--cfg-options", *_options(tmp_path / "d")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("convnext-mmseg-train: error:")]
    assert len(lines) == 1, err  # library warnings may come before it
    line = lines[0]
    assert line.startswith(f"convnext-mmseg-train: error: cannot resume from {bad}: the file is truncated or corrupt")
    assert line.endswith(f"the last intact checkpoint is {good}; resume from it with --resume {good}")


def test_command_line_flags_reach_the_config(tmp_path):
    from mmseg_convnext.train import build_parser, load_config

    recipe = REPO / "configs" / "mmseg" / "upernet_convnextv2_atto_512x512_160k_ade20k.py"
    ckpt = tmp_path / "iter_8.pth"
    ckpt.write_bytes(b"")
    cfg = load_config(build_parser().parse_args([str(recipe), "--no-amp", "--resume", str(ckpt), "--work-dir", str(tmp_path)]))
    assert cfg.optim_wrapper.type == "OptimWrapper" and "loss_scale" not in cfg.optim_wrapper
    assert cfg.optim_wrapper.constructor == "ConvNeXtV2LearningRateDecayOptimizerConstructor"
    assert cfg.resume is True and cfg.load_from == str(ckpt) and cfg.work_dir == str(tmp_path) and cfg.launcher == "none"
    cfg = load_config(build_parser().parse_args([str(SMOKE), "--amp", "--resume", "--launcher", "pytorch",
                                                 "--cfg-options", "model.backbone.with_cp=True"]))
    assert cfg.optim_wrapper.type == "AmpOptimWrapper" and cfg.optim_wrapper.loss_scale == "dynamic"
    assert cfg.resume is True and cfg.get("load_from") is None and cfg.launcher == "pytorch"
    assert cfg.model.backbone.with_cp is True
    assert cfg.work_dir == os.path.join("./work_dirs", SMOKE.stem)


def test_missing_config_or_checkpoint_is_reported(tmp_path, capsys):
    assert train_main([str(tmp_path / "nope.py")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert train_main([str(SMOKE), "--resume", str(tmp_path / "nope.pth")]) == 2
    assert "--resume checkpoint not found" in capsys.readouterr().err


def test_distributed_two_cpu_processes_with_torchrun(ade, tmp_path):
    work = tmp_path / "work"
    log = tmp_path / "dist.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mmseg_convnext.train", str(SMOKE), "--launcher", "pytorch", "--work-dir", str(work),
           "--cfg-options", *_options(ade, **{"train_cfg.max_iters": 3, "train_cfg.val_interval": 3,
                                              "default_hooks.checkpoint.interval": 3, "default_hooks.logger.interval": 1,
                                              "model.decode_head.norm_cfg.type": "SyncBN"})]  # as the ADE20K configs
    proc = run_logged(cmd, log, timeout=400)
    assert proc.returncode == 0, log_tail(log)
    text = log.read_text()
    assert "Distributed launcher: pytorch" in text and "Distributed training: True" in text
    assert re.search(r"GPU number: 2", text), "two ranks"
    assert "SyncBN has no CPU implementation" in text
    ckpt = load_mmengine_checkpoint(work / "iter_3.pth")
    assert ckpt["meta"]["iter"] == 3
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])
    run = logged_scalars(work)[-1]
    assert [r["iter"] for r in run if "loss" in r] == [1, 2, 3] and any("mIoU" in r for r in run)


def _majority_baseline(root: Path) -> float:
    """mIoU (in %) of predicting the most frequent class everywhere, as IoUMetric computes it."""
    gts = [np.asarray(Image.open(p)).astype(np.int64) - 1 for p in sorted((root / "annotations" / "validation").glob("*.png"))]
    gt = np.concatenate([g.ravel() for g in gts])
    gt = gt[gt >= 0]  # label 0 ("other") -> 255 with reduce_zero_label: ignored
    classes, counts = np.unique(gt, return_counts=True)
    return 100.0 * (counts.max() / gt.size) / len(classes)  # one class right, the others 0


def test_training_learns_the_easy_dataset(tmp_path):
    root = make_ade20k_like(tmp_path / "easy", num_train=32, num_val=16, size=64, seed=1)
    work = tmp_path / "work"
    log = tmp_path / "learn.log"
    t0 = time.monotonic()
    proc = run_logged(_train_cmd(work, root, **{"train_cfg.max_iters": LEARN_ITERS, "train_cfg.val_interval": LEARN_ITERS,
                                          "param_scheduler.1.end": LEARN_ITERS}), log, timeout=600)
    assert proc.returncode == 0, log_tail(log)
    miou = [r["mIoU"] for r in logged_scalars(work)[-1] if "mIoU" in r][-1]
    baseline = _majority_baseline(root)
    print(f"\nlearning test: mIoU {miou:.2f} after {LEARN_ITERS} iterations ({time.monotonic() - t0:.0f} s); "
          f"majority-class baseline {baseline:.2f}; bar {MIOU_BAR}")
    assert 3 * baseline < MIOU_BAR
    assert miou >= MIOU_BAR, f"mIoU {miou} below the bar {MIOU_BAR} (majority-class baseline {baseline:.2f})"
