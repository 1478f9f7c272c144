"""``convnext-backbone export``: multi-scale features of a folder of images, resumable and shardable.

Pipeline: the sorted input list is split across ``torchrun`` ranks (``paths[rank::world]``);
DataLoader workers decode and preprocess; the main thread runs the model; writer threads
serialise, checksum and atomically write one file per image and append its manifest line.
See ``store.py`` for the directory layout and why a killed run resumes cleanly. One run at a
time writes into an ``--out`` (``store.OutputLock``), and never over files it did not write:
its inputs, a checkpoint directory, a folder that is not an export (``_check_out_is_ours``).
Ctrl-C stops with one line saying how far it got; the same command resumes.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..cli_errors import UserError, interrupt_note, user_errors
from ..fileio import atomic_write, check_not_overwriting
from ..messages import shortened
from .features import (
    DTYPES,
    add_model_arguments,
    add_preprocessing_arguments,
    autocast_for,
    check_normalisation_args,
    model_fingerprint,
    model_from_args,
    normalisation,
)
from .images import DEFAULT_SIZE, RESIZE_MODES, InputList, list_inputs, load_image, make_transform
from .store import (
    CONFIG_NAME,
    FEATURES_DIR,
    FORMATS,
    MANIFEST_NAME,
    PARTIAL_DIR,
    PARTS_DIR,
    ManifestPart,
    OutputLock,
    describe_lock_record,
    merge_manifest,
    output_is_valid,
    read_manifest,
    serialize,
    verify_export,
)

__all__ = ["ExportError", "add_arguments", "run", "run_export"]

_MAX_NOTES = 20
_COMPARED = ("features", "dtype", "compute_dtype", "format", "preprocess", "norm_outputs", "model_sha256")


class ExportError(UserError):
    """A problem with the arguments or the output directory, reported before any work."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Export multi-scale ConvNeXt features of many images: one file per image under OUT/features/ "
        "plus OUT/manifest.jsonl (source, output, per-feature shape/dtype/stride, sha256, status). "
        "Re-running the same command resumes; under torchrun the input is sharded across ranks."
    )
    m = p.add_argument_group("model")
    add_model_arguments(m)
    io_ = p.add_argument_group("input and output")
    io_.add_argument("--input", metavar="DIR|GLOB|LIST.txt", help="a folder (recursive), a quoted glob, a text file "
                     "with one path per line (relative to the list's folder), or one image")
    io_.add_argument("--out", metavar="DIR", help="output directory (created; re-use it to resume)")
    io_.add_argument("--format", choices=sorted(FORMATS), default="safetensors", help="file format (default: %(default)s)")
    io_.add_argument("--dtype", choices=list(DTYPES), default="float32",
                     help="dtype of the stored features; on CUDA float16/bfloat16 also run the model under autocast "
                     "(default: %(default)s)")
    io_.add_argument("--compute-dtype", choices=["auto", *DTYPES], default="auto",
                     help="dtype the model runs in. auto (default): float32 on CPU; on CUDA autocast in --dtype when "
                     "that is a half dtype. float16/bfloat16: the whole model and input cast to it (model.half(), as "
                     "deployed), on CPU too; LayerNorm and GRN statistics stay float32 inside. On CPU bfloat16 is fast, "
                     "float16 is not (PyTorch's CPU depthwise convolution has no fast float16 kernel)")
    io_.add_argument("--verify", metavar="DIR", help="instead of exporting: recompute every checksum and shape in an "
                     "export directory; exit 1 naming any bad, missing or unlisted file")
    pre = p.add_argument_group("preprocessing")
    pre.add_argument("--resize", choices=RESIZE_MODES, default="letterbox",
                     help="letterbox (default): long side to --size, aspect kept, zero-padded to a square at the "
                     "bottom/right; the whole image is seen and the manifest records scale and padding so feature "
                     "cells map back to pixels. processor: ConvNextImageProcessor(shortest_edge=--size), the "
                     "classification crop/warp")
    pre.add_argument("--size", type=int, default=DEFAULT_SIZE, help="input side in pixels, a multiple of 32 (default: %(default)s)")
    add_preprocessing_arguments(pre)
    run_ = p.add_argument_group("execution")
    run_.add_argument("--batch-size", type=int, default=8, help="images per forward (default: %(default)s)")
    run_.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                      help="DataLoader processes decoding and preprocessing (default: %(default)s; 0 = in the main process)")
    run_.add_argument("--writer-threads", type=int, default=2, help="threads serialising and writing files (default: %(default)s)")
    run_.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available; "
                      "under torchrun cuda:LOCAL_RANK)")
    run_.add_argument("--resume-check", choices=("checksum", "size"), default="checksum",
                      help="how a re-run decides an existing output is done: its recorded sha256 (default) or only "
                      "its size (faster on huge exports; writes are atomic either way)")
    run_.add_argument("--no-progress", action="store_true", help="no progress bar")


# -- distributed ------------------------------------------------------------------------------
class _Dist:
    """torchrun context (RANK/WORLD_SIZE set): gloo on CPU, nccl on CUDA; a no-op otherwise."""

    def __init__(self, device_type: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self.owned = False
        if self.enabled and not torch.distributed.is_initialized():
            backend = "nccl" if device_type == "cuda" else "gloo"
            # shards are balanced by count, but a slow rank may trail by hours on huge exports
            torch.distributed.init_process_group(backend=backend, timeout=timedelta(hours=12))
            self.owned = True

    def broadcast(self, obj: Any) -> Any:
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.owned:
            torch.distributed.destroy_process_group()


def _device(spec: str | None, local_rank: int, distributed: bool) -> torch.device:
    if spec is None:
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ExportError(f"--device {spec}: CUDA is not available here; use --device cpu")
        if distributed and device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


# -- data -------------------------------------------------------------------------------------
class _ImageDataset(Dataset):
    """Item i -> done (skip) / preprocessed image / error; never raises for a bad image."""

    def __init__(self, items: list[tuple[str, str]], transform, done: dict[str, dict], out_dir: Path, check: str):
        self.items, self.transform, self.done, self.out_dir, self.check = items, transform, done, out_dir, check

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        source, output = self.items[i]
        rec = self.done.get(source)
        if rec is not None and rec.get("output") == output and output_is_valid(self.out_dir, rec, self.check):
            return {"i": i, "skip": True}
        try:
            x, info = load_image(source)
            x, geometry = self.transform(x)
        except Exception as e:  # corrupt, truncated, missing, unsupported: recorded, never fatal
            msg = str(e).splitlines()[0] if str(e) else ""
            return {"i": i, "error": f"{type(e).__name__}: {msg}"[:500]}
        return {"i": i, "x": x, "image": info, "geometry": geometry}


def _collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    good = [b for b in batch if "x" in b]
    return {
        "n": len(batch),
        "skipped": [b["i"] for b in batch if b.get("skip")],
        "errors": [(b["i"], b["error"]) for b in batch if "error" in b],
        "good": [{k: v for k, v in b.items() if k != "x"} for b in good],
        "x": torch.stack([b["x"] for b in good]) if good else None,
    }


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers decode; the model keeps the cores' intra-op threads


# -- writing ----------------------------------------------------------------------------------
class _Writer:
    def __init__(self, out_dir: Path, fmt: str, strides: dict[str, int], part: ManifestPart, tmp_dir: Path, rank: int):
        self.out_dir, self.fmt, self.strides, self.part, self.tmp_dir, self.rank = out_dir, fmt, strides, part, tmp_dir, rank

    def ok(self, source: str, output: str, tensors: dict[str, torch.Tensor], image: dict, geometry: dict) -> None:
        meta = {"source": source, "geometry": json.dumps(geometry), "strides": json.dumps(self.strides)}
        data = serialize(tensors, self.fmt, meta)
        atomic_write(self.out_dir / output, data, tmp_dir=self.tmp_dir, fsync=True)
        self.part.write({
            "source": source, "output": output, "status": "ok", "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "image": image, "geometry": geometry, "rank": self.rank,
            "features": {
                k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."), "stride": self.strides[k]}
                for k, v in tensors.items()
            },
        })

    def error(self, source: str, reason: str) -> None:
        self.part.write({"source": source, "output": None, "status": "error", "error": reason, "rank": self.rank})


# -- the run ----------------------------------------------------------------------------------
_OWNED_DIRS = (FEATURES_DIR, PARTIAL_DIR, PARTS_DIR)  # written and cleared by the export only


def _lock(out: Path, lock: OutputLock) -> list[str]:
    """Take ``lock`` (``OutputInUse`` if another run holds it); -> notes for the user."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    try:
        lock.acquire()
    except OSError as e:
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise ExportError(f"--out {out} is not writable ({e.strerror}): an export cannot run or resume there "
                          f"(to check a finished one: --verify {out})") from e
    if lock.unsupported:
        return [f"note: {lock.unsupported}; make sure no other export writes into it at the same time"]
    if lock.previous:
        return [f"note: taking over {out} from an export that did not finish ({describe_lock_record(lock.previous)})"]
    return []


def _check_out_is_ours(out: Path, inputs: InputList) -> None:
    """Refuse an ``--out`` where the export would overwrite or delete files it did not write.

    Its own names (``features/``, ``manifest.jsonl``, ``.partial/``...) in a folder without an
    ``export_config.json`` (the first file every export writes) belong to someone else; and an
    input image must not lie where the export writes and clears (``--out`` = the image folder
    when that has a ``features/`` of its own). Inputs are compared by path, with the symlinks
    above their common folder resolved (resolving each of millions of paths would cost minutes).
    """
    if not (out / CONFIG_NAME).exists():
        found = [n + ("/" if n in _OWNED_DIRS else "") for n in (MANIFEST_NAME, *_OWNED_DIRS) if os.path.lexists(out / n)]
        if found:
            raise ExportError(
                f"--out {out} holds {', '.join(found)} but no {CONFIG_NAME}, so it is not an export directory and the "
                "export would overwrite or delete what is there; choose another --out"
            )
    real_out, root = os.path.realpath(out), str(inputs.root)
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_out, real_root]) not in (real_out, real_root):
        return  # neither folder holds the other
    owned = {os.path.join(real_out, n): n for n in (*_OWNED_DIRS, CONFIG_NAME, MANIFEST_NAME)}
    dirs = tuple(os.path.join(real_out, n) + os.sep for n in _OWNED_DIRS)
    for p in map(str, inputs.paths):
        q = real_root + p[len(root):] if p.startswith(root) else p
        if q.startswith(dirs) or q in owned:
            name = next(n for o, n in owned.items() if q == o or q.startswith(o + os.sep))
            raise ExportError(
                f"--out {out}: the input {p} lies in its {name}{'/' if name in _OWNED_DIRS else ''}, which the export "
                f"writes and clears itself; choose an --out away from the input images"
            )


def _prepare(args: argparse.Namespace, out: Path, config: dict[str, Any], lock: OutputLock) -> dict[str, Any]:
    """Rank 0: list inputs, lock ``out``, check it is ours to write, check/write the export config, clear stale temp files."""
    inputs = list_inputs(args.input)
    messages = _lock(out, lock)
    _check_out_is_ours(out, inputs)
    cfg_path = out / CONFIG_NAME
    if cfg_path.is_file():
        old = {"compute_dtype": "auto", **json.loads(cfg_path.read_text())}  # exports from before --compute-dtype
        diff = [k for k in _COMPARED if old.get(k) != config.get(k)]
        if diff:
            shown = "; ".join(f"{k}: {json.dumps(old.get(k))[:120]} -> {json.dumps(config.get(k))[:120]}" for k in diff)
            raise ExportError(
                f"--out {out} already holds an export made with other settings ({shown}); "
                "use another --out, or delete it to start over"
            )
    else:
        atomic_write(cfg_path, json.dumps(config, indent=2, sort_keys=True) + "\n", fsync=True)
    shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)
    notes = shortened(inputs.notes, _MAX_NOTES)
    return {"root": str(inputs.root), "paths": [str(p) for p in inputs.paths], "notes": notes, "messages": messages,
            "run_id": f"{time.time_ns():020d}"}  # names the manifest part files only (removed at the end)


def _check_args(args: argparse.Namespace) -> None:
    for name in ("input", "out"):
        if not getattr(args, name):
            raise ExportError(f"--{name} is required (or use --verify DIR)")
    if args.batch_size < 1 or args.workers < 0 or args.writer_threads < 1:
        raise ExportError("--batch-size and --writer-threads must be >= 1 and --workers >= 0")
    if args.format == "npz" and args.dtype == "bfloat16":
        raise ExportError("npz (numpy) has no bfloat16; use --format safetensors or --dtype float16/float32")
    try:  # the rule every writer follows; the images are checked against what the export owns (_check_out_is_ours)
        check_not_overwriting([args.weights], args.out, directory=True)
    except ValueError as e:
        raise ExportError(f"--out {e}") from e


def _resume_note(out: Path, paths: list[str]) -> str:
    done = read_manifest(out, set(paths), fields=("status",))
    n = sum(r["status"] == "ok" for r in done.values())
    return f"run the same command again to resume ({n} of {len(paths)} images done)"


def run_export(args: argparse.Namespace) -> dict[str, Any]:
    """Run one export (one rank of it under torchrun); -> counts and timings of this rank."""
    with user_errors():  # a ValueError while setting up is a bad argument or checkpoint
        _check_args(args)
        make_transform(args.resize, args.size)  # checks --resize and --size before the model loads
        check_normalisation_args(args.image_mean, args.image_std)  # ... and --image-mean/--image-std
    dist_device_type = "cuda" if (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda") else "cpu"
    dist = _Dist(dist_device_type)
    out = Path(args.out)
    lock = OutputLock(out)  # taken by rank 0 for the ranks of this run
    try:
        say = (lambda msg: print(msg, file=sys.stderr)) if dist.rank == 0 else (lambda msg: None)
        device, model = _load_model(args, dist, say)
        with user_errors():
            mean, std, normalised_by = normalisation(model, args.weights, args.image_mean, args.image_std)
        transform = make_transform(args.resize, args.size, mean, std)
        plan = _agree_on_plan(args, out, _export_config(args, model, transform, normalised_by), lock, dist)
        for message in plan["messages"]:
            say(message)
        for note in plan["notes"]:
            say(f"input: {note}")
        if device.type == "cpu" and args.compute_dtype == "auto":
            _suggest_bfloat16(say)  # once the export starts: a refused run says only why
        stats, all_stats, outcome = _export_shard(args, model, device, transform, plan, out, dist)
        if dist.rank == 0:
            _summarise(stats, all_stats, outcome, plan, out, say)
        return stats
    finally:
        lock.release()
        dist.close()


def _load_model(args: argparse.Namespace, dist: _Dist, say) -> tuple[torch.device, torch.nn.Module]:
    """The model on this rank's device, in the compute dtype asked for."""
    with user_errors():
        device = _device(args.device, dist.local_rank, dist.enabled)
        model = model_from_args(args, warn=say)
    compute = None if args.compute_dtype in ("auto", "float32") else DTYPES[args.compute_dtype]
    return device, model.to(device=device, dtype=compute)


def _suggest_bfloat16(say) -> None:
    """On a CPU with native bfloat16, say once that it is the faster precision (float32 stays the
    default: the numbers change only when asked; an explicit --compute-dtype float32 is not told)."""
    from ..accel.native import cpu_bf16

    native, evidence = cpu_bf16()
    if native:
        say(f"note: this CPU computes bfloat16 natively ({evidence}): --compute-dtype bfloat16 exports faster, "
            "with features within bfloat16 rounding of these float32 ones")


def _export_config(args: argparse.Namespace, model: torch.nn.Module, transform, normalised_by: str) -> dict[str, Any]:
    """What makes two exports the same export (``export_config.json``; a resume must match it).
    The normalisation's values are in ``preprocess``; ``normalisation_from`` says where they came from."""
    features = {n: {"stride": s, "channels": c} for n, s, c in zip(model.out_features, model.strides, model.channels)}
    return {
        "format_version": 1, "features": features,
        "dtype": args.dtype, "compute_dtype": args.compute_dtype, "format": args.format, "preprocess": transform.describe(),
        "norm_outputs": not args.no_output_norm, "model_sha256": model_fingerprint(model),
        "normalisation_from": normalised_by, "weights_family": model.config.weights_family,
        "model": {"weights": os.path.abspath(args.weights) if args.weights else None, "preset": args.preset,
                  "config": model.config.to_dict()},
    }


def _agree_on_plan(args: argparse.Namespace, out: Path, config: dict[str, Any], lock: OutputLock, dist: _Dist) -> dict[str, Any]:
    """Rank 0 checks --out, takes the lock and lists the inputs; every rank gets the same plan (or its error)."""
    plan: dict[str, Any] | None = None
    if dist.rank == 0:
        try:
            plan = _prepare(args, out, config, lock)
        except (OSError, ValueError) as e:
            plan = {"error": str(e)}
    plan = dist.broadcast(plan)
    if "error" in plan:
        raise ExportError(plan["error"])
    return plan


def _export_shard(args: argparse.Namespace, model: torch.nn.Module, device: torch.device, transform,
                  plan: dict[str, Any], out: Path, dist: _Dist) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, str]]:
    """This rank's share of the images -> (its stats, every rank's stats, rank 0: each image's outcome)."""
    root, ext = Path(plan["root"]), FORMATS[args.format]
    items = [(p, f"{FEATURES_DIR}/{Path(os.path.relpath(p, root)).as_posix()}{ext}") for p in plan["paths"]]
    shard = items[dist.rank::dist.world]
    outcome: dict[str, str] = {}
    with interrupt_note(lambda: _resume_note(out, plan["paths"]) if dist.rank == 0 else None):
        done = read_manifest(out, {s for s, _ in shard}, fields=("status", "output", "bytes", "sha256"))
        tmp_dir = out / PARTIAL_DIR / f"rank{dist.rank:05d}"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        part = ManifestPart(out / PARTS_DIR / f"{plan['run_id']}-rank{dist.rank:05d}.jsonl")
        writer = _Writer(out, args.format, dict(zip(model.out_features, model.strides)), part, tmp_dir, dist.rank)
        try:
            stats = _process(args, model, device, DTYPES[args.dtype], transform, shard, done, out, writer, show=dist.rank == 0)
        finally:
            part.close()
        all_stats = dist.gather(stats)
        if dist.rank == 0:
            outcome = merge_manifest(out)
            shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)
    return stats, all_stats, outcome


def _summarise(stats: dict[str, Any], all_stats: list[dict[str, Any]], outcome: dict[str, str], plan: dict[str, Any],
               out: Path, say) -> None:
    """Rank 0: the totals over all ranks and the failed images, printed and added to ``stats``."""
    stats["total"] = t = {k: sum(s[k] for s in all_stats) for k in ("written", "skipped", "failed", "images")}
    failures = [(p, outcome[p]) for p in plan["paths"] if outcome.get(p, "ok") != "ok"]
    say(f"export: {t['images']} images: {t['written']} written, {t['skipped']} already done, {t['failed']} failed "
        f"-> {out / MANIFEST_NAME}")
    for line in shortened([f"failed: {p}: {why}" for p, why in failures], 20, 'more (status "error" in the manifest)'):
        say(f"  {line}")
    stats["failures"] = failures


def _process(args, model, device, dtype, transform, shard, done, out, writer: _Writer, show: bool) -> dict[str, Any]:
    from tqdm import tqdm

    dataset = _ImageDataset(shard, transform, done, out, args.resume_check)
    loader = DataLoader(
        dataset, batch_size=args.batch_size, num_workers=args.workers, collate_fn=_collate,
        pin_memory=device.type == "cuda", worker_init_fn=_worker_init if args.workers else None,
        prefetch_factor=4 if args.workers else None,
    )
    stats = {"images": len(shard), "written": 0, "skipped": 0, "failed": 0, "forward_s": 0.0}
    max_pending = 2 * args.batch_size  # bounds memory held by queued writes
    pending: deque = deque()
    start = time.perf_counter()
    with ThreadPoolExecutor(args.writer_threads, thread_name_prefix="export-writer") as pool, tqdm(
        total=len(shard), unit="img", desc="export", disable=not show or args.no_progress, dynamic_ncols=True
    ) as bar:
        for batch in loader:
            for i, reason in batch["errors"]:
                writer.error(shard[i][0], reason)
            stats["failed"] += len(batch["errors"])
            stats["skipped"] += len(batch["skipped"])
            if batch["x"] is not None:
                t0 = time.perf_counter()
                compute = next(model.parameters()).dtype  # float32, or the --compute-dtype the model was cast to
                with torch.inference_mode(), autocast_for(device, dtype) if compute == torch.float32 else contextlib.nullcontext():
                    feats = model.forward_dict(batch["x"].to(device, compute, non_blocking=True))
                feats = {k: v.to(dtype).cpu() for k, v in feats.items()}
                stats["forward_s"] += time.perf_counter() - t0
                for j, item in enumerate(batch["good"]):
                    source, output = shard[item["i"]]
                    tensors = {k: v[j].clone() for k, v in feats.items()}
                    pending.append(pool.submit(writer.ok, source, output, tensors, item["image"], item["geometry"]))
                stats["written"] += len(batch["good"])
            while len(pending) > max_pending:
                pending.popleft().result()  # a write error (disk full...) stops the run here
            bar.update(batch["n"])
            if stats["failed"]:
                bar.set_postfix(failed=stats["failed"], refresh=False)
        for f in pending:
            f.result()
    stats["loop_s"] = time.perf_counter() - start
    return stats


def run(args: argparse.Namespace) -> int:
    if args.verify:
        problems, counts = verify_export(args.verify, progress=not args.no_progress)
        for line in problems:
            print(f"BAD {line}", file=sys.stderr)
        if problems:
            print(f"verify: {len(problems)} problem(s) in {args.verify}", file=sys.stderr)
            return 1
        print(f"verify: {counts['ok']} files ok ({counts['error']} images recorded as failed) in {args.verify}")
        return 0
    run_export(args)  # errors and Ctrl-C: one line each (cli_errors.run_cli)
    return 0
