# Mask R-CNN + ConvNeXt V2-B FPN on COCO, 3x (36 epochs, lr x0.1 at epochs 27 and 33).
# Published: box AP 52.9 / mask AP 46.4, a PRE-RELEASE figure (MMDetection projects/ConvNeXt-V2, FCMAE weights, this recipe; the ConvNeXt V2 authors have released no detection code or recipe).
# Recipe: MMDetection's pre-release ConvNeXt V2-B Mask R-CNN (projects/ConvNeXt-V2): large-scale jitter at 1024, 32 images per iteration, FCMAE weights, soft-NMS, 1000-iteration warmup.
_base_ = ['./_base_/mask_rcnn_convnext_fpn.py', './_base_/coco_instance_convnext_3x.py']
image_size = (1024, 1024)
model = dict(
    backbone=dict(
        arch='convnextv2_base',
        drop_path_rate=0.4,
        # FCMAE pre-training weights (the pre-release recipe starts from them); any format the core converts works (path, URL, HF hub id).
        init_cfg=dict(type='Pretrained', checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/pt_only/convnextv2_base_1k_224_fcmae.pt')),
    neck=dict(in_channels=[128, 256, 512, 1024]),
    test_cfg=dict(rpn=dict(nms=dict(type='nms')), rcnn=dict(nms=dict(type='soft_nms'))))
# Large-scale jitter: resize to 0.1..2.0 x 1024, crop 1024 x 1024, flip.
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomResize', scale=image_size, ratio_range=(0.1, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_type='absolute_range', crop_size=image_size, recompute_bbox=True,
         allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
# 8 GPUs x 4 images = 32 per iteration.
train_dataloader = dict(batch_size=4, dataset=dict(pipeline=train_pipeline))
auto_scale_lr = dict(base_batch_size=32)
optim_wrapper = dict(
    constructor='ConvNeXtV2LearningRateDecayOptimizerConstructor',  # + GRN gamma/beta without weight decay
    optimizer=dict(lr=0.0001),
    paramwise_cfg=dict(decay_rate=0.95, num_layers=12))  # 3 + ceil(stage-3 depth / 3), the official rule
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=36, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
