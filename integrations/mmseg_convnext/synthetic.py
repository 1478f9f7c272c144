"""A small generated dataset in the ADE20K on-disk layout, for smoke runs and tests.

``make_ade20k_like(root)`` writes what MMSegmentation's ``ADE20KDataset`` reads::

    root/images/training/*.jpg        root/annotations/training/*.png
    root/images/validation/*.jpg      root/annotations/validation/*.png

Annotation values are raw ADE20K labels: 0 = "other" (ignored: ``reduce_zero_label=True`` maps it
to 255) and 1..150 = the 150 classes (mapped to 0..149). Each image is a background region of one
class with 1-3 rectangles of other classes and a border of label 0; every class has its own
colour plus pixel noise. The task is easy on purpose: a segmentor that learns anything at all
scores far above chance, so a short CPU run can show that training works.

    python -m mmseg_convnext.synthetic data/synthetic_ade --num-train 64 --num-val 16
"""
from __future__ import annotations

import argparse
import colorsys
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

__all__ = ["ADE20K_NUM_CLASSES", "DEFAULT_CLASSES", "class_colour", "make_ade20k_like", "main"]

ADE20K_NUM_CLASSES = 150
DEFAULT_CLASSES = (1, 13, 77, 150)  # raw labels; include both ends of the 1..150 range


def class_colour(label: int) -> tuple[int, int, int]:
    """A fixed, well separated RGB colour per raw label (golden-ratio hues)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.85, 0.9)
    return int(r * 255), int(g * 255), int(b * 255)


def _sample(rng: np.random.Generator, size: int, classes: Sequence[int], noise: float, border: int):
    label = np.full((size, size), classes[rng.integers(len(classes))], dtype=np.uint8)
    for _ in range(rng.integers(1, 4)):
        h, w = rng.integers(size // 4, size // 2 + 1, size=2)
        y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        label[y:y + h, x:x + w] = classes[rng.integers(len(classes))]
    if border:
        label[:border, :] = label[-border:, :] = 0
        label[:, :border] = label[:, -border:] = 0
    palette = np.zeros((256, 3), dtype=np.float32)
    for c in classes:
        palette[c] = class_colour(c)
    palette[0] = rng.integers(0, 256, size=3)  # "other": any colour, ignored in the loss and metric
    image = palette[label] + rng.normal(0.0, noise, size=(size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8), label


def make_ade20k_like(
    root: str | os.PathLike,
    num_train: int = 32,
    num_val: int = 8,
    size: int = 64,
    classes: Sequence[int] = DEFAULT_CLASSES,
    seed: int = 0,
    noise: float = 12.0,
    border: int = 2,
    progress: bool = False,
) -> Path:
    """Write the dataset to ``root`` (which must not exist) and return it.

    Files are written to a temporary sibling directory that is renamed to ``root`` at the end,
    so an interrupted run never leaves a half-written dataset behind.
    """
    root = Path(root)
    bad = [c for c in classes if not 1 <= int(c) <= ADE20K_NUM_CLASSES]
    if not classes or bad:
        raise ValueError(f"classes must be raw ADE20K labels in 1..{ADE20K_NUM_CLASSES}, got {list(classes)}")
    if size < 32 or num_train < 1 or num_val < 1:
        raise ValueError(f"need size >= 32 (ConvNeXt stride), num_train >= 1, num_val >= 1; got {size}, {num_train}, {num_val}")
    if root.exists():
        raise FileExistsError(f"{root} already exists; remove it or choose another directory")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        rng = np.random.default_rng(seed)
        jobs = [("training", i) for i in range(num_train)] + [("validation", i) for i in range(num_val)]
        for split in ("training", "validation"):
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "annotations" / split).mkdir(parents=True)
        for split, i in tqdm(jobs, desc="synthetic ADE20K", disable=not progress):
            image, label = _sample(rng, size, [int(c) for c in classes], noise, border)
            name = f"ADE_{'train' if split == 'training' else 'val'}_{i:08d}"
            Image.fromarray(image).save(tmp / "images" / split / f"{name}.jpg", quality=95)
            Image.fromarray(label).save(tmp / "annotations" / split / f"{name}.png")
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmseg_convnext.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="output directory (must not exist)")
    p.add_argument("--num-train", type=int, default=32)
    p.add_argument("--num-val", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--classes", type=int, nargs="+", default=list(DEFAULT_CLASSES), help="raw ADE20K labels 1..150")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = make_ade20k_like(args.root, args.num_train, args.num_val, args.size, args.classes, args.seed, progress=True)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
