"""Output formats of a :class:`~costmodel.analysis.Report`: JSON, CSV, Markdown and a terminal
table.  All of them use the one record schema of docs/architecture.md §5
(``costmodel.graph.SCHEMA``)."""
from __future__ import annotations

import csv
import io
import json
import math

from .graph import COUNT_FIELDS, SCHEMA, TIME_FIELDS

__all__ = ["to_json", "to_csv", "to_markdown", "to_table", "to_html", "grouped", "fmt_time",
           "fmt_bytes", "fmt_summary"]


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def _meta(rep) -> dict:
    return {"model": rep.model, "family": rep.family, "params": rep.params, "phase": rep.phase,
            "device": rep.device.key, "device_name": rep.device.name, "options": rep.options}


def summary_cell(key: str, value) -> str:
    """One summary value as a table cell: rates with thousands separators, times (keys ending in
    ``_s`` or ``_per_prompt``) with their unit, "-" for a missing one."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if key.endswith("_per_s"):
        return f"{value:,.1f}"
    if key.endswith("_s") or key.endswith("_per_prompt"):
        return fmt_time(value)
    return str(value)


def to_json(rep, indent=1) -> str:
    doc = {**_meta(rep), "summary": _jsonable(rep.summary), "total": _jsonable(rep.total),
           "by_phase": _jsonable(rep.by_phase()), "schema": list(SCHEMA),
           "layers": [_jsonable(r.as_dict()) for r in rep.layers]}
    return json.dumps(doc, indent=indent)


def to_csv(rep) -> str:
    """One row per record under a header of the schema's names: plain CSV that csv.DictReader
    and pandas read as they are (the model, device and options are in ``to_json``)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SCHEMA)
    for r in rep.layers:
        w.writerow([getattr(r, f) for f in SCHEMA])
    return buf.getvalue()


def to_html(rep) -> str:
    """One self-contained, offline HTML page: interactive roofline, time breakdown, sortable
    layer table and summary (``costmodel.html``; needs plotly: pip install "pyworkloads[html]")."""
    from .html import report_html
    return report_html(rep)


def fmt_time(s) -> str:
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.2f} us"


def fmt_bytes(b) -> str:
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= k:
            return f"{b / k:.2f} {unit}"
    return f"{b:.0f} B"


def fmt_summary(rep) -> list[tuple[str, str]]:
    s = rep.summary
    rows = [("model", f"{rep.model} ({rep.params:,} parameters)"),
            ("device", f"{rep.device.name} [{rep.device.key}]"),
            ("phase", rep.phase),
            ("options", ", ".join(f"{k}={v}" for k, v in rep.options.items()))]
    for k, v in s.items():
        if k == "memory_bytes":
            rows.append(("memory", ", ".join(f"{kind} {fmt_bytes(b)}" for kind, b in v.items())))
        elif k == "device_memory_bytes":
            rows.append(("device memory", fmt_bytes(v)))
        elif k.endswith("_per_s"):
            rows.append((k, f"{v:,.2f}" if v is not None else "-"))
        elif k.endswith("_s") or k.endswith("_s_per_prompt"):
            rows.append((k, fmt_time(v)))
        elif isinstance(v, float):
            rows.append((k, f"{v:,.2f}"))
        else:
            rows.append((k, str(v)))
    return rows


def grouped(rep) -> list[dict]:
    """Records aggregated over repeated layers: one row per (phase, layer type, op), digits in the
    module path replaced by '*', in first-appearance order."""
    out: dict[tuple, dict] = {}
    for r in rep.layers:
        key = (r.phase, r.block, r.op)
        g = out.get(key)
        if g is None:
            g = out[key] = {"phase": r.phase, "name": r.block, "op": r.op, "count": 0, "bytes": 0.0,
                            **{f: 0 for f in COUNT_FIELDS + TIME_FIELDS}}
        g["count"] += 1
        g["bytes"] += r.bytes
        for f in COUNT_FIELDS + TIME_FIELDS:
            g[f] += getattr(r, f)
    for g in out.values():
        g["intensity"] = g["flops"] / g["bytes"] if g["bytes"] else 0.0
        g["bound"] = "comm" if g["op"] == "allreduce" else (
            "-" if not (g["t_compute"] or g["t_memory"])
            else "compute" if g["t_compute"] >= g["t_memory"] else "memory")
    return list(out.values())


def _rows(rep, per_layer: bool):
    total = sum(r.t_lower for r in rep.layers) or float("nan")
    if per_layer:
        src = [dict(r.as_dict(), count=1, bytes=r.bytes,
                    name=r.name + (f" @{r.step}" if r.step else ""))
               for r in rep.layers]
    else:
        src = grouped(rep)
    pred = rep.device.profile is not None             # a calibrated device: predicted times too
    head = ["phase", "layer", "op", "n", "GFLOP", "MB", "FLOP/B", "bound", "t_lower", "t_upper",
            *(["t_pred"] if pred else []), "%"]
    rows = [[g["phase"], g["name"], g["op"], str(g["count"]), f"{g['flops'] / 1e9:,.3f}",
             f"{g['bytes'] / 1e6:,.2f}", f"{g['intensity']:,.1f}", g["bound"],
             fmt_time(g["t_lower"]), fmt_time(g["t_upper"]),
             *([fmt_time(g["t_pred"])] if pred else []),
             f"{100 * g['t_lower'] / total:.1f}"] for g in src]
    t = rep.total
    rows.append(["", "TOTAL", "", str(len(rep.layers)), f"{t['flops'] / 1e9:,.3f}",
                 f"{t['bytes'] / 1e6:,.2f}", f"{t['intensity']:,.1f}", "", fmt_time(t["t_lower"]),
                 fmt_time(t["t_upper"]), *([fmt_time(t["t_pred"])] if pred else []), "100.0"])
    return head, rows


def _phase_rows(rep) -> list[list[str]]:
    """Totals per phase (encoder / prefill / decode ...), when the report has more than one."""
    ph = rep.by_phase()
    if len(ph) < 2:
        return []
    return [[name, f"{t['flops'] / 1e9:,.3f}", f"{t['bytes'] / 1e6:,.2f}", fmt_time(t["t_lower"]),
             fmt_time(t["t_upper"])]
            for name, t in ph.items()]


PHASE_HEAD = ["phase", "GFLOP", "MB", "t_lower", "t_upper"]


def to_markdown(rep, per_layer: bool = False) -> str:
    lines = [f"# {rep.model} on {rep.device.name}: {rep.phase}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in fmt_summary(rep)]
    phases = _phase_rows(rep)
    if phases:
        lines += ["", "| " + " | ".join(PHASE_HEAD) + " |",
                  "|---|" + "---:|" * (len(PHASE_HEAD) - 1)]
        lines += ["| " + " | ".join(r) + " |" for r in phases]
    head, rows = _rows(rep, per_layer)
    lines += ["", "| " + " | ".join(head) + " |",
              "|" + "|".join("---:" if i > 2 else "---" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "t_lower = max(compute, memory) (+ collectives): the roofline bound; "
              "t_upper = their sum; t_pred (a calibrated device) the predicted time. Peaks are "
              "dense datasheet figures; see `costmodel devices`."]
    return "\n".join(lines) + "\n"


def to_table(rep, per_layer: bool = False, width: int = 132) -> str:
    """A fixed-width table for the terminal (layer names are cut to fit ``width``)."""
    out = [f"{k:>22}: {v}" for k, v in fmt_summary(rep)]
    phases = _phase_rows(rep)
    if phases:
        out += ["", "  ".join(f"{h:>12}" for h in PHASE_HEAD)]
        out += ["  ".join(f"{c:>12}" for c in r) for r in phases]
    head, rows = _rows(rep, per_layer)
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    spare = width - (sum(widths) + 2 * (len(widths) - 1))
    if spare < 0:
        widths[1] = max(16, widths[1] + spare)
    def line(r):
        cells = []
        for i, (c, w) in enumerate(zip(r, widths)):
            c = c if len(c) <= w else "…" + c[-(w - 1):]
            cells.append(c.ljust(w) if i < 3 or i == 7 else c.rjust(w))
        return "  ".join(cells)
    out += ["", line(head), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    out += [line(r) for r in rows]
    return "\n".join(out)
