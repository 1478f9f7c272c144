"""Export throughput vs the bare forward on the same images (target: export >= 0.9x forward).

    python -m benchmarks.export_throughput --preset convnext_tiny --images 64 --size 512 --batch-size 8

Writes N JPEGs of mixed sizes (~640x480) to a temp dir and a random-weight checkpoint, then,
interleaved for ``--repeats`` rounds:
  forward: the images already decoded and letterboxed in memory, ``model.forward_dict`` on
           batches under inference_mode: the model alone;
  export:  ``convnext-backbone export`` on the folder into a fresh directory: decode, letterbox
           (DataLoader workers), forward, serialise + sha256 + fsync'd atomic writes + manifest.
Reports images/s of both (best round), the ratio, the export's end-to-end rate (including
DataLoader start-up and the manifest merge), and images per CPU-second of each (process +
DataLoader workers), and the share of the export loop's wall time spent in the model forward
(measured inside the same run, so it is robust to load drifting between rounds on a shared
machine: 1 - share is the overhead the pipeline fails to hide).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from convnext_backbone import build_backbone
from convnext_backbone.cli import build_parser
from convnext_backbone.export import Letterbox, load_image
from convnext_backbone.export.run import run_export


def make_images(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = (480, 640) if i % 3 else (640, 480 + 32 * (i % 5))
        y, x = np.mgrid[0:h, 0:w]
        img = np.stack([x * 255 / w, y * 255 / h, 128 + 100 * np.sin((x + y + i * 7) / 40)], -1)
        img = np.clip(img + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"img{i:04d}.jpg", quality=90)


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its reaped children (DataLoader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def bench_forward(model, batches: list[torch.Tensor]) -> tuple[float, float]:
    """-> (images/s, images per CPU-second)."""
    n = sum(b.shape[0] for b in batches)
    t, c = time.perf_counter(), cpu_seconds()
    with torch.inference_mode():
        for b in batches:
            model.forward_dict(b)
    return n / (time.perf_counter() - t), n / (cpu_seconds() - c)


def bench_export(weights: Path, src: Path, out: Path, args) -> tuple[float, float, float, float]:
    """-> (images/s over the processing loop, images/s end to end, images per CPU-second end to end,
    share of the loop's wall time spent in the model forward)."""
    shutil.rmtree(out, ignore_errors=True)
    argv = ["export", "--weights", str(weights), "--input", str(src), "--out", str(out), "--size", str(args.size),
            "--features", args.features, "--batch-size", str(args.batch_size), "--workers", str(args.workers),
            "--no-progress"]
    ns = build_parser("export").parse_args(argv)
    t, c = time.perf_counter(), cpu_seconds()
    stats = run_export(ns)
    wall, cpu = time.perf_counter() - t, cpu_seconds() - c
    assert stats["total"]["written"] == args.images, stats
    return args.images / stats["loop_s"], args.images / wall, args.images / cpu, stats["forward_s"] / stats["loop_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="convnext_tiny")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--features", default="stage1,stage2,stage3,stage4")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workdir", help="where to put images and outputs (default: a temp dir, removed)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="export-bench-"))
    try:
        src = tmp / "images"
        make_images(src, args.images)
        model = build_backbone(args.preset, out_features=args.features.split(",")).eval()
        weights = model.save_pretrained(tmp / "weights")
        box = Letterbox(args.size)
        pixels = [box(load_image(p)[0])[0] for p in sorted(src.glob("*.jpg"))]
        batches = [torch.stack(pixels[i:i + args.batch_size]) for i in range(0, len(pixels), args.batch_size)]
        fwd, fwd_cpu, exp_loop, exp_wall, exp_cpu, share = [], [], [], [], [], []
        for r in range(args.repeats):
            rate, per_cpu = bench_forward(model, batches)
            fwd.append(rate)
            fwd_cpu.append(per_cpu)
            loop, wall, per_cpu, forward_share = bench_export(weights, src, tmp / "out", args)
            share.append(forward_share)
            exp_loop.append(loop)
            exp_wall.append(wall)
            exp_cpu.append(per_cpu)
            print(f"round {r}: forward {fwd[-1]:.3f} img/s ({fwd_cpu[-1]:.3f} img/CPU-s), export {loop:.3f} img/s "
                  f"(end-to-end {wall:.3f} img/s, {per_cpu:.3f} img/CPU-s), ratio {loop / fwd[-1]:.3f}, "
                  f"forward share of the export loop {forward_share:.3f}", flush=True)
        mb = sum(f.stat().st_size for f in (tmp / "out" / "features").rglob("*")) / 1e6
        res = {
            "preset": args.preset, "images": args.images, "size": args.size, "batch_size": args.batch_size,
            "workers": args.workers, "features": args.features, "torch_threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
            "forward_img_s": max(fwd), "export_img_s": max(exp_loop), "export_end_to_end_img_s": max(exp_wall),
            "ratio": max(exp_loop) / max(fwd), "ratio_end_to_end": max(exp_wall) / max(fwd), "output_mb": mb,
            "forward_img_per_cpu_s": max(fwd_cpu), "export_img_per_cpu_s": max(exp_cpu),
            "cpu_ratio": max(exp_cpu) / max(fwd_cpu),
            "round_ratios": [e / f for e, f in zip(exp_loop, fwd)],
            "export_forward_share": share,
        }
        print(json.dumps(res, indent=2))
        print(f"export / forward = {res['ratio']:.3f}x (end-to-end incl. start-up: {res['ratio_end_to_end']:.3f}x; "
              f"per CPU-second: {res['cpu_ratio']:.3f}x; the model forward is {min(share):.1%}-{max(share):.1%} of the "
              f"export loop's wall time), {mb:.0f} MB written")
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    finally:
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
