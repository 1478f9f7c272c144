"""Environment check: which parts of the stack are installed, and what is unavailable.

    python -m convnext_backbone.doctor
    convnext-backbone doctor

Prints the version of every package the project uses, whether the compiled pieces load
(``detectron2._C``, ``mmcv.ops``), and for everything missing what stops working. Exit
status is 0 unless a required core dependency (torch) is missing; the frameworks are
optional extras.

Nothing is imported at module import time: every framework is imported inside a function,
so importing this module costs nothing and never fails.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import platform
import sys
from dataclasses import dataclass, field

from .adapters import PACKAGES


@dataclass
class Check:
    name: str
    version: str | None = None  # None: not installed / failed to import
    required: bool = False
    notes: list[str] = field(default_factory=list)  # informational
    problems: list[str] = field(default_factory=list)  # something unavailable + consequence


# Import name -> distribution name, where they differ.
_DISTRIBUTIONS = {"mmseg": "mmsegmentation"}


def _version(module) -> str:
    """The installed distribution's version (shows local tags such as ``+pypi.sal``)."""
    from importlib import metadata

    name = module.__name__
    try:
        return metadata.version(_DISTRIBUTIONS.get(name, name))
    except metadata.PackageNotFoundError:
        return str(getattr(module, "__version__", "unknown"))


def _import(name: str, check: Check, consequence: str):
    """Import ``name``; on failure record why and what it means. Returns the module or None."""
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # any failure (ImportError, missing symbols, ABI errors)
        check.problems.append(f"not importable ({type(exc).__name__}: {_short(exc)}): {consequence}")
        return None
    check.version = _version(module)
    return module


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_python() -> Check:
    c = Check("python", platform.python_version(), required=True)
    c.notes.append(sys.executable)
    if sys.version_info < (3, 10):  # noqa: UP036  (doctor also runs where the package could not install)
        c.problems.append("Python < 3.10: torch 2.14 and this project need Python >= 3.10")
    return c


def check_torch() -> Check:
    c = Check("torch", required=True)
    torch = _import("torch", c, "REQUIRED: nothing in convnext-backbone works; run `make setup`")
    if torch is None:
        return c
    c.notes.append(f"{torch.get_num_threads()} CPU threads")
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        c.notes.append(f"CUDA {torch.version.cuda}: {names}")
    else:
        c.problems.append(
            "CUDA not available: CPU only (training at recipe scale is impractical; "
            "tests, demos, conversion and export work)"
        )
    return c


def check_native_kernel() -> Check:
    """The accelerator's C depthwise kernel (convnext_backbone/accel/native.py), built with the system compiler."""
    c = Check("dwconv kernel")
    from . import accel
    from .accel import native

    status = native.native_status()
    bf16, evidence = native.cpu_bf16()
    if status == "ok":
        c.version = "built"
        isa = native.kernel_isa()
        c.notes.append(f"{native.describe_isa(isa)}, {native.threading_mode()}, cached in {native._cache_dir()}")
        if "(portable" in isa:
            c.problems.append(f"portable C kernel ({isa.partition('portable: ')[2].rstrip(')')}): slower than one built for this CPU")
        if not accel.enabled():
            c.problems.append("accelerator disabled (CONVNEXT_BACKBONE_ACCEL=0): every block runs the reference ops")
    else:
        c.version = "fallback"
        c.problems.append(f"{status}: CPU training uses torch's depthwise conv (~25% slower step)")
    c.notes.append(f"bfloat16 native on this CPU ({evidence}): a model in pure bfloat16 runs fastest here"
                   if bf16 else f"bfloat16 not native on this CPU ({evidence}): float32 runs faster")
    return c


def check_torchvision() -> Check:
    c = Check("torchvision")
    tv = _import("torchvision", c, "detectron2 and mmcv cannot run; run `make setup`")
    if tv is None:
        return c
    try:
        import torch
        from torchvision.ops import nms

        keep = nms(torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10]]), torch.tensor([0.9, 0.8]), 0.5)
        assert keep.tolist() == [0]
    except Exception as exc:
        c.problems.append(
            f"torchvision.ops.nms fails ({_short(exc)}): torchvision does not match torch; "
            "detectron2 without _C has no nms/roi_align"
        )
    return c


def check_numpy() -> Check:
    c = Check("numpy")
    np = _import("numpy", c, "torch interop, detectron2 and mmseg data pipelines unavailable")
    if np is not None and int(np.__version__.split(".")[0]) >= 2:
        c.problems.append("numpy >= 2: the mmcv 2.1.0 build and pycocotools here expect numpy < 2")
    return c


def check_setuptools() -> Check:
    c = Check("setuptools")
    try:
        from importlib.metadata import version

        c.version = version("setuptools")
    except Exception:
        c.problems.append("not installed: detectron2.model_zoo (needs pkg_resources) fails")
        return c
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module("pkg_resources")
    except Exception:
        c.problems.append(
            "pkg_resources missing (setuptools >= 81): detectron2.model_zoo fails; "
            "install 'setuptools<81'"
        )
    return c


def check_detectron2() -> Check:
    c = Check("detectron2")
    d2 = _import(
        "detectron2",
        c,
        "the Detectron2 adapter (detectron2_convnext) and its configs are unavailable; "
        "run `make setup`",
    )
    if d2 is None:
        return c
    try:
        from detectron2 import _C  # noqa: F401

        c.notes.append("_C compiled ops load")
    except Exception:
        c.problems.append(
            "detectron2._C missing (pure-Python build): deformable conv, rotated boxes, "
            "fast COCO eval unavailable; use COCOEvaluator(use_fast_impl=False); "
            "nms/roi_align fall back to torchvision"
        )
    try:
        importlib.import_module("detectron2.model_zoo")
    except Exception as exc:
        c.problems.append(f"detectron2.model_zoo fails ({_short(exc)}): model zoo configs unavailable")
    return c


def check_mmcv() -> Check:
    c = Check("mmcv")
    mmcv = _import(
        "mmcv",
        c,
        "MMSegmentation and the mmseg adapter are unavailable; `make setup` builds mmcv "
        "2.1.0 with ops (C++20, cached in ~/.cache/convnext-backbone)",
    )
    if mmcv is None:
        return c
    try:
        import torch
        from mmcv.ops import nms

        dets, keep = nms(torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10]]), torch.tensor([0.9, 0.8]), 0.5)
        assert keep.tolist() == [0]
        c.notes.append("mmcv.ops loads (nms runs)")
    except Exception as exc:
        c.problems.append(
            f"mmcv.ops does not load ({_short(exc)}): MMSegmentation cannot be imported "
            "(it imports mmcv.ops; mmcv-lite is not enough); rebuild with "
            "scripts/build_mmcv_wheel.sh"
        )
    return c


def check_mmengine() -> Check:
    c = Check("mmengine")
    _import("mmengine", c, "MMSegmentation training (Runner, registries) unavailable")
    return c


def check_mmseg() -> Check:
    c = Check("mmseg")
    _import("mmseg", c, "the mmseg adapter (mmseg_convnext) and ADE20K configs are unavailable")
    return c


def check_mmdet() -> Check:
    c = Check("mmdet")
    _import("mmdet", c, "the mmdet adapter (mmdet_convnext) and COCO detection configs (configs/mmdet) are unavailable")
    return c


def check_simple(name: str, module: str, consequence: str) -> Check:
    c = Check(name)
    _import(module, c, consequence)
    return c


def run_checks() -> list[Check]:
    import warnings

    with warnings.catch_warnings():  # import-time deprecation noise of the frameworks
        warnings.simplefilter("ignore")
        return _run_checks()


def _run_checks() -> list[Check]:
    checks = [check_python(), check_torch()]
    if checks[-1].version is None:
        return checks  # nothing else can work without torch
    checks += [
        check_native_kernel(),
        check_torchvision(),
        check_numpy(),
        check_setuptools(),
        check_detectron2(),
        check_mmcv(),
        check_mmengine(),
        check_mmseg(),
        check_mmdet(),
        check_simple(
            "transformers", "transformers", "HF checkpoint parity tests cannot run "
            "(conversion itself needs only safetensors)"
        ),
        check_simple("timm", "timm", "timm parity tests and benchmarks cannot run"),
        check_simple("safetensors", "safetensors", "loading .safetensors checkpoints unavailable"),
        check_simple("onnx", "onnx", "ONNX export unavailable"),
        check_simple("onnxruntime", "onnxruntime", "exported ONNX models cannot be checked/run"),
    ]
    return checks


def _adapter_status() -> list[str]:
    lines = []
    width = max(map(len, PACKAGES))
    for module in PACKAGES:
        try:
            spec = importlib.util.find_spec(module)
        except Exception:
            spec = None
        where = None
        if spec is not None:
            where = spec.origin or next(iter(spec.submodule_search_locations or []), None)
        lines.append(f"  {module:<{width}} {where or 'NOT FOUND (run `make setup` / pip install -e .)'}")
    return lines


def report(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks) + 2
    lines = ["convnext-backbone environment", ""]
    for c in checks:
        version = c.version if c.version is not None else "MISSING"
        extra = f"  ({'; '.join(c.notes)})" if c.notes else ""
        lines.append(f"  {c.name:<{width}}{version}{extra}")
    lines.append("")
    lines.append("packages:")
    lines += _adapter_status()
    problems = [(c, p) for c in checks for p in c.problems]
    lines.append("")
    if problems:
        lines.append("unavailable / consequences:")
        for c, p in problems:
            tag = "ERROR" if c.required and c.version is None else "-"
            lines.append(f"  {tag} {c.name}: {p}")
    else:
        lines.append("everything available")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``convnext-backbone doctor`` (none yet)."""


def run(args: argparse.Namespace | None = None) -> int:
    checks = run_checks()
    print(report(checks), flush=True)
    missing_required = [c.name for c in checks if c.required and c.version is None]
    return 1 if missing_required else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convnext_backbone.doctor", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
