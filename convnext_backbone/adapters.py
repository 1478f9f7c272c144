"""The import packages that ship in this distribution: the core and one adapter package per
framework (source in ``integrations/<name>/``). The one list that ``setup.py`` (which reads this
file as text: nothing is installed yet), the environment check, ``scripts/setup.sh`` and the
tests use. Names only: the core never imports a framework."""

__all__ = ["ADAPTERS", "CORE", "PACKAGES"]

CORE = "convnext_backbone"
ADAPTERS = ("detectron2_convnext", "openmmlab_convnext", "mmseg_convnext", "mmdet_convnext", "transformers_convnext")
PACKAGES = (CORE, *ADAPTERS)
