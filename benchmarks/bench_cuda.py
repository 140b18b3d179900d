"""Benchmark every CUDA kernel version against PyTorch on the same GPU, in one run (~2-3 min on an
H100).

    python benchmarks/bench_cuda.py [--quick] [--small] [--cases REGEX] [--algos a,b] [--families
    f,g]
                                    [--budget SECONDS] [--out benchmarks/results]

Reports, for each case and for EVERY algorithm of ``pyworkloads._cuda.ALGORITHMS[op]`` ('auto'
first), the achieved TFLOP/s (matmul, attention) or GB/s (norms), the share of the device's
roofline (peaks from costmodel's device database) and the ratio to the PyTorch baseline measured
in the same process: torch.matmul (cuBLAS; TF32 disabled so FP32 is FP32),
torch.nn.functional.scaled_dot_product_attention (FlashAttention when eligible) and
torch.nn.functional.rms_norm / layer_norm.  Each algorithm's output is checked against the
baseline before it is timed (max abs error, and the error relative to max|baseline| against a
per-dtype tolerance): a wrong result is timed but marked WRONG and never counts as "best"; an
algorithm that raises is recorded with its error and the others go on.  Then, per model, the
`cuda` backend runs a tiny random-weight forward against the `numpy` backend (outputs compared,
both timed) and the model's demo().  Results go to ``<out>/<device>-<date>.json`` (device
name, driver, CUDA and torch versions, all rows, and whether the GPU targets were met, by
'auto' and by the best correct algorithm).

Isolation: a kernel fault (illegal address, a hang) poisons the CUDA context of its process, so
each op family runs in a child process that reports row by row (JSON lines on its stdout); the
parent restarts a child that died, skipping what it already did and the algorithm that was
running, which is recorded as "crashed" (or "hung" after --idle-timeout s without progress).
Each algorithm's first call is followed by a device synchronisation, so an asynchronous fault is
charged to the algorithm that caused it.

Timing: CUDA events around `reps` back-to-back calls, the median of `trials` such trials; `reps`
is chosen from a first timed call so each algorithm costs ~0.3 s (slow versions get fewer
repetitions, not a longer run).  Our ops write into a pre-allocated ``out=`` so no allocation is
timed.  'naive' matmul runs only at 1024^3 (seconds per call at 4096^3).  FLOP counts: matmul
2·M·N·K; attention 4·B·Hq·Tq·Tk·Dh, halved for causal (the work a tile-skipping kernel does; the
same count is used for SDPA, so the ratio is a time ratio).  Bytes for norms: x read once, y
written once, weight (and bias) read once.

--budget: cases not started within that many seconds are recorded with status "budget"; the
JSON is rewritten after each family, so a run cut short keeps what it measured ("complete":
false until the end).  Exit status 1 when any row is wrong / failed / crashed / hung / budget.

Needs a CUDA GPU, PyTorch with CUDA and a build of pyworkloads._cuda; without them it exits
with status 2 and says which is missing.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import math
import os
import platform
import re
import select
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parents[1]
# The checkout's package where it is built in place (the CMake dev build that run_gpu_checks.sh
# makes) or where none is installed; otherwise the installed one, which pip built the extension
# into.
if any((ROOT / "pyworkloads").glob("_cuda*")) or importlib.util.find_spec("pyworkloads") is None:
    sys.path.insert(0, str(ROOT))

TARGETS = {  # share of the baseline (matmul, attention) or of HBM bandwidth (norms)
    "matmul_fp32_vs_cublas": 0.5,
    "matmul_bf16_vs_cublas": 0.5,
    "attention_causal_T4096_Dh64_vs_sdpa": 0.5,
    "norms_vs_hbm_bandwidth": 0.7,
}
FAMILIES = ("matmul", "attention", "norms", "models")
# error / max|baseline| above which an output is WRONG (a sanity bound, not the tests' tolerance)
REL_TOL = {"fp32": 1e-3, "fp16": 1e-2, "bf16": 4e-2}

# costmodel device keys by substrings of torch.cuda.get_device_name() (first match wins)
_DEVICE_KEYS = [
    (r"H200", "h200"),
    (r"H100.*NVL", "h100-nvl"),
    (r"H100.*PCIe", "h100-pcie"),
    (r"H100", "h100-sxm"),
    (r"B200", "b200"),
    (r"A100.*PCIe", "a100-pcie-80gb"),
    (r"A100.*40GB", "a100-sxm-40gb"),
    (r"A100", "a100-sxm-80gb"),
    (r"L40S", "l40s"),
    (r"L4\b", "l4"),
    (r"4090", "rtx-4090"),
    (r"V100", "v100-sxm2"),
    (r"T4\b", "t4"),
]


def refuse(msg: str) -> NoReturn:
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
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return (
            out.stdout.strip().splitlines()[0]
            if out.returncode == 0 and out.stdout.strip()
            else "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def require_gpu():
    """(torch, _cuda) or exit 2 with the reason."""
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
    return torch, _cuda


def roofline_peaks(torch) -> dict:
    key = device_key(torch.cuda.get_device_name())
    try:
        import costmodel as cm

        if key:
            dev = cm.get_device(key)
            return {
                "fp32": dev.peak("fp32"),
                "bf16": dev.peak("bf16"),
                "fp16": dev.peak("fp16"),
                "bandwidth": dev.bandwidth,
                "costmodel_device": key,
            }
    except Exception as exc:  # the figures stand without the roofline share
        print(f"bench_cuda: no roofline peaks ({exc})", file=sys.stderr)
    return {}


# ---- the cases ----------------------------------------------------------------------------------
def make_cases(shrink: int) -> list[dict]:
    """Every (op, shape, dtype) measured; `label` + dtype identify a case across processes."""
    cases = []
    for dt, n in (("fp32", 4096), ("bf16", 4096), ("fp16", 4096), ("fp32", 1024), ("bf16", 1024)):
        n //= shrink
        cases.append(
            dict(family="matmul", op="matmul", dtype=dt, M=n, N=n, K=n, label=f"{n}x{n}x{n}")
        )
    for dt, B, Hq, Hkv, T, D, causal in (
        ("bf16", 4, 16, 16, 4096, 64, True),
        ("fp16", 4, 16, 16, 4096, 64, True),
        ("bf16", 4, 16, 16, 4096, 64, False),
        ("bf16", 2, 32, 32, 2048, 128, True),
        ("bf16", 1, 32, 8, 2048, 128, True),
        ("fp32", 1, 8, 8, 2048, 64, True),
    ):
        T //= shrink
        gqa = f" Hkv{Hkv}" if Hkv != Hq else ""
        cases.append(
            dict(
                family="attention",
                op="attention",
                dtype=dt,
                B=B,
                Hq=Hq,
                Hkv=Hkv,
                T=T,
                D=D,
                causal=causal,
                label=f"B{B} H{Hq}{gqa} T{T} Dh{D} {'causal' if causal else 'full'}",
            )
        )
    for dt, rows, D in (("bf16", 16384, 4096), ("fp32", 16384, 4096), ("bf16", 65536, 1024)):
        rows //= shrink * shrink
        for op in ("rms_norm", "layer_norm"):
            cases.append(dict(family="norms", op=op, dtype=dt, rows=rows, D=D, label=f"{rows}x{D}"))
    return cases


def case_key(c: dict) -> str:
    return f"{c['op']} {c['label']} {c['dtype']}"


def skip_reason(c: dict, algo: str) -> str | None:
    """Versions too slow to time at this size (the target figures do not need them)."""
    if c["op"] == "matmul" and algo == "naive" and c["M"] * c["N"] * c["K"] > 1024**3:
        return "naive matmul is timed at 1024^3 only (seconds per call at 4096^3)"
    return None


# ---- the child: one op family, one row per (case, algo) on stdout -------------------------------
class Timer:
    """Median over trials of the mean time per call (CUDA events); reps sized to a time budget."""

    def __init__(self, torch, budget_s: float, max_reps: int, trials: int):
        self.torch, self.budget, self.max_reps, self.trials = torch, budget_s, max_reps, trials

    def __call__(self, fn) -> float:
        torch = self.torch
        ev = lambda: torch.cuda.Event(enable_timing=True)  # noqa: E731
        fn()  # warm-up (caches, lazy init)
        start, stop = ev(), ev()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        first = start.elapsed_time(stop) / 1e3
        trials = self.trials if first < 0.1 else 2
        reps = max(1, min(self.max_reps, int(self.budget / (trials * max(first, 1e-6)))))
        times = []
        for _ in range(trials):
            start, stop = ev(), ev()
            start.record()
            for _ in range(reps):
                fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) / 1e3 / reps)
        return statistics.median(times)


def kernel_seconds(torch, fn, reps: int = 20):
    """Seconds of GPU kernel time per call of fn (CUPTI kernel records summed, via torch.profiler),
    or None when the profiler gives nothing.  Unlike Timer, host-side call overhead does not count:
    for short kernels (the norms, ~0.1 ms) a Python call that takes longer than its kernel makes the
    event-timed loop measure the calls, not the kernel."""
    try:
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                fn()
            torch.cuda.synchronize()
        us = [e.time_range.elapsed_us() for e in prof.events() if e.device_type == DeviceType.CUDA]
        total = sum(us)
        return total / 1e6 / reps if us and total > 0 else None
    except Exception:  # no CUPTI, an API change: report without it
        return None


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def context_alive(torch) -> bool:
    """False once the CUDA context is poisoned (after an illegal address or a trap)."""
    try:
        torch.cuda.synchronize()
        (torch.ones(4, device="cuda") + 1).sum().item()
        return True
    except Exception:
        return False


def run_child(args) -> int:
    torch, _cuda = require_gpu()
    import torch.nn.functional as F

    torch.backends.cuda.matmul.allow_tf32 = False  # FP32 means FP32 for both sides
    torch.backends.cudnn.allow_tf32 = False
    if args.child == "models":
        return run_models(args, torch)
    skip = set(json.loads(args.skip or "[]"))
    skip_algos = json.loads(
        args.skip_algos or "{}"
    )  # "op|algo" -> why (it crashed or hung earlier)
    peaks = roofline_peaks(torch)
    timer = Timer(
        torch,
        budget_s=0.1 if args.quick else 0.3,
        max_reps=5 if args.quick else 20,
        trials=3 if args.quick else 5,
    )
    gen = torch.Generator(device="cuda").manual_seed(0)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    algo_filter = set(args.algos.split(",")) if args.algos else None
    excluded = set(args.exclude_algos.split(",")) if args.exclude_algos else set()

    def rand(*shape, dtype):
        return torch.randn(*shape, device="cuda", dtype=dtype, generator=gen)

    for c in make_cases(8 if args.small else 1):
        if c["family"] != args.child or (args.cases and not re.search(args.cases, case_key(c))):
            continue
        op, dt = c["op"], c["dtype"]
        algos = [
            a
            for a in _cuda.ALGORITHMS[op]
            if (algo_filter is None or a in algo_filter or a == "auto") and a not in excluded
        ]
        todo = [a for a in algos if f"{case_key(c)}|{a}" not in skip]
        if not todo:
            continue
        if (
            args.deadline and time.time() > args.deadline
        ):  # --budget spent: say so per row, run nothing
            for algo in todo:
                emit(
                    {
                        "event": "row",
                        "key": f"{case_key(c)}|{algo}",
                        "row": {
                            "op": op,
                            "case": c["label"],
                            "dtype": dt,
                            "algo": algo,
                            "status": "budget",
                            "note": "not run: the benchmark's --budget was spent",
                        },
                    }
                )
            continue
        # inputs, baseline and its timing; `call(algo)` runs ours into `out`
        if op == "matmul":
            a, b = rand(c["M"], c["K"], dtype=dtypes[dt]), rand(c["K"], c["N"], dtype=dtypes[dt])
            out = torch.empty(c["M"], c["N"], device="cuda", dtype=dtypes[dt])
            ref = torch.matmul(a, b)
            base_fn = lambda: torch.matmul(a, b, out=ref)  # noqa: E731
            call = lambda algo: _cuda.matmul(a, b, algo=algo, out=out)  # noqa: E731
            work, unit, peak, baseline = (
                2 * c["M"] * c["N"] * c["K"],
                "tflops",
                peaks.get(dt),
                "cuBLAS (torch.matmul)",
            )
        elif op == "attention":
            B, Hq, Hkv, T, D, causal = c["B"], c["Hq"], c["Hkv"], c["T"], c["D"], c["causal"]
            q = rand(B, Hq, T, D, dtype=dtypes[dt])
            k, v = rand(B, Hkv, T, D, dtype=dtypes[dt]), rand(B, Hkv, T, D, dtype=dtypes[dt])
            out = torch.empty_like(q)
            if Hkv == Hq:
                base_fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # noqa: E731
            else:
                try:
                    F.scaled_dot_product_attention(
                        q[:, :, :1], k[:, :, :1], v[:, :, :1], enable_gqa=True
                    )
                    base_fn = lambda: F.scaled_dot_product_attention(  # noqa: E731
                        q, k, v, is_causal=causal, enable_gqa=True
                    )
                except TypeError:  # older torch: repeat the K/V heads (costs a copy)
                    g = Hq // Hkv
                    base_fn = lambda: F.scaled_dot_product_attention(  # noqa: E731
                        q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), is_causal=causal
                    )
            ref = base_fn()
            call = lambda algo: _cuda.attention(q, k, v, causal=causal, algo=algo, out=out)  # noqa: E731
            work = 4 * B * Hq * T * T * D * (0.5 if causal else 1.0)
            unit, peak, baseline = "tflops", peaks.get(dt), "torch SDPA"
        else:
            rows, D = c["rows"], c["D"]
            x, w, bias = (
                rand(rows, D, dtype=dtypes[dt]),
                rand(D, dtype=dtypes[dt]),
                rand(D, dtype=dtypes[dt]),
            )
            out = torch.empty_like(x)
            size = x.element_size()
            # the same tensors as DeviceArrays: a call with only those imports them in C++, without
            # PyTorch's Python-level __dlpack__ (tens of microseconds per tensor, as long as a
            # kernel)
            dev = (
                [_cuda.to_device(t) for t in (x, w, bias, out)]
                if hasattr(_cuda, "to_device")
                else None
            )
            if op == "rms_norm":
                base_fn = lambda: F.rms_norm(x, (D,), w, 1e-6)  # noqa: E731
                call = lambda algo: _cuda.rms_norm(x, w, 1e-6, algo=algo, out=out)  # noqa: E731
                dev_call = dev and (
                    lambda algo: _cuda.rms_norm(dev[0], dev[1], 1e-6, algo=algo, out=dev[3])
                )
                work = (2 * rows * D + D) * size
            else:
                base_fn = lambda: F.layer_norm(x, (D,), w, bias, 1e-5)  # noqa: E731
                call = lambda algo: _cuda.layer_norm(x, w, bias, 1e-5, algo=algo, out=out)  # noqa: E731
                dev_call = dev and (
                    lambda algo: _cuda.layer_norm(
                        dev[0], dev[1], dev[2], 1e-5, algo=algo, out=dev[3]
                    )
                )
                work = (2 * rows * D + 2 * D) * size
            ref = base_fn()
            unit, peak, baseline = "gbs", peaks.get("bandwidth"), f"torch {op}"
        torch.cuda.synchronize()
        base_s = timer(base_fn)
        ref_f = ref.float()
        scale = ref_f.abs().max().item() or 1.0
        scaled = (lambda r: r / 1e12) if unit == "tflops" else (lambda r: r / 1e9)
        for algo in todo:
            key = f"{case_key(c)}|{algo}"
            row = {
                "op": op,
                "case": c["label"],
                "dtype": dt,
                "algo": algo,
                "baseline": baseline,
                "baseline_ms": base_s * 1e3,
                f"baseline_{unit}": scaled(work / base_s),
            }
            if peak:
                row["baseline_pct_of_roofline"] = 100 * work / base_s / peak
            why = skip_reason(c, algo) or skip_algos.get(f"{op}|{algo}")
            if why:
                emit({"event": "row", "key": key, "row": dict(row, status="skipped", note=why)})
                continue
            emit({"event": "start", "key": key})
            try:
                out.fill_(float("nan"))  # a kernel that writes nothing cannot pass
                call(algo)
                if op == "matmul" and hasattr(_cuda, "matmul_last_kernel"):
                    row["kernel"] = (
                        _cuda.matmul_last_kernel()
                    )  # what auto / a fallback actually ran
                _cuda.synchronize()  # charge asynchronous faults to this algo
                torch.cuda.synchronize()
            except ValueError as exc:  # this version does not take this problem
                emit(
                    {
                        "event": "row",
                        "key": key,
                        "row": dict(row, status="unsupported", error=str(exc)),
                    }
                )
                continue
            except Exception as exc:  # a CUDA error: record, then see if the context survived
                alive = context_alive(torch)
                emit(
                    {
                        "event": "row",
                        "key": key,
                        "row": dict(
                            row,
                            status="error",
                            error=f"{type(exc).__name__}: {exc}",
                            context_poisoned=not alive,
                        ),
                    }
                )
                if not alive:
                    return 3  # the parent restarts us without this algo
                continue
            err = (out.float() - ref_f).abs().max().item()
            rel = err / scale
            correct = math.isfinite(err) and rel <= REL_TOL[dt]
            try:
                ours_s = timer(lambda: call(algo))
            except Exception as exc:
                alive = context_alive(torch)
                emit(
                    {
                        "event": "row",
                        "key": key,
                        "row": dict(
                            row,
                            status="error",
                            error=f"timing: {type(exc).__name__}: {exc}",
                            max_abs_err_vs_baseline=err,
                            context_poisoned=not alive,
                        ),
                    }
                )
                if not alive:
                    return 3
                continue
            if c["family"] == "norms":  # short kernels: also time the kernels alone
                ks, kb = kernel_seconds(torch, lambda: call(algo)), kernel_seconds(torch, base_fn)
                if ks:
                    row.update(
                        {"ours_kernel_ms": ks * 1e3, f"ours_kernel_{unit}": scaled(work / ks)}
                    )
                    if peak:
                        row["ours_kernel_pct_of_roofline"] = 100 * work / ks / peak
                if kb:
                    row["baseline_kernel_ms"] = kb * 1e3
                if dev_call and correct:  # and the calls with DeviceArray arguments
                    dev_call(algo)
                    if torch.equal(
                        torch.from_dlpack(dev[3]), out
                    ):  # the same kernel, the same bits
                        ds = timer(lambda: dev_call(algo))
                        row.update(
                            {
                                "ours_devarray_ms": ds * 1e3,
                                f"ours_devarray_{unit}": scaled(work / ds),
                            }
                        )
                        if peak:
                            row["ours_devarray_pct_of_roofline"] = 100 * work / ds / peak
                    else:
                        row["note"] = (
                            "DeviceArray-argument call gave other bits than the torch-argument call"
                        )
            row.update(
                {
                    "status": "ok" if correct else "wrong",
                    "correct": correct,
                    "ours_ms": ours_s * 1e3,
                    f"ours_{unit}": scaled(work / ours_s),
                    "ours_vs_baseline": base_s / ours_s,
                    "max_abs_err_vs_baseline": err,
                    "rel_err_vs_baseline": rel,
                    "rel_tol": REL_TOL[dt],
                }
            )
            if peak:
                row["ours_pct_of_roofline"] = 100 * work / ours_s / peak
            emit({"event": "row", "key": key, "row": row})
        out = ref = ref_f = dev = None  # free before the next case's inputs
        torch.cuda.empty_cache()
    emit({"event": "done"})
    return 0


# ---- end to end: the cuda backend running each model's tiny preset ------------------------------
def model_forwards():
    """{model: (forward closure, what it returns)} on the tiny random presets the demos use."""
    import numpy as np

    from pyworkloads.models import clip, llama2, sam, whisper

    out = {}
    m = llama2.from_preset("llama2-tiny", seed=0)
    ids = llama2.preset_prompt_ids("Hello", m.config)
    out["llama2"] = (lambda: m(ids), "logits", llama2)
    c = clip.from_preset("clip-tiny", seed=0)
    t, v = c.config.text_config, c.config.vision_config
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((2, v.num_channels, v.image_size, v.image_size), dtype=np.float32)
    cids = rng.integers(0, t.eos_token_id, size=(3, 8))
    cids[:, 0], cids[:, -1] = t.bos_token_id, t.eos_token_id
    out["clip"] = (
        lambda: c(input_ids=cids, pixel_values=pixels).logits_per_image,
        "logits_per_image",
        clip,
    )
    s = sam.from_preset("sam-tiny", seed=0)
    image = rng.integers(0, 256, size=(96, 160, 3), dtype=np.uint8)

    def sam_fwd():
        p = sam.SamPredictor(s)
        p.set_image(image)
        return p.image_embeddings

    out["sam"] = (sam_fwd, "image_embeddings", sam)
    w = whisper.from_preset("whisper-tiny-random", seed=0)
    tt = np.arange(2 * whisper.SAMPLE_RATE) / whisper.SAMPLE_RATE
    audio = (0.3 * np.sin(2 * np.pi * (200 + 300 * tt) * tt)).astype(np.float32)
    feats = whisper.log_mel_spectrogram(audio, w.config.num_mel_bins)[None]
    out["whisper"] = (lambda: w.encode(feats), "encoder output", whisper)
    return out


def run_models(args, torch) -> int:
    import numpy as np

    import pyworkloads.kernels as K

    if "cuda" not in K.available():
        emit(
            {
                "event": "row",
                "key": "models",
                "row": {
                    "op": "model",
                    "status": "error",
                    "error": f"cuda backend unavailable: {K.unavailable_reason('cuda')}",
                },
            }
        )
        return 0
    skip = set(json.loads(args.skip or "[]"))
    try:
        forwards = model_forwards()
    except Exception as exc:
        emit(
            {
                "event": "row",
                "key": "models",
                "row": {
                    "op": "model",
                    "status": "error",
                    "error": f"building the presets: {type(exc).__name__}: {exc}",
                },
            }
        )
        return 0
    for name, (fwd, what, module) in forwards.items():
        if args.cases and not re.search(args.cases, f"model {name}"):
            continue
        key = f"model {name}|cuda"
        if key in skip:
            continue
        if args.deadline and time.time() > args.deadline:
            emit(
                {
                    "event": "row",
                    "key": key,
                    "row": {
                        "op": "model",
                        "case": name,
                        "status": "budget",
                        "note": "not run: the benchmark's --budget was spent",
                    },
                }
            )
            continue
        emit({"event": "start", "key": key})
        row = {"op": "model", "case": name, "dtype": "fp32", "algo": "auto", "compared": what}
        try:
            times = {}
            outs = {}
            for backend in ("numpy", "cuda"):
                with K.use_backend(backend):
                    outs[backend] = np.asarray(fwd(), np.float64)  # warm-up and the compared output
                    ts = []
                    for _ in range(1 if args.quick else 3):
                        t0 = time.perf_counter()
                        fwd()
                        ts.append(time.perf_counter() - t0)
                    times[backend] = statistics.median(ts)
            err = float(np.max(np.abs(outs["cuda"] - outs["numpy"]))) if outs["numpy"].size else 0.0
            rel = err / (float(np.max(np.abs(outs["numpy"]))) or 1.0)
            with K.use_backend("cuda"):
                t0 = time.perf_counter()
                demo = module.demo()
                demo_s = time.perf_counter() - t0
            row.update(
                {
                    "status": "ok" if rel <= 1e-3 else "wrong",
                    "correct": rel <= 1e-3,
                    "shape": list(outs["cuda"].shape),
                    "numpy_ms": times["numpy"] * 1e3,
                    "cuda_ms": times["cuda"] * 1e3,
                    "cuda_vs_numpy": times["numpy"] / times["cuda"],
                    "max_abs_err_vs_numpy": err,
                    "rel_err_vs_numpy": rel,
                    "rel_tol": 1e-3,
                    "demo_cuda_s": demo_s,
                    "demo": demo,
                }
            )
        except Exception as exc:
            alive = context_alive(torch)
            row.update(
                {
                    "status": "error",
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(limit=4),
                    "context_poisoned": not alive,
                }
            )
            emit({"event": "row", "key": key, "row": row})
            if not alive:
                return 3
            continue
        emit({"event": "row", "key": key, "row": row})
    emit({"event": "done"})
    return 0


# ---- the parent ---------------------------------------------------------------------------------
def fmt_row(r: dict) -> str:
    if r["op"] == "model":
        if r.get("status") in ("ok", "wrong"):
            return (
                f"{'model':<10} {r['case']:<30} cuda {r['cuda_ms']:9.1f} ms  numpy "
                f"{r['numpy_ms']:9.1f} ms  "
                f"({r['cuda_vs_numpy']:5.2f}x)  {r['compared']} rel err {r['rel_err_vs_numpy']:.1e}"
                f"{'' if r['correct'] else '  WRONG'}"
            )
        why = (r.get("note") or r.get("error") or "")[:150]
        return f"{'model':<10} {r.get('case', ''):<30} {r.get('status', '?').upper()}: {why}"
    algo = r.get("algo", "auto")
    if r.get("kernel") and r["kernel"] != algo:  # auto, or a fallback: the kernel that ran
        algo = f"{algo}->{r['kernel']}"
    head = f"{r['op']:<10} {r['case']:<30} {r['dtype']:<4} {algo:<15}"
    if r.get("status") in ("ok", "wrong"):
        unit = "tflops" if "ours_tflops" in r else "gbs"
        pct = f"{r['ours_pct_of_roofline']:5.1f}%" if "ours_pct_of_roofline" in r else "  n/a"
        return (
            f"{head} {r[f'ours_{unit}']:8.2f} {'TFLOP/s' if unit == 'tflops' else 'GB/s':7} {pct} "
            "roof "
            f"{r['ours_vs_baseline'] * 100:6.1f}% of {r['baseline'].split(' ')[0]:<6} "
            f"{r['ours_ms']:8.3f} ms  "
            f"rel err {r['rel_err_vs_baseline']:.1e}{'' if r['correct'] else '  WRONG'}"
            + (
                f"  | kernel {r['ours_kernel_ms']:.3f} ms {r['ours_kernel_pct_of_roofline']:5.1f}% "
                "roof"
                + (
                    f", torch kernel {r['baseline_kernel_ms']:.3f} ms"
                    if "baseline_kernel_ms" in r
                    else ""
                )
                if "ours_kernel_pct_of_roofline" in r
                else ""
            )
            + (
                f"  | DeviceArray args {r['ours_devarray_ms']:.3f} ms "
                f"{r['ours_devarray_pct_of_roofline']:5.1f}% roof"
                if "ours_devarray_pct_of_roofline" in r
                else ""
            )
        )
    text = r.get("note") or r.get("error") or ""
    return f"{head} {r.get('status', '?').upper()}: {text[:160]}"


def run_family(family: str, args, child_argv: list[str]) -> list[dict]:
    """Run one family in child processes until done; a child that dies charges the running algo."""
    rows: dict[str, dict] = {}
    skip: set[str] = set()
    strikes: dict[str, list[str]] = {}  # "op|algo" -> how it failed, per crash/hang/poisoning
    skip_algos: dict[str, str] = {}  # not run any more in this family
    idle = args.idle_timeout * (
        4 if family == "models" else 1
    )  # a model row is one long silent step

    def strike(op_algo: str, what: str, limit: int) -> None:
        strikes.setdefault(op_algo, []).append(what)
        if len(strikes[op_algo]) >= limit:
            skip_algos[op_algo] = f"not run: {what} earlier in this run ({len(strikes[op_algo])}x)"

    for attempt in range(12):
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            family,
            "--skip",
            json.dumps(sorted(skip)),
            "--skip-algos",
            json.dumps(skip_algos),
        ] + child_argv
        sys.stdout.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        running, done, last = None, False, time.monotonic()
        hung, pending, eof = False, b"", False
        fd = proc.stdout.fileno()
        while not eof:  # raw reads: a buffered readline could sit on lines select cannot see
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                if time.monotonic() - last > idle:
                    hung = True
                    proc.kill()
                    break
                continue
            chunk = os.read(fd, 1 << 16)
            eof = not chunk
            pending += chunk
            last = time.monotonic()
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                try:
                    ev = json.loads(line)
                except json.JSONDecodeError:
                    print(line.rstrip(), flush=True)
                    continue
                if ev["event"] == "start":
                    running = ev["key"]
                elif ev["event"] == "row":
                    rows[ev["key"]] = ev["row"]
                    skip.add(ev["key"])
                    running = None
                    print(fmt_row(ev["row"]), flush=True)
                    if ev["row"].get("context_poisoned"):
                        strike(
                            f"{ev['row']['op']}|{ev['row'].get('algo')}",
                            "poisoned the CUDA context",
                            2,
                        )
                elif ev["event"] == "done":
                    done = True
        proc.stdout.close()
        rc = proc.wait()
        if done or rc == 2:  # finished, or refused (no GPU / no torch / no build)
            if rc == 2 and not rows:
                raise SystemExit(2)
            break
        if running is None:  # died between algorithms (or before the first)
            if rc != 3:
                print(
                    f"bench_cuda: the {family} child exited with status {rc} outside any "
                    "algorithm; giving up on it",
                    flush=True,
                )
                break
            continue  # poisoned after a recorded error: go on without it
        op, label_dtype = running.split(" ", 1)[0], running.split(" ", 1)[1]
        case_part, algo = label_dtype.rsplit("|", 1)
        status = "hung" if hung else "crashed"
        why = (
            f"no progress for {idle:.0f} s (killed)"
            if hung
            else f"the process died (exit status {rc}): "
            "a fault that kills the process, see the log above"
        )
        label, dt = case_part.rsplit(" ", 1) if op != "model" else (case_part, "fp32")
        row = {"op": op, "case": label, "dtype": dt, "algo": algo, "status": status, "error": why}
        rows[running] = row
        skip.add(running)
        print(fmt_row(row), flush=True)
        strike(
            f"{op}|{algo}", status, 1 if hung else 2
        )  # a hang costs the idle timeout: once is enough
        print(
            f"bench_cuda: restarting the {family} child without {running!r} (attempt "
            f"{attempt + 2})",
            flush=True,
        )
    return list(rows.values())


def summarise_targets(results: list[dict], shrink: int) -> dict:
    """The GPU targets, by 'auto' and by the best correct algorithm."""

    def good(r):
        return r.get("status") == "ok"

    def pick(op, dtype, prefix):
        rs = [
            r
            for r in results
            if r["op"] == op and r.get("dtype") == dtype and r.get("case", "").startswith(prefix)
        ]
        auto = next((r for r in rs if r.get("algo") == "auto" and good(r)), None)
        best = max((r for r in rs if good(r)), key=lambda r: r["ours_vs_baseline"], default=None)
        return auto, best

    verdict = {}
    n = 4096 // shrink
    for key, (op, dt, prefix) in {
        "matmul_fp32_vs_cublas": ("matmul", "fp32", f"{n}x{n}x{n}"),
        "matmul_bf16_vs_cublas": ("matmul", "bf16", f"{n}x{n}x{n}"),
        "attention_causal_T4096_Dh64_vs_sdpa": ("attention", "bf16", f"B4 H16 T{n} Dh64 causal"),
    }.items():
        auto, best = pick(op, dt, prefix)
        verdict[key] = {
            "achieved": auto["ours_vs_baseline"] if auto else None,
            "best_algo": best["algo"] if best else None,
            "best_achieved": best["ours_vs_baseline"] if best else None,
        }
    norm_rows = [r for r in results if r["op"] in ("rms_norm", "layer_norm")]
    cases = sorted({(r["op"], r["case"], r["dtype"]) for r in norm_rows})

    # The kernels' bandwidth: CUPTI kernel time where the profiler gave it (a norm kernel is shorter
    # than a Python call, so the event-timed loop of calls measures the calls), else the time of
    # calls whose arguments are all DeviceArrays (imported in C++), else the call time.
    def pct(r):
        return r.get(
            "ours_kernel_pct_of_roofline",
            r.get("ours_devarray_pct_of_roofline", r["ours_pct_of_roofline"]),
        )

    auto_pcts, best_pcts, best_algos, call_pcts = [], [], [], []
    kernel_timed = devarray_timed = bool(norm_rows)
    for c in cases:
        rs = [
            r
            for r in norm_rows
            if (r["op"], r["case"], r["dtype"]) == c and good(r) and "ours_pct_of_roofline" in r
        ]
        a = next((r for r in rs if r.get("algo") == "auto"), None)
        b = max(rs, key=pct, default=None)
        auto_pcts.append(pct(a) if a else None)
        call_pcts.append(a["ours_pct_of_roofline"] if a else None)
        best_pcts.append(pct(b) if b else None)
        best_algos.append(f"{c[0]} {c[1]} {c[2]}: {b['algo'] if b else None}")
        kernel_timed = kernel_timed and all("ours_kernel_pct_of_roofline" in r for r in rs)
        devarray_timed = devarray_timed and all("ours_devarray_pct_of_roofline" in r for r in rs)
    verdict["norms_vs_hbm_bandwidth"] = {
        "achieved": min(auto_pcts) / 100 if auto_pcts and None not in auto_pcts else None,
        "best_algo": "; ".join(best_algos) or None,
        "best_achieved": min(best_pcts) / 100 if best_pcts and None not in best_pcts else None,
        "measured_by": "kernel time (CUPTI, torch.profiler)"
        if kernel_timed
        else "calls with DeviceArray arguments (CUDA events)"
        if devarray_timed
        else "call time (CUDA events around calls)",
        "achieved_call_time": min(call_pcts) / 100 if call_pcts and None not in call_pcts else None,
    }
    for k, v in verdict.items():
        v["target"] = TARGETS[k]
        v["met"] = v["achieved"] is not None and v["achieved"] >= TARGETS[k]
        v["best_met"] = v["best_achieved"] is not None and v["best_achieved"] >= TARGETS[k]
    return verdict


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="fewer repetitions (a smoke run, figures noisier)"
    )
    ap.add_argument(
        "--small",
        action="store_true",
        help="shrink every problem 8x per dimension (a smoke test of the script; "
        "not the target figures)",
    )
    ap.add_argument(
        "--cases",
        help="only cases whose 'op label dtype' matches this regex (e.g. 'matmul.*bf16', "
        "'attention', 'model llama2')",
    )
    ap.add_argument(
        "--algos", help="comma-separated algorithm names to time besides 'auto' (default: all)"
    )
    ap.add_argument(
        "--exclude-algos",
        help="comma-separated algorithm names not to run (run_gpu_checks.sh: the "
        "candidates that failed their own checks)",
    )
    ap.add_argument(
        "--families",
        default=",".join(FAMILIES),
        help=f"comma-separated subset of {','.join(FAMILIES)}",
    )
    ap.add_argument(
        "--idle-timeout",
        type=float,
        default=30.0,
        help="seconds without progress before a child is killed (x4 for the models)",
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=0.0,
        help="seconds; cases not started by then are recorded as skipped (0: no limit)",
    )
    ap.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results"), help="folder for the JSON results"
    )
    ap.add_argument("--child", choices=FAMILIES, help=argparse.SUPPRESS)
    ap.add_argument("--skip", help=argparse.SUPPRESS)
    ap.add_argument("--skip-algos", help=argparse.SUPPRESS)
    ap.add_argument(
        "--deadline", type=float, default=0.0, help=argparse.SUPPRESS
    )  # time.time() for children
    args = ap.parse_args(argv)
    if args.child:
        return run_child(args)

    families = [f for f in args.families.split(",") if f]
    for f in families:
        if f not in FAMILIES:
            ap.error(f"--families: unknown family {f!r} (expected some of {', '.join(FAMILIES)})")
    torch, _cuda = require_gpu()  # refuse early, in the parent, with the reason
    name = torch.cuda.get_device_name()
    key = device_key(name)
    peaks = roofline_peaks(torch)
    print(f"bench_cuda: {name}; algorithms {dict(_cuda.ALGORITHMS)}", flush=True)
    child_argv = [
        a for a in ("--quick" if args.quick else None, "--small" if args.small else None) if a
    ]
    for opt in ("cases", "algos", "exclude_algos"):
        if getattr(args, opt):
            child_argv += [f"--{opt.replace('_', '-')}", getattr(args, opt)]
    child_argv += ["--idle-timeout", str(args.idle_timeout)]
    if args.budget > 0:
        child_argv += ["--deadline", repr(time.time() + args.budget)]
    t0 = time.monotonic()
    results: list[dict] = []
    props = torch.cuda.get_device_properties(0)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = "-partial" if (args.cases or args.algos or families != list(FAMILIES)) else ""
    date = _dt.date.today().isoformat()
    path = out_dir / f"{slug(key or name)}-{date}{'-small' if args.small else ''}{partial}.json"

    def write_report(complete: bool) -> tuple[dict, list[dict]]:
        """The JSON, rewritten after every family so a run cut short keeps what it measured."""
        verdict = summarise_targets(results, 8 if args.small else 1)
        bad = [r for r in results if r.get("status") not in ("ok", "skipped", "unsupported")]
        report = {
            "device": name,
            "costmodel_device": key,
            "compute_capability": f"{props.major}.{props.minor}",
            "sm_count": props.multi_processor_count,
            "memory_bytes": props.total_memory,
            "driver": driver_string(),
            "driver_cuda_version": _cuda.driver_version(),
            "cuda_runtime_version": _cuda.runtime_version(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "date": date,
            "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "quick": args.quick,
            "small": args.small,
            "cases_filter": args.cases,
            "algos_filter": args.algos,
            "algos_excluded": args.exclude_algos,
            "families": families,
            "complete": complete,
            "algorithms": {k: list(v) for k, v in _cuda.ALGORITHMS.items()},
            "elapsed_s": time.monotonic() - t0,
            "peaks": peaks,
            "results": results,
            "targets": verdict,
            "failed": [
                f"{r['op']} {r.get('case', '')} {r.get('dtype', '')} {r.get('algo', '')}: "
                f"{r.get('status')}"
                for r in bad
            ],
        }
        path.write_text(json.dumps(report, indent=2) + "\n")
        return verdict, bad

    for fam in families:
        results += run_family(fam, args, child_argv)
        write_report(complete=False)
    verdict, bad = write_report(complete=True)
    elapsed = time.monotonic() - t0

    print("\ntargets                                    auto     best correct algorithm")
    for k, v in verdict.items():
        a = "n/a" if v["achieved"] is None else f"{100 * v['achieved']:.1f}%"
        b = "n/a" if v["best_achieved"] is None else f"{100 * v['best_achieved']:.1f}%"
        print(
            f"  {k:<40} {a:>7} {'MET' if v['met'] else 'not met':<8} {b:>7} "
            f"{'MET' if v['best_met'] else 'not met':<8}"
            f" target {100 * v['target']:.0f}%  best: {str(v['best_algo'])[:100]}"
        )
        if "measured_by" in v:
            calls = v.get("achieved_call_time")
            print(
                f"  {'':<40} measured by {v['measured_by']}"
                + (f"; by call time auto reaches {100 * calls:.1f}%" if calls is not None else "")
            )
    counts = {
        st: sum(r.get("status") == st for r in results)
        for st in sorted({r.get("status") for r in results})
    }
    listed = [
        f"{r['op']} {r.get('case', '')} {r.get('dtype', '')} {r.get('algo', '')} "
        f"({r.get('status')})"
        for r in bad
        if r.get("status") != "budget"
    ]
    print(
        f"\n{len(results)} rows in {elapsed:.0f} s: {counts}; wrong/failed: "
        + (
            ", ".join(listed[:15])
            + (f" ... and {len(listed) - 15} more" if len(listed) > 15 else "")
            or "none"
        )
    )
    print(f"wrote {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
