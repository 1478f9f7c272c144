"""Weight families: where a checkpoint's weights come from, the input normalisation they were
trained with, and their license.

A family travels with the weights: the converter detects it (from the layout, the head and the
file or hub name) or the user sets it; it goes into the load report, ``config.json``
(``weights_family``) and ``preprocessor_config.json`` (``image_mean`` / ``image_std``), and the
adapters compare it with a detector's or segmentor's pixel normalisation. Feeding CLIP weights
ImageNet-normalised pixels trains and evaluates worse, silently: this is what makes it loud.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .messages import closest

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "FAMILIES", "IMAGENET_MEAN", "IMAGENET_STD", "WeightFamily", "detect_family",
    "get_family", "normalisation_mismatch",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP, used by open_clip's LAION ConvNeXts
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_MIT_V1 = "MIT (facebookresearch/ConvNeXt)"
_NC_V2 = "CC-BY-NC 4.0 (ConvNeXt V2 ImageNet weights; code MIT)"


@dataclass(frozen=True)
class WeightFamily:
    """A family of published weights: ``name`` as timm tags it (``fb_in1k``, ``clip_laion2b``)."""

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    license: str
    description: str


FAMILIES: dict[str, WeightFamily] = {f.name: f for f in (
    WeightFamily("fb_in1k", IMAGENET_MEAN, IMAGENET_STD, _MIT_V1, "ConvNeXt V1, ImageNet-1k (official)"),
    WeightFamily("fb_in22k", IMAGENET_MEAN, IMAGENET_STD, _MIT_V1, "ConvNeXt V1, ImageNet-22k (official)"),
    WeightFamily("fb_in22k_ft_in1k", IMAGENET_MEAN, IMAGENET_STD, _MIT_V1, "ConvNeXt V1, ImageNet-22k fine-tuned on 1k (official)"),
    WeightFamily("fcmae", IMAGENET_MEAN, IMAGENET_STD, _NC_V2, "ConvNeXt V2 FCMAE self-supervised pre-training"),
    WeightFamily("fcmae_ft_in1k", IMAGENET_MEAN, IMAGENET_STD, _NC_V2, "ConvNeXt V2, FCMAE fine-tuned on ImageNet-1k"),
    WeightFamily("fcmae_ft_in22k_in1k", IMAGENET_MEAN, IMAGENET_STD, _NC_V2, "ConvNeXt V2, FCMAE fine-tuned on ImageNet-22k then 1k"),
    WeightFamily("in12k_ft_in1k", IMAGENET_MEAN, IMAGENET_STD, "Apache-2.0 (timm)", "timm's ImageNet-12k fine-tuned on 1k"),
    WeightFamily("dinov3_lvd1689m", IMAGENET_MEAN, IMAGENET_STD,
                 "DINOv3 License (Meta; derivatives and outputs under its terms)", "DINOv3 ConvNeXt, distilled on LVD-1689M"),
    WeightFamily("eupe_lvd1689m", IMAGENET_MEAN, IMAGENET_STD, "FAIR Noncommercial Research License",
                 "EUPE ConvNeXt (DINOv3-style distillation on LVD-1689M)"),
    WeightFamily("clip_laion2b", CLIP_MEAN, CLIP_STD, "MIT (open_clip / LAION)", "open_clip CLIP ConvNeXt image tower, LAION-2B"),
    WeightFamily("clip_laion2b_ft_in1k", CLIP_MEAN, CLIP_STD, "MIT (open_clip / LAION; timm fine-tune Apache-2.0)",
                 "CLIP ConvNeXt fine-tuned on ImageNet (keeps CLIP normalisation)"),
)}

def get_family(name: str) -> WeightFamily:
    """The family called ``name``; a ValueError naming the known ones otherwise."""
    family = FAMILIES.get(str(name).strip().lower())
    if family is None:
        raise ValueError(f"unknown weights family {name!r}{closest(str(name), FAMILIES, 'the families')}")
    return family


def _from_name(source: str, v2: bool) -> WeightFamily | None:
    """The family a file or hub name says (``convnext_base.clip_laion2b_augreg_ft_in1k``,
    ``convnextv2_tiny_1k_224_fcmae.pt``, ``convnext_tiny_22k_1k_224.pth``), or None."""
    name = source.lower().replace("-", "_")
    ft = re.compile(r"ft|1k")
    if "eupe" in name:
        return FAMILIES["eupe_lvd1689m"]
    if "dinov3" in name or "lvd1689m" in name:
        return FAMILIES["dinov3_lvd1689m"]
    if "clip" in name or "laion" in name:
        return FAMILIES["clip_laion2b_ft_in1k" if re.search(r"ft|in1k|in12k", name) else "clip_laion2b"]
    if "in12k" in name:
        return FAMILIES["in12k_ft_in1k"]
    if "fcmae" in name and not ft.search(name.split("fcmae", 1)[1]):
        return FAMILIES["fcmae"]  # the official pre-training files: convnextv2_tiny_1k_224_fcmae.pt
    if v2 or "fcmae" in name:
        if "22k" in name:
            return FAMILIES["fcmae_ft_in22k_in1k"]
        return FAMILIES["fcmae_ft_in1k"] if ft.search(name) else None
    if "22k" in name:
        return FAMILIES["fb_in22k_ft_in1k" if ft.search(name.split("22k", 1)[1]) else "fb_in22k"]
    return FAMILIES["fb_in1k"] if re.search(r"in1k|_1k", name) else None


def detect_family(layout: str, v2: bool, head_classes: int | None, source: str = "") -> tuple[WeightFamily | None, str]:
    """``(family or None, how it was told)`` from what the converter saw.

    ``layout``: the converter's layout name (``open_clip``, ``dinov3_hf``, ``eupe`` ... or a plain
    format); ``head_classes``: classes of a classification head in the file, if any; ``source``:
    the file, directory or hub name (its tokens are the most specific evidence there is).
    """
    by_layout = {"open_clip": "clip_laion2b", "dinov3_hf": "dinov3_lvd1689m", "eupe": "eupe_lvd1689m", "fcmae": "fcmae"}
    named = _from_name(source, v2) if source else None
    if named is not None:
        return named, f"from the name {source!r}"
    if layout in by_layout:
        return FAMILIES[by_layout[layout]], f"from the {layout} layout"
    if head_classes is not None:
        if head_classes == 21841 and not v2:
            return FAMILIES["fb_in22k"], "from the 21841-class head"
        if head_classes == 1000:
            name = "fcmae_ft_in1k" if v2 else "fb_in1k"
            return FAMILIES[name], "from the 1000-class ImageNet head (a 22k-pre-trained model fine-tuned on 1k looks the same)"
    return None, "not recognisable from the file (set it with weights_family=... / --family)"


def normalisation_mismatch(family: WeightFamily, mean, std, *, scale: float = 1.0, bgr: bool = False,
                           where: str = "the config", keys: str = "mean/std") -> str | None:
    """None when ``mean``/``std`` (in the framework's ``scale``, e.g. 255 for 0..255 pixels, and
    channel order) are the family's; else a message naming both values and the keys to change."""
    order = (2, 1, 0) if bgr else (0, 1, 2)
    want_mean = [round(family.mean[i] * scale, 4) for i in order]
    want_std = [round(family.std[i] * scale, 4) for i in order]
    got_mean, got_std = [float(v) for v in mean], [float(v) for v in std]
    close = all(abs(a - b) <= 1e-3 * max(scale, 1.0) for a, b in zip(got_mean + got_std, want_mean + want_std))
    if close and len(got_mean) == len(got_std) == 3:
        return None
    return (
        f"the weights are {family.name} ({family.description}), trained on pixels normalised with mean {want_mean} / "
        f"std {want_std}{' (BGR order)' if bgr else ''}{'' if scale == 1 else f' (0..{scale:g} scale)'}, but {where} "
        f"normalises with mean {[round(v, 4) for v in got_mean]} / std {[round(v, 4) for v in got_std]}: set {keys} to the "
        "weights' values"
    )
