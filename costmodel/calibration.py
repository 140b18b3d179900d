"""Calibrated device profiles: how fast this project's own kernels run on a machine, measured at
a grid of shapes, so a layer's predicted time (``t_pred``) comes from the efficiency measured near
its own shape instead of the datasheet roofline alone.

    prof = calibrate(backend="cpp")          # ~1-2 minutes on 2 cores; saved per backend
    dev = cm.get_device("cpu")               # carries the cpp profile when there is one
    r = cm.analyze("llama2-110m", dev, phase="decode", seq_len=64)   # layers carry t_pred

What is measured, through ``pyworkloads.kernels`` on the chosen backend and timed by
``pw.profile()`` (the same clock ``validate`` compares against):

- matmul ``x @ Wᵀ`` over M (1: a decode GEMV .. 2048, doubling), K (64 .. 4096) and N (64 .. 32768);
- qmatmul ``x @ Wᵀ`` with W in each of llama.cpp's block formats (``pw.kernels.qmatmul``: the
  backend's kernel, or the reference's decode-then-multiply where the backend has none) on a
  coarser grid of M, K and N -- a decode of the weights costs per weight, so fewer, smaller
  weights keep it to seconds;
- attention over the query and key lengths (prefill, decode, and a few queries against many
  keys or the reverse: cross-attention), head width, causal or not;
- rms_norm and layer_norm over rows x width; GELU over the element count;
- NumPy's functions a model calls between kernels (add, multiply, exp, tanh, copy ...), per element
  by call size, and NumPy's cost per row of a strided walk; streaming read/copy bandwidth by size;
- the compute roof where the reported clock puts theory below the kernels (``fma_peak``);
- the fixed cost of a call: the kernel's own (tiny shapes), and the Python around it -- the
  dispatcher's argument checks and the shared layer helpers a model calls it through
  (``common.linear``, ``common.layer_norm`` ...: weight lookups, scopes, the bias add).

How a layer is predicted: each measured point has an efficiency, its roofline time (at the
machine's compute roof and best streaming bandwidth) over its measured time less the fixed cost.
A kernel layer takes the efficiency of its op interpolated at its own shape -- multilinear in log2
of the shape on the calibration grid, inverse-distance weights over the nearest points where the
grid has no cell around it -- and

    t_pred = calls x (kernel overhead + glue) + t_roofline / efficiency + its bias add

(``part="kernel"`` leaves out the glue and the bias add: what ``pw.profile()`` times).  The
engine's NumPy work between kernels is priced per function from its ``work`` column (function,
calls, elements, rows of a strided walk): a fixed cost per call, the measured cost per element at
the per-call size, a set-up per row.  Fixed costs are measured after a cache flush, as they occur
between a model's kernels.

A GPU profile is built the same way from a ``benchmarks/bench_cuda.py`` JSON (our kernels and
cuBLAS / SDPA side by side): :func:`profile_from_bench`.
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .gguf import FORMATS as GGUF_FORMATS

__all__ = ["Profile", "calibrate", "load_profile", "profile_path", "profile_from_bench",
           "theoretical_cpu_peak", "KERNEL_OPS"]

PROFILE_VERSION = 3
KERNEL_OPS = ("matmul", "qmatmul", "attention", "rms_norm", "layer_norm", "gelu")
_NEIGHBOURS = 4


def qmatmul_key(fmt: str) -> str:
    """The points table of qmatmul with weights in block format ``fmt`` ("qmatmul:q4_0"): each
    format decodes at its own speed, so each has its own efficiencies."""
    return f"qmatmul:{fmt}"


# ---------------------------------------------------------------------------------------------
# the machine
# ---------------------------------------------------------------------------------------------
def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _clock_hz() -> float | None:
    """The highest clock the OS reports (cpufreq's maximum, else /proc/cpuinfo's MHz)."""
    best = 0.0
    for p in Path("/sys/devices/system/cpu").glob("cpu*/cpufreq/cpuinfo_max_freq"):
        try:
            best = max(best, float(p.read_text()) * 1e3)
        except (OSError, ValueError):
            pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                best = max(best, float(line.split(":", 1)[1]) * 1e6)
    except (OSError, ValueError):
        pass
    return best or None


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def theoretical_cpu_peak() -> tuple[float | None, str]:
    """FP32 FLOP/s no code can beat: cores x SIMD lanes x 2 FMA pipes x 2 FLOPs x clock, with
    its derivation (None when the clock is unknown)."""
    flags = _cpu_flags()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    clock = _clock_hz()
    if clock is None:
        return None, "clock unknown"
    n = cores()
    how = (f"{n} cores x {lanes} fp32 lanes x 2 FMA pipes x 2 FLOPs x {clock / 1e9:.3f} GHz "
           f"({'AVX-512' if lanes == 16 else 'AVX2' if lanes == 8 else 'SSE'})")
    return n * lanes * 2 * 2 * clock, how


def machine_identity(backend: str) -> dict:
    import pyworkloads as pw
    flags = _cpu_flags()
    isa = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "baseline"
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"node": platform.node(), "cpu": model, "isa": isa, "cores": cores(),
            "machine": platform.machine(), "numpy": np.__version__,
            "pyworkloads": pw.__version__, "backend": backend,
            "threads": pw.kernels.get_num_threads()}


# ---------------------------------------------------------------------------------------------
# the profile
# ---------------------------------------------------------------------------------------------
_INT = re.compile(r"\d+")


def _features(layer) -> tuple[str, tuple[float, ...]] | None:
    """(op, log2 shape features) of a layer record -- the coordinates efficiencies are
    interpolated in -- read from the shapes GraphBuilder writes; None for records no kernel
    measurement describes (summed decode steps are predicted step by step before summing)."""
    s = layer.shapes
    if "summed" in s:
        return None
    nums = [int(v) for v in _INT.findall(s)]
    lg = [math.log2(max(v, 1)) for v in nums]
    if layer.op in ("matmul", "conv"):
        # a block-quantized weight runs the engine's qmatmul, measured per format
        fmt = getattr(layer, "weights_dtype", "")
        op = qmatmul_key(fmt) if fmt in GGUF_FORMATS else "matmul"
        if len(nums) == 4:                                  # [M,K]x[K,N]
            return op, (lg[0], lg[1], lg[3])
        if len(nums) == 6:                                  # [b,M,K]x[b,K,N]
            return op, (lg[0] + lg[1], lg[2], lg[5])
        return None
    if layer.op == "attention" and len(nums) == 8:          # q[B,H,Tq,Dh] kv[B,KVH,Tk,Dv]
        _, _, tq, dh, _, _, tk, _ = nums
        return "attention", (math.log2(tq), math.log2(tk), math.log2(dh),
                             1.0 if "causal" in s else 0.0)
    if layer.op in ("rms_norm", "layer_norm") and len(nums) == 2:
        return layer.op, (lg[0], lg[1])
    if layer.op == "gelu" and len(nums) == 1:
        return "gelu", (lg[0],)
    return None


def _multilinear(arr: np.ndarray, x: np.ndarray) -> float | None:
    """Multilinear interpolation of log(value) on the rectilinear grid the rows of ``arr``
    ([coordinates..., value]) span; outside the grid the edge value holds.  None when a corner
    of the cell around ``x`` was not measured."""
    if not len(arr):
        return None
    d = arr.shape[1] - 1
    table = {tuple(row[:-1]): row[-1] for row in arr}
    lo, hi, frac = [], [], []
    for j in range(d):
        axis = np.unique(arr[:, j])
        v = min(max(x[j], axis[0]), axis[-1])
        i = int(np.searchsorted(axis, v, side="right")) - 1
        i = min(max(i, 0), len(axis) - 1)
        a, b = axis[i], axis[min(i + 1, len(axis) - 1)]
        lo.append(a)
        hi.append(b)
        frac.append(0.0 if b == a else (v - a) / (b - a))
    total = 0.0
    for corner in range(1 << d):
        key, w = [], 1.0
        for j in range(d):
            up = (corner >> j) & 1
            key.append(hi[j] if up else lo[j])
            w *= frac[j] if up else 1.0 - frac[j]
        if w == 0.0:
            continue
        val = table.get(tuple(key))
        if val is None or val <= 0:
            return None
        total += w * math.log(val)
    return math.exp(total)


def _nearest(arr: np.ndarray, x: np.ndarray) -> float:
    """Inverse-distance weights over the nearest points (of log value)."""
    dist = np.sqrt(((arr[:, :-1] - x) ** 2).sum(axis=1))
    order = np.argsort(dist)[:_NEIGHBOURS]
    if dist[order[0]] < 1e-9:
        return float(arr[order[0], -1])
    w = 1.0 / dist[order] ** 2
    return float(np.exp((w * np.log(arr[order, -1])).sum() / w.sum()))


@dataclass
class Profile:
    """Measured efficiencies of one backend on one machine (see the module docstring)."""
    backend: str
    machine: dict
    measured_at: str
    peak_flops: float                     # the compute roof the efficiencies are relative to
    peak_how: str
    bandwidth: float                      # best streaming bandwidth (B/s), the memory roof
    bandwidth_by_size: list               # [[bytes, B/s], ...] read+write streaming, by size
    overhead: dict                        # op -> seconds of a tiny call (kernel time)
    glue: dict                            # op -> seconds of Python around a kernel call
    ufunc_call: float                     # seconds of a tiny NumPy ufunc call
    ufuncs: dict = field(default_factory=dict)   # function -> [[log2 elements, s/element], ...]
    ufunc_loop: float = 0.0               # seconds per row NumPy walks in a strided call
    points: dict = field(default_factory=dict)   # op -> [[features..., efficiency], ...]
    attention_impl: str = "flash"         # how the backend computes attention (cost convention)
    version: int = PROFILE_VERSION
    vendor: dict = field(default_factory=dict)   # GPU profiles: op -> the vendor library points
    use: str = "ours"                     # which points predict: "ours" or "vendor"
    memory_efficiency: float | None = None   # sparse (GPU) profiles: for memory-bound layers
    memory_efficiency_vendor: float | None = None   # the same for the vendor libraries' points
    qmatmul_backend: str = ""             # the backend whose code ran the qmatmul points ("numpy"
                                          # when the backend has no qmatmul); "" not measured

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"kind": "pyworkloads-costmodel-profile", **asdict(self)},
                                  indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, d: dict) -> Profile:
        if not isinstance(d, dict) or d.get("kind") != "pyworkloads-costmodel-profile":
            raise ValueError("not a costmodel device profile "
                             "(no kind 'pyworkloads-costmodel-profile')")
        if d.get("version") != PROFILE_VERSION:
            raise ValueError(f"profile version {d.get('version')!r}; this costmodel reads version "
                             f"{PROFILE_VERSION}: calibrate again")
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})

    # -- prediction ----------------------------------------------------------------------------
    def efficiency(self, op: str, feats: tuple[float, ...], table: str = "ours") -> float | None:
        """The measured efficiency interpolated at ``feats`` (log2 of the shape): multilinear on
        the calibration grid (exact at a measured point); where the grid has no cell around the
        shape (an attention with Tq neither Tk nor 1), inverse-distance weights over the nearest
        points.  Both interpolate the logarithm: efficiencies span decades."""
        pts = (self.points if table == "ours" else self.vendor).get(op)
        if not pts:
            return None
        arr = np.asarray(pts, dtype=np.float64)
        x = np.asarray(feats, dtype=np.float64)
        if op == "attention":
            # two lines of points: prefill (Tq = Tk) by (T, Dh), decode (Tq = 1) by (Tk, Dh);
            # and a grid of its own for cross-attention (Tq, Tk, Dh)
            tq, tk, dh, causal = x
            cross = (self.points if table == "ours" else self.vendor).get("attention_cross")
            if tq == tk:
                sub = arr[(arr[:, 0] == arr[:, 1]) & (arr[:, 3] == causal)]
                got = _multilinear(sub[:, [1, 2, 4]], np.array([tk, dh]))
            elif tq == 0.0:
                sub = arr[arr[:, 0] == 0.0]
                got = _multilinear(sub[:, [1, 2, 4]], np.array([tk, dh]))
            elif cross:
                got = _multilinear(np.asarray(cross, dtype=np.float64)[:, [0, 1, 2, 4]],
                                   np.array([tq, tk, dh]))
            else:
                got = None
        else:
            got = _multilinear(arr, x)
        return got if got is not None else _nearest(arr, x)

    def bandwidth_at(self, nbytes: float) -> float:
        """Streaming bandwidth for an array of ``nbytes`` (interpolated in log2 of the size)."""
        tab = np.asarray(self.bandwidth_by_size, dtype=np.float64)
        x = math.log2(max(nbytes, 1.0))
        return float(np.interp(x, np.log2(tab[:, 0]), tab[:, 1]))

    def roof(self, layer) -> float:
        """The layer's roofline time at this profile's roofs (compute and memory overlapped)."""
        return max(layer.flops / self.peak_flops, layer.bytes / self.bandwidth)

    def predict(self, layer, table: str | None = None, part: str = "all") -> float | None:
        """Predicted seconds of one layer record (None when nothing measured describes it).
        ``table``: "ours" (the project's kernels) or "vendor" (GPU profiles: cuBLAS, SDPA ...);
        default the profile's ``use``.  A kernel record's time is its calls' fixed cost, the
        Python that dispatches each call (``glue``) and its roofline time over the measured
        efficiency; ``part="kernel"`` leaves the Python out (what ``pw.profile()`` times)."""
        table = table or self.use
        calls = max(getattr(layer, "calls", 1), 1)
        if layer.op == "elementwise" and getattr(layer, "work", "") and self.ufuncs:
            return sum(self.ufunc_seconds(*part) for part in parse_work(layer.work))
        if layer.op in ("elementwise", "embedding"):
            moved = layer.bytes_unfused or layer.bytes
            per_call = moved / calls
            return calls * self.ufunc_call + (moved / self.bandwidth_at(per_call) if moved else 0.0)
        if layer.op == "allreduce":
            return None
        f = _features(layer)
        if f is None:
            return None
        op, feats = f
        eff = self.efficiency(op, feats, table)
        mem_eff = self.memory_efficiency if table == "ours" else self.memory_efficiency_vendor
        if (mem_eff and op in ("matmul", "attention")
                and layer.bytes / self.bandwidth > layer.flops / self.peak_flops):
            # a sparse profile measured this op compute-bound only: a memory-bound layer streams
            # at the bandwidth efficiency the table's memory-bound kernels reached
            eff = mem_eff
        if eff is None:
            return None
        kernel = op.partition(":")[0]      # one fixed cost for qmatmul of every format
        t = calls * self.overhead.get(kernel, 0.0) + self.roof(layer) / eff
        if part == "all":                  # the Python around the calls, a bias add after them
            t += calls * self.glue.get(kernel, 0.0)
            if getattr(layer, "work", "") and self.ufuncs:
                t += sum(self.ufunc_seconds(*w) for w in parse_work(layer.work))
        return t

    def ufunc_seconds(self, name: str, calls: int, elements: int, loops: int) -> float:
        """Seconds of ``calls`` NumPy calls of function ``name`` over ``elements`` in all (of
        the largest operand), ``loops`` of them rows of a strided walk: a fixed cost per call,
        the measured cost per element at the per-call size (which holds the memory traffic and
        the allocation of the result), and a loop set-up per row."""
        kind = name if name in self.ufuncs else UFUNC_ALIAS.get(name, "add")
        tab = np.asarray(self.ufuncs.get(kind) or self.ufuncs["add"], dtype=np.float64)
        per_call = max(elements / max(calls, 1), 1.0)
        per_elem = float(np.exp(np.interp(math.log2(per_call), tab[:, 0], np.log(tab[:, 1]))))
        return calls * self.ufunc_call + elements * per_elem + loops * self.ufunc_loop


# the NumPy calls a model makes, by the function a profile prices them with: data movements
# (copies of strided views, concatenation, padding, gathers) cost what a copy costs
UFUNCS = ("add", "subtract", "multiply", "divide", "maximum", "where", "exp", "expit", "tanh",
          "erf", "sin", "cos", "sqrt", "copy")
UFUNC_ALIAS = {"reshape_copy": "copy", "contiguous_copy": "copy", "concatenate": "copy",
               "pad": "copy", "repeat": "copy", "stack": "copy", "gather": "copy",
               "astype": "copy", "einsum": "multiply", "minimum": "maximum",
               "negative": "add", "true_divide": "divide", "square": "multiply",
               "reciprocal": "divide"}


def parse_work(work: str) -> list[tuple[str, int, int, int]]:
    """An elementwise record's ``work`` column -> [(function, calls, elements, loops), ...]."""
    out = []
    for item in work.split():
        name, calls, elems, loops = item.rsplit(":", 3)
        out.append((name, int(calls), int(elems), int(loops)))
    return out


def profile_path(backend: str) -> Path:
    from .hardware import _cache_dir
    return _cache_dir() / f"profile-{backend}.json"


def load_profile(backend_or_path) -> Profile | None:
    """A saved profile: by backend name (the cached one, if any, and only when it was measured
    on this machine) or by file path."""
    p = Path(backend_or_path)
    by_name = not p.suffix
    path = profile_path(str(backend_or_path)) if by_name else p
    if not path.is_file():
        if by_name:
            return None
        raise ValueError(f"profile {str(path)!r} does not exist")
    try:
        prof = Profile.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"profile {str(path)!r} is not valid: {exc}") from None
    if by_name:
        here = machine_identity(prof.backend)
        if any(prof.machine.get(k) != here[k] for k in ("node", "cpu", "isa", "cores")):
            return None                   # measured elsewhere: not this machine's profile
    return prof


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------
def _kernel_seconds(fn, budget: float = 0.15, min_reps: int = 5, max_reps: int = 40) -> float:
    """The median profiled kernel time of ``fn`` (one dispatched call) over repeats, after a
    warm-up.  The median, not the best: on a shared machine the memory bandwidth a kernel gets
    changes with its neighbours' load, and the luckiest of hundreds of calls predicts what a
    forward pass sees no better than the slowest does (``validate`` takes medians too)."""
    import pyworkloads as pw
    fn()
    times = []
    t_end = time.perf_counter() + budget
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() < t_end):
        with pw.profile() as prof:
            fn()
        times.append(sum(r.seconds for r in prof.records))
    return float(np.median(times))


def _wall(fn, budget: float = 0.1, min_reps: int = 5, max_reps: int = 200,
          stat: str = "median") -> float:
    """The median wall-clock time of ``fn`` over repeats (see :func:`_kernel_seconds`);
    ``stat="min"`` for a roof, which must hold against every measurement."""
    fn()
    times = []
    t_end = time.perf_counter() + budget
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.min(times) if stat == "min" else np.median(times))


_FLUSH: list = []


def _flush() -> None:
    """Evict the cores' private caches (an 8 MB copy), as a kernel between two Python calls
    does: the interpreter's code and data then come back from L3 or memory."""
    if not _FLUSH:
        _FLUSH.extend([np.ones(1 << 21, np.float32), np.empty(1 << 21, np.float32)])
    np.copyto(_FLUSH[1], _FLUSH[0])


def _cold(fn, reps: int = 40, kernel: bool = False) -> float:
    """The median time of ``fn`` each run just after :func:`_flush` (wall clock, or with
    ``kernel`` the profiled kernel time): the fixed costs a model pays between large kernels,
    which are about twice the warm figures of a tight loop."""
    import pyworkloads as pw
    fn()
    times = []
    for _ in range(reps):
        _flush()
        if kernel:
            with pw.profile() as prof:
                fn()
            times.append(sum(r.seconds for r in prof.records))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _ufunc_table(call: float) -> dict:
    """Seconds per element of each function in UFUNCS on float32 arrays of 2^10 .. 2^24
    elements, called as a model calls it (a new result array each time), less the fixed cost
    of a call: where the work sits in cache, where it streams from memory, and how far a
    transcendental function is from a copy."""
    from scipy import special
    rng = np.random.default_rng(1)
    out = {}
    for n_log in (10, 13, 16, 19, 22, 24):
        n = 1 << n_log
        a = rng.standard_normal(n, dtype=np.float32)
        b = rng.standard_normal(n, dtype=np.float32)
        mask = a > 0
        pa = np.abs(a)
        nz = pa + 0.5                      # a divisor without zeros (standard_normal can give 0)
        fns = {"add": lambda: np.add(a, b), "subtract": lambda: np.subtract(a, b),
               "multiply": lambda: np.multiply(a, b), "divide": lambda: np.divide(a, nz),
               "maximum": lambda: np.maximum(a, b), "where": lambda: np.where(mask, a, b),
               "exp": lambda: np.exp(a), "expit": lambda: special.expit(a),
               "tanh": lambda: np.tanh(a), "erf": lambda: special.erf(a),
               "sin": lambda: np.sin(a), "cos": lambda: np.cos(a), "sqrt": lambda: np.sqrt(pa),
               "copy": lambda: a.copy()}
        budget = 0.03 if n_log < 22 else 0.1
        for name in UFUNCS:
            t = _wall(fns[name], budget=budget, min_reps=3)
            out.setdefault(name, []).append([float(n_log), max(t - call, 1e-3 * t) / n])
    return out


def _loop_cost() -> float:
    """Seconds per row of a strided walk: a broadcast add (the pattern of SAM's relative
    positions, a[..., :, None] + b[..., None, :]) with rows of 16 against rows of 256, the same
    2^22 elements: the difference is the loop set-up of 15/16 - 1/256 of a row per element."""
    rng = np.random.default_rng(2)
    n = 1 << 22
    t = {}
    for w in (16, 256):
        a = rng.standard_normal((n // (w * w), w, 1), dtype=np.float32)
        b = rng.standard_normal((n // (w * w), 1, w), dtype=np.float32)
        t[w] = _wall(lambda a=a, b=b: a + b, budget=0.1, min_reps=3)
    return max(t[16] - t[256], 0.0) / (n / 16 - n / 256)


def last_level_cache() -> int:
    """Bytes of the largest CPU cache the OS reports (32 MB if it reports none)."""
    best = 0
    for p in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            txt = p.read_text().strip().upper()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(txt[-1], 1)
            best = max(best, int(txt.rstrip("KMG")) * mult)
        except (OSError, ValueError):
            pass
    return best or 32 << 20


def _rotation(nbytes: int) -> int:
    """How many copies of an operand to cycle through so that each call finds it out of cache,
    as a forward pass does (each layer reads its own weights and KV cache once)."""
    # at least 256 MB in all: a VM may report less cache than its host has (a Milan-X L3
    # holds 96 MB per chiplet behind a reported 32 MB)
    target = max(4 * last_level_cache(), 256 << 20)
    return max(1, min(4096, math.ceil(target / max(nbytes, 1))))


def fma_peak() -> float:
    """The measured compute roof: FLOP/s of independent FMAs on registers over the kernel threads
    (the best of a few short runs; 0 without the compiled kernels)."""
    try:
        from pyworkloads import _kernels
    except ImportError:
        return 0.0
    return max(_kernels.fma_peak(1 << 21) for _ in range(3))


def _glue(overhead: dict) -> dict:
    """Seconds of Python per kernel call beyond the kernel itself: a tiny call through the path a
    model takes (the shared layer helpers, the dispatcher) timed whole, less its kernel time --
    both just after a cache flush, as they run in a model (see :func:`_cold`)."""
    from pyworkloads import kernels as k
    from pyworkloads import ops
    from pyworkloads.models import common
    w = {"l.weight": np.ones((8, 8), np.float32), "l.bias": np.ones(8, np.float32),
         "n.weight": np.ones(8, np.float32), "n.bias": np.zeros(8, np.float32)}
    x = np.ones((1, 8), np.float32)
    q = np.ones((1, 1, 1, 8), np.float32)
    qw = {"l.weight": _tiny_quantized((8, 32))}
    qx = np.ones((1, 32), np.float32)
    paths = {"matmul": lambda: common.linear(x, w, "l"),
             "qmatmul": lambda: common.linear(qx, qw, "l"),
             "attention": lambda: k.attention(q, q, q, causal=True),
             "rms_norm": lambda: common.rms_norm(x, w, "n", 1e-6),
             "layer_norm": lambda: common.layer_norm(x, w, "n", 1e-5),
             "gelu": lambda: ops.gelu(x)}
    return {op: max(_cold(f) - overhead[op], 0.0) for op, f in paths.items()}


def _bandwidth_table() -> list:
    """Streaming bandwidth (one read + one write per element) by array size, 64 kB .. 256 MB."""
    out = []
    for mb in (0.0625, 0.25, 1, 4, 16, 64, 256):
        n = int(mb * (1 << 20)) // 4
        src = np.ones(n, np.float32)
        dst = np.empty_like(src)
        t = _wall(lambda: np.copyto(dst, src), budget=0.15, min_reps=3, stat="min")
        out.append([float(2 * src.nbytes), 2 * src.nbytes / t])
    return out


def _read_bandwidth() -> float:
    """The best read-only streaming rate (a sum over 8 MB .. 64 MB), for the memory roof."""
    best = 0.0
    for mb in (8, 64):
        x = np.ones((mb << 20) // 4, np.float32)
        t = _wall(lambda: np.add.reduce(x), budget=0.15, min_reps=3, stat="min")
        best = max(best, x.nbytes / t)
    return best


def _grid(backend: str, quick: bool):
    """The shapes measured per op (kept to about two minutes on 2 cores)."""
    # M doubles: a GEMM's efficiency steps with its row tiles, which log-interpolation across a
    # factor of four misses (M = 100 runs nearly as well as M = 128, far better than M = 32)
    Ms = (1, 4, 32, 256, 1024) if quick else (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
    Ks = (64, 512, 4096) if quick else (64, 256, 512, 1024, 2048, 4096)
    Ns = (64, 512, 4096, 32768) if quick else (64, 256, 1024, 4096, 32768)
    cap = 2 ** 30 if backend == "numpy" else 2 ** 31          # MACs per point
    matmul = [(m, k, n) for m in Ms for k in Ks for n in Ns if m * k * n <= cap]
    Ts = (16, 64, 256, 1024) if quick else (16, 64, 256, 1024, 2048)
    attention = []
    for dh in (32, 64, 128):
        for t in Ts:
            for causal in (False, True):
                bh = max(1, min(64, (1 << 24) // (t * t * dh)))
                if backend == "numpy" and t * t * bh > (1 << 24):
                    continue
                attention.append((bh, t, t, dh, causal))
        for tk in (64, 512, 4096):                              # decode: one query
            attention.append((16, 1, tk, dh, True))
    # cross-attention: a few queries against many keys and back (SAM's two-way decoder: 7
    # tokens against 4096 image positions, 16-wide heads), a grid of its own over Tq x Tk x Dh
    lengths = (8, 64, 512) if quick else (8, 64, 512, 4096)
    cross = [(max(1, min(64, (1 << 24) // (tq * tk * dh))), tq, tk, dh, False)
             for dh in (16, 64) for tq in lengths for tk in lengths]
    norms = [(r, w) for w in (64, 512, 4096) for r in (1, 16, 256, 4096) if r * w <= 1 << 22]
    gelu = [1 << e for e in (10, 13, 16, 19, 22, 24)]
    return matmul, attention, cross, norms, gelu


def _qgrid(quick: bool) -> list:
    """The (M, K, N) shapes measured for qmatmul, per format (5 formats: seconds a pass on 2
    cores).  Coarser than matmul's: the reference decodes the whole weight to float32 first, a
    few nanoseconds per weight whatever M, so weights are kept to 2^24 (a 16k x 1k head) and
    the products to 2^28 MACs; the grid covers decode GEMVs and short prompts, and a longer
    prompt takes the nearest points' efficiency."""
    Ms = (1, 64) if quick else (1, 16, 128)
    Ks = (256, 2048) if quick else (256, 1024, 4096)
    Ns = (256, 8192) if quick else (256, 2048, 16384)
    return [(m, k, n) for m in Ms for k in Ks for n in Ns
            if k * n <= 2 ** 24 and m * k * n <= 2 ** 28]


# every stored byte below 0x3C: any two of them read as a float16 scale are finite, positive and
# below 1, so random blocks of every format decode to finite weights without knowing its layout
_SAFE_BYTE = 0x3C


def qmatmul_backend(backend: str) -> str:
    """The backend whose code runs ``pw.kernels.qmatmul`` under ``backend``: itself, or "numpy"
    (the reference decodes the weights) while it has no qmatmul kernel."""
    import pyworkloads as pw
    with pw.use_backend(backend), pw.profile() as seen:
        pw.kernels.qmatmul(np.ones((1, 32), np.float32), _tiny_quantized((1, 32)))
    return seen.records[0].backend


def _tiny_quantized(shape: tuple, fmt: str = "q8_0"):
    """A small block-quantized weight [N, K] of format ``fmt`` (fixed-cost measurements)."""
    from pyworkloads import quant
    block, size = GGUF_FORMATS[fmt]
    data = np.full((shape[0], shape[1] // block * size), 0x38, np.uint8)
    return quant.QuantizedTensor(fmt.upper(), shape, data)


class _BytePool:
    """Random bytes that quantized weights are cut from (see :class:`_Pool`): each weight its own
    stretch of memory, cold when the stretches cycle past the caches."""

    def __init__(self, rng, nbytes: int = 1 << 27):
        self.data = rng.integers(0, _SAFE_BYTE, nbytes, dtype=np.uint8)     # 128 MB

    def weights(self, fmt: str, n: int, k: int) -> list:
        from pyworkloads import quant
        block, size = GGUF_FORMATS[fmt]
        shape = (n, k // block * size)
        nbytes = shape[0] * shape[1]
        count = max(1, min(_rotation(nbytes), self.data.size // nbytes))
        return [quant.QuantizedTensor(fmt.upper(), (n, k),
                                      self.data[i * nbytes:(i + 1) * nbytes].reshape(shape))
                for i in range(count)]


def _layer_for(op: str, shape, gb):
    """The cost-model record of one calibration point (the same conventions as a model's); a
    qmatmul point's ``gb`` stores the weights in its format."""
    if op == "matmul" or op.startswith("qmatmul:"):
        m, k, n = shape
        return gb.weight_gemm("m", "matmul", m, k, n, weight_elems=k * n, act_in_elems=m * k,
                              act_out_elems=m * n)
    if op in ("attention", "attention_cross"):
        bh, tq, tk, dh, causal = shape
        return gb.attention("a", 1, bh, bh, tq, tk, dh, causal=causal)
    if op in ("rms_norm", "layer_norm"):
        r, w = shape
        return gb.norm("n", op, r, w)
    return gb.gelu("g", shape)


class _Pool:
    """One large block of random float32 numbers that operands are cut from: each matmul weight
    or KV buffer is its own stretch of memory (cold when the stretches cycle past the caches),
    without generating gigabytes of random numbers per shape."""

    def __init__(self, rng, floats: int = 1 << 27):
        self.data = rng.standard_normal(floats, dtype=np.float32)      # 512 MB

    def arrays(self, shape: tuple) -> list:
        """As many distinct arrays of ``shape`` as the rotation asks for (or the pool holds)."""
        n = math.prod(shape)
        if n > self.data.size:
            return [np.random.default_rng(1).standard_normal(shape, dtype=np.float32)]
        count = max(1, min(_rotation(4 * n), self.data.size // n))
        return [self.data[i * n:(i + 1) * n].reshape(shape) for i in range(count)]


def _cases(k, grid, pool: _Pool) -> list:
    """(op, shape, call) for every calibration point; a call cycles through its operands."""
    matmul, attention, cross, norms, gelu = grid
    cases = []

    def cycling(arrays, make):
        turn = iter(range(1 << 62))
        return lambda: make(arrays[next(turn) % len(arrays)])

    for m, kk, n in matmul:
        a = pool.arrays((m, kk))[0].copy()
        cases.append(("matmul", (m, kk, n),
                      cycling(pool.arrays((n, kk)), lambda w, a=a: k.matmul(a, w.T))))  # x @ Wᵀ
    for op, (bh, tq, tk, dh, causal) in ([("attention", a) for a in attention]
                                         + [("attention_cross", a) for a in cross]):
        q = pool.arrays((1, bh, tq, dh))[0].copy()
        # keys and values as a KV cache holds them: the filled part of a longer buffer, cold
        # when they stream (a decode step reads every layer's cache once); K and V are
        # distinct arrays, as the roofline counts them
        bufs = [b[:, :, :tk] for b in pool.arrays((1, bh, 2 * tk, dh))]
        pairs = list(zip(bufs[0::2], bufs[1::2])) or [(bufs[0], bufs[0].copy())]
        pairs = pairs if tq == 1 else pairs[:1]
        cases.append((op, (bh, tq, tk, dh, causal),
                      cycling(pairs, lambda kv, q=q, c=causal: k.attention(q, *kv, causal=c))))
    for r, w in norms:
        x = pool.arrays((r, w))[0].copy()
        g = np.ones(w, np.float32)
        cases.append(("rms_norm", (r, w), lambda x=x, g=g: k.rms_norm(x, g, 1e-6)))
        cases.append(("layer_norm", (r, w), lambda x=x, g=g: k.layer_norm(x, g, g, 1e-5)))
    for n in gelu:
        x = pool.arrays((n,))[0].copy()
        cases.append(("gelu", n, lambda x=x: k.gelu(x)))
    return cases


def _qcases(k, grid, pool: _Pool, bytes_pool: _BytePool) -> list:
    """(op, shape, call) of every qmatmul point: each block format at each shape, the call
    cycling through distinct weights (cold, as a forward pass reads each layer's once)."""
    cases = []
    for fmt in GGUF_FORMATS:
        for m, kk, n in grid:
            x = pool.arrays((m, kk))[0].copy()
            ws = bytes_pool.weights(fmt, n, kk)
            turn = iter(range(1 << 62))
            cases.append((qmatmul_key(fmt), (m, kk, n),
                          lambda x=x, ws=ws, t=turn: k.qmatmul(x, ws[next(t) % len(ws)])))
    return cases


def calibrate(backend: str = "cpp", quick: bool = False, save: bool = True,
              progress=None, passes: int = 5) -> Profile:
    """Measure this machine's profile for ``backend`` ("cpp" or "numpy"; a GPU's comes from
    :func:`profile_from_bench`) and save it where ``cm.get_device("cpu")`` finds it."""
    import pyworkloads as pw

    from .graph import GraphBuilder, Precision
    if backend not in ("cpp", "numpy"):
        raise ValueError(f"backend must be 'cpp' or 'numpy' (a GPU profile is built from a "
                         f"bench_cuda run: profile_from_bench), got {backend!r}")
    if backend not in pw.kernels.available():
        raise ValueError(f"backend {backend!r} is not available here: "
                         f"{pw.kernels.unavailable_reason(backend)}")
    say = progress or (lambda msg: None)
    rng = np.random.default_rng(0)
    impl = "unfused" if backend == "numpy" else "flash"
    gb = GraphBuilder(Precision.parse("fp32"), attention=impl)
    say("bandwidth")
    bw_table = _bandwidth_table()
    bandwidth = max(max(b for _, b in bw_table), _read_bandwidth())
    peak, how = theoretical_cpu_peak()
    k = pw.kernels
    with pw.use_backend(backend):
        say("fixed costs")
        tiny = np.ones((1, 1), np.float32)
        overhead = {
            "matmul": _cold(lambda: k.matmul(tiny, tiny), kernel=True),
            "attention": _cold(
                lambda: k.attention(*(np.ones((1, 1, 1, 8), np.float32),) * 3), kernel=True),
            "rms_norm": _cold(lambda: k.rms_norm(tiny, tiny[0], 1e-6), kernel=True),
            "layer_norm": _cold(lambda: k.layer_norm(tiny, tiny[0], tiny[0], 1e-5), kernel=True),
            "gelu": _cold(lambda: k.gelu(tiny), kernel=True),
            "qmatmul": _cold(lambda: k.qmatmul(np.ones((1, 32), np.float32),
                                               _tiny_quantized((1, 32))), kernel=True),
        }
        glue = _glue(overhead)
        qbackend = qmatmul_backend(backend)
        ufunc_call = _cold(lambda: np.add(tiny, tiny))
        say("NumPy functions")
        ufuncs = _ufunc_table(_wall(lambda: np.add(tiny, tiny)))
        ufunc_loop = _loop_cost()
        pool = _Pool(rng)
        cases = _cases(k, _grid(backend, quick), pool)
        ncases = len(cases)
        cases += _qcases(k, _qgrid(quick), pool, _BytePool(rng))
        # every shape once per pass, the passes spread over the run: the machine's state (a
        # neighbour's load on a shared machine lasts seconds) changes between passes, and each
        # shape keeps the median of its passes.  The qmatmul shapes run in three passes only
        # (first, middle, last: their median drops one disturbed pass), two calls each: a
        # reference decode takes up to 0.1 s a call
        per_pass: list[list[float]] = [[] for _ in cases]
        fma = 0.0
        for p in range(passes):
            todo = cases if p in (0, passes // 2, passes - 1) else cases[:ncases]
            say(f"pass {p + 1} of {passes}: {len(todo)} shapes")
            fma = max(fma, fma_peak())
            for i, (op, _, call) in enumerate(todo):
                per_pass[i].append(_kernel_seconds(call, budget=0.04,
                                                   min_reps=2 if i >= ncases else 3))
        fma = max(fma, fma_peak())
        measured: dict[str, list] = {op: [] for op in (*KERNEL_OPS, "attention_cross")
                                     if op != "qmatmul"}
        for (op, shape, _), ts in zip(cases, per_pass):
            measured.setdefault(op, []).append((shape, float(np.median(ts))))
    best_gemm = max(2 * m * kk * n / t for (m, kk, n), t in measured["matmul"])
    if peak is None or max(fma, best_gemm) > peak:
        how = (f"independent FMAs on registers, measured ({fma / 1e9:.1f} GFLOP/s; the best GEMM "
               f"{best_gemm / 1e9:.1f}): the reported clock gives "
               f"{peak / 1e9 if peak else float('nan'):.1f} GFLOP/s, below what the cores reach")
        peak = max(fma, best_gemm)
    prof = Profile(backend=backend, machine=machine_identity(backend),
                   measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   peak_flops=peak, peak_how=how, bandwidth=bandwidth, bandwidth_by_size=bw_table,
                   overhead=overhead, glue=glue, ufunc_call=ufunc_call, ufuncs=ufuncs,
                   ufunc_loop=ufunc_loop, attention_impl=impl, qmatmul_backend=qbackend)
    for op, rows in measured.items():
        pts = []
        kernel = op.partition(":")[0]
        # a qmatmul point's record stores its weights in the point's format
        builder = (GraphBuilder(Precision.parse("fp32", weights=op.partition(":")[2]))
                   if kernel == "qmatmul" else gb)
        for shape, seconds in rows:
            layer = _layer_for(op, shape, builder)
            fixed = overhead["attention" if op == "attention_cross" else kernel]
            work = max(seconds - fixed, 0.05 * seconds)
            feats = _features(layer)[1]
            pts.append([*feats, prof.roof(layer) / work])
        prof.points[op] = pts
    if save:
        prof.save(profile_path(backend))
    return prof


# ---------------------------------------------------------------------------------------------
# GPU profiles from a bench_cuda run
# ---------------------------------------------------------------------------------------------
def _bench_layer(row: dict, gb):
    """The cost-model record of one bench_cuda row (matmul MxNxK, attention B H T Dh, norms)."""
    case = row["case"]
    if row["op"] == "matmul":
        m, n, k = (int(v) for v in case.split("x"))
        return gb.weight_gemm("m", "matmul", m, k, n, weight_elems=k * n, act_in_elems=m * k,
                              act_out_elems=m * n)
    if row["op"] == "attention":
        parts = dict((p[:1] if p[:1] != "H" or not p.startswith("Hkv") else "Hkv",
                      p) for p in case.split())
        b = int(parts["B"][1:])
        h = int(parts["H"][1:])
        t = int(parts["T"][1:])
        dh = int(parts["D"][2:])
        hkv = int(parts["Hkv"][3:]) if "Hkv" in parts else h
        return gb.attention("a", b, h, hkv, t, t, dh, causal="causal" in case)
    if row["op"] in ("rms_norm", "layer_norm"):
        r, w = (int(v) for v in case.split("x"))
        return gb.norm("n", row["op"], r, w)
    return None


def profile_from_bench(path, dtype: str = "bf16",
                       exclude: tuple[str, str] | None = None) -> Profile:
    """A GPU profile from a ``benchmarks/bench_cuda.py`` results JSON: our kernels' efficiency
    (``algo == "auto"``) and the vendor libraries' (cuBLAS, SDPA, PyTorch norms) at the benchmarked
    shapes, relative to the device's datasheet roofs.  Kernel launch costs are not in the bench
    rows, so the fixed cost per call is left at zero; a run covers few shapes, so the
    interpolation is coarse away from them (the JSON names its cases).  ``path`` may also be the
    JSON already parsed (a dict); ``exclude``: an (op, case) row left out (``validate_bench``
    predicts each row from the others)."""
    from . import hardware
    from .graph import GraphBuilder, Precision
    data = path if isinstance(path, dict) else json.loads(Path(path).read_text())
    dev = hardware.get_device(data.get("costmodel_device") or "")
    prec = Precision.parse(dtype)
    gb = GraphBuilder(prec, attention="flash")
    prof = Profile(backend="cuda", machine={"gpu": data.get("device"), "driver": data.get("driver"),
                                            "torch": data.get("torch"), "node": "",
                                            "cpu": "", "isa": "", "cores": 0},
                   measured_at=data.get("timestamp_utc", ""),
                   peak_flops=dev.peak(prec.matmul_dtype),
                   peak_how=f"{dev.name} datasheet, {prec.matmul_dtype}", bandwidth=dev.bandwidth,
                   bandwidth_by_size=[[1.0, dev.bandwidth], [1e12, dev.bandwidth]],
                   overhead={}, glue={}, ufunc_call=0.0)
    for row in data.get("results", []):
        if row.get("algo") != "auto" or row.get("dtype") != dtype or row.get("status") != "ok":
            continue
        if exclude is not None and (row.get("op"), row.get("case")) == tuple(exclude):
            continue
        layer = _bench_layer(row, gb)
        if layer is None:
            continue
        op, feats = _features(layer)
        roof = prof.roof(layer)
        if row.get("ours_ms"):
            prof.points.setdefault(op, []).append([*feats, roof / (row["ours_ms"] / 1e3)])
        if row.get("baseline_ms"):
            prof.vendor.setdefault(op, []).append([*feats, roof / (row["baseline_ms"] / 1e3)])
    if not prof.points:
        raise ValueError(f"{path}: no {dtype} rows with algo 'auto' to build a profile from")
    for table, attr in ((prof.points, "memory_efficiency"),
                        (prof.vendor, "memory_efficiency_vendor")):
        mem = [p[-1] for op in ("rms_norm", "layer_norm") for p in table.get(op, [])]
        setattr(prof, attr, float(np.median(mem)) if mem else None)
    return prof
