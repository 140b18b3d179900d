"""attention: the cpp flash kernel (each ISA build this CPU runs) vs PyTorch's
scaled_dot_product_attention and the NumPy reference.

    OMP_NUM_THREADS=2 python benchmarks/bench_attention.py [--T 512 1024 2048 4096] [--repeat 5]
        [--heads 8:8:64 8:8:128 8:2:64] [--isa avx512 avx2]

B 1; heads Hq:Hkv:Dh (Hkv < Hq is grouped-query attention: torch gets enable_gqa=True); causal and
not; fp32; every implementation in one process with the same thread count
(torch.set_num_threads); medians of alternating blocks of repeats.  The reference materialises the
T x T scores, so it is run up to --ref-max-T.  Peak memory: each (implementation, T) runs once in a
fresh subprocess, and the growth of its resident-set high-water mark over the inputs is printed --
flat in T for the fused kernel, ~T² for the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout works without installing

from bench_matmul import block_medians  # noqa: E402  (same folder)

from pyworkloads import _kernels
from pyworkloads.kernels import reference

B, H, DH = 1, 8, 64

_PEAK_CHILD = r"""
import json, sys, numpy as np
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM'):
            return int(line.split()[1]) * 1024
impl, T = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
q, k, v = (rng.standard_normal((1, 8, T, 64), dtype=np.float32) for _ in range(3))
if impl == 'cpp':
    from pyworkloads import _kernels
    f = lambda: _kernels.attention(q, k, v, causal=True)
else:
    from pyworkloads.kernels import reference
    f = lambda: reference.attention(q, k, v, causal=True)
before = hwm()
f()
print(json.dumps(hwm() - before))
"""


def peak_growth(impl: str, T: int) -> int:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_CHILD, impl, str(T)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(out.stdout)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--T", type=int, nargs="*", default=[512, 1024, 2048, 4096])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--heads", nargs="*", default=["8:8:64", "8:8:128", "8:2:64"],
                    help="Hq:Hkv:Dh configurations")
    ap.add_argument("--ref-max-T", type=int, default=1024)
    ap.add_argument("--isa", nargs="*", default=None,
                    help="cpp ISA builds to measure (default: all this CPU runs but portable)")
    ap.add_argument("--no-memory", action="store_true")
    args = ap.parse_args(argv)
    isas = args.isa or [i for i in _kernels.isas() if i != "portable"] or ["portable"]
    mods = {isa: _kernels.module(isa) for isa in isas}
    try:
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(_kernels.get_num_threads())
    except ImportError:
        torch = None
    print(
        f"threads {_kernels.get_num_threads()}, torch "
        f"{torch.__version__ if torch else 'not installed'}; B={B} fp32; cpp builds {isas}; "
        f"medians of {args.repeat}"
    )
    head = f"{'Hq:Hkv:Dh':>9} {'T':>5} {'causal':>6} {'torch ms':>8} {'ref ms':>7}"
    for isa in isas:
        head += f" {isa + ' ms':>10} {'GF/s':>6} {'/torch':>6}"
    print(head)
    rng = np.random.default_rng(0)
    for spec in args.heads:
        hq, hkv, dh = (int(x) for x in spec.split(":"))
        for T in args.T:
            q = rng.standard_normal((B, hq, T, dh), dtype=np.float32)
            k, v = (rng.standard_normal((B, hkv, T, dh), dtype=np.float32) for _ in range(2))
            for causal in (True, False):
                fns = {isa: (lambda m=m: m.attention(q, k, v, causal=causal))
                       for isa, m in mods.items()}
                if torch:
                    tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
                    gqa = {"enable_gqa": True} if hkv != hq else {}
                    fns["torch"] = lambda: F.scaled_dot_product_attention(
                        tq, tk, tv, is_causal=causal, **gqa)
                if T <= args.ref_max_T:
                    fns["ref"] = lambda: reference.attention(q, k, v, causal=causal)
                med = block_medians(
                    fns,
                    args.repeat if T <= 2048 else max(2, args.repeat // 2),
                    rounds=2 if T <= 2048 else 1,
                )
                # executed work: the causal half
                flops = 4.0 * B * hq * T * T * dh * (0.5 if causal else 1.0)
                tt, tr = med.get("torch", float("nan")), med.get("ref", float("nan"))
                line = f"{spec:>9} {T:>5} {str(causal):>6} {tt * 1e3:>8.1f} {tr * 1e3:>7.1f}"
                for isa in isas:
                    line += (f" {med[isa] * 1e3:>10.1f} {flops / med[isa] / 1e9:>6.1f} "
                             f"{tt / med[isa]:>6.2f}")
                print(line, flush=True)
    if not args.no_memory:
        print("\npeak resident memory growth of one causal call (MiB), fresh process each:")
        print(f"{'T':>5} {'cpp':>8} {'ref':>8}   (q+k+v inputs: MiB)")
        for T in args.T:
            ref = peak_growth("ref", T) / 2**20 if T <= args.ref_max_T else float("nan")
            print(
                f"{T:>5} {peak_growth('cpp', T) / 2**20:>8.1f} {ref:>8.1f}   "
                f"({3 * B * H * T * DH * 4 / 2**20:.1f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
