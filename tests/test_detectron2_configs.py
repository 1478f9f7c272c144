"""Every YAML in configs/detectron2 merges into a real Detectron2 config and builds its model
(on the meta device: structure and parameter shapes without the memory or init time), and
carries the official recipe it claims."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads import StandardROIHeads

import detectron2_convnext as d2c
from convnext_backbone.presets import PRESETS

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "detectron2"
MODEL_FILES = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("Base-"))
ALL_FILES = sorted(CONFIGS.rglob("*.yaml"))
EPOCH = 7330  # COCO train2017 images with annotations (117266) / batch 16

PUBLISHED = {  # official ConvNeXt object_detection README / paper Table 3 (box AP, mask AP)
    "mask_rcnn_convnext_tiny_fpn_3x_coco.yaml": (46.2, 41.7),
    "cascade_mask_rcnn_convnext_tiny_fpn_3x_coco.yaml": (50.4, 43.7),
    "cascade_mask_rcnn_convnext_small_fpn_3x_coco.yaml": (51.9, 45.0),
    "cascade_mask_rcnn_convnext_base_fpn_3x_coco.yaml": (52.7, 45.6),
}
OFFICIAL = {  # official configs/convnext/*: drop path, lr, layer decay rate, num_layers
    "mask_rcnn_convnext_tiny_fpn_3x_coco.yaml": (0.4, 1e-4, 0.95, 6),
    "cascade_mask_rcnn_convnext_tiny_fpn_3x_coco.yaml": (0.4, 2e-4, 0.7, 6),
    "cascade_mask_rcnn_convnext_small_fpn_3x_coco.yaml": (0.6, 2e-4, 0.7, 12),
    "cascade_mask_rcnn_convnext_base_fpn_3x_coco.yaml": (0.7, 2e-4, 0.8, 12),
}


def load(path: Path):
    cfg = get_cfg()
    d2c.add_convnext_config(cfg)
    cfg.merge_from_file(str(path))
    return cfg


def test_the_promised_files_exist():
    names = {p.name for p in MODEL_FILES}
    sizes = [f"convnext_{s}" for s in ("tiny", "small", "base")] + [f"convnextv2_{s}" for s in ("atto", "femto", "pico", "nano", "tiny", "base")]
    for m in sizes:
        for f in (f"mask_rcnn_{m}_fpn_1x_coco.yaml", f"mask_rcnn_{m}_fpn_3x_coco.yaml", f"cascade_mask_rcnn_{m}_fpn_3x_coco.yaml"):
            assert f in names, f
    assert len([n for n in names if n.endswith("_coco.yaml")]) == 27


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_merges_and_builds(path):
    cfg = load(path)
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        model = build_model(cfg)
    bottom_up = model.backbone.bottom_up
    assert isinstance(bottom_up, d2c.D2ConvNeXt)
    version, _, size = cfg.MODEL.CONVNEXT.NAME.partition("_")
    depths, dims = PRESETS[version][size]
    assert (bottom_up.config.depths, bottom_up.config.hidden_sizes) == (list(depths), list(dims))
    assert bottom_up.config.drop_path_rate == cfg.MODEL.CONVNEXT.DROP_PATH_RATE
    assert {k: v.stride for k, v in model.backbone.output_shape().items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    heads = model.roi_heads
    n = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if cfg.MODEL.ROI_HEADS.NAME == "ClassSpecificCascadeROIHeads":
        assert isinstance(heads, d2c.ClassSpecificCascadeROIHeads) and heads.num_cascade_stages == 3
        assert all(p.bbox_pred.out_features == 4 * n for p in heads.box_predictor)
    else:
        assert type(heads) is StandardROIHeads and heads.box_predictor.bbox_pred.out_features == 4 * n
    assert model.roi_heads.mask_on
    opt = d2c.build_convnext_optimizer(cfg, model)  # the optimizer builds from every config too
    assert isinstance(opt, torch.optim.AdamW)


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.name)
def test_coco_recipe(path):
    cfg = load(path)
    text = path.read_text()
    target = re.search(r"^# Target: (.*)$", text, re.M)
    assert target, f"{path.name} has no '# Target:' line"
    if path.name in PUBLISHED:
        box, mask = PUBLISHED[path.name]
        assert f"{box} box AP / {mask} mask AP" in target.group(1)
    else:
        assert target.group(1).startswith("none published")
    if path.name in OFFICIAL:
        dpr, lr, rate, layers = OFFICIAL[path.name]
        got = (cfg.MODEL.CONVNEXT.DROP_PATH_RATE, cfg.SOLVER.BASE_LR, cfg.SOLVER.LAYER_DECAY.RATE, cfg.SOLVER.LAYER_DECAY.NUM_LAYERS)
        assert (dpr, lr, rate, layers) == got
    s = cfg.SOLVER
    assert (s.OPTIMIZER, s.WEIGHT_DECAY, tuple(s.BETAS), s.IMS_PER_BATCH) == ("ADAMW", 0.05, (0.9, 0.999), 16)
    epochs = 36 if "_3x_" in path.name else 12
    steps = (27, 33) if epochs == 36 else (8, 11)
    assert epochs * EPOCH == s.MAX_ITER and tuple(s.STEPS) == tuple(e * EPOCH for e in steps) and s.GAMMA == 0.1
    assert cfg.INPUT.DETR_AUG.ENABLED and tuple(cfg.INPUT.MIN_SIZE_TRAIN) == tuple(range(480, 801, 32))
    assert cfg.INPUT.MAX_SIZE_TRAIN == 1333 and cfg.INPUT.RANDOM_FLIP == "horizontal"
    assert tuple(cfg.INPUT.DETR_AUG.RESIZE_SIZES) == (400, 500, 600) and tuple(cfg.INPUT.DETR_AUG.CROP_SIZE) == (384, 600)
    if path.name.startswith("cascade"):
        b = cfg.MODEL.ROI_BOX_HEAD
        assert (b.NUM_CONV, b.NUM_FC, b.NORM, b.CLS_AGNOSTIC_BBOX_REG, b.BBOX_REG_LOSS_TYPE, b.BBOX_REG_LOSS_WEIGHT) == (4, 1, "SyncBN", False, "giou", 10.0)
        assert tuple(cfg.MODEL.ROI_BOX_CASCADE_HEAD.STAGE_LOSS_WEIGHTS) == (1.0, 0.5, 0.25)
