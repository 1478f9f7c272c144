"""Every MMSegmentation config parses with mmengine, carries the official recipe, and builds.

Models are built on the meta device (no memory, no init time: V2-Huge UperNet alone would be
~3 GB and tens of seconds on this CPU); the small ones are also built for real and run.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS

import mmseg_convnext  # noqa: F401
from convnext_backbone.presets import PRESETS
from mmseg_convnext import check_segmentor

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "mmseg"

# file stem -> (preset, crop, drop_path, num_layers, lr, amp, published single-scale mIoU or None)
EXPECTED = {
    "upernet_convnext_tiny_512x512_160k_ade20k": ("convnext_tiny", 512, 0.4, 6, 1e-4, True, "46.0"),
    "upernet_convnext_small_512x512_160k_ade20k": ("convnext_small", 512, 0.3, 12, 1e-4, True, "48.7"),
    "upernet_convnext_base_512x512_160k_ade20k": ("convnext_base", 512, 0.4, 12, 1e-4, True, "49.1"),
    "upernet_convnext_base_640x640_160k_ade20k": ("convnext_base", 640, 0.4, 12, 1e-4, True, "52.6"),
    "upernet_convnext_large_640x640_160k_ade20k": ("convnext_large", 640, 0.4, 12, 1e-4, False, "53.2"),
    "upernet_convnext_xlarge_640x640_160k_ade20k": ("convnext_xlarge", 640, 0.4, 12, 8e-5, False, "53.6"),
    "upernet_convnextv2_atto_512x512_160k_ade20k": ("convnextv2_atto", 512, 0.1, 6, 1e-4, True, None),
    "upernet_convnextv2_femto_512x512_160k_ade20k": ("convnextv2_femto", 512, 0.1, 6, 1e-4, True, None),
    "upernet_convnextv2_pico_512x512_160k_ade20k": ("convnextv2_pico", 512, 0.1, 6, 1e-4, True, None),
    "upernet_convnextv2_nano_512x512_160k_ade20k": ("convnextv2_nano", 512, 0.1, 6, 1e-4, True, None),
    "upernet_convnextv2_tiny_512x512_160k_ade20k": ("convnextv2_tiny", 512, 0.4, 6, 1e-4, True, None),
    "upernet_convnextv2_base_640x640_160k_ade20k": ("convnextv2_base", 640, 0.4, 12, 1e-4, True, "52.1"),
    "upernet_convnextv2_large_640x640_160k_ade20k": ("convnextv2_large", 640, 0.4, 12, 1e-4, False, "53.7"),
    "upernet_convnextv2_huge_640x640_160k_ade20k": ("convnextv2_huge", 640, 0.4, 12, 8e-5, False, "55.0"),
}


# Mask2Former: file stem -> (preset, crop, drop_path, weights under dl.fbaipublicfiles.com/convnext/). The head,
# optimizer, schedule and data are MMSegmentation's Mask2Former ADE20K recipe (the ResNet/Swin configs); the
# backbone settings are the official ConvNeXt ADE20K ones (drop path per size, the UperNet configs' weights).
MASK2FORMER = {
    "mask2former_convnext_tiny_512x512_160k_ade20k": ("convnext_tiny", 512, 0.4, "convnext_tiny_1k_224.pth"),
    "mask2former_convnext_small_512x512_160k_ade20k": ("convnext_small", 512, 0.3, "convnext_small_1k_224.pth"),
    "mask2former_convnext_base_640x640_160k_ade20k": ("convnext_base", 640, 0.4, "convnext_base_22k_224.pth"),
    "mask2former_convnext_large_640x640_160k_ade20k": ("convnext_large", 640, 0.4, "convnext_large_22k_224.pth"),
    "mask2former_convnextv2_tiny_512x512_160k_ade20k": ("convnextv2_tiny", 512, 0.4, "convnextv2/im1k/convnextv2_tiny_1k_224_ema.pt"),
    "mask2former_convnextv2_base_640x640_160k_ade20k": ("convnextv2_base", 640, 0.4, "convnextv2/im22k/convnextv2_base_22k_224_ema.pt"),
    "mask2former_convnextv2_large_640x640_160k_ade20k": ("convnextv2_large", 640, 0.4, "convnextv2/im22k/convnextv2_large_22k_224_ema.pt"),
}


def test_the_config_folder_holds_exactly_the_expected_files():
    found = {p.stem for p in CONFIGS.glob("upernet_*.py")}
    assert found == set(EXPECTED)
    assert {p.stem for p in CONFIGS.glob("*.py")} == set(EXPECTED) | set(MASK2FORMER)


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_config_parses_carries_the_official_recipe_and_builds(stem):
    preset, crop, drop_path, num_layers, lr, amp, published = EXPECTED[stem]
    path = CONFIGS / f"{stem}.py"
    text = path.read_text()
    published_lines = [line for line in text.splitlines() if line.startswith("# Published")]
    assert len(published_lines) == 1, "one comment line quoting the published mIoU (or saying there is none)"
    if published:
        assert f"mIoU {published}" in published_lines[0]
    else:
        assert "none" in published_lines[0]

    cfg = Config.fromfile(str(path))
    assert cfg.custom_imports.imports == ["mmseg_convnext"] and cfg.custom_imports.allow_failed_imports is False
    assert cfg.runner_type == "ConvNeXtSegRunner"
    bb = cfg.model.backbone
    assert bb.type == "MMSegConvNeXt" and bb.arch == preset and bb.drop_path_rate == drop_path
    assert tuple(bb.out_indices) == (0, 1, 2, 3)
    assert bb.init_cfg.type == "Pretrained" and bb.init_cfg.checkpoint.startswith("https://dl.fbaipublicfiles.com/convnext/")
    assert set(bb) <= {"type", "arch", "out_indices", "drop_path_rate", "layer_scale_init_value", "init_cfg"}

    # the recipe
    ow = cfg.optim_wrapper
    assert ow.type == ("AmpOptimWrapper" if amp else "OptimWrapper")
    assert ow.optimizer == dict(type="AdamW", lr=lr, betas=(0.9, 0.999), weight_decay=0.05)
    assert ow.paramwise_cfg == dict(decay_rate=0.9, decay_type="stage_wise", num_layers=num_layers)
    v2 = preset.startswith("convnextv2")
    assert ow.constructor == ("ConvNeXtV2LearningRateDecayOptimizerConstructor" if v2 else "LearningRateDecayOptimizerConstructor")
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.begin, warmup.end, warmup.by_epoch) == ("LinearLR", 1e-6, 0, 1500, False)
    assert (poly.type, poly.power, poly.eta_min, poly.begin, poly.end, poly.by_epoch) == ("PolyLR", 1.0, 0.0, 1500, 160000, False)
    assert cfg.train_cfg.max_iters == 160000 and cfg.train_dataloader.batch_size == 2
    crops = [t.crop_size for t in cfg.train_dataloader.dataset.pipeline if t.type == "RandomCrop"]
    assert crops == [(crop, crop)] and cfg.model.data_preprocessor.size == (crop, crop)
    assert cfg.train_dataloader.dataset.type == "ADE20KDataset"
    assert cfg.val_evaluator.type == "IoUMetric"
    stride = {512: 341, 640: 426}[crop]
    assert cfg.model.test_cfg == dict(mode="slide", crop_size=(crop, crop), stride=(stride, stride))
    assert cfg.model.decode_head.num_classes == 150 and cfg.model.auxiliary_head.num_classes == 150

    version, size = preset.split("_")
    depths, dims = PRESETS[version][size]
    assert cfg.model.decode_head.in_channels == list(dims) and cfg.model.auxiliary_head.in_channels == dims[2]
    with torch.device("meta"):
        model = MODELS.build(cfg.model)
    assert model.backbone.config.depths == list(depths) and model.backbone.channels == list(dims)
    assert model.backbone.config.drop_path_rate == drop_path
    check_segmentor(model)


def test_smallest_config_builds_for_real_and_segments():
    cfg = Config.fromfile(str(CONFIGS / "upernet_convnextv2_atto_512x512_160k_ade20k.py"))
    cfg.model.backbone.init_cfg = None  # no downloads here
    model = MODELS.build(cfg.model).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 64), mode="tensor")
    assert tuple(logits.shape) == (1, 150, 16, 16)


def test_smoke_config_inherits_the_recipe_and_shrinks_it():
    cfg = Config.fromfile(str(CONFIGS / "smoke" / "upernet_convnextv2_atto_64x64_synthetic.py"))
    assert cfg.model.backbone.arch == "convnextv2_atto" and cfg.model.backbone.init_cfg is None
    assert cfg.optim_wrapper.constructor == "ConvNeXtV2LearningRateDecayOptimizerConstructor"
    assert cfg.train_dataloader.dataset.type == "ADE20KDataset" and cfg.train_dataloader.dataset.data_root == "data/synthetic_ade"
    assert any(t.type == "LoadAnnotations" and t.reduce_zero_label for t in cfg.train_dataloader.dataset.pipeline)
    assert re.search(r"^# Published: none", (CONFIGS / "smoke" / "upernet_convnextv2_atto_64x64_synthetic.py").read_text(), re.M)


# --- configs for other weight families: the ImageNet recipe, their own weights and normalisation -------
# file -> (family, the ImageNet config whose recipe it follows, checkpoint, frozen trunk)
FAMILY_CONFIGS = {
    "dinov3/upernet_convnext_tiny_512x512_160k_ade20k": (
        "dinov3_lvd1689m", "upernet_convnext_tiny_512x512_160k_ade20k", "facebook/dinov3-convnext-tiny-pretrain-lvd1689m", False),
    "clip/upernet_convnext_large_frozen_640x640_160k_ade20k": (
        "clip_laion2b", "upernet_convnext_large_640x640_160k_ade20k", "timm/convnext_large_mlp.clip_laion2b_ft_soup_320", True),
}


def test_weight_family_configs_are_the_ones_promised():
    found = {p.relative_to(CONFIGS).with_suffix("").as_posix() for d in ("dinov3", "clip") for p in (CONFIGS / d).glob("*.py")}
    assert found == set(FAMILY_CONFIGS)


@pytest.mark.parametrize("stem", sorted(FAMILY_CONFIGS))
def test_weight_family_config_recipe_weights_and_normalisation(stem):
    from convnext_backbone.families import get_family, normalisation_mismatch

    family, twin, checkpoint, frozen = FAMILY_CONFIGS[stem]
    path = CONFIGS / f"{stem}.py"
    published = [line for line in path.read_text().splitlines() if line.startswith("# Published")]
    assert len(published) == 1 and published[0].startswith("# Published: none")
    assert f"../{twin}.py" in path.read_text()  # whose recipe, said in the header
    cfg, ref = Config.fromfile(str(path)), Config.fromfile(str(CONFIGS / f"{twin}.py"))
    bb, rb = cfg.model.backbone, ref.model.backbone
    assert (bb.type, bb.arch, bb.weights_family, bb.init_cfg.checkpoint) == ("MMSegConvNeXt", rb.arch, family, checkpoint)
    for key in ("optim_wrapper", "param_scheduler", "train_cfg", "train_dataloader", "val_dataloader", "runner_type"):
        assert cfg[key] == ref[key], key
    assert cfg.model.decode_head == ref.model.decode_head and cfg.model.test_cfg == ref.model.test_cfg
    if frozen:
        assert (bb.frozen_stages, bb.norm_outputs, bb.drop_path_rate) == (4, False, 0.0)
    else:
        assert {k: v for k, v in bb.items() if k not in ("weights_family", "init_cfg")} == \
            {k: v for k, v in rb.items() if k != "init_cfg"}
    pre = cfg.model.data_preprocessor  # mmcv loads BGR; bgr_to_rgb makes the mean/std RGB
    assert normalisation_mismatch(get_family(family), pre.mean, pre.std, scale=255, bgr=not pre.bgr_to_rgb) is None
    assert {k: v for k, v in pre.items() if k not in ("mean", "std")} == \
        {k: v for k, v in ref.model.data_preprocessor.items() if k not in ("mean", "std")}
    with torch.device("meta"):
        model = MODELS.build(cfg.model)
    check_segmentor(model)
    assert model.backbone.config.weights_family == family
    assert all(not p.requires_grad for p in model.backbone.parameters()) == frozen


def test_frozen_clip_config_preflight_stops_imagenet_pixels():
    """The family is named in the config, so the train command's preflight compares it with the data
    preprocessor before any weights or data are read."""
    from mmseg_convnext.train import preflight

    cfg = Config.fromfile(str(CONFIGS / "clip" / "upernet_convnext_large_frozen_640x640_160k_ade20k.py"))
    cfg.optim_wrapper.type = "OptimWrapper"
    preflight(cfg)  # CLIP weights, CLIP pixels
    cfg.model.data_preprocessor.mean = [123.675, 116.28, 103.53]
    cfg.model.data_preprocessor.std = [58.395, 57.12, 57.375]
    with pytest.raises(ValueError, match=r"the weights are clip_laion2b .*set by the backbone's weights_family"):
        preflight(cfg)
    cfg.strict_normalisation = False
    preflight(cfg)  # opted out: a warning


@pytest.mark.parametrize("stem", sorted(MASK2FORMER))
def test_mask2former_config_carries_the_recipe_and_builds_on_meta(stem):
    preset, crop, drop_path, weights = MASK2FORMER[stem]
    path = CONFIGS / f"{stem}.py"
    published = [line for line in path.read_text().splitlines() if line.startswith("# Published")]
    assert len(published) == 1 and "none" in published[0]
    assert re.search(r"^# Recipe: MMSegmentation's Mask2Former", path.read_text(), re.M)

    cfg = Config.fromfile(str(path))
    assert cfg.custom_imports.imports == ["mmseg_convnext", "mmdet.models"] and cfg.custom_imports.allow_failed_imports is False
    assert cfg.runner_type == "ConvNeXtSegRunner"
    bb = cfg.model.backbone
    assert bb.type == "MMSegConvNeXt" and bb.arch == preset and bb.drop_path_rate == drop_path and tuple(bb.out_indices) == (0, 1, 2, 3)
    assert bb.init_cfg == dict(type="Pretrained", checkpoint=f"https://dl.fbaipublicfiles.com/convnext/{weights}")
    assert set(bb) <= {"type", "arch", "out_indices", "drop_path_rate", "layer_scale_init_value", "init_cfg"}
    version, size = preset.split("_")
    depths, dims = PRESETS[version][size]

    # MMSegmentation's Mask2Former head, unchanged
    head = cfg.model.decode_head
    assert (head.type, head.in_channels, head.strides, head.num_classes, head.num_queries) == \
        ("Mask2FormerHead", list(dims), [4, 8, 16, 32], 150, 100)
    assert (head.feat_channels, head.out_channels, head.num_transformer_feat_level) == (256, 256, 3)
    assert head.pixel_decoder.type == "mmdet.MSDeformAttnPixelDecoder" and head.pixel_decoder.encoder.num_layers == 6
    assert head.transformer_decoder.num_layers == 9 and head.train_cfg.num_points == 12544
    assert (head.loss_cls.loss_weight, head.loss_mask.loss_weight, head.loss_dice.loss_weight) == (2.0, 5.0, 5.0)
    assert head.loss_cls.class_weight == [1.0] * 150 + [0.1]
    assert cfg.model.test_cfg == dict(mode="whole") and "auxiliary_head" not in cfg.model

    # the optimizer: AdamW, backbone lr x0.1 (no layer-wise decay), ConvNeXt's no-decay set in the backbone
    ow = cfg.optim_wrapper
    assert ow.type == "OptimWrapper" and ow.constructor == "ConvNeXtOptimWrapperConstructor"
    assert ow.optimizer == dict(type="AdamW", lr=1e-4, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999))
    assert ow.clip_grad == dict(max_norm=0.01, norm_type=2)
    no_decay = dict(lr_mult=1.0, decay_mult=0.0)
    assert ow.paramwise_cfg == dict(custom_keys=dict(backbone=dict(lr_mult=0.1, decay_mult=1.0), query_embed=no_decay,
                                                     query_feat=no_decay, level_embed=no_decay), norm_decay_mult=0.0)
    assert [(s.type, s.power, s.eta_min, s.begin, s.end, s.by_epoch) for s in cfg.param_scheduler] == \
        [("PolyLR", 0.9, 0, 0, 160000, False)]
    assert cfg.train_cfg.max_iters == 160000 and cfg.train_dataloader.batch_size == 2 and cfg.auto_scale_lr.base_batch_size == 16

    # the data: large-scale jitter around the crop size, the crop, whole-image test at that shorter side
    pipeline = cfg.train_dataloader.dataset.pipeline
    assert [t.type for t in pipeline] == ["LoadImageFromFile", "LoadAnnotations", "RandomChoiceResize", "RandomCrop",
                                          "RandomFlip", "PhotoMetricDistortion", "PackSegInputs"]
    resize, random_crop = pipeline[2], pipeline[3]
    assert resize.scales == [int(crop * x * 0.1) for x in range(5, 21)] and resize.max_size == 4 * crop
    assert resize.resize_type == "ResizeShortestEdge"
    assert random_crop.crop_size == (crop, crop) and random_crop.cat_max_ratio == 0.75
    test_resize = cfg.test_dataloader.dataset.pipeline[1]
    assert test_resize.type == "Resize" and test_resize.scale == (4 * crop, crop)
    assert cfg.model.data_preprocessor.size == (crop, crop) and cfg.val_evaluator.type == "IoUMetric"

    with torch.device("meta"):
        model = MODELS.build(cfg.model)
    assert model.backbone.config.depths == list(depths) and model.backbone.channels == list(dims)
    check_segmentor(model, cfg.model)
    cfg.model.decode_head.in_channels = list(dims[1:])
    with pytest.raises(ValueError, match=re.escape(f"decode_head.in_channels={list(dims[1:])} does not match the backbone")):
        check_segmentor(model, cfg.model)  # Mask2FormerHead keeps no in_channels: read from the config


def test_mask2former_optimizer_gives_the_backbone_its_multiplier_and_the_convnext_no_decay_set():
    """The recipe's paramwise_cfg through ConvNeXtOptimWrapperConstructor, on a real (small) model."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope

    cfg = Config.fromfile(str(CONFIGS / "smoke" / "mask2former_convnextv2_atto_64x64_synthetic.py"))
    recipe = Config.fromfile(str(CONFIGS / "mask2former_convnextv2_tiny_512x512_160k_ade20k.py"))
    model = MODELS.build(cfg.model)
    with DefaultScope.overwrite_default_scope("mmseg"):
        wrapper = build_optim_wrapper(model, recipe.optim_wrapper)
    names = {id(p): n for n, p in model.named_parameters()}
    got = {names[id(g["params"][0])]: (g["lr"], g["weight_decay"]) for g in wrapper.optimizer.param_groups}
    assert set(got) == {n for n, p in model.named_parameters() if p.requires_grad}
    for name, (lr, wd) in got.items():
        if name.startswith("backbone."):
            exempt = name.endswith((".bias", ".gamma", ".beta")) or model.get_parameter(name).ndim <= 1
            assert (lr, wd) == (pytest.approx(1e-5), 0.0 if exempt else 0.05), name
        elif any(k in name for k in ("query_embed", "query_feat", "level_embed")):
            assert (lr, wd) == (1e-4, 0.0), name
    backbone = {n: wd for n, (lr, wd) in got.items() if n.startswith("backbone.")}
    assert backbone["backbone.stages.0.0.grn.gamma"] == 0.0 and backbone["backbone.downsample_layers.0.1.weight"] == 0.0
    assert backbone["backbone.norm3.weight"] == 0.0 and backbone["backbone.stages.3.1.pwconv1.weight"] == 0.05
    # the head's norm layers (norm_decay_mult=0) and its other weights, as mmengine sets them
    head_norm = [wd for n, (lr, wd) in got.items() if n.startswith("decode_head.") and ".norm" in n]
    assert head_norm and set(head_norm) == {0.0}
    assert got["decode_head.cls_embed.weight"] == (1e-4, 0.05)


def test_mask2former_smoke_config_inherits_the_recipe_and_shrinks_it():
    path = CONFIGS / "smoke" / "mask2former_convnextv2_atto_64x64_synthetic.py"
    assert re.search(r"^# Smoke config: ", path.read_text()) and re.search(r"^# Published: none", path.read_text(), re.M)
    cfg = Config.fromfile(str(path))
    assert cfg.model.backbone.arch == "convnextv2_atto" and cfg.model.backbone.init_cfg is None
    assert cfg.model.decode_head.type == "Mask2FormerHead" and cfg.optim_wrapper.constructor == "ConvNeXtOptimWrapperConstructor"
    assert cfg.train_dataloader.dataset.type == "ADE20KDataset" and cfg.train_dataloader.dataset.data_root == "data/synthetic_ade"
    model = MODELS.build(cfg.model)
    check_segmentor(model, cfg.model)
    assert sum(p.numel() for p in model.parameters()) < 20_000_000
