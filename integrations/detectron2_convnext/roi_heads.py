"""Cascade R-CNN with class-specific box regression, as the official ConvNeXt Cascade recipe.

Detectron2's ``CascadeROIHeads`` only supports class-agnostic regression. With class-specific
regression each stage predicts one box per class; the box passed to the next stage is the one
of the ROI's ground-truth class in training (predicted class for background ROIs) and of the
highest-scoring foreground class at inference, as mmdet's ``refine_bboxes`` /
``regress_by_class`` do. The last stage's per-class boxes go to the usual per-class NMS.
``MODEL.ROI_BOX_CASCADE_HEAD.STAGE_LOSS_WEIGHTS`` weights the stages' box losses (official: 1, 0.5, 0.25).
"""
from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads, FastRCNNOutputLayers

__all__ = ["ClassSpecificCascadeROIHeads"]


@ROI_HEADS_REGISTRY.register()
class ClassSpecificCascadeROIHeads(CascadeROIHeads):
    """``MODEL.ROI_HEADS.NAME: ClassSpecificCascadeROIHeads``; honours ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG."""

    @configurable
    def __init__(self, *, stage_loss_weights=None, **kwargs):
        super().__init__(**kwargs)
        weights = tuple(float(w) for w in stage_loss_weights) if stage_loss_weights else (1.0,) * self.num_cascade_stages
        if len(weights) != self.num_cascade_stages:
            raise ValueError(
                f"MODEL.ROI_BOX_CASCADE_HEAD.STAGE_LOSS_WEIGHTS has {len(weights)} entries for {self.num_cascade_stages} "
                "cascade stages (one per entry of MODEL.ROI_BOX_CASCADE_HEAD.IOUS)"
            )
        self.stage_loss_weights = weights

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["stage_loss_weights"] = cfg.MODEL.ROI_BOX_CASCADE_HEAD.get("STAGE_LOSS_WEIGHTS")
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        if cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG:
            return super()._init_box_head(cfg, input_shape)
        agnostic = cfg.clone()
        agnostic.defrost()
        agnostic.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True  # only to pass the parent's check
        ret = super()._init_box_head(agnostic, input_shape)
        ret["box_predictors"] = [
            FastRCNNOutputLayers(cfg, head.output_shape, box2box_transform=p.box2box_transform)
            for head, p in zip(ret["box_heads"], ret["box_predictors"])
        ]
        return ret

    def _forward_box(self, features, proposals, targets=None):
        out = super()._forward_box(features, proposals, targets)
        if not self.training:
            return out
        return {k: v * self.stage_loss_weights[int(k.rsplit("_stage", 1)[1])] if "_stage" in k else v for k, v in out.items()}

    def _run_stage(self, features, proposals, stage):
        predictions = super()._run_stage(features, proposals, stage)
        self._last_stage = (predictions, proposals)  # for _create_proposals_from_boxes
        return predictions

    def _create_proposals_from_boxes(self, boxes, image_sizes):
        return super()._create_proposals_from_boxes(self._select_class_boxes(boxes), image_sizes)

    def _select_class_boxes(self, boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        """(R, K*4) per image -> (R, 4): the box of the gt class (training) or best foreground class."""
        if boxes[0].shape[1] == 4:
            return boxes
        (scores, _), proposals = self._last_stage
        best = scores[:, :-1].argmax(dim=1).split([len(p) for p in proposals])
        out = []
        for b, p, cls_best in zip(boxes, proposals, best):
            cls = cls_best
            if self.training and p.has("gt_classes"):
                gt = p.gt_classes
                cls = torch.where(gt < b.shape[1] // 4, gt, cls_best)  # background: predicted class
            out.append(b.view(len(b), -1, 4)[torch.arange(len(b), device=b.device), cls])
        return out
