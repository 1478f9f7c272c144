# UperNet on ADE20K, 640x640 crops, 160k iterations, on a frozen CLIP ConvNeXt-L (open_clip convnext_large_d_320,
# LAION-2B), the backbone of open-vocabulary segmenters (FC-CLIP: these weights, every stage frozen, the raw stage
# outputs, CLIP's pixel mean/std).
# Published: none (FC-CLIP-style work reports open-vocabulary results with other heads; no UperNet on this frozen backbone is published).
# Recipe: the ImageNet ConvNeXt-L UperNet one (official 640x640 160k, mIoU 53.2 with ImageNet-22K weights;
# ../upernet_convnext_large_640x640_160k_ade20k.py) for the heads; the trunk is frozen, so drop path and layer decay do not apply.
# Weights: the CLIP image tower as timm hosts it (timm/convnext_large_mlp.clip_laion2b_ft_soup_320), or the whole open_clip
# model (open_clip_pytorch_model.bin of laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup: the text tower and the
# projection head are dropped and logged). MIT license.
_base_ = ['../upernet_convnext_large_640x640_160k_ade20k.py']
data_preprocessor = dict(
    mean=[122.7709383, 116.7460125, 104.09373615],  # CLIP's mean/std x 255, RGB (bgr_to_rgb=True in the base)
    std=[68.5005327, 66.6321579, 70.32316305])
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        weights_family='clip_laion2b',  # the Runner checks the data_preprocessor against CLIP's mean/std
        frozen_stages=4,  # the stem and stages 1-4: the whole trunk, in eval mode
        norm_outputs=False,  # the raw stage outputs, as FC-CLIP reads them (no trainable norm in between)
        drop_path_rate=0.0,
        init_cfg=dict(type='Pretrained', checkpoint='timm/convnext_large_mlp.clip_laion2b_ft_soup_320')))
