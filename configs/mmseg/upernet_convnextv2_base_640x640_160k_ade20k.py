# UperNet + ConvNeXt V2-B on ADE20K, 640x640 crops, 160k iterations.
# Published (ConvNeXt V2 paper, UperNet on ADE20K, FCMAE + IN-22K fine-tuned): V2-B mIoU 52.1 (from the paper's table; not re-checked against a second source).
# ConvNeXt V2 has no official segmentation code or config: this is the V1 recipe applied to V2,
# with V2's optimizer rule (GRN gamma/beta without weight decay) and the size choices noted below.
_base_ = [
    './_base_/upernet_convnext_160k_ade20k_recipe.py',
    'mmseg::_base_/datasets/ade20k_640x640.py',
]
crop_size = (640, 640)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='convnextv2_base',
        drop_path_rate=0.4,  # as V1 at this depth
        # ImageNet-22K weights, official release; any format the core converts works (path, URL, HF hub id).
        init_cfg=dict(type='Pretrained', checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/im22k/convnextv2_base_22k_224_ema.pt')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(426, 426)),
)
optim_wrapper = dict(
    constructor='ConvNeXtV2LearningRateDecayOptimizerConstructor',
    paramwise_cfg=dict(num_layers=12),  # 6 up to tiny, 12 above, as V1
)
# 8 GPUs x 2 images = 16 per iteration, as published; scale lr if you change the total.
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
