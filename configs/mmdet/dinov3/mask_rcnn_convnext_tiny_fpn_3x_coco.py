# Mask R-CNN + ConvNeXt-T FPN on COCO, 3x, from DINOv3 ConvNeXt-T weights (distilled from the DINOv3 ViT-7B on LVD-1689M).
# Published: none (DINOv3 publishes no fine-tuned detection result for its ConvNeXts; its model card gives frozen-backbone linear probes only, e.g. ConvNeXt-T ADE20K 42.7 mIoU).
# Recipe: the ImageNet ConvNeXt-T one, official configs/convnext/mask_rcnn_convnext_tiny_patch4_window7_mstrain_480-800_adamw_3x_coco_in1k.py
# (box AP 46.2 / mask AP 41.7 with ImageNet-1K weights; ../mask_rcnn_convnext_tiny_fpn_3x_coco.py), only the weights differ.
# DINOv3 uses ImageNet's mean/std (the base's data_preprocessor); weights_family makes the Runner check it.
# DINOv3 License: derivatives and outputs fall under its terms.
_base_ = ['../mask_rcnn_convnext_tiny_fpn_3x_coco.py']
model = dict(
    backbone=dict(
        weights_family='dinov3_lvd1689m',
        # transformers layout, gated on the Hub (accept the license, log in); timm/convnext_tiny.dinov3_lvd1689m or
        # Meta's dinov3_convnext_tiny .pth load the same way.
        init_cfg=dict(type='Pretrained', checkpoint='facebook/dinov3-convnext-tiny-pretrain-lvd1689m')))
