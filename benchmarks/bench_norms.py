"""rms_norm / layer_norm bandwidth: the cpp kernels vs the NumPy reference and vs a plain copy.

    OMP_NUM_THREADS=2 python benchmarks/bench_norms.py [--repeat 9]

GB/s counts the compulsory traffic: x read once, y written once (weights are negligible).  The
copy baseline is `x.copy()` -- the same one-read-one-write traffic, including allocating the
output as the kernels do -- and `np.copyto` into a preallocated array (no fresh pages).
Medians of alternating blocks of repeats, all in one process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout works without installing

from bench_matmul import block_medians  # noqa: E402  (same folder)

from pyworkloads import _kernels
from pyworkloads.kernels import reference

SHAPES = [(4096, 768), (16384, 1024), (4096, 4096), (1500, 512), (64, 64 * 64 * 4)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"threads {_kernels.get_num_threads()}; GB/s = (read x + write y) / median time")
    print(
        f"{'op':<10} {'shape':>14} {'MB':>6} {'numpy':>7} {'cpp':>7} {'copy':>7} {'copyto':>7} "
        f"{'cpp/np':>7} {'cpp/copy':>8} {'cpp/copyto':>10}"
    )
    for shape in SHAPES:
        x = rng.standard_normal(shape, dtype=np.float32)
        D = shape[-1]
        w, b = rng.standard_normal(D, dtype=np.float32), rng.standard_normal(D, dtype=np.float32)
        dst = np.empty_like(x)
        nbytes = 2 * x.nbytes
        for op, ref, cpp in (
            (
                "rms_norm",
                lambda: reference.rms_norm(x, w, 1e-6),
                lambda: _kernels.rms_norm(x, w, 1e-6),
            ),
            (
                "layer_norm",
                lambda: reference.layer_norm(x, w, b, 1e-5),
                lambda: _kernels.layer_norm(x, w, b, 1e-5),
            ),
        ):
            med = block_medians(
                {"np": ref, "cpp": cpp, "copy": x.copy, "copyto": lambda: np.copyto(dst, x)},
                args.repeat,
            )
            gbs = {k: nbytes / t / 1e9 for k, t in med.items()}
            print(
                f"{op:<10} {str(shape):>14} {x.nbytes / 1e6:>6.1f} {gbs['np']:>7.1f} "
                f"{gbs['cpp']:>7.1f} "
                f"{gbs['copy']:>7.1f} {gbs['copyto']:>7.1f} {gbs['cpp'] / gbs['np']:>7.2f} "
                f"{gbs['cpp'] / gbs['copy']:>8.2f} {gbs['cpp'] / gbs['copyto']:>10.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
