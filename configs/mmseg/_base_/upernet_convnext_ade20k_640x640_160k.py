# The ConvNeXt UperNet recipe on ADE20K with 640x640 crops: dataset, crop, sliding-window test, batch.
_base_ = ['./upernet_convnext_160k_ade20k_recipe.py', 'mmseg::_base_/datasets/ade20k_640x640.py']
crop_size = (640, 640)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(426, 426)))
# 8 GPUs x 2 images = 16 per iteration, as published; scale lr if you change the total.
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
