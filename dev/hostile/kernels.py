"""Adversarial calls of the compiled kernels, each compared with the NumPy reference.

    python dev/hostile/kernels.py [--sanitized] [--seed 0] [--show N] [--only AREA]

Generates a fixed set of hostile kernel calls from the seed -- NaN, inf and huge values; empty
and size-1 dimensions; huge and overflowing scales; transposed, strided, reversed, zero-stride,
unaligned and byte-strided arrays; wrong dtypes, ranks and types; masks and biases that broadcast
(down, up, or not at all), fully masked rows; thread counts and OpenMP environment variables --
and runs each with the cpp backend in a worker process (timeout, address-space limit), next to the
same call on the numpy backend.  Each call ends in one of:

    ok               a result that matches the numpy backend's: same shape, NaN and inf at the
                     same places, finite values within a bound stated by the arithmetic
    clear error      ValueError or TypeError (MemoryError when the requested output alone is
                     larger than the memory limit), where the numpy backend refuses the call too or
                     the cpp backend refuses a dtype it does not compute (TypeError, float32 only)
    unclear error    any other exception (IndexError, OverflowError, SystemError, ...)
    wrong            a result that differs, or one backend computes what the other refuses
    crash            the worker died (a signal, a sanitizer report, an abort)
    hang             no answer within the timeout
    over-allocation  peak memory grew by more than the call can need, or MemoryError on a call
                     whose output is small

--sanitized runs the workers on the AddressSanitizer + UndefinedBehaviorSanitizer build staged by
dev/sanitize.sh (run it first); every report aborts the worker and counts as a crash.  The
address-space limit does not mix with ASan's shadow memory, so there the allocator's own limit
(max_allocation_size_mb) stands in for it.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGE = ROOT / "build" / "sanitize" / "stage"
LIMIT_MB = 4096        # address space of a plain worker; the largest allocation under ASan
TIMEOUT_S = 60.0
OUTCOMES = ("ok", "clear error", "unclear error", "wrong", "crash", "hang", "over-allocation")

# =============================================================================================
# the cases (built in the worker; the parent only needs their names, areas and environments)
# =============================================================================================


class Case:
    def __init__(self, area, name, build, env=None, fresh=False):
        self.area, self.name, self.build, self.env, self.fresh = area, name, build, env or {}, fresh


def make_cases(seed: int) -> list[Case]:
    import numpy as np

    cases: list[Case] = []
    add = cases.append
    nan, inf = float("nan"), float("inf")
    SPECIAL = (nan, inf, -inf)

    # ---- array helpers ----------------------------------------------------------------------
    def dyadic(rng, shape, hi=16):
        """Values k/4, |k| <= hi: every product and every short sum of them is exact in float32,
        so the result does not depend on the order of summation."""
        return (rng.integers(-hi, hi + 1, shape) / 4).astype(np.float32)

    def poison(rng, x, values, frac):
        x = x.copy()
        if x.size and frac:
            n = max(1, int(frac * x.size))
            idx = rng.integers(0, x.size, n)
            x.reshape(-1)[idx] = rng.choice(np.asarray(values, np.float32), n)
        return x

    def layout(rng, x, kind):
        if kind == "c" or x.ndim == 0:
            return np.ascontiguousarray(x)
        if kind == "f" and x.ndim >= 2:
            return np.swapaxes(np.ascontiguousarray(np.swapaxes(x, -1, -2)), -1, -2)
        if kind == "strided":
            big = np.zeros(x.shape[:-1] + (2 * x.shape[-1] + 1,), x.dtype)
            big[..., 1::2] = x
            return big[..., 1::2]
        if kind == "reversed":
            sl = (slice(None, None, -1),) * x.ndim
            return np.ascontiguousarray(x[sl])[sl]
        if kind == "unaligned":                  # a view at an odd byte offset, as a file mapping
            buf = np.zeros(x.nbytes + 8, np.uint8)
            off = int(rng.integers(1, 4))
            y = buf[off:off + x.nbytes].view(x.dtype).reshape(x.shape)
            y[...] = x
            return y
        if kind == "bytestrided":                # a field of a packed record: stride 6 bytes
            if x.ndim != 1:
                flat = layout(rng, x.reshape(-1), kind)
                return flat.reshape(x.shape) if flat.flags.c_contiguous else _view_like(flat, x)
            rec = np.zeros(x.size, np.dtype([("v", x.dtype), ("pad", "u1", 2)], align=False))
            rec["v"] = x
            return rec["v"]
        return np.ascontiguousarray(x)

    def _view_like(flat, x):
        st = [flat.strides[0]]
        for n in reversed(x.shape[1:]):
            st.insert(0, st[0] * n)
        return np.lib.stride_tricks.as_strided(flat, x.shape, st)

    LAYOUTS = ("c", "c", "f", "strided", "reversed", "unaligned", "bytestrided")

    def rng_for(i):
        return np.random.default_rng([seed, i])

    # ---- matmul -----------------------------------------------------------------------------
    MM = (0, 1, 2, 3, 5, 7, 17, 33, 64, 65, 129)

    def mm_random(i):
        def build():
            rng = rng_for(i)
            M, K, N = (int(rng.choice(MM)) for _ in range(3))
            batch = [(), (2,), (1,), (3, 1), (0,)][int(rng.integers(0, 5))]
            bb = batch if rng.random() < 0.5 else tuple(1 for _ in batch)
            a = dyadic(rng, batch + (M, K))
            b = dyadic(rng, bb + (K, N))
            if rng.random() < 0.6:
                # huge, but a product of two stays finite: a product that overflows makes the
                # result depend on the order of summation (fma(x, y, +inf) is +inf where the
                # rounded product is -inf), which no two GEMMs share
                vals = SPECIAL + (1e18, -1e18, 0.0)
                a = poison(rng, a, vals, rng.choice([0, 0.01, 0.2]))
                b = poison(rng, b, vals, rng.choice([0, 0.01, 0.2]))
            a = layout(rng, a, str(rng.choice(LAYOUTS)))
            b = layout(rng, b, str(rng.choice(LAYOUTS)))
            return dict(op="matmul", args=(a, b))
        return build

    for i in range(220):
        add(Case("matmul", f"random #{i}", mm_random(i)))

    def mm_fixed(a, b, **kw):
        return lambda: dict(op="matmul", args=(a(), b()), **kw)

    f32 = np.float32
    for name, a, b in [
        ("NaN row in a", lambda: np.where(np.arange(12).reshape(3, 4) == 5, f32(nan), f32(1)),
         lambda: np.ones((4, 5), f32)),
        ("inf times zero", lambda: np.array([[inf, 0]], f32), lambda: np.array([[0], [1]], f32)),
        ("inf minus inf", lambda: np.array([[1, 1]], f32), lambda: np.array([[inf], [-inf]], f32)),
        ("product overflow", lambda: np.full((2, 3), 1e30, f32),
         lambda: np.full((3, 2), 1e30, f32)),
        ("K = 0 with NaN elsewhere", lambda: np.zeros((3, 0), f32), lambda: np.zeros((0, 4), f32)),
        ("zero-stride operands", lambda: np.broadcast_to(f32(0.5), (70, 40)),
         lambda: np.broadcast_to(f32(nan), (40, 1))),
        ("1-D a", lambda: np.ones(3, f32), lambda: np.ones((3, 2), f32)),
        ("0-D a", lambda: np.float32(1).reshape(()), lambda: np.ones((1, 2), f32)),
        ("K mismatch", lambda: np.ones((2, 3), f32), lambda: np.ones((4, 2), f32)),
        ("batch mismatch", lambda: np.ones((2, 2, 3), f32), lambda: np.ones((3, 3, 2), f32)),
        ("list operand", lambda: [[1.0, 2.0]], lambda: np.ones((2, 1), f32)),
        ("None operand", lambda: None, lambda: np.ones((2, 1), f32)),
        ("string operand", lambda: "abc", lambda: np.ones((2, 1), f32)),
    ]:
        add(Case("matmul", name, mm_fixed(a, b)))
    for dt in ("float64", "float16", "int32", "int64", "bool", "complex64", "object", "U1"):
        add(Case("matmul", f"dtype {dt} a",
                 mm_fixed(lambda dt=dt: np.ones((2, 3), dt), lambda: np.ones((3, 2), f32))))
        add(Case("matmul", f"dtype {dt} b",
                 mm_fixed(lambda: np.ones((2, 3), f32), lambda dt=dt: np.ones((3, 2), dt))))
    add(Case("matmul", "output of 4e10 bytes (zero-stride inputs)",
             mm_fixed(lambda: np.broadcast_to(f32(1), (100_000, 1)),
                      lambda: np.broadcast_to(f32(1), (1, 100_000)), huge=True)))
    add(Case("matmul", "batch of 1e9 empty matrices",
             mm_fixed(lambda: np.broadcast_to(f32(1), (10**9, 0, 1)),
                      lambda: np.broadcast_to(f32(1), (1, 1, 3)))))
    for version in ("naive", "fast", "x", 1):
        add(Case("matmul", f"binding version={version!r}",
                 lambda v=version: dict(op="matmul", direct=True,
                                        args=(np.ones((3, 4), f32), np.ones((4, 2), f32)),
                                        kwargs=dict(version=v),
                                        invalid=v not in ("naive", "fast"))))

    # ---- attention --------------------------------------------------------------------------
    SCALES = (None, None, None, 1.0, 0.0, -1.0, 0.5, 1e30, 3e38, 1e39, -1e39, 1e-45, 1e300,
              nan, inf, True, "x", 2**1000, np.float32(2), np.float64(1e-3), 1 + 1j)

    def broadcast_shape(rng, full, up=False):
        nd = int(rng.integers(1, 5))
        shape = [n if rng.random() < 0.5 else 1 for n in full[4 - nd:]]
        if up:
            ax = int(rng.integers(0, nd))
            shape[ax] = full[4 - nd + ax] + int(rng.integers(1, 3))
        return tuple(shape)

    def at_random(i):
        def build():
            rng = rng_for(10_000 + i)
            B = int(rng.choice([0, 1, 1, 2]))
            Hkv = int(rng.choice([1, 1, 2]))
            Hq = Hkv * int(rng.choice([1, 2, 3]))
            Tq = int(rng.choice([0, 1, 1, 2, 5, 17, 65, 130]))
            Tk = int(rng.choice([0, 1, 3, 48, 49, 97, 130]))
            Dh = int(rng.choice([0, 1, 3, 8, 16, 17]))
            Dv = int(rng.choice([0, 1, 4, 8, 33]))
            causal = bool(rng.random() < 0.4) and Tq <= Tk
            q = dyadic(rng, (B, Hq, Tq, Dh), 8)
            k = dyadic(rng, (B, Hkv, Tk, Dh), 8)
            v = dyadic(rng, (B, Hkv, Tk, Dv), 16)
            r = rng.random()
            if r < 0.5:                           # non-finite or huge values in one or more inputs
                which = rng.choice(["q", "k", "v", "qkv"])
                fr = float(rng.choice([0.002, 0.05, 0.3]))
                if "q" in which:
                    q = poison(rng, q, SPECIAL, fr)
                if "k" in which:
                    k = poison(rng, k, SPECIAL, fr)
                if "v" in which:
                    v = poison(rng, v, SPECIAL + (3e38, -3e38), fr)
            full = (B, Hq, Tq, Tk)
            kw = dict(causal=causal)
            if rng.random() < 0.35:
                bs = broadcast_shape(rng, full, up=rng.random() < 0.1)
                bias = dyadic(rng, bs)
                if rng.random() < 0.6:
                    bias = poison(rng, bias, SPECIAL + (-inf, -inf, 1e30, 3e38, -3e38),
                                  float(rng.choice([0.01, 0.2, 0.6])))
                kw["bias"] = layout(rng, bias, str(rng.choice(LAYOUTS)))
            if rng.random() < 0.35:
                ms = broadcast_shape(rng, full, up=rng.random() < 0.1)
                mask = rng.random(ms) < float(rng.choice([0.0, 0.1, 0.5, 0.9, 1.0]))
                if len(ms) >= 2 and ms[-2] > 1 and rng.random() < 0.5:
                    mask[..., int(rng.integers(0, ms[-2])), :] = False   # a fully masked row
                kw["mask"] = mask
            s = SCALES[int(rng.integers(0, len(SCALES)))]
            if s is not None:
                kw["scale"] = s
            lays = [str(rng.choice(LAYOUTS)) for _ in range(3)]
            if rng.random() < 0.2:                # [B, T, H, D] activations seen as [B, H, T, D]
                q = np.swapaxes(np.ascontiguousarray(np.swapaxes(q, 1, 2)), 1, 2)
                lays[0] = "c-view"
            q, k, v = (x if lay == "c-view" else layout(rng, x, lay)
                       for x, lay in zip((q, k, v), lays))
            return dict(op="attention", args=(q, k, v), kwargs=kw)
        return build

    for i in range(420):
        add(Case("attention", f"random #{i}", at_random(i)))

    def at_fixed(**over):
        def build():
            rng = np.random.default_rng([seed, 99])
            q = dyadic(rng, (1, 2, 5, 8), 8)
            k = dyadic(rng, (1, 2, 7, 8), 8)
            v = dyadic(rng, (1, 2, 7, 8), 16)
            args = dict(q=q, k=k, v=v)
            kw = {}
            for key, val in over.items():
                val = val() if callable(val) else val
                (args if key in "qkv" else kw)[key] = val
            return dict(op="attention", args=(args["q"], args["k"], args["v"]), kwargs=kw)
        return build

    def with_at(name, arr, idx, val):
        def f():
            rng = np.random.default_rng([seed, 99])
            base = {"q": dyadic(rng, (1, 2, 5, 8), 8), "k": dyadic(rng, (1, 2, 7, 8), 8),
                    "v": dyadic(rng, (1, 2, 7, 8), 16)}[arr]
            base[idx] = val
            return base
        return f

    for arr in "qkv":
        for val in SPECIAL:
            add(Case("attention", f"{val} in {arr}",
                     at_fixed(**{arr: with_at("", arr, (0, 1, 2, 3), val)})))
            add(Case("attention", f"{val} in {arr}, causal",
                     at_fixed(**{arr: with_at("", arr, (0, 1, 2 if arr == "q" else 6, 3), val)},
                              causal=True)))
    add(Case("attention", "NaN in q, single query row",
             lambda: dict(op="attention", args=(np.full((1, 1, 1, 4), nan, f32),
                                                np.ones((1, 1, 3, 4), f32),
                                                np.ones((1, 1, 3, 4), f32)))))
    add(Case("attention", "fully masked row, NaN in v at a masked key",
             at_fixed(v=with_at("", "v", (0, 0, 6, 0), nan),
                      mask=lambda: np.arange(7)[None, :] < np.array([[3], [0], [7], [1], [6]]))))
    add(Case("attention", "huge v (3e38 everywhere)",
             at_fixed(v=lambda: np.full((1, 2, 7, 8), 3e38, f32))))
    add(Case("attention", "bias -inf row", at_fixed(bias=lambda: np.where(
        np.arange(5)[:, None] == 2, f32(-inf), np.zeros((5, 7), f32)))))
    add(Case("attention", "bias +inf entry", at_fixed(bias=lambda: np.where(
        np.arange(35).reshape(5, 7) == 9, f32(inf), np.zeros((5, 7), f32)))))
    add(Case("attention", "bias overflowing the scores",
             at_fixed(bias=lambda: np.full((5, 7), 3e38, f32), scale=1e38)))
    add(Case("attention", "Dh = 0, default scale",
             at_fixed(q=lambda: np.zeros((1, 2, 5, 0), f32),
                      k=lambda: np.zeros((1, 2, 7, 0), f32))))
    add(Case("attention", "Tk = 0", at_fixed(k=lambda: np.zeros((1, 2, 0, 8), f32),
                                             v=lambda: np.zeros((1, 2, 0, 8), f32))))
    add(Case("attention", "mask broadcasting the batch up",
             at_fixed(mask=lambda: np.ones((3, 1, 5, 7), bool))))
    add(Case("attention", "bias broadcasting the batch up",
             at_fixed(bias=lambda: np.zeros((2, 2, 5, 7), f32))))
    add(Case("attention", "5-D mask", at_fixed(mask=lambda: np.ones((1, 1, 2, 5, 7), bool))))
    for dt in ("uint8", "float32", "int64"):
        add(Case("attention", f"mask of dtype {dt}",
                 at_fixed(mask=lambda dt=dt: np.ones((5, 7), dt))))
    for dt in ("float64", "float16", "int32"):
        add(Case("attention", f"bias of dtype {dt}",
                 at_fixed(bias=lambda dt=dt: np.zeros((5, 7), dt))))
        add(Case("attention", f"q of dtype {dt}",
                 at_fixed(q=lambda dt=dt: np.zeros((1, 2, 5, 8), dt))))
    add(Case("attention", "Hq not a multiple of Hkv",
             at_fixed(q=lambda: np.zeros((1, 3, 5, 8), f32))))
    add(Case("attention", "Hkv = 0", at_fixed(k=lambda: np.zeros((1, 0, 7, 8), f32),
                                              v=lambda: np.zeros((1, 0, 7, 8), f32))))
    add(Case("attention", "causal with Tq > Tk",
             at_fixed(q=lambda: np.zeros((1, 2, 9, 8), f32), causal=True)))
    add(Case("attention", "3-D q", at_fixed(q=lambda: np.zeros((2, 5, 8), f32))))
    add(Case("attention", "mask as a list", at_fixed(mask=lambda: [[True] * 7] * 5)))
    add(Case("attention", "scores of 1e10 elements (zero-stride q and k)",
             lambda: dict(op="attention", args=(np.broadcast_to(f32(0), (1, 1, 100_000, 1)),
                                                np.broadcast_to(f32(0), (1, 1, 100_000, 1)),
                                                np.broadcast_to(f32(1), (1, 1, 100_000, 1))),
                          kwargs=dict(causal=True), reference_may_fail=True)))

    # ---- norms ------------------------------------------------------------------------------
    EPS = (1e-6, 1e-5, 0.0, -1.0, nan, inf, 1e39, 1e-45, True, "x", None, np.float32(1e-6))

    def norm_random(i, op):
        def build():
            rng = rng_for(20_000 + i)
            D = int(rng.choice([0, 1, 3, 8, 33, 64, 4097]))
            rows = [(), (1,), (5,), (2, 3), (0,)][int(rng.integers(0, 5))]
            x = dyadic(rng, rows + (D,))
            if rng.random() < 0.6:
                x = poison(rng, x, SPECIAL + (1e20, -1e20, 1e-20, 0.0),
                           float(rng.choice([0.01, 0.2, 1.0])))
            w = dyadic(rng, (D,)) if rng.random() < 0.9 or op == "rms_norm" else None
            if w is not None and rng.random() < 0.3:
                w = poison(rng, w, SPECIAL, 0.2)
            b = dyadic(rng, (D,)) if rng.random() < 0.7 else None
            if b is not None and rng.random() < 0.3:
                b = poison(rng, b, SPECIAL, 0.2)
            eps = EPS[int(rng.integers(0, len(EPS)))] if rng.random() < 0.4 else 1e-5
            x = layout(rng, x, str(rng.choice(LAYOUTS)))
            w = w if w is None else layout(rng, w, str(rng.choice(LAYOUTS)))
            b = b if b is None else layout(rng, b, str(rng.choice(LAYOUTS)))
            if op == "rms_norm":
                return dict(op=op, args=(x, w, eps))
            return dict(op=op, args=(x, w, b, eps))
        return build

    for i in range(90):
        add(Case("norms", f"rms_norm random #{i}", norm_random(i, "rms_norm")))
        add(Case("norms", f"layer_norm random #{i}", norm_random(i, "layer_norm")))
    for name, args in [
        ("rms_norm weight of the wrong shape",
         ("rms_norm", (np.ones((2, 4), f32), np.ones(3, f32)))),
        ("rms_norm 0-D x", ("rms_norm", (np.float32(1).reshape(()), np.ones(1, f32)))),
        ("rms_norm weight None", ("rms_norm", (np.ones((2, 4), f32), None))),
        ("layer_norm bias 2-D", ("layer_norm", (np.ones((2, 4), f32), None, np.ones((1, 4), f32)))),
        ("layer_norm x of dtype float64", ("layer_norm", (np.ones((2, 4)), None, None))),
        ("rms_norm x of dtype int", ("rms_norm", (np.ones((2, 4), int), np.ones(4, f32)))),
        ("rms_norm weight float16", ("rms_norm", (np.ones((2, 4), f32), np.ones(4, np.float16)))),
        ("rms_norm x a list", ("rms_norm", ([[1.0, 2.0]], np.ones(2, f32)))),
    ]:
        add(Case("norms", name, lambda a=args: dict(op=a[0], args=a[1])))

    # ---- gelu -------------------------------------------------------------------------------
    def gelu_random(i):
        def build():
            rng = rng_for(30_000 + i)
            n = int(rng.choice([0, 1, 7, 8, 17, 1000, 65537, 70001]))
            x = (rng.standard_normal(n) * rng.choice([1, 10, 1e3])).astype(f32)
            if rng.random() < 0.6:
                x = poison(rng, x, SPECIAL + (3e38, -3e38, 1e-40, -1e-40, 0.0), 0.2)
            x = layout(rng, x, str(rng.choice(LAYOUTS)))
            if rng.random() < 0.3 and n:
                x = x.reshape(1, n, 1)
            return dict(op="gelu", args=(x,))
        return build

    for i in range(40):
        add(Case("gelu", f"random #{i}", gelu_random(i)))
    for dt in ("float64", "float16", "int32"):
        add(Case("gelu", f"dtype {dt}", lambda dt=dt: dict(op="gelu", args=(np.ones(5, dt),))))

    # ---- thread settings --------------------------------------------------------------------
    for n in (0, -1, 1, 2, 3, 8, 9, 64, 1024, 100_000, 2**31 - 1, 2**31, 2**63, 1.5, True, "4",
              None, np.int64(2), np.int32(100_000)):
        add(Case("threads", f"set_num_threads({n!r}) then ops",
                 lambda n=n: dict(threads=("set", n)), fresh=True))
    add(Case("threads", "set_num_threads(1) reaches a thread started later",
             lambda: dict(threads=("later", 1)), fresh=True))
    for env in ({"OMP_THREAD_LIMIT": "1"}, {"OMP_DYNAMIC": "true"},
                {"OMP_DYNAMIC": "true", "OMP_NUM_THREADS": "16"},
                {"OMP_NUM_THREADS": "1"}, {"OMP_NUM_THREADS": "3"}, {"OMP_NUM_THREADS": "100000"},
                {"OMP_NUM_THREADS": "0"}, {"OMP_NUM_THREADS": "abc"}, {"OMP_NUM_THREADS": "4,2"},
                {"OMP_THREAD_LIMIT": "1", "OMP_NUM_THREADS": "8"},
                {"OMP_MAX_ACTIVE_LEVELS": "0"}, {"OMP_PROC_BIND": "true"}):
        tag = " ".join(f"{k}={v}" for k, v in env.items())
        add(Case("threads", f"{tag}: 300³ matmul, attention, norms",
                 lambda: dict(threads=("ops", None)), env=env, fresh=True))
        add(Case("threads", f"{tag}: llama2-tiny logits",
                 lambda: dict(threads=("llama2", None)), env=env, fresh=True))
        add(Case("threads", f"{tag}: set_num_threads(2), 300³ matmul",
                 lambda: dict(threads=("set", 2)), env=env, fresh=True))
    return cases


# =============================================================================================
# the worker: runs cases by index, answers one JSON line each
# =============================================================================================
def _mem_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _nbytes_out(x) -> int:
    import numpy as np
    return int(np.asarray(x).nbytes) if x is not None else 0


def compare(got, want, spec) -> str | None:
    """None when got matches want (NaN and inf where want has them, finite values within the
    bound of the op), else what differs."""
    import numpy as np

    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return f"shape {got.shape} != {want.shape}"
    if got.dtype != want.dtype:
        return f"dtype {got.dtype} != {want.dtype}"
    g, w = got.astype(np.float64), want.astype(np.float64)
    for what, f in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        d = f(g) != f(w)
        if d.any():
            i = tuple(int(t) for t in np.argwhere(d)[0])
            return (f"{what} at {int(d.sum())} of {d.size} places differ, e.g. {i}: "
                    f"got {g[i]}, want {w[i]}")
    fin = np.isfinite(w)
    bound = _bound(spec, w)
    err = np.where(fin, np.abs(g - w), 0.0)
    bad = err > bound
    if bad.any():
        i = tuple(int(t) for t in np.argwhere(bad)[0])
        b = bound[i] if np.ndim(bound) else bound
        return f"{int(bad.sum())} of {bad.size} values differ, e.g. {i}: got {g[i]}, want {w[i]} " \
               f"(bound {b:.3g})"
    return None


def _finite_abs(x):
    import numpy as np
    a = np.abs(np.asarray(x, np.float64))
    return np.where(np.isfinite(a), a, 0.0)


def _bound(spec, want):
    """Float32 error bounds: a dot product of length n moves by at most γ(n)·Σ|a||b| (Higham
    §3.1); the attention output is a convex combination of v rows (softmax weights from exactly
    computed scores, exp to a few ulps); a norm's output to a few ulps per reduction term; the
    cpp GELU to its documented 4e-7·max(1, |x|)."""
    import numpy as np
    u = 2.0 ** -24
    op, args = spec["op"], spec["args"]
    if op == "matmul":
        a, b = _finite_abs(args[0]), _finite_abs(args[1])
        K = a.shape[-1]
        return 2 * (K + 2) * u * np.matmul(a, b) + 1e-37
    if op == "attention":
        v = _finite_abs(args[2])
        Tk = v.shape[2]
        vmax = float(v.max()) if v.size else 0.0
        return (4 * Tk + 16) * u * 8 * vmax + 1e-37
    if op in ("rms_norm", "layer_norm"):
        x = np.asarray(args[0])
        D = x.shape[-1] if x.ndim else 1
        return (4 * D + 16) * u * (_finite_abs(want) + 1.0)
    if op == "gelu":
        return 4e-7 * np.maximum(1.0, _finite_abs(args[0])) + 1e-37
    return 0.0


def _is_clear(exc, huge) -> str:
    if isinstance(exc, (ValueError, TypeError)) and str(exc):
        return "clear error"
    if isinstance(exc, MemoryError):
        return "clear error" if huge else "over-allocation"
    return "unclear error"


def _dtype_refusal(exc, spec) -> bool:
    """The cpp backend computes float32 only and refuses other dtypes with a TypeError."""
    import numpy as np
    if not isinstance(exc, TypeError):
        return False
    arrays = list(spec["args"]) + [spec.get("kwargs", {}).get("bias")]
    return any(isinstance(a, np.ndarray) and a.dtype != np.float32 for a in arrays) or \
        any(not isinstance(a, np.ndarray) and a is not None and not isinstance(a, (int, float))
            for a in spec["args"])


def run_op(backend, spec):
    import pyworkloads.kernels as K
    kwargs = spec.get("kwargs", {})
    if spec.get("direct"):
        if backend == "numpy":
            kwargs = {k: v for k, v in kwargs.items() if k != "version"}
            with K.use_backend("numpy"):
                return getattr(K, spec["op"])(*spec["args"], **kwargs)
        from pyworkloads import _kernels
        return getattr(_kernels, spec["op"])(*spec["args"], **kwargs)
    with K.use_backend(backend):
        return getattr(K, spec["op"])(*spec["args"], **kwargs)


def classify_op(spec) -> tuple[str, str]:
    try:
        want, werr = run_op("numpy", spec), None
    except Exception as exc:                                   # noqa: BLE001 - classified below
        want, werr = None, exc
    try:
        got, gerr = run_op("cpp", spec), None
    except Exception as exc:                                   # noqa: BLE001
        got, gerr = None, exc
    huge = spec.get("huge", False)
    if gerr is not None:
        kind = _is_clear(gerr, huge)
        detail = f"{type(gerr).__name__}: {gerr}"
        if (kind == "clear error" and werr is None and not huge and not spec.get("invalid")
                and not _dtype_refusal(gerr, spec)):
            return "wrong", f"cpp refuses what numpy computes: {detail}"
        return kind, detail
    if werr is not None:
        if spec.get("reference_may_fail") and isinstance(werr, MemoryError):
            return "ok", "the reference cannot hold the score matrix; cpp computed"
        return "wrong", f"cpp computes what numpy refuses ({type(werr).__name__}: {werr})"
    diff = compare(got, want, spec)
    return ("ok", "") if diff is None else ("wrong", diff)


def classify_threads(spec) -> tuple[str, str]:
    import threading

    import numpy as np

    import pyworkloads.kernels as K
    from pyworkloads.kernels import reference as R
    what, n = spec["threads"]
    rng = np.random.default_rng(7)
    out = []
    if what == "set":
        try:
            K.set_num_threads(n)
        except (ValueError, TypeError) as exc:
            out.append(("clear error", f"{type(exc).__name__}: {exc}"))
    if what == "later":
        K.set_num_threads(n)
        seen = []
        t = threading.Thread(target=lambda: seen.append(K.get_num_threads()))
        t.start()
        t.join()
        if seen != [n]:
            return "wrong", f"a thread started after set_num_threads({n}) runs {seen[0]} threads"
    if what == "llama2":
        try:
            return _llama2(K, rng)
        except Exception as exc:                               # noqa: BLE001 - classified
            return _is_clear(exc, False), f"{type(exc).__name__}: {exc}"
    try:
        return _thread_ops(K, R, rng, out)
    except Exception as exc:                                   # noqa: BLE001 - classified
        return _is_clear(exc, False), f"{type(exc).__name__}: {exc}"


def _llama2(K, rng):
    import numpy as np

    from pyworkloads.models import llama2
    m = llama2.from_preset("llama2-tiny")
    ids = rng.integers(0, m.config.vocab_size, (2, 32))
    want = m(ids)
    with K.use_backend("cpp"):
        got = m(ids)
    bad = np.abs(got - want).max(axis=-1) > 1e-4 * max(1.0, float(np.abs(want).max()))
    if bad.any():
        return "wrong", f"logits wrong at {int(bad.sum())} of {bad.size} positions"
    return "ok", ""


def _thread_ops(K, R, rng, out):
    import numpy as np
    a = rng.standard_normal((300, 300), dtype=np.float32)
    b = rng.standard_normal((300, 300), dtype=np.float32)
    q = rng.standard_normal((2, 4, 130, 16), dtype=np.float32)
    kv = rng.standard_normal((2, 4, 150, 16), dtype=np.float32)
    x = rng.standard_normal((4000, 64), dtype=np.float32)
    w = rng.standard_normal(64, dtype=np.float32)
    with K.use_backend("cpp"):
        checks = [("matmul", K.matmul(a, b), R.matmul(a, b), 2 * 302 * 2.0**-24
                   * (np.abs(a) @ np.abs(b))),
                  ("attention", K.attention(q, kv, kv, causal=True),
                   R.attention(q, kv, kv, causal=True), 1e-4),
                  ("rms_norm", K.rms_norm(x, w, 1e-6), R.rms_norm(x, w, 1e-6), 1e-4),
                  ("gelu", K.gelu(x), R.gelu(x), 1e-5)]
    for name, got, want, bound in checks:
        bad = ~(np.abs(got - want) <= bound)
        if bad.any():
            rows = int(bad.reshape(-1, bad.shape[-1]).any(axis=-1).sum())
            return "wrong", f"{name}: {rows} rows wrong"
    return out[0] if out else ("ok", "")


def worker(seed: int, limit_mb: int, sanitized: bool) -> None:
    import resource
    import warnings

    import numpy as np
    warnings.simplefilter("ignore")
    np.seterr(all="ignore")
    if not sanitized:
        resource.setrlimit(resource.RLIMIT_AS, (limit_mb << 20, limit_mb << 20))
    import pyworkloads.kernels as K
    assert "cpp" in K.available(), K.unavailable_reason("cpp")
    cases = make_cases(seed)
    out = sys.stdout
    for line in sys.stdin:
        i = int(line)
        c = cases[i]
        base = _mem_kb("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        t0 = time.perf_counter()
        try:
            spec = c.build()
            if "threads" in spec:
                kind, detail = classify_threads(spec)
                need = 0
            else:
                kind, detail = classify_op(spec)
                try:
                    need = 3 * _nbytes_out(run_op("numpy", spec)) if kind == "ok" else 0
                except Exception:                              # noqa: BLE001
                    need = 0
        except Exception as exc:                               # noqa: BLE001 - a harness error
            kind, detail, need = "unclear error", f"harness: {type(exc).__name__}: {exc}", 0
        grown_mb = (_mem_kb("VmHWM") - base) / 1024
        if kind != "over-allocation" and grown_mb > 512 + need / 2**20:
            kind, detail = "over-allocation", f"peak memory grew by {grown_mb:.0f} MB; {detail}"
        out.write(json.dumps(dict(i=i, kind=kind, detail=detail[:400],
                                  s=round(time.perf_counter() - t0, 3))) + "\n")
        out.flush()


# =============================================================================================
# the parent: workers per environment, restarted after a crash or hang; the counts table
# =============================================================================================
def start_worker(seed, env_extra, sanitized):
    env = dict(os.environ)
    for k in [k for k in env if k.startswith(("OMP_", "GOMP_", "KMP_"))]:
        del env[k]
    env.update(env_extra)
    env["PYTHONPATH"] = str(STAGE if sanitized else ROOT)
    if sanitized:
        gcc = lambda lib: subprocess.check_output(["gcc", f"-print-file-name={lib}"],  # noqa: E731
                                                  text=True).strip()
        env["LD_PRELOAD"] = f"{gcc('libasan.so')}:{gcc('libstdc++.so')}"
        env["ASAN_OPTIONS"] = (f"detect_leaks=0:allocator_may_return_null=1:"
                               f"max_allocation_size_mb={LIMIT_MB}")
        env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    cmd = [sys.executable, "-P", __file__, "--worker", "--seed", str(seed)]
    if sanitized:
        cmd.append("--sanitized")
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True, bufsize=1, cwd="/")


def _report_line(stderr: str) -> str:
    """The sanitizer's one-line verdict (where and what), else the last lines of stderr."""
    lines = stderr.strip().splitlines()
    for key in ("runtime error:", "ERROR: AddressSanitizer", "libgomp:", "Error"):
        hits = [ln.strip() for ln in lines if key in ln]
        if hits:
            return hits[0][-300:]
    return " | ".join(lines[-4:])[-300:]


def stop(p):
    if p.poll() is None:
        p.kill()
    p.wait()


def run_all(seed, sanitized, only, timeout):
    cases = make_cases(seed)
    idx = [i for i, c in enumerate(cases) if not only or c.area == only]
    results = {}
    groups = defaultdict(list)
    for i in idx:
        c = cases[i]
        key = ("fresh", i) if c.fresh else ("env", tuple(sorted(c.env.items())))
        groups[key].append(i)
    for key, todo in groups.items():
        env = cases[todo[0]].env
        p = None
        for i in todo:
            if p is None or p.poll() is not None:
                p = start_worker(seed, env, sanitized)
            p.stdin.write(f"{i}\n")
            p.stdin.flush()
            t = timeout * (3 if sanitized else 1) + (10 if cases[i].fresh else 0)
            ready, _, _ = select.select([p.stdout], [], [], t)
            line = p.stdout.readline() if ready else ""
            if line:
                results[i] = json.loads(line)
                continue
            if not ready:
                stop(p)
                results[i] = dict(i=i, kind="hang", detail=f"no answer in {t:.0f} s")
            else:
                stop(p)
                err = p.stderr.read()
                sig = -p.returncode if p.returncode < 0 else None
                results[i] = dict(i=i, kind="crash",
                                  detail=(f"signal {sig}" if sig else f"exit {p.returncode}")
                                  + f": {_report_line(err)}")
            p = None
        if p is not None:
            p.stdin.close()
            stop(p)
    return cases, results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sanitized", action="store_true",
                    help="run the ASan+UBSan build staged by dev/sanitize.sh")
    ap.add_argument("--only", help="one area: matmul, attention, norms, gelu, threads")
    ap.add_argument("--show", type=int, default=3, help="examples shown per area and outcome")
    ap.add_argument("--timeout", type=float, default=TIMEOUT_S)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.seed, LIMIT_MB, args.sanitized)
    if args.sanitized and not any(STAGE.glob("pyworkloads/_kernels*.so")):
        sys.exit(f"no sanitized build in {STAGE}: run dev/sanitize.sh first")
    t0 = time.perf_counter()
    cases, results = run_all(args.seed, args.sanitized, args.only, args.timeout)
    table = defaultdict(Counter)
    examples = defaultdict(list)
    for i, r in sorted(results.items()):
        c = cases[i]
        table[c.area][r["kind"]] += 1
        if r["kind"] != "ok" and r["kind"] != "clear error":
            examples[(c.area, r["kind"])].append(f"{c.name}: {r['detail']}")
    build = "ASan+UBSan build" if args.sanitized else "plain build"
    print(f"kernels campaign, seed {args.seed}, {build}, {time.perf_counter() - t0:.0f} s")
    head = f"{'area':<10} {'tried':>6} " + " ".join(f"{o:>{max(len(o), 5)}}" for o in OUTCOMES)
    print(head)
    print("-" * len(head))
    total = Counter()
    for area in ("matmul", "attention", "norms", "gelu", "threads"):
        if area not in table:
            continue
        t = table[area]
        total.update(t)
        print(f"{area:<10} {sum(t.values()):>6} "
              + " ".join(f"{t[o]:>{max(len(o), 5)}}" for o in OUTCOMES))
    print(f"{'all':<10} {sum(total.values()):>6} "
          + " ".join(f"{total[o]:>{max(len(o), 5)}}" for o in OUTCOMES))
    for (area, kind), lines in sorted(examples.items()):
        print(f"\n{area} / {kind} ({len(lines)}):")
        for ln in lines[:args.show]:
            print(f"  {ln}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
