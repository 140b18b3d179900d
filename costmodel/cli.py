"""The ``costmodel`` command: report, plot, devices, compare.

    costmodel report llama2-7b --device h100-sxm --phase decode --seq-len 2048 --format md
    costmodel plot sam-vit-h --device a100-sxm-80gb -o sam.png
    costmodel devices
    costmodel compare whisper-large-v3 --devices a100-sxm-80gb,h100-sxm,l4
    costmodel calibrate --backend cpp               # this machine's kernels -> predicted times
    costmodel validate llama2-110m --backend cpp --phase decode --seq-len 200

Bad names and impossible arguments print one line, ``costmodel: error: <message>``, to stderr
and exit with status 2 (1 for files that cannot be read or written, and for unexpected
exceptions); ``PYWORKLOADS_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from pyworkloads.models import llama2

from . import analysis
from . import hardware as _devices
from .gguf import MIXES
from .graph import WEIGHT_DTYPES
from .report import fmt_bytes, summary_cell

FORMATS = ("table", "md", "csv", "json", "html")   # html: one self-contained page (plotly)
DTYPES = WEIGHT_DTYPES          # fp32 .. int4, llama.cpp's q8_0 .. q6_k and its q4_k_m recipe
QUANTIZE = llama2.QUANTIZE     # the formats the engine quantizes LLaMA's weights to


class _Parser(argparse.ArgumentParser):
    def error(self, message):                     # argparse's own errors: same style, same status
        self.print_usage(sys.stderr)
        raise _Usage(message)


class _Usage(Exception):
    pass


def _workload_args(p):
    p.add_argument("model",
                   help="a preset name, e.g. llama2-7b, clip-vit-l-14, sam-vit-h, whisper-large-v3")
    p.add_argument("--phase", help="llama2/whisper: prefill|decode|generate; clip: all|image|text; "
                                   "sam: all|encoder|decoder (default per model)")
    p.add_argument("--batch", type=int, default=1, help="batch size (CLIP: images, SAM: images)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="prompt tokens (prefill/generate) or KV length (decode); CLIP text tokens")
    p.add_argument("--new-tokens", type=int, default=None,
                   help="tokens generated in phase generate")
    p.add_argument("--dtype", default=None, choices=DTYPES,
                   help="weights+activations+KV (int4/int8 and llama.cpp's q8_0 .. q6_k, "
                        "q4_k_m: weight-only); default bf16, fp32 on the cpu device")
    p.add_argument("--weights-dtype", choices=DTYPES)
    p.add_argument("--embedding-dtype", choices=[d for d in DTYPES if d not in MIXES],
                   help="token-embedding tables and the output head (default: q8_0 under the "
                        "4-bit block formats, else the weights')")
    p.add_argument("--act-dtype", choices=("fp32", "bf16", "fp16", "fp8"))
    p.add_argument("--kv-dtype", choices=("fp32", "bf16", "fp16", "fp8", "int8"))
    p.add_argument("--group-size", type=int, default=128,
                   help="int4 quantisation group (a block format's block is its own)")
    p.add_argument("--attention", choices=("flash", "unfused"), default="flash")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    p.add_argument("--no-fuse", action="store_true",
                   help="charge elementwise ops their own DRAM traffic")
    p.add_argument("--tf32", action="store_true", help="fp32 matmuls on TF32 tensor cores")
    p.add_argument("--text-batch", type=int, default=None, help="CLIP: texts (default = --batch)")
    p.add_argument("--prompts", type=int, default=None, help="SAM: prompts per image (1)")
    p.add_argument("--points", type=int, default=None, help="SAM: points per prompt (1)")
    p.add_argument("--boxes", action="store_true", default=None, help="SAM: a box per prompt")
    p.add_argument("--collective", choices=("ring", "tree"), default="ring",
                   help="all-reduce algorithm under tensor parallelism (α-β)")
    p.add_argument("--flash-block", type=int, default=None, metavar="Q",
                   help="charge flash attention's K/V re-reads per block of Q queries")
    p.add_argument("--profile", metavar="JSON",
                   help="predict with this calibrated profile (e.g. a GPU's, from "
                        "`costmodel calibrate --from-bench`)")
    p.add_argument("--vendor", action="store_true",
                   help="with a GPU profile: predict for the vendor libraries, not our kernels")


def _analyze(a, device):
    if a.profile:
        device = _devices.with_profile(device, a.profile, "vendor" if a.vendor else None)
    elif a.vendor:
        raise ValueError("--vendor needs --profile (a GPU profile with vendor measurements)")
    return analysis.analyze(a.model, device, phase=a.phase, batch=a.batch, seq_len=a.seq_len,
                            dtype=a.dtype, new_tokens=a.new_tokens, weights=a.weights_dtype,
                            activations=a.act_dtype, kv=a.kv_dtype,
                            embedding=a.embedding_dtype, group_size=a.group_size,
                            attention=a.attention, tp=a.tp, fuse_elementwise=not a.no_fuse,
                            tf32=a.tf32, text_batch=a.text_batch, prompts=a.prompts,
                            points=a.points, boxes=a.boxes, collective=a.collective,
                            flash_block=a.flash_block)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="costmodel",
                description="Roofline cost model of LLaMA 2, CLIP, SAM and Whisper per layer.")
    p.add_argument("--devices-file", action="append", default=[], metavar="FILE",
                   help="add devices from a TOML/JSON file (layout of costmodel/devices.toml)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("report", help="per-layer table of one model on one device")
    _workload_args(r)
    r.add_argument("--device", required=True)
    r.add_argument("--format", choices=FORMATS, default="table")
    r.add_argument("--per-layer", action="store_true",
                   help="every layer, not aggregated over repeats (table/md)")
    r.add_argument("-o", "--output", help="write to this file instead of stdout")
    pl = sub.add_parser("plot", help="roofline PNG (and per-layer time breakdown)")
    _workload_args(pl)
    pl.add_argument("--device", required=True)
    pl.add_argument("-o", "--output", required=True, help="PNG file")
    pl.add_argument("--kind", choices=("roofline", "breakdown", "both"), default="both")
    d = sub.add_parser("devices", help="the device database")
    d.add_argument("--json", action="store_true")
    d.add_argument("--cpu", action="store_true",
                   help="include this machine (its calibrated profile, or a quick measurement)")
    d.add_argument("--check", metavar="FILE", nargs="?", const="",
                   help="lint a devices file (default: the built-in one): every figure must "
                        "re-derive from its quoted source; exit 1 on problems")
    cal = sub.add_parser("calibrate", help="measure this machine's kernels: a device profile "
                                           "that gives every layer a predicted time")
    cal.add_argument("--backend", choices=("cpp", "numpy"), default="cpp")
    cal.add_argument("--quick", action="store_true", help="a coarser grid (about half the time)")
    cal.add_argument("--from-bench", metavar="JSON",
                     help="a GPU profile from a benchmarks/bench_cuda.py results file instead")
    cal.add_argument("-o", "--output", help="where to save (default: the cache, where "
                                            "`--device cpu` finds it)")
    v = sub.add_parser("validate", help="run the engine on a workload and compare every "
                                        "layer's measured time with its prediction")
    v.add_argument("model", help="a preset name, a Hugging Face checkpoint directory or a "
                                 "LLaMA .gguf file")
    v.add_argument("--backend", choices=("cpp", "numpy"), default="cpp")
    v.add_argument("--phase", help="llama2/whisper: prefill|decode; clip: image|text|all; "
                                   "sam: encoder|decoder|all")
    v.add_argument("--batch", type=int, default=1)
    v.add_argument("--seq-len", type=int, default=None,
                   help="prompt tokens (prefill), KV length (decode), CLIP text tokens")
    v.add_argument("--text-batch", type=int, default=None)
    v.add_argument("--prompts", type=int, default=None)
    v.add_argument("--points", type=int, default=None)
    v.add_argument("--boxes", action="store_true", default=None)
    v.add_argument("--quantize", choices=QUANTIZE, default=None,
                   help="llama2: block-quantize the weights as the engine does "
                        "(pw.llama2.from_preset(..., quantize=...))")
    v.add_argument("--repeats", type=int, default=5)
    v.add_argument("--seconds", type=float, default=3.0,
                   help="spread the runs over at least this long; each call keeps its median")
    v.add_argument("--format", choices=("table", "json", "html"), default="table")
    v.add_argument("-o", "--output", help="write to this file instead of stdout")
    c = sub.add_parser("compare", help="one model on several devices, side by side")
    _workload_args(c)
    c.add_argument("--devices", required=True, help="comma-separated device names")
    c.add_argument("--format", choices=("table", "md", "json", "html"), default="table")
    c.add_argument("-o", "--output", help="write to this file instead of stdout")
    _serve_args(sub)
    _train_args(sub)
    return p


def _serve_args(sub):
    """``costmodel serve``: continuous batching over a paged KV cache (costmodel.serving)."""
    s = sub.add_parser("serve", help="simulate serving a decoder: TTFT, TPOT, throughput "
                                     "(continuous batching, paged KV cache)")
    s.add_argument("model", help="a llama2 or whisper preset, e.g. llama2-7b, whisper-large-v3")
    s.add_argument("--device", required=True)
    s.add_argument("--rate", type=float, default=1.0, help="arrival rate, requests/s (Poisson)")
    s.add_argument("--rates", help="comma-separated arrival rates: a throughput-latency curve")
    s.add_argument("--prompt-len", default="512",
                   help="N, uniform:LO:HI, lognormal:MEDIAN:SIGMA or samples:A,B,C")
    s.add_argument("--output-len", default="128", help="as --prompt-len")
    s.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals")
    s.add_argument("--num-requests", type=int, default=None,
                   help="cap the requests (with --rate inf: all at t = 0)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--dtype", default=None, choices=DTYPES)
    s.add_argument("--tp", type=int, default=1)
    s.add_argument("--max-batch", type=int, default=None)
    s.add_argument("--block-size", type=int, default=16)
    s.add_argument("--chunked-prefill", type=int, default=None, metavar="TOKENS",
                   help="token budget per iteration (decode tokens first, then prompt chunks)")
    s.add_argument("--memory-fraction", type=float, default=0.9)
    s.add_argument("--csv", metavar="FILE", help="write the curve (one row per rate) as CSV")
    s.add_argument("--plot", metavar="FILE", help="PNG of throughput vs TTFT/TPOT p50/p99")
    s.add_argument("--format", choices=("table", "html"), default="table",
                   help="html: one self-contained page (the curve with --rates)")
    s.add_argument("-o", "--output", help="write the html page to this file")


def _cmd_serve(a) -> int:
    from . import serving
    for path in (a.csv, a.plot, a.output):
        _check_output(path)
    if a.format == "html" and a.output is None:
        raise ValueError("--format html needs -o FILE (the table goes to stdout)")
    rates = [float(r) for r in a.rates.split(",") if r.strip()] if a.rates else [a.rate]
    kw = dict(prompt_len=serving.parse_length(a.prompt_len),
              output_len=serving.parse_length(a.output_len), duration=a.duration,
              num_requests=a.num_requests, seed=a.seed, dtype=a.dtype, tp=a.tp,
              max_batch=a.max_batch, block_size=a.block_size, chunked_prefill=a.chunked_prefill,
              memory_fraction=a.memory_fraction)
    if a.format == "html" and len(rates) == 1:
        kw["debug"] = True                        # the per-iteration trace: batch over time
    results = serving.sweep(a.model, rates, device=a.device, **kw)
    if len(results) == 1:
        print(results[0].to_table())
    else:
        print(results[0].to_table().splitlines()[0].split(": ")[0] + ", seed "
              f"{a.seed}, {a.duration:g} s of arrivals per rate")
        print(serving.curve_table(results))
    if a.csv:
        _emit(serving.curve_csv(results), a.csv)
    if a.plot:
        print(f"wrote {serving.plot_curve(results, a.plot)}", file=sys.stderr)
    if a.format == "html":
        from .html import curve_html
        _emit(results[0].to_html() if len(results) == 1 else curve_html(results), a.output)
    return 0


def _emit(text: str, path: str | None):
    if path:
        with open(path, "w") as f:
            f.write(text if text.endswith("\n") else text + "\n")
        print(f"wrote {path}", file=sys.stderr)
    else:
        print(text)


def _cmd_devices(a) -> int:
    if a.check is not None:
        problems = _devices.check_file(a.check or _devices.DATA_FILE)
        for p in problems:
            print(p)
        print(f"{len(problems)} problem(s) in {a.check or _devices.DATA_FILE}", file=sys.stderr)
        return 1 if problems else 0
    db = _devices.devices(include_cpu=a.cpu)
    if a.json:
        print(json.dumps({k: d.as_dict() for k, d in db.items()}, indent=1))
        return 0
    head = f"{'device':<15} {'name':<34} {'fp32':>7} {'tf32':>7} {'bf16':>7} {'fp16':>7} " \
           f"{'fp8':>7} {'int8':>7} {'GB/s':>7} {'memory':>9} {'link GB/s':>9}"
    print(head + "\n" + "-" * len(head))
    for k, d in db.items():
        scale = 1e9 if d.segment == "cpu" else 1e12          # a CPU in GFLOP/s, a GPU in TFLOP/s

        def pk(dt, d=d, scale=scale):
            return f"{d.peaks[dt] / scale:7.1f}" if dt in d.peaks else f"{'-':>7}"
        link = f"{d.interconnect / 1e9:9.0f}" if d.interconnect else f"{'-':>9}"
        flag = "" if d.confirmed else " *"
        print(f"{k:<15} {(d.name + flag)[:34]:<34} {d.vector_peak / scale:7.1f} {pk('tf32')} "
              f"{pk('bf16')} {pk('fp16')} {pk('fp8')} {pk('int8')} {d.bandwidth / 1e9:7.0f} "
              f"{fmt_bytes(d.memory):>9} {link}")
    print("\nDense TFLOP/s (int8: TOPS); the cpu row in GFLOP/s; fp32 = vector rate; link = per "
          "direction. * = figures not yet confirmed against the vendor datasheet. Sources: "
          "`costmodel devices --json`.")
    return 0


def _cmd_calibrate(a) -> int:
    from . import calibration
    _check_output(a.output)
    if a.from_bench:
        prof = calibration.profile_from_bench(a.from_bench)
        path = prof.save(a.output or calibration.profile_path("cuda"))
        print(f"GPU profile of {prof.machine.get('gpu')} from {a.from_bench}: "
              f"{sum(len(v) for v in prof.points.values())} points; saved to {path}")
        return 0
    t0 = time.perf_counter()
    prof = calibration.calibrate(a.backend, quick=a.quick, save=not a.output,
                                 progress=lambda m: print(f"  measuring {m}", file=sys.stderr))
    path = prof.save(a.output) if a.output else calibration.profile_path(a.backend)
    n = sum(len(v) for v in prof.points.values())
    print(f"{a.backend} profile of {prof.machine['cpu']} ({prof.machine['isa']}, "
          f"{prof.machine['threads']} threads): {n} shapes in {time.perf_counter() - t0:.0f} s\n"
          f"  compute roof {prof.peak_flops / 1e9:.1f} GFLOP/s ({prof.peak_how})\n"
          f"  memory roof {prof.bandwidth / 1e9:.1f} GB/s (best streaming)\n"
          f"  fixed cost per call: kernel "
          + ", ".join(f"{k} {v * 1e6:.1f} us" for k, v in prof.overhead.items())
          + "; Python around it " + ", ".join(f"{k} {v * 1e6:.1f} us" for k, v in prof.glue.items())
          + f"; NumPy ufunc {prof.ufunc_call * 1e6:.1f} us\n"
          f"saved to {path}")
    return 0


def _cmd_validate(a) -> int:
    from .validate import validate
    _check_output(a.output)
    v = validate(a.model, backend=a.backend, phase=a.phase, batch=a.batch, seq_len=a.seq_len,
                 text_batch=a.text_batch, prompts=a.prompts, points=a.points, boxes=a.boxes,
                 quantize=a.quantize, repeats=a.repeats, min_seconds=a.seconds)
    _emit({"json": v.to_json, "html": v.to_html}.get(a.format, v.to_table)(), a.output)
    return 0


def _cmd_compare(a) -> int:
    _check_output(a.output)
    if a.output and a.format != "html":           # the text formats print: into the file
        out, a.output = a.output, None
        with open(out, "w") as f, contextlib.redirect_stdout(f):
            rc = _cmd_compare(a)
        print(f"wrote {out}", file=sys.stderr)
        return rc
    names = [n for n in a.devices.split(",") if n.strip()]
    if not names:
        raise ValueError("--devices needs at least one device name")
    reps = [_analyze(a, n.strip()) for n in names]
    if a.format == "html":
        from .html import compare_html
        _emit(compare_html(reps), a.output)
        return 0
    keys = [k for k in reps[0].summary if k not in ("memory_bytes", "device_memory_bytes")]
    if a.format == "json":
        print(json.dumps({r.device.key: {"summary": r.summary, "total": r.total} for r in reps},
                         indent=1, default=str))
        return 0
    rows = [[k] + [summary_cell(k, r.summary.get(k)) for r in reps] for k in keys]
    rows.append(["memory total"] + [fmt_bytes(r.summary["memory_bytes"]["total"]) for r in reps])
    rows.append(["memory-bound share"] + [
        f"{100 * sum(x.t_lower for x in r.layers if x.bound == 'memory') / r.total['t_lower']:.0f}%"
        for r in reps])
    head = ["", *[r.device.key for r in reps]]
    title = f"{reps[0].model} ({reps[0].params:,} params), phase {reps[0].phase}, " + \
            ", ".join(f"{k}={v}" for k, v in reps[0].options.items() if k != "precision")
    if a.format == "md":
        print(f"**{title}**\n\n| " + " | ".join(head) + " |\n|---|" + "---:|" * len(reps))
        for r in rows:
            print("| " + " | ".join(r) + " |")
        return 0
    w = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    print(title)
    print("  ".join(h.ljust(w[0]) if i == 0 else h.rjust(w[i]) for i, h in enumerate(head)))
    for r in rows:
        print("  ".join(c.ljust(w[0]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)))
    return 0


def _check_output(path: str | None) -> None:
    """-o must name a file in an existing directory (checked before the work)."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"-o {path!r} is a directory; give a file name")
    if not p.parent.is_dir():
        raise FileNotFoundError(f"-o {path!r}: no directory {str(p.parent)!r} to write it in")


def _debug() -> bool:
    return os.environ.get("PYWORKLOADS_DEBUG", "") not in ("", "0")


def _fail(message: str, status: int) -> int:
    print(f"costmodel: error: {message}", file=sys.stderr)
    return status


def _train_args(sub):
    """``costmodel train``: one training step and a whole run (costmodel.training)."""
    t = sub.add_parser("train", help="training cost: FLOPs, memory per GPU, time per step, MFU, "
                                     "and a run's GPU-hours and energy")
    t.add_argument("model", help="a preset name, e.g. llama2-7b, clip-vit-l-14, sam-vit-h")
    t.add_argument("--device", required=True)
    t.add_argument("--batch", type=int, default=1,
                   help="global batch: sequences, image-text pairs or images per step")
    t.add_argument("--seq-len", type=int, default=None, help="tokens per sequence")
    t.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    t.add_argument("--optimizer", default="adamw", choices=("adamw", "adam", "sgd"))
    t.add_argument("--zero", type=int, default=0, help="ZeRO stage 0..3")
    for par in ("dp", "tp", "pp"):
        t.add_argument(f"--{par}", type=int, default=1)
    t.add_argument("--microbatches", type=int, default=None)
    t.add_argument("--recompute", default="none", choices=("none", "selective", "full"))
    t.add_argument("--lora-rank", type=int, default=None)
    t.add_argument("--lora-targets", default="q_proj,v_proj")
    t.add_argument("--freeze", default="", help="comma-separated module prefixes, e.g. "
                                                "image_encoder")
    t.add_argument("--prompts", type=int, default=None, help="SAM: prompts per image")
    t.add_argument("--tokens", type=float, default=None, help="a run of this many tokens")
    t.add_argument("--samples", type=float, default=None,
                   help="a run of this many sequences / pairs / images")
    t.add_argument("--format", choices=("table", "html"), default="table")
    t.add_argument("-o", "--output", help="write to this file instead of stdout")


def _cmd_train(a) -> int:
    from .training import train
    _check_output(a.output)
    extra = {"prompts": a.prompts} if a.prompts is not None else {}
    rep = train(a.model, a.device, batch=a.batch, seq_len=a.seq_len, dtype=a.dtype,
                optimizer=a.optimizer, zero_stage=a.zero, dp=a.dp, tp=a.tp, pp=a.pp,
                microbatches=a.microbatches, recompute=a.recompute, lora_rank=a.lora_rank,
                lora_targets=tuple(x for x in a.lora_targets.split(",") if x),
                freeze=tuple(x for x in a.freeze.split(",") if x), **extra)
    if a.format == "html":
        _emit(rep.to_html(tokens=a.tokens, samples=a.samples), a.output)
        return 0
    lines = [rep.to_table()]
    if a.tokens is not None or a.samples is not None:
        s = rep.summary(tokens=a.tokens, samples=a.samples)
        energy = (f"{s['energy_kwh']:,.0f} kWh at {rep.device.tdp:.0f} W per GPU"
                  if s["energy_kwh"] is not None else "energy: the device has no tdp_w")
        lines.append(f"  run             {s['steps']:,} steps, {s['wall_days']:,.2f} days on "
                     f"{s['gpus']} GPUs, {s['gpu_hours']:,.0f} GPU-hours, {energy}, MFU "
                     f"{s['mfu']:.1%}")
    _emit("\n".join(lines), a.output)
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    try:
        a = parser.parse_args(argv)
        for f in a.devices_file:
            _devices.add_devices_file(f)
        if a.command == "devices":
            return _cmd_devices(a)
        if a.command == "calibrate":
            return _cmd_calibrate(a)
        if a.command == "validate":
            return _cmd_validate(a)
        if a.command == "compare":
            return _cmd_compare(a)
        if a.command == "serve":
            return _cmd_serve(a)
        if a.command == "train":
            return _cmd_train(a)
        _check_output(a.output)
        rep = _analyze(a, a.device)
        if a.command == "plot":
            from .plots import save
            _emit_path = save(rep, a.output, a.kind)
            print(f"wrote {_emit_path}", file=sys.stderr)
            return 0
        text = {"table": lambda: rep.to_table(a.per_layer),
                "md": lambda: rep.to_markdown(a.per_layer),
                "csv": rep.to_csv, "json": rep.to_json, "html": rep.to_html}[a.format]()
        _emit(text, a.output)
        return 0
    except _Usage as exc:
        return _fail(str(exc), 2)
    except KeyboardInterrupt:
        print("costmodel: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:                       # `costmodel report ... | head`: the reader left
        sys.stdout = open(os.devnull, "w")
        return 0
    except Exception as exc:                      # one line, no traceback (PYWORKLOADS_DEBUG=1)
        if _debug():
            raise
        if isinstance(exc, (ValueError, TypeError, KeyError)):
            return _fail(exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc), 2)
        if isinstance(exc, ImportError) and exc.name == "plotly":   # its message names the extra
            return _fail(str(exc), 1)
        if isinstance(exc, ImportError):
            return _fail(f"{exc} (plots need matplotlib: pip install matplotlib)", 1)
        if isinstance(exc, OSError):
            return _fail(str(exc), 1)
        if isinstance(exc, MemoryError):
            return _fail(f"out of memory ({str(exc) or 'MemoryError'})", 1)
        return _fail(f"{type(exc).__name__}: {exc} (PYWORKLOADS_DEBUG=1 shows where)", 1)


if __name__ == "__main__":
    sys.exit(main())
