# Mask R-CNN + ConvNeXt-B FPN on COCO, 1x (12 epochs, lr x0.1 at epochs 8 and 11).
# Published: none (the official release has no ConvNeXt-B Mask R-CNN 1x result).
# Recipe: no official config; drop path and layer decay of the official Cascade config of this size, lr of the official Mask R-CNN T, on the 1x schedule.
# The same model, pipeline and optimizer as the 3x config; only the schedule differs.
_base_ = ['./mask_rcnn_convnext_base_fpn_3x_coco.py']
train_cfg = dict(max_epochs=12)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
