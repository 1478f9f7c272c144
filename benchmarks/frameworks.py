"""Training step of whole models built on our backbone: Detectron2 Mask R-CNN, MMSeg UperNet.

Each line is skipped, with the reason printed, when its adapter package or framework cannot
be imported; otherwise it builds the model through the framework's own builder and times
forward + backward of the summed losses on a synthetic batch.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .measure import PeakMemory, autocast_context, shape_str, summarize, time_once

PIPELINES = {"d2": "Detectron2 Mask R-CNN", "mmseg": "MMSeg UperNet"}
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# (full, --quick) inputs; UperNet's pooled-branch BatchNorm needs a batch of at least 2.
SHAPES = {"d2": ((2, 3, 800, 1216), (1, 3, 128, 160)), "mmseg": ((2, 3, 512, 512), (2, 3, 64, 64))}


class Unavailable(Exception):
    """The pipeline cannot be built here; the message says why."""


def _config_file(folder: str, pattern: str) -> Path:
    found = sorted((CONFIGS / folder).glob(pattern))
    if not found:
        raise Unavailable(f"no config {CONFIGS / folder / pattern}")
    return found[0]


def _d2_step(model_name: str, shape: tuple[int, ...], device: str, autocast: Callable, quick: bool = False
             ) -> tuple[Callable[[], None], str]:
    """Mask R-CNN from our Detectron2 config for ``model_name``; random boxes and masks as targets.

    ``quick`` samples 64 instead of 512 RoIs per image: at smoke-test sizes the RoI heads,
    not the backbone, would take nearly all of the step.
    """
    try:
        from detectron2.config import get_cfg
        from detectron2.modeling import build_model
        from detectron2.structures import BitMasks, Boxes, Instances
        from detectron2.utils.events import EventStorage

        import detectron2_convnext
    except ImportError as e:
        raise Unavailable(f"cannot import the Detectron2 adapter or detectron2: {e}") from e
    path = _config_file("detectron2", f"mask_rcnn_{model_name}_fpn_3x_coco.yaml")
    cfg = get_cfg()
    detectron2_convnext.add_convnext_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.MODEL.DEVICE = device  # the model moves each batch there itself
    cfg.MODEL.WEIGHTS = ""
    if quick:
        cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    model = build_model(cfg)
    model.train()

    n, _, h, w = shape
    g = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(n):
        k = 8
        xy = torch.rand(k, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = (0.1 + 0.2 * torch.rand(k, 2, generator=g)) * torch.tensor([w, h])
        boxes = torch.cat([xy, xy + wh], dim=1).floor()
        masks = torch.zeros(k, h, w, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            masks[i, y0:y1, x0:x1] = True
        inst = Instances((h, w), gt_boxes=Boxes(boxes), gt_classes=torch.randint(0, cfg.MODEL.ROI_HEADS.NUM_CLASSES, (k,), generator=g),
                         gt_masks=BitMasks(masks))
        batch.append({"image": torch.randint(0, 256, (3, h, w), generator=g).float(), "height": h, "width": w, "instances": inst})

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with EventStorage(0), autocast():
            losses = model(batch)
        sum(losses.values()).backward()

    rois = "" if not quick else f", {cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE} RoIs/image (--quick)"
    return step, f"{path.name}{rois}, random init, 8 random boxes+masks per image, sum of losses backward"


def _mmseg_step(model_name: str, shape: tuple[int, ...], device: str, autocast: Callable, quick: bool = False
               ) -> tuple[Callable[[], None], str]:
    """UperNet from our MMSeg config for ``model_name`` (SyncBN reverted to BN for one process)."""
    try:
        from mmengine.config import Config
        from mmengine.model import revert_sync_batchnorm
        from mmengine.registry import init_default_scope
        from mmengine.structures import PixelData
        from mmseg.registry import MODELS
        from mmseg.structures import SegDataSample

        import mmseg_convnext  # noqa: F401  registers MMSegConvNeXt
    except ImportError as e:
        raise Unavailable(f"cannot import the MMSeg adapter or mmsegmentation/mmcv: {e}") from e
    path = _config_file("mmseg", f"upernet_{model_name}_*_ade20k.py")
    cfg = Config.fromfile(str(path))
    cfg.model.backbone.init_cfg = None  # random init: no download
    cfg.model.data_preprocessor.size = tuple(shape[2:])  # it pads every batch to this size
    init_default_scope(cfg.get("default_scope", "mmseg"))
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    model.init_weights()
    model.to(device)  # its data_preprocessor moves each batch to the model's device
    model.train()

    n, _, h, w = shape
    g = torch.Generator().manual_seed(0)
    num_classes = cfg.model.decode_head.num_classes
    data = {"inputs": [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for _ in range(n)],
            "data_samples": [SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, num_classes, (1, h, w), generator=g)),
                                           metainfo={"img_shape": (h, w), "ori_shape": (h, w)}) for _ in range(n)]}

    def step() -> None:
        model.zero_grad(set_to_none=True)
        batch = model.data_preprocessor(data, True)
        with autocast():
            losses = model(**batch, mode="loss")
        loss, _ = model.parse_losses(losses)
        loss.backward()

    return step, f"{path.name}, random init, SyncBN->BN, random labels, decode+auxiliary losses backward"


BUILDERS = {"d2": _d2_step, "mmseg": _mmseg_step}


def run(key: str, args: argparse.Namespace, memory: PeakMemory, progress) -> dict[str, Any]:
    """Time one pipeline's training step (warmup, memory on the last warmup, then
    ``--framework-repeats`` runs); or skip it, saying why."""
    from .peers import model_label

    shape = SHAPES[key][1 if args.quick else 0]
    row: dict[str, Any] = {"pipeline": PIPELINES[key], "key": key, "model": model_label(args.framework_model),
                           "shape": shape_str(shape)}
    try:
        step, note = BUILDERS[key](args.framework_model, shape, args.device, autocast_context(args.device, args.dtype),
                                   quick=args.quick)
    except Unavailable as e:
        row.update(status="skipped", reason=str(e))
    if row.get("status") == "skipped":
        progress.write(f"{row['pipeline']}: skipped: {row['reason']}")
        return row
    progress.total += args.warmup + args.framework_repeats
    progress.set_description(f"{PIPELINES[key]} train {row['shape']}")
    for w in range(args.warmup):
        if w == args.warmup - 1:
            row["warmup_s"], row["peak_mem_mib"] = memory.measure(step)
        else:
            time_once(step, args.device)
        progress.update(1)
    times = []
    for _ in range(args.framework_repeats):
        times.append(time_once(step, args.device))
        progress.update(1)
    row.update(status="ok", note=note, times_s=times, **summarize(times))
    peak = "-" if row["peak_mem_mib"] is None else f"{row['peak_mem_mib']:.0f}"
    progress.write(f"{row['pipeline']} train {row['shape']}: {row['median_s']:.3f} s, peak {peak} MiB")
    return row
