# UperNet + ConvNeXt V2-H on ADE20K, 640x640 crops, 160k iterations.
# Published (ConvNeXt V2 paper, UperNet on ADE20K, FCMAE + IN-22K fine-tuned): V2-H mIoU 55.0 (scale protocol not stated in our source).
# ConvNeXt V2 has no official segmentation code or config: this is the V1 recipe applied to V2,
# with V2's optimizer rule (GRN gamma/beta without weight decay) and the size choices noted below.
_base_ = ['./_base_/upernet_convnext_ade20k_640x640_160k.py']
model = dict(
    backbone=dict(
        arch='convnextv2_huge',
        drop_path_rate=0.4,  # as V1 at this depth
        # ImageNet-22K weights, official release; any format the core converts works (path, URL, HF hub id).
        init_cfg=dict(type='Pretrained', checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/im22k/convnextv2_huge_22k_384_ema.pt')),
    decode_head=dict(in_channels=[352, 704, 1408, 2816]),
    auxiliary_head=dict(in_channels=1408),
)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',  # fp32, as the official V1 L/XL runs
    optimizer=dict(type='AdamW', lr=8e-05, betas=(0.9, 0.999), weight_decay=0.05),  # as V1-XL
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=12),
    constructor='ConvNeXtV2LearningRateDecayOptimizerConstructor')
