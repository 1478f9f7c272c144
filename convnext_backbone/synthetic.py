"""A small COCO-format instance-segmentation dataset generated on disk, for demos and tests.

Coloured shapes (circle, square, triangle; each class its own hue, random size, rotation and
position) on a noise background, written as PNG images plus ``instances_<split>.json`` with
polygon masks: the layout Detectron2's ``register_coco_instances`` and MMDetection's
``CocoDataset`` read. Deterministic per seed. A split is generated in a temporary directory and
renamed into place, so an interrupted run never leaves a half-written dataset; an existing
split with the same parameters is reused.

Framework-free (numpy, Pillow, tqdm) so that every adapter's demo and tests share it:
``detectron2_convnext.synthetic`` re-exports it with a Detectron2 registration helper.

    python -m convnext_backbone.synthetic data/shapes     # train (48 images) and val (16)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

__all__ = ["CATEGORIES", "SyntheticSpec", "CocoSplit", "make_coco_split", "main"]

CATEGORIES = ("circle", "square", "triangle")
_HUES = {"circle": (225, 70, 60), "square": (70, 200, 80), "triangle": (70, 100, 235)}  # RGB


@dataclass(frozen=True)
class SyntheticSpec:
    num_images: int = 64
    image_size: int = 128
    min_objects: int = 1
    max_objects: int = 3
    min_size: float = 0.18  # object diameter as a fraction of the image side
    max_size: float = 0.42
    seed: int = 0


@dataclass(frozen=True)
class CocoSplit:
    json_file: str
    image_root: str
    num_images: int
    num_annotations: int


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    n = {"circle": 32, "square": 4, "triangle": 3}[shape]
    start = angle + (math.pi / 4 if shape == "square" else 0.0)
    return [(cx + r * math.cos(start + 2 * math.pi * i / n), cy + r * math.sin(start + 2 * math.pi * i / n)) for i in range(n)]


def _area(poly: list[tuple[float, float]]) -> float:
    xs, ys = np.array(poly).T
    return float(abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Smooth coloured blobs plus pixel noise: objects must be found by shape and colour, not by contrast alone."""
    coarse = rng.uniform(40, 200, size=(4, 4, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.float32)
    noisy = base * 0.6 + rng.normal(60, 25, size=(size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))


def _apart(a, b, gap: float = 2.0) -> bool:
    """Boxes at least ``gap`` px apart: no shape hides part of another, so polygons are the visible masks."""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _render(rng: np.random.Generator, spec: SyntheticSpec, image_id: int):
    s = spec.image_size
    img = _background(rng, s)
    draw = ImageDraw.Draw(img)
    anns, boxes = [], []
    for _ in range(int(rng.integers(spec.min_objects, spec.max_objects + 1))):
        for _attempt in range(30):  # place without overlap
            shape = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
            r = rng.uniform(spec.min_size, spec.max_size) * s / 2
            cx, cy = rng.uniform(r, s - r), rng.uniform(r, s - r)
            poly = _polygon(shape, cx, cy, r, rng.uniform(0, 2 * math.pi))
            xs, ys = [p[0] for p in poly], [p[1] for p in poly]
            box = (min(xs), min(ys), max(xs), max(ys))
            if all(_apart(box, b) for b in boxes):
                break
        else:
            continue
        colour = tuple(int(np.clip(c + rng.normal(0, 15), 0, 255)) for c in _HUES[shape])
        draw.polygon(poly, fill=colour)
        boxes.append(box)
        anns.append({
            "image_id": image_id,
            "category_id": CATEGORIES.index(shape) + 1,
            "segmentation": [[round(v, 2) for p in poly for v in p]],
            "bbox": [round(box[0], 2), round(box[1], 2), round(box[2] - box[0], 2), round(box[3] - box[1], 2)],
            "area": round(_area(poly), 2),
            "iscrowd": 0,
        })
    return img, anns


def make_coco_split(root: str | os.PathLike, split: str, spec: SyntheticSpec = SyntheticSpec(), progress: bool = True) -> CocoSplit:
    """Write ``root/<split>/*.png`` and ``root/annotations/instances_<split>.json``; reuse if identical."""
    root = Path(root)
    image_root, json_file = root / split, root / "annotations" / f"instances_{split}.json"
    params = dict(asdict(spec), split=split, generator="convnext_backbone.synthetic/2")
    if json_file.is_file() and image_root.is_dir():
        existing = json.loads(json_file.read_text())
        if existing.get("info", {}).get("params") == params:
            return CocoSplit(str(json_file), str(image_root), len(existing["images"]), len(existing["annotations"]))
    rng = np.random.default_rng(spec.seed)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{split}."))
    try:
        images, annotations = [], []
        for i in tqdm(range(spec.num_images), desc=f"generating {split}", unit="img", disable=not progress, leave=False):
            img, anns = _render(rng, spec, image_id=i + 1)
            name = f"{i:06d}.png"
            img.save(tmp / name)
            images.append({"id": i + 1, "file_name": name, "height": spec.image_size, "width": spec.image_size})
            for a in anns:
                annotations.append(dict(a, id=len(annotations) + 1))
        coco = {
            "info": {"description": "synthetic shapes (convnext_backbone.synthetic)", "params": params},
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CATEGORIES)],
        }
        (tmp / "instances.json").write_text(json.dumps(coco))
        if image_root.exists():
            shutil.rmtree(image_root)
        json_file.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / "instances.json", tmp.with_suffix(".json"))
        os.replace(tmp, image_root)
        os.replace(tmp.with_suffix(".json"), json_file)  # last: the json marks the split complete
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.with_suffix(".json").unlink(missing_ok=True)
    return CocoSplit(str(json_file), str(image_root), len(images), len(annotations))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m convnext_backbone.synthetic",
                                description="Write the COCO-format shapes dataset: ROOT/{train,val}/*.png, ROOT/annotations/*.json.")
    p.add_argument("root", help="output directory (an existing split with the same parameters is kept)")
    p.add_argument("--train-images", type=int, default=48)
    p.add_argument("--val-images", type=int, default=16)
    p.add_argument("--image-size", type=int, default=128)
    args = p.parse_args(argv)
    for split, n, seed in (("train", args.train_images, 0), ("val", args.val_images, 1)):
        made = make_coco_split(args.root, split, SyntheticSpec(num_images=n, image_size=args.image_size, seed=seed))
        print(f"{split}: {made.num_images} images, {made.num_annotations} objects -> {made.json_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
