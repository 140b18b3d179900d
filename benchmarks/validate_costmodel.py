"""The cost model's error table: predicted (``t_pred`` from a calibrated profile) against measured
(``pw.profile()`` per kernel call, wall clock per call) for all four models, on shapes that are not
points of the calibration grid.

    python benchmarks/validate_costmodel.py --backend cpp --calibrate     # ~4 minutes on 2 cores
    python benchmarks/validate_costmodel.py --backend numpy --calibrate
    python benchmarks/validate_costmodel.py --from-bench benchmarks/results/h200-2026-11-26.json

Prints one markdown row per workload: per-layer median and worst |error| over the layers that
carry >= 1 % of the kernel time, the end-to-end (wall-clock) error, and how many layers were
measured below their lower bound (there must be none).  ``--json FILE`` keeps every layer.
``--from-bench`` checks a GPU's kernels from a ``bench_cuda.py`` run instead: each benchmarked
row predicted from a profile of the other rows (leave one out), for our kernels and the vendor's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import costmodel as cm  # noqa: E402
import pyworkloads as pw  # noqa: E402

# (label, model, phase, options): sizes chosen off the calibration grid (M = 100, 3·50, 5·20 ...)
WORKLOADS = [
    ("LLaMA prefill", "llama2-110m", "prefill", dict(seq_len=100)),
    ("LLaMA decode", "llama2-110m", "decode", dict(seq_len=200)),
    ("CLIP image", "clip-vit-b-32", "image", dict(batch=3)),
    ("CLIP text", "clip-vit-b-32", "text", dict(text_batch=5, seq_len=20)),
    ("SAM encoder", "sam-vit-b", "encoder", dict()),
    ("SAM decoder", "sam-vit-b", "decoder", dict(prompts=3, points=2)),
    ("Whisper encoder + prompt", "whisper-base", "prefill", dict(seq_len=4)),
    ("Whisper decoding step", "whisper-base", "decode", dict(seq_len=50)),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=("cpp", "numpy"), default="cpp")
    ap.add_argument("--calibrate", action="store_true", help="measure the profile first")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=10.0,
                    help="spread each workload's runs over at least this long (default 10: this "
                         "machine's slow spells last seconds; each call keeps its median)")
    ap.add_argument("--only", help="comma-separated labels (default: all)")
    ap.add_argument("--json", help="write every layer of every workload to this file")
    ap.add_argument("--from-bench", metavar="JSON",
                    help="a bench_cuda.py results file: predict each GPU row from the others")
    a = ap.parse_args()
    if a.from_bench:
        return from_bench(a.from_bench)
    if a.calibrate:
        t0 = time.perf_counter()
        prof = cm.calibrate(a.backend, progress=lambda m: print(f"  calibrating: {m}",
                                                                 file=sys.stderr))
        print(f"calibrated {a.backend} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    else:
        prof = cm.load_profile(a.backend)
        if prof is None:
            raise SystemExit(f"no {a.backend} profile: run with --calibrate")
    print(f"machine: {prof.machine['cpu']} ({prof.machine['isa']}), {prof.machine['cores']} cores, "
          f"{pw.kernels.get_num_threads()} threads, {platform.python_version()}, "
          f"numpy {prof.machine['numpy']}; backend {a.backend}; profile {prof.measured_at}\n")
    print("| workload | model | layers (>= 1 %) | median \\|error\\| | worst \\|error\\| "
          "| end to end: measured | predicted | error | below t_lower | t_lower / measured |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    docs = []
    only = set(a.only.split(",")) if a.only else None
    for label, model, phase, kw in WORKLOADS:
        if only and label not in only:
            continue
        v = cm.validate(model, backend=a.backend, phase=phase, repeats=a.repeats,
                        min_seconds=a.seconds, **kw)
        docs.append({"label": label, **v.as_dict()})
        print(f"| {label} | {model} {phase} {kw or ''} | {len(v.layers)} ({len(v.main)}) "
              f"| {100 * v.median_error:.1f} % | {100 * v.worst_error:.1f} % "
              f"| {v.wall_s * 1e3:.1f} ms | {v.pred_s * 1e3:.1f} ms | {100 * v.e2e_error:+.1f} % "
              f"| {len(v.bound_violations)} | {v.tightness:.2f} |", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(docs, f, indent=1)
    return 0


def from_bench(path: str) -> int:
    from costmodel.validate import validate_bench
    with open(path) as f:
        meta = json.load(f)
    print(f"GPU: {meta.get('device')} (driver {meta.get('driver')}, torch {meta.get('torch')}), "
          f"run {meta.get('timestamp_utc', meta.get('date'))}; bf16; each row predicted from the "
          "other rows\n")
    print("| op | case | ours: measured | predicted | error | vendor: measured | predicted "
          "| error | t_lower |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")

    def cell(r):
        if r["predicted"] is None:
            return f"{r['measured'] * 1e3:.3f} ms | - | - "
        return (f"{r['measured'] * 1e3:.3f} ms | {r['predicted'] * 1e3:.3f} ms "
                f"| {100 * r['error']:+.0f} % ")
    ours, vendor = validate_bench(path), validate_bench(path, table="vendor")
    for o, v in zip(ours, vendor):
        print(f"| {o['op']} | {o['case']} | {cell(o)}| {cell(v)}| {o['t_lower'] * 1e3:.3f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
