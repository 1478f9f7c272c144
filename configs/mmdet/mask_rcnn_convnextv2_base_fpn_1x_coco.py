# Mask R-CNN + ConvNeXt V2-B FPN on COCO, 1x (12 epochs, lr x0.1 at epochs 8 and 11).
# Published: none (no COCO Mask R-CNN 1x result has been published for ConvNeXt V2-B).
# Recipe: MMDetection's pre-release ConvNeXt V2-B Mask R-CNN (projects/ConvNeXt-V2): large-scale jitter at 1024, 32 images per iteration, FCMAE weights, soft-NMS, 1000-iteration warmup, on the 1x schedule.
# The same model, pipeline and optimizer as the 3x config; only the schedule differs.
_base_ = ['./mask_rcnn_convnextv2_base_fpn_3x_coco.py']
train_cfg = dict(max_epochs=12)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
