"""Quantized matmul (cpp/qmatmul.cpp): x @ dequantize(W).T with W in GGUF block formats, against the
float32 GEMV/GEMM of the same cpp build and against NumPy, at the decode shapes of stories110M and
LLaMA-7B.

    OMP_NUM_THREADS=2 python benchmarks/bench_qmatmul.py [--qtypes Q4_K Q6_K] [--rows 1 4 16 512]
        [--repeat 7] [--isa avx512 avx2] [--all] [--shapes stories llama]

For each shape (K, N) and row count M, every ISA build of the cpp kernels this CPU runs (default:
all but portable) is measured beside NumPy in the same run, in alternating blocks of calls
(bench_matmul.block_medians), medians shown:

    q ms      _kernels.qmatmul(x, w, qtype), w uint8 [N, K / block * type_size]
    f32 ms    _kernels.matmul(x, W.T), W float32 [N, K] (the same build's float GEMV / GEMM)
    np ms     x @ W.T in NumPy (its BLAS)
    f32/q     how many times faster the quantized product is than the float32 one
    GB/s      the quantized weight's bytes over q's time, and that as a fraction of the
              machine's streaming read (_kernels.stream_read over 256 MB, best of 5, in the same
              run): how close decode runs to the memory system.  Weights under a few MB stay in
              cache between calls, so small shapes can exceed 1.
    v2 / v4   for M <= QMATMUL_GEMV_M on the builds with version 4 (avx2, avx512): the float GEMV
              (version="gemv") and the int8 one (version="int8", fast's default there) measured
              side by side in the same blocks: ms, v2/v4 (how many times faster 4 is), and each
              one's GB/s as a fraction of the streaming read.

The weights are random bytes with the fp16 scale fields set to moderate values: every bit pattern
of the rest of a block is valid, and the kernels' speed does not depend on the values.  M = 512
(prefill) runs on the stories110M shapes only unless --all (LLaMA-7B's would take minutes of NumPy
GEMM).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout works without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_matmul import blas_info, block_medians  # noqa: E402

from pyworkloads import _kernels  # noqa: E402

# (weights per block, bytes per block, byte offsets of the fp16 scales)
FORMATS = {
    "Q8_0": (32, 34, (0,)),
    "Q4_0": (32, 18, (0,)),
    "Q4_1": (32, 20, (0, 2)),
    "Q4_K": (256, 144, (0, 2)),
    "Q6_K": (256, 210, (208,)),
}
SHAPES = [  # (name, K, N)
    ("stories110M qkv/o 768x768", 768, 768),
    ("stories110M w1/w3 768x2048", 768, 2048),
    ("stories110M w2 2048x768", 2048, 768),
    ("stories110M head 768x32000", 768, 32000),
    ("llama2-7b qkv/o 4096x4096", 4096, 4096),
    ("llama2-7b w1/w3 4096x11008", 4096, 11008),
    ("llama2-7b w2 11008x4096", 11008, 4096),
]


def random_weight(rng, qtype: str, N: int, K: int) -> np.ndarray:
    block, size, scales = FORMATS[qtype]
    w = rng.integers(0, 256, (N, K // block, size), dtype=np.uint8)
    for at in scales:
        d = rng.uniform(0.001, 0.01, (N, K // block)).astype(np.float16)
        w[..., at:at + 2] = d.view(np.uint8).reshape(N, K // block, 2)
    return w.reshape(N, -1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--qtypes", nargs="*", default=list(FORMATS), choices=list(FORMATS))
    ap.add_argument("--rows", type=int, nargs="*", default=[1, 4, 16, 512])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--all", action="store_true", help="M = 512 on the LLaMA-7B shapes too")
    ap.add_argument("--shapes", nargs="*", default=None,
                    help="only the shapes whose name contains one of these words")
    ap.add_argument("--isa", nargs="*", default=None,
                    help="cpp ISA builds to measure (default: all this CPU runs but portable)")
    args = ap.parse_args(argv)
    isas = args.isa or [i for i in _kernels.isas() if i != "portable"] or ["portable"]
    mods = {isa: _kernels.module(isa) for isa in isas}
    if not all(hasattr(m, "qmatmul") for m in mods.values()):
        sys.exit("this build of the cpp kernels has no qmatmul (rebuild: see README)")
    rng = np.random.default_rng(0)
    print(f"threads: cpp {_kernels.get_num_threads()} "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}), BLAS: {blas_info()}; "
          f"cpp builds {isas} ({_kernels.build_info()['compiler']})")
    big = np.ones(64 << 20, np.float32)                         # 256 MB, far beyond the caches
    stream = big.nbytes / min(mods[isas[0]].stream_read(big)[0] for _ in range(5))
    del big
    print(f"streaming read (cpp stream_read, 256 MB, best of 5): {stream / 1e9:.1f} GB/s")
    print(f"{'shape (K x N)':<28} {'M':>4} {'qtype':<5} {'isa':<8} {'q ms':>8} {'f32 ms':>8} "
          f"{'np ms':>8} {'f32/q':>6} {'np/q':>6} {'GB/s':>6} {'/stream':>7} | {'v2 ms':>8} "
          f"{'v4 ms':>8} {'v2/v4':>6} {'v2 /st':>6} {'v4 /st':>6}")
    shapes = [s for s in SHAPES if not args.shapes or any(w in s[0] for w in args.shapes)]
    for name, K, N in shapes:
        W = rng.standard_normal((N, K), dtype=np.float32)
        ws = {qt: random_weight(rng, qt, N, K) for qt in args.qtypes}
        for M in args.rows:
            if M > 64 and not args.all and N * K > 768 * 32000:
                continue
            x = rng.standard_normal((M, K), dtype=np.float32)
            fns = {"np": lambda: x @ W.T}
            both = {isa for isa, m in mods.items()
                    if getattr(m, "QMATMUL_INT8", False) and M <= m.QMATMUL_GEMV_M}
            for isa, m in mods.items():
                fns[f"f32 {isa}"] = lambda m=m: m.matmul(x, W.T)
                for qt, w in ws.items():
                    fns[f"{qt} {isa}"] = lambda m=m, w=w, qt=qt: m.qmatmul(x, w, qt)
                    for v in ("gemv", "int8") if isa in both else ():
                        fns[f"{qt} {isa} {v}"] = lambda m=m, w=w, qt=qt, v=v: m.qmatmul(x, w, qt, v)
            med = block_medians(fns, args.repeat)
            for qt, w in ws.items():
                for isa in isas:
                    q, f = med[f"{qt} {isa}"], med[f"f32 {isa}"]
                    gbs = w.nbytes / q
                    v24 = ""
                    if isa in both:
                        v2, v4 = med[f"{qt} {isa} gemv"], med[f"{qt} {isa} int8"]
                        v24 = (f" | {v2 * 1e3:>8.3f} {v4 * 1e3:>8.3f} {v2 / v4:>6.2f} "
                               f"{w.nbytes / v2 / stream:>6.2f} {w.nbytes / v4 / stream:>6.2f}")
                    print(f"{name:<28} {M:>4} {qt:<5} {isa:<8} {q * 1e3:>8.3f} {f * 1e3:>8.3f} "
                          f"{med['np'] * 1e3:>8.3f} {f / q:>6.2f} {med['np'] / q:>6.2f} "
                          f"{gbs / 1e9:>6.1f} {gbs / stream:>7.2f}{v24}", flush=True)


if __name__ == "__main__":
    main()
