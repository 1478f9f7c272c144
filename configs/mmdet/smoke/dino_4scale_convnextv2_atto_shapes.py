# Smoke config: the ConvNeXt V2-A DINO-4scale recipe shrunk to train on a CPU in minutes, on the
# generated COCO-format "shapes" dataset (convnext_backbone.synthetic: circles, squares and
# triangles at 128 x 128). Not a benchmark and not the recipe: random init, small images, 100
# queries instead of 900 (a 128-pixel image has 340 tokens over the four levels and two-stage DINO
# picks its queries among them), 2 encoder and 2 decoder layers with 512-wide FFNs instead of 6 + 6
# with 2048, 30 denoising queries instead of 100, and an iteration-based schedule so that a run can
# be stopped and resumed at any checkpoint.
# Published: none (synthetic data).
_base_ = ['../dino_4scale_convnextv2_atto_12e_coco.py']
data_root = 'data/shapes/'
metainfo = dict(classes=('circle', 'square', 'triangle'))
model = dict(
    num_queries=100,
    backbone=dict(drop_path_rate=0.0, init_cfg=None),
    encoder=dict(num_layers=2, layer_cfg=dict(ffn_cfg=dict(feedforward_channels=512))),
    decoder=dict(num_layers=2, layer_cfg=dict(ffn_cfg=dict(feedforward_channels=512))),
    bbox_head=dict(num_classes=3),
    dn_cfg=dict(group_cfg=dict(num_dn_queries=30)),
    test_cfg=dict(max_per_img=100))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

# Random init trains with a larger lr than fine-tuning, the backbone at the full lr; fp32, clipping as the recipe.
optim_wrapper = dict(optimizer=dict(lr=4e-4), paramwise_cfg=dict(custom_keys=dict(backbone=dict(lr_mult=1.0))))
max_iters = 100
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
param_scheduler = [dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters, milestones=[80], gamma=0.1)]
auto_scale_lr = dict(base_batch_size=4)
default_hooks = dict(
    logger=dict(interval=10, log_metric_by_epoch=False),
    checkpoint=dict(by_epoch=False, interval=100, max_keep_ckpts=2))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
