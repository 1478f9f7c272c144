# Mask R-CNN + ConvNeXt V2-A FPN on COCO, 1x (12 epochs, lr x0.1 at epochs 8 and 11).
# Published: none (no COCO Mask R-CNN 1x result has been published for ConvNeXt V2-A).
# Recipe: no official one; the V1 recipe of the nearest size (drop path scaled down for the 2-2-6-2 / 2-2-8-2 models), on the 1x schedule.
# The same model, pipeline and optimizer as the 3x config; only the schedule differs.
_base_ = ['./mask_rcnn_convnextv2_atto_fpn_3x_coco.py']
train_cfg = dict(max_epochs=12)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
