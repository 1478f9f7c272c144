# Smoke config: the ConvNeXt Mask2Former recipe (the V2-T config) on a ConvNeXt V2-A, shrunk to train
# on a CPU in minutes on the generated ADE20K-layout dataset (python -m mmseg_convnext.synthetic
# data/synthetic_ade). Not a benchmark and not the recipe: random init, 64x64 images, 30 queries,
# fewer pixel-decoder and transformer-decoder layers, fewer sampled points, a larger lr without the
# backbone multiplier, a 200-iteration schedule.
# Published: none (synthetic data).
_base_ = ['../mask2former_convnextv2_tiny_512x512_160k_ade20k.py']
data_root = 'data/synthetic_ade'
crop_size = (64, 64)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(arch='convnextv2_atto', drop_path_rate=0.0, init_cfg=None),
    decode_head=dict(
        in_channels=[40, 80, 160, 320],
        num_queries=30,
        pixel_decoder=dict(encoder=dict(num_layers=2, layer_cfg=dict(ffn_cfg=dict(feedforward_channels=512)))),
        transformer_decoder=dict(num_layers=3, layer_cfg=dict(ffn_cfg=dict(feedforward_channels=512))),
        train_cfg=dict(num_points=1024)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

# Random init trains with a larger lr than fine-tuning, the backbone at the full lr; same constructor, fp32.
optim_wrapper = dict(
    optimizer=dict(lr=5e-4),
    paramwise_cfg=dict(custom_keys=dict(backbone=dict(lr_mult=1.0, decay_mult=1.0))))
param_scheduler = [dict(type='PolyLR', power=0.9, eta_min=0.0, by_epoch=False, begin=0, end=200)]
train_cfg = dict(max_iters=200, val_interval=200)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=100, max_keep_ckpts=2, save_best=None))
randomness = dict(seed=0)
