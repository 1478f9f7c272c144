# Mask R-CNN with FPN on a ConvNeXt backbone: MMDetection's packaged Mask R-CNN with the
# backbone replaced. Each config in configs/mmdet/ sets the size (arch, drop path, weights) and
# the FPN's in_channels.
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py']
model = dict(
    backbone=dict(
        _delete_=True,
        type='MMDetConvNeXt',
        arch='convnext_tiny',
        out_indices=(0, 1, 2, 3),  # stage1..stage4, strides 4, 8, 16, 32
        drop_path_rate=0.4),
    neck=dict(in_channels=[96, 192, 384, 768]))
