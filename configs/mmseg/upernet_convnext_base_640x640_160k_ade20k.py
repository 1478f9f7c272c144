# UperNet + ConvNeXt-B on ADE20K, 640x640 crops, 160k iterations.
# Published (ConvNeXt paper, official README): ConvNeXt-B UperNet, IN-22K, 640x640, 160k: mIoU 52.6 single-scale (53.1 ms+flip).
_base_ = ['./_base_/upernet_convnext_ade20k_640x640_160k.py']
model = dict(
    backbone=dict(
        arch='convnext_base',
        drop_path_rate=0.4,
        layer_scale_init_value=1.0,  # as the official configs; the checkpoint overwrites it
        # ImageNet-22K weights, official release; any format the core converts works (path, URL, HF hub id).
        init_cfg=dict(type='Pretrained', checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_base_22k_224.pth')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512),
)
optim_wrapper = dict(
    paramwise_cfg=dict(num_layers=12),  # official: 6 for tiny, 12 for the rest
)
