# UperNet + ConvNeXt-B on ADE20K, 512x512 crops, 160k iterations.
# Published (ConvNeXt paper, official README): ConvNeXt-B UperNet, IN-1K, 512x512, 160k: mIoU 49.1 single-scale (49.9 ms+flip).
_base_ = ['./_base_/upernet_convnext_ade20k_512x512_160k.py']
model = dict(
    backbone=dict(
        arch='convnext_base',
        drop_path_rate=0.4,
        layer_scale_init_value=1.0,  # as the official configs; the checkpoint overwrites it
        # ImageNet-1K weights, official release; any format the core converts works (path, URL, HF hub id).
        init_cfg=dict(type='Pretrained', checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_base_1k_224.pth')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512),
)
optim_wrapper = dict(
    paramwise_cfg=dict(num_layers=12),  # official: 6 for tiny, 12 for the rest
)
