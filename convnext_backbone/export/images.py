"""Finding, decoding and preprocessing the images that ``convnext-backbone export`` reads.

Two preprocessing modes, both built on the core's ``ConvNextImageProcessor`` (so resizing and
normalisation are the same op everywhere):

``letterbox`` (default, for dense use): resize the long side to ``size`` keeping the aspect
ratio, place the result at the top-left of a ``size x size`` canvas and pad the rest with 0
(the mean colour after normalisation), as Detectron2/MMDetection pad. The whole image is kept
and the geometry (scale and padding) is returned, so a feature cell maps back to pixels:
``x_image = (x_cell + 0.5) * stride / scale_x - 0.5``.

``processor``: the classification preprocessing of HF ``ConvNextImageProcessor``
(``shortest_edge=size``: short-side resize and centre crop below 384, a square warp from 384).
It crops or distorts, so features cannot be mapped back to every pixel; use it to reproduce
classification-style inputs.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import torch

from ..processing import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ConvNextImageProcessor, to_uint8_chw

__all__ = [
    "DEFAULT_SIZE", "IMAGE_EXTENSIONS", "RESIZE_MODES", "InputList", "Letterbox", "ProcessorResize",
    "list_inputs", "load_image", "make_transform",
]

DEFAULT_SIZE = 512
RESIZE_MODES = ("letterbox", "processor")
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pbm", ".pnm"}
)
_GLOB_CHARS = set("*?[")


class InputList:
    """Sorted, de-duplicated absolute image paths and the ``root`` their output paths mirror."""

    def __init__(self, root: Path, paths: list[Path]):
        self.root = root
        self.paths = paths

    def relative(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.root)).as_posix()


def _absolute(p: str | Path) -> Path:
    # abspath, not resolve(): a symlinked file keeps its place under the root.
    return Path(os.path.abspath(os.fspath(p)))


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS


def list_inputs(spec: str | os.PathLike) -> InputList:
    """``DIR`` (recursive, image extensions only), a ``GLOB``, a ``LIST.txt`` or one image file.

    A list file names one path per line (blank lines and ``#`` comments skipped); relative
    lines are relative to the list file's directory. Every listed path is an input, so a
    missing or unreadable one is reported, not silently dropped.
    """
    spec = os.fspath(spec)
    p = Path(spec)
    root: Path | None = None
    if p.is_dir():
        root = _absolute(p)
        paths = [
            Path(dirpath) / name
            for dirpath, _, names in os.walk(root, followlinks=True)
            for name in names
            if _is_image(Path(name))
        ]
    elif p.is_file() and p.suffix.lower() == ".txt":
        base = _absolute(p).parent
        paths = []
        for line in p.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                paths.append(_absolute(base / line))
    elif p.is_file():
        if not _is_image(p):
            raise ValueError(
                f"--input {spec}: not a directory, a .txt list or an image file "
                f"(image extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        paths = [_absolute(p)]
    elif _GLOB_CHARS & set(spec):
        paths = [_absolute(m) for m in glob.glob(spec, recursive=True) if Path(m).is_file()]
    else:
        raise FileNotFoundError(f"--input {spec}: no such directory, list file, image or glob pattern")
    paths = sorted(set(paths))
    if not paths:
        raise ValueError(f"--input {spec}: no images found (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    if root is None:
        root = Path(os.path.commonpath([str(q.parent) for q in paths]))
    return InputList(root, paths)


def load_image(path: str | os.PathLike) -> tuple[torch.Tensor, dict[str, Any]]:
    """Decode fully (truncation raises here, not later), apply EXIF orientation, -> 3xHxW uint8.

    Grayscale, RGBA, palette and 16-bit modes are converted by the core's ``to_uint8_chw``.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        mode = im.mode
        im.load()
        im = ImageOps.exif_transpose(im)
        x = to_uint8_chw(im)
    return x, {"mode": mode, "hw": [int(x.shape[-2]), int(x.shape[-1])]}


class Letterbox:
    """Aspect-preserving resize of the long side to ``size``, zero padding at the bottom/right."""

    method = "letterbox"

    def __init__(self, size: int = DEFAULT_SIZE, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, resample: int = 3):
        self.size = int(size)
        self.mean, self.std, self.resample = list(mean), list(std), resample

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "size": self.size, "mean": self.mean, "std": self.std, "resample": self.resample}

    def __call__(self, image: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        x = to_uint8_chw(image)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        scale = self.size / max(h, w)
        rh, rw = max(1, min(self.size, round(h * scale))), max(1, min(self.size, round(w * scale)))
        proc = ConvNextImageProcessor(
            do_resize=(rh, rw) != (h, w), size={"height": rh, "width": rw}, resample=self.resample,
            image_mean=self.mean, image_std=self.std,
        )
        content = proc.preprocess_one(x)
        out = content.new_zeros(3, self.size, self.size)
        out[:, :rh, :rw] = content
        geometry = {
            "image_hw": [h, w], "resized_hw": [rh, rw], "scale_hw": [rh / h, rw / w],
            "pad_tlbr": [0, 0, self.size - rh, self.size - rw],
        }
        return out, geometry


class ProcessorResize:
    """The core ``ConvNextImageProcessor`` with ``shortest_edge=size`` and ImageNet mean/std."""

    method = "processor"

    def __init__(self, size: int = DEFAULT_SIZE, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, resample: int = 3):
        self.size = int(size)
        self.processor = ConvNextImageProcessor(
            size={"shortest_edge": self.size}, resample=resample, image_mean=list(mean), image_std=list(std)
        )

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "size": self.size, "processor": self.processor.to_dict()}

    def __call__(self, image: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        x = to_uint8_chw(image)
        return self.processor.preprocess_one(x), {"image_hw": [int(x.shape[-2]), int(x.shape[-1])]}


def make_transform(resize: str = "letterbox", size: int = DEFAULT_SIZE) -> Letterbox | ProcessorResize:
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    if not isinstance(size, int) or size < 32 or size % 32:
        raise ValueError(f"size must be a positive multiple of 32 (the stride of stage4), got {size!r}")
    return Letterbox(size) if resize == "letterbox" else ProcessorResize(size)
