# Mask2Former + ConvNeXt V2-B on ADE20K, 640x640 crops, 160k iterations.
# Published: none found (no Mask2Former result on ADE20K has been published for ConvNeXt V2-B).
# Recipe: MMSegmentation's Mask2Former ADE20K recipe (the Swin-B/L 640x640 configs) with the ConvNeXt backbone; see _base_/mask2former_convnext_ade20k_640x640_160k.py.
_base_ = ['./_base_/mask2former_convnext_ade20k_640x640_160k.py']
model = dict(
    backbone=dict(
        arch='convnextv2_base',
        drop_path_rate=0.4,  # the official V1 ADE20K value at this depth
        # ImageNet-22K weights, official release; any format the core converts works (path, URL, HF hub id).
        init_cfg=dict(type='Pretrained', checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/im22k/convnextv2_base_22k_224_ema.pt')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]))
