"""Check the cost model against the kernels this project ships: run a model on this CPU under
``pw.profile()`` and put each kernel family's measured time next to the roofline bound of the
``cpu`` device (this machine, calibrated by a short NumPy measurement and cached).

Run:  python examples/costmodel_cpu_check.py [--preset llama2-110m] [--tokens 64] [--backend numpy]
(PYTHONPATH=. from a source checkout).  Measured / bound is the efficiency the backend reaches.
"""
import argparse
from collections import defaultdict

import numpy as np

import costmodel as cm
import pyworkloads as pw

KERNEL_OP = {"matmul": "matmul", "conv": "matmul", "attention": "attention", "rms_norm": "rms_norm",
             "layer_norm": "layer_norm", "gelu": "gelu"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="llama2-110m")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--backend", default="numpy", choices=pw.kernels.available())
    a = ap.parse_args()
    dev = cm.get_device("cpu")
    print(f"{dev.name}: fp32 GEMM {dev.peak('fp32') / 1e9:.1f} GFLOP/s, elementwise "
          f"{dev.vector_peak / 1e9:.1f} GFLOP/s, copy bandwidth {dev.bandwidth / 1e9:.1f} GB/s "
          f"(measured, cached)")
    m = pw.llama2.from_preset(a.preset, seed=0)
    ids = np.random.default_rng(0).integers(3, m.config.vocab_size, size=(1, a.tokens))
    with pw.use_backend(a.backend):
        m(ids[:, :8])                                                  # warm-up
        with pw.profile() as prof:
            m(ids)
    # the same forward pass, traced: float32 and the full score matrix, as the NumPy forward runs
    rep = cm.analyze(m.config, dev, phase="prefill", seq_len=a.tokens, logits="all", dtype="fp32",
                     attention="unfused")
    bound, measured = defaultdict(float), defaultdict(float)
    for r in rep.layers:
        if r.op in KERNEL_OP:
            bound[KERNEL_OP[r.op]] += r.t_lower
    for r in prof.records:
        measured[r.op] += r.seconds
    print(f"\n{a.preset}, {a.tokens} tokens, backend {a.backend}")
    print(f"{'kernel':<12} {'bound ms':>10} {'measured ms':>12} {'bound/measured':>15}")
    for op in measured:
        print(f"{op:<12} {bound[op] * 1e3:10.2f} {measured[op] * 1e3:12.2f} "
              f"{bound[op] / measured[op]:15.0%}")
    tb, tm = sum(bound.values()), sum(measured.values())
    print(f"{'all':<12} {tb * 1e3:10.2f} {tm * 1e3:12.2f} {tb / tm:15.0%}")


if __name__ == "__main__":
    main()
