# Mask R-CNN + ConvNeXt V2-T FPN on COCO, 1x (12 epochs, lr x0.1 at epochs 8 and 11).
# Published: none (no COCO Mask R-CNN 1x result has been published for ConvNeXt V2-T).
# Recipe: no official one; the V1 recipe of the nearest size (drop path scaled down for the 2-2-6-2 / 2-2-8-2 models), on the 1x schedule.
_base_ = ['./_base_/mask_rcnn_convnext_fpn.py', './_base_/coco_instance_convnext_1x.py']
model = dict(
    backbone=dict(
        arch='convnextv2_tiny',
        drop_path_rate=0.4,
        # ImageNet-1K weights, official release; any format the core converts works (path, URL, HF hub id).
        init_cfg=dict(type='Pretrained', checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_tiny_1k_224_ema.pt')),
    neck=dict(in_channels=[96, 192, 384, 768]))
optim_wrapper = dict(
    constructor='ConvNeXtV2LearningRateDecayOptimizerConstructor',  # + GRN gamma/beta without weight decay
    optimizer=dict(lr=0.0001),
    paramwise_cfg=dict(decay_rate=0.95, num_layers=6))  # 3 + ceil(stage-3 depth / 3), the official rule
