# Mask R-CNN + ConvNeXt-T FPN on COCO, 1x (12 epochs, lr x0.1 at epochs 8 and 11).
# Published: none (the official release has no ConvNeXt-T Mask R-CNN 1x result).
# Recipe: official configs/convnext/mask_rcnn_convnext_tiny_patch4_window7_mstrain_480-800_adamw_3x_coco_in1k.py on the 1x schedule.
# The same model, pipeline and optimizer as the 3x config; only the schedule differs.
_base_ = ['./mask_rcnn_convnext_tiny_fpn_3x_coco.py']
train_cfg = dict(max_epochs=12)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
