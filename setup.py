"""convnext-backbone: ConvNeXt V1/V2 multi-scale backbone for Detectron2, MMSegmentation, MMDetection and transformers.

Six import packages ship in one distribution (their list: convnext_backbone/adapters.py):
  convnext_backbone       the core (imports torch only)
  detectron2_convnext     the Detectron2 adapter, source in integrations/detectron2_convnext
  openmmlab_convnext      what the OpenMMLab adapters share (mmengine only), integrations/openmmlab_convnext
  mmseg_convnext          the MMSegmentation adapter, source in integrations/mmseg_convnext
  mmdet_convnext          the MMDetection adapter, source in integrations/mmdet_convnext
  transformers_convnext   the transformers adapter (AutoConfig/AutoBackbone), source in integrations/transformers_convnext
"""
import ast
from pathlib import Path

from setuptools import find_packages, setup


def _adapters() -> tuple[str, ...]:
    """``ADAPTERS`` of convnext_backbone/adapters.py (the one list), read as text: not installed yet."""
    source = (Path(__file__).resolve().parent / "convnext_backbone" / "adapters.py").read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["ADAPTERS"]:
            return tuple(ast.literal_eval(node.value))
    raise RuntimeError("convnext_backbone/adapters.py assigns no ADAPTERS tuple")


INTEGRATIONS = _adapters()

core_packages = find_packages(include=["convnext_backbone", "convnext_backbone.*"])
integration_packages = find_packages(
    where="integrations", include=[p for name in INTEGRATIONS for p in (name, name + ".*")]
)

EXTRAS = {
    "detectron2": ["detectron2", "pycocotools", "opencv-python", "shapely"],
    "mmseg": ["mmcv==2.1.0", "mmengine==0.10.7", "mmsegmentation==1.2.2", "ftfy", "regex"],
    # mmdet's own requirements bring pycocotools, terminaltables, scipy, shapely, six
    "mmdet": ["mmcv==2.1.0", "mmengine==0.10.7", "mmdet==3.3.0"],
    "export": ["onnx", "onnxruntime", "matplotlib"],
    "transformers": ["transformers>=5,<6", "scipy"],  # scipy: Mask2Former's and DETR's Hungarian matching
    "test": ["pytest", "transformers>=5,<6", "timm>=1.0", "peft", "ruff"],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setup(
    name="convnext-backbone",
    version="0.1.0",
    description="ConvNeXt V1/V2 multi-scale backbone with Detectron2, MMSegmentation, MMDetection and transformers adapters",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=core_packages + integration_packages,
    package_dir={name: f"integrations/{name}" for name in INTEGRATIONS},
    package_data={"convnext_backbone": ["accel/csrc/*.c"]},  # compiled on first use (convnext_backbone/accel/native.py)
    install_requires=["torch>=2.1", "torchvision", "safetensors", "numpy", "tqdm", "Pillow"],  # torchvision: the image processor's resize
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "convnext-backbone=convnext_backbone.cli:main",
            "convnext-d2-train=detectron2_convnext.train_net:main",
            "convnext-d2-lazy-train=detectron2_convnext.lazy_train_net:main",
            "convnext-mmseg-train=mmseg_convnext.train:main",
            "convnext-mmdet-train=mmdet_convnext.train:main",
        ]
    },
)
