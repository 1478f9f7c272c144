"""The MMDetection adapter in-process: one shared OpenMMLab backbone, detectors, lr decay, errors.

Real MMDetection/mmengine objects throughout (registry builds, MaskRCNN/FPN, MMDetection's own
LearningRateDecayOptimizerConstructor, its data preprocessor); no mocks. Small presets, 64-128
pixel inputs.
"""
from __future__ import annotations

import re
from pathlib import Path

import mmdet
import pytest
import torch
from mmdet.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.config import Config
from mmengine.registry import DefaultScope

import mmdet_convnext  # noqa: F401  (registers MMDetConvNeXt & co)
import mmseg_convnext  # noqa: F401
import openmmlab_convnext
from convnext_backbone import CheckpointError, ConvNextBackbone, ConvNextForImageClassification
from convnext_backbone.arch import config_from_arch
from mmdet_convnext import MMDetConvNeXt
from mmseg_convnext import MMSegConvNeXt

from helpers import official_layer_id, randomize_

# MMDetection's packaged base config (what `mmdet::_base_/models/mask-rcnn_r50_fpn.py` names)
MASK_RCNN = Config.fromfile(str(Path(mmdet.__file__).parent / ".mim" / "configs" / "_base_" / "models" / "mask-rcnn_r50_fpn.py"))



@pytest.fixture(autouse=True)
def _mmdet_default_scope():
    """Build in MMDetection's registries, and leave mmengine's global default scope as it was
    (the MMSegmentation tests in the same process build by unscoped names)."""
    with DefaultScope.overwrite_default_scope("mmdet"):
        yield

def detector(backbone: dict, neck_in=(40, 80, 160, 320)) -> torch.nn.Module:
    """MMDetection's Mask R-CNN FPN (its packaged base config) on our backbone, 3 classes."""
    cfg = MASK_RCNN.model.copy()
    cfg.backbone = dict(type="MMDetConvNeXt", **backbone)
    cfg.neck.in_channels = list(neck_in)
    cfg.roi_head.bbox_head.num_classes = 3
    cfg.roi_head.mask_head.num_classes = 3
    return MODELS.build(cfg)


# ------------------------------------------------------------------------------ one shared class
def test_mmdet_and_mmseg_backbones_are_one_class_registered_twice():
    assert MMDetConvNeXt.__bases__ == (openmmlab_convnext.OpenMMLabConvNeXt,)
    assert MMSegConvNeXt.__bases__ == (openmmlab_convnext.OpenMMLabConvNeXt,)
    for cls in (MMDetConvNeXt, MMSegConvNeXt):  # registration only: no method of their own
        assert not [k for k, v in vars(cls).items() if callable(v) or isinstance(v, property)], cls
    det, seg = MODELS.build(dict(type="MMDetConvNeXt", arch="convnextv2_atto")), MMSegConvNeXt(arch="convnextv2_atto")
    assert isinstance(det, ConvNextBackbone) and "ConvNeXt" in type(det).__name__
    det.load_state_dict(randomize_(seg).state_dict())
    x = torch.randn(1, 3, 64, 64)
    assert all(torch.equal(a, b) for a, b in zip(det.eval()(x), seg.eval()(x)))


def test_arch_names_resolve_through_the_one_core_function():
    for arch, version, expected in [("convnextv2_atto", None, "convnextv2"), ("Tiny", None, "convnext"),
                                    ("tiny", "v2", "convnextv2"), (dict(depths=[1, 1, 3, 1], dims=[8, 16, 32, 64]), "v2", "convnextv2")]:
        m = MODELS.build(dict(type="MMDetConvNeXt", arch=arch, version=version))
        ref = config_from_arch(arch, version)
        assert m.config.model_type == expected == ref.model_type
        assert (m.config.depths, m.config.hidden_sizes) == (ref.depths, ref.hidden_sizes)


# ------------------------------------------------------------------------------ the detector
def test_mask_rcnn_trains_a_step_and_predicts_with_the_backbone():
    from mmdet.testing import demo_mm_inputs

    torch.manual_seed(0)
    det = detector(dict(arch="convnextv2_atto", out_indices=(0, 1, 2, 3)))
    det.init_weights()
    packed = demo_mm_inputs(2, [(3, 128, 128), (3, 96, 128)], num_items=[3, 2], num_classes=3, with_mask=True)
    data = det.data_preprocessor(packed, training=True)
    losses = det.loss(data["inputs"], data["data_samples"])
    assert {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask"} <= set(losses)
    total = sum(v if torch.is_tensor(v) else sum(v) for k, v in losses.items() if k.startswith("loss"))
    assert torch.isfinite(total)
    total.backward()
    assert det.backbone.stages[0][0].dwconv.weight.grad.abs().sum() > 0
    assert det.backbone.stages[0][0].grn.gamma.grad is not None
    det.eval()
    with torch.no_grad():
        out = det.predict(det.data_preprocessor(packed, training=False)["inputs"], data["data_samples"])
    assert len(out) == 2 and {"bboxes", "scores", "labels", "masks"} <= set(out[0].pred_instances.keys())


def test_features_reach_mmcv_roi_align_in_the_layout_it_reads():
    """mmcv's compiled RoIAlign reads raw NCHW memory: a channels-last map (what the core computes
    in) gives silently wrong ROI features, and a neck's convolutions keep the layout they get."""
    import torchvision
    from mmcv.ops import RoIAlign

    det = detector(dict(arch="convnextv2_atto", channels_last=True)).eval()
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert all(m.is_contiguous() for m in det.backbone(x))
        feats = det.extract_feat(x)
    rois = torch.tensor([[0, 8.0, 8.0, 60.0, 70.0], [0, 30.0, 20.0, 120.0, 100.0]])
    for f, stride in zip(feats[:4], (4, 8, 16, 32)):
        ours = RoIAlign((7, 7), 1 / stride, 0, aligned=True)(f, rois)
        ref = torchvision.ops.roi_align(f.contiguous(), rois, (7, 7), 1 / stride, 0, aligned=True)
        torch.testing.assert_close(ours, ref)


def test_frozen_stages_and_with_cp_inside_a_detector():
    det = detector(dict(arch="convnextv2_atto", frozen_stages=1, with_cp=True))
    det.train()
    frozen = {n for n, p in det.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in det.named_parameters() if n.startswith(("backbone.downsample_layers.0.", "backbone.stages.0."))}
    assert not det.backbone.stages[0].training and det.backbone.stages[1].training
    assert det.backbone.gradient_checkpointing


# ------------------------------------------------------------------------------ init_cfg Pretrained
def test_init_cfg_pretrained_loads_official_and_mmdet_checkpoints(tmp_path):
    cls = randomize_(ConvNextForImageClassification(config_from_arch("convnextv2_atto", layer_norm_eps=1e-6)), seed=3)
    official = tmp_path / "convnextv2_atto_1k_224_ema.pt"
    torch.save({"model": cls.state_dict()}, official)
    det = detector(dict(arch="convnextv2_atto", init_cfg=dict(type="Pretrained", checkpoint=str(official))))
    det.init_weights()  # what mmengine's Runner calls
    ref = cls.state_dict()
    own = det.state_dict()
    trunk = [k for k in ref if k.startswith(("downsample_layers.", "stages."))]
    assert trunk and all(torch.equal(own["backbone." + k], ref[k]) for k in trunk)
    # an MMDetection training checkpoint (backbone.* + neck + heads + meta), with the prefix
    mm = tmp_path / "epoch_36.pth"
    torch.save({"meta": {"epoch": 36}, "state_dict": det.state_dict()}, mm)
    m = MODELS.build(dict(type="MMDetConvNeXt", arch="convnextv2_atto",
                          init_cfg=dict(type="Pretrained", checkpoint=str(mm), prefix="backbone.")))
    m.init_weights()
    assert all(torch.equal(m.state_dict()[k], own["backbone." + k]) for k in m.state_dict())
    with pytest.raises(CheckpointError, match=r"shape mismatch for stages\.0\.0\.dwconv\.weight"):
        MODELS.build(dict(type="MMDetConvNeXt", arch="convnextv2_femto",
                          init_cfg=dict(type="Pretrained", checkpoint=str(official)))).init_weights()


# ------------------------------------------------------------------------------ layer-wise lr decay
def _groups_by_param(model, constructor: str, decay_type: str, num_layers: int, rate=0.7, base_lr=2e-4, wd=0.05):
    cons = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type=constructor,
        optim_wrapper_cfg=dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=base_lr, weight_decay=wd)),
        paramwise_cfg=dict(decay_rate=rate, decay_type=decay_type, num_layers=num_layers)))
    wrapper = cons(model)
    by_id = {id(p): g for g in wrapper.optimizer.param_groups for p in g["params"]}
    return {n: (by_id[id(p)]["lr"], by_id[id(p)]["weight_decay"]) for n, p in model.named_parameters() if id(p) in by_id}


@pytest.mark.parametrize("decay_type", ["layer_wise", "stage_wise"])
def test_mmdet_lr_decay_constructor_gives_every_parameter_the_official_rate(decay_type):
    # ConvNeXt-T depths (3, 3, 9, 3), narrow: the layer ids depend on the depths only
    num_layers, rate, base = 6, 0.7, 2e-4
    det = detector(dict(arch=dict(depths=[3, 3, 9, 3], dims=[16, 32, 64, 128]), frozen_stages=0), neck_in=(16, 32, 64, 128))
    got = _groups_by_param(det, "LearningRateDecayOptimizerConstructor", decay_type, num_layers, rate, base)
    trainable = {n for n, p in det.named_parameters() if p.requires_grad}
    assert set(got) == trainable and not any(n.startswith("backbone.downsample_layers.0.") for n in got)  # frozen stem
    for name, p in det.named_parameters():
        if name not in got:
            continue
        lr, wd = got[name]
        assert lr == pytest.approx(base * rate ** (num_layers + 1 - official_layer_id(name, decay_type, num_layers)), rel=1e-12), name
        assert wd == (0.0 if p.ndim == 1 or name.endswith(".bias") else 0.05), name
    # spot checks with the numbers written out
    assert got["roi_head.bbox_head.fc_cls.weight"] == (pytest.approx(base), 0.05)
    assert got["neck.lateral_convs.0.conv.weight"][0] == pytest.approx(base)
    assert got["backbone.norm3.weight"] == (pytest.approx(base), 0.0)  # det output norms: head lr, as official
    assert got["backbone.stages.0.0.gamma"][1] == 0.0  # V1 layer scale: no weight decay
    if decay_type == "layer_wise":
        assert got["backbone.stages.2.8.pwconv1.weight"][0] == pytest.approx(base * rate ** 2)  # id 3 + 8 // 3 = 5
        assert got["backbone.downsample_layers.3.1.weight"][0] == pytest.approx(base * rate)  # id 6
        assert got["backbone.stages.0.1.dwconv.weight"][0] == pytest.approx(base * rate ** 6)  # id 1
    else:
        assert got["backbone.downsample_layers.2.1.weight"][0] == pytest.approx(base * rate ** 7)  # id 0
        assert got["backbone.stages.3.2.pwconv2.weight"][0] == pytest.approx(base * rate ** 3)  # id 4


def test_v2_constructor_exempts_grn_from_weight_decay_and_changes_nothing_else():
    det = detector(dict(arch="convnextv2_atto"))
    mmdet_groups = _groups_by_param(det, "LearningRateDecayOptimizerConstructor", "layer_wise", 5)
    ours = _groups_by_param(det, "ConvNeXtV2LearningRateDecayOptimizerConstructor", "layer_wise", 5)
    assert set(ours) == set(mmdet_groups)
    grn = [n for n in ours if re.search(r"\.grn\.(gamma|beta)$", n)]
    assert len(grn) == 2 * 12  # 2 + 2 + 6 + 2 blocks
    for name in ours:
        if name in grn:
            assert mmdet_groups[name][1] == 0.05 and ours[name] == (mmdet_groups[name][0], 0.0), name
        else:
            assert ours[name] == mmdet_groups[name], name
    v1 = detector(dict(arch=dict(depths=[1, 1, 3, 1], dims=[16, 32, 64, 128])), neck_in=(16, 32, 64, 128))
    assert _groups_by_param(v1, "ConvNeXtV2LearningRateDecayOptimizerConstructor", "layer_wise", 4) == \
        _groups_by_param(v1, "LearningRateDecayOptimizerConstructor", "layer_wise", 4)


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(arch="convnextv2_gigantic"), r"MMDetConvNeXt backbone: unknown arch 'convnextv2_gigantic'.*convnextv2_atto"),
        (dict(arch="atto", version="v1"), r"'atto' does not exist in ConvNeXt V1"),
        (dict(arch="convnextv2_atto", out_indices=[0, 4]), r"invalid out_indices \[4\].*4 stages.*0\.\.3"),
        (dict(arch="convnextv2_atto", layer_scale_init_value=1.0), r"not allowed for ConvNeXt V2"),
        (dict(arch="convnextv2_atto", frozen_stages=5), r"frozen_stages must be in \[-1, 4\]"),
    ],
)
def test_bad_backbone_arguments_name_the_problem(kw, message):
    with pytest.raises(ValueError, match=message):
        MODELS.build(dict(type="MMDetConvNeXt", **kw))


def test_neck_in_channels_that_do_not_match_the_backbone_are_named():
    det = detector(dict(arch="convnextv2_atto"), neck_in=(96, 192, 384, 768))
    with pytest.raises(ValueError, match=re.escape(
            "neck.in_channels=[96, 192, 384, 768] does not match the backbone: MMDetConvNeXt (arch='convnextv2_atto', "
            "outputs ['stage1', 'stage2', 'stage3', 'stage4']) gives 4 maps with channels [40, 80, 160, 320], "
            "so set model.neck.in_channels=[40, 80, 160, 320]")):
        openmmlab_convnext.check_in_channels(det)
    openmmlab_convnext.check_in_channels(detector(dict(arch="convnextv2_atto")))  # the right ones pass
