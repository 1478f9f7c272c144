# UperNet + ConvNeXt V2-P on ADE20K, 512x512 crops, 160k iterations.
# Published: none found (no UperNet/ADE20K number published for ConvNeXt V2-P).
# ConvNeXt V2 has no official segmentation code or config: this is the V1 recipe applied to V2,
# with V2's optimizer rule (GRN gamma/beta without weight decay) and the size choices noted below.
_base_ = ['./_base_/upernet_convnext_ade20k_512x512_160k.py']
model = dict(
    backbone=dict(
        arch='convnextv2_pico',
        drop_path_rate=0.1,  # our choice: light regularisation for the 2-2-6-2 / 2-2-8-2 models
        # ImageNet-1K weights, official release; any format the core converts works (path, URL, HF hub id).
        init_cfg=dict(type='Pretrained', checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_pico_1k_224_ema.pt')),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256),
)
optim_wrapper = dict(
    constructor='ConvNeXtV2LearningRateDecayOptimizerConstructor',
    paramwise_cfg=dict(num_layers=6),  # 6 up to tiny, 12 above, as V1
)
