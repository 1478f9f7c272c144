"""Detectron2 adapter, against real Detectron2: registry, shapes, errors, optimizer rule,
checkpoint loading, augmentation, class-specific Cascade, LazyConfig."""
from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import detectron2  # noqa: F401  (a missing framework must fail loudly, not skip)
import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.data import transforms as T
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone, build_model
from detectron2.modeling.backbone import build_resnet_backbone
from detectron2.utils.events import EventStorage

import detectron2_convnext as d2c
from convnext_backbone import CheckpointError, ConvNextBackbone, ConvNextForImageClassification
from convnext_backbone.arch import config_from_preset_name
from detectron2_convnext.optim import convnext_layer_id, default_num_layers

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "detectron2"
DEMO_CFG = CONFIGS / "demo" / "mask_rcnn_convnextv2_atto_fpn_shapes.yaml"


def make_cfg(config_file: Path | None = DEMO_CFG, *opts):
    cfg = get_cfg()
    d2c.add_convnext_config(cfg)
    if config_file:
        cfg.merge_from_file(str(config_file))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def image_batch(n: int = 2, h: int = 128, w: int = 160, with_targets: bool = True):
    """Detectron2 inputs with one square instance each (box + polygon mask)."""
    from detectron2.structures import BitMasks, Boxes, Instances

    batch = []
    for i in range(n):
        item = {"image": torch.rand(3, h, w) * 255, "height": h, "width": w}
        if with_targets:
            inst = Instances((h, w))
            inst.gt_boxes = Boxes(torch.tensor([[20.0 + i, 30.0, 80.0, 90.0]]))
            inst.gt_classes = torch.tensor([i % 3])
            m = torch.zeros(1, h, w, dtype=torch.bool)
            m[0, 30:90, 20 + i:80] = True
            inst.gt_masks = BitMasks(m)
            item["instances"] = inst
        batch.append(item)
    return batch


# --- registry, output shapes, FPN -------------------------------------------------------------
def test_builders_registered_and_output_shape():
    assert "build_convnext_backbone" in BACKBONE_REGISTRY and "build_convnext_fpn_backbone" in BACKBONE_REGISTRY
    cfg = make_cfg(None, "MODEL.BACKBONE.NAME", "build_convnext_backbone", "MODEL.CONVNEXT.NAME", "convnextv2_atto")
    bb = build_backbone(cfg)
    assert isinstance(bb, d2c.D2ConvNeXt) and isinstance(bb, ConvNextBackbone)
    shapes = bb.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "stage1": (40, 4), "stage2": (80, 8), "stage3": (160, 16), "stage4": (320, 32)
    }
    assert bb.size_divisibility == 32
    out = bb(torch.rand(1, 3, 96, 128))
    assert list(out) == ["stage1", "stage2", "stage3", "stage4"]
    for name, t in out.items():
        assert tuple(t.shape) == (1, shapes[name].channels, 96 // shapes[name].stride, 128 // shapes[name].stride)
    # official parameter names, so official checkpoints and the layer-decay rule apply unchanged
    names = dict(bb.named_parameters())
    assert "stages.2.5.grn.gamma" in names and "downsample_layers.0.0.weight" in names and "norm3.weight" in names


def test_fpn_receives_stage_maps_with_expected_strides():
    cfg = make_cfg()
    fpn = build_backbone(cfg)
    seen = {}
    fpn.bottom_up.register_forward_hook(lambda m, i, o: seen.update({k: tuple(v.shape) for k, v in o.items()}))
    h, w = 128, 192
    out = fpn(torch.rand(2, 3, h, w))
    bottom = fpn.bottom_up.output_shape()
    assert list(seen) == list(cfg.MODEL.FPN.IN_FEATURES)
    for name, shape in seen.items():  # what FPN was given: map sizes match the strides it was promised
        assert shape[1] == bottom[name].channels and shape[2:] == (h // bottom[name].stride, w // bottom[name].stride)
    assert [fpn.bottom_up.output_shape()[f].stride for f in fpn.in_features] == [4, 8, 16, 32]
    strides = {k: s.stride for k, s in fpn.output_shape().items()}
    assert strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    for name, t in out.items():
        assert tuple(t.shape) == (2, cfg.MODEL.FPN.OUT_CHANNELS, h // strides[name], w // strides[name])


def test_explicit_architecture_and_v1_layer_scale():
    cfg = make_cfg(None, "MODEL.BACKBONE.NAME", "build_convnext_backbone", "MODEL.CONVNEXT.NAME", "",
                   "MODEL.CONVNEXT.VERSION", "v1", "MODEL.CONVNEXT.DEPTHS", "[1, 1, 2, 1]",
                   "MODEL.CONVNEXT.DIMS", "[16, 32, 64, 128]", "MODEL.CONVNEXT.LAYER_SCALE_INIT_VALUE", "0.5",
                   "MODEL.CONVNEXT.OUT_FEATURES", '["stage2", "stage4"]')
    bb = build_backbone(cfg)
    assert bb.config.depths == [1, 1, 2, 1] and bb.config.hidden_sizes == [16, 32, 64, 128]
    assert torch.all(bb.stages[2][1].gamma == 0.5) and bb.stages[0][0].grn is None
    assert {k: s.stride for k, s in bb.output_shape().items()} == {"stage2": 8, "stage4": 32}


def test_frozen_stages_and_gradient_checkpointing_reach_the_core():
    cfg = make_cfg(None, "MODEL.CONVNEXT.FROZEN_STAGES", "1", "MODEL.CONVNEXT.GRADIENT_CHECKPOINTING", "True",
                   "MODEL.CONVNEXT.DROP_PATH_RATE", "0.2", "MODEL.BACKBONE.NAME", "build_convnext_backbone")
    bb = build_backbone(cfg)
    frozen = [n for n, p in bb.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("downsample_layers.0.", "stages.0.")) for n in frozen)
    assert bb.config.gradient_checkpointing and bb.config.drop_path_rate == 0.2
    bb.train()
    sum(t.sum() for t in bb(torch.rand(1, 3, 64, 64)).values()).backward()
    assert bb.stages[0][0].dwconv.weight.grad is None and bb.stages[3][0].dwconv.weight.grad is not None


# --- bad config stops with a message naming the problem -------------------------------------
@pytest.mark.parametrize(
    "opts, match",
    [
        (["MODEL.CONVNEXT.OUT_FEATURES", '["stage1", "res5"]'], r"MODEL\.CONVNEXT.*res5"),
        (["MODEL.CONVNEXT.NAME", "convnextv2_gigantic"], r"MODEL\.CONVNEXT.*convnextv2_gigantic"),
        (["MODEL.CONVNEXT.DEPTHS", "[3, 3, 9, 3]"], r"either NAME .* or DEPTHS/DIMS"),
        (["MODEL.CONVNEXT.OUT_FEATURES", '["stage2", "stage3", "stage4"]'], r"MODEL\.FPN\.IN_FEATURES .*\['stage1'\].*does not produce"),
        (["MODEL.FPN.IN_FEATURES", '["stage1", "stage2", "res4"]'], r"MODEL\.FPN\.IN_FEATURES .*\['res4'\]"),
    ],
)
def test_bad_config_is_a_clear_error(opts, match):
    with pytest.raises(ValueError, match=match):
        build_backbone(make_cfg(DEMO_CFG, *opts))


EXPLICIT_ARCH = ["MODEL.CONVNEXT.NAME", "", "MODEL.CONVNEXT.VERSION", "v2"]


@pytest.mark.parametrize(
    "opts, match",
    [
        (EXPLICIT_ARCH + ["MODEL.CONVNEXT.DEPTHS", "[2, 2, -1, 2]", "MODEL.CONVNEXT.DIMS", "[40, 80, 160, 320]"],
         r"invalid MODEL\.CONVNEXT config: DEPTHS must be a list of integers >= 1, one per stage .*got \[2, 2, -1, 2\]"),
        (EXPLICIT_ARCH + ["MODEL.CONVNEXT.DEPTHS", "[2, 2, 6, 2]", "MODEL.CONVNEXT.DIMS", "[0, 80, 160, 320]"],
         r"invalid MODEL\.CONVNEXT config: DIMS must be a list of integers >= 1, one per stage .*got \[0, 80, 160, 320\]"),
        (EXPLICIT_ARCH + ["MODEL.CONVNEXT.DEPTHS", "[2, 2, 6, 2]", "MODEL.CONVNEXT.DIMS", "[40, 80, 160]"],
         r"DIMS \(\[40, 80, 160\]\) and DEPTHS \(\[2, 2, 6, 2\]\) must both have num_stages=4 entries"),
        (["MODEL.CONVNEXT.FROZEN_STAGES", "7"], r"invalid MODEL\.CONVNEXT config: FROZEN_STAGES must be in \[-1, 4\]"),
        (["MODEL.CONVNEXT.NAME", "convnext_tiny", "MODEL.CONVNEXT.LAYER_SCALE_INIT_VALUE", "-1.0"],
         r"LAYER_SCALE_INIT_VALUE must be a number >= 0 .*got -1\.0"),
    ],
)
def test_bad_convnext_keys_are_named_with_the_allowed_range(opts, match):
    with pytest.raises(ValueError, match=match):
        d2c.convnext_config_from_cfg(make_cfg(DEMO_CFG, *opts))


def test_values_set_in_code_are_checked_not_cast():
    """yacs checks types only on merge: values set in code reached int()/float()/bool() (1.5 -> 1, "no" -> True)."""
    for key, value, match in [("FROZEN_STAGES", 1.5, r"FROZEN_STAGES must be an integer, got 1\.5"),
                              ("NORM_OUTPUTS", "no", r"NORM_OUTPUTS must be True or False .*got 'no'"),
                              ("DROP_PATH_RATE", "0.1", r"DROP_PATH_RATE must be in \[0, 1\) .*got '0\.1'")]:
        cfg = make_cfg(DEMO_CFG)
        cfg.MODEL.CONVNEXT[key] = value
        with pytest.raises(ValueError, match=rf"invalid MODEL\.CONVNEXT config: {match}"):
            d2c.convnext_config_from_cfg(cfg)


# --- optimizer: the official layer-wise rule, per parameter -----------------------------------
def _lr_wd_by_name(model, optimizer):
    by_id = {}
    for g in optimizer.param_groups:
        for p in g["params"]:
            assert id(p) not in by_id, "a parameter is in two groups"
            by_id[id(p)] = (g["lr"], g["weight_decay"])
    return {n: by_id[id(p)] for n, p in model.named_parameters() if p.requires_grad}


def _expected_tiny_exponent(name: str) -> int:
    """ConvNeXt-T, num_layers 6, written out from the official get_num_layer_layer_wise: lr = base * 0.95**e."""
    p = "backbone.bottom_up."
    if not name.startswith((p + "downsample_layers.", p + "stages.")):
        return 0  # output norms, FPN, RPN, ROI heads: layer 7 = full lr
    parts = name[len(p):].split(".")
    kind, i = parts[0], int(parts[1])
    if kind == "downsample_layers":
        return {0: 7, 1: 5, 2: 4, 3: 1}[i]
    block = int(parts[2])
    return {0: 6, 1: 5, 2: 4 - block // 3, 3: 1}[i]


def test_adamw_layer_decay_matches_official_rule_per_parameter():
    cfg = make_cfg(CONFIGS / "mask_rcnn_convnext_tiny_fpn_3x_coco.yaml")
    with torch.device("meta"):  # the rule needs names and shapes only
        cfg.MODEL.DEVICE = "meta"
        model = build_model(cfg)
    opt = d2c.build_convnext_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
    got = _lr_wd_by_name(model, opt)
    assert len(got) == sum(1 for p in model.parameters() if p.requires_grad)
    base, rate = cfg.SOLVER.BASE_LR, cfg.SOLVER.LAYER_DECAY.RATE
    assert (base, rate, cfg.SOLVER.LAYER_DECAY.NUM_LAYERS) == (1e-4, 0.95, 6)
    params = dict(model.named_parameters())
    for name, (lr, wd) in got.items():
        assert lr == pytest.approx(base * rate ** _expected_tiny_exponent(name), rel=1e-9), name
        no_decay = params[name].ndim <= 1 or name.endswith(".bias")  # norms, biases, layer scale gamma
        assert wd == (0.0 if no_decay else 0.05), name
    assert got["backbone.bottom_up.stages.2.8.gamma"][1] == 0.0
    assert got["backbone.bottom_up.downsample_layers.0.0.weight"][0] == pytest.approx(1e-4 * 0.95**7)
    # the auto NUM_LAYERS reproduces the official values
    assert default_num_layers([3, 3, 9, 3]) == 6 and default_num_layers([3, 3, 27, 3]) == 12


def test_stage_wise_decay_and_no_decay_on_grn():
    cfg = make_cfg(DEMO_CFG, "SOLVER.LAYER_DECAY.RATE", "0.5", "SOLVER.LAYER_DECAY.TYPE", "stage_wise")
    model = build_model(cfg)
    got = _lr_wd_by_name(model, d2c.build_convnext_optimizer(cfg, model))
    n = default_num_layers([2, 2, 6, 2])
    assert n == 5
    base = cfg.SOLVER.BASE_LR
    p = "backbone.bottom_up."
    for name, (lr, wd) in got.items():
        if name.startswith(p + "downsample_layers."):
            exp = n + 1
        elif name.startswith(p + "stages."):
            exp = n + 1 - (int(name.split(".")[3]) + 1)
        else:
            exp = 0
        assert lr == pytest.approx(base * 0.5**exp, rel=1e-9), name
        if ".grn." in name:
            assert wd == 0.0, name  # GRN gamma/beta are 4-D, excluded by name
    assert got[p + "stages.3.1.pwconv1.weight"][1] == cfg.SOLVER.WEIGHT_DECAY


def test_optimizer_choices_and_errors():
    cfg = make_cfg(DEMO_CFG, "SOLVER.OPTIMIZER", "SGD")
    model = build_model(cfg)
    assert isinstance(d2c.build_convnext_optimizer(cfg, model), torch.optim.SGD)
    cfg.SOLVER.OPTIMIZER = "LAMB"
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER must be 'ADAMW' or 'SGD'"):
        d2c.build_convnext_optimizer(cfg, model)
    cfg.SOLVER.OPTIMIZER, cfg.SOLVER.LAYER_DECAY.TYPE = "ADAMW", "block_wise"
    with pytest.raises(ValueError, match="SOLVER.LAYER_DECAY.TYPE"):
        d2c.build_convnext_optimizer(cfg, model)
    assert convnext_layer_id("stages.2.7.dwconv.weight", 12) == 5


# --- checkpoints ---------------------------------------------------------------------------------
@pytest.fixture()
def atto_model():
    torch.manual_seed(0)
    return build_model(make_cfg())


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_classification_checkpoint_initialises_backbone_only(atto_model, tmp_path, caplog):
    cls = ConvNextForImageClassification(config_from_preset_name("convnextv2_atto", num_labels=10))
    torch.nn.init.normal_(cls.stages[1][0].dwconv.weight)
    path = tmp_path / "convnextv2_atto_1k_224_ema.pt"
    torch.save({"model": cls.state_dict()}, path)
    before = _state(atto_model)
    ck = d2c.ConvNextCheckpointer(atto_model)
    with caplog.at_level(logging.INFO):
        ck.resume_or_load(str(path), resume=False)
    after = atto_model.state_dict()
    for k, v in cls.state_dict().items():
        if not k.startswith(("head.", "norm.")):
            assert torch.equal(after["backbone.bottom_up." + k], v), k
    for k in before:  # FPN, RPN, ROI heads and output norms left at init
        if not k.startswith("backbone.bottom_up.") or k.startswith("backbone.bottom_up.norm"):
            assert torch.equal(after[k], before[k]), k
    rep = ck.load_report
    assert rep.ok and len(rep.loaded) == len([k for k in cls.state_dict() if not k.startswith(("head.", "norm."))])
    assert {k.split(".")[0] for k in rep.initialized} == {"norm0", "norm1", "norm2", "norm3"}
    assert {k.split(".")[0] for k, _ in rep.dropped} == {"head", "norm"}
    log = caplog.text
    assert "official ConvNeXt checkpoint" in log and f"loaded: {len(rep.loaded)} backbone tensors" in log
    assert "left at init: backbone.bottom_up.norm0" in log and "roi_heads" in log and "proposal_generator" in log


def test_save_pretrained_directory_loads(atto_model, tmp_path):
    src = ConvNextBackbone(config_from_preset_name("convnextv2_atto", out_indices=[1, 2, 3, 4]))
    torch.nn.init.normal_(src.norm2.weight)
    src.save_pretrained(tmp_path / "atto")
    d2c.ConvNextCheckpointer(atto_model).load(str(tmp_path / "atto"))
    assert torch.equal(atto_model.backbone.bottom_up.norm2.weight, src.norm2.weight)


def test_detectron2_checkpoint_round_trip_is_atomic(atto_model, tmp_path):
    ck = d2c.ConvNextCheckpointer(atto_model, str(tmp_path))
    ck.save("model_0000009", iteration=9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000009.pth"]  # no temp files
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    torch.manual_seed(1)
    other = build_model(make_cfg())
    extra = d2c.ConvNextCheckpointer(other, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 9
    for k, v in atto_model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k


def test_weights_of_another_architecture_are_refused(atto_model, tmp_path):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    resnet = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    pkl = tmp_path / "R-18.pkl"  # the Detectron2 model-zoo layout: numpy arrays under "model"
    with open(pkl, "wb") as f:
        pickle.dump({"model": {"backbone.bottom_up." + k: v.numpy() for k, v in resnet.state_dict().items()},
                     "__author__": "Detectron2 Model Zoo"}, f)
    with pytest.raises(CheckpointError, match=r"neither a Detectron2 checkpoint of this model nor a ConvNeXt checkpoint.*res2"):
        d2c.ConvNextCheckpointer(atto_model).load(str(pkl))


def test_detectron2_checkpoint_of_another_size_is_refused(atto_model, tmp_path):
    femto = build_model(make_cfg(DEMO_CFG, "MODEL.CONVNEXT.NAME", "convnextv2_femto"))
    d2c.ConvNextCheckpointer(femto, str(tmp_path)).save("femto")
    want = (r"(?s)does not fit this model's ConvNeXt backbone.*"
            r"shape mismatch for backbone.bottom_up.downsample_layers.0.0.weight: checkpoint \[48, 3, 4, 4\] vs model \[40, 3, 4, 4\]")
    with pytest.raises(CheckpointError, match=want):
        d2c.ConvNextCheckpointer(atto_model).load(str(tmp_path / "femto.pth"))


def _explicit_arch_model(depths, dims):
    return build_model(make_cfg(DEMO_CFG, "MODEL.CONVNEXT.NAME", "", "MODEL.CONVNEXT.VERSION", "v2",
                                "MODEL.CONVNEXT.DEPTHS", str(depths), "MODEL.CONVNEXT.DIMS", str(dims)))


@pytest.mark.parametrize("depths, dims, key", [
    ([2, 2, 8, 2], [40, 80, 160, 320], r"stages\.2\.6\."),  # deeper: was loaded with D2's "not used" warning, truncated
    ([2, 2, 6, 2, 1], [40, 80, 160, 320, 640], r"(stages|downsample_layers)\.4\."),  # a fifth stage
])
def test_detectron2_checkpoint_of_a_deeper_or_longer_backbone_is_refused(atto_model, tmp_path, caplog, depths, dims, key):
    d2c.ConvNextCheckpointer(_explicit_arch_model(depths, dims), str(tmp_path)).save("other")
    before = {k: v.clone() for k, v in atto_model.state_dict().items()}
    arch = rf"convnextv2\(depths={re.escape(str(depths))}, hidden_sizes={re.escape(str(dims))}\)"
    with pytest.raises(CheckpointError, match=(
            rf"(?s)does not fit this model's ConvNeXt backbone: checkpoint is {arch}, model is convnextv2_atto\..*"
            rf"unexpected key in checkpoint: backbone\.bottom_up\.{key}.*STRICT_LOAD False")):
        d2c.ConvNextCheckpointer(atto_model).load(str(tmp_path / "other.pth"))
    assert all(torch.equal(before[k], v) for k, v in atto_model.state_dict().items())  # refused before loading
    with caplog.at_level(logging.WARNING):  # asked for: what fits loads, the rest is a warning
        d2c.ConvNextCheckpointer(atto_model, strict=False).load(str(tmp_path / "other.pth"))
    assert "non-strict load: the rest is loaded" in caplog.text
    saved = torch.load(tmp_path / "other.pth", weights_only=True)["model"]
    for k in ("backbone.bottom_up.stages.0.0.dwconv.weight", "backbone.fpn_output2.weight"):
        assert torch.equal(atto_model.state_dict()[k], saved[k])


# --- augmentation --------------------------------------------------------------------------------
def test_detr_style_augmentation_produces_valid_instances(tmp_path):
    from PIL import Image

    cfg = make_cfg(CONFIGS / "mask_rcnn_convnextv2_atto_fpn_3x_coco.yaml")
    augs = d2c.build_train_augmentation(cfg)
    assert isinstance(augs[0], T.RandomFlip) and isinstance(augs[1], d2c.RandomChoice)
    h, w = 480, 640
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    branches = {"resize": 0, "crop": 0}
    np.random.seed(0)
    for _ in range(24):
        aug_input = T.AugInput(image.copy())
        tfm = T.AugmentationList(augs)(aug_input)
        crops = [t for t in tfm.transforms if isinstance(t, T.CropTransform)]
        branches["crop" if crops else "resize"] += 1
        for c in crops:  # absolute_range (384, 600)
            assert 384 <= c.h <= 600 and 384 <= c.w <= 600
        out_h, out_w = aug_input.image.shape[:2]
        assert min(out_h, out_w) in range(480, 801, 32) and max(out_h, out_w) <= 1333
    assert branches["crop"] > 0 and branches["resize"] > 0, branches
    # through Detectron2's own DatasetMapper, from a file: every instance lies inside the new image
    Image.fromarray(image).save(tmp_path / "img.png")
    poly = [100.0, 100.0, 400.0, 100.0, 400.0, 300.0, 100.0, 300.0]
    record = {"file_name": str(tmp_path / "img.png"), "height": h, "width": w, "image_id": 1,
              "annotations": [{"bbox": [100, 100, 300, 200], "bbox_mode": 1, "category_id": 0, "segmentation": [poly]}]}
    mapper = d2c.build_train_mapper(cfg)
    assert mapper.recompute_boxes  # crops cut masks: boxes are re-derived from them
    for _ in range(8):
        out = mapper(dict(record))
        img, inst = out["image"], out["instances"]
        assert img.shape[0] == 3 and min(img.shape[1:]) >= 480
        b = inst.gt_boxes.tensor
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= img.shape[2]).all() and (b[:, 3] <= img.shape[1]).all()
        assert len(inst.gt_masks) == len(b)


def test_random_choice_needs_branches():
    with pytest.raises(ValueError, match="at least one branch"):
        d2c.RandomChoice([])


# --- Cascade with class-specific regression ------------------------------------------------------
def test_class_specific_cascade_trains_and_infers():
    cfg = make_cfg(CONFIGS / "cascade_mask_rcnn_convnextv2_atto_fpn_3x_coco.yaml",
                   "MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
                   "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "32",
                   "MODEL.CONVNEXT.DROP_PATH_RATE", "0.0", "MODEL.FPN.OUT_CHANNELS", "32",  # narrow: a CPU test
                   "MODEL.ROI_BOX_HEAD.CONV_DIM", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32")
    torch.manual_seed(0)
    model = build_model(cfg)
    heads = model.roi_heads
    assert isinstance(heads, d2c.ClassSpecificCascadeROIHeads) and heads.stage_loss_weights == (1.0, 0.5, 0.25)
    assert all(p.bbox_pred.out_features == 3 * 4 for p in heads.box_predictor)  # one box per class
    assert type(heads.box_head[0].conv_norm_relus[0].norm).__name__ == "SyncBatchNorm"
    assert heads.box_predictor[0].box_reg_loss_type == "giou" and heads.box_predictor[0].loss_weight["loss_box_reg"] == 10.0
    batch = image_batch(2)
    model.train()

    def losses_with(weights):
        heads.stage_loss_weights = weights
        torch.manual_seed(0)
        with EventStorage():
            return model(batch)

    weighted, plain = losses_with((1.0, 0.5, 0.25)), losses_with((1.0, 1.0, 1.0))
    assert {f"loss_box_reg_stage{i}" for i in range(3)} <= set(weighted)
    assert all(torch.isfinite(v) for v in weighted.values())
    for k, w in (("loss_box_reg_stage1", 0.5), ("loss_cls_stage2", 0.25), ("loss_cls_stage0", 1.0)):
        assert weighted[k].item() == pytest.approx(w * plain[k].item(), rel=1e-5), k
    sum(weighted.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model(image_batch(1, with_targets=False))[0]["instances"]
    assert out.pred_boxes.tensor.shape[1] == 4 and out.pred_masks.shape[1:] == (128, 160)


# --- LazyConfig -----------------------------------------------------------------------------------
def test_lazyconfig_backbone_inside_detectron2_mask_rcnn_fpn():
    lazy = LazyConfig.load(str(CONFIGS / "lazy" / "mask_rcnn_convnext_tiny_fpn_3x_coco.py"))
    assert lazy.model.backbone.bottom_up._target_ is d2c.D2ConvNeXt
    # same LazyConfig, a smaller backbone to keep the test fast
    lazy.model.backbone.bottom_up.name = "convnextv2_atto"
    del lazy.model.backbone.bottom_up.layer_scale_init_value  # V2 has no layer scale
    lazy.model.roi_heads.num_classes = 3
    lazy.model.roi_heads.batch_size_per_image = 64
    lazy.model.proposal_generator.post_nms_topk = (128, 64)
    model = instantiate(lazy.model)
    assert isinstance(model.backbone.bottom_up, d2c.D2ConvNeXt)
    assert list(model.backbone.in_features) == ["stage1", "stage2", "stage3", "stage4"]
    model.train()
    with EventStorage():
        losses = model(image_batch(2))
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        model(image_batch(1, with_targets=False))
    lazy.optimizer.params.model = model
    opt = instantiate(lazy.optimizer)
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    stem = model.backbone.bottom_up.downsample_layers[0][0].weight
    n = default_num_layers([2, 2, 6, 2]) if lazy.optimizer.params.num_layers == 0 else lazy.optimizer.params.num_layers
    assert lrs[id(stem)] == pytest.approx(1e-4 * 0.95 ** (n + 1))
    mapper = instantiate(lazy.dataloader.train.mapper)
    assert isinstance(mapper.augmentations.augs[1], d2c.RandomChoice) and mapper.recompute_boxes
