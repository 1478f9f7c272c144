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


def test_the_config_folder_holds_exactly_the_expected_files():
    found = {p.stem for p in CONFIGS.glob("upernet_*.py")}
    assert found == set(EXPECTED)


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
