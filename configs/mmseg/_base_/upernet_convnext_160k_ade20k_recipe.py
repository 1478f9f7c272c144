# The official ConvNeXt UperNet / ADE20K recipe (facebookresearch/ConvNeXt, semantic_segmentation/):
# AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.05, stage-wise lr decay 0.9, 1500-iteration
# linear warmup (from 1e-6 x lr) then poly decay (power 1.0) to 0, 160k iterations, 16 images per
# iteration (8 GPUs x 2), mixed precision, sliding-window test. Built on MMSegmentation's packaged
# configs; upernet_convnext_ade20k_{512x512,640x640}_160k.py add the dataset, crop and test window,
# the files in configs/mmseg/ the model size, drop path and ImageNet weights.
_base_ = [
    'mmseg::_base_/models/upernet_convnext.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['mmseg_convnext'], allow_failed_imports=False)
# Safe resume under torch's weights_only default, torchrun on CPU, head/backbone channel check.
runner_type = 'ConvNeXtSegRunner'
checkpoint_file = None  # the base names an mmpretrain checkpoint; each config names its own below

model = dict(
    backbone=dict(
        _delete_=True,
        type='MMSegConvNeXt',
        arch='convnext_tiny',
        out_indices=(0, 1, 2, 3),  # stage1..stage4, strides 4, 8, 16, 32
        drop_path_rate=0.4),
    decode_head=dict(num_classes=150),
    auxiliary_head=dict(num_classes=150))

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=12),
    constructor='LearningRateDecayOptimizerConstructor',
    loss_scale='dynamic')

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=160000),
]

