"""attention: the cpp flash kernel vs the NumPy reference and PyTorch's
scaled_dot_product_attention.

    OMP_NUM_THREADS=2 python benchmarks/bench_attention.py [--T 512 1024 2048 4096] [--repeat 5]

B 1, H 8, Dh 64, causal and not, fp32, all three in one process with the same thread count
(torch.set_num_threads); medians of alternating blocks of repeats.  The reference materialises the T
x T
scores, so it is run up to --ref-max-T.  Peak memory: each (implementation, T) runs once in a
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
    ap.add_argument("--ref-max-T", type=int, default=2048)
    ap.add_argument("--no-memory", action="store_true")
    args = ap.parse_args(argv)
    try:
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(_kernels.get_num_threads())
    except ImportError:
        torch = None
    print(
        f"threads {_kernels.get_num_threads()}, torch "
        f"{torch.__version__ if torch else 'not installed'}; "
        f"B={B} H={H} Dh={DH} fp32; medians of {args.repeat}"
    )
    print(
        f"{'T':>5} {'causal':>6} {'cpp ms':>8} {'torch ms':>8} {'ref ms':>8} {'cpp GF/s':>8} "
        f"{'vs torch':>8} {'vs ref':>7}"
    )
    rng = np.random.default_rng(0)
    for T in args.T:
        q, k, v = (rng.standard_normal((B, H, T, DH), dtype=np.float32) for _ in range(3))
        for causal in (True, False):
            fns = {"cpp": lambda: _kernels.attention(q, k, v, causal=causal)}
            if torch:
                tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
                fns["torch"] = lambda: F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
            if T <= args.ref_max_T:
                fns["ref"] = lambda: reference.attention(q, k, v, causal=causal)
            med = block_medians(
                fns,
                args.repeat if T <= 2048 else max(2, args.repeat // 2),
                rounds=2 if T <= 2048 else 1,
            )
            flops = (
                4.0 * B * H * T * T * DH * (0.5 if causal else 1.0)
            )  # executed work (causal half)
            tt, tr = med.get("torch", float("nan")), med.get("ref", float("nan"))
            print(
                f"{T:>5} {str(causal):>6} {med['cpp'] * 1e3:>8.1f} {tt * 1e3:>8.1f} "
                f"{tr * 1e3:>8.1f} "
                f"{flops / med['cpp'] / 1e9:>8.1f} {tt / med['cpp']:>8.2f} {tr / med['cpp']:>7.1f}",
                flush=True,
            )
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
