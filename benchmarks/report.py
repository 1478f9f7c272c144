"""Markdown tables, ratios vs the best peer, and the JSON file (written atomically)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from convnext_backbone.fileio import atomic_write

PEER_NAMES = {"timm": "timm", "hf": "HF"}


def _time_cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    cl = " CL" if r.get("memory_format") == "channels_last" else ""  # a bf16 peer row: its faster format
    return f"{r['median_s']:.3f} ({r['min_s']:.3f}-{r['max_s']:.3f}){cl}"


def _mem_cell(r: dict[str, Any] | None) -> str:
    if r is None or r.get("peak_mem_mib") is None:
        return "-"
    return f"{r['peak_mem_mib']:.0f}"


def group_line(label: str, shape: str, mode: str, out: dict[str, dict[str, Any]]) -> str:
    """One progress line per finished group: medians and peaks of every implementation."""
    cells = [f"{name} {r['median_s'] if 'median_s' in r else r['warmup_s']:.3f}s{'' if 'median_s' in r else ' (memory run)'}"
             f"/{_mem_cell(r)}MiB" for name, r in out.items()]
    return f"{label} {mode} {shape}: " + ", ".join(cells)


def _groups(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, dict[str, Any]]]:
    groups: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["label"], r["mode"], r["shape"]), {})[r["impl"]] = r
    return groups


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Speedup of ours = median of the fastest peer / median of ours, per model, mode and shape."""
    out = []
    for (label, mode, shape), g in _groups(rows).items():
        peers = {k: v for k, v in g.items() if v["is_peer"]}
        if "ours" not in g or not peers:
            continue
        best = min(peers, key=lambda k: peers[k]["median_s"])
        best_min = min(peers, key=lambda k: peers[k]["min_s"])
        out.append({"model": label, "mode": mode, "shape": shape, "best_peer": best,
                    "best_peer_median_s": peers[best]["median_s"], "ours_median_s": g["ours"]["median_s"],
                    "speedup": peers[best]["median_s"] / g["ours"]["median_s"],
                    "speedup_best_of": peers[best_min]["min_s"] / g["ours"]["min_s"]})
    return out


def checkpointing(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Training peak memory of ours without vs with gradient checkpointing."""
    out = []
    for (label, _mode, shape), g in _groups(rows).items():
        if "ours+ckpt" not in g:
            continue
        off, on = g["ours"], g["ours+ckpt"]
        cut = None
        if off.get("peak_mem_mib") and on.get("peak_mem_mib") is not None:
            cut = 1.0 - on["peak_mem_mib"] / off["peak_mem_mib"]
        out.append({"model": label, "shape": shape, "peak_mem_mib_off": off.get("peak_mem_mib"),
                    "peak_mem_mib_on": on.get("peak_mem_mib"), "memory_cut": cut,
                    "memory_run_s_off": off["warmup_s"], "memory_run_s_on": on["warmup_s"]})
    return out


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [] if not results["results"] else [
        f"## Backbone: ours vs timm features_only vs HF ({meta['device_name']}, {meta['threads']} threads, {meta['dtype']}"
        f"{'' if meta.get('precision', 'float32') == 'float32' else ' (' + meta['precision'] + ')'}"
        f"{', channels_last' if meta['channels_last'] else ''}{', ours compiled' if meta['compile'] else ''}"
        f"{', commit ' + meta['git_commit'] if meta.get('git_commit') else ''}{' + modified core' if meta.get('core_modified') else ''})",
        "",
        f"Seconds per step: median (min-max) of {meta['repeats']} interleaved runs after {meta['warmup']} warmup. "
        "Peak MiB: extra memory at the step's peak (" + meta["memory_method"] + "). "
        "Ours is timed with its 4 output LayerNorms (as HF; timm features_only has none)."
        + (" Rows labelled bf16: model and input in pure bfloat16; each peer timed in NCHW and in channels_last, "
           "the faster shown (CL: channels_last)." if any(r.get("memory_format") for r in results["results"]) else ""),
        "",
        "| model | input | mode | ours s | timm s | HF s | ours MiB | timm MiB | HF MiB | ours GFLOP/s | ours vs best peer |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if not lines:
        lines = [f"({meta['device_name']}, {meta['threads']} threads; peak MiB: {meta['memory_method']})"]
    speed = {(r["model"], r["mode"], r["shape"]): r for r in results.get("ratios", [])}
    for key, g in _groups(results["results"]).items():
        ours = g.get("ours")
        gflops = "-"
        if ours and ours.get("forward_gflop"):
            rate = ours["forward_gflop"] / ours["median_s"]
            gflops = f"{rate:.0f}" if rate >= 10 else f"{rate:.2f}"
        sp = speed.get(key)
        sp_cell = f"{sp['speedup']:.2f}x ({PEER_NAMES[sp['best_peer']]})" if sp else "-"
        lines.append(f"| {key[0]} | {key[2]} | {key[1]} | {_time_cell(ours)} | {_time_cell(g.get('timm'))} | "
                     f"{_time_cell(g.get('hf'))} | {_mem_cell(ours)} | {_mem_cell(g.get('timm'))} | {_mem_cell(g.get('hf'))} | "
                     f"{gflops} | {sp_cell} |")
    ck = results.get("checkpointing") or []
    if ck:
        lines += ["", "Gradient checkpointing, ours, training step (s: the single memory run of each, not interleaved repeats):", "",
                  "| model | input | peak MiB off | peak MiB on | memory cut | s off | s on |", "|---|---|---|---|---|---|---|"]
        for c in ck:
            cut = f"{100 * c['memory_cut']:.0f}%" if c["memory_cut"] is not None else "-"
            off = f"{c['peak_mem_mib_off']:.0f}" if c["peak_mem_mib_off"] is not None else "-"
            on = f"{c['peak_mem_mib_on']:.0f}" if c["peak_mem_mib_on"] is not None else "-"
            lines.append(f"| {c['model']} | {c['shape']} | {off} | {on} | {cut} | {c['memory_run_s_off']:.3f} | {c['memory_run_s_on']:.3f} |")
    fw = results.get("frameworks") or []
    if fw:
        lines += ["", "Training step of a full model with our backbone:", "",
                  "| pipeline | backbone | input | s | peak MiB | note |", "|---|---|---|---|---|---|"]
        for f in fw:
            if f["status"] == "ok":
                lines.append(f"| {f['pipeline']} | {f['model']} | {f['shape']} | {_time_cell(f)} | {_mem_cell(f)} | {f.get('note', '')} |")
            else:
                lines.append(f"| {f['pipeline']} | {f['model']} | {f['shape']} | - | - | skipped: {f['reason']} |")
    return "\n".join(lines)


def render_ratios(rows: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"ours/best-peer speedup: {r['model']} {r['mode']} {r['shape']}: {r['speedup']:.2f}x "
        f"(medians: best peer {PEER_NAMES[r['best_peer']]} {r['best_peer_median_s']:.3f} s, ours {r['ours_median_s']:.3f} s; "
        f"best-of-runs ratio {r['speedup_best_of']:.2f}x)"
        for r in rows
    )


def write_json(results: dict[str, Any], path: Path) -> None:
    """Atomic (``fileio.atomic_write``): nothing half-written on failure; the umask's permissions."""
    atomic_write(path, json.dumps(results, indent=1) + "\n")
