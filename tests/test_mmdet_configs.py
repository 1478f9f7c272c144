"""Every MMDetection config parses with mmengine, carries the official recipe, and builds.

Models are built on the meta device (no memory, no init time); the smoke configs are also built
for real. The expected values are written out here from the official ConvNeXt detection configs
(facebookresearch/ConvNeXt, object_detection/configs/convnext), MMDetection's pre-release
ConvNeXt V2-B config and DINO V2-A config (projects/ConvNeXt-V2), detrex's DINO-ConvNeXt configs
(projects/dino/configs/dino-convnext) and MMDetection 3.3.0's DINO-4scale R-50 config, not read
back from our files.
"""
from __future__ import annotations

import copy
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


# DINO-4scale 12e: stem -> (preset, drop path, weights file under dl.fbaipublicfiles.com/convnext/,
# images per GPU, published box AP or None). V1: detrex's configs and model zoo (IN-22K 384 weights);
# V2-A: MMDetection's project config; V2 F..B: that config at their size with DINO's batch.
_FCMAE = "convnextv2/pt_only/convnextv2_{}_1k_224_fcmae.pt"
DINO = {
    **{f"dino_4scale_convnext_{size}_12e_coco": (f"convnext_{size}", 0.0, f"convnext_{size}_22k_1k_384.pth", 2, ap)
       for size, ap in (("tiny", "52.4"), ("small", "54.2"), ("base", "55.1"), ("large", "55.5"))},
    **{f"dino_4scale_convnextv2_{size}_12e_coco": (f"convnextv2_{size}", 0.1, _FCMAE.format(size), 1 if size == "atto" else 2, None)
       for size in ("atto", "femto", "pico", "nano", "tiny", "base")},
}
DINO_DIMS = {**{f"convnext_{k}": v for k, v in V1.items()}, "convnext_large": [192, 384, 768, 1536],
             **{f"convnextv2_{k}": v for k, v in V2.items()}}
DINO_SCALES = [(s, 1333) for s in range(480, 801, 32)]


def test_the_config_folder_holds_exactly_the_expected_files():
    assert {p.stem for p in CONFIGS.glob("*.py")} == set(EXPECTED) | set(DINO) and len(EXPECTED) == 27 and len(DINO) == 10


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


@pytest.mark.parametrize("stem", sorted(DINO))
def test_dino_config_carries_the_published_recipe_and_builds_on_meta(stem):
    preset, drop, weights, per_gpu, published = DINO[stem]
    path = CONFIGS / f"{stem}.py"
    lines = [line for line in path.read_text().splitlines() if line.startswith("# Published")]
    assert len(lines) == 1, "one comment line quoting the published AP (or saying there is none)"
    assert (f"box AP {published}" in lines[0]) if published else ("none" in lines[0])
    assert re.search(r"^# Recipe: .*(detrex|projects/ConvNeXt-V2)", path.read_text(), re.M)

    cfg = Config.fromfile(str(path))
    assert cfg.custom_imports.imports == ["mmdet_convnext"] and ROOT_RUNNERS.get(cfg.runner_type) is mmdet_convnext.ConvNeXtDetRunner
    dims = DINO_DIMS[preset]
    bb = cfg.model.backbone
    assert bb.type == "MMDetConvNeXt" and bb.arch == preset and tuple(bb.out_indices) == (1, 2, 3)  # stages 2-4
    assert bb.drop_path_rate == drop and bb.get("frozen_stages", -1) == -1 and bb.get("norm_outputs", True)
    assert bb.get("layer_scale_init_value") == (None if preset.startswith("convnextv2") else 1.0)
    assert bb.init_cfg == dict(type="Pretrained", checkpoint=f"https://dl.fbaipublicfiles.com/convnext/{weights}")
    neck = cfg.model.neck
    assert (neck.type, neck.in_channels, neck.out_channels, neck.num_outs, neck.kernel_size) == ("ChannelMapper", dims[1:], 256, 4, 1)
    assert neck.norm_cfg == dict(type="GN", num_groups=32) and neck.act_cfg is None

    # MMDetection's DINO-4scale, unchanged
    m = cfg.model
    assert (m.type, m.num_queries, m.with_box_refine, m.as_two_stage) == ("DINO", 900, True, True)
    assert m.encoder.num_layers == 6 and m.decoder.num_layers == 6 and m.encoder.layer_cfg.self_attn_cfg.num_levels == 4
    assert m.encoder.layer_cfg.ffn_cfg.feedforward_channels == 2048 and m.decoder.layer_cfg.ffn_cfg.feedforward_channels == 2048
    assert m.dn_cfg == dict(label_noise_scale=0.5, box_noise_scale=1.0, group_cfg=dict(dynamic=True, num_groups=None, num_dn_queries=100))
    assert (m.bbox_head.type, m.bbox_head.num_classes) == ("DINOHead", 80) and m.test_cfg.max_per_img == 300
    assert (m.bbox_head.loss_cls.loss_weight, m.bbox_head.loss_bbox.loss_weight, m.bbox_head.loss_iou.loss_weight) == (1.0, 5.0, 2.0)

    # the optimizer and schedule (detrex's values; MMDetection's DINO spelling)
    ow = cfg.optim_wrapper
    assert ow.type == "OptimWrapper" and "constructor" not in ow
    assert ow.optimizer == dict(type="AdamW", lr=1e-4, weight_decay=1e-4) and ow.clip_grad == dict(max_norm=0.1, norm_type=2)
    assert ow.paramwise_cfg == dict(custom_keys=dict(backbone=dict(lr_mult=0.1)))
    assert [(s.type, s.by_epoch, s.milestones, s.gamma, s.end) for s in cfg.param_scheduler] == [("MultiStepLR", True, [11], 0.1, 12)]
    assert cfg.train_cfg.type == "EpochBasedTrainLoop" and cfg.train_cfg.max_epochs == 12
    assert cfg.train_dataloader.batch_size == per_gpu and cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.train_dataloader.dataset.filter_cfg.filter_empty_gt is False
    pipeline = cfg.train_dataloader.dataset.pipeline
    assert [t.type for t in pipeline] == ["LoadImageFromFile", "LoadAnnotations", "RandomFlip", "RandomChoice", "PackDetInputs"]
    one, two = pipeline[3].transforms
    assert [tuple(s) for s in one[0].scales] == DINO_SCALES and [tuple(s) for s in two[2].scales] == DINO_SCALES
    assert [tuple(s) for s in two[0].scales] == [(400, 4200), (500, 4200), (600, 4200)] and tuple(two[1].crop_size) == (384, 600)
    assert cfg.val_evaluator.metric == "bbox"

    with torch.device("meta"):
        model = MODELS.build(copy.deepcopy(cfg.model))
    check_in_channels(model, cfg.model)
    assert type(model).__name__ == "DINO" and model.backbone.channels == dims[1:]
    assert list(model.backbone.out_features) == ["stage2", "stage3", "stage4"] and model.backbone.strides == [8, 16, 32]


def test_a_dino_neck_that_does_not_fit_the_backbone_is_named():
    """ChannelMapper keeps no ``in_channels``: the check reads them from the model config."""
    cfg = Config.fromfile(str(CONFIGS / "dino_4scale_convnextv2_atto_12e_coco.py"))
    cfg.model.neck.in_channels = [40, 80, 160]
    with torch.device("meta"):
        model = MODELS.build(copy.deepcopy(cfg.model))
    with pytest.raises(ValueError, match=re.escape("neck.in_channels=[40, 80, 160] does not match the backbone: MMDetConvNeXt "
                                                   "(arch='convnextv2_atto', outputs ['stage2', 'stage3', 'stage4']) gives 3 maps "
                                                   "with channels [80, 160, 320], so set model.neck.in_channels=[80, 160, 320]")):
        check_in_channels(model, cfg.model)


def test_dino_smoke_config_inherits_the_recipe_and_builds_for_real():
    path = CONFIGS / "smoke" / "dino_4scale_convnextv2_atto_shapes.py"
    assert re.search(r"^# Smoke config: ", path.read_text()) and re.search(r"^# Published: none", path.read_text(), re.M)
    cfg = Config.fromfile(str(path))
    assert cfg.model.type == "DINO" and cfg.model.backbone.arch == "convnextv2_atto" and cfg.model.backbone.init_cfg is None
    assert tuple(cfg.model.backbone.out_indices) == (1, 2, 3) and cfg.model.neck.in_channels == [80, 160, 320]
    assert cfg.train_cfg.type == "IterBasedTrainLoop" and cfg.optim_wrapper.type == "OptimWrapper"
    assert cfg.train_dataloader.dataset.metainfo.classes == ("circle", "square", "triangle")
    model = MODELS.build(copy.deepcopy(cfg.model))
    check_in_channels(model, cfg.model)
    assert model.bbox_head.cls_branches[0].out_features == 3


def test_smoke_config_builds_for_real_and_is_small():
    cfg = Config.fromfile(str(CONFIGS / "smoke" / "mask_rcnn_convnextv2_atto_fpn_shapes.py"))
    assert re.search(r"^# Published: none", (CONFIGS / "smoke" / "mask_rcnn_convnextv2_atto_fpn_shapes.py").read_text(), re.M)
    assert cfg.train_cfg.type == "IterBasedTrainLoop" and cfg.optim_wrapper.type == "OptimWrapper"
    assert cfg.train_dataloader.dataset.metainfo.classes == ("circle", "square", "triangle")
    model = MODELS.build(cfg.model)
    check_in_channels(model)
    assert sum(p.numel() for p in model.parameters()) < 10_000_000


# --- configs for other weight families: the ImageNet recipe, their own weights and normalisation -------
def test_dinov3_mask_rcnn_config_is_the_imagenet_recipe_on_dinov3_weights():
    from convnext_backbone.families import get_family, normalisation_mismatch

    assert sorted(p.relative_to(CONFIGS).as_posix() for p in (CONFIGS / "dinov3").glob("*.py")) == \
        ["dinov3/mask_rcnn_convnext_tiny_fpn_3x_coco.py"]
    path = CONFIGS / "dinov3" / "mask_rcnn_convnext_tiny_fpn_3x_coco.py"
    published = [line for line in path.read_text().splitlines() if line.startswith("# Published")]
    assert len(published) == 1 and published[0].startswith("# Published: none")
    assert "mask_rcnn_convnext_tiny_patch4_window7_mstrain_480-800_adamw_3x_coco_in1k.py" in path.read_text()
    cfg, ref = Config.fromfile(str(path)), Config.fromfile(str(CONFIGS / "mask_rcnn_convnext_tiny_fpn_3x_coco.py"))
    assert ROOT_RUNNERS.get(cfg.runner_type) is mmdet_convnext.ConvNeXtDetRunner
    bb = cfg.model.backbone
    assert (bb.arch, bb.weights_family, bb.init_cfg.checkpoint) == \
        ("convnext_tiny", "dinov3_lvd1689m", "facebook/dinov3-convnext-tiny-pretrain-lvd1689m")
    # the official ConvNeXt-T Mask R-CNN 3x recipe, exactly (weights and family aside)
    for key in ("optim_wrapper", "param_scheduler", "train_cfg", "train_dataloader", "auto_scale_lr"):
        assert cfg[key] == ref[key], key
    assert {k: v for k, v in bb.items() if k not in ("weights_family", "init_cfg")} == \
        {k: v for k, v in ref.model.backbone.items() if k != "init_cfg"}
    assert RECIPE["convnext_tiny"][:2] == (bb.drop_path_rate, cfg.optim_wrapper.paramwise_cfg.decay_rate)
    pre = cfg.model.data_preprocessor  # mmcv loads BGR; bgr_to_rgb makes the mean/std RGB
    assert normalisation_mismatch(get_family(bb.weights_family), pre.mean, pre.std, scale=255, bgr=not pre.bgr_to_rgb) is None
    with torch.device("meta"):
        model = MODELS.build(cfg.model)
    check_in_channels(model)
    assert model.backbone.config.weights_family == "dinov3_lvd1689m"
