"""The README's main job, end to end on CPU with no network and no pretrained weights:

1. generate a small COCO-format instance-segmentation dataset on disk (PNG + polygon json),
2. train a ConvNeXt V2-A Mask R-CNN on it with Detectron2's trainer (progress bar),
3. evaluate with Detectron2's ``COCOEvaluator`` and print box and mask AP,
4. draw predictions next to the ground truth with Detectron2's ``Visualizer`` into a PNG.

    python -m detectron2_convnext.demo --out outputs/demo
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from convnext_backbone.fileio import atomic_write

REPO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "detectron2" / "demo" / "mask_rcnn_convnextv2_atto_fpn_shapes.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/demo", help="output folder (dataset, checkpoints, log, PNG, results)")
    p.add_argument("--config-file", default=str(REPO_CONFIG), help="Detectron2 YAML config (default: the repo's demo config)")
    p.add_argument("--iters", type=int, default=None, help="training iterations (default: the config's SOLVER.MAX_ITER)")
    p.add_argument("--train-images", type=int, default=96)
    p.add_argument("--val-images", type=int, default=24)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    return p.parse_args(argv)


def build_cfg(args, out: Path):
    from detectron2.config import get_cfg

    from .config import add_convnext_config

    if not Path(args.config_file).is_file():
        raise FileNotFoundError(f"demo config not found: {args.config_file} (run from the repository, or pass --config-file)")
    cfg = get_cfg()
    add_convnext_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.OUTPUT_DIR = str(out / "train")
    cfg.SEED = args.seed
    if args.iters is not None:
        cfg.SOLVER.MAX_ITER = args.iters
        cfg.SOLVER.STEPS = (int(args.iters * 0.8),)  # one lr drop near the end, as the config's own
        cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, max(1, args.iters // 10))
        cfg.SOLVER.CHECKPOINT_PERIOD = max(args.iters, 1)
    cfg.freeze()
    return cfg


CLASS_COLOURS = [(255, 200, 0), (255, 0, 200), (0, 220, 255)]  # overlay colours, distinct from the shapes' own hues


def draw_predictions(cfg, model, dataset_name: str, path: Path, num_images: int = 4, scale: float = 3.0) -> Path:
    """Rows of [ground truth | predictions with score >= 0.5] for the first images of ``dataset_name``."""
    import cv2
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data import transforms as T
    from detectron2.utils.visualizer import ColorMode, Visualizer

    meta = MetadataCatalog.get(dataset_name)
    if not meta.get("thing_colors"):
        meta.set(thing_colors=CLASS_COLOURS[: len(meta.thing_classes)])
    records = DatasetCatalog.get(dataset_name)[:num_images]
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    rows = []
    model.eval()
    for rec in records:
        rgb = cv2.cvtColor(cv2.imread(rec["file_name"]), cv2.COLOR_BGR2RGB)
        image = rgb if cfg.INPUT.FORMAT == "RGB" else rgb[:, :, ::-1]
        resized = resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
        with torch.no_grad():
            instances = model([{"image": tensor, "height": rgb.shape[0], "width": rgb.shape[1]}])[0]["instances"].to("cpu")
        instances = instances[instances.scores >= 0.5]
        mode = ColorMode.SEGMENTATION  # one colour per class, the same in both panels
        gt = Visualizer(rgb, meta, scale=scale, instance_mode=mode).draw_dataset_dict(rec).get_image()
        pred = Visualizer(rgb, meta, scale=scale, instance_mode=mode).draw_instance_predictions(instances).get_image()
        gap = np.full((gt.shape[0], 8, 3), 255, dtype=np.uint8)
        rows.append(np.concatenate([gt, gap, pred], axis=1))
    width, half = rows[0].shape[1], (rows[0].shape[1] - 8) // 2
    header = np.full((36, width, 3), 255, dtype=np.uint8)
    for x, text in ((0, "ground truth"), (half + 8, "predictions (score >= 0.5)")):
        cv2.putText(header, text, (x + 8, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 2, cv2.LINE_AA)
    sep = np.full((8, width, 3), 255, dtype=np.uint8)
    grid = np.concatenate([header] + [x for r in rows for x in (r, sep)][:-1], axis=0)
    bgr = cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)
    return atomic_write(path, lambda tmp: cv2.imwrite(tmp, bgr), suffix=".png")  # cv2 picks the format by suffix


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = _setup(args, out)
    val_name = make_datasets(cfg, args, out)
    trainer, results, train_s = train_and_evaluate(cfg)
    box, mask = _print_ap(cfg, val_name, results)
    png = draw_predictions(cfg, trainer.model, val_name, out / "predictions.png")
    print(f"[4/4] predictions (right) next to ground truth (left): {png}")
    summary = {
        "bbox": {k: float(v) for k, v in box.items()},
        "segm": {k: float(v) for k, v in mask.items()},
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.time() - t_start, 1),
        "iterations": cfg.SOLVER.MAX_ITER,
        "png": str(png),
    }
    atomic_write(out / "results.json", json.dumps(summary, indent=2))
    print(f"done in {summary['total_seconds']:.0f} s (training and evaluation {train_s:.0f} s); results in {out / 'results.json'}")
    return summary


def _setup(args, out: Path):
    """The frozen config, the random generators seeded (same data, init and sampling on every run, up
    to thread-count effects), Detectron2's full log to train/log.txt (the console shows the steps
    and the progress bar)."""
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.logger import setup_logger

    cfg = build_cfg(args, out)
    seed_all_rng(cfg.SEED)
    for name in ("detectron2", "fvcore", "detectron2_convnext"):
        setup_logger(cfg.OUTPUT_DIR, name=name, configure_stdout=False)
    return cfg


def make_datasets(cfg, args, out: Path) -> str:
    """Step 1: the train and val splits written under ``out/data`` and registered under the config's
    dataset names; returns the val name."""
    from .synthetic import SyntheticSpec, make_coco_split, register_coco

    print(f"[1/4] generating a COCO-format dataset of coloured shapes in {out / 'data'}")
    train_name, val_name = cfg.DATASETS.TRAIN[0], cfg.DATASETS.TEST[0]
    size = args.image_size
    train = make_coco_split(out / "data", "train", SyntheticSpec(num_images=args.train_images, image_size=size, seed=args.seed))
    val = make_coco_split(out / "data", "val", SyntheticSpec(num_images=args.val_images, image_size=size, seed=args.seed + 1))
    register_coco(train_name, train.json_file, train.image_root)
    register_coco(val_name, val.json_file, val.image_root)
    print(f"      train: {train.num_images} images / {train.num_annotations} instances, val: {val.num_images} / {val.num_annotations}")
    return val_name


def train_and_evaluate(cfg):
    """Step 2: ``(trainer, COCOEvaluator results, seconds)``; Detectron2 evaluates when training ends,
    pycocotools' own prints go to train/cocoeval.txt."""
    from .train_net import Trainer

    print(f"[2/4] training Mask R-CNN with a {cfg.MODEL.CONVNEXT.NAME} backbone (random init) on {cfg.MODEL.DEVICE}, "
          f"{cfg.SOLVER.MAX_ITER} iterations x {cfg.SOLVER.IMS_PER_BATCH} images (log: {Path(cfg.OUTPUT_DIR) / 'log.txt'})")
    t0 = time.time()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    with open(Path(cfg.OUTPUT_DIR) / "cocoeval.txt", "w") as sink, contextlib.redirect_stdout(sink):
        results = trainer.train()
    return trainer, results, time.time() - t0


def _print_ap(cfg, val_name: str, results: dict) -> tuple[dict, dict]:
    """Step 3: box and mask AP / AP50 / AP75; returns the two result dicts."""
    print(f"[3/4] COCOEvaluator on {val_name} (tables in {Path(cfg.OUTPUT_DIR) / 'log.txt'})")
    box, mask = results["bbox"], results["segm"]
    print(f"      box  AP {box['AP']:5.1f}   AP50 {box['AP50']:5.1f}   AP75 {box['AP75']:5.1f}")
    print(f"      mask AP {mask['AP']:5.1f}   AP50 {mask['AP50']:5.1f}   AP75 {mask['AP75']:5.1f}")
    return box, mask

if __name__ == "__main__":
    main()
