"""Backbone benchmark: ours vs timm ``features_only`` vs HF ``ConvNextBackbone``/``ConvNextV2Backbone``.

``python -m benchmarks.backbone`` (``make bench``) runs the default comparison: V1 tiny, V2 tiny
and V2 atto at 1x3x512x512 and 2x3x800x1216, inference and training step, interleaved repeats
(round-robin over the implementations, rotating who goes first), after checking that each pair
computes the same features; then V1 tiny and V2 tiny in pure bfloat16 at 2x3x800x1216 (rows
labelled "bf16"), each peer timed in NCHW and in channels_last and shown in its faster one. It prints a markdown table, optional JSON, and the ratios vs the
best peer last. ``--quick`` is a seconds-long smoke run. See ``--help`` for the knobs.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from . import frameworks, report
from .measure import DTYPES, PeakMemory, autocast_context, forward_flops, make_step, set_mode, shape_str, summarize, time_once
from .peers import Impl, build_impls, checkpointed_copy, max_abs_diff, model_label, resolve_model_name

DEFAULTS = {
    "models": "convnext_tiny,convnextv2_tiny,convnextv2_atto",
    "shapes": "1x3x512x512,2x3x800x1216",
    "modes": "infer,train",
    "repeats": 2,
    "warmup": 1,
    "frameworks": "d2,mmseg",
    "bf16_models": "convnext_tiny,convnextv2_tiny",
    "bf16_shapes": "2x3x800x1216",
}
QUICK = {
    "models": "convnextv2_atto",
    "shapes": "1x3x64x96",
    "modes": "infer,train",
    "repeats": 1,
    "warmup": 1,
    "frameworks": "d2,mmseg",
    "bf16_models": "none",
    "bf16_shapes": "1x3x64x96",
}
CHECK_SHAPE = (1, 3, 160, 224)  # equivalence check input: small, not a multiple of 32 in width/height ratio


def parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = text.lower().split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 4 or shape[1] != 3 or min(shape) < 1 or min(shape[2:]) < 32:
        raise ValueError(f"bad shape {text!r}: expected NxCxHxW with C=3 and H, W >= 32, e.g. 2x3x800x1216")
    return shape  # type: ignore[return-value]


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.backbone", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", help=f"comma-separated presets or labels, or 'none' for the framework lines only "
                                    f"(default {DEFAULTS['models']})")
    p.add_argument("--shapes", help=f"comma-separated NxCxHxW (default {DEFAULTS['shapes']})")
    p.add_argument("--modes", help="comma-separated subset of infer,train (default both)")
    p.add_argument("--repeats", type=int, help=f"timed runs per implementation (default {DEFAULTS['repeats']})")
    p.add_argument("--warmup", type=int, help=f"untimed runs first, the last one measures peak memory (default {DEFAULTS['warmup']})")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=list(DTYPES),
                   help="bfloat16/float16: see --precision")
    p.add_argument("--precision", default="autocast", choices=["autocast", "pure"],
                   help="how a half --dtype runs: under torch.autocast (weights fp32, as in training; default) or the "
                        "whole model and input cast to it (model.to(dtype), as deployed). The equality checks run in fp32 first.")
    p.add_argument("--channels-last", action="store_true", help="channels_last input and weights for every implementation")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile ours (compilation happens in the warmup, which is then at least 2 runs)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default, all cores)")
    p.add_argument("--ckpt-shapes", default=None,
                   help="shapes at which ours is also run with gradient checkpointing in training mode "
                        "(default: the largest shape; 'none' to skip)")
    p.add_argument("--bf16-models", help="models also run in pure bfloat16 (model.to(torch.bfloat16), as deployed), each "
                                         "peer in NCHW and channels_last, the faster shown; 'none' to skip "
                                         f"(default {DEFAULTS['bf16_models']}; --quick: none)")
    p.add_argument("--bf16-shapes", help=f"shapes of the bfloat16 rows (default {DEFAULTS['bf16_shapes']})")
    p.add_argument("--frameworks", help="comma-separated subset of d2,mmseg, or 'none' (default d2,mmseg)")
    p.add_argument("--framework-repeats", type=int, default=1,
                   help="timed runs of each framework line (a Mask R-CNN / UperNet step takes tens of seconds on 2 cores)")
    p.add_argument("--framework-model", default=None, help="preset for the framework lines (default convnext_tiny; --quick: convnextv2_atto)")
    p.add_argument("--profile", action="store_true", help="print a per-op profile of ours (top 15 by self time) per model/shape/mode")
    p.add_argument("--json", type=Path, default=None, help="write all results (every sample) to this JSON file")
    p.add_argument("--quick", action="store_true", help="tiny smoke run: V2-A at 1x3x64x96, 1 repeat")
    p.add_argument("--seed", type=int, default=0)
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill defaults (quick or full) and validate; ValueError names what is allowed."""
    base = QUICK if args.quick else DEFAULTS
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.models = [] if args.models.strip().lower() == "none" else [resolve_model_name(m) for m in _csv(args.models)]
    args.shapes = [parse_shape(s) for s in _csv(args.shapes)]
    args.bf16_models = [] if args.bf16_models.strip().lower() == "none" else [resolve_model_name(m) for m in _csv(args.bf16_models)]
    args.bf16_shapes = [parse_shape(s) for s in _csv(args.bf16_shapes)]
    args.modes = _csv(args.modes)
    bad = [m for m in args.modes if m not in ("infer", "train")]
    if bad or not args.modes:
        raise ValueError(f"--modes must be a comma-separated subset of infer,train; got {args.modes}")
    if not args.shapes:
        raise ValueError("--shapes must name at least one NxCxHxW shape")
    if args.repeats < 1 or args.warmup < 1 or args.framework_repeats < 1:
        raise ValueError(f"--repeats, --framework-repeats and --warmup must be >= 1 (the last warmup run measures peak "
                         f"memory); got repeats={args.repeats}, framework-repeats={args.framework_repeats}, warmup={args.warmup}")
    if args.compile and args.warmup < 2:
        args.warmup = 2  # the first run compiles; peak memory is measured on the last warmup, after it
    if args.ckpt_shapes is None:
        args.ckpt_shapes = [max(args.shapes, key=lambda s: s[0] * s[2] * s[3])]
    elif args.ckpt_shapes.strip().lower() == "none":
        args.ckpt_shapes = []
    else:
        args.ckpt_shapes = [parse_shape(s) for s in _csv(args.ckpt_shapes)]
    fw = [] if args.frameworks.strip().lower() == "none" else _csv(args.frameworks)
    unknown = [f for f in fw if f not in frameworks.PIPELINES]
    if unknown:
        raise ValueError(f"--frameworks must be a subset of {','.join(frameworks.PIPELINES)} or 'none'; unknown: {unknown}")
    args.frameworks = fw
    args.framework_model = resolve_model_name(args.framework_model or ("convnextv2_atto" if args.quick else "convnext_tiny"))
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch.cuda.is_available() is False")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    return args


def _to_device(impl: Impl, args: argparse.Namespace) -> None:
    impl.model.to(args.device)
    if args.channels_last:
        impl.model.to(memory_format=torch.channels_last)


def _compile_ours(impl: Impl) -> Impl:
    compiled = torch.compile(impl.model, dynamic=False)  # one static graph per shape; dynamic shapes trip inductor here
    return Impl(impl.name, impl.model, lambda x: compiled(x).feature_maps, impl.is_peer)


def _pure(args: argparse.Namespace) -> bool:
    return args.precision == "pure" and args.dtype != "float32"


def _autocast(args: argparse.Namespace):
    return autocast_context(args.device, "float32" if _pure(args) else args.dtype)


def _make_input(shape: tuple[int, ...], args: argparse.Namespace, seed: int, cast: bool = True) -> torch.Tensor:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(args.device)
    if cast and _pure(args):
        x = x.to(DTYPES[args.dtype])
    return x.contiguous(memory_format=torch.channels_last) if args.channels_last else x


def run_checks(pairs: list[tuple[str, Impl, Impl]], label: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each pair must produce the same features (fp32, eval) before we time them."""
    from tqdm import tqdm

    x = _make_input(CHECK_SHAPE, args, args.seed + 1, cast=False)  # fp32: same computation, then timed as asked
    tol_rel = 1e-4 if args.device == "cpu" else 5e-3  # cuDNN convolutions use TF32 by default
    rows = []
    for desc, ours, peer in pairs:
        with torch.inference_mode():
            diff, ref = max_abs_diff(list(ours.features(x)), list(peer.features(x)))
        ok = diff <= tol_rel * max(1.0, ref)
        tqdm.write(f"check {label} {desc}: max abs diff {diff:.2e} (max |feature| {ref:.2f}) {'OK' if ok else 'MISMATCH'}")
        rows.append({"model": label, "pair": desc, "input": shape_str(CHECK_SHAPE), "max_abs_diff": diff, "max_abs_ref": ref, "ok": ok})
        if not ok:
            raise SystemExit(f"{label} {desc}: the implementations disagree (max abs diff {diff:.3e} > {tol_rel:g} x "
                             f"max(1, {ref:.3f})); timing them side by side would compare different computations")
    return rows


def run_group(impls: list[Impl], x: torch.Tensor, mode: str, args: argparse.Namespace, memory: PeakMemory,
              progress) -> dict[str, dict[str, Any]]:
    """Warmup (the last warmup run measures memory), then interleaved timed repeats."""
    ac = _autocast(args)
    steps = {}
    for impl in impls:
        set_mode(impl.model, mode)
        steps[impl.name] = make_step(impl.model, impl.features, x, mode, ac)
    out: dict[str, dict[str, Any]] = {impl.name: {"times_s": []} for impl in impls}
    for w in range(args.warmup):
        for impl in impls:
            progress.set_postfix_str(f"{impl.name} warmup")
            if w == args.warmup - 1:
                dt, peak = memory.measure(steps[impl.name])
                out[impl.name].update(warmup_s=dt, peak_mem_mib=peak)
            else:
                time_once(steps[impl.name], args.device)
            progress.update(1)
    timed = [impl for impl in impls if impl.timed]
    n = len(timed)
    for r in range(args.repeats):
        for impl in timed[r % n:] + timed[:r % n]:
            progress.set_postfix_str(f"{impl.name} repeat {r + 1}/{args.repeats}")
            out[impl.name]["times_s"].append(time_once(steps[impl.name], args.device))
            progress.update(1)
    for impl in impls:
        set_mode(impl.model, "infer")
        if impl.timed:
            out[impl.name].update(summarize(out[impl.name]["times_s"]))
    return out


def profile_ours(ours: Impl, x: torch.Tensor, mode: str, title: str, args: argparse.Namespace) -> str:
    """One profiled step of ours after the timed runs: where the time goes, by op."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    set_mode(ours.model, mode)
    step = make_step(ours.model, ours.features, x, mode, _autocast(args))
    with profile(activities=acts) as prof:
        time_once(step, args.device)
    set_mode(ours.model, "infer")
    key = "self_cpu_time_total" if args.device == "cpu" else "self_cuda_time_total"
    return f"profile of ours, {title} (top 15 by {key}):\n" + prof.key_averages().table(sort_by=key, row_limit=15)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.processor())
    except OSError:
        return platform.processor()


def _meta(args: argparse.Namespace, memory: PeakMemory) -> dict[str, Any]:
    import timm
    import transformers

    cpu = _cpu_name()
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.backbone"] + sys.argv[1:]),
        "python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
        "transformers": transformers.__version__, "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else cpu,
        "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "dtype": args.dtype,
        "precision": "float32" if args.dtype == "float32" else args.precision,
        "channels_last": args.channels_last, "compile": args.compile, "repeats": args.repeats, "warmup": args.warmup,
        "memory_method": memory.method, "ours_timed_with_output_norms": True,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "loadavg_start": _loadavg(), **_git_state(),
    }


def _git_state() -> dict[str, Any]:
    """Which code was measured: the commit, and whether the core differs from it."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "convnext_backbone"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "core_modified": None}
    return {"git_commit": commit or None, "core_modified": bool(dirty)}


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def warn_if_busy(args: argparse.Namespace) -> str | None:
    """A CPU run on a machine already busy: say how that distorts the numbers and what helps."""
    load = _loadavg()
    if args.device != "cpu" or load is None or load[0] < 0.5 * (os.cpu_count() or 1):
        return None
    msg = (f"warning: load average {load[0]:.1f} on {os.cpu_count()} cores before starting: other processes compete for "
           f"the CPU. Only ratios within this run are meaningful.")
    if torch.get_num_threads() > 1 and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        msg += (" OpenMP threads spin-wait at every parallel op by default, and on an oversubscribed machine that can make "
                "small ops 10-100x slower; set OMP_WAIT_POLICY=PASSIVE (or --threads 1) for steadier numbers.")
    return msg


def total_runs(args: argparse.Namespace) -> int:
    n = 0
    for shape in args.shapes:
        for mode in args.modes:
            n += 3 * (args.warmup + args.repeats) + (args.warmup if mode == "train" and shape in args.ckpt_shapes else 0)
    return n * len(args.models) + 5 * (args.warmup + args.repeats) * len(args.modes) * len(args.bf16_shapes) * len(args.bf16_models)


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    args = _parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    memory = PeakMemory(args.device)
    results: dict[str, Any] = {"meta": _meta(args, memory), "checks": [], "results": [], "frameworks": []}
    _print_setup(args, results["meta"])
    profiles: list[str] = []
    with tempfile.TemporaryDirectory(prefix="convnext-bench-") as tmp, \
            tqdm(total=total_runs(args), desc="benchmark", unit="run", file=sys.stderr) as progress:
        for name in args.models:
            bench_model(name, Path(tmp), args, memory, progress, results, profiles)
        for name in args.bf16_models:
            bench_model_bf16(name, Path(tmp), args, memory, progress, results, profiles)
        for key in args.frameworks:
            results["frameworks"].append(frameworks.run(key, args, memory, progress))
    _print_report(results, profiles, args)
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, resolved; a usage error (exit 2) for a bad value."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return resolve_args(args)
    except ValueError as e:
        parser.error(str(e))


def _print_setup(args: argparse.Namespace, meta: dict[str, Any]) -> None:
    """One line naming what is measured how, then a warning if the machine is already busy."""
    precision = f" ({args.precision})" if args.dtype != "float32" else ""
    print(f"torch {torch.__version__}, {meta['device_name']}, {torch.get_num_threads()} threads, {args.dtype}{precision}"
          f"{', channels_last' if args.channels_last else ''}{', compiled ours' if args.compile else ''}; "
          f"warmup {args.warmup}, repeats {args.repeats}", flush=True)
    busy = warn_if_busy(args)
    if busy:
        print(busy, flush=True)


def bench_model(name: str, workdir: Path, args: argparse.Namespace, memory: PeakMemory, progress,
                results: dict[str, Any], profiles: list[str]) -> None:
    """One model: its implementations checked against each other, then every shape and mode timed."""
    label = model_label(name)
    impls = _checked_impls(name, label, workdir, args, results)
    for shape in args.shapes:
        _bench_shape(impls, name, label, shape, args, memory, progress, results, profiles)


def bench_model_bf16(name: str, workdir: Path, args: argparse.Namespace, memory: PeakMemory, progress,
                     results: dict[str, Any], profiles: list[str]) -> None:
    """One model in pure bfloat16 (rows labelled "<model> bf16"): each peer timed in NCHW and in
    channels_last, interleaved with the rest; its faster format is the row kept (memory_format says
    which), so ours is compared with each peer at its best."""
    bargs = argparse.Namespace(**{**vars(args), "dtype": "bfloat16", "precision": "pure", "shapes": args.bf16_shapes,
                                  "ckpt_shapes": [], "channels_last": False, "compile": False})
    label = f"{model_label(name)} bf16"
    impls = _checked_impls(name, label, workdir, bargs, results)
    for peer in [impl for impl in impls if impl.is_peer]:
        impls.append(_channels_last_copy(peer))
    start = len(results["results"])
    for shape in bargs.shapes:
        _bench_shape(impls, name, label, shape, bargs, memory, progress, results, profiles)
    results["results"][start:] = _faster_format(results["results"][start:])


def _channels_last_copy(peer: Impl) -> Impl:
    """The peer with channels_last weights and input (timm returns the maps, HF an output holding them)."""
    import copy

    model = copy.deepcopy(peer.model).to(memory_format=torch.channels_last)
    run = model if peer.features is peer.model else (lambda x: model(x).feature_maps)
    return Impl(f"{peer.name}+channels_last", model, lambda x: run(x.contiguous(memory_format=torch.channels_last)), True)


def _faster_format(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Of each peer's two rows (NCHW, channels_last) per shape and mode, the faster one, under the peer's name."""
    kept = []
    for r in rows:
        if not r["is_peer"]:
            kept.append(r)
            continue
        name = r["impl"].removesuffix("+channels_last")
        other = next(o for o in rows if o is not r and o["shape"] == r["shape"] and o["mode"] == r["mode"]
                     and o["impl"].removesuffix("+channels_last") == name)
        if r["median_s"] < other["median_s"] or (r["median_s"] == other["median_s"] and r["impl"] == name):
            kept.append({**r, "impl": name, "memory_format": "channels_last" if r["impl"] != name else "contiguous",
                         "other_format_median_s": other["median_s"]})
    return kept


def _checked_impls(name: str, label: str, workdir: Path, args: argparse.Namespace, results: dict[str, Any]) -> list[Impl]:
    """Ours and the peers on the device (ours compiled if asked), after each pair computed the same
    features in fp32; then cast to the --dtype if it runs pure. The reference used only by the
    checks is released on return."""
    impls, pairs = build_impls(name, workdir, seed=args.seed)
    for impl in impls + [pairs[0][1]]:
        _to_device(impl, args)
    if args.compile:
        impls[0] = _compile_ours(impls[0])
        pairs[1] = (pairs[1][0], impls[0], pairs[1][2])
    results["checks"] += run_checks(pairs, label, args)
    if _pure(args):
        for impl in impls:
            impl.model.to(DTYPES[args.dtype])
    return impls


def _bench_shape(impls: list[Impl], name: str, label: str, shape: tuple[int, ...], args: argparse.Namespace,
                 memory: PeakMemory, progress, results: dict[str, Any], profiles: list[str]) -> None:
    """Every mode at one input shape (training at a --ckpt-shapes shape adds ours with checkpointing)."""
    x = _make_input(shape, args, args.seed)
    flops = forward_flops(impls[0].model, shape)
    for mode in args.modes:
        group = list(impls)
        if mode == "train" and shape in args.ckpt_shapes:
            group.append(checkpointed_copy(impls[0]))
            _to_device(group[-1], args)
        progress.set_description(f"{label} {mode} {shape_str(shape)}")
        out = run_group(group, x, mode, args, memory, progress)
        results["results"] += _result_rows(group, out, name, label, shape, mode, flops)
        progress.write(report.group_line(label, shape_str(shape), mode, out))
        if args.profile:
            profiles.append(profile_ours(impls[0], x, mode, f"{label} {mode} {shape_str(shape)}", args))
            progress.write(profiles[-1])


def _result_rows(group: list[Impl], out: dict[str, dict[str, Any]], name: str, label: str, shape: tuple[int, ...],
                 mode: str, flops: float | None) -> list[dict[str, Any]]:
    """One result row per implementation; ours' inference row carries the forward GFLOP."""
    rows = []
    for impl in group:
        row = {"model": name, "label": label, "shape": shape_str(shape), "mode": mode, "impl": impl.name,
               "is_peer": impl.is_peer, **out[impl.name]}
        if impl.name == "ours" and mode == "infer" and flops:
            row["forward_gflop"] = flops / 1e9
        rows.append(row)
    return rows


def _print_report(results: dict[str, Any], profiles: list[str], args: argparse.Namespace) -> None:
    """Ratios and checkpointing summaries added to the results; the table, the JSON (if asked), the ratios."""
    results["meta"]["loadavg_end"] = _loadavg()
    results["ratios"] = report.ratios(results["results"])
    results["checkpointing"] = report.checkpointing(results["results"])
    results["profiles"] = profiles
    print()
    print(report.render(results))
    if args.json:
        report.write_json(results, args.json)
        print(f"\nwrote {args.json}")
    print()
    print(report.render_ratios(results["ratios"]))

if __name__ == "__main__":
    sys.exit(main())
