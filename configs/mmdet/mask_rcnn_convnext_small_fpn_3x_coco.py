# Mask R-CNN + ConvNeXt-S FPN on COCO, 3x (36 epochs, lr x0.1 at epochs 27 and 33).
# Published: none (the official release has no ConvNeXt-S Mask R-CNN 3x result).
# Recipe: no official config; drop path and layer decay of the official Cascade config of this size, lr of the official Mask R-CNN T.
_base_ = ['./_base_/mask_rcnn_convnext_fpn.py', './_base_/coco_instance_convnext_3x.py']
model = dict(
    backbone=dict(
        arch='convnext_small',
        drop_path_rate=0.6,
        layer_scale_init_value=1.0,  # as the official configs; the checkpoint overwrites it
        # ImageNet-1K weights, official release; any format the core converts works (path, URL, HF hub id).
        init_cfg=dict(type='Pretrained', checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_small_1k_224.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
optim_wrapper = dict(
    optimizer=dict(lr=0.0001),
    paramwise_cfg=dict(decay_rate=0.7, num_layers=12))  # official: 6 for T, 12 for S and B
