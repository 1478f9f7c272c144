"""``convnext-backbone convert SRC DST``: any supported checkpoint -> ours (safetensors + config.json)."""
from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

from ..families import FAMILIES, get_family
from ..fileio import check_not_overwriting
from ..hub import resolve_pretrained
from ..messages import shortened
from ..model import ConvNextBackbone, ConvNextForImageClassification
from .formats import Conversion, infer_config
from .loading import load_converted
from .pretrained import open_checkpoint
from .reading import CheckpointError


def describe_conversion(conv: Conversion) -> str:
    """Human-readable mapping used by ``convnext-backbone convert``."""
    buf = io.StringIO()
    buf.write(f"source format: {conv.source_format}\n")
    buf.write(f"mapped {len(conv.mapping)} tensors\n")
    renamed = [(a, b) for a, b in conv.mapping if a != b]
    for line in shortened([f"{a} -> {b}" for a, b in renamed], 12, "more renamed"):
        buf.write(f"  {line}\n")
    if conv.dropped:
        buf.write(f"dropped {len(conv.dropped)} tensors:\n")
        by_reason: dict[str, list[str]] = {}
        for k, why in conv.dropped:
            by_reason.setdefault(why, []).append(k)
        for why, keys in by_reason.items():
            buf.write(f"  {len(keys)} x {why} (e.g. {keys[0]})\n")
    if conv.unknown:
        buf.write(f"UNRECOGNISED {len(conv.unknown)} tensors (not converted): {conv.unknown[:8]}\n")
    return buf.getvalue()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="checkpoint file or directory (official, FCMAE, det/seg, HF, timm, mmpretrain, Detectron2 .pkl, ours) or a hub id")
    p.add_argument("dst", help="output directory (config.json + model.safetensors); not SRC, nor the directory SRC is in")
    p.add_argument("--to", choices=["backbone", "classifier"], default="backbone",
                   help="backbone (default) drops a classifier head; classifier keeps head and final norm")
    p.add_argument("--out-features", default=None,
                   help="comma-separated stage names for the backbone, e.g. stage1,stage2,stage3,stage4 "
                        "(default: the stages with output norms in SRC, else stage1..stage4)")
    p.add_argument("--no-norm-outputs", action="store_true", help="backbone without per-output LayerNorms")
    p.add_argument("--no-strict", action="store_true", help="write what matches even if keys are missing/unexpected")
    p.add_argument("--family", metavar="NAME", default=None,
                   help=f"where the weights come from, when SRC cannot tell ({', '.join(FAMILIES)}): sets the normalisation "
                        "written to preprocessor_config.json")


def check_destination(dst: str | os.PathLike) -> None:
    """``dst`` can become the output directory: raise ``ValueError`` naming the problem otherwise.

    Checked before any checkpoint is read (a large one takes a while to load, and a failure
    after that wastes it): ``dst`` is a directory or does not exist yet, and its nearest
    existing ancestor is a writable directory.
    """
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise ValueError(f"{dst} exists and is not a directory; DST is a directory (config.json + model.safetensors)")
    probe = dst
    while not probe.exists():
        if probe.is_symlink():
            raise ValueError(f"{probe} is a dangling symlink; DST cannot be created there")
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{probe} is a file, so {dst} cannot be created as a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{probe} is not writable; cannot write {dst}")


def run(args: argparse.Namespace) -> int:
    try:
        check_destination(args.dst)
        local = resolve_pretrained(args.src)  # a hub id: its local snapshot, checked before anything is read
        check_not_overwriting([local], args.dst, directory=True)
        _, conv, config_dict = open_checkpoint(local)
        print(describe_conversion(conv), end="")
        overrides: dict = {}
        if args.to == "backbone":
            overrides["norm_outputs"] = not args.no_norm_outputs
            if args.out_features:
                overrides["out_features"] = [s.strip() for s in args.out_features.split(",") if s.strip()]
            elif not any(k.startswith("norm") and not k.startswith("norm.") for k in conv.state_dict):
                overrides["out_features"] = ["stage1", "stage2", "stage3", "stage4"]
        if args.family:
            overrides["weights_family"] = args.family
        config = infer_config(conv.state_dict, config_dict, **overrides)
        cls = ConvNextBackbone if args.to == "backbone" else ConvNextForImageClassification
        model = cls(config)
        report = load_converted(model, conv, strict=not args.no_strict, source=str(local), name=str(args.src),
                                hint="Pass --no-strict to write what matches (the report lists the rest).")
    except (CheckpointError, FileNotFoundError, ValueError, OSError) as e:
        print(f"convert failed: {e}", file=sys.stderr)
        return 2
    print(f"model: {type(config).__name__} depths={config.depths} hidden_sizes={config.hidden_sizes} -> {cls.__name__}"
          + (f" out_features={config.out_features}" if args.to == "backbone" else f" num_labels={config.num_labels}"))
    print(f"load: {report.summary()}")
    print(_family_line(report))
    for key, why in report.dropped:
        if not any(key == k for k, _ in conv.dropped):
            print(f"  dropped {key}: {why}")
    if report.initialized:
        print(f"  initialized fresh (not in SRC): {sorted({k.split('.')[0] for k in report.initialized})}")
    for line in report.errors():
        print(f"  ERROR {line}")
    try:
        out = model.save_pretrained(args.dst)
    except OSError as e:  # disk full, permissions changed meanwhile: nothing half-written (atomic writes)
        print(f"convert failed: cannot write {args.dst}: {e}", file=sys.stderr)
        return 2
    written = [out / name for name in ("model.safetensors", "config.json", "preprocessor_config.json") if (out / name).exists()]
    print(f"wrote {', '.join(map(str, written))}")
    return 0 if report.ok else 1


def _family_line(report) -> str:
    """Where the weights come from: what they expect as input and may be used for."""
    if not report.weights_family:
        return (f"weights family: unknown ({report.weights_family_source}); no preprocessor_config.json is written. "
                "If you know it, convert again with --family NAME")
    family = get_family(report.weights_family)
    return (f"weights family: {family.name} ({family.description}; {report.weights_family_source}): normalise inputs with "
            f"mean {list(family.mean)} / std {list(family.std)}; license: {family.license}")
