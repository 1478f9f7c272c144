# Mask R-CNN + ConvNeXt-B FPN on COCO, 1x (12 epochs, lr x0.1 at epochs 8 and 11).
# Published: none (the official release has no ConvNeXt-B Mask R-CNN 1x result).
# Recipe: no official config; drop path and layer decay of the official Cascade config of this size, lr of the official Mask R-CNN T, on the 1x schedule.
_base_ = ['./_base_/mask_rcnn_convnext_fpn.py', './_base_/coco_instance_convnext_1x.py']
model = dict(
    backbone=dict(
        arch='convnext_base',
        drop_path_rate=0.7,
        layer_scale_init_value=1.0,  # as the official configs; the checkpoint overwrites it
        # ImageNet-1K weights, official release; any format the core converts works (path, URL, HF hub id).
        init_cfg=dict(type='Pretrained', checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_base_1k_224.pth')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
optim_wrapper = dict(
    optimizer=dict(lr=0.0001),
    paramwise_cfg=dict(decay_rate=0.8, num_layers=12))  # official: 6 for T, 12 for S and B
