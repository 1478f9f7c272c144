# DINO-4scale on a ConvNeXt backbone, COCO, 12 epochs: MMDetection's DINO as packaged
# (configs/dino/dino-4scale_r50_8xb2-12e_coco.py: 900 queries, two-stage with box refinement,
# 100 denoising queries, 6 encoder + 6 decoder layers, 4 feature levels; AdamW lr 1e-4, weight
# decay 1e-4, gradient clipping at 0.1, backbone lr x0.1 through paramwise_cfg.custom_keys (no
# layer-wise lr decay); 12 epochs with lr x0.1 at epoch 11, no warmup; 16 images per iteration
# (8 GPUs x 2); flip, then multi-scale resize or resize-crop-resize; fp32), with its ResNet-50
# replaced as detrex's DINO-ConvNeXt configs do (projects/dino/configs/models/dino_convnext.py):
# stages 2-4 (strides 8, 16, 32, each through its output LayerNorm) into the ChannelMapper,
# which adds the fourth level (stride 64); nothing frozen. These are detrex's values too
# (detrex also exempts the torch norm layers of the neck and transformer from weight decay,
# MMDetection's DINO does not; we follow MMDetection). Each config sets the size, drop path
# and weights.
_base_ = ['mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py']
custom_imports = dict(imports=['mmdet_convnext'], allow_failed_imports=False)
# Safe resume under torch's weights_only default, torchrun on CPU, neck/backbone channel check.
# Scoped name: MMDetection's own tools/train.py looks runners up in mmengine's root registry.
runner_type = 'mmdet.ConvNeXtDetRunner'
model = dict(
    backbone=dict(
        _delete_=True,
        type='MMDetConvNeXt',
        arch='convnext_tiny',
        out_indices=(1, 2, 3),  # stage2..stage4, strides 8, 16, 32
        drop_path_rate=0.0),
    neck=dict(in_channels=[192, 384, 768]))
