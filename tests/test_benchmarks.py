"""The benchmark harness runs end to end (tiny config) and writes valid, complete JSON.

Correctness only: no timing assertions (the machine is shared and noisy).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is a top-level folder of the repo, not an installed package
    sys.path.insert(0, str(ROOT))


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.backbone", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_quick_run_writes_json(tmp_path):
    """One quick run: the backbone comparison, checkpointing, and the Detectron2 / MMSeg lines.

    A missing framework or adapter fails here (its line must be "ok"), it is not skipped.
    """
    out = tmp_path / "sub" / "bench.json"
    proc = _run("--quick", "--threads", "1", "--json", str(out))  # 1 thread: a shared machine oversubscribes 2
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())

    # every pair was checked to compute the same features before timing
    assert [c["pair"] for c in data["checks"]] == ["ours(no output norms) vs timm", "ours(output norms) vs hf"]
    assert all(c["ok"] and c["max_abs_diff"] <= 1e-4 * max(1.0, c["max_abs_ref"]) for c in data["checks"])

    rows = {(r["mode"], r["impl"]): r for r in data["results"]}
    assert set(rows) == {("infer", "ours"), ("infer", "timm"), ("infer", "hf"),
                         ("train", "ours"), ("train", "timm"), ("train", "hf"), ("train", "ours+ckpt")}
    for (_mode, impl), r in rows.items():
        assert r["label"] == "V2-A" and r["shape"] == "1x3x64x96"
        assert r["peak_mem_mib"] is not None and r["peak_mem_mib"] >= 0 and r["warmup_s"] > 0
        if impl == "ours+ckpt":  # memory run only
            assert r["times_s"] == [] and "median_s" not in r
            continue
        assert len(r["times_s"]) == r["n"] == 1
        assert r["min_s"] <= r["median_s"] <= r["max_s"] and r["median_s"] > 0
    # a training step keeps activations for backward: it needs more memory than inference
    assert rows[("train", "ours")]["peak_mem_mib"] > rows[("infer", "ours")]["peak_mem_mib"]
    assert rows[("infer", "ours")]["forward_gflop"] > 0

    ratios = {r["mode"]: r for r in data["ratios"]}
    assert set(ratios) == {"infer", "train"}
    for mode, r in ratios.items():
        peers = [rows[(mode, p)]["median_s"] for p in ("timm", "hf")]
        assert r["best_peer_median_s"] == min(peers)
        assert math.isclose(r["speedup"], min(peers) / rows[(mode, "ours")]["median_s"])
    assert [c["shape"] for c in data["checkpointing"]] == ["1x3x64x96"]
    assert data["meta"]["threads"] >= 1 and data["meta"]["dtype"] == "float32"

    lines = {f["key"]: f for f in data["frameworks"]}
    assert set(lines) == {"d2", "mmseg"}
    for key, f in lines.items():
        assert f["status"] == "ok", f"{key}: {f.get('reason')}"
        assert f["model"] == "V2-A" and len(f["times_s"]) == 1 and f["median_s"] > 0 and f["peak_mem_mib"] > 0
    assert "mask_rcnn_convnextv2_atto_fpn_3x_coco.yaml" in lines["d2"]["note"]
    assert "upernet_convnextv2_atto_" in lines["mmseg"]["note"]
    assert "| Detectron2 Mask R-CNN | V2-A | 1x3x128x160 |" in proc.stdout

    # the human output: the table, then the ratio lines last
    assert "| V2-A | 1x3x64x96 | infer |" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("ours/best-peer speedup: V2-A train 1x3x64x96:")


def test_peak_memory_sees_a_known_allocation():
    """The CPU method reports the step's extra resident memory: a 256 MiB tensor touched and freed inside."""
    from benchmarks.measure import PeakMemory

    memory = PeakMemory("cpu")
    assert memory.unavailable is None, memory.unavailable

    def step():
        t = torch.ones(64, 1024, 1024)  # 256 MiB, every page written
        del t

    _, peak = memory.measure(step)
    assert 250 <= peak <= 256 + 64, peak
    _, idle = memory.measure(lambda: None)
    assert idle < 16, idle


@pytest.mark.parametrize("args, message", [
    (["--models", "convnext_gigantic"], "unknown model"),
    (["--shapes", "2x3x800"], "bad shape"),
    (["--modes", "infer,eval"], "--modes must be"),
    (["--frameworks", "mmdet"], "--frameworks must be"),
    (["--warmup", "0"], "--warmup must be >= 1"),
])
def test_bad_arguments_are_rejected_with_what_is_allowed(args, message, capsys):
    from benchmarks.backbone import main

    with pytest.raises(SystemExit) as exc:
        main(["--quick", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bf16_rows_keep_each_peer_in_its_faster_memory_format():
    from benchmarks.backbone import _faster_format

    def row(impl, median, peer=True):
        return {"impl": impl, "is_peer": peer, "shape": "2x3x800x1216", "mode": "infer", "median_s": median}

    rows = [row("ours", 1.0, False), row("timm", 2.0), row("hf", 1.5), row("timm+channels_last", 1.8),
            row("hf+channels_last", 1.7)]
    kept = {r["impl"]: r for r in _faster_format(rows)}
    assert set(kept) == {"ours", "timm", "hf"}
    assert kept["timm"]["memory_format"] == "channels_last" and kept["timm"]["median_s"] == 1.8
    assert kept["timm"]["other_format_median_s"] == 2.0
    assert kept["hf"]["memory_format"] == "contiguous" and kept["hf"]["median_s"] == 1.5
