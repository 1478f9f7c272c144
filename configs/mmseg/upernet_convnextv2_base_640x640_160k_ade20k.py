# UperNet + ConvNeXt V2-B on ADE20K, 640x640 crops, 160k iterations.
# Published (ConvNeXt V2 paper, UperNet on ADE20K, FCMAE + IN-22K fine-tuned): V2-B mIoU 52.1 (from the paper's table; not re-checked against a second source).
# ConvNeXt V2 has no official segmentation code or config: this is the V1 recipe applied to V2,
# with V2's optimizer rule (GRN gamma/beta without weight decay) and the size choices noted below.
_base_ = ['./_base_/upernet_convnext_ade20k_640x640_160k.py']
model = dict(
    backbone=dict(
        arch='convnextv2_base',
        drop_path_rate=0.4,  # as V1 at this depth
        # ImageNet-22K weights, official release; any format the core converts works (path, URL, HF hub id).
        init_cfg=dict(type='Pretrained', checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/im22k/convnextv2_base_22k_224_ema.pt')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512),
)
optim_wrapper = dict(
    constructor='ConvNeXtV2LearningRateDecayOptimizerConstructor',
    paramwise_cfg=dict(num_layers=12),  # 6 up to tiny, 12 above, as V1
)
