# Cascade Mask R-CNN + ConvNeXt-B FPN on COCO, 3x (36 epochs, lr x0.1 at epochs 27 and 33).
# Published (official ConvNeXt object_detection README and paper Table 3; ImageNet-1K weights, COCO val2017): box AP 52.7 / mask AP 45.6.
# Recipe: official configs/convnext/cascade_mask_rcnn_convnext_base_patch4_window7_mstrain_480-800_giou_4conv1f_adamw_3x_coco_in1k.py.
_base_ = ['./_base_/cascade_mask_rcnn_convnext_fpn.py', './_base_/coco_instance_convnext_3x.py']
model = dict(
    backbone=dict(
        arch='convnext_base',
        drop_path_rate=0.7,
        layer_scale_init_value=1.0,  # as the official configs; the checkpoint overwrites it
        # ImageNet-1K weights, official release; any format the core converts works (path, URL, HF hub id).
        init_cfg=dict(type='Pretrained', checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_base_1k_224.pth')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
optim_wrapper = dict(
    optimizer=dict(lr=0.0002),
    paramwise_cfg=dict(decay_rate=0.8, num_layers=12))  # official: 6 for T, 12 for S and B
