"""The ``costmodel`` command: report, plot, devices, compare.

    costmodel report llama2-7b --device h100-sxm --phase decode --seq-len 2048 --format md
    costmodel plot sam-vit-h --device a100-sxm-80gb -o sam.png
    costmodel devices
    costmodel compare whisper-large-v3 --devices a100-sxm-80gb,h100-sxm,l4

Bad names and impossible arguments print one line, ``costmodel: error: <message>``, to stderr
and exit with status 2 (1 for files that cannot be read or written, and for unexpected
exceptions); ``PYWORKLOADS_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import analysis
from . import hardware as _devices
from .report import fmt_bytes, fmt_time

FORMATS = ("table", "md", "csv", "json")
DTYPES = ("fp32", "bf16", "fp16", "fp8", "int8", "int4")


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
    p.add_argument("--dtype", default="bf16", choices=DTYPES,
                   help="weights+activations+KV (int4/int8: weight-only)")
    p.add_argument("--weights-dtype", choices=DTYPES)
    p.add_argument("--act-dtype", choices=("fp32", "bf16", "fp16", "fp8"))
    p.add_argument("--kv-dtype", choices=("fp32", "bf16", "fp16", "fp8", "int8"))
    p.add_argument("--group-size", type=int, default=128, help="int4 quantisation group")
    p.add_argument("--attention", choices=("flash", "unfused"), default="flash")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    p.add_argument("--no-fuse", action="store_true",
                   help="charge elementwise ops their own DRAM traffic")
    p.add_argument("--tf32", action="store_true", help="fp32 matmuls on TF32 tensor cores")
    p.add_argument("--text-batch", type=int, default=None, help="CLIP: texts (default = --batch)")
    p.add_argument("--prompts", type=int, default=1, help="SAM: prompts per image")
    p.add_argument("--points", type=int, default=1, help="SAM: points per prompt")
    p.add_argument("--boxes", action="store_true", help="SAM: a box per prompt")


def _analyze(a, device):
    return analysis.analyze(a.model, device, phase=a.phase, batch=a.batch, seq_len=a.seq_len,
                            dtype=a.dtype, new_tokens=a.new_tokens, weights=a.weights_dtype,
                            activations=a.act_dtype, kv=a.kv_dtype, group_size=a.group_size,
                            attention=a.attention, tp=a.tp, fuse_elementwise=not a.no_fuse,
                            tf32=a.tf32, text_batch=a.text_batch, prompts=a.prompts,
                            points=a.points, boxes=a.boxes)


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
                   help="include this machine (runs the short calibration)")
    d.add_argument("--recalibrate", action="store_true", help="re-measure the cpu device")
    d.add_argument("--check", metavar="FILE", nargs="?", const="",
                   help="lint a devices file (default: the built-in one): every figure must "
                        "re-derive from its quoted source; exit 1 on problems")
    c = sub.add_parser("compare", help="one model on several devices, side by side")
    _workload_args(c)
    c.add_argument("--devices", required=True, help="comma-separated device names")
    c.add_argument("--format", choices=("table", "md", "json"), default="table")
    return p


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
    if a.recalibrate:
        _devices.cpu_device(recalibrate=True)
    db = _devices.devices(include_cpu=a.cpu or a.recalibrate)
    if a.json:
        print(json.dumps({k: d.as_dict() for k, d in db.items()}, indent=1))
        return 0
    head = f"{'device':<15} {'name':<34} {'fp32':>7} {'tf32':>7} {'bf16':>7} {'fp16':>7} " \
           f"{'fp8':>7} {'int8':>7} {'GB/s':>7} {'memory':>9} {'link GB/s':>9}"
    print(head + "\n" + "-" * len(head))
    for k, d in db.items():
        def pk(dt):
            return f"{d.peaks[dt] / 1e12:7.1f}" if dt in d.peaks else f"{'-':>7}"
        link = f"{d.interconnect / 1e9:9.0f}" if d.interconnect else f"{'-':>9}"
        flag = "" if d.confirmed else " *"
        print(f"{k:<15} {(d.name + flag)[:34]:<34} {d.vector_peak / 1e12:7.1f} {pk('tf32')} "
              f"{pk('bf16')} {pk('fp16')} {pk('fp8')} {pk('int8')} {d.bandwidth / 1e9:7.0f} "
              f"{fmt_bytes(d.memory):>9} {link}")
    print("\nDense TFLOP/s (int8: TOPS); fp32 = vector rate; link = per direction. * = figures not "
          "yet confirmed against the vendor datasheet. Sources: `costmodel devices --json`.")
    return 0


def _cmd_compare(a) -> int:
    names = [n for n in a.devices.split(",") if n.strip()]
    if not names:
        raise ValueError("--devices needs at least one device name")
    reps = [_analyze(a, n.strip()) for n in names]
    keys = [k for k in reps[0].summary if k not in ("memory_bytes", "device_memory_bytes")]
    if a.format == "json":
        print(json.dumps({r.device.key: {"summary": r.summary, "total": r.total} for r in reps},
                         indent=1, default=str))
        return 0
    def cell(k, v):
        if isinstance(v, bool) or v is None:
            return str(v)
        if k.endswith("_per_s"):
            return f"{v:,.1f}"
        if k.endswith("_s") or k.endswith("_per_prompt"):
            return fmt_time(v)
        return str(v)
    rows = [[k] + [cell(k, r.summary.get(k)) for r in reps] for k in keys]
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


def main(argv=None) -> int:
    parser = build_parser()
    try:
        a = parser.parse_args(argv)
        for f in a.devices_file:
            _devices.add_devices_file(f)
        if a.command == "devices":
            return _cmd_devices(a)
        if a.command == "compare":
            return _cmd_compare(a)
        _check_output(a.output)
        rep = _analyze(a, a.device)
        if a.command == "plot":
            from .plots import save
            _emit_path = save(rep, a.output, a.kind)
            print(f"wrote {_emit_path}", file=sys.stderr)
            return 0
        text = {"table": lambda: rep.to_table(a.per_layer),
                "md": lambda: rep.to_markdown(a.per_layer),
                "csv": rep.to_csv, "json": rep.to_json}[a.format]()
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
        if isinstance(exc, ImportError):
            return _fail(f"{exc} (plots need matplotlib: pip install matplotlib)", 1)
        if isinstance(exc, OSError):
            return _fail(str(exc), 1)
        if isinstance(exc, MemoryError):
            return _fail(f"out of memory ({str(exc) or 'MemoryError'})", 1)
        return _fail(f"{type(exc).__name__}: {exc} (PYWORKLOADS_DEBUG=1 shows where)", 1)


if __name__ == "__main__":
    sys.exit(main())
