# LazyConfig: Detectron2's own Mask R-CNN FPN (common/models/mask_rcnn_fpn.py) with ConvNeXt-T as
# the bottom-up network, and the official ConvNeXt-T Mask R-CNN 3x recipe (46.2 box / 41.7 mask AP
# published; see ../mask_rcnn_convnext_tiny_fpn_3x_coco.yaml for the YAML twin).
# Train with convnext-d2-lazy-train (python -m detectron2_convnext.lazy_train_net; also on CPU and with
# --num-gpus/--num-machines) or Detectron2's tools/lazyconfig_train_net.py; train.init_checkpoint takes
# any ConvNeXt checkpoint format through detectron2_convnext.ConvNextCheckpointer.
import torch
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2_convnext import D2ConvNeXt, RandomChoice, convnext_param_groups

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
model.backbone.bottom_up = L(D2ConvNeXt)(
    name="convnext_tiny",
    out_features=["stage1", "stage2", "stage3", "stage4"],
    drop_path_rate=0.4,
    layer_scale_init_value=1.0,
)
model.backbone.in_features = "${.bottom_up.out_features}"
model.pixel_mean = [123.675, 116.28, 103.53]  # RGB ImageNet statistics
model.pixel_std = [58.395, 57.12, 57.375]
model.input_format = "RGB"

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.image_format = "RGB"
# flip, then multi-scale resize or DETR's resize-crop-resize, each with probability 1/2
_multi_scale = L(T.ResizeShortestEdge)(short_edge_length=[480 + 32 * i for i in range(11)], max_size=1333, sample_style="choice")
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(RandomChoice)(branches=[
        [_multi_scale],
        [
            L(T.ResizeShortestEdge)(short_edge_length=[400, 500, 600], max_size=1333, sample_style="choice"),
            L(T.RandomCrop)(crop_type="absolute_range", crop_size=(384, 600)),
            _multi_scale,
        ],
    ]),
]
dataloader.train.mapper.recompute_boxes = True  # crops cut masks: boxes from the cropped masks
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)]
dataloader.train.total_batch_size = 16

train = model_zoo.get_config("common/train.py").train
train.max_iter = 263880  # 36 epochs x 7330 iterations
train.amp.enabled = True
train.checkpointer.period = 7330
train.eval_period = 7330

optimizer = L(torch.optim.AdamW)(
    params=L(convnext_param_groups)(base_lr=1e-4, weight_decay=0.05, layer_decay_rate=0.95, num_layers=6),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=0.05,
)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[197910, 241890], num_updates=train.max_iter),
    warmup_length=500 / train.max_iter,
    warmup_factor=0.001,
)
