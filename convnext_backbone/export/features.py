"""``extract_features``: multi-scale features from a backbone, for notebooks and pipelines."""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..arch import config_from_preset_name
from ..families import get_family
from ..model import ConvNextBackbone, build_backbone
from ..presets import list_presets
from ..processing import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ConvNextImageProcessor
from .images import DEFAULT_SIZE, load_image, make_transform

__all__ = [
    "DEFAULT_FEATURES", "DTYPES", "add_model_arguments", "add_preprocessing_arguments", "extract_features", "load_model",
    "model_from_args", "model_fingerprint", "normalisation", "parse_features",
]

DEFAULT_FEATURES = ("stage1", "stage2", "stage3", "stage4")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_features(spec: str | Sequence[str] | None) -> list[str]:
    """``"stem,stage1"`` / ``["stem", "stage1"]`` / ``"all"`` -> names (validated by the model config)."""
    if spec is None:
        return list(DEFAULT_FEATURES)
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if names == ["all"]:
        return ["stem", *DEFAULT_FEATURES]
    if not names:
        raise ValueError("features is empty; pass names such as stem,stage1,stage2,stage3,stage4 (or 'all')")
    return names


def load_model(
    preset: str | None = None,
    weights: str | os.PathLike | None = None,
    features: Sequence[str] | None = None,
    norm_outputs: bool = True,
    seed: int = 0,
    warn=lambda msg: print(msg, file=sys.stderr),
) -> ConvNextBackbone:
    """A backbone in eval mode returning exactly ``features``.

    ``weights``: any checkpoint format the core converts (its architecture wins; ``preset``,
    if also given, must agree). ``preset`` alone: random weights from ``seed`` -- the same on
    every rank and every re-run, so resume and sharding stay consistent -- only for testing.
    """
    features = parse_features(features)
    if weights is None and preset is None:
        raise ValueError("pass --weights PATH (a checkpoint in any supported format) or --preset NAME")
    if weights is not None:
        model = ConvNextBackbone.from_pretrained(weights, out_features=features, norm_outputs=norm_outputs)
        if preset is not None:
            want = config_from_preset_name(preset)
            got = model.config
            if (list(want.depths), list(want.hidden_sizes)) != (list(got.depths), list(got.hidden_sizes)):
                raise ValueError(
                    f"--preset {preset} (depths {list(want.depths)}, hidden_sizes {list(want.hidden_sizes)}) does not match "
                    f"the checkpoint {weights} (depths {list(got.depths)}, hidden_sizes {list(got.hidden_sizes)}); drop --preset"
                )
        report = getattr(model, "load_report", None)
        if report is not None and report.initialized:
            warn(f"note: {report.summary()} (output norms not in the checkpoint start as identity-affine LayerNorms)")
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_backbone(preset, out_features=features, norm_outputs=norm_outputs)
        warn(f"warning: no --weights given; {preset} has RANDOM weights (seed {seed}): the features are only good for testing")
    return model.eval()


def check_normalisation_args(mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
    """--image-mean/--image-std as given: both or neither, three values each, std > 0 (checked before
    a model is loaded)."""
    if (mean is None) != (std is None):
        raise ValueError("give both --image-mean and --image-std (or neither)")
    if mean is not None and (len(mean) != 3 or len(std) != 3 or min(std) <= 0):
        raise ValueError(f"--image-mean and --image-std take three values each (std > 0), got {list(mean)} and {list(std)}")


def normalisation(model: torch.nn.Module, weights: str | os.PathLike | None = None,
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> tuple[list[float], list[float], str]:
    """``(mean, std, where from)`` to normalise the images for ``model``, by precedence: what the user
    gave; a ``preprocessor_config.json`` beside the weights (``convert`` writes one); the weights'
    family (``model.config.weights_family``); ImageNet's, said to be a guess."""
    check_normalisation_args(mean, std)
    if mean is not None:
        return [float(v) for v in mean], [float(v) for v in std], "given (--image-mean/--image-std)"
    processor_file = Path(weights) / "preprocessor_config.json" if weights is not None and Path(weights).is_dir() else None
    if processor_file is not None and processor_file.is_file():
        processor = ConvNextImageProcessor.from_pretrained(processor_file)
        return list(processor.image_mean), list(processor.image_std), f"{processor_file}"
    family = getattr(getattr(model, "config", None), "weights_family", None)
    if family:
        f = get_family(family)
        return list(f.mean), list(f.std), f"the weights family {f.name}"
    return list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD), "ImageNet's (the weights' family is not known)"


def add_preprocessing_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--image-mean`` / ``--image-std``, shared by ``export`` and ``show``."""
    floats = lambda s: [float(v) for v in s.split(",")]  # noqa: E731
    p.add_argument("--image-mean", type=floats, default=None, metavar="R,G,B",
                   help="normalisation mean of 0..1 RGB pixels (default: the weights' own: their preprocessor_config.json "
                        "or weights family, else ImageNet's)")
    p.add_argument("--image-std", type=floats, default=None, metavar="R,G,B", help="normalisation std (see --image-mean)")


def add_model_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The model options shared by ``export``, ``export-onnx`` and ``show``."""
    p.add_argument("--weights", metavar="PATH", help="checkpoint file or directory, any supported format")
    p.add_argument("--preset", metavar="NAME", help=f"architecture ({', '.join(list_presets())}); "
                   "without --weights the weights are random (seeded): for testing only")
    p.add_argument("--features", default=",".join(DEFAULT_FEATURES), metavar="LIST",
                   help="comma-separated levels among stem,stage1,stage2,stage3,stage4, or 'all' (default: %(default)s)")
    p.add_argument("--no-output-norm", action="store_true",
                   help="the raw stage outputs instead of passing each through its output LayerNorm")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights when only --preset is given")


def model_from_args(args: argparse.Namespace, warn=lambda msg: print(msg, file=sys.stderr)) -> ConvNextBackbone:
    return load_model(args.preset, args.weights, args.features, norm_outputs=not args.no_output_norm, seed=args.seed, warn=warn)


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over parameter names, shapes, dtypes and values: identifies the weights whatever the file format."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _as_batch(images: Any, resize: str, size: int, model: torch.nn.Module) -> torch.Tensor:
    if isinstance(images, torch.Tensor) and images.ndim == 4 and images.is_floating_point():
        return images  # already preprocessed pixel_values
    items: Iterable[Any] = images if isinstance(images, (list, tuple)) else [images]
    mean, std, _ = normalisation(model)
    transform = make_transform(resize, size, mean, std)
    batch = []
    for im in items:
        if isinstance(im, (str, os.PathLike)):
            im = load_image(Path(im))[0]
        batch.append(transform(im)[0])
    shapes = {tuple(b.shape) for b in batch}
    if len(shapes) > 1:  # cannot happen with letterbox/processor; guard for future modes
        raise ValueError(f"images preprocess to different sizes {sorted(shapes)}")
    return torch.stack(batch)


def extract_features(
    model: ConvNextBackbone,
    images: Any,
    features: Sequence[str] | str | None = None,
    *,
    resize: str = "letterbox",
    size: int = DEFAULT_SIZE,
    batch_size: int = 8,
    dtype: torch.dtype | str | None = None,
) -> dict[str, torch.Tensor]:
    """``{feature: (N, C, H/stride, W/stride)}`` for ``images``.

    ``images``: preprocessed ``pixel_values`` (a float N x 3 x H x W tensor, used as is), or one
    or a list of PIL images / HWC arrays / CHW tensors / file paths, preprocessed with
    ``resize`` (``letterbox`` or ``processor``, see ``convnext_backbone.export.images``) at
    ``size``, normalised as the weights expect (``normalisation``: their family, else ImageNet).
    ``features`` default to the model's ``out_features`` and must be among them.
    Runs in eval mode under ``torch.inference_mode`` in chunks of ``batch_size`` on the model's
    device (the model's train/eval mode is restored afterwards); results stay on that device,
    cast to ``dtype`` if given.
    """
    names = list(model.out_features) if features is None else parse_features(features)
    missing = [n for n in names if n not in model.out_features]
    if missing:
        raise ValueError(
            f"features {missing} are not outputs of this model (out_features={list(model.out_features)}); "
            f"build it with out_features={names}"
        )
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pixel_values = _as_batch(images, resize, size, model)
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    try:
        with torch.inference_mode():
            for start in range(0, pixel_values.shape[0], batch_size):
                x = pixel_values[start:start + batch_size].to(param.device, param.dtype)
                out = model.forward_dict(x)
                for n in names:
                    chunks[n].append(out[n] if dtype is None else out[n].to(dtype))
    finally:
        model.train(was_training)
    return {n: torch.cat(v) if len(v) > 1 else v[0] for n, v in chunks.items()}


def autocast_for(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Half-precision compute on CUDA when a half storage dtype is asked; fp32 compute elsewhere."""
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()
