"""Detectron2 distributed training, exercised on CPU: ``--num-gpus 2`` runs two gloo processes
through Detectron2's own ``launch`` (the code path of a multi-GPU run), and two "machines"
(``--num-machines 2``, one process each) rendezvous over ``tcp://127.0.0.1:PORT``.

Each run goes through the real command line (``python -m detectron2_convnext.train_net`` /
``lazy_train_net``). Where a test needs what each rank holds, the run goes through a small
script that passes ``Trainer`` a subclass recording, per rank, a SHA-256 of the model's state
dict (parameters and buffers) and what ``train()`` returned; the public
``main(trainer_class=...)`` hook is the only thing it adds. Tiny images (128 px), few
iterations, one OpenMP thread per process.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from detectron2_convnext.synthetic import SyntheticSpec, make_coco_split

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "detectron2"
DEMO_CFG = CONFIGS / "demo" / "mask_rcnn_convnextv2_atto_fpn_shapes.yaml"
CASCADE_CFG = CONFIGS / "cascade_mask_rcnn_convnextv2_atto_fpn_3x_coco.yaml"
LAZY_CFG = CONFIGS / "lazy" / "mask_rcnn_convnext_tiny_fpn_3x_coco.py"
NUM_VAL = 8
TIMEOUT = 600  # a hung rendezvous fails the test instead of blocking the suite


def state_sha(state: dict) -> str:
    """SHA-256 over a state dict's names and tensor bytes, in name order."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


PROBE = textwrap.dedent('''
    import hashlib, json, os, sys
    import torch
    from detectron2.utils import comm
    from detectron2_convnext import train_net

    {state_sha}

    class ProbeTrainer(train_net.Trainer):
        def train(self):
            results = super().train()
            model = getattr(self.model, "module", self.model)
            record = {{
                "rank": comm.get_rank(),
                "world_size": comm.get_world_size(),
                "wrapper": type(self.model).__name__,
                "sha256": state_sha(model.state_dict()),
                "results": results or {{}},
                "batch_norms": sorted({{type(m).__name__ for m in model.modules()
                                        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}}),
            }}
            with open(os.path.join(self.cfg.OUTPUT_DIR, f"probe_rank{{comm.get_rank()}}.json"), "w") as f:
                json.dump(record, f)
            return results

    if __name__ == "__main__":
        sys.exit(train_net.main(trainer_class=ProbeTrainer))
''').format(state_sha=inspect.getsource(state_sha))


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("CONVNEXT_DEBUG", None)
    extra = [str(REPO), str(REPO / "integrations")]
    env["PYTHONPATH"] = os.pathsep.join(extra + [env["PYTHONPATH"]] if env.get("PYTHONPATH") else extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine; a listener is not
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=TIMEOUT, **kw)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-4000:]}"
    return r


def _probes(out: Path, world: int = 2) -> list[dict]:
    return [json.loads((out / f"probe_rank{r}.json").read_text()) for r in range(world)]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.json").read_text().splitlines() if line.strip()]


def _checkpoint_sha(path: Path) -> str:
    return state_sha(torch.load(path, map_location="cpu", weights_only=True)["model"])


def _assert_losses_finite(out: Path) -> list[dict]:
    rows = [m for m in _metrics(out) if "total_loss" in m]
    assert rows, _metrics(out)
    for m in rows:
        for k, v in m.items():
            if k == "total_loss" or k.startswith("loss_"):
                assert math.isfinite(v), (k, m)
    return rows


def _assert_ap(results: dict) -> None:
    for task in ("bbox", "segm"):
        assert {"AP", "AP50", "AP75"} <= set(results[task]), results
        assert all(math.isfinite(results[task][k]) for k in ("AP", "AP50", "AP75")), results[task]


NOTICE = "CUDA is not available: --num-gpus 2 runs 2 CPU processes (gloo, DistributedDataParallel without device_ids"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("d2dist_data")
    train = make_coco_split(root, "train", SyntheticSpec(num_images=16, seed=0), progress=False)
    val = make_coco_split(root, "val", SyntheticSpec(num_images=NUM_VAL, seed=1), progress=False)
    return ["--register-coco", "shapes_train", train.json_file, train.image_root,
            "--register-coco", "shapes_val", val.json_file, val.image_root]


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    path = tmp_path_factory.mktemp("d2dist_probe") / "dist_probe.py"
    path.write_text(PROBE)
    return path


# --- Mask R-CNN V2-atto, 2 processes; then --resume, 2 processes ------------------------------------
@pytest.fixture(scope="module")
def maskrcnn(tmp_path_factory, data, probe):
    out = tmp_path_factory.mktemp("d2dist_mrcnn") / "out"
    base = [sys.executable, str(probe), "--num-gpus", "2", "--config-file", str(DEMO_CFG), *data]
    opts = ["OUTPUT_DIR", str(out), "SOLVER.CHECKPOINT_PERIOD", "3", "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "(100,)",
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]  # AP over real detections this early in training
    t0 = time.time()
    first = _run(base + ["--dist-url", f"tcp://127.0.0.1:{_free_port()}"] + opts + ["SOLVER.MAX_ITER", "6"])
    first_probes = _probes(out)
    first_metrics = _metrics(out)
    t1 = time.time()
    resumed = _run(base + ["--resume", "--dist-url", f"tcp://127.0.0.1:{_free_port()}"] + opts
                   + ["SOLVER.MAX_ITER", "8", "DATASETS.TEST", "()"])  # evaluated above already
    print(f"2-process Mask R-CNN: 6 iterations + eval {t1 - t0:.0f} s; resume to 8 {time.time() - t1:.0f} s")
    return {"out": out, "first": first, "first_probes": first_probes, "first_metrics": first_metrics,
            "resumed": resumed, "probes": _probes(out)}


def test_two_cpu_processes_train_through_launch(maskrcnn):
    first = maskrcnn["first"]
    assert first.stderr.count(NOTICE) == 1, first.stderr[-3000:]  # the one-line notice, printed once
    out = maskrcnn["out"]
    assert "Rank of current process: 0. World size: 2" in (out / "log.txt").read_text()
    assert "Rank of current process: 1. World size: 2" in (out / "log.txt.rank1").read_text()
    for p in maskrcnn["first_probes"]:
        assert p["world_size"] == 2 and p["wrapper"] == "DistributedDataParallel", p
    rows = [m for m in maskrcnn["first_metrics"] if "total_loss" in m]
    assert rows and rows[-1]["iteration"] == 5
    _assert_losses_finite(out)


def test_ranks_hold_identical_weights_and_rank0_saved_them(maskrcnn):
    out = maskrcnn["out"]
    r0, r1 = maskrcnn["first_probes"]
    assert r0["sha256"] == r1["sha256"]
    # what rank 0 wrote is what both ranks hold (model_final.pth was overwritten by the resumed run)
    assert _checkpoint_sha(out / "model_0000005.pth") == r0["sha256"]
    # and training changed the weights: the checksum can tell checkpoints apart
    assert _checkpoint_sha(out / "model_0000002.pth") != r0["sha256"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no torn temp files


def test_evaluation_is_sharded_gathered_and_reported_once(maskrcnn):
    r0, r1 = maskrcnn["first_probes"]
    _assert_ap(r0["results"])
    assert r1["results"] == {}  # COCOEvaluator reports on the main process only
    out = maskrcnn["out"]
    assert "Start inference on 4 batches" in (out / "log.txt").read_text()  # rank 0 ran half of the 8 images
    preds = torch.load(out / "inference" / "shapes_val" / "instances_predictions.pth", weights_only=True)
    assert sorted(p["image_id"] for p in preds) == list(range(1, NUM_VAL + 1))  # gathered from both ranks
    assert maskrcnn["first"].stdout.count("Evaluation results for bbox") == 1
    results = json.loads((out / "eval_results.json").read_text())
    _assert_ap(results)


def test_resume_after_a_two_process_run(maskrcnn):
    out, log = maskrcnn["out"], maskrcnn["resumed"].stdout + maskrcnn["resumed"].stderr
    assert f"Loading trainer from {out / 'model_final.pth'}" in log
    assert "Starting training from iteration 6" in log
    rank1 = (out / "log.txt.rank1").read_text()
    assert rank1.count("Starting training from iteration 6") == 1  # rank 1 resumed too, at the same iteration
    r0, r1 = maskrcnn["probes"]
    assert r0["sha256"] == r1["sha256"] == _checkpoint_sha(out / "model_final.pth")
    assert r0["sha256"] != maskrcnn["first_probes"][0]["sha256"]
    last = _assert_losses_finite(out)[-1]
    assert last["iteration"] == 7


# --- Cascade Mask R-CNN (SyncBN box heads), 2 processes -------------------------------------------
def test_cascade_with_syncbn_heads_two_processes(tmp_path, data, probe):
    out = tmp_path / "out"
    r = _run([
        sys.executable, str(probe), "--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{_free_port()}",
        "--config-file", str(CASCADE_CFG), *data,
        "OUTPUT_DIR", str(out), "DATASETS.TRAIN", '("shapes_train",)', "DATASETS.TEST", '("shapes_val",)',
        "MODEL.ROI_HEADS.NUM_CLASSES", "3", "INPUT.DETR_AUG.ENABLED", "False",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "256", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "256",
        "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1", "DATALOADER.NUM_WORKERS", "0",
        # narrow heads: a CPU test (the structure, SyncBN included, is the config's)
        "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.CONV_DIM", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
        "MODEL.ROI_MASK_HEAD.CONV_DIM", "32", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
        "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "32",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "20",  # AP over real detections
    ])
    log = r.stdout + r.stderr
    assert re.search(r"\n  ROI_BOX_HEAD:\n(    .*\n)*    NORM: SyncBN\n", (out / "config.yaml").read_text())  # asked for SyncBN ...
    assert re.search(r"SyncBN has no CPU implementation in PyTorch: 12 SyncBatchNorm layers .* NaiveSyncBatchNorm", log), log[-3000:]
    r0, r1 = _probes(out)
    # identical parameters and BN running statistics (a per-process BN would leave them different)
    assert r0["sha256"] == r1["sha256"] == _checkpoint_sha(out / "model_final.pth")
    assert r0["batch_norms"] == r1["batch_norms"] == ["NaiveSyncBatchNorm"]  # ... trained with synchronised BN
    assert {f"loss_box_reg_stage{i}" for i in range(3)} <= set(_assert_losses_finite(out)[-1])
    _assert_ap(r0["results"])
    assert r1["results"] == {}


# --- two "machines" on one host ---------------------------------------------------------------------
def test_two_machines_one_process_each(tmp_path, data, probe):
    port = _free_port()
    outs = [tmp_path / "machine0", tmp_path / "machine1"]  # separate dirs, as on two hosts without shared storage
    procs = []
    for rank, out in enumerate(outs):
        cmd = [sys.executable, str(probe), "--num-gpus", "1", "--num-machines", "2", "--machine-rank", str(rank),
               "--dist-url", f"tcp://127.0.0.1:{port}", "--config-file", str(DEMO_CFG), *data,
               "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1", "DATASETS.TEST", "()"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO))
    try:
        finished = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (stdout, stderr) in zip(procs, finished):
        assert p.returncode == 0, f"exit {p.returncode}\n{stdout[-3000:]}\n{stderr[-3000:]}"
        assert "runs 1 CPU process here, 2 in all over --num-machines 2" in stderr
    assert _port_is_free(port)  # nothing left listening on the rendezvous port
    m0, m1 = outs
    assert "Rank of current process: 1. World size: 2" in (m1 / "log.txt.rank1").read_text()
    assert "Total training time" in (m0 / "log.txt").read_text() and "Total training time" in (m1 / "log.txt.rank1").read_text()
    assert (m0 / "model_final.pth").is_file() and (m0 / "last_checkpoint").is_file()
    assert not list(m1.glob("*.pth")) and not (m1 / "last_checkpoint").exists()  # checkpoints: rank 0 only
    r0 = json.loads((m0 / "probe_rank0.json").read_text())
    r1 = json.loads((m1 / "probe_rank1.json").read_text())
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["sha256"] == r1["sha256"] == _checkpoint_sha(m0 / "model_final.pth")


# --- LazyConfig path, 2 processes -------------------------------------------------------------------
LAZY_TEST_CONFIG = '''
# The repository's LazyConfig, made small for a CPU test: V2-atto, narrow sampling, no resizing.
from detectron2.config import LazyConfig

_base = LazyConfig.load({path!r})
model, dataloader, train, optimizer, lr_multiplier = (
    _base.model, _base.dataloader, _base.train, _base.optimizer, _base.lr_multiplier)
model.backbone.bottom_up.name = "convnextv2_atto"
del model.backbone.bottom_up.layer_scale_init_value  # V1 only
model.backbone.bottom_up.drop_path_rate = 0.0
model.roi_heads.num_classes = 3
model.roi_heads.batch_size_per_image = 32
model.roi_heads.box_predictor.test_score_thresh = 0.0  # AP over real detections this early in training
model.roi_heads.box_predictor.test_topk_per_image = 10  # (the mask head runs on each)
model.proposal_generator.pre_nms_topk = (200, 200)
model.proposal_generator.post_nms_topk = (64, 32)
dataloader.train.mapper.augmentations = []
dataloader.test.mapper.augmentations = []
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 0
dataloader.test.num_workers = 0
dataloader.train.dataset.names = "shapes_train"
dataloader.test.dataset.names = "shapes_val"
optimizer.params.num_layers = 0
'''


def test_lazyconfig_two_processes(tmp_path, data):
    cfg = tmp_path / "lazy_tiny.py"
    cfg.write_text(LAZY_TEST_CONFIG.format(path=str(LAZY_CFG)))
    out = tmp_path / "out"
    r = _run([
        sys.executable, "-m", "detectron2_convnext.lazy_train_net", "--num-gpus", "2",
        "--dist-url", f"tcp://127.0.0.1:{_free_port()}", "--config-file", str(cfg), *data,
        f"train.output_dir={out}", "train.max_iter=3", "train.eval_period=0", "train.checkpointer.period=2",
    ])
    log = r.stdout + r.stderr
    assert r.stderr.count(NOTICE) == 1
    for note in ("train.device cuda -> cpu", "train.amp.enabled needs CUDA"):
        assert note in log  # the recipe's CUDA settings, turned off on CPU and said so
    assert "Rank of current process: 1. World size: 2" in (out / "log.txt.rank1").read_text()
    assert "Start inference on 4 batches" in (out / "log.txt").read_text()
    rows = _assert_losses_finite(out)
    assert rows[-1]["iteration"] == 2
    _assert_ap(json.loads((out / "eval_results.json").read_text()))
    assert r.stdout.count("Evaluation results for bbox") == 1
    # rank 0 wrote the periodic and the final checkpoint; they differ (training moved the weights)
    assert sorted(p.name for p in out.glob("*.pth")) == ["model_0000001.pth", "model_final.pth"]
    assert _checkpoint_sha(out / "model_0000001.pth") != _checkpoint_sha(out / "model_final.pth")
