"""Every MMDetection config parses with mmengine, carries the official recipe, and builds.

Models are built on the meta device (no memory, no init time); the smoke config is also built
for real. The expected values are written out here from the official ConvNeXt detection configs
(facebookresearch/ConvNeXt, object_detection/configs/convnext) and MMDetection's pre-release
ConvNeXt V2-B config (projects/ConvNeXt-V2), not read back from our files.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import RUNNERS as ROOT_RUNNERS
from mmengine.registry import DefaultScope

import mmdet_convnext  # noqa: F401
from openmmlab_convnext import check_in_channels

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "mmdet"

V1 = {"tiny": [96, 192, 384, 768], "small": [96, 192, 384, 768], "base": [128, 256, 512, 1024]}
V2 = {"atto": [40, 80, 160, 320], "femto": [48, 96, 192, 384], "pico": [64, 128, 256, 512], "nano": [80, 160, 320, 640],
      "tiny": [96, 192, 384, 768], "base": [128, 256, 512, 1024]}
# preset -> (drop path, layer-decay rate Mask R-CNN, rate Cascade, num_layers); V1 T/S/B Cascade and
# T Mask R-CNN are the official values, the others follow the nearest official size.
RECIPE = {
    "convnext_tiny": (0.4, 0.95, 0.7, 6), "convnext_small": (0.6, 0.7, 0.7, 12), "convnext_base": (0.7, 0.8, 0.8, 12),
    "convnextv2_atto": (0.1, 0.95, 0.7, 5), "convnextv2_femto": (0.1, 0.95, 0.7, 5), "convnextv2_pico": (0.1, 0.95, 0.7, 5),
    "convnextv2_nano": (0.2, 0.95, 0.7, 6), "convnextv2_tiny": (0.4, 0.95, 0.7, 6), "convnextv2_base": (0.7, 0.8, 0.8, 12),
}
PUBLISHED = {  # stem -> "box AP x / mask AP y"
    "mask_rcnn_convnext_tiny_fpn_3x_coco": "box AP 46.2 / mask AP 41.7",
    "cascade_mask_rcnn_convnext_tiny_fpn_3x_coco": "box AP 50.4 / mask AP 43.7",
    "cascade_mask_rcnn_convnext_small_fpn_3x_coco": "box AP 51.9 / mask AP 45.0",
    "cascade_mask_rcnn_convnext_base_fpn_3x_coco": "box AP 52.7 / mask AP 45.6",
    "mask_rcnn_convnextv2_base_fpn_3x_coco": "box AP 52.9 / mask AP 46.4",  # pre-release
}
PRE_RELEASE = ("mask_rcnn_convnextv2_base_fpn_1x_coco", "mask_rcnn_convnextv2_base_fpn_3x_coco")
MULTI_SCALE = [(s, 1333) for s in range(480, 801, 32)]



@pytest.fixture(autouse=True)
def _mmdet_default_scope():
    """Build in MMDetection's registries, and leave mmengine's global default scope as it was
    (the MMSegmentation tests in the same process build by unscoped names)."""
    with DefaultScope.overwrite_default_scope("mmdet"):
        yield

def _expected() -> dict[str, tuple[str, str, str, list[int]]]:
    out = {}
    for version, sizes in (("convnext", V1), ("convnextv2", V2)):
        for size, dims in sizes.items():
            preset = f"{version}_{size}"
            for kind, sched in (("mask_rcnn", "1x"), ("mask_rcnn", "3x"), ("cascade_mask_rcnn", "3x")):
                out[f"{kind}_{preset}_fpn_{sched}_coco"] = (kind, preset, sched, dims)
    return out


EXPECTED = _expected()


def test_the_config_folder_holds_exactly_the_expected_files():
    assert {p.stem for p in CONFIGS.glob("*.py")} == set(EXPECTED) and len(EXPECTED) == 27


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_config_parses_carries_the_official_recipe_and_builds_on_meta(stem):
    kind, preset, sched, dims = EXPECTED[stem]
    path = CONFIGS / f"{stem}.py"
    text = path.read_text()
    published = [line for line in text.splitlines() if line.startswith("# Published")]
    assert len(published) == 1, "one comment line quoting the published AP (or saying there is none)"
    if stem in PUBLISHED:
        assert PUBLISHED[stem] in published[0]
    else:
        assert "none" in published[0]
    if stem == "mask_rcnn_convnextv2_base_fpn_3x_coco":
        assert "PRE-RELEASE" in published[0]

    cfg = Config.fromfile(str(path))
    assert cfg.custom_imports.imports == ["mmdet_convnext"] and cfg.custom_imports.allow_failed_imports is False
    # MMDetection's own tools/train.py builds this from mmengine's root registry
    assert ROOT_RUNNERS.get(cfg.runner_type) is mmdet_convnext.ConvNeXtDetRunner
    v2 = preset.startswith("convnextv2")
    pre = stem in PRE_RELEASE
    drop, mask_rate, cascade_rate, num_layers = RECIPE[preset]
    bb = cfg.model.backbone
    assert bb.type == "MMDetConvNeXt" and bb.arch == preset and tuple(bb.out_indices) == (0, 1, 2, 3)
    assert bb.drop_path_rate == (0.4 if pre else drop)
    assert bb.get("layer_scale_init_value") == (None if v2 else 1.0)
    assert bb.init_cfg.type == "Pretrained" and bb.init_cfg.checkpoint.startswith("https://dl.fbaipublicfiles.com/convnext/")
    assert ("fcmae" in bb.init_cfg.checkpoint) == pre
    assert cfg.model.neck.type == "FPN" and cfg.model.neck.in_channels == dims

    # the recipe
    ow = cfg.optim_wrapper
    assert ow.type == "AmpOptimWrapper" and ow.loss_scale == "dynamic"
    lr = 1e-4 if kind == "mask_rcnn" else 2e-4
    assert ow.optimizer == dict(type="AdamW", lr=lr, betas=(0.9, 0.999), weight_decay=0.05)
    rate = 0.95 if pre else mask_rate if kind == "mask_rcnn" else cascade_rate
    assert ow.paramwise_cfg == dict(decay_rate=rate, decay_type="layer_wise", num_layers=num_layers)
    assert ow.constructor == ("ConvNeXtV2LearningRateDecayOptimizerConstructor" if v2 else "LearningRateDecayOptimizerConstructor")
    epochs, steps = (36, [27, 33]) if sched == "3x" else (12, [8, 11])
    warmup, step = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.by_epoch, warmup.begin, warmup.end) == \
        ("LinearLR", 0.001, False, 0, 1000 if pre else 500)
    assert (step.type, step.by_epoch, step.milestones, step.gamma, step.end) == ("MultiStepLR", True, steps, 0.1, epochs)
    assert cfg.train_cfg.type == "EpochBasedTrainLoop" and cfg.train_cfg.max_epochs == epochs
    batch = 4 if pre else 2
    assert cfg.train_dataloader.batch_size == batch and cfg.auto_scale_lr.base_batch_size == 8 * batch
    pipeline = cfg.train_dataloader.dataset.pipeline
    types = [t.type for t in pipeline]
    if pre:  # large-scale jitter at 1024
        assert types == ["LoadImageFromFile", "LoadAnnotations", "RandomResize", "RandomCrop", "FilterAnnotations",
                         "RandomFlip", "PackDetInputs"]
        assert pipeline[2].scale == (1024, 1024) and pipeline[2].ratio_range == (0.1, 2.0) and pipeline[3].crop_size == (1024, 1024)
        assert cfg.model.test_cfg.rcnn.nms.type == "soft_nms"
    else:  # DETR-style: flip, then multi-scale resize or resize-crop-resize
        assert types == ["LoadImageFromFile", "LoadAnnotations", "RandomFlip", "RandomChoice", "PackDetInputs"]
        one, two = pipeline[3].transforms
        assert [t.type for t in one] == ["RandomChoiceResize"] and [tuple(s) for s in one[0].scales] == MULTI_SCALE
        assert [t.type for t in two] == ["RandomChoiceResize", "RandomCrop", "RandomChoiceResize"]
        assert [tuple(s) for s in two[0].scales] == [(400, 1333), (500, 1333), (600, 1333)]
        assert two[1].crop_type == "absolute_range" and tuple(two[1].crop_size) == (384, 600) and two[1].allow_negative_crop
        assert [tuple(s) for s in two[2].scales] == MULTI_SCALE
    assert pipeline[1].with_mask and cfg.val_evaluator.metric == ["bbox", "segm"]

    if kind == "cascade_mask_rcnn":
        heads = cfg.model.roi_head.bbox_head
        assert len(heads) == 3 and cfg.model.roi_head.stage_loss_weights == [1, 0.5, 0.25]
        for head, stds in zip(heads, ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])):
            assert (head.type, head.num_shared_convs, head.num_shared_fcs, head.fc_out_channels) == ("ConvFCBBoxHead", 4, 1, 1024)
            assert head.norm_cfg.type == "SyncBN" and head.reg_class_agnostic is False and head.reg_decoded_bbox is True
            assert head.loss_bbox == dict(type="GIoULoss", loss_weight=10.0) and head.bbox_coder.target_stds == stds
        assert cfg.model.train_cfg.rpn_proposal.max_per_img == 2000
    with torch.device("meta"):
        model = MODELS.build(cfg.model)
    check_in_channels(model)
    assert type(model).__name__ == ("MaskRCNN" if kind == "mask_rcnn" else "CascadeRCNN")
    assert model.backbone.channels == dims


def test_smoke_config_builds_for_real_and_is_small():
    cfg = Config.fromfile(str(CONFIGS / "smoke" / "mask_rcnn_convnextv2_atto_fpn_shapes.py"))
    assert re.search(r"^# Published: none", (CONFIGS / "smoke" / "mask_rcnn_convnextv2_atto_fpn_shapes.py").read_text(), re.M)
    assert cfg.train_cfg.type == "IterBasedTrainLoop" and cfg.optim_wrapper.type == "OptimWrapper"
    assert cfg.train_dataloader.dataset.metainfo.classes == ("circle", "square", "triangle")
    model = MODELS.build(cfg.model)
    check_in_channels(model)
    assert sum(p.numel() for p in model.parameters()) < 10_000_000
