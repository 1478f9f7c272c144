# DINO-4scale + ConvNeXt-B on COCO, 12 epochs (lr x0.1 at epoch 11).
# Published (detrex model zoo, DINO-ConvNeXt-Base-384-4scale, 12 epochs, 100 denoising queries, COCO val2017): box AP 55.1 with these IN-22K weights (52.6 with IN-1K ones).
# Recipe: detrex projects/dino/configs/dino-convnext/dino_convnext_base_384_4scale_12ep.py on MMDetection's DINO (_base_/dino_4scale_convnext_12e_coco.py).
_base_ = ['./_base_/dino_4scale_convnext_12e_coco.py']
model = dict(
    backbone=dict(
        arch='convnext_base',
        drop_path_rate=0.0,  # detrex: no drop path at any ConvNeXt size
        layer_scale_init_value=1.0,  # as detrex; the checkpoint overwrites it
        # ImageNet-22K weights fine-tuned on ImageNet-1K at 384, official release (detrex's init_checkpoint); any format the core converts works.
        init_cfg=dict(type='Pretrained', checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_base_22k_1k_384.pth')),
    neck=dict(in_channels=[256, 512, 1024]))
