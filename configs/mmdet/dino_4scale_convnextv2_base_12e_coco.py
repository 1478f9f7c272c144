# DINO-4scale + ConvNeXt V2-B on COCO, 12 epochs (lr x0.1 at epoch 11).
# Published: none (no DINO result has been published for ConvNeXt V2-B).
# Recipe: MMDetection's V2-A DINO config (projects/ConvNeXt-V2; stages 2-4, drop path 0.1, FCMAE pre-training weights) at this size,
# with the 16 images per iteration of DINO and detrex (8 GPUs x 2; the V2-A project config uses 1 per GPU).
_base_ = ['./_base_/dino_4scale_convnext_12e_coco.py']
model = dict(
    backbone=dict(
        arch='convnextv2_base',
        drop_path_rate=0.1,  # the V2-A project's value
        # FCMAE pre-training weights, official release; any format the core converts works (path, URL, HF hub id).
        init_cfg=dict(type='Pretrained', checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/pt_only/convnextv2_base_1k_224_fcmae.pt')),
    neck=dict(in_channels=[256, 512, 1024]))
