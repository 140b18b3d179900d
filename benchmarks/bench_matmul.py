"""matmul GFLOP/s: the cpp backend vs NumPy (OpenBLAS) on square sizes and the models' real shapes.

    OMP_NUM_THREADS=2 python benchmarks/bench_matmul.py [--sizes 256 512 1024 2048 4096] [--repeat
    7] [--isa avx512 avx2]

Each ISA build of the cpp kernels this CPU runs (default: all but portable) is measured beside
NumPy in the same run, so an AVX-512 machine gives the AVX2 path's ratios too.

Both libraries run in the same process with the same thread count, in alternating blocks of
calls (so load from other processes hits both alike, see block_medians), and the table shows
medians.  "W.T" rows are the models' linear layers, x @ weight.T with a C-contiguous [N, K]
weight: the transposed operand the cpp kernel packs (or, for 1-row decode GEMVs, streams) in place.
Unset OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE for a fair numpy; the BLAS kernel in use is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout works without installing

from pyworkloads import _kernels


def blas_info() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed (pip install threadpoolctl to see the BLAS kernel)"
    return "; ".join(
        f"{i['internal_api']} {i.get('version')} {i.get('architecture')} x{i['num_threads']}"
        for i in threadpool_info()
        if i["user_api"] == "blas"
    )


def block_medians(fns: dict, repeat: int, rounds: int = 3, warmup_s: float = 0.02) -> dict:
    """Median seconds of each callable over `repeat` timed calls, run in blocks: every round gives
    each callable a block of calls in turn (alternating the order), after a pause and `warmup_s`
    of untimed calls (at least one).  Blocks, not strict alternation, because BLAS, OpenMP and
    torch pool threads keep spinning for up to ~0.1 s after a call and would steal the cores of
    whatever runs next.  The warm-up is time, not a call count: after the pause the sleeping
    threads and (on a VM) their vCPUs take ~1 ms to come back, so the first ten 50-us GEMVs ran
    at 10-90 % of their speed and a one-call warm-up left that ramp in short blocks' medians."""
    per = max(1, -(-repeat // rounds))
    times = {k: [] for k in fns}
    for r in range(rounds):
        for k in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            time.sleep(0.2)
            until = time.perf_counter() + warmup_s
            fns[k]()
            while time.perf_counter() < until:
                fns[k]()
            for _ in range(per):
                t = time.perf_counter()
                fns[k]()
                times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="*", default=[256, 512, 1024, 2048, 4096])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--no-model-shapes", action="store_true")
    ap.add_argument("--isa", nargs="*", default=None,
                    help="cpp ISA builds to measure (default: all this CPU runs but portable)")
    args = ap.parse_args(argv)
    isas = args.isa or [i for i in _kernels.isas() if i != "portable"] or ["portable"]
    mods = {isa: _kernels.module(isa) for isa in isas}
    rng = np.random.default_rng(0)
    print(
        f"threads: cpp {_kernels.get_num_threads()} "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}), "
        f"BLAS: {blas_info()}; cpp builds {isas} ({_kernels.build_info()['compiler']}), tile "
        f"(MR, NR, KC, MC, NC) = {[m._matmul_tile() for m in mods.values()]}"
    )
    big = np.ones(64 << 20, np.float32)                         # 256 MB, far beyond the caches
    read = min(mods[isas[0]].stream_read(big)[0] for _ in range(5))
    print(f"streaming read (cpp stream_read, 256 MB, best of 5): {big.nbytes / read / 1e9:.1f} "
          "GB/s")
    del big
    head = f"{'case':<36} {'numpy GF/s':>10}"
    for isa in isas:
        head += f" {isa + ' GF/s':>12} {'/np':>5} {'GB/s':>6}"
    print(head + f" {'np GB/s':>7}")
    cases = [(f"square {n}", (n, n), (n, n), False) for n in args.sizes]
    cases += [(f"square {n}, b = W.T", (n, n), (n, n), True) for n in args.sizes if n >= 1024]
    if not args.no_model_shapes:
        cases += [
            ("llama2-7b prefill 2048x4096x4096", (2048, 4096), (4096, 4096), True),
            ("llama2-7b mlp prefill 512x4096x11008", (512, 4096), (11008, 4096), True),
            ("llama2-7b decode 1x4096x11008", (1, 4096), (11008, 4096), True),
            ("llama2-7b decode 1x11008x4096", (1, 11008), (4096, 11008), True),
            ("stories110M decode 1x768x2048", (1, 768), (2048, 768), True),
            ("stories110M decode 1x2048x768", (1, 2048), (768, 2048), True),
            ("stories110M head 1x768x32000", (1, 768), (32000, 768), True),
            ("stories110M prefill 256x768x2048", (256, 768), (2048, 768), True),
            ("clip-b/32 vision 50x768x3072", (50, 768), (3072, 768), True),
            ("whisper-base enc 1500x512x2048", (1500, 512), (2048, 512), True),
            ("batch decode 4x4096x4096", (4, 4096), (4096, 4096), True),
            # x @ W with W stored [K, N]: the plain NumPy layout (B row-major)
            ("x @ W decode 1x4096x11008", (1, 4096), (4096, 11008), False),
            ("x @ W decode 1x11008x4096", (1, 11008), (11008, 4096), False),
            ("x @ W decode 1x768x2048", (1, 768), (768, 2048), False),
            ("x @ W decode 1x2048x768", (1, 2048), (2048, 768), False),
            ("x @ W batch 4x4096x4096", (4, 4096), (4096, 4096), False),
        ]
    for name, sa, sb, transposed in cases:
        a = rng.standard_normal(sa, dtype=np.float32)
        w = rng.standard_normal(sb, dtype=np.float32)
        b = w.T if transposed else w  # [K, N] either way
        M, K = a.shape
        N = b.shape[1]
        fns = {"np": lambda: a @ b}
        fns.update({isa: (lambda m=m: m.matmul(a, b)) for isa, m in mods.items()})
        med = block_medians(fns, args.repeat)
        flops, nbytes = 2.0 * M * N * K, 4.0 * (M * K + K * N + M * N)
        line = f"{name:<36} {flops / med['np'] / 1e9:>10.1f}"
        for isa in isas:
            line += (f" {flops / med[isa] / 1e9:>12.1f} {med['np'] / med[isa]:>5.2f} "
                     f"{nbytes / med[isa] / 1e9:>6.1f}")
        print(line + f" {nbytes / med['np'] / 1e9:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
