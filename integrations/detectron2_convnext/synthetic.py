"""The generated COCO-format "shapes" dataset, and its registration in Detectron2's catalogs.

The generator itself is framework-free and shared with the MMDetection adapter: it lives in
``convnext_backbone.synthetic`` and is re-exported here.
"""
from __future__ import annotations

from convnext_backbone.synthetic import CATEGORIES, CocoSplit, SyntheticSpec, make_coco_split

__all__ = ["CATEGORIES", "SyntheticSpec", "CocoSplit", "make_coco_split", "register_coco"]


def register_coco(name: str, json_file: str, image_root: str) -> str:
    """``register_coco_instances`` unless ``name`` is already registered with these files."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if (getattr(meta, "json_file", None), getattr(meta, "image_root", None)) != (str(json_file), str(image_root)):
            raise ValueError(f"dataset {name!r} is already registered with other files ({getattr(meta, 'json_file', None)})")
        return name
    register_coco_instances(name, {}, str(json_file), str(image_root))
    return name
