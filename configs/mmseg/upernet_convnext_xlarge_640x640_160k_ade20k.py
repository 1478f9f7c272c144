# UperNet + ConvNeXt-XL on ADE20K, 640x640 crops, 160k iterations.
# Published (ConvNeXt paper, official README): ConvNeXt-XL UperNet, IN-22K, 640x640, 160k: mIoU 53.6 single-scale (54.0 ms+flip).
_base_ = ['./_base_/upernet_convnext_ade20k_640x640_160k.py']
model = dict(
    backbone=dict(
        arch='convnext_xlarge',
        drop_path_rate=0.4,
        layer_scale_init_value=1.0,  # as the official configs; the checkpoint overwrites it
        # ImageNet-22K weights, official release; any format the core converts works (path, URL, HF hub id).
        init_cfg=dict(type='Pretrained', checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_xlarge_22k_224.pth')),
    decode_head=dict(in_channels=[256, 512, 1024, 2048]),
    auxiliary_head=dict(in_channels=1024),
)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',  # the official L/XL runs are fp32
    optimizer=dict(type='AdamW', lr=8e-05, betas=(0.9, 0.999), weight_decay=0.05),  # official XL value
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=12),
    constructor='LearningRateDecayOptimizerConstructor')
