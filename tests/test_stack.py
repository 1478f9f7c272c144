"""The framework stack itself works: real Detectron2 and MMSegmentation models train a step.

No mocks and no skips: if a framework is missing or broken these tests fail, loudly.
Inputs are tiny (128x128) so each test takes seconds on a 2-core CPU.
"""
import math

import numpy as np
import pytest
import torch

IMG = 128


def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def _assert_finite_losses(losses: dict) -> torch.Tensor:
    assert losses, "no losses returned"
    total = 0
    for name, value in losses.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            assert torch.isfinite(v).all(), f"loss {name} is not finite: {v}"
            if "loss" in name:
                total = total + v.sum()
    assert isinstance(total, torch.Tensor) and total.requires_grad
    return total


def _assert_gradients(model: torch.nn.Module) -> None:
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, f"{len(missing)} trainable parameters got no gradient, e.g. {missing[:5]}"
    bad = [n for n, p in trainable if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in {bad[:5]}"
    assert any(p.grad.abs().sum() > 0 for _, p in trainable)


# ----------------------------------------------------------------------------- Detectron2


def _d2_cfg():
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.INPUT.MIN_SIZE_TRAIN = (IMG,)
    cfg.INPUT.MAX_SIZE_TRAIN = IMG
    cfg.INPUT.MIN_SIZE_TEST = IMG
    cfg.INPUT.MAX_SIZE_TEST = IMG
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 64
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.freeze()
    return cfg


def _d2_batch(mask_format: str):
    from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks

    batch = []
    for i in range(2):
        boxes = torch.tensor([[10.0, 12.0, 70.0, 80.0], [50.0, 40.0, 120.0, 110.0]]) + 3 * i
        inst = Instances((IMG, IMG))
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.tensor([0, 2])
        if mask_format == "polygon":
            # one polygon per instance: a diamond inside its box
            polys = []
            for x0, y0, x1, y1 in boxes.tolist():
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                polys.append([np.array([cx, y0, x1, cy, cx, y1, x0, cy], dtype=np.float64)])
            inst.gt_masks = PolygonMasks(polys)
        else:
            masks = torch.zeros(len(boxes), IMG, IMG, dtype=torch.bool)
            for k, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
                masks[k, y0:y1, x0:x1] = True
            inst.gt_masks = BitMasks(masks)
        image = torch.randint(0, 256, (3, IMG, IMG), dtype=torch.uint8).float()
        batch.append({"image": image, "height": IMG, "width": IMG, "instances": inst})
    return batch


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_detectron2_mask_rcnn_trains_and_infers(mask_format):
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    _seed()
    model = build_model(_d2_cfg())
    model.train()
    with EventStorage(0):  # the trainer provides this; the heads log to it
        losses = model(_d2_batch(mask_format))
    assert {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"} <= set(losses)
    _assert_finite_losses(losses).backward()
    _assert_gradients(model)

    # Inference exercises the postprocessing path (nms/roi_align from torchvision without _C).
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": torch.rand(3, IMG, IMG) * 255, "height": 64, "width": 96}])
    inst = out["instances"]
    assert inst.image_size == (64, 96)
    assert inst.pred_masks.shape[1:] == (64, 96)


# -------------------------------------------------------------------------- MMSegmentation


def test_mmcv_ops_compiled_nms_runs():
    import mmcv.ops
    from mmcv.ops import nms, roi_align

    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    assert dets.shape == (2, 5)

    feats = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8)
    rois = torch.tensor([[0.0, 0, 0, 4, 4]])
    out = roi_align(feats, rois, (2, 2), 1.0, 2, "avg", True)
    assert out.shape == (1, 1, 2, 2) and torch.isfinite(out).all()
    assert mmcv.ops.__file__


def _mmseg_upernet_cfg(num_classes: int):
    norm_cfg = dict(type="BN", requires_grad=True)
    return dict(
        type="EncoderDecoder",
        data_preprocessor=dict(
            type="SegDataPreProcessor",
            mean=[123.675, 116.28, 103.53],
            std=[58.395, 57.12, 57.375],
            bgr_to_rgb=True,
            pad_val=0,
            seg_pad_val=255,
            size=(IMG, IMG),
        ),
        backbone=dict(
            type="ResNetV1c",
            depth=18,
            num_stages=4,
            out_indices=(0, 1, 2, 3),
            norm_cfg=norm_cfg,
            style="pytorch",
            contract_dilation=True,
        ),
        decode_head=dict(
            type="UPerHead",
            in_channels=[64, 128, 256, 512],
            in_index=[0, 1, 2, 3],
            pool_scales=(1, 2, 3, 6),
            channels=64,
            dropout_ratio=0.1,
            num_classes=num_classes,
            norm_cfg=norm_cfg,
            align_corners=False,
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
        ),
        auxiliary_head=dict(
            type="FCNHead",
            in_channels=256,
            in_index=2,
            channels=32,
            num_convs=1,
            concat_input=False,
            dropout_ratio=0.1,
            num_classes=num_classes,
            norm_cfg=norm_cfg,
            align_corners=False,
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4),
        ),
        train_cfg=dict(),
        test_cfg=dict(mode="whole"),
    )


def test_mmseg_upernet_trains_and_predicts():
    from mmengine.config import ConfigDict
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules

    register_all_modules()
    _seed()
    num_classes = 5
    # ConfigDict, as a config file gives: the segmentor reads test_cfg.mode as an attribute.
    model = MODELS.build(ConfigDict(_mmseg_upernet_cfg(num_classes)))
    model.train()

    inputs, samples = [], []
    for _ in range(2):
        inputs.append(torch.randint(0, 256, (3, IMG, IMG), dtype=torch.uint8))
        seg = torch.randint(0, num_classes, (1, IMG, IMG), dtype=torch.int64)
        seg[:, :8] = 255  # ignore label, as ADE20K's reduce_zero_label produces
        sample = SegDataSample(metainfo=dict(img_shape=(IMG, IMG), ori_shape=(IMG, IMG)))
        sample.gt_sem_seg = PixelData(data=seg)
        samples.append(sample)
    data = model.data_preprocessor({"inputs": inputs, "data_samples": samples}, training=True)
    losses = model(**data, mode="loss")
    assert {"decode.loss_ce", "aux.loss_ce"} <= set(losses)
    loss, log_vars = model.parse_losses(losses)
    assert math.isfinite(loss.item())
    loss.backward()
    _assert_gradients(model)

    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor({"inputs": inputs[:1], "data_samples": samples[:1]}, training=False)
        (pred,) = model(**data, mode="predict")
    assert pred.pred_sem_seg.data.shape == (1, IMG, IMG)
    assert int(pred.pred_sem_seg.data.max()) < num_classes
