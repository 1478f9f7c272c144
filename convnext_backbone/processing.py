"""Image preprocessing with the semantics of HF ``ConvNextImageProcessor``.

``shortest_edge < 384``: resize the short side to ``shortest_edge / crop_pct`` (aspect kept),
then centre-crop ``shortest_edge`` square; otherwise warp to ``shortest_edge`` square (no
crop), as the ConvNeXt authors evaluate at 384. Then rescale by 1/255 and normalise.
Resizing is torchvision's antialiased resize on uint8, the same op HF's default backend runs,
so pixel values match it.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .families import IMAGENET_MEAN, IMAGENET_STD, get_family

__all__ = ["ConvNextImageProcessor", "IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD", "to_uint8_chw"]

IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD = IMAGENET_MEAN, IMAGENET_STD
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
_RESAMPLE = {0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING"}


def _pil_to_8bit(im: Any) -> Any:
    """Float and 16/32-bit integer images -> 8-bit, as an image viewer shows them; else unchanged.

    - ``F`` (32-bit float, e.g. a float TIFF): values in [0, 1] are scaled by 255 (the float
      image convention); values in [0, 255] with some above 1 are taken as 8-bit levels.
      Anything else (negative, above 255, NaN/inf) has no single right display, so it is an
      error naming the range, never a silently black or saturated export.
    - ``I;16*`` (16-bit): the full 0..65535 range maps to 0..255.
    - ``I`` (32-bit integer: 16-bit PNG/PGM as Pillow opens them -- Pillow scales PGM's maxval
      to 0..65535 -- or an integer TIFF): read as 16-bit, 0..65535 -> 0..255; values outside
      that range are an error (convert such an image yourself).
    """
    from PIL import Image

    mode = im.mode
    if mode != "F" and mode != "I" and not mode.startswith("I;16"):
        return im
    arr = np.asarray(im)
    if mode == "F":
        arr = arr.astype(np.float64)
        finite = np.isfinite(arr)
        if not finite.all():
            raise ValueError(f"float image (mode F) with {int((~finite).sum())} NaN/inf pixel(s); cannot display it")
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise ValueError(
                f"float image (mode F) with values in [{lo:g}, {hi:g}]: expected [0, 1] (or 0..255 levels); "
                "rescale it to one of those, or save it as 8/16-bit"
            )
        arr = arr * 255.0 if hi <= 1.0 else arr
    else:
        arr = arr.astype(np.float64)
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo < 0 or hi > 65535:
            raise ValueError(
                f"32-bit integer image (mode {mode}) with values in [{lo:g}, {hi:g}], outside the 16-bit range 0..65535; "
                "convert it to 8 or 16-bit"
            )
        arr = arr * (255.0 / 65535.0)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))  # 2-D uint8: mode L


def to_uint8_chw(image: Any) -> torch.Tensor:
    """PIL image / HWC numpy / CHW tensor -> 3xHxW uint8 RGB tensor.

    Grayscale is replicated, alpha dropped, palette expanded, float and 16/32-bit PIL images
    mapped to 8 bits as a viewer shows them (``_pil_to_8bit``).
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        image = _pil_to_8bit(image)
        if image.mode != "RGB":
            image = image.convert("RGBA").convert("RGB") if image.mode in ("P", "PA", "LA") else image.convert("RGB")
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3:
            raise ValueError(f"expected an HxW or HxWxC image array, got shape {image.shape}")
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        t = image if image.ndim == 3 else image.unsqueeze(0) if image.ndim == 2 else None
        if t is None:
            raise ValueError(f"expected a CxHxW or HxW image tensor, got shape {tuple(image.shape)}")
        if t.shape[0] not in (1, 3, 4) and t.shape[-1] in (1, 3, 4):
            t = t.permute(2, 0, 1)
    else:
        raise ValueError(f"unsupported image type {type(image).__name__}; pass a PIL image, numpy array or tensor")
    if t.dtype == torch.uint16 or (t.dtype in (torch.int32, torch.int64) and t.max() > 255):
        t = (t.to(torch.float64) / 65535.0 * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)
    elif t.dtype.is_floating_point:
        t = (t.to(torch.float64) * (255.0 if t.max() <= 1.0 else 1.0)).round().clamp(0, 255).to(torch.uint8)
    else:
        t = t.to(torch.uint8)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    elif t.shape[0] == 4:
        t = t[:3]
    return t.contiguous()


class ConvNextImageProcessor:
    """Callable: ``processor(images) -> {"pixel_values": (N, 3, H, W) float32}``."""

    def __init__(
        self,
        do_resize: bool = True,
        size: dict[str, int] | None = None,
        crop_pct: float | None = 224 / 256,
        resample: int | str = 3,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        **unused: Any,
    ):
        self.do_resize = do_resize
        self.size = dict(size) if size is not None else {"shortest_edge": 384}
        if not ("shortest_edge" in self.size or {"height", "width"} <= set(self.size)):
            raise ValueError(f"size must have 'shortest_edge' or 'height' and 'width', got {self.size}")
        self.crop_pct = 224 / 256 if crop_pct is None else float(crop_pct)
        self.resample = resample
        self.do_rescale = do_rescale
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = do_normalize
        self.image_mean = list(image_mean if image_mean is not None else IMAGENET_STANDARD_MEAN)
        self.image_std = list(image_std if image_std is not None else IMAGENET_STANDARD_STD)

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> ConvNextImageProcessor:
        """Read a HF ``preprocessor_config.json`` (file or its directory). A weights directory without
        one but whose ``config.json`` names the weights' family gets that family's mean/std."""
        p = Path(path)
        if p.is_dir() and not (p / "preprocessor_config.json").is_file() and (p / "config.json").is_file():
            family = json.loads((p / "config.json").read_text()).get("weights_family")
            if family:
                f = get_family(family)
                return cls(**{"image_mean": list(f.mean), "image_std": list(f.std), **overrides})
        if p.is_dir():
            p = p / "preprocessor_config.json"
        if not p.is_file():
            raise FileNotFoundError(f"no preprocessor_config.json at {path}")
        cfg = json.loads(p.read_text())
        cfg.update(overrides)
        return cls(**cfg)

    def to_dict(self) -> dict[str, Any]:
        return {
            "do_resize": self.do_resize, "size": self.size, "crop_pct": self.crop_pct, "resample": self.resample,
            "do_rescale": self.do_rescale, "rescale_factor": self.rescale_factor, "do_normalize": self.do_normalize,
            "image_mean": self.image_mean, "image_std": self.image_std,
        }

    def _interpolation(self):
        from torchvision.transforms.v2 import InterpolationMode

        name = _RESAMPLE.get(self.resample, self.resample) if isinstance(self.resample, int) else str(self.resample).upper()
        if name not in ("NEAREST", "BILINEAR", "BICUBIC"):
            raise ValueError(f"resample {self.resample!r} is not supported; use nearest (0), bilinear (2) or bicubic (3)")
        return getattr(InterpolationMode, name)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) of ``pixel_values`` for an input of this size."""
        if not self.do_resize:
            return height, width
        if "shortest_edge" not in self.size:
            return self.size["height"], self.size["width"]
        e = self.size["shortest_edge"]
        return (e, e)

    def preprocess_one(self, image: Any) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as tvF

        x = to_uint8_chw(image)
        if self.do_resize:
            interp = self._interpolation()
            if "shortest_edge" not in self.size:
                x = tvF.resize(x, [self.size["height"], self.size["width"]], interpolation=interp, antialias=True)
            elif self.size["shortest_edge"] < 384:
                edge = self.size["shortest_edge"]
                x = tvF.resize(x, _short_side_size(x.shape[-2], x.shape[-1], int(edge / self.crop_pct)), interpolation=interp, antialias=True)
                x = _center_crop(x, edge, edge)
            else:
                e = self.size["shortest_edge"]
                x = tvF.resize(x, [e, e], interpolation=interp, antialias=True)
        x = x.to(torch.float32)
        if self.do_rescale and self.do_normalize:
            mean = torch.tensor(self.image_mean) / self.rescale_factor
            std = torch.tensor(self.image_std) / self.rescale_factor
            return (x - mean[:, None, None]) / std[:, None, None]
        if self.do_rescale:
            x = x * self.rescale_factor
        if self.do_normalize:
            x = (x - torch.tensor(self.image_mean)[:, None, None]) / torch.tensor(self.image_std)[:, None, None]
        return x

    def __call__(self, images: Any | Iterable[Any], return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        if not isinstance(images, (list, tuple)):
            images = [images]
        out = [self.preprocess_one(im) for im in images]
        shapes = {tuple(o.shape) for o in out}
        if len(shapes) > 1:
            raise ValueError(f"images preprocess to different sizes {sorted(shapes)}; set do_resize=True or pass one size")
        return {"pixel_values": torch.stack(out)}


def _short_side_size(height: int, width: int, short: int) -> list[int]:
    if width <= height:
        return [int(short * height / width), short]
    return [short, int(short * width / height)]


def _center_crop(x: torch.Tensor, ch: int, cw: int) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as tvF

    h, w = x.shape[-2:]
    if ch > h or cw > w:
        pad = [(cw - w) // 2 if cw > w else 0, (ch - h) // 2 if ch > h else 0,
               (cw - w + 1) // 2 if cw > w else 0, (ch - h + 1) // 2 if ch > h else 0]
        x = tvF.pad(x, pad, fill=0)
        h, w = x.shape[-2:]
    top, left = int((h - ch) / 2.0), int((w - cw) / 2.0)
    return x[..., top:top + ch, left:left + cw]
