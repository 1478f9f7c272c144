"""``convnext-backbone export-onnx``: the backbone as an ONNX graph (and optionally a ``torch.export`` program).

Input ``pixel_values`` (N, 3, H, W) float32 (or float16 with ``--dtype float16``: weights, input
and outputs in float16, LayerNorm and GRN statistics in float32) with dynamic N/H/W (H, W >= 32);
one named output per feature level, in ``--features`` order. Uses torch's TorchScript-based exporter
(``dynamo=False``): the newer exporter needs ``onnxscript``, which this project does not depend
on, and the TorchScript one handles this all-convolution graph with dynamic axes exactly.
The file is checked with ``onnx.checker`` and, unless ``--no-verify``, run in onnxruntime at
two input sizes and compared level by level with PyTorch.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..fileio import atomic_write, check_not_overwriting
from ..model import ConvNextBackbone
from .features import add_model_arguments, model_from_args

__all__ = ["add_arguments", "export_onnx", "export_program", "run", "verify_onnx"]

# neither is the 224x224 trace sample, and one is larger: a branch the trace froze to the sample's
# size (e.g. a loop over spatial chunks) shows up as a mismatch here
DEFAULT_VERIFY_SHAPES = ((2, 3, 160, 288), (1, 3, 384, 448))


class _FeatureTuple(nn.Module):
    """Exporters want tensors or tuples out, not a NamedTuple of tuples. ``forward_features`` is the
    core contract, so adapter subclasses (whose ``forward`` returns their framework's format) export too."""

    def __init__(self, backbone: ConvNextBackbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.backbone.forward_features(pixel_values).feature_maps)


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as e:
        raise ImportError(f"{module} is needed here; install the export extra: pip install 'convnext-backbone[export]'") from e


ONNX_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def export_onnx(model: ConvNextBackbone, path: str | os.PathLike, opset: int = 17, dtype: torch.dtype = torch.float32) -> Path:
    """Write ``model`` as ONNX to ``path`` (atomically) with dynamic batch/height/width.

    ``dtype=torch.float16``: a float16 graph (weights, input, outputs) whose LayerNorm and GRN
    statistics are computed in float32 (``LayerNormalization``'s float32 stash type, an explicit
    cast before GRN's L2 norm); ``model`` itself is not changed.
    """
    onnx = _require("onnx")
    path = Path(path)
    names = list(model.out_features)
    dynamic = {"pixel_values": {0: "batch", 2: "height", 3: "width"}}
    dynamic.update({n: {0: "batch", 2: f"{n}_height", 3: f"{n}_width"} for n in names})
    if dtype != torch.float32:
        model = copy.deepcopy(model).to(dtype)
    wrapper = _FeatureTuple(model).eval()
    sample = torch.randn(2, model.config.num_channels, 224, 224, dtype=dtype)
    kind = str(dtype).removeprefix("torch.")

    def write(tmp: str) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter announces itself
            torch.onnx.export(
                wrapper, (sample,), tmp, dynamo=False, input_names=["pixel_values"], output_names=names,
                dynamic_axes=dynamic, opset_version=opset, do_constant_folding=True,
            )
        # external data (a > 2 GB model, e.g. convnextv2_huge) stays where the exporter put it
        proto = onnx.load(tmp, load_external_data=False)
        meta = {
            "features": json.dumps(names), "strides": json.dumps(list(model.strides)),
            "channels": json.dumps(list(model.channels)), "config": json.dumps(model.config.to_dict()),
            "input": f"pixel_values: (N, 3, H, W) {kind}, RGB normalised with ImageNet mean/std; H, W >= 32",
            "dtype": kind,
        }
        for k, v in meta.items():
            proto.metadata_props.add(key=k, value=v)
        onnx.save(proto, tmp)
        onnx.checker.check_model(tmp)  # by path: works with external data too

    atomic_write(path, write)
    return path


def verify_onnx(
    model: ConvNextBackbone, path: str | os.PathLike, shapes: Sequence[Sequence[int]] = DEFAULT_VERIFY_SHAPES, seed: int = 0,
    relative: bool = False,
) -> list[dict[str, float]]:
    """Run the file in onnxruntime (CPU) at each shape against ``model`` in PyTorch (a float16 file
    against the float32 model); -> per shape ``{feature: max |onnx - torch|}``, divided by
    ``max |torch|`` when ``relative``."""
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed_dtype = {"tensor(float16)": "float16"}.get(session.get_inputs()[0].type, "float32")
    names = [o.name for o in session.get_outputs()]
    if names != list(model.out_features):
        raise ValueError(f"{path}: outputs {names} != the model's out_features {list(model.out_features)}")
    gen = torch.Generator().manual_seed(seed)
    diffs = []
    model = model.eval()
    for shape in shapes:
        x = torch.randn(*shape, generator=gen)
        with torch.inference_mode():
            ref = model.forward_features(x.to(next(model.parameters()).device)).feature_maps
        got = session.run(None, {"pixel_values": x.numpy().astype(feed_dtype)})
        row = {}
        for n, r, g in zip(names, ref, got):
            if tuple(r.shape) != tuple(g.shape):
                raise ValueError(f"{path}: {n} has shape {tuple(g.shape)} in onnxruntime, {tuple(r.shape)} in PyTorch at input {tuple(shape)}")
            r = r.float().cpu()
            diff = float((r - torch.from_numpy(g).float()).abs().max())
            row[n] = diff / max(float(r.abs().max()), 1e-12) if relative else diff
        diffs.append(row)
    return diffs


def export_program(model: ConvNextBackbone, path: str | os.PathLike) -> Path:
    """``torch.export`` program (``.pt2``) with dynamic batch/height/width; load with ``torch.export.load``."""
    path = Path(path)
    dyn = torch.export.Dim.DYNAMIC
    sample = torch.randn(2, model.config.num_channels, 224, 224)
    program = torch.export.export(_FeatureTuple(model).eval(), (sample,), dynamic_shapes={"pixel_values": {0: dyn, 2: dyn, 3: dyn}})
    x = torch.randn(1, model.config.num_channels, 384, 448)  # another batch and a larger size than the sample
    with torch.inference_mode():
        worst = max(float((a - b).abs().max()) for a, b in zip(program.module()(x), model.forward_features(x).feature_maps))
    if worst > 1e-4:
        raise RuntimeError(f"torch.export program differs from the model by {worst:.2e} at {tuple(x.shape)}")
    atomic_write(path, lambda tmp: torch.export.save(program, tmp), suffix=".tmp.pt2")  # save wants .pt2
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Export the backbone to ONNX: input pixel_values (N,3,H,W) with dynamic N/H/W, one named output per "
        "feature level. The file is run in onnxruntime at two input sizes and compared with PyTorch."
    )
    add_model_arguments(p)
    p.add_argument("--out", required=True, metavar="FILE.onnx", help="where to write the ONNX file")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: %(default)s; >= 17 has LayerNormalization)")
    p.add_argument("--torch-export", metavar="FILE.pt2", help="also write a torch.export program with dynamic N/H/W")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-PyTorch comparison")
    p.add_argument("--dtype", choices=sorted(ONNX_DTYPES), default="float32",
                   help="float16: a half-precision graph (weights, input, outputs; LayerNorm/GRN statistics in float32), "
                        "verified against the float32 PyTorch model with --rtol (default: %(default)s)")
    p.add_argument("--atol", type=float, default=1e-4, help="float32: largest allowed |onnx - torch| (default: %(default)s)")
    p.add_argument("--rtol", type=float, default=1e-2,
                   help="float16: largest allowed max|onnx - torch| / max|torch| per feature (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    try:
        for out in (args.out, args.torch_export):
            if out is not None:
                check_not_overwriting([args.weights], out)
        model = model_from_args(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"convnext-backbone export-onnx: error: {e}", file=sys.stderr)
        return 2
    half = args.dtype != "float32"
    path = export_onnx(model, args.out, opset=args.opset, dtype=ONNX_DTYPES[args.dtype])
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {args.dtype}): outputs {', '.join(model.out_features)}")
    status = 0
    if not args.no_verify:
        limit, what = (args.rtol, "max |diff| / max |torch|") if half else (args.atol, "max |diff|")
        for shape, row in zip(DEFAULT_VERIFY_SHAPES, verify_onnx(model, path, relative=half)):
            worst = max(row.values())
            verdict = "ok" if worst <= limit else f"FAILED (> {limit:g})"
            print(f"onnxruntime ({args.dtype}) vs PyTorch (float32) at {tuple(shape)}: {what} {worst:.2e} {verdict}  "
                  + " ".join(f"{k}={v:.1e}" for k, v in row.items()))
            status = status or int(worst > limit)
    if args.torch_export:
        print(f"wrote {export_program(model, args.torch_export)} (torch.export program; torch.export.load to run)")
    return status
