# DINO-4scale + ConvNeXt V2-A on COCO, 12 epochs (lr x0.1 at epoch 11).
# Published: none (MMDetection's projects/ConvNeXt-V2 ships this config without a result).
# Recipe: MMDetection projects/ConvNeXt-V2/configs/dino-4scale_r50_8xb2-12e-fcmae-atto_coco.py: MMDetection's DINO-R50 recipe with the
# backbone replaced (stages 2-4, drop path 0.1, FCMAE pre-training weights) and 1 image per GPU.
_base_ = ['./_base_/dino_4scale_convnext_12e_coco.py']
model = dict(
    backbone=dict(
        arch='convnextv2_atto',
        drop_path_rate=0.1,
        # FCMAE pre-training weights, official release (the project loads the same weights from mmcls's conversion);
        # any format the core converts works (path, URL, HF hub id).
        init_cfg=dict(type='Pretrained', checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/pt_only/convnextv2_atto_1k_224_fcmae.pt')),
    neck=dict(in_channels=[80, 160, 320]))
# 8 GPUs x 1 image = 8 per iteration at DINO's lr 1e-4, as the project config; its auto_scale_lr stays DINO's
# base_batch_size 16, so --auto-scale-lr on 8 GPUs would halve the lr.
train_dataloader = dict(batch_size=1)
