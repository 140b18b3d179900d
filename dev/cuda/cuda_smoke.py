"""A small, fast run of every CUDA kernel version on awkward shapes, for compute-sanitizer.

    python dev/cuda/cuda_smoke.py [--quick] [--no-torch] [--ops matmul,attention,norms]
    compute-sanitizer --tool memcheck python dev/cuda/cuda_smoke.py

Each algorithm of ``pyworkloads._cuda.ALGORITHMS`` runs on a few small odd shapes (tile edges,
K not a multiple of the vector width, broadcast batches, causal with Tq < Tk, GQA, a bias, a
boolean mask with a fully masked row, head widths 20..256, norms with D = 1 and D = 8193, a
misaligned device view) and is checked against pyworkloads.kernels.reference in float64.  Sizes
are tiny so that the sanitizer's 10-100x slowdown still fits a minute or two; the point is to
touch every kernel instantiation's edge code (partial tiles, predicated loads, masked rows),
not to be thorough (tests/kernels/test_cuda_kernels.py is).  A device synchronisation follows
every call, so a fault is reported against the call that made it; a fault that poisons the CUDA
context ends that op, and the remaining ops run in a fresh process.  float32/float16 go through
NumPy; bfloat16 (and the misaligned views) need PyTorch with CUDA and are skipped without it.

Prints one line per check and a summary; exit status 0 when all passed, 1 when any failed,
2 when there is no GPU or no extension (nothing was run).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
# The checkout's package where it is built in place (the CMake dev build that run_gpu_checks.sh
# makes) or where none is installed; otherwise the installed one, which pip built the extension
# into.
if any((ROOT / "pyworkloads").glob("_cuda*")) or importlib.util.find_spec("pyworkloads") is None:
    sys.path.insert(0, str(ROOT))

from pyworkloads.kernels import reference  # noqa: E402

# error / max(1, max|reference|) allowed per storage dtype (inputs are rounded to the dtype
# first, so this only covers accumulation and output rounding)
TOL = {"fp32": 1e-4, "fp16": 4e-3, "bf16": 3e-2}

MATMUL = [
    ((1, 1), (1, 1)),
    ((5, 3), (3, 7)),
    ((33, 17), (17, 65)),
    ((19, 13), (13, 21)),
    ((130, 72), (72, 136)),
    ((64, 64), (64, 64)),
    ((1, 600), (600, 3)),
    ((2, 1, 17, 24), (3, 24, 40)),
]
# (B, Hq, Hkv, Tq, Tk, Dh, causal, bias, mask)
ATTENTION = [
    (1, 1, 1, 1, 1, 64, False, None, None),
    (2, 4, 2, 33, 47, 64, True, None, None),
    (1, 2, 1, 17, 17, 32, False, "full", "hole"),
    (1, 2, 2, 65, 130, 128, True, None, None),
    (1, 2, 2, 5, 9, 80, False, "row", None),
    (1, 3, 1, 1, 70, 64, True, None, "keys"),
    (1, 2, 2, 20, 20, 256, True, None, None),
    (2, 2, 2, 64, 64, 64, False, None, None),
    (1, 2, 2, 9, 11, 20, True, "full", None),
]
NORMS = [(1, 1), (3, 7), (5, 1000), (2, 4096), (1, 8193), (4, 24), (0, 8), (3, 0)]
QUICK = {"matmul": [1, 4, 7], "attention": [1, 2, 8], "norms": [1, 4]}  # --quick: indices kept


class Smoke:
    def __init__(self, _cuda, torch, skip_algos=frozenset()):
        self._cuda, self.torch, self.skip_algos = _cuda, torch, frozenset(skip_algos)
        self.passed = self.failed = self.unsupported = 0
        self.failures: list[str] = []
        self.poisoned = False

    def algos(self, op: str) -> list[str]:
        """The op's algorithms, less --skip-algos."""
        return [a for a in self._cuda.ALGORITHMS[op] if a not in self.skip_algos]

    def to_dtype(self, x: np.ndarray, dt: str):
        """(argument for the op, the same values as float64 for the reference)."""
        if dt == "bf16":
            t = self.torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.torch.bfloat16)
            return t.cuda(), t.float().numpy().astype(np.float64)
        arr = x.astype(np.float32 if dt == "fp32" else np.float16)
        return arr, arr.astype(np.float64)

    def result(self, out) -> np.ndarray:
        if isinstance(out, np.ndarray):
            return out.astype(np.float64)
        return (
            self.torch.from_dlpack(out).cpu().float().numpy().astype(np.float64)
        )  # DeviceArray via DLPack

    def check(self, label: str, fn, want: np.ndarray, dt: str) -> None:
        if self.poisoned:
            return
        print(
            f"  {label} ... ", end="", flush=True
        )  # a hang leaves this line unfinished in the log
        t0 = time.perf_counter()
        try:
            got = fn()
            self._cuda.synchronize()
            got = self.result(got)
        except ValueError as exc:  # this version does not take this problem
            self.unsupported += 1
            print(f"n/a: {exc}", flush=True)
            return
        except Exception as exc:
            self.failed += 1
            self.failures.append(f"{label}: {type(exc).__name__}: {exc}")
            print(f"ERROR: {type(exc).__name__}: {exc}", flush=True)
            try:
                self._cuda.synchronize()
            except Exception:
                self.poisoned = True
                print("  the CUDA context is poisoned: stopping here", flush=True)
            return
        ms = (time.perf_counter() - t0) * 1e3
        if got.shape != want.shape:
            self.failed += 1
            self.failures.append(f"{label}: shape {got.shape} != {want.shape}")
            print(f"FAIL: shape {got.shape}, want {want.shape}", flush=True)
            return
        err = float(np.max(np.abs(got - want))) if want.size else 0.0
        rel = err / max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
        ok = bool(np.isfinite(got).all() == np.isfinite(want).all()) and rel <= TOL[dt]
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            self.failures.append(f"{label}: error {err:.3g} (relative {rel:.2g} > {TOL[dt]})")
        print(f"{'ok' if ok else 'FAIL'}: err {err:.2e} ({ms:.0f} ms)", flush=True)

    # ---- ops ------------------------------------------------------------------------------
    def matmul(self, dtypes, idx):
        rng = np.random.default_rng(1)
        for i, (sa, sb) in enumerate(MATMUL):
            if idx is not None and i not in idx:
                continue
            a64, b64 = rng.standard_normal(sa), rng.standard_normal(sb)
            for dt in dtypes:
                a, ar = self.to_dtype(a64, dt)
                b, br = self.to_dtype(b64, dt)
                want = reference.matmul(ar, br)
                for algo in self.algos("matmul"):
                    self.check(
                        f"matmul {algo:<10} {dt} {sa}x{sb}",
                        lambda: self._cuda.matmul(a, b, algo=algo),
                        want,
                        dt,
                    )
                if (
                    dt != "bf16" and len(sb) == 2 and sb[0] > 1 and sb[1] > 1
                ):  # a transposed (W.T) operand
                    bt = np.ascontiguousarray(b.T).T
                    self.check(
                        f"matmul auto       {dt} {sa}x{sb} b=W.T",
                        lambda: self._cuda.matmul(a, bt),
                        want,
                        dt,
                    )

    def attention(self, dtypes, idx):
        rng = np.random.default_rng(2)
        for i, (B, Hq, Hkv, Tq, Tk, Dh, causal, bias_kind, mask_kind) in enumerate(ATTENTION):
            if idx is not None and i not in idx:
                continue
            q64, k64, v64 = (
                rng.standard_normal((B, h, t, Dh)) for h, t in ((Hq, Tq), (Hkv, Tk), (Hkv, Tk))
            )
            bias64 = {
                None: None,
                "full": rng.standard_normal((B, Hq, Tq, Tk)),
                "row": rng.standard_normal((1, 1, Tq, Tk)),
            }[bias_kind]
            mask = None
            if mask_kind == "hole":
                mask = rng.random((B, 1, Tq, Tk)) < 0.7
                mask[:, :, 0, :] = False  # a query that may attend to nothing -> zeros
            elif mask_kind == "keys":
                mask = np.ones((1, 1, 1, Tk), bool)
                mask[..., ::3] = False
            for dt in dtypes:
                q, qr = self.to_dtype(q64, dt)
                k, kr = self.to_dtype(k64, dt)
                v, vr = self.to_dtype(v64, dt)
                bias, biasr = self.to_dtype(bias64, dt) if bias64 is not None else (None, None)
                m = mask
                if dt == "bf16" and mask is not None:
                    m = self.torch.from_numpy(mask).cuda()
                want = reference.attention(qr, kr, vr, causal=causal, bias=biasr, mask=mask)
                shape = (
                    f"B{B} Hq{Hq} Hkv{Hkv} Tq{Tq} Tk{Tk} Dh{Dh}{' causal' if causal else ''}"
                    f"{' bias=' + bias_kind if bias_kind else ''}"
                    f"{' mask=' + mask_kind if mask_kind else ''}"
                )
                for algo in self.algos("attention"):
                    self.check(
                        f"attention {algo:<9} {dt} {shape}",
                        lambda: self._cuda.attention(q, k, v, causal, None, bias, m, algo=algo),
                        want,
                        dt,
                    )

    def norms(self, dtypes, idx):
        rng = np.random.default_rng(3)
        for i, (rows, D) in enumerate(NORMS):
            if idx is not None and i not in idx:
                continue
            x64, w64, b64 = (
                rng.standard_normal((rows, D)) + 3.0,
                rng.standard_normal(D),
                rng.standard_normal(D),
            )
            for dt in dtypes:
                x, xr = self.to_dtype(x64, dt)
                w, wr = self.to_dtype(w64, dt)
                b, br = self.to_dtype(b64, dt)
                for algo in self.algos("rms_norm"):
                    self.check(
                        f"rms_norm   {algo:<5} {dt} {rows}x{D}",
                        lambda: self._cuda.rms_norm(x, w, 1e-6, algo=algo),
                        reference.rms_norm(xr, wr, 1e-6),
                        dt,
                    )
                for algo in self.algos("layer_norm"):
                    self.check(
                        f"layer_norm {algo:<5} {dt} {rows}x{D}",
                        lambda: self._cuda.layer_norm(x, w, b, 1e-5, algo=algo),
                        reference.layer_norm(xr, wr, br, 1e-5),
                        dt,
                    )
                    self.check(
                        f"layer_norm {algo:<5} {dt} {rows}x{D} no affine",
                        lambda: self._cuda.layer_norm(x, None, None, 1e-5, algo=algo),
                        reference.layer_norm(xr, np.ones(D), np.zeros(D), 1e-5),
                        dt,
                    )
        if self.torch is None:
            return
        torch = self.torch
        for rows, D in ((3, 16), (2, 4096)):  # device views 2 / 4 bytes off a 16-byte boundary
            for dt, tdt in (("fp32", torch.float32), ("fp16", torch.float16)):
                flat = torch.from_numpy(rng.standard_normal(rows * D + 1)).to(tdt).cuda()
                x = flat[1:].view(rows, D)
                w = torch.from_numpy(rng.standard_normal(D + 1)).to(tdt).cuda()[1:]
                xr, wr = x.cpu().double().numpy(), w.cpu().double().numpy()
                for algo in self.algos("rms_norm"):
                    self.check(
                        f"rms_norm   {algo:<5} {dt} {rows}x{D} misaligned views",
                        lambda: self._cuda.rms_norm(x, w, 1e-6, algo=algo),
                        reference.rms_norm(xr, wr, 1e-6),
                        dt,
                    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few shapes per op (for racecheck)")
    ap.add_argument(
        "--no-torch", action="store_true", help="NumPy inputs only (no bfloat16, no device views)"
    )
    ap.add_argument("--ops", default="matmul,attention,norms")
    ap.add_argument(
        "--skip-algos",
        default="",
        metavar="A,B",
        help="algorithm names left out "
        "(run_gpu_checks.sh: candidate versions that have not passed their own GPU checks)",
    )
    args = ap.parse_args(argv)
    try:
        from pyworkloads import _cuda
    except ImportError as exc:
        print(f"cuda_smoke: pyworkloads._cuda is not built ({exc})")
        return 2
    n, why = _cuda.device_status()
    if n == 0:
        print(f"cuda_smoke: no usable CUDA device ({why}); nothing run")
        return 2
    torch = None
    if not args.no_torch:
        try:
            import torch as _torch

            torch = _torch if _torch.cuda.is_available() else None
        except ImportError:
            pass
    dtypes = ["fp32", "fp16"] + (["bf16"] if torch is not None else [])
    print(
        f"cuda_smoke: algorithms {dict(_cuda.ALGORITHMS)}; dtypes {dtypes}"
        + (
            ""
            if torch is not None
            else " (no PyTorch with CUDA: bfloat16 and device views skipped)"
        ),
        flush=True,
    )
    s = Smoke(_cuda, torch, {a for a in args.skip_algos.split(",") if a})
    t0 = time.perf_counter()
    ops = [op for op in args.ops.split(",") if op]
    for op in ops:
        if op not in QUICK:
            ap.error(f"--ops: unknown op {op!r} (expected some of {', '.join(QUICK)})")
    rest_rc = 0
    for i, op in enumerate(ops):
        print(f"== {op}", flush=True)
        getattr(s, op)(dtypes, set(QUICK[op]) if args.quick else None)
        if s.poisoned and ops[i + 1 :]:
            # a fault poisons this process's CUDA context: the other ops run in a fresh process
            print(
                f"cuda_smoke: continuing with {', '.join(ops[i + 1 :])} in a new process",
                flush=True,
            )
            cmd = [sys.executable, str(Path(__file__).resolve()), "--ops", ",".join(ops[i + 1 :])]
            cmd += (["--quick"] if args.quick else []) + (["--no-torch"] if args.no_torch else [])
            cmd += ["--skip-algos", args.skip_algos] if args.skip_algos else []
            rest_rc = subprocess.run(cmd).returncode
            break
    print(
        f"\ncuda_smoke: {s.passed} passed, {s.failed} failed, {s.unsupported} not supported by "
        "that version "
        f"({time.perf_counter() - t0:.1f} s)"
        + (" -- STOPPED EARLY: context poisoned" if s.poisoned else "")
    )
    for f in s.failures:
        print(f"  FAILED {f}")
    return 1 if s.failed or s.poisoned or rest_rc else 0


if __name__ == "__main__":
    raise SystemExit(main())
