# UperNet + ConvNeXt-T on ADE20K, 512x512 crops, 160k iterations.
# Published (ConvNeXt paper, official README): ConvNeXt-T UperNet, IN-1K, 512x512, 160k: mIoU 46.0 single-scale (46.7 ms+flip).
_base_ = ['./_base_/upernet_convnext_ade20k_512x512_160k.py']
model = dict(
    backbone=dict(
        arch='convnext_tiny',
        drop_path_rate=0.4,
        layer_scale_init_value=1.0,  # as the official configs; the checkpoint overwrites it
        # ImageNet-1K weights, official release; any format the core converts works (path, URL, HF hub id).
        init_cfg=dict(type='Pretrained', checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_tiny_1k_224.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384),
)
optim_wrapper = dict(
    paramwise_cfg=dict(num_layers=6),  # official: 6 for tiny, 12 for the rest
)
