"""``convnext-backbone show IMAGE --out fig.png``: what each feature level encodes, at a glance.

Each level's C-dimensional features are projected on their first three principal components
(computed over that image's cells) and shown as RGB: cells that look alike to the network get
alike colours. The image is letterboxed as ``export`` does, and only the cells covering the
image (not the padding) are used and shown.
"""
from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..cli_errors import user_errors
from ..fileio import atomic_write, check_not_overwriting
from .features import add_model_arguments, add_preprocessing_arguments, check_normalisation_args, extract_features, model_from_args, normalisation
from .images import DEFAULT_SIZE, load_image, make_transform

__all__ = ["add_arguments", "pca_rgb", "render", "run"]


def pca_rgb(feature: torch.Tensor) -> tuple[np.ndarray, float]:
    """(C, h, w) -> ((h, w, 3) float in [0, 1], share of variance the 3 components explain).

    Signs are fixed (largest loading positive) and each component is stretched between its
    1st and 99th percentile, so one outlier cell does not wash the picture out.
    """
    c, h, w = feature.shape
    x = feature.detach().float().cpu().reshape(c, h * w).T
    x = x - x.mean(0, keepdim=True)
    cov = x.T @ x / max(1, x.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(cov.double())
    k = min(3, c)
    comps = evecs[:, -k:].flip(-1).float()
    comps = comps * torch.sign(comps.gather(0, comps.abs().argmax(0, keepdim=True)))
    proj = x @ comps
    lo, hi = torch.quantile(proj, 0.01, dim=0), torch.quantile(proj, 0.99, dim=0)
    rgb = ((proj - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    if k < 3:
        rgb = torch.cat([rgb, rgb.new_zeros(rgb.shape[0], 3 - k)], 1)
    explained = float(evals[-k:].sum() / evals.sum().clamp_min(1e-30))
    return rgb.reshape(h, w, 3).numpy(), explained


def render(
    image: torch.Tensor, features: dict[str, torch.Tensor], strides: Sequence[int], geometry: dict, out: str | os.PathLike, title: str
) -> Path:
    """Write the figure: ``image`` (3xHxW uint8) then one PCA panel per level, cropped to the image."""
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = geometry["image_hw"]
    rh, rw = geometry["resized_hw"]
    n = len(features) + 1
    fig = Figure(figsize=(3.2 * n, 3.2 * h / w + 0.9), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    axes[0].imshow(image.permute(1, 2, 0).numpy(), extent=(0, w, h, 0))
    axes[0].set_title(f"image {w}x{h}", fontsize=9)
    for ax, (name, feat), stride in zip(axes[1:], features.items(), strides):
        fh, fw = math.ceil(rh / stride), math.ceil(rw / stride)  # cells that overlap the image
        rgb, explained = pca_rgb(feat[:, :fh, :fw])
        ax.imshow(rgb, extent=(0, w, h, 0), interpolation="nearest")
        ax.set_title(f"{name}: stride {stride}, {feat.shape[0]} ch\n{fw}x{fh} cells, PCA-3 = {explained:.0%} of var.", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    fmt = out.suffix.lstrip(".").lower() or "png"
    # no creation date in PDF/SVG, and fixed SVG element ids: the same figure gives the same bytes
    metadata = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}.get(fmt)
    with rc_context({"svg.hashsalt": "convnext-backbone"}):
        atomic_write(out, lambda tmp: fig.savefig(tmp, format=fmt, metadata=metadata))
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "Show an image beside a PCA-to-RGB picture of each feature level (letterboxed as export does)."
    p.add_argument("image", help="an image file")
    p.add_argument("--out", required=True, metavar="FIG.png", help="where to write the figure (png, pdf, svg)")
    add_model_arguments(p)
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="letterbox side, a multiple of 32 (default: %(default)s)")
    add_preprocessing_arguments(p)


def _check_format(out: str) -> None:
    """The figure's format (its suffix) is one matplotlib writes: said before any work, not after."""
    from matplotlib.backend_bases import FigureCanvasBase

    fmt = Path(out).suffix.lstrip(".").lower() or "png"
    known = FigureCanvasBase.get_supported_filetypes()
    if fmt not in known:
        raise ValueError(f"--out {out}: cannot write a .{fmt} figure; use one of {', '.join('.' + k for k in sorted(known))}")


def run(args: argparse.Namespace) -> int:
    with user_errors():  # a bad image, size, figure format or checkpoint: one line (cli_errors.run_cli)
        check_not_overwriting([args.image, args.weights], args.out)
        _check_format(args.out)
        check_normalisation_args(args.image_mean, args.image_std)
        model = model_from_args(args)
        image, _ = load_image(args.image)
        mean, std, _ = normalisation(model, args.weights, args.image_mean, args.image_std)
        pixel_values, geometry = make_transform("letterbox", args.size, mean, std)(image)
    feats = extract_features(model, pixel_values[None])
    model_name = Path(args.weights).name if args.weights else f"{args.preset} (RANDOM weights)"
    title = f"{Path(args.image).name} through {model_name}, letterbox {args.size}"
    out = render(image, {k: v[0] for k, v in feats.items()}, model.strides, geometry, args.out, title)
    print(f"wrote {out}")
    return 0
