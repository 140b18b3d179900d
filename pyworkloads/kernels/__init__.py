"""Kernel dispatch: one switch moves every heavy op of every model between backends.

Models never call NumPy for the four heavy ops directly; they call these functions, which

1. validate the arguments once, for every backend (shapes, dtypes), naming the bad argument;
2. run the op on the active backend -- ``"numpy"`` (the reference, always there), ``"cpp"``
   (``pyworkloads._kernels``) or ``"cuda"`` (``pyworkloads._cuda``) -- falling back to the
   reference for an op a backend does not implement;
3. report the call to every active :func:`profile` (op, layer name, shapes, FLOPs, bytes, time).

FLOP conventions of the records (the cost model counts the same way, see docs/architecture.md §5):

=============  ===================================================================================
matmul         macs = batch·M·N·K;  flops = 2·macs
attention      macs = B·Hq·Tq·Tk·(Dh + Dv) (the full rectangle, as the reference computes it);
               flops = 2·macs + (5 + 1 + [bias] + [2 rel_pos]) · B·Hq·Tq·Tk  (softmax: max,
               subtract, exp, sum, divide; the scale; the bias add when given; the two adds of a
               decomposed bias)
rms_norm       flops = 4·N  (square, sum, scale, weight) for N elements
layer_norm     flops = 5·N  (sum, subtract, square, sum, scale) + N per affine term (weight, bias)
gelu           flops = 5·N  (scale, erf, add, two multiplies) -- the cost model's convention too
qmatmul        x @ Wᵀ, W block-quantized (:mod:`pyworkloads.quant`): macs = M·N·K, flops = 2·macs
=============  ===================================================================================

Bytes are the arrays read and written at their dtype: inputs once, output once; a quantized
weight at its stored size (blocks and scales), which is what decode streams.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from .. import quant
from . import reference
from . import tracing as _trace
from .tracing import trace

__all__ = [
    "matmul", "matmul_group", "qmatmul", "attention", "rms_norm", "layer_norm", "gelu",
    "available", "use_backend", "get_backend", "set_backend", "profile", "scope", "trace",
    "set_num_threads", "get_num_threads", "Profile", "KernelCall", "cpu_isas", "get_cpu_isa",
    "set_cpu_isa", "use_cpu_isa", "cpu_output_cache",
]

BACKENDS = ("numpy", "cpp", "cuda")
_OPS = ("matmul", "qmatmul", "attention", "rms_norm", "layer_norm", "gelu")


# --------------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------------
_backend_modules: dict[str, object] = {"numpy": reference}
_backend_errors: dict[str, str] = {}


def _load_backend(name: str):
    """Import the Python adapter of a compiled backend once; remember why it failed, if it did."""
    if name in _backend_modules:
        return _backend_modules[name]
    if name in _backend_errors:
        return None
    try:
        mod = importlib.import_module(f".{name}_backend", __name__)
        reason = mod.unavailable_reason()
    except ImportError as exc:                      # extension not built / not importable
        mod, reason = None, f"its extension could not be imported ({exc})"
    if reason:
        _backend_errors[name] = reason
        return None
    _backend_modules[name] = mod
    return mod


def available() -> list[str]:
    """The backends usable in this process, e.g. ``["numpy", "cpp"]`` (+ ``"cuda"`` with a GPU)."""
    return [b for b in BACKENDS if _load_backend(b) is not None]


def unavailable_reason(name: str) -> str | None:
    """Why a backend cannot be used here (None when it can)."""
    if name not in BACKENDS:
        return f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}"
    return None if _load_backend(name) is not None else _backend_errors.get(name)


_default_backend = os.environ.get("PYWORKLOADS_BACKEND", "numpy")
_active: contextvars.ContextVar[str | None] = contextvars.ContextVar("pyworkloads_backend",
                                                                    default=None)


def _check_backend(name: str) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {name!r}")
    if _load_backend(name) is None:
        raise RuntimeError(f"backend {name!r} is not available: {_backend_errors.get(name)}; "
                           f"available here: {', '.join(available())}")
    return name


def get_backend() -> str:
    """The backend the next kernel call will use."""
    return _active.get() or _default_backend


def set_backend(name: str) -> None:
    """Set the process-wide default backend (``use_backend`` overrides it in a scope)."""
    global _default_backend
    _default_backend = _check_backend(name)


@contextlib.contextmanager
def use_backend(name: str):
    """``with use_backend("cpp"): ...`` runs every kernel call inside on that backend."""
    token = _active.set(_check_backend(name))
    try:
        yield name
    finally:
        _active.reset(token)


# The cpp backend is compiled once per x86-64 ISA level (portable, avx2, avx512; see
# pyworkloads/_kernels.py) and runs the best level this CPU executes; these switch levels, e.g. to
# measure or test the AVX2 path on an AVX-512 machine.  The choice is process-wide.
def _cpp_kernels():
    if _load_backend("cpp") is None:
        raise RuntimeError(f"backend 'cpp' is not available: {_backend_errors.get('cpp')}")
    from .. import _kernels
    return _kernels


def cpu_isas() -> list[str]:
    """The ISA levels of the cpp backend this CPU can run, best first, e.g.
    ``["avx512", "avx2", "portable"]``."""
    return _cpp_kernels().isas()


def get_cpu_isa() -> str:
    """The ISA level the cpp backend runs now."""
    return _cpp_kernels().selected()


def set_cpu_isa(isa: str) -> None:
    """Run the cpp backend's kernels compiled for `isa` (one of :func:`cpu_isas`) from now on."""
    _cpp_kernels().select(isa)


@contextlib.contextmanager
def use_cpu_isa(isa: str):
    """``with use_cpu_isa("avx2"): ...`` runs the cpp kernels inside with the AVX2 build."""
    previous = _cpp_kernels().select(isa)
    try:
        yield isa
    finally:
        _cpp_kernels().select(previous)


def cpu_output_cache(limit: int | None = None) -> dict:
    """The cpp backend's cache of output blocks (1 MiB and more) kept for reuse after their arrays
    are freed, so large outputs do not fault in fresh pages each time.  ``limit``: bytes kept idle
    at most (default 1 GiB; 0 turns it off and releases what it holds).  Returns its counters:
    limit, idle_bytes, idle_blocks, hits, misses."""
    return _cpp_kernels().output_cache(limit)


_num_threads: int | None = None


def _cores() -> int:
    """CPUs this process may run on (the OpenMP runtime counts the same affinity mask)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _thread_limit() -> int:
    """The largest count :func:`set_num_threads` accepts: 4 x the cores this process may use
    (more only oversubscribes them)."""
    mod = _load_backend("cpp")
    if mod is not None and hasattr(mod, "max_num_threads"):
        return int(mod.max_num_threads())
    return 4 * _cores()


def set_num_threads(n: int) -> None:
    """Threads used by the compiled kernels from now on, in every Python thread (default:
    OMP_NUM_THREADS, else all cores; at most 4 x the cores this process may use)."""
    global _num_threads
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"set_num_threads: n must be an integer, got {n!r}")
    limit = _thread_limit()
    if not 1 <= n <= limit:
        raise ValueError(f"set_num_threads: n must be a positive integer, at most {limit} (4 x "
                         f"the {limit // 4} cores this process may use), got {n!r}")
    _num_threads = int(n)
    for name in ("cpp", "cuda"):
        mod = _load_backend(name)
        if mod is not None and hasattr(mod, "set_num_threads"):
            mod.set_num_threads(_num_threads)


def get_num_threads() -> int:
    """Threads the compiled kernels use (see :func:`set_num_threads`)."""
    mod = _load_backend("cpp")
    if mod is not None and hasattr(mod, "get_num_threads"):
        return mod.get_num_threads()
    return _num_threads or _cores()


# --------------------------------------------------------------------------------------------
# profiling
# --------------------------------------------------------------------------------------------
@dataclass
class KernelCall:
    """One dispatched kernel call, as seen by :func:`profile`."""
    op: str
    name: str                  # layer scope, e.g. "model.layers.3.self_attn" ("" outside any scope)
    backend: str               # the backend that actually ran it
    shapes: tuple              # input shapes, in argument order
    dtype: str
    macs: int
    flops: int
    bytes: int
    seconds: float


@dataclass
class Profile:
    """Collects :class:`KernelCall` records; ``summary()`` gives a per-op table."""
    records: list[KernelCall] = field(default_factory=list)

    def totals(self, by: str = "op") -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for r in self.records:
            t = out.setdefault(getattr(r, by),
                               {"calls": 0, "macs": 0, "flops": 0, "bytes": 0, "seconds": 0.0})
            t["calls"] += 1
            t["macs"] += r.macs
            t["flops"] += r.flops
            t["bytes"] += r.bytes
            t["seconds"] += r.seconds
        return out

    def summary(self, by: str = "op") -> str:
        rows = self.totals(by)
        total_s = sum(t["seconds"] for t in rows.values()) or float("nan")
        head = (f"{by:<28} {'calls':>7} {'GFLOP':>10} {'MB':>10} {'ms':>10} {'%time':>6} "
                f"{'GFLOP/s':>9} {'GB/s':>8}")
        lines = [head, "-" * len(head)]
        for key, t in sorted(rows.items(), key=lambda kv: -kv[1]["seconds"]):
            s = t["seconds"]
            lines.append(f"{key or '(no scope)':<28} {t['calls']:>7} {t['flops'] / 1e9:>10.3f} "
                         f"{t['bytes'] / 1e6:>10.2f} {s * 1e3:>10.2f} {100 * s / total_s:>6.1f} "
                         f"{t['flops'] / s / 1e9 if s else 0:>9.2f} "
                         f"{t['bytes'] / s / 1e9 if s else 0:>8.2f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


_profiles: contextvars.ContextVar[tuple[Profile, ...]] = contextvars.ContextVar(
    "pyworkloads_profiles", default=())
_scope: contextvars.ContextVar[str] = contextvars.ContextVar("pyworkloads_scope", default="")
_trace.SCOPE = _scope


@contextlib.contextmanager
def profile():
    """``with profile() as prof: model(x)`` -> ``prof.records``, ``prof.summary()``."""
    prof = Profile()
    token = _profiles.set(_profiles.get() + (prof,))
    try:
        yield prof
    finally:
        _profiles.reset(token)


class scope:
    """Name the kernel calls made inside, e.g. with the HF module path ``model.layers.3.mlp``, so
    profile records line up with checkpoint tensors and cost-model layers.

    Inside another scope a name is joined to it with '.', unless it already begins with the
    enclosing name and a '.': models give every module its full path, and a layer's scope
    ``model.layers.3`` around its ``model.layers.3.mlp`` stays ``model.layers.3.mlp``.

    (A class rather than a generator context manager: a decode step enters ~100 scopes, and
    this costs a third of the generator's overhead.)"""
    __slots__ = ("name", "_token")

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        outer = _scope.get()
        name = self.name
        full = name if not outer or name.startswith(outer + ".") else f"{outer}.{name}"
        self._token = _scope.set(full)

    def __exit__(self, *exc):
        _scope.reset(self._token)


def _nbytes(*arrays) -> int:
    return int(sum(a.nbytes for a in arrays if a is not None))


_fns: dict[tuple, tuple] = {}      # (backend, op[, cpp ISA level]) -> (backend that runs it, fn)


def _backend_fn(op: str):
    """(backend name, function) that runs ``op`` now: the active backend's, or the reference's
    when that backend lacks the op.  Looked up once per backend, op and ISA level of the cpp
    kernels (a decode step makes ~100 calls; the lookup through the adapter modules would cost
    about a microsecond each)."""
    name = _active.get() or _default_backend
    cpp = _backend_modules.get("cpp") if name == "cpp" else None
    key = (name, op, cpp.isa()) if cpp is not None else (name, op)
    hit = _fns.get(key)
    if hit is None:
        mod = _backend_modules.get(name) or _load_backend(name)
        fn = getattr(mod, op, None)
        hit = (name, fn) if fn is not None else ("numpy", getattr(reference, op))
        if mod is not None:
            _fns[key] = hit
    return hit


def _run(op: str, args: tuple, kwargs: dict, counts, out_shape: tuple):
    tr = _trace.active_trace()
    if tr is not None:                               # shape-only: record, compute nothing
        out = _trace.Traced(out_shape, np.float32)
        _, _, macs, flops, _ = counts(out)
        tr.add(_trace.TraceRecord(op, _scope.get(),
                                  [a for a in args] + [kwargs.get(k) for k in ("bias", "mask")]
                                  + list(kwargs.get("rel_pos") or ()),
                                  out, int(macs), int(flops),
                                  options={k: v for k, v in kwargs.items()
                                           if k not in ("bias", "mask", "rel_pos")}))
        return out
    name, fn = _backend_fn(op)
    profs = _profiles.get()
    if not profs:
        return fn(*args, **kwargs)
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    seconds = time.perf_counter() - t0
    shapes, dtype, macs, flops, nbytes = counts(out)
    rec = KernelCall(op, _scope.get(), name, shapes, dtype, int(macs), int(flops), int(nbytes),
                     seconds)
    for p in profs:
        p.records.append(rec)
    return out


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------
def _is_device_array(x) -> bool:
    """A GPU array (CuPy, PyTorch, ...): validated by the cuda backend, never copied to the host."""
    return not isinstance(x, np.ndarray) and (hasattr(x, "__cuda_array_interface__")
                                              or hasattr(x, "__dlpack_device__"))


def _as_float_array(x, argname: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        if _is_device_array(x) or isinstance(x, _trace.Traced):
            return x
        x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"{argname} must be a floating-point array, got dtype {x.dtype}")
    return x


# --------------------------------------------------------------------------------------------
# the dispatched ops
# --------------------------------------------------------------------------------------------
def matmul(a, b):
    """``a @ b`` with np.matmul semantics: [..., M, K] @ [..., K, N] -> [..., M, N], leading batch
    dimensions broadcast; 1-D operands are not accepted (use [1, K] / [K, 1])."""
    a = _as_float_array(a, "a")
    b = _as_float_array(b, "b")
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"matmul needs a and b with at least 2 dimensions, got "
                         f"a{tuple(a.shape)} b{tuple(b.shape)}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul: a's last dimension ({a.shape[-1]}) must equal b's "
                         f"second-to-last ({b.shape[-2]}); got a{tuple(a.shape)} "
                         f"b{tuple(b.shape)}")
    try:                                 # (two matrices, the common case, skip the broadcast)
        batch = () if a.ndim == b.ndim == 2 else np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ValueError(f"matmul: batch dimensions of a{tuple(a.shape)} and b{tuple(b.shape)} "
                         "do not broadcast") from None

    def counts(out):
        M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
        macs = math.prod(batch) * M * N * K
        return (tuple(a.shape), tuple(b.shape)), str(out.dtype), macs, 2 * macs, _nbytes(a, b, out)

    return _run("matmul", (a, b), {}, counts, tuple(batch) + (a.shape[-2], b.shape[-1]))


def matmul_group(a, bs):
    """``[a @ b for b in bs]``: several products of one a [M, K] with bs [K, Nᵢ] -- the Q, K and
    V projections of one input, or the gate and up projections of an MLP.

    The result is that of one :func:`matmul` per b, and profiles and traces see exactly those
    calls (one record per b, op "matmul").  The point is the cpp backend's decode path: with a
    few rows of a and every b a transposed weight (``W.T``), it streams all the weights in one
    parallel region, where one call per weight would fork, split and join the threads once per
    weight.  A profile record then carries its share of the group's time, in proportion to its
    weight's size (the group is memory-bound: time goes with the bytes streamed)."""
    a = _as_float_array(a, "a")
    bs = [_as_float_array(b, f"bs[{i}]") for i, b in enumerate(bs)]
    if a.ndim != 2:
        raise ValueError(f"matmul_group: a must be [M, K], got a{tuple(a.shape)}")
    for i, b in enumerate(bs):
        if b.ndim != 2 or b.shape[0] != a.shape[1]:
            raise ValueError(f"matmul_group: bs[{i}] must be [K, N] with K = a's {a.shape[1]} "
                             f"columns, got {tuple(b.shape)}")
    name, fn = _backend_fn("matmul_group")
    if (name == "numpy" or _trace.active_trace() is not None or not isinstance(a, np.ndarray)
            or not all(isinstance(b, np.ndarray) for b in bs)):
        return [matmul(a, b) for b in bs]                  # one dispatched call per product
    profs = _profiles.get()
    if not profs:
        return fn(a, bs)
    t0 = time.perf_counter()
    outs = fn(a, bs)
    seconds = time.perf_counter() - t0
    total = sum(b.nbytes for b in bs) or 1
    M, K = a.shape
    scope_name = _scope.get()
    for b, out in zip(bs, outs):
        macs = M * K * b.shape[1]
        rec = KernelCall("matmul", scope_name, name, (tuple(a.shape), tuple(b.shape)),
                         str(out.dtype), macs, 2 * macs, _nbytes(a, b, out),
                         seconds * b.nbytes / total)
        for p in profs:
            p.records.append(rec)
    return outs


def qmatmul(x, w):
    """``x @ Wᵀ`` for a block-quantized weight W (:class:`pyworkloads.quant.QuantizedTensor`
    [N, K], PyTorch's Linear layout): x float32 [M, K] -> [M, N].  The cpp backend decodes W's
    blocks in registers; the reference decodes W to float32 first."""
    if not isinstance(w, quant.QuantizedTensor):
        raise TypeError(f"qmatmul: w must be a pyworkloads.quant.QuantizedTensor, got "
                        f"{type(w).__name__} (use matmul for float weights)")
    x = _as_float_array(x, "x")
    if w.ndim != 2 or x.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"qmatmul: x must be [M, K] and w [N, K] with the same K, got "
                         f"x{tuple(x.shape)} w{w.shape}")
    if isinstance(x, np.ndarray) and x.dtype != np.float32:
        raise TypeError(f"qmatmul: x must be float32, got {x.dtype}")

    def counts(out):
        macs = x.shape[0] * w.shape[0] * w.shape[1]
        return ((tuple(x.shape), w.shape), f"float32x{w.qtype}", macs, 2 * macs,
                _nbytes(x, out) + w.nbytes)

    return _run("qmatmul", (x, w), {}, counts, (x.shape[0], w.shape[0]))


def attention(q, k, v, causal: bool = False, scale: float | None = None, bias=None, mask=None,
              rel_pos=None):
    """Multi-head scaled dot-product attention (see :func:`reference.attention` for the definition).

    q [B, Hq, Tq, Dh], k [B, Hkv, Tk, Dh], v [B, Hkv, Tk, Dv], Hq % Hkv == 0, Dh >= 1; ``causal``
    is bottom-right aligned when Tq < Tk; ``bias`` additive and ``mask`` boolean (True = attend),
    each broadcasting to [B, Hq, Tq, Tk] (every axis 1 or that size: never enlarging the output);
    ``scale`` defaults to 1/sqrt(Dh) and must be finite in q's dtype.  -> [B, Hq, Tq, Dv]

    ``rel_pos = (rel_h, rel_w)``: a further additive bias in decomposed form, for keys on a kh x kw
    grid (SAM's relative positions): rel_h[..., i, j // kw] + rel_w[..., i, j % kw] is added to
    score (i, j) (:func:`reference.rel_pos_bias`); rel_h and rel_w broadcast to [B, Hq, Tq, kh]
    and [B, Hq, Tq, kw], kh·kw = Tk.  The cpp kernel adds it tile by tile: the [Tq, Tk] bias is
    never formed.

    NaN and inf propagate as in the reference: a row whose allowed scores hold
    a NaN or +inf is NaN, a row with no allowed key is zeros, and v's NaN/inf reach every row
    through their weights (0 for masked keys: 0 * NaN and 0 * inf are NaN).
    """
    q = _as_float_array(q, "q")
    k = _as_float_array(k, "k")
    v = _as_float_array(v, "v")
    for nm, t in (("q", q), ("k", k), ("v", v)):
        if t.ndim != 4:
            raise ValueError(f"attention: {nm} must be 4-D [B, H, T, Dh], got shape "
                             f"{tuple(t.shape)}")
    B, Hq, Tq, Dh = q.shape
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"attention: batch sizes differ: q {B}, k {k.shape[0]}, v {v.shape[0]}")
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ValueError(f"attention: k{tuple(k.shape)} and v{tuple(v.shape)} must share heads "
                         "and length")
    Hkv, Tk = k.shape[1], k.shape[2]
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"attention: query heads ({Hq}) must be a multiple of key/value heads "
                         f"({Hkv})")
    if k.shape[3] != Dh:
        raise ValueError(f"attention: q and k head widths differ ({Dh} vs {k.shape[3]})")
    if Dh == 0:             # the default scale 1/sqrt(Dh) would be inf, every score 0 * inf = NaN
        raise ValueError("attention: q and k need a head width Dh >= 1, got 0")
    if causal and Tq > Tk:
        raise ValueError(f"attention: causal needs Tq <= Tk (bottom-right alignment), got "
                         f"Tq={Tq}, Tk={Tk}")
    full = (B, Hq, Tq, Tk)
    if bias is not None:
        bias = _as_float_array(bias, "bias")
        _check_broadcasts_to(bias, full, "bias")
    if mask is not None:
        if not _is_device_array(mask):
            mask = np.asarray(mask)
        if str(mask.dtype).rsplit(".", 1)[-1] not in ("bool", "bool_"):
            raise TypeError(f"attention: mask must be a boolean array (True = attend), got dtype "
                            f"{mask.dtype}")
        _check_broadcasts_to(mask, full, "mask")
    if scale is not None:
        scale = _check_scale(scale, q)
    if rel_pos is not None:
        rel_pos = _check_rel_pos(rel_pos, (B, Hq, Tq, Tk))
    # additions per score: the bias, and the two terms of the decomposed one
    bias_terms = (bias is not None) + 2 * (rel_pos is not None)

    def counts(out):
        scores = B * Hq * Tq * Tk
        macs = scores * (Dh + v.shape[3])
        flops = 2 * macs + scores * (6 + bias_terms)
        return ((tuple(q.shape), tuple(k.shape), tuple(v.shape)), str(out.dtype), macs, flops,
                _nbytes(q, k, v, bias, mask, out, *(rel_pos or ())))

    return _run("attention", (q, k, v),
                dict(causal=bool(causal), scale=scale, bias=bias, mask=mask, rel_pos=rel_pos),
                counts, (B, Hq, Tq, v.shape[3]))


def _check_rel_pos(rel_pos, full: tuple) -> tuple:
    """(rel_h [..., kh], rel_w [..., kw]) float arrays with kh·kw = Tk, broadcasting to
    [B, Hq, Tq, kh] and [B, Hq, Tq, kw]."""
    if not isinstance(rel_pos, (tuple, list)) or len(rel_pos) != 2:
        raise TypeError(f"attention: rel_pos must be a pair (rel_h, rel_w) or None, got "
                        f"{type(rel_pos).__name__}")
    rel_h = _as_float_array(rel_pos[0], "rel_pos[0]")
    rel_w = _as_float_array(rel_pos[1], "rel_pos[1]")
    if rel_h.ndim < 1 or rel_w.ndim < 1 or rel_h.shape[-1] * rel_w.shape[-1] != full[3]:
        raise ValueError(f"attention: rel_pos = (rel_h {tuple(rel_h.shape)}, rel_w "
                         f"{tuple(rel_w.shape)}): their last axes kh x kw must hold the Tk = "
                         f"{full[3]} keys")
    _check_broadcasts_to(rel_h, full[:3] + rel_h.shape[-1:], "rel_pos[0]", "[B, Hq, Tq, kh]")
    _check_broadcasts_to(rel_w, full[:3] + rel_w.shape[-1:], "rel_pos[1]", "[B, Hq, Tq, kw]")
    return rel_h, rel_w


def _check_broadcasts_to(x, full: tuple, name: str, axes: str = "[B, Hq, Tq, Tk]") -> None:
    """bias/mask: at most 4 axes, each 1 or the size of its axis of [B, Hq, Tq, Tk] -- so that it
    broadcasts *to* the scores without making them (and the output) any larger."""
    shape = tuple(x.shape)
    if len(shape) > 4:
        raise ValueError(f"attention: {name} must have at most 4 dimensions, got {len(shape)}")
    if any(n != 1 and n != f for n, f in zip(shape[::-1], full[::-1])):
        raise ValueError(f"attention: {name} shape {shape} does not broadcast to {axes} = "
                         f"{full} (each of its axes must be 1 or the size of that axis)")


def _check_scale(scale, q) -> float:
    """A real number, finite in q's floating-point type (the scores are computed in it)."""
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.integer,
                                                                      np.floating)):
        raise TypeError(f"attention: scale must be a real number or None, got {scale!r}")
    dtype = q.dtype if isinstance(q, np.ndarray) else np.dtype(np.float32)
    limit = float(np.finfo(dtype).max)
    try:
        value = float(scale)
    except OverflowError:                                   # an int beyond the float64 range
        value = math.inf
    if not (math.isfinite(value) and abs(value) <= limit):
        raise ValueError(f"attention: scale must be a finite number representable in {dtype} "
                         f"(|scale| <= {limit:.8g}), got {scale!r}")
    return scale


def _check_norm(x, weight, bias, eps, op):
    x = _as_float_array(x, "x")
    if x.ndim < 1:
        raise ValueError(f"{op}: x must have at least 1 dimension")
    D = x.shape[-1]
    if weight is not None:
        weight = _as_float_array(weight, "weight")
        if weight.shape != (D,):
            raise ValueError(f"{op}: weight must have shape ({D},) to match x's last axis, got "
                             f"{tuple(weight.shape)}")
    if bias is not None:
        bias = _as_float_array(bias, "bias")
        if bias.shape != (D,):
            raise ValueError(f"{op}: bias must have shape ({D},) to match x's last axis, got "
                             f"{tuple(bias.shape)}")
    if (isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer))
            or not (eps >= 0 and np.isfinite(eps))):
        raise ValueError(f"{op}: eps must be a finite number >= 0, got {eps!r}")
    return x, weight, bias, float(eps)


def rms_norm(x, weight, eps: float = 1e-6):
    """RMSNorm over the last axis: x / sqrt(mean(x²) + eps) · weight.  x [..., D], weight [D]."""
    x, weight, _, eps = _check_norm(x, weight, None, eps, "rms_norm")
    if weight is None:
        raise ValueError("rms_norm: weight is required")
    return _run("rms_norm", (x, weight, eps), {},
                lambda out: ((tuple(x.shape), tuple(weight.shape)), str(out.dtype), 0, 4 * x.size,
                             _nbytes(x, weight, out)),
                x.shape)


def layer_norm(x, weight, bias, eps: float = 1e-5):
    """LayerNorm over the last axis (biased variance).  x [..., D], weight/bias [D] or None."""
    x, weight, bias, eps = _check_norm(x, weight, bias, eps, "layer_norm")
    affine = (weight is not None) + (bias is not None)
    return _run("layer_norm", (x, weight, bias, eps), {},
                lambda out: ((tuple(x.shape),), str(out.dtype), 0, (5 + affine) * x.size,
                             _nbytes(x, weight, bias, out)),
                x.shape)


def gelu(x, approximate: str = "none"):
    """Exact-form GELU x·Φ(x), elementwise (OpenCLIP, SAM and Whisper MLPs); with
    ``approximate="sigmoid"`` x·σ(1.702·x), OpenAI CLIP's "quick_gelu".  Dispatched like the heavy
    ops because erf or exp one float at a time is slow: the cpp kernel vectorises both."""
    if approximate not in ("none", "sigmoid"):
        raise ValueError(f"gelu: approximate must be 'none' or 'sigmoid', got {approximate!r}")
    kw = {} if approximate == "none" else {"approximate": approximate}
    x = _as_float_array(x, "x")
    if isinstance(x, np.ndarray) and not x.flags.c_contiguous and x.ndim > 1:
        # a permuted view of a contiguous block (a channels-first view of channels-last data):
        # computed in memory order and returned with the input's layout, as NumPy's ufuncs do,
        # rather than copied through a strided transpose first
        order = sorted(range(x.ndim), key=lambda d: -x.strides[d])
        inner = x.transpose(order)
        if inner.flags.c_contiguous:
            return gelu(inner, approximate).transpose(np.argsort(order))
    out = _run("gelu", (x,), kw,
               lambda out: ((tuple(x.shape),), str(out.dtype), 0, 5 * x.size, _nbytes(x, out)),
               x.shape)
    if isinstance(x, _trace.Traced) and not x.contig:
        out.contig = False                       # the result keeps the input's layout
    return out
