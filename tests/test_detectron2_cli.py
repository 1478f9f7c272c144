"""The Detectron2 command lines when the user gets something wrong: one ``prog: error: ...``
line and exit status 2 (as ``convnext-mmseg-train``), before anything is launched where
possible; checkpoints that do not fit say how to load them non-strictly *in Detectron2*; and
Ctrl-C says where the last checkpoint is and how to continue (exit status 130).

Most cases call ``main()`` in this process: it stops before Detectron2's ``launch``. One
case goes through two real worker processes (an error found while a worker loads weights).
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import detectron2  # noqa: F401  (a missing framework must fail loudly, not skip)
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import detectron2_convnext as d2c
from convnext_backbone import CheckpointError, ConvNextForImageClassification
from convnext_backbone.arch import config_from_preset_name
from detectron2_convnext import lazy_train_net, train_net
from detectron2_convnext.synthetic import SyntheticSpec, make_coco_split

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "detectron2"
DEMO_CFG = str(CONFIGS / "demo" / "mask_rcnn_convnextv2_atto_fpn_shapes.yaml")
LAZY_CFG = str(CONFIGS / "lazy" / "mask_rcnn_convnext_tiny_fpn_3x_coco.py")
HINT = "set CONVNEXT_DEBUG=1 for the traceback"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("d2cli_data")
    train = make_coco_split(root, "train", SyntheticSpec(num_images=8, seed=0), progress=False)
    val = make_coco_split(root, "val", SyntheticSpec(num_images=4, seed=1), progress=False)
    # DATASETS in the demo config are shapes_train / shapes_val; registered in this process by main()
    return ["--register-coco", "shapes_train", train.json_file, train.image_root,
            "--register-coco", "shapes_val", val.json_file, val.image_root]


def _one_line_error(capsys, rc, prog="convnext-d2-train") -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(lines) == 2 and lines[0].startswith(f"{prog}: error: ") and lines[1] == f"({HINT})", err
    return lines[0][len(f"{prog}: error: "):]


@pytest.mark.parametrize("argv, expected", [
    (["MODEL.CONVNEXT.NAMEE", "x"], "unknown config key MODEL.CONVNEXT.NAMEE; did you mean MODEL.CONVNEXT.NAME?"),
    (["SOLVER.MAX_ITER", "abc"], "Type mismatch"),
    (["SOLVER.MAX_ITER"], "bad config override: Override list has odd length"),
    (["SOLVER.MAX_ITER", "3", "--resume"], "--resume comes after the config overrides: put flags before the overrides"),
    (["MODEL.CONVNEXT.OUT_FEATURES", "['stage5']"], "invalid MODEL.CONVNEXT config: out_features must be a subset"),
    (["MODEL.CONVNEXT.NAME", "convnextv2_atoo"], "invalid MODEL.CONVNEXT config: unknown arch 'convnextv2_atoo'; did you mean 'convnextv2_atto'?"),
    (["MODEL.FPN.IN_FEATURES", "['stage1', 'stem']"], "MODEL.FPN.IN_FEATURES ['stage1', 'stem'] asks for ['stem']"),
    (["MODEL.WEIGHTS", "/nonexistent/convnext.pth"], "MODEL.WEIGHTS not found: /nonexistent/convnext.pth"),
    (["DATASETS.TRAIN", "('my_train',)"], "DATASETS.TRAIN: dataset 'my_train' is not registered; register a COCO-format dataset with --register-coco my_train"),
])
def test_config_mistakes_are_one_line(capsys, data, argv, expected):
    rc = train_net.main(["--config-file", DEMO_CFG, *data, *argv])
    assert expected in _one_line_error(capsys, rc)


def test_unknown_key_in_a_config_file_names_the_file(capsys, data, tmp_path):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(f"_BASE_: {DEMO_CFG}\nMODEL:\n  CONVNEXT:\n    DROP_PATH: 0.1\n")
    msg = _one_line_error(capsys, train_net.main(["--config-file", str(cfg), *data]))
    assert msg == f"unknown config key MODEL.CONVNEXT.DROP_PATH (in {cfg}); did you mean MODEL.CONVNEXT.DROP_PATH_RATE?"


def test_launch_level_mistakes(capsys, data):
    msg = _one_line_error(capsys, train_net.main(["--config-file", DEMO_CFG, "--num-gpus", "3", *data]))
    assert msg == "SOLVER.IMS_PER_BATCH 4 (the total over all processes) does not split evenly over 3 processes (--num-gpus 3 x --num-machines 1)"
    assert _one_line_error(capsys, train_net.main(["--config-file", "nope/missing.yaml"])) == "config file not found: nope/missing.yaml"
    msg = _one_line_error(capsys, train_net.main(["--config-file", DEMO_CFG, "--register-coco", "x", "nope/ann.json", "."]))
    assert msg == "--register-coco x: annotation file not found: nope/ann.json"


def test_debug_env_shows_the_traceback(monkeypatch, data):
    monkeypatch.setenv("CONVNEXT_DEBUG", "1")
    with pytest.raises(ValueError, match="unknown config key MODEL.CONVNEXT.NAMEE"):
        train_net.main(["--config-file", DEMO_CFG, *data, "MODEL.CONVNEXT.NAMEE", "x"])


@pytest.mark.parametrize("override, expected", [
    ("train.max_iters=3", "override 'train.max_iters=3': the config has no key train.max_iters (did you mean train.max_iter?)"),
    ("dataloader.evaluator.use_fast=False", "COCOEvaluator takes no argument 'use_fast' (set at dataloader.evaluator)"),
    ("train.max_iter", "bad override in ['train.max_iter']"),
    ("model.backbone.bottom_up.name=convnext_tinyy", "unknown arch 'convnext_tinyy'; did you mean 'convnext_tiny'?"),
])
def test_lazyconfig_mistakes_are_one_line(capsys, override, expected):
    rc = lazy_train_net.main(["--config-file", LAZY_CFG, override])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert err.startswith("convnext-d2-lazy-train: error: ") and expected in err and err.rstrip().endswith(f"({HINT})"), err


# --- checkpoints that do not fit -----------------------------------------------------------------
@pytest.fixture(scope="module")
def atto_model():
    cfg = get_cfg()
    d2c.add_convnext_config(cfg)
    cfg.merge_from_file(DEMO_CFG)
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    return build_model(cfg)


def _classification_checkpoint(path: Path, preset: str, drop: str | None = None) -> Path:
    torch.manual_seed(1)
    state = ConvNextForImageClassification(config_from_preset_name(preset, num_labels=10)).state_dict()
    torch.save({"model": {k: v for k, v in state.items() if k != drop}}, path)
    return path


def _assert_detectron2_advice(msg: str) -> None:
    assert "strict=False" not in msg  # the core's advice: a Detectron2 user cannot pass it
    assert msg.rstrip().endswith(d2c.checkpoint.STRICT_HINT)
    assert "MODEL.CONVNEXT.STRICT_LOAD False" in msg


def test_wrong_architecture_error_says_how_to_load_non_strictly_in_detectron2(atto_model, tmp_path):
    femto = _classification_checkpoint(tmp_path / "convnextv2_femto.pth", "convnextv2_femto")
    with pytest.raises(CheckpointError) as e:
        d2c.ConvNextCheckpointer(atto_model).load(str(femto))
    msg = str(e.value)
    assert "shape mismatch for downsample_layers.0.0.weight: checkpoint [48, 3, 4, 4] vs model [40, 3, 4, 4]" in msg
    _assert_detectron2_advice(msg)


def test_detectron2_checkpoint_of_another_size_gets_the_same_advice(atto_model, tmp_path):
    cfg = get_cfg()
    d2c.add_convnext_config(cfg)
    cfg.merge_from_file(DEMO_CFG)
    cfg.merge_from_list(["MODEL.CONVNEXT.NAME", "convnextv2_femto", "MODEL.DEVICE", "cpu"])
    d2c.ConvNextCheckpointer(build_model(cfg), str(tmp_path)).save("femto")
    with pytest.raises(CheckpointError, match="does not fit this model's ConvNeXt backbone") as e:
        d2c.ConvNextCheckpointer(atto_model).load(str(tmp_path / "femto.pth"))
    _assert_detectron2_advice(str(e.value))


def test_lazyconfig_checkpointer_names_its_own_key(atto_model, tmp_path):
    femto = _classification_checkpoint(tmp_path / "femto.pth", "convnextv2_femto")
    with pytest.raises(CheckpointError) as e:
        d2c.ConvNextCheckpointer(atto_model, strict_hint=lazy_train_net.LAZY_STRICT_HINT).load(str(femto))
    msg = str(e.value)
    assert not re.search(r"\bstrict\s*=\s*False", msg)  # the core's advice is gone ...
    assert msg.rstrip().endswith("add train.init_checkpoint_strict=False to the convnext-d2-lazy-train command line.")
    assert "STRICT_LOAD" not in msg  # ... and the YAML key would not help here


def test_non_strict_loads_what_fits_and_lists_the_rest(atto_model, tmp_path, caplog):
    missing = "stages.3.1.dwconv.weight"
    path = _classification_checkpoint(tmp_path / "atto_partial.pth", "convnextv2_atto", drop=missing)
    with pytest.raises(CheckpointError, match=f"missing from checkpoint: {missing}"):
        d2c.ConvNextCheckpointer(atto_model).load(str(path))
    trunk = atto_model.backbone.bottom_up
    kept = trunk.state_dict()[missing].clone()
    with caplog.at_level(logging.WARNING):
        d2c.ConvNextCheckpointer(atto_model, strict=False).load(str(path))
    saved = torch.load(path, weights_only=True)["model"]
    assert torch.equal(trunk.stages[0][0].dwconv.weight, saved["stages.0.0.dwconv.weight"])  # loaded
    assert torch.equal(trunk.state_dict()[missing], kept)  # left at init
    assert f"1 backbone tensors did not fit and stay at init (non-strict load):\n  missing from checkpoint: {missing}" in caplog.text


def test_strict_load_key_reaches_the_trainer(tmp_path, data):
    from detectron2_convnext.synthetic import register_coco

    register_coco(*data[1:4])
    missing = "stages.0.1.pwconv1.weight"
    path = _classification_checkpoint(tmp_path / "atto_partial.pth", "convnextv2_atto", drop=missing)
    cfg = get_cfg()
    d2c.add_convnext_config(cfg)
    cfg.merge_from_file(DEMO_CFG)
    cfg.merge_from_list(["MODEL.CONVNEXT.STRICT_LOAD", "False", "MODEL.WEIGHTS", str(path), "OUTPUT_DIR", str(tmp_path / "out")])
    trainer = train_net.Trainer(cfg)
    assert isinstance(trainer.checkpointer, d2c.ConvNextCheckpointer) and trainer.checkpointer.strict is False
    trainer.resume_or_load(resume=False)  # loads the rest instead of stopping
    saved = torch.load(path, weights_only=True)["model"]
    assert torch.equal(trainer.model.backbone.bottom_up.stages[1][0].dwconv.weight, saved["stages.1.0.dwconv.weight"])


def _cli_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "integrations"), os.environ.get("PYTHONPATH", "")]))
    env.pop("CONVNEXT_DEBUG", None)
    return env


def test_worker_errors_are_one_line(tmp_path, data):
    """Through the real command line and two worker processes: the error comes from the workers'
    checkpoint loading (after launch), and still is one line per failing rank with exit status 2."""
    femto = _classification_checkpoint(tmp_path / "convnextv2_femto.pth", "convnextv2_femto")
    env = _cli_env()
    r = subprocess.run(
        [sys.executable, "-m", "detectron2_convnext.train_net", "--num-gpus", "2", "--dist-url", "auto",
         "--config-file", DEMO_CFG, *data, "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.WEIGHTS", str(femto)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
    )
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("convnext-d2-train: error: ")]
    assert errors and all(ln.startswith("convnext-d2-train: error: [rank ") for ln in errors), r.stderr[-3000:]
    assert "MODEL.CONVNEXT.STRICT_LOAD False" in r.stderr and "strict=False" not in r.stderr


# --- files that are not what they claim, data that is not there, Ctrl-C -----------------------------
def test_weights_that_are_not_a_checkpoint_are_one_line(atto_model, data, tmp_path):
    """A cut-short download or a file that is no checkpoint at all, as MODEL.WEIGHTS: found while the
    worker loads it (the file exists, so the preflight lets it through), still one line (was a torch
    traceback). Through the real command line: in-process, Detectron2's loggers would outlive the test."""
    whole = _classification_checkpoint(tmp_path / "whole.pth", "convnextv2_atto").read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole[: len(whole) // 2])
    r = subprocess.run(
        [sys.executable, "-m", "detectron2_convnext.train_net", "--config-file", DEMO_CFG, *data,
         "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.WEIGHTS", str(cut)],
        capture_output=True, text=True, env=_cli_env(), cwd=REPO, timeout=600,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("convnext-d2-train: error: ")]
    assert errors == [f"convnext-d2-train: error: {cut}: not a readable checkpoint (a zip archive as torch.save writes, "
                      "but cut short: a truncated download or copy?)"], r.stderr[-3000:]
    text = tmp_path / "weights.pth"
    text.write_text("<html>404 Not Found</html>\n")
    with pytest.raises(CheckpointError) as e:  # the same loader, in-process
        d2c.ConvNextCheckpointer(atto_model).load(str(text))
    assert str(e.value) == f"{text}: not a readable checkpoint (neither a zip archive (torch.save) nor a pickle: not a checkpoint file)"


def test_builtin_dataset_without_its_files_is_one_line(capsys, monkeypatch, tmp_path):
    """``coco_2017_val`` is registered by Detectron2 whatever ``$DETECTRON2_DATASETS`` holds: the preflight
    checks its files too (it used to pass, then every worker died with a FileNotFoundError)."""
    monkeypatch.chdir(tmp_path)  # Detectron2's default dataset root is ./datasets
    weights = _classification_checkpoint(tmp_path / "atto.pth", "convnextv2_atto")
    rc = train_net.main(["--config-file", DEMO_CFG, "--eval-only", "DATASETS.TEST", "('coco_2017_val',)", "MODEL.WEIGHTS", str(weights)])
    assert _one_line_error(capsys, rc) == (
        "DATASETS.TEST: dataset 'coco_2017_val' is registered, but its json_file datasets/coco/annotations/instances_val2017.json "
        "does not exist (Detectron2's built-in datasets are read from $DETECTRON2_DATASETS, default ./datasets); put the data "
        "there, or register your copy with --register-coco coco_2017_val JSON IMAGE_ROOT")
    rc = lazy_train_net.main(["--config-file", LAZY_CFG, "--eval-only", f"train.init_checkpoint={weights}"])
    assert _one_line_error(capsys, rc, "convnext-d2-lazy-train").startswith(
        "dataloader.test.dataset.names: dataset 'coco_2017_val' is registered, but its json_file ")


def test_eval_only_without_weights_is_refused(capsys, data, tmp_path):
    rc = train_net.main(["--config-file", DEMO_CFG, *data, "--eval-only", "OUTPUT_DIR", str(tmp_path / "out")])
    assert _one_line_error(capsys, rc) == (
        f"--eval-only with no weights would evaluate a randomly initialised model: set MODEL.WEIGHTS "
        f"(e.g. {tmp_path / 'out' / 'model_final.pth'}), or --resume from {tmp_path / 'out'}/last_checkpoint")


def test_config_files_that_do_not_parse_are_one_line(capsys, tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text(f"_BASE_: {DEMO_CFG}\nSOLVER:\n  STEPS: [100, 200\n")
    assert _one_line_error(capsys, train_net.main(["--config-file", str(bad_yaml)])) == (
        f"{bad_yaml}, line 4: expected ',' or ']', but got '<stream end>'")
    bad_py = tmp_path / "bad.py"
    bad_py.write_text("from detectron2.config import LazyCall as L\nmodel = dict(\n")
    assert _one_line_error(capsys, lazy_train_net.main(["--config-file", str(bad_py)]), "convnext-d2-lazy-train") == (
        f"{bad_py}, line 2: '(' was never closed")
    bad_py.write_text("x = 1\nmodel = undefined_name\n")
    assert _one_line_error(capsys, lazy_train_net.main(["--config-file", str(bad_py)]), "convnext-d2-lazy-train") == (
        f"{bad_py}, line 2: NameError: name 'undefined_name' is not defined")


_CTRL_C = """
import os, signal, sys, time
from detectron2_convnext import train_net

class CtrlCAfterACheckpoint(train_net.Trainer):
    def train(self):  # a checkpoint, then Ctrl-C: no iteration is run
        self.checkpointer.save("model_0000004")
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(60)

sys.exit(train_net.main(sys.argv[1:], trainer_class=CtrlCAfterACheckpoint))
"""


@pytest.mark.parametrize("resume", [False, True])
def test_ctrl_c_names_the_last_checkpoint_and_how_to_resume(data, tmp_path, resume):
    """SIGINT while training: one line naming the last checkpoint and how to continue, exit status 130
    (it was a KeyboardInterrupt traceback)."""
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-c", _CTRL_C, "--config-file", DEMO_CFG, *data, *(["--resume"] if resume else []),
                        "OUTPUT_DIR", str(out)], capture_output=True, text=True, env=_cli_env(), cwd=REPO, timeout=600)
    assert r.returncode == 130 and "Traceback" not in r.stderr, r.stderr[-3000:]
    how = "run the same command again" if resume else "add --resume to the same command (before the config overrides)"
    assert r.stderr.strip().splitlines()[-1] == (
        f"convnext-d2-train: interrupted; the last checkpoint is {out / 'model_0000004.pth'}; {how} to continue from it")
