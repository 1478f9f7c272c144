# Cascade Mask R-CNN + ConvNeXt V2-B FPN on COCO, 3x (36 epochs, lr x0.1 at epochs 27 and 33).
# Published: none (no COCO Cascade Mask R-CNN 3x result has been published for ConvNeXt V2-B).
# Recipe: no official one; the V1 recipe of the nearest size (drop path scaled down for the 2-2-6-2 / 2-2-8-2 models).
_base_ = ['./_base_/cascade_mask_rcnn_convnext_fpn.py', './_base_/coco_instance_convnext_3x.py']
model = dict(
    backbone=dict(
        arch='convnextv2_base',
        drop_path_rate=0.7,
        # ImageNet-1K weights, official release; any format the core converts works (path, URL, HF hub id).
        init_cfg=dict(type='Pretrained', checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_base_1k_224_ema.pt')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
optim_wrapper = dict(
    constructor='ConvNeXtV2LearningRateDecayOptimizerConstructor',  # + GRN gamma/beta without weight decay
    optimizer=dict(lr=0.0002),
    paramwise_cfg=dict(decay_rate=0.8, num_layers=12))  # 3 + ceil(stage-3 depth / 3), the official rule
