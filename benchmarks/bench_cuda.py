"""Benchmark the CUDA kernels against PyTorch on the same GPU, in one run.

    python benchmarks/bench_cuda.py [--quick] [--out benchmarks/results]

Reports, for each case, the achieved TFLOP/s (matmul, attention) or GB/s (norms), the share of
the device's roofline (peaks from costmodel's device database) and the ratio to the PyTorch
baseline measured in the same process: torch.matmul (cuBLAS; TF32 disabled so FP32 is FP32),
torch.nn.functional.scaled_dot_product_attention (FlashAttention when eligible) and
torch.nn.functional.rms_norm / layer_norm.  Outputs are checked against the baseline before
timing.  Results go to ``<out>/<device>-<date>.json`` (device name, driver, CUDA and torch
versions, figures, and whether the issue's targets were met).

Timing: CUDA events around `reps` back-to-back calls after warm-up, the median of 5 such
trials; our ops write into a pre-allocated ``out=`` so no allocation is timed.  FLOP counts:
matmul 2·M·N·K; attention 4·B·H·Tq·Tk·Dh, halved for causal (the work a tile-skipping kernel
does; the same count is used for SDPA, so the ratio is a time ratio).  Bytes for norms: x read
once, y written once, weight (and bias) read once.

Needs a CUDA GPU, PyTorch with CUDA and a build of pyworkloads._cuda; without them it exits
with status 2 and says which is missing.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = {  # issue 8: share of the baseline (matmul, attention) or of HBM bandwidth (norms)
    "matmul_fp32_vs_cublas": 0.5,
    "matmul_bf16_vs_cublas": 0.5,
    "attention_causal_T4096_Dh64_vs_sdpa": 0.5,
    "norms_vs_hbm_bandwidth": 0.7,
}

# costmodel device keys by substrings of torch.cuda.get_device_name() (first match wins)
_DEVICE_KEYS = [
    (r"H200", "h200"), (r"H100.*NVL", "h100-nvl"), (r"H100.*PCIe", "h100-pcie"), (r"H100", "h100-sxm"),
    (r"B200", "b200"), (r"A100.*PCIe", "a100-pcie-80gb"), (r"A100.*40GB", "a100-sxm-40gb"), (r"A100", "a100-sxm-80gb"),
    (r"L40S", "l40s"), (r"L4\b", "l4"), (r"4090", "rtx-4090"), (r"V100", "v100-sxm2"), (r"T4\b", "t4"),
]


def refuse(msg: str) -> "NoReturn":  # noqa: F821
    print(f"bench_cuda: cannot run: {msg}", file=sys.stderr)
    raise SystemExit(2)


def device_key(name: str) -> str | None:
    for pattern, key in _DEVICE_KEYS:
        if re.search(pattern, name):
            return key
    return None


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def driver_string() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Timer:
    """Median over trials of the mean time per call, measured with CUDA events."""

    def __init__(self, torch, reps: int, trials: int = 5, warmup: int = 3):
        self.torch, self.reps, self.trials, self.warmup = torch, reps, trials, warmup

    def __call__(self, fn) -> float:
        torch = self.torch
        for _ in range(self.warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(self.trials):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(self.reps):
                fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) / 1e3 / self.reps)
        return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run, figures noisier)")
    ap.add_argument("--small", action="store_true",
                    help="shrink every problem 8x per dimension (a smoke test of the script; not the issue's figures)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for the JSON results")
    args = ap.parse_args(argv)

    try:
        import torch
    except ImportError:
        refuse("PyTorch is not installed (the baselines are torch.matmul, SDPA and rms_norm)")
    if not torch.cuda.is_available():
        refuse("no CUDA GPU visible to PyTorch (torch.cuda.is_available() is False)")
    try:
        from pyworkloads import _cuda
    except ImportError as exc:
        refuse(f"pyworkloads._cuda is not built ({exc}); build with CMake and a CUDA compiler")
    n, why = _cuda.device_status()
    if n == 0:
        refuse(f"pyworkloads._cuda sees no device ({why})")

    import torch.nn.functional as F

    torch.backends.cuda.matmul.allow_tf32 = False          # FP32 means FP32 for both sides
    torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name()
    key = device_key(name)
    peaks = {}
    try:
        import costmodel as cm
        if key:
            dev = cm.get_device(key)
            peaks = {"fp32": dev.peak("fp32"), "bf16": dev.peak("bf16"), "fp16": dev.peak("fp16"),
                     "bandwidth": dev.bandwidth, "costmodel_device": key}
    except Exception as exc:                               # the figures stand without the roofline share
        print(f"bench_cuda: no roofline peaks ({exc})", file=sys.stderr)
    timer = Timer(torch, reps=3 if args.quick else 10)
    gen = torch.Generator(device="cuda").manual_seed(0)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    results: list[dict] = []
    shrink = 8 if args.small else 1

    def record(op, case, dtype, ours_s, base_s, work, unit, peak, err, baseline):
        rate = work / ours_s
        base_rate = work / base_s
        row = {"op": op, "case": case, "dtype": dtype, "ours_ms": ours_s * 1e3, "baseline": baseline,
               "baseline_ms": base_s * 1e3, f"ours_{unit}": rate / 1e12 if unit == "tflops" else rate / 1e9,
               f"baseline_{unit}": base_rate / 1e12 if unit == "tflops" else base_rate / 1e9,
               "ours_vs_baseline": base_s / ours_s, "max_abs_err_vs_baseline": err}
        if peak:
            row["ours_pct_of_roofline"] = 100 * rate / peak
            row["baseline_pct_of_roofline"] = 100 * base_rate / peak
        results.append(row)
        pct = f"{row['ours_pct_of_roofline']:5.1f}% roofline" if peak else "roofline n/a"
        shown = row[f"ours_{unit}"]
        print(f"{op:<10} {case:<34} {dtype:<5} ours {shown:8.2f} {'TFLOP/s' if unit == 'tflops' else 'GB/s':7} "
              f"({pct})  {row['ours_vs_baseline'] * 100:6.1f}% of {baseline}  err {err:.2e}", flush=True)

    def rand(*shape, dtype):
        return torch.randn(*shape, device="cuda", dtype=dtype, generator=gen)

    # ---- matmul 4096^3 ------------------------------------------------------------------------
    for dt in ("fp32", "bf16", "fp16"):
        M = N = Kd = 4096 // shrink
        a, b = rand(M, Kd, dtype=dtypes[dt]), rand(Kd, N, dtype=dtypes[dt])
        out = torch.empty(M, N, device="cuda", dtype=dtypes[dt])
        ref = torch.matmul(a, b)
        _cuda.matmul(a, b, out=out)
        err = (out.float() - ref.float()).abs().max().item()
        ours = timer(lambda: _cuda.matmul(a, b, out=out))
        base = timer(lambda: torch.matmul(a, b, out=ref))
        record("matmul", f"{M}x{N}x{Kd}", dt, ours, base, 2 * M * N * Kd, "tflops", peaks.get(dt), err, "cuBLAS (torch.matmul)")
        del a, b, out, ref

    # ---- attention: T = 4096, Dh = 64 (the target), plus a LLaMA-like Dh = 128 ----------
    for dt, B, H, T, D, causal in (("bf16", 4, 16, 4096, 64, True), ("fp16", 4, 16, 4096, 64, True),
                                   ("bf16", 4, 16, 4096, 64, False), ("bf16", 2, 32, 2048, 128, True),
                                   ("fp32", 1, 8, 2048, 64, True)):
        T //= shrink
        q, k, v = (rand(B, H, T, D, dtype=dtypes[dt]) for _ in range(3))
        out = torch.empty_like(q)
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        _cuda.attention(q, k, v, causal=causal, out=out)
        err = (out.float() - ref.float()).abs().max().item()
        ours = timer(lambda: _cuda.attention(q, k, v, causal=causal, out=out))
        base = timer(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
        flops = 4 * B * H * T * T * D * (0.5 if causal else 1.0)
        record("attention", f"B{B} H{H} T{T} Dh{D} {'causal' if causal else 'full'}", dt, ours, base, flops, "tflops",
               peaks.get(dt), err, "torch SDPA")
        del q, k, v, out, ref

    # ---- norms: bandwidth bound ----------------------------------------------------------------
    for dt, rows, D in (("bf16", 16384, 4096), ("fp32", 16384, 4096), ("bf16", 65536, 1024)):
        rows //= shrink * shrink
        x, w, bias = rand(rows, D, dtype=dtypes[dt]), rand(D, dtype=dtypes[dt]), rand(D, dtype=dtypes[dt])
        out = torch.empty_like(x)
        size = x.element_size()
        ref = F.rms_norm(x, (D,), w, 1e-6)
        _cuda.rms_norm(x, w, 1e-6, out=out)
        err = (out.float() - ref.float()).abs().max().item()
        ours = timer(lambda: _cuda.rms_norm(x, w, 1e-6, out=out))
        base = timer(lambda: F.rms_norm(x, (D,), w, 1e-6))
        record("rms_norm", f"{rows}x{D}", dt, ours, base, (2 * rows * D + D) * size, "gbs", peaks.get("bandwidth"), err,
               "torch rms_norm")
        ref = F.layer_norm(x, (D,), w, bias, 1e-5)
        _cuda.layer_norm(x, w, bias, 1e-5, out=out)
        err = (out.float() - ref.float()).abs().max().item()
        ours = timer(lambda: _cuda.layer_norm(x, w, bias, 1e-5, out=out))
        base = timer(lambda: F.layer_norm(x, (D,), w, bias, 1e-5))
        record("layer_norm", f"{rows}x{D}", dt, ours, base, (2 * rows * D + 2 * D) * size, "gbs", peaks.get("bandwidth"),
               err, "torch layer_norm")
        del x, w, bias, out, ref

    def find(op, dtype, case_prefix=""):
        return next(r for r in results if r["op"] == op and r["dtype"] == dtype and r["case"].startswith(case_prefix))

    norm_pcts = [r.get("ours_pct_of_roofline") for r in results if r["op"] in ("rms_norm", "layer_norm")]
    targets = {
        "matmul_fp32_vs_cublas": find("matmul", "fp32")["ours_vs_baseline"],
        "matmul_bf16_vs_cublas": find("matmul", "bf16")["ours_vs_baseline"],
        "attention_causal_T4096_Dh64_vs_sdpa": find("attention", "bf16", f"B4 H16 T{4096 // shrink} Dh64 causal")["ours_vs_baseline"],
        "norms_vs_hbm_bandwidth": (min(norm_pcts) / 100) if norm_pcts and None not in norm_pcts else None,
    }
    verdict = {k: {"achieved": v, "target": TARGETS[k], "met": (v is not None and v >= TARGETS[k])} for k, v in targets.items()}
    print("\ntargets (issue 8):")
    for k, v in verdict.items():
        shown = "n/a" if v["achieved"] is None else f"{100 * v['achieved']:.1f}%"
        print(f"  {k:<40} {shown:>8}  target {100 * v['target']:.0f}%  {'MET' if v['met'] else 'NOT MET'}")

    props = torch.cuda.get_device_properties(0)
    report = {
        "device": name, "costmodel_device": key, "compute_capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count, "memory_bytes": props.total_memory,
        "driver": driver_string(), "driver_cuda_version": _cuda.driver_version(),
        "cuda_runtime_version": _cuda.runtime_version(), "torch": torch.__version__,
        "python": platform.python_version(), "date": _dt.date.today().isoformat(),
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick, "small": args.small, "peaks": peaks, "results": results, "targets": verdict,
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{slug(key or name)}-{report['date']}{'-small' if args.small else ''}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
