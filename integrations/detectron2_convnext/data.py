"""The ConvNeXt detection training augmentation as Detectron2 augmentations.

Official recipe (from DETR / Sparse R-CNN): random flip, then with probability 1/2 each
either a multi-scale resize (short side 480..800, long side <= 1333) or resize (short side
400/500/600) -> random crop of 384..600 px per side -> multi-scale resize 480..800.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T

__all__ = ["RandomChoice", "build_train_augmentation", "build_train_mapper"]


class RandomChoice(T.Augmentation):
    """Apply one branch (a list of augmentations), chosen uniformly at random: mmdet's AutoAugment."""

    def __init__(self, branches: Sequence[Sequence[T.Augmentation] | T.Augmentation]):
        super().__init__()
        if not branches:
            raise ValueError("RandomChoice needs at least one branch")
        self.branches = [T.AugmentationList(list(b)) if isinstance(b, (list, tuple)) else b for b in branches]

    def __call__(self, aug_input: T.AugInput) -> T.Transform:
        return self.branches[np.random.randint(len(self.branches))](aug_input)

    def __repr__(self) -> str:
        return f"RandomChoice(branches={self.branches})"


def build_train_augmentation(cfg) -> list[T.Augmentation]:
    """Flip, then a random choice of multi-scale resize or DETR's resize-crop-resize."""
    d = cfg.INPUT.DETR_AUG
    if cfg.INPUT.CROP.ENABLED:
        raise ValueError("INPUT.CROP.ENABLED and INPUT.DETR_AUG.ENABLED both crop the image; enable only one of them")
    multi_scale = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
    detr = [
        T.ResizeShortestEdge(tuple(d.RESIZE_SIZES), cfg.INPUT.MAX_SIZE_TRAIN, "choice"),
        T.RandomCrop("absolute_range", tuple(d.CROP_SIZE)),
        multi_scale,
    ]
    augs: list[T.Augmentation] = []
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal", vertical=cfg.INPUT.RANDOM_FLIP == "vertical"))
    return augs + [RandomChoice([[multi_scale], detr])]


def build_train_mapper(cfg) -> DatasetMapper:
    """Detectron2's ``DatasetMapper``; with INPUT.DETR_AUG.ENABLED, the augmentation above."""
    if not cfg.INPUT.DETR_AUG.ENABLED:
        return DatasetMapper(cfg, is_train=True)
    # a crop cuts masks: boxes are re-derived from them, as Detectron2 does for INPUT.CROP
    return DatasetMapper(cfg, is_train=True, augmentations=build_train_augmentation(cfg), recompute_boxes=cfg.MODEL.MASK_ON)
