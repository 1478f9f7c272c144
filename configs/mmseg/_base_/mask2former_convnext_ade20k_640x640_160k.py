# The ConvNeXt Mask2Former recipe on ADE20K with 640x640 crops, as MMSegmentation's Mask2Former
# Swin-B/L configs (mask2former_swin-{b,l}-*_8xb2-160k_ade20k-640x640.py): shorter side 0.5..2.0 x
# 640 (longer <= 2560), 640 crops, test at shorter side 640. Everything else as at 512.
_base_ = ['./mask2former_convnext_ade20k_512x512_160k.py']
crop_size = (640, 640)
model = dict(data_preprocessor=dict(size=crop_size))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomChoiceResize', scales=[int(640 * x * 0.1) for x in range(5, 21)], resize_type='ResizeShortestEdge',
         max_size=2560),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2560, 640), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
