# The official ConvNeXt COCO recipe (facebookresearch/ConvNeXt, object_detection/) on
# MMDetection's packaged COCO instance dataset, runtime and 1x schedule (12 epochs, lr x0.1 at
# epochs 8 and 11, 500-iteration linear warmup from 0.001 x lr): AdamW, betas (0.9, 0.999),
# weight decay 0.05, layer-wise lr decay (rate and num_layers per size, set by each config),
# mixed precision, 16 images per iteration (8 GPUs x 2), and the DETR-style augmentation:
# flip, then either a multi-scale resize (shorter side 480..800, longer <= 1333) or a
# resize (400/500/600) - crop (384..600) - multi-scale resize.
_base_ = [
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmdet_convnext'], allow_failed_imports=False)
# Safe resume under torch's weights_only default, torchrun on CPU, neck/backbone channel check.
# Scoped name: MMDetection's own tools/train.py looks runners up in mmengine's root registry.
runner_type = 'mmdet.ConvNeXtDetRunner'

train_scales = [(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333),
                (672, 1333), (704, 1333), (736, 1333), (768, 1333), (800, 1333)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=train_scales, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)], keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600), allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=train_scales, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
# 8 GPUs x 2 images = 16 per iteration, as published (auto_scale_lr.base_batch_size = 16).
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    constructor='LearningRateDecayOptimizerConstructor',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=0.95, decay_type='layer_wise', num_layers=6))
