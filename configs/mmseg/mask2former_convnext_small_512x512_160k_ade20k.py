# Mask2Former + ConvNeXt-S on ADE20K, 512x512 crops, 160k iterations.
# Published: none found (no Mask2Former result on ADE20K has been published for ConvNeXt-S).
# Recipe: MMSegmentation's Mask2Former ADE20K recipe (the Swin-T/S 512x512 configs) with the ConvNeXt backbone; see _base_/mask2former_convnext_ade20k_512x512_160k.py.
_base_ = ['./_base_/mask2former_convnext_ade20k_512x512_160k.py']
model = dict(
    backbone=dict(
        arch='convnext_small',
        drop_path_rate=0.3,  # the official ConvNeXt ADE20K value for this size
        layer_scale_init_value=1.0,  # as the official configs; the checkpoint overwrites it
        # ImageNet-1K weights, official release; any format the core converts works (path, URL, HF hub id).
        init_cfg=dict(type='Pretrained', checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_small_1k_224.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768]))
