"""The block's depthwise 7x7 convolution on CPU through a small C kernel (``csrc/dwconv7.c``).

Part of the accelerator: only ``accel.fused`` calls it, for blocks the dispatch rule admitted.

oneDNN computes the depthwise weight gradient ~7x slower than its forward: a fifth of a
ConvNeXt-T training step on CPU. The kernel here does the weight gradient at forward speed
and the forward/input gradient up to ~2x faster than oneDNN (stage-1 sizes, output buffer
already resident), with the same float32 numerics class
(sums in float32; the weight gradient accumulates per row, so it is closer to float64 than
oneDNN's). float32 and bfloat16 tensors (bfloat16: float32 sums, each result rounded once,
where the reference rounds it). It is compiled once per machine with the system C compiler
(~0.3 s) for the host's instruction set (``-march=native``: AVX-512, AVX512-BF16 where the
CPU has them), or, where that build fails, for the compiler's generic target (the portable
kernel); ``kernel_isa()`` says which. The library goes into the user cache and is loaded with
ctypes. Its work is split over torch's own OpenMP threads where torch runs on GNU OpenMP (the
loader hands the kernel torch's ``GOMP_parallel``: Python threads beside OpenMP's spin-waiting
workers would share the cores with them, and ran ~3x slower right after a GEMM), otherwise over
Python threads (ctypes releases the GIL); ``threading_mode()`` says which. Without a
compiler, or with ``CONVNEXT_BACKBONE_NATIVE=0``, everything falls back to
``torch.nn.functional.conv2d`` with one warning (``CONVNEXT_BACKBONE_NATIVE=portable`` builds
the portable kernel only). Nothing is compiled at import: the first accelerated call builds
(or finds) the library.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

__all__ = ["DTYPES", "bias_gelu_", "cpu_bf16", "depthwise7", "depthwise7_norm_rows", "differentiable_grads", "kernel_isa",
           "native_status", "residual_", "scale_", "sum_of_squares", "threading_mode", "usable", "usable_rows"]

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("csrc") / "dwconv7.c"
# -ffp-contract=fast: a*b + c as one fused multiply-add where the target has one (ISO C mode turns it off)
_FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-std=c11", "-shared", "-fPIC"]
_PORTABLE_FLAGS = ["-O3", "-ffp-contract=fast", "-std=c11", "-shared", "-fPIC", "-Wno-psabi"]  # the compiler's generic target
# The tensor dtypes the kernel computes, and the suffix of their C functions.
DTYPES = {torch.float32: "", torch.bfloat16: "_bf16"}
_ISA_NAMES = {"avx512bf16": "x86-64 AVX-512 with AVX512-BF16", "avx512": "x86-64 AVX-512", "avx2": "x86-64 AVX2/FMA",
              "x86-64": "x86-64 SSE2 (generic)", "aarch64": "AArch64 NEON", "generic": "generic C"}
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_status: str | None = None  # None: not tried yet; "ok" or why not
_kernel: str | None = None  # which build was loaded: "<isa> (native)" or "<isa> (portable: why)"
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _forget_pool_after_fork() -> None:
    # a forked child has none of the parent's threads: a pool inherited from it would hang
    global _pool, _pool_size
    _pool, _pool_size = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _cache_dir() -> Path:
    root = os.environ.get("CONVNEXT_BACKBONE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "convnext-backbone"
    )
    return Path(root) / "kernels"


def _cpu_flags() -> str:
    """-march=native output is only valid on CPUs with the same features: part of the cache key."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _build(flags: list[str]) -> Path:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise RuntimeError("no C compiler found (set CC or install gcc)")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(
        "\0".join([_SOURCE.read_text(), cc, version, " ".join(flags), platform.machine(), _cpu_flags()]).encode()
    ).hexdigest()[:16]
    for folder in (_cache_dir(), Path(tempfile.gettempdir()) / f"convnext-backbone-{os.getuid()}"):  # read-only home: /tmp
        target = folder / f"dwconv7-{key}.so"
        if target.exists():
            return target
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
            break
        except OSError:
            continue
    else:
        raise RuntimeError(f"no writable cache folder ({_cache_dir()} or the temp dir)")
    os.close(fd)
    try:
        done = subprocess.run([cc, *flags, str(_SOURCE), "-o", tmp], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{cc} failed: {done.stderr.strip()[-500:]}")
        os.replace(tmp, target)  # atomic: concurrent builders each write their own temp file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _build_and_open() -> tuple[ctypes.CDLL, str]:
    """The host-specific build, else the portable one; and which it is."""
    why = "CONVNEXT_BACKBONE_NATIVE=portable"
    if os.environ.get("CONVNEXT_BACKBONE_NATIVE", "1") != "portable":
        try:
            return ctypes.CDLL(str(_build(_FLAGS))), "native"
        except Exception as exc:  # e.g. a compiler that does not know -march=native
            why = f"the -march=native build failed: {type(exc).__name__}: {str(exc)[-200:]}"
            log.warning("convnext_backbone: %s; building the portable kernel", why)
    return ctypes.CDLL(str(_build(_PORTABLE_FLAGS))), f"portable: {why}"


def _load() -> ctypes.CDLL | None:
    global _lib, _status, _kernel
    if _status is not None:
        return _lib
    with _lock:
        if _status is not None:
            return _lib
        if os.environ.get("CONVNEXT_BACKBONE_NATIVE", "1") == "0":
            _status = "disabled by CONVNEXT_BACKBONE_NATIVE=0"
            return None
        try:
            lib, flavour = _build_and_open()
            ptr, i64 = ctypes.c_void_p, ctypes.c_long
            for suffix in DTYPES.values():
                for name, args in (("dwconv7_forward", [ptr, ptr, ptr, ptr, ptr, ptr, ctypes.c_float] + [i64] * 7),
                                   ("dwconv7_grad_weight", [ptr, ptr, ptr] + [i64] * 6),
                                   ("sum_of_squares_rows", [ptr, ptr] + [i64] * 4),
                                   ("bias_gelu_rows", [ptr, ptr, ptr] + [i64] * 4),
                                   ("residual_rows", [ptr, ptr, ptr, ptr] + [i64] * 3),
                                   ("scale_rows", [ptr, ptr, ptr, ptr] + [i64] * 3)):
                    fn = getattr(lib, name + suffix)
                    fn.argtypes, fn.restype = args, None
                for name, args in (("dwconv7_forward_par", [ptr, ptr, ptr, ptr, ptr, ptr, ctypes.c_float] + [i64] * 8),
                                   ("dwconv7_grad_weight_par", [ptr, ptr, ptr] + [i64] * 8),
                                   ("sum_of_squares_rows_par", [ptr, ptr] + [i64] * 6),
                                   ("bias_gelu_rows_par", [ptr, ptr, ptr] + [i64] * 6),
                                   ("residual_rows_par", [ptr, ptr, ptr, ptr] + [i64] * 4),
                                   ("scale_rows_par", [ptr, ptr, ptr, ptr] + [i64] * 4)):
                    fn = getattr(lib, name + suffix)
                    fn.argtypes, fn.restype = args, None
            lib.round_to_bf16.argtypes, lib.round_to_bf16.restype = [ptr, ptr, i64], None
            lib.set_openmp.argtypes, lib.set_openmp.restype = [ptr, ptr, ptr], None
            _use_torchs_openmp(lib)
            lib.kernel_isa.argtypes, lib.kernel_isa.restype = [], ctypes.c_char_p
            _kernel = f"{lib.kernel_isa().decode()} ({flavour})"
            _lib, _status = lib, "ok"
        except Exception as exc:  # no compiler, read-only cache, foreign platform: fall back
            _status = f"unavailable ({type(exc).__name__}: {exc})"
            log.warning("convnext_backbone: native depthwise kernel %s; using torch conv2d (slower CPU training)", _status)
    return _lib


_openmp_pid: int | None = None  # the process whose OpenMP runtime the kernel was handed (None: none)


def _torchs_openmp() -> str | None:
    """The path of the GNU OpenMP runtime torch's CPU ops run on, if that is what they run on."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    try:
        with open("/proc/self/maps") as f:
            loaded = {line.split()[-1] for line in f if "libgomp" in line}
    except OSError:
        return None
    mine = sorted(p for p in loaded if os.path.basename(p).startswith("libgomp") and os.path.dirname(p) == torch_lib)
    return mine[0] if mine else (sorted(loaded)[0] if len(loaded) == 1 else None)


def _use_torchs_openmp(lib: ctypes.CDLL) -> None:
    """Hand the kernel torch's OpenMP entry points: its threads are torch's, already running (Python
    threads beside them would compete for the cores with OpenMP's spin-waiting workers)."""
    global _openmp_pid
    path = _torchs_openmp()
    if path is None:
        return
    try:
        gomp = ctypes.CDLL(path)  # the loaded library itself, not a second copy
        lib.set_openmp(*(ctypes.cast(getattr(gomp, name), ctypes.c_void_p)
                         for name in ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads")))
        _openmp_pid = os.getpid()
    except (OSError, AttributeError) as exc:
        log.debug("convnext_backbone: no OpenMP entry points in %s (%s); Python threads", path, exc)


def threading_mode() -> str:
    """How the kernel splits work over threads: torch's OpenMP threads, or a Python thread pool."""
    _load()
    return "OpenMP (torch's threads)" if _openmp() else "Python threads"


def _openmp() -> bool:
    # libgomp's thread pool does not survive fork (torch's own ops hang in such a child): a forked
    # child uses the Python thread pool, which is rebuilt after fork
    return _openmp_pid is not None and _openmp_pid == os.getpid()


def _rows(name: str, x: torch.Tensor, args: tuple, r0: int, r1: int, extra: tuple = ()) -> None:
    """``name(*args, a, b, *extra)`` on ranges [a, b) covering the rows [r0, r1), over threads."""
    parts = _parts(r1 - r0)
    if _openmp():
        getattr(_require(), f"{name}_par{DTYPES[x.dtype]}")(*args, r0, r1, *extra, parts)
    else:
        _run_rows(_fn(name, x), r1 - r0, lambda k: args, parts, offset=r0, extra=extra)


def _summed(name: str, x: torch.Tensor, rows: int, acc_shape: tuple[int, ...], args_for) -> torch.Tensor:
    """A reduction over rows: ``name(*args_for(acc), a, b)``, one float32 accumulator per thread, summed after."""
    if not _openmp():
        return _summed_rows(_fn(name, x), rows, acc_shape, args_for)
    parts = _parts(rows)
    acc = torch.zeros(parts, *acc_shape)
    getattr(_require(), f"{name}_par{DTYPES[x.dtype]}")(*args_for(acc.data_ptr()), 0, rows, acc[0].numel(), parts)
    return acc.sum(0)


def _require() -> ctypes.CDLL:
    lib = _load()
    if lib is None:
        raise RuntimeError(f"native depthwise kernel {_status}")
    return lib


def native_status() -> str:
    """'ok', or why the C kernel is not used (compiles it on first call)."""
    _load()
    return _status or "unavailable"


def kernel_isa() -> str | None:
    """The instruction set the loaded kernel was compiled for, and whether it is the host-specific
    (``native``) or the portable build, e.g. ``"avx512bf16 (native)"``; None without a kernel."""
    _load()
    return _kernel


def describe_isa(isa: str | None) -> str:
    """``kernel_isa()`` in words."""
    if isa is None:
        return "no C kernel"
    name, _, rest = isa.partition(" ")
    return f"{_ISA_NAMES.get(name, name)} {rest}".strip()


def cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bfloat16 natively (bfloat16 matrix instructions, which oneDNN uses
    for the model's GEMMs and convolutions), and the evidence: the CPU flags in /proc/cpuinfo
    (x86 ``avx512_bf16`` / ``amx_bf16``, Arm ``bf16``), else torch's own probe."""
    line = _cpu_flags()
    if line:
        flags = set(line.partition(":")[2].split())
        found = sorted(flags & {"avx512_bf16", "amx_bf16", "bf16"})
        return bool(found), ("CPU flags: " + ", ".join(found)) if found else "no bf16 CPU flag (avx512_bf16, amx_bf16, bf16)"
    from .torch_state import cpu_bf16_supported

    native = cpu_bf16_supported()
    return native, f"torch reports {'' if native else 'no '}native bf16 (no /proc/cpuinfo)"


def usable(x: torch.Tensor) -> bool:
    """The kernel's domain for the input: CPU float32/bfloat16 NHWC memory with C % 8 == 0, and a built kernel.

    The module side (a stock 7x7 depthwise conv, no hooks, eager mode) is the dispatch rule's
    (``accel.stock``), asked before this."""
    c = x.shape[1] if x.ndim == 4 else 0
    return (
        x.dtype in DTYPES
        and c % 8 == 0 and c > 0
        and x.is_contiguous(memory_format=torch.channels_last)  # NHWC dense (size-1 dims' strides ignored)
        and _load() is not None
    )


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)  # no copy when already NHWC dense


def _parts(rows: int) -> int:
    return max(1, min(torch.get_num_threads(), rows))


def _run_rows(fn, rows: int, args_for, parts: int | None = None, offset: int = 0, extra: tuple = ()) -> None:
    """Call ``fn(*args_for(k), r0, r1, *extra)`` on ``parts`` (torch's thread count) ranges of the rows
    ``[offset, offset + rows)``; ctypes drops the GIL."""
    global _pool, _pool_size
    parts = parts or _parts(rows)
    bounds = [offset + rows * k // parts for k in range(parts + 1)]
    if parts == 1:
        fn(*args_for(0), offset, offset + rows, *extra)
        return
    with _lock:
        if _pool is None or _pool_size < parts:
            _pool, _pool_size = ThreadPoolExecutor(parts, thread_name_prefix="convnext-dwconv"), parts
        pool = _pool
    futures = [pool.submit(fn, *args_for(k), bounds[k], bounds[k + 1], *extra) for k in range(parts)]
    for f in futures:
        f.result()


def _summed_rows(fn, rows: int, acc_shape: tuple[int, ...], args_for) -> torch.Tensor:
    """A reduction over rows: one float32 accumulator per thread (its pointer goes to ``args_for``), summed after."""
    parts = _parts(rows)
    acc = torch.zeros(parts, *acc_shape)
    _run_rows(fn, rows, lambda k: args_for(acc[k].data_ptr()), parts)
    return acc.sum(0)


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv(x)``, NCHW-shaped with NHWC memory."""
    n, c, h, w = x.shape
    y = torch.empty_like(x, memory_format=torch.channels_last)
    _call_forward(x, weight, bias, y, None, 0, n * h)
    return y


def _call_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor,
                  norm: nn.LayerNorm | None, r0: int, r1: int) -> None:
    """Output rows ``[r0, r1)`` of the N*H image rows into ``y`` (x's dtype), which starts at row ``r0``.
    The parameters go to the kernel in float32 (exact for a bfloat16 model's)."""
    n, c, h, w = x.shape
    wt = _f32(weight.detach().reshape(c, 49).t())  # (tap, channel): a vector load per tap
    b = None if bias is None else _f32(bias.detach())
    if norm is None:
        ln = (None, None, 0.0)
    else:
        ln_w, ln_b = _f32(norm.weight.detach()), _f32(norm.bias.detach())
        ln = (ln_w.data_ptr(), ln_b.data_ptr(), norm.eps)
    ptrs = (x.data_ptr(), wt.data_ptr(), None if b is None else b.data_ptr(), y.data_ptr(), *ln, n, h, w, c)
    with record_function("convnext::dwconv7" + ("_layernorm" if norm is not None else "")):  # visible in torch.profiler
        _rows("dwconv7_forward", x, ptrs, r0, r1, extra=(r0,))


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.float().contiguous()  # no copy when already so


def _fn(name: str, x: torch.Tensor):
    """The C function ``name`` for ``x``'s dtype."""
    return getattr(_require(), name + DTYPES[x.dtype])


def _grad_weight(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    with record_function("convnext::dwconv7_grad_weight"):
        acc = _summed("dwconv7_grad_weight", x, n * h, (49, c), lambda p: (x.data_ptr(), g.data_ptr(), p, n, h, w, c))
    return acc.t().reshape(c, 1, 7, 7).to(x.dtype)


def sum_of_squares(x: torch.Tensor) -> torch.Tensor | None:
    """(N, C) float32 sums of x*x over dim 1 of a contiguous float32 or bfloat16 (N, L, C) tensor in
    one pass (no float32 copy of a bfloat16 tensor); None where the kernel does not apply (the
    caller then uses torch)."""
    n, length, c = x.shape
    if not usable_rows(x):
        return None
    with record_function("convnext::sum_of_squares"):
        return _summed("sum_of_squares_rows", x, n * length, (n, c), lambda p: (x.data_ptr(), p, length, c))


GELU_APPROXIMATIONS = {"none": 0, "tanh": 1}


def bias_gelu_(h: torch.Tensor, bias: torch.Tensor, approximate: str, sumsq: bool = False) -> torch.Tensor | None:
    """``h = gelu(h + bias)`` in place for a contiguous (rows, C) float32/bfloat16 ``h`` (the first
    projection computed without its bias: torch's addmm would copy the bias into every row first),
    each result rounded once; with ``sumsq``, also return the float32 column sums of the stored
    results squared (GRN's statistic, same pass). Only where ``usable_rows(h)``."""
    rows, c = h.shape
    b = _f32(bias.detach())
    args = (h.data_ptr(), b.data_ptr())
    mode = GELU_APPROXIMATIONS[approximate]
    with record_function("convnext::bias_gelu" + ("_sumsq" if sumsq else "")):
        if sumsq:
            return _summed("bias_gelu_rows", h, rows, (c,), lambda p: (*args, p, c, mode))
        if _openmp():
            getattr(_require(), f"bias_gelu_rows_par{DTYPES[h.dtype]}")(*args, None, c, mode, 0, rows, 0, _parts(rows))
        else:
            _run_rows(_fn("bias_gelu_rows", h), rows, lambda k: (*args, None, c, mode))
    return None


def residual_(x: torch.Tensor, branch: torch.Tensor, bias: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = x + (branch + bias)`` for contiguous (rows, C) tensors of one dtype (the second projection
    computed without its bias), summed in float32 and rounded once. Only where ``usable_rows(x)``."""
    rows, c = x.shape
    b = _f32(bias.detach())
    with record_function("convnext::residual"):
        _rows("residual_rows", x, (x.data_ptr(), branch.data_ptr(), b.data_ptr(), out.data_ptr(), c), 0, rows)
    return out


def scale_(w: torch.Tensor, row_scale: torch.Tensor | None, col_scale: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """``out = w * row_scale[:, None] * col_scale[None, :]`` (either scale may be None) for a contiguous
    (rows, cols) ``w`` of ``out``'s dtype: float32 products rounded once, no float32 temporaries (a
    weight with a scale folded in). Only where ``usable_rows(w)``."""
    rows, cols = w.shape
    rs = None if row_scale is None else _f32(row_scale.detach())
    cs = None if col_scale is None else _f32(col_scale.detach())
    _rows("scale_rows", w, (w.data_ptr(), None if rs is None else rs.data_ptr(), None if cs is None else cs.data_ptr(),
                            out.data_ptr(), cols), 0, rows)
    return out


def usable_rows(h: torch.Tensor) -> bool:
    """The domain of the row kernels (``bias_gelu_``, ``sum_of_squares``): a contiguous float32/bfloat16
    (rows, C) tensor with C % 8 == 0 and C <= 4096, and a built kernel."""
    c = h.shape[-1]
    return h.dtype in DTYPES and c % 8 == 0 and 0 < c <= 4096 and h.is_contiguous() and _load() is not None


def round_to_bf16(x: torch.Tensor) -> torch.Tensor:
    """The kernel's float32 -> bfloat16 rounding of a contiguous float32 tensor (numel % 8 == 0), for tests."""
    out = torch.empty(x.shape, dtype=torch.bfloat16)
    _require().round_to_bf16(x.data_ptr(), out.data_ptr(), x.numel())
    return out


class _DepthwiseConv7(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _forward(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph=True: this backward must itself be differentiable
            gx, gw = differentiable_grads(lambda x, w: F.conv2d(x, w, None, padding=3, groups=x.shape[1]),
                                          (x, weight), (need_x, need_w), grad)
            return gx, gw, grad.sum(dim=(0, 2, 3)) if need_b and ctx.has_bias else None
        grad = _nhwc(grad)
        grad_x = _forward(grad, weight.flip(-2, -1), None) if need_x else None  # correlation with the flipped kernel
        grad_w = _grad_weight(x, grad) if need_w else None
        grad_b = grad.sum(dim=(0, 2, 3)) if need_b and ctx.has_bias else None
        return grad_x, grad_w, grad_b


def depthwise7_norm_rows(x: torch.Tensor, conv: nn.Conv2d, norm: nn.LayerNorm, out: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
    """``norm(conv(x).permute(0, 2, 3, 1))`` for the image rows ``[r0, r1)`` of the N*H rows, written to
    ``out`` ((r1 - r0) * W rows of C), no autograd (inference): the LayerNorm runs on each tile while
    it is in cache, and the conv output never goes to memory."""
    _call_forward(x, conv.weight, conv.bias, out, norm, r0, r1)
    return out


def differentiable_grads(fn, inputs: tuple[torch.Tensor, ...], needs: tuple[bool, ...], grad: torch.Tensor) -> tuple:
    """The gradients of ``fn(*inputs)`` against ``grad`` as a graph, for a backward recorded with
    ``create_graph=True`` (gradient penalties, R1, MAML): recomputed through the reference ops,
    so second-order gradients are the reference's. ``None`` where ``needs`` is False."""
    wanted = [t for t, need in zip(inputs, needs) if need]
    with torch.enable_grad():
        got = iter(torch.autograd.grad(fn(*inputs), wanted, grad, create_graph=True, allow_unused=True) if wanted else ())
    return tuple(next(got) if need else None for need in needs)


def depthwise7(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` through the C kernel; call only for a stock block (``accel.stock``) where ``usable(x)``."""
    params = (conv.weight,) if conv.bias is None else (conv.weight, conv.bias)
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return _DepthwiseConv7.apply(x, conv.weight, conv.bias)
    return _forward(x, conv.weight, conv.bias)
