# The official ConvNeXt COCO recipe on the 3x schedule: 36 epochs, lr x0.1 at epochs 27 and 33
# (official lr_config step=[27, 33]), the same 500-iteration linear warmup.
_base_ = ['./coco_instance_convnext_1x.py']
train_cfg = dict(max_epochs=36)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=36, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
