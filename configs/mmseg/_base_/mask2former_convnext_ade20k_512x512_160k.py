# Mask2Former on a ConvNeXt backbone, ADE20K semantic segmentation, 512x512 crops, 160k iterations:
# MMSegmentation's Mask2Former recipe as packaged (configs/mask2former/mask2former_{r50,swin-t,swin-s}
# _8xb2-160k_ade20k-512x512.py): MMDetection's Mask2Former head (MSDeformAttn pixel decoder with 6
# layers over strides 8/16/32, 9 masked-attention decoder layers, 100 queries, point-sampled mask
# and dice losses), AdamW lr 1e-4, weight decay 0.05, eps 1e-8, gradient clipping at 0.01, poly
# decay (power 0.9) over 160k iterations without warmup, 16 images per iteration (8 GPUs x 2),
# large-scale jitter (shorter side 0.5..2.0 x 512) + crop + flip + photometric distortion, whole-
# image test, fp32. Learning rates: the recipe's backbone multiplier (backbone lr x0.1 through
# paramwise_cfg.custom_keys; no layer-wise lr decay), with the query and level embeddings and the
# head's norm layers free of weight decay. Where the Swin configs exempt Swin's norm layers and
# position tables by name, ConvNeXtOptimWrapperConstructor exempts the ConvNeXt backbone's norms,
# biases, layer scale and GRN (the official ConvNeXt rule). All four stages (strides 4..32, each
# through its output LayerNorm) feed the head, as the ResNet and Swin configs do; nothing frozen.
# Each config sets the size, drop path (the official ConvNeXt ADE20K values) and weights.
_base_ = ['mmseg::mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py']
# mmdet.models: the Mask2Former head's pixel decoder, transformer layers, losses and assigner.
custom_imports = dict(imports=['mmseg_convnext', 'mmdet.models'], allow_failed_imports=False)
# Safe resume under torch's weights_only default, torchrun on CPU, head/backbone channel check.
runner_type = 'ConvNeXtSegRunner'
model = dict(
    backbone=dict(
        _delete_=True,
        type='MMSegConvNeXt',
        arch='convnext_tiny',
        out_indices=(0, 1, 2, 3),  # stage1..stage4, strides 4, 8, 16, 32
        drop_path_rate=0.4),
    decode_head=dict(in_channels=[96, 192, 384, 768]))
optim_wrapper = dict(constructor='ConvNeXtOptimWrapperConstructor')
