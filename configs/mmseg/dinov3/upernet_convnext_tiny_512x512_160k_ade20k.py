# UperNet + ConvNeXt-T on ADE20K, 512x512 crops, 160k iterations, from DINOv3 ConvNeXt-T weights (distilled from the DINOv3 ViT-7B on LVD-1689M).
# Published: none for UperNet (DINOv3's model card gives a frozen-backbone linear probe only: ConvNeXt-T ADE20K mIoU 42.7, not comparable).
# Recipe: the ImageNet ConvNeXt-T one (official UperNet ConvNeXt-T 512x512 160k, mIoU 46.0 with ImageNet-1K weights;
# ../upernet_convnext_tiny_512x512_160k_ade20k.py), only the weights differ.
# DINOv3 uses ImageNet's mean/std (the base's data_preprocessor); weights_family makes the Runner check it.
# DINOv3 License: derivatives and outputs fall under its terms.
_base_ = ['../upernet_convnext_tiny_512x512_160k_ade20k.py']
model = dict(
    backbone=dict(
        weights_family='dinov3_lvd1689m',
        # transformers layout, gated on the Hub (accept the license, log in); timm/convnext_tiny.dinov3_lvd1689m or
        # Meta's dinov3_convnext_tiny .pth load the same way.
        init_cfg=dict(type='Pretrained', checkpoint='facebook/dinov3-convnext-tiny-pretrain-lvd1689m')))
