# The ConvNeXt UperNet recipe on ADE20K with 512x512 crops: dataset, crop, sliding-window test, batch.
_base_ = ['./upernet_convnext_160k_ade20k_recipe.py', 'mmseg::_base_/datasets/ade20k.py']
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
# 8 GPUs x 2 images = 16 per iteration, as published; scale lr if you change the total.
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
