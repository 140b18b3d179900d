"""A report as one self-contained HTML page: interactive plots (plotly), a sortable table and the
summary.

``report_html(rep)`` (``Report.to_html()``, ``costmodel report --format html``) and
``compare_html(reps)`` (``costmodel compare --format html``) return the page as a string.  The
page works offline: plotly.js, the styles and the table's script are all inline, and it makes no
network request (the CSV download is built in the page from its own data).

The page holds

* the roofline: one point per layer record at (arithmetic intensity, FLOP / t_lower), the
  device's memory roof and its compute roofs; hovering a point shows the layer's name, op,
  shapes, FLOPs, bytes, intensity, bound, times and share of the total; drag to zoom;
* the time per layer type (repeated layers summed) as stacked bars: the compute-bound,
  memory-bound and collective parts (``plots.time_parts``), with buttons that re-sort them;
* the per-layer table: click a header to sort, type to filter, download the rows shown as CSV;
* the summary (TTFT, TPOT, throughput, memory and whether it fits).

The other commands' results get pages of the same kind:

* ``train_html`` (``TrainReport.to_html()``, ``costmodel train --format html``): memory per GPU
  by kind against the device's capacity, the step's time (forward, backward, recompute, pipeline
  bubble, data-parallel communication), FLOPs and time per layer type and pass, the records;
* ``serve_html`` (``ServeResult.to_html()``, ``costmodel serve --format html``): TTFT and TPOT
  per request as CDFs, the batch over time (a ``debug=True`` run's trace), one row per request;
  ``curve_html`` (``costmodel serve --rates ... --format html``): throughput against TTFT and
  TPOT p50 / p99, one point per arrival rate;
* ``validation_html`` (``Validation.to_html()``, ``costmodel validate --format html``): predicted
  against measured per kernel call on log-log axes around y = x, and the calls' table.

plotly is an optional dependency (``pip install "pyworkloads[html]"``).
"""
from __future__ import annotations

import html
import json
import math

from .plots import _groups, time_parts
from .report import fmt_bytes, fmt_summary, fmt_time, summary_cell
from .serving import ms_text

__all__ = ["report_html", "compare_html", "train_html", "serve_html", "curve_html",
           "validation_html", "INSTALL_HINT"]

INSTALL_HINT = 'pip install "pyworkloads[html]"'
_PART_CSS = {"compute": "#ff7f0e", "memory": "#1f77b4", "collective": "#9467bd"}
_OP_CSS = {"matmul": "#1f77b4", "conv": "#17becf", "attention": "#d62728", "rms_norm": "#2ca02c",
           "layer_norm": "#2ca02c", "gelu": "#bcbd22", "elementwise": "#bcbd22",
           "embedding": "#7f7f7f", "allreduce": "#9467bd"}
_OP_SYMBOL = {"attention": "diamond-open", "conv": "square", "rms_norm": "triangle-up",
              "layer_norm": "triangle-up", "embedding": "x"}


def _go():
    """plotly.graph_objects, or an ImportError that says which extra installs it."""
    try:
        import plotly.graph_objects as go
    except ImportError as exc:
        raise ModuleNotFoundError(f"the HTML report needs plotly: {INSTALL_HINT}",
                                  name="plotly") from exc
    return go


# ----------------------------------------------------------------------------- the plots
def roofline_figure(rep, go=None):
    """The interactive roofline of ``rep``: one marker trace per op, one line per roof."""
    go = go or _go()
    dev = rep.device
    total = rep.total["t_lower"] or 1.0
    pts = [r for r in rep.layers if r.bytes > 0 and r.flops > 0 and r.t_lower > 0]
    fig = go.Figure()
    if not pts:
        fig.add_annotation(text="no layer with both FLOPs and bytes", showarrow=False)
        return fig
    xs = [r.intensity for r in pts]
    dtypes = sorted({r.dtype for r in pts
                     if r.op in ("matmul", "conv", "attention") and dev.supports(r.dtype)},
                    key=dev.peak)
    top = max([dev.peak(dt) for dt in dtypes] + [dev.vector_peak])
    lo, hi = min(xs + [0.1]) / 3, max(xs + [top / dev.bandwidth]) * 4
    ridge = top / dev.bandwidth
    fig.add_trace(go.Scatter(x=[lo, ridge, hi], y=[dev.bandwidth * lo, top, top], mode="lines",
                             line=dict(color="black", width=1.5), hoverinfo="skip",
                             name=f"memory roof {dev.bandwidth / 1e9:,.0f} GB/s"))
    for dt in dtypes:
        fig.add_trace(go.Scatter(x=[dev.peak(dt) / dev.bandwidth, hi], y=[dev.peak(dt)] * 2,
                                 mode="lines", line=dict(color="#1f77b4", dash="dash"),
                                 hoverinfo="skip",
                                 name=f"tensor {dt} roof {dev.peak(dt) / 1e12:,.1f} TFLOP/s"))
    fig.add_trace(go.Scatter(x=[dev.vector_peak / dev.bandwidth, hi], y=[dev.vector_peak] * 2,
                             mode="lines", line=dict(color="#2ca02c", dash="dot"),
                             hoverinfo="skip",
                             name=f"vector fp32 roof {dev.vector_peak / 1e12:,.1f} TFLOP/s"))
    pred = dev.profile is not None
    by_op: dict[str, list] = {}
    for r in pts:
        by_op.setdefault(r.op, []).append(r)
    # hollow markers (attention) last, so they stay visible over projections at the same point
    for op in sorted(by_op, key=lambda op: _OP_SYMBOL.get(op, "").endswith("-open")):
        rs = by_op[op]
        hover = [[r.name + (f" @{r.step}" if r.step else ""), r.op, r.shapes,
                  f"{r.flops:,}", fmt_bytes(r.bytes), f"{r.intensity:,.2f}", r.bound,
                  fmt_time(r.t_lower) + (f" / {fmt_time(r.t_pred)}" if pred else ""),
                  f"{100 * r.t_lower / total:.2f}%", r.phase] for r in rs]
        fig.add_trace(go.Scatter(
            x=[r.intensity for r in rs], y=[r.flops / r.t_lower for r in rs], mode="markers",
            name=f"{op} ({len(rs)})", customdata=hover,
            marker=dict(color=_OP_CSS.get(op, "black"), symbol=_OP_SYMBOL.get(op, "circle"),
                        size=11 if op == "attention" else 8, line=dict(width=1.5)),
            hovertemplate=("<b>%{customdata[0]}</b> (%{customdata[9]})<br>op %{customdata[1]}"
                           "<br>shapes %{customdata[2]}<br>FLOPs %{customdata[3]}"
                           "<br>bytes %{customdata[4]}<br>intensity %{customdata[5]} FLOP/B"
                           "<br>bound %{customdata[6]}<br>t_lower"
                           + (" / t_pred" if pred else "") + " %{customdata[7]}"
                           "<br>share of time %{customdata[8]}<extra></extra>")))
    ys = [r.flops / r.t_lower for r in pts]
    fig.update_xaxes(type="log", range=[math.log10(lo), math.log10(hi)],
                     title="arithmetic intensity (FLOP / byte of DRAM traffic)")
    fig.update_yaxes(type="log", title="attained FLOP/s at the roofline bound",
                     range=[math.log10(min(ys + [dev.bandwidth * lo]) / 3),
                            math.log10(top * 3)])
    fig.update_layout(title=f"Roofline: {rep.model} · {rep.phase} · {dev.name}", height=560,
                      margin=dict(l=70, r=20, t=50, b=60), hovermode="closest")
    return fig


def breakdown_figure(rep, go=None):
    """Stacked horizontal bars of t_lower per layer type: compute, memory and collective parts,
    with buttons that sort by the total, by each part or by name."""
    go = go or _go()
    rows = _groups(rep)
    labels = [f"{g['phase']}: {g['name'].removeprefix('model.')}"
              + (f" ({g['op']})" if g["op"] != "matmul" else "") for g in rows]
    fig = go.Figure()
    parts = [p for p in _PART_CSS if any(g["parts"][p] for g in rows)]
    for part in parts:
        fig.add_trace(go.Bar(y=labels, x=[g["parts"][part] * 1e3 for g in rows], orientation="h",
                             name=f"{part}-bound" if part != "collective" else "collective",
                             marker_color=_PART_CSS[part],
                             hovertemplate="%{y}<br>" + part + " %{x:.4f} ms<extra></extra>"))

    def order(key):                  # plotly draws the first category at the bottom
        return [labels[i] for i in sorted(range(len(rows)), key=lambda i: key(rows[i]))][::-1]
    sorts = [("total", lambda g: -g["t_lower"])]
    sorts += [(p, lambda g, p=p: -g["parts"][p]) for p in parts]
    sorts += [("name", lambda g: (g["phase"], g["name"]))]
    buttons = [dict(label=f"sort by {name}", method="relayout",
                    args=[{"yaxis.categoryorder": "array", "yaxis.categoryarray": order(key)}])
               for name, key in sorts]
    left = min(420, 30 + 6 * max(map(len, labels), default=0))    # room for the names
    fig.update_layout(barmode="stack", height=160 + 20 * len(rows),
                      title=dict(text=f"Time per layer type (t_lower, repeated layers summed): "
                                      f"total {fmt_time(rep.total['t_lower'])}", y=0.99,
                                 yref="container", yanchor="top"),
                      xaxis_title="ms", margin=dict(l=left, r=20, t=100, b=50),
                      yaxis=dict(categoryorder="array", categoryarray=order(sorts[0][1]),
                                 automargin=True, tickfont=dict(size=10)),
                      legend=dict(orientation="h", y=1.02, x=1, xanchor="right",
                                  yanchor="bottom"),
                      updatemenus=[dict(type="buttons", direction="right", x=0, y=1.01,
                                        xanchor="left", yanchor="bottom",
                                        buttons=buttons)])
    return fig


# ----------------------------------------------------------------------------- the table
# (key, header, kind): kind "text", "num" (shown with separators), "time" (seconds), "pct"
_COLUMNS = [("phase", "phase", "text"), ("name", "layer", "text"), ("step", "step", "text"),
            ("op", "op", "text"), ("shapes", "shapes", "text"), ("dtype", "dtype", "text"),
            ("flops", "FLOPs", "num"), ("bytes", "bytes", "num"),
            ("intensity", "FLOP/B", "num"), ("bound", "bound", "text"),
            ("t_compute", "t_compute", "time"), ("t_memory", "t_memory", "time"),
            ("t_comm", "t_comm", "time"), ("t_lower", "t_lower", "time"),
            ("t_upper", "t_upper", "time"), ("t_pred", "t_pred", "time"),
            ("share", "% of time", "pct")]


def _table_data(rep) -> dict:
    return _layer_table_data(rep.layers, rep.total["t_lower"], rep.device.profile is not None)


def _layer_table_data(layers, total: float, pred: bool) -> dict:
    """The table's columns and one row per layer record; "% of time": of ``total`` seconds."""
    total = total or 1.0
    cols = [c for c in _COLUMNS if c[0] != "t_pred" or pred]
    rows = []
    for r in layers:
        d = dict(r.as_dict(), bytes=r.bytes, share=100 * r.t_lower / total)
        rows.append([_finite(d[k]) for k, _, _ in cols])
    return _columns(cols, rows)


def _columns(cols, rows) -> dict:
    """``cols``: (key, header, kind) each; ``rows``: lists of values in that order."""
    return {"columns": [{"key": k, "label": h, "kind": kind} for k, h, kind in cols],
            "rows": rows}


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _json(obj) -> str:
    """JSON safe inside a <script> element ('<' escaped, so no '</script>' can close it)."""
    return json.dumps(obj, separators=(",", ":")).replace("<", "\\u003c")


def _table(tid: str, data: dict, filename: str) -> str:
    return (f'<div class="tbl" id="{tid}"><div class="tools">'
            f'<input type="search" placeholder="filter: words that must all appear in a row">'
            f' <button type="button">download CSV</button> <span class="count"></span></div>'
            f'<div class="scroll"><table><thead></thead><tbody></tbody></table></div></div>\n'
            f'<script>layerTable({_json(tid)}, {_json(data)}, {_json(filename)});</script>')


# The table: rows sorted by a clicked header (again: reversed), filtered by the words typed
# (each must appear in the row's text), the rows shown written out as CSV into a Blob.
_TABLE_JS = r"""
function fmtTime(s) {
  if (s === null || s === undefined) return "-";
  if (s >= 1) return s.toFixed(3) + " s";
  if (s >= 1e-3) return (s * 1e3).toFixed(3) + " ms";
  return (s * 1e6).toFixed(2) + " us";
}
function fmtCell(v, kind) {
  if (v === null || v === undefined) return "-";
  if (kind === "time") return fmtTime(v);
  if (kind === "pct") return v.toFixed(2);
  if (kind === "num") return v.toLocaleString("en-US", {maximumFractionDigits: 2});
  return String(v);
}
function csvCell(v) {
  const s = v === null || v === undefined ? "" : String(v);
  return /[",\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}
function layerTable(id, data, filename) {
  const root = document.getElementById(id);
  const cols = data.columns, head = root.querySelector("thead"), body = root.querySelector("tbody");
  const input = root.querySelector("input"), count = root.querySelector(".count");
  const text = data.rows.map(r => r.join(" ").toLowerCase());
  let key = -1, dir = 1, shown = [];
  const tr = document.createElement("tr");
  cols.forEach((c, j) => {
    const th = document.createElement("th");
    th.textContent = c.label;
    th.title = "sort by " + c.label;
    th.className = c.kind === "text" ? "" : "n";
    th.addEventListener("click", () => { dir = key === j ? -dir : (c.kind === "text" ? 1 : -1);
                                         key = j; draw(); });
    tr.appendChild(th);
  });
  head.appendChild(tr);
  function draw() {
    const words = input.value.toLowerCase().split(/\s+/).filter(w => w);
    shown = data.rows.map((r, i) => i).filter(i => words.every(w => text[i].includes(w)));
    if (key >= 0) shown.sort((a, b) => {
      const x = data.rows[a][key], y = data.rows[b][key];
      return (x === y ? 0 : x === null ? 1 : y === null ? -1 : x < y ? -1 : 1) * dir;
    });
    head.querySelectorAll("th").forEach((th, j) =>
      th.setAttribute("aria-sort", j === key ? (dir > 0 ? "ascending" : "descending") : "none"));
    const html = [];
    for (const i of shown) {
      html.push("<tr>" + data.rows[i].map((v, j) =>
        "<td" + (cols[j].kind === "text" ? "" : ' class="n"') + ">" +
        fmtCell(v, cols[j].kind).replace(/&/g, "&amp;").replace(/</g, "&lt;") + "</td>").join("")
        + "</tr>");
    }
    body.innerHTML = html.join("");
    count.textContent = shown.length + " of " + data.rows.length + " records";
  }
  input.addEventListener("input", draw);
  root.querySelector("button").addEventListener("click", () => {
    const lines = [cols.map(c => csvCell(c.key)).join(",")];
    for (const i of shown) lines.push(data.rows[i].map(csvCell).join(","));
    const url = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], {type: "text/csv"}));
    const a = document.createElement("a");
    a.href = url; a.download = filename; document.body.appendChild(a); a.click();
    a.remove(); URL.revokeObjectURL(url);
  });
  draw();
}
"""

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.2em 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border-bottom: 1px solid #ddd; padding: 2px 8px; text-align: left; white-space: nowrap; }
th { background: #f3f3f3; cursor: pointer; position: sticky; top: 0; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
.n { text-align: right; font-variant-numeric: tabular-nums; }
.summary th { cursor: default; position: static; }
.tbl .scroll { max-height: 34em; overflow: auto; border: 1px solid #ddd; }
.tools { margin: .4em 0; } .tools input { width: 28em; } .count { color: #666; font-size: 12px; }
.fits { color: #1a7f37; font-weight: bold; } .nofit { color: #c62828; font-weight: bold; }
.note { color: #555; font-size: 12px; max-width: 60em; }
"""

_NOTE = ("t_lower = max(compute, memory) (+ collectives): the roofline bound; t_upper = their "
         "sum; t_pred (a calibrated device) the predicted time. Peaks are dense datasheet "
         "figures (costmodel devices).")


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
            f"<script>{_TABLE_JS}</script></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")


def _fig_html(fig, first: bool) -> str:
    """A figure's div and script; plotly.js itself goes inline before the first one."""
    return fig.to_html(full_html=False, include_plotlyjs=bool(first),
                       config={"displaylogo": False, "responsive": True})


def _summary_table(rows: list[tuple[str, str]]) -> str:
    out = ['<table class="summary"><tbody>']
    for k, v in rows:
        cls = ' class="fits"' if (k, v) == ("fits", "True") else (
            ' class="nofit"' if (k, v) == ("fits", "False") else "")
        out.append(f"<tr><th>{html.escape(k)}</th><td{cls}>{html.escape(v)}</td></tr>")
    return "".join(out) + "</tbody></table>"


def report_html(rep) -> str:
    """One report as a self-contained page (see the module doc)."""
    go = _go()
    title = f"{rep.model} on {rep.device.name}: {rep.phase}"
    body = [f"<h1>{html.escape(title)}</h1>", "<h2>Summary</h2>",
            _summary_table(fmt_summary(rep)), f'<p class="note">{html.escape(_NOTE)}</p>',
            "<h2>Roofline</h2>", _fig_html(roofline_figure(rep, go), first=True),
            "<h2>Time per layer type</h2>", _fig_html(breakdown_figure(rep, go), first=False),
            "<h2>Layers</h2>",
            _table("layers", _table_data(rep), f"{rep.model}-{rep.device.key}-{rep.phase}.csv")]
    return _page(title, body)


def _compare_rows(reps) -> list[list[str]]:
    keys = list(dict.fromkeys(k for r in reps for k in r.summary
                              if k not in ("memory_bytes", "device_memory_bytes")))

    rows = [[k] + [summary_cell(k, r.summary.get(k)) for r in reps] for k in keys]
    rows.append(["memory total"] + [fmt_bytes(r.summary["memory_bytes"]["total"]) for r in reps])
    rows.append(["device memory"] + [fmt_bytes(r.device.memory) for r in reps])
    for part in _PART_CSS:
        shares = []
        for r in reps:
            t = r.total["t_lower"] or 1.0
            shares.append(f"{100 * time_parts(r.layers)[part] / t:.0f}%")
        rows.append([f"{part}-bound share"] + shares)
    return rows


def compare_html(reps) -> str:
    """One workload on several devices side by side: the summaries in one table, the rooflines
    next to each other, t_lower per layer type per device, and each device's layer table."""
    if not reps:
        raise ValueError("compare_html needs at least one report")
    go = _go()
    from plotly.subplots import make_subplots
    first = reps[0]
    title = f"{first.model}: {first.phase} on " + ", ".join(r.device.key for r in reps)
    opts = ", ".join(f"{k}={v}" for k, v in first.options.items() if k != "precision")
    head = "".join(f'<th class="n">{html.escape(r.device.name)}<br>[{html.escape(r.device.key)}]'
                   "</th>" for r in reps)
    rows = "".join("<tr><th>" + html.escape(row[0]) + "</th>"
                   + "".join(f'<td class="n">{html.escape(c)}</td>' for c in row[1:]) + "</tr>"
                   for row in _compare_rows(reps))
    body = [f"<h1>{html.escape(title)}</h1>",
            f'<p class="note">{html.escape(first.model)} ({first.params:,} parameters); '
            f"{html.escape(opts)}</p>", "<h2>Summary</h2>",
            f'<table class="summary"><thead><tr><th></th>{head}</tr></thead><tbody>{rows}'
            "</tbody></table>", f'<p class="note">{html.escape(_NOTE)}</p>']
    # the rooflines side by side: each device's figure's traces into one column of subplots
    side = make_subplots(rows=1, cols=len(reps), subplot_titles=[r.device.name for r in reps],
                         horizontal_spacing=0.06)
    for j, r in enumerate(reps, start=1):
        single = roofline_figure(r, go)
        for tr in single.data:
            tr.legendgroup = tr.name
            tr.showlegend = j == 1 and tr.mode == "markers"
            side.add_trace(tr, row=1, col=j)
        side.update_xaxes(type="log", range=single.layout.xaxis.range, row=1, col=j,
                          title="FLOP / byte")
        side.update_yaxes(type="log", range=single.layout.yaxis.range, row=1, col=j,
                          title="FLOP/s" if j == 1 else None)
    side.update_layout(height=520, title="Rooflines (hover a point; drag to zoom)",
                       margin=dict(l=60, r=20, t=80, b=60))
    body += ["<h2>Rooflines</h2>", _fig_html(side, first=True)]
    # t_lower per layer type, one bar per device
    per = [{(g["phase"], g["name"], g["op"]): g["t_lower"] for g in _groups(r)} for r in reps]
    keys = sorted(set().union(*per), key=lambda k: -max(p.get(k, 0.0) for p in per))
    labels = [f"{ph}: {name.removeprefix('model.')}" + (f" ({op})" if op != "matmul" else "")
              for ph, name, op in keys]
    bars = go.Figure([go.Bar(y=labels[::-1], x=[p.get(k, 0.0) * 1e3 for k in keys][::-1],
                             orientation="h", name=r.device.key,
                             hovertemplate="%{y}<br>" + r.device.key + " %{x:.4f} ms"
                                           "<extra></extra>")
                      for r, p in zip(reps, per)])
    bars.update_layout(barmode="group", height=140 + 12 * len(reps) * len(keys),
                       title="t_lower per layer type (repeated layers summed)", xaxis_title="ms",
                       yaxis=dict(automargin=True, tickfont=dict(size=10)),
                       margin=dict(l=20, r=20, t=60, b=50))
    body += ["<h2>Time per layer type</h2>", _fig_html(bars, first=False)]
    for k, r in enumerate(reps):
        body += [f"<details><summary>Layers on {html.escape(r.device.name)}</summary>",
                 _table(f"layers-{k}", _table_data(r),
                        f"{r.model}-{r.device.key}-{r.phase}.csv"), "</details>"]
    return _page(title, body)


# ----------------------------------------------------------------------------- training
_PASS_CSS = {"forward": "#1f77b4", "backward": "#ff7f0e", "recompute": "#2ca02c"}
_MEM_CSS = {"weights": "#8c564b", "gradients": "#e377c2", "optimizer": "#9467bd",
            "activations": "#17becf"}        # apart from the passes' colours


def _seconds(r, pred: bool) -> float:
    return r.t_pred if pred else r.t_lower


def train_groups(rep) -> list[dict]:
    """Per layer type of a :class:`~costmodel.training.TrainReport` (repeated layers summed, a
    record's ``.grad`` and ``.recompute`` copies folded into its forward layer): the dense FLOPs
    and the seconds of each pass, per GPU per step -- the records describe one micro-batch of
    the whole model, a GPU runs ``microbatches`` of them over ``1 / pp`` of the layers, so the
    times sum to ``rep.time_parts["compute_s"]``.  Sorted by time, the costliest first."""
    per_step = rep.options["microbatches"] / rep.options["pp"]
    pred = rep.device.profile is not None
    out: dict[tuple, dict] = {}
    for r in rep.layers:
        name = r.block.removesuffix(".grad").removesuffix(".recompute")
        g = out.setdefault((name, r.op), {"name": name, "op": r.op,
                                          "flops": dict.fromkeys(_PASS_CSS, 0.0),
                                          "time": dict.fromkeys(_PASS_CSS, 0.0)})
        kind = r.phase if r.phase in ("backward", "recompute") else "forward"
        g["flops"][kind] += r.flops_dense * per_step
        g["time"][kind] += _seconds(r, pred) * per_step
    return sorted(out.values(), key=lambda g: -sum(g["time"].values()))


def _type_label(name: str, op: str) -> str:
    return name.removeprefix("model.") + (f" ({op})" if op != "matmul" else "")


def train_breakdown_figure(rep, go=None):
    """FLOPs (left) and time (right) per layer type, forward / backward / recompute stacked."""
    go = go or _go()
    from plotly.subplots import make_subplots
    rows = train_groups(rep)[::-1]                  # plotly draws the first category at the bottom
    labels = [_type_label(g["name"], g["op"]) for g in rows]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=["TFLOP per step (dense)", "ms per step"])
    for kind in _PASS_CSS:
        if not any(g["time"][kind] or g["flops"][kind] for g in rows):
            continue
        for col, key, scale, unit in ((1, "flops", 1e-12, "TFLOP"), (2, "time", 1e3, "ms")):
            fig.add_trace(go.Bar(y=labels, x=[g[key][kind] * scale for g in rows],
                                 orientation="h", name=kind, legendgroup=kind,
                                 showlegend=col == 1, marker_color=_PASS_CSS[kind],
                                 hovertemplate="%{y}<br>" + kind + " %{x:.4g} " + unit
                                               + "<extra></extra>"), row=1, col=col)
    fig.update_layout(barmode="stack", height=160 + 18 * len(rows),
                      title=f"Per layer type, per GPU per step: total "
                            f"{fmt_time(rep.time_parts['compute_s'])} of compute",
                      margin=dict(l=20, r=20, t=90, b=40),
                      legend=dict(orientation="h", y=1.0, x=1, xanchor="right",
                                  yanchor="bottom"))
    fig.update_yaxes(automargin=True, tickfont=dict(size=10), row=1, col=1)
    return fig


def train_step_figure(rep, go=None):
    """Two stacked bars: memory per GPU by kind against the device's capacity, and the step's
    time by where it goes (forward, backward, recompute, pipeline bubble, data-parallel
    communication)."""
    go = go or _go()
    from plotly.subplots import make_subplots
    dev, mem = rep.device, rep.memory
    fig = make_subplots(rows=2, cols=1, vertical_spacing=0.4,
                        subplot_titles=[f"memory per GPU: {fmt_bytes(mem['total'])} of "
                                        f"{fmt_bytes(dev.memory)} "
                                        + ("(fits)" if rep.fits else "(DOES NOT FIT)"),
                                        f"time per step: {fmt_time(rep.time_per_step)}"])
    for kind, color in _MEM_CSS.items():
        fig.add_trace(go.Bar(y=["memory"], x=[mem[kind] / 1e9], orientation="h", name=kind,
                             marker_color=color, legendgroup="memory",
                             text=[kind], textposition="inside", insidetextanchor="middle",
                             customdata=[[fmt_bytes(mem[kind]),
                                          f"{100 * mem[kind] / dev.memory:.1f}%"]],
                             hovertemplate=kind + " %{customdata[0]} (%{customdata[1]} of the "
                                           "device)<extra></extra>"), row=1, col=1)
    fig.add_vline(x=dev.memory / 1e9, line=dict(color="#c62828", dash="dash", width=2),
                  annotation_text=f"capacity {fmt_bytes(dev.memory)}",
                  annotation_position="top", row=1, col=1)
    fig.update_xaxes(title="GB", range=[0, max(mem["total"], dev.memory) / 1e9 * 1.08],
                     row=1, col=1)
    passes = {k: 0.0 for k in _PASS_CSS}
    for g in train_groups(rep):
        for k in passes:
            passes[k] += g["time"][k]
    parts = [(k, v, _PASS_CSS[k]) for k, v in passes.items()]
    parts += [("pipeline bubble", rep.time_parts["bubble_s"], "#7f7f7f"),
              ("data-parallel communication", rep.time_parts["dp_comm_s"], "#d62728")]
    for kind, t, color in parts:
        if t <= 0:
            continue
        fig.add_trace(go.Bar(y=["step"], x=[t * 1e3], orientation="h", name=kind,
                             marker_color=color, legendgroup="time", text=[kind],
                             textposition="inside", insidetextanchor="middle",
                             customdata=[[fmt_time(t), f"{100 * t / rep.time_per_step:.1f}%"]],
                             hovertemplate=kind + " %{customdata[0]} (%{customdata[1]} of the "
                                           "step)<extra></extra>"), row=2, col=1)
    fig.update_xaxes(title="ms", row=2, col=1)
    fig.update_layout(barmode="stack", height=400, margin=dict(l=20, r=20, t=60, b=40),
                      legend=dict(orientation="h", y=-0.3, x=0, traceorder="normal"))
    return fig


def _train_summary(rep, run: dict | None) -> list[tuple[str, str]]:
    o, m, dev = rep.options, rep.memory, rep.device
    extra = [f"LoRA r={o['lora_rank']} on {', '.join(o['lora_targets'])}"] if o["lora_rank"] \
        else []
    extra += [f"frozen {', '.join(o['freeze'])}"] if o["freeze"] else []
    rows = [("model", f"{rep.model} ({rep.params:,} parameters, {rep.trainable_params:,} "
                      "trained)"),
            ("devices", f"{rep.gpus} x {dev.name} [{dev.key}]"),
            ("parallelism", f"dp {o['dp']}, tp {o['tp']}, pp {o['pp']}, ZeRO-{o['zero_stage']}, "
                            f"{o['microbatches']} micro-batches per replica"),
            ("training", ", ".join([f"batch {o['batch']}", f"seq_len {o['seq_len']}", o["dtype"],
                                    o["optimizer"], f"recompute {o['recompute']}"] + extra)),
            ("FLOPs per step", f"{rep.flops_per_step:.4g} (forward {rep.flops_forward:.4g}, "
                               f"model FLOPs {rep.model_flops_per_step:.4g})"),
            ("time per step", fmt_time(rep.time_per_step) + " (" + ", ".join(
                f"{k.removesuffix('_s')} {fmt_time(v)}" for k, v in rep.time_parts.items())
             + ")"),
            ("MFU", f"{rep.mfu:.1%}"),
            ("per step", f"{rep.samples_per_step:,} samples, {rep.tokens_per_step:,} tokens"),
            ("memory per GPU", ", ".join(f"{k} {fmt_bytes(m[k])}" for k in _MEM_CSS)
             + f"; total {fmt_bytes(m['total'])} of {fmt_bytes(dev.memory)}"),
            ("fits", str(rep.fits))]
    if run:
        energy = (f"{run['energy_kwh']:,.0f} kWh at {dev.tdp:.0f} W per GPU"
                  if run["energy_kwh"] is not None else "- (the device has no tdp_w)")
        rows += [("run", f"{run['steps']:,} steps, {run['wall_days']:,.2f} days on {run['gpus']} "
                         f"GPUs, {run['gpu_hours']:,.0f} GPU-hours"),
                 ("run energy", energy)]
    return rows


_TRAIN_NOTE = ("Records of one micro-batch on one GPU: forward (the workload's analyze() "
               "phase), backward (.grad) and recompute (.recompute); the bars multiply them by "
               "the micro-batches per step and divide by the pipeline stages. Dense FLOPs "
               "(matrix products, convolutions, attention). Times: t_pred on a calibrated device, "
               "else the roofline bound t_lower.")


def train_html(rep, tokens: float | None = None, samples: float | None = None) -> str:
    """A :class:`~costmodel.training.TrainReport` as a self-contained page: the summary (with a
    run's totals when ``tokens`` or ``samples`` is given), memory and step time as stacked bars,
    FLOPs and time per layer type and pass, and the record table."""
    go = _go()
    run = rep.summary(tokens=tokens, samples=samples) if (tokens, samples) != (None, None) \
        else None
    title = f"{rep.model} training on {rep.gpus} x {rep.device.name}"
    body = [f"<h1>{html.escape(title)}</h1>", "<h2>Summary</h2>",
            _summary_table(_train_summary(rep, run)),
            f'<p class="note">{html.escape(_TRAIN_NOTE)}</p>',
            "<h2>Memory and time per step</h2>", _fig_html(train_step_figure(rep, go), True),
            "<h2>Per layer type</h2>", _fig_html(train_breakdown_figure(rep, go), False),
            "<h2>Records</h2>",
            _table("layers", _layer_table_data(rep.layers, sum(r.t_lower for r in rep.layers),
                                               rep.device.profile is not None),
                   f"{rep.model}-{rep.device.key}-train.csv")]
    return _page(title, body)


# ----------------------------------------------------------------------------- serving
_Q_STYLE = {"p50": dict(dash="solid", symbol="circle"), "p99": dict(dash="dash", symbol="square")}
_MAX_TRACE_POINTS = 4000          # the batch-over-time plot draws at most this many iterations


def _workload(st: dict) -> str:
    return (f"prompt {st['prompt_len']}, output {st['output_len']}, {st['duration']:g} s of "
            f"arrivals, seed {st['seed']}, "
            + (f"chunked prefill {st['chunked_prefill']}" if st["chunked_prefill"]
               else "whole prefill") + f", block {st['block_size']}, max batch "
            f"{st['max_batch'] or '-'}, memory fraction {st['memory_fraction']:g}")


def _latencies(res):
    """Per finished request: ids, TTFT and TPOT (seconds; TPOT NaN for one-token answers)."""
    import numpy as np
    rec = res.records
    ok = rec["status"] == 0
    ttft = rec["first_token"] - rec["arrival"]                           # [n]
    steps = rec["output_len"] - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(steps > 0, (rec["finish"] - rec["first_token"]) / np.maximum(steps, 1),
                        np.nan)                                         # [n]
    return rec, ok, ttft, tpot


def latency_figure(results, go=None):
    """Empirical CDFs of TTFT (left) and TPOT (right) over the finished requests, one line per
    result; hover names the request and its lengths."""
    go = go or _go()
    import numpy as np
    from plotly.subplots import make_subplots
    fig = make_subplots(rows=1, cols=2, subplot_titles=["time to first token",
                                                        "time per output token"])
    for i, res in enumerate(results):
        rec, ok, ttft, tpot = _latencies(res)
        name = f"{res.settings['arrival_rate']:g} req/s"
        for col, vals in ((1, ttft), (2, tpot)):
            keep = np.flatnonzero(ok & np.isfinite(vals))
            keep = keep[np.argsort(vals[keep])]                          # ascending latency
            if not len(keep):
                continue
            y = (np.arange(len(keep)) + 1) / len(keep)
            data = [[int(rec["id"][j]), int(rec["prompt_len"][j]), int(rec["output_len"][j]),
                     int(rec["preemptions"][j]), name] for j in keep]
            fig.add_trace(go.Scatter(
                x=vals[keep] * 1e3, y=y, mode="lines", line_shape="hv", name=name,
                legendgroup=name, showlegend=col == 1, customdata=data,
                line=dict(color=_COLORS[i % len(_COLORS)]),
                hovertemplate="request %{customdata[0]} (%{customdata[4]})<br>%{x:.3f} ms"
                              "<br>prompt %{customdata[1]}, output %{customdata[2]}, "
                              "preempted %{customdata[3]}x<br>CDF %{y:.3f}<extra></extra>"),
                row=1, col=col)
    for col in (1, 2):
        fig.update_xaxes(type="log", title="ms", row=1, col=col)
        fig.update_yaxes(title="share of requests" if col == 1 else None, range=[0, 1.02],
                         row=1, col=col)
    if len(results) == 1:                             # the percentiles of the one run
        s = results[0].summary
        for col, key in ((1, "ttft"), (2, "tpot")):
            for q in ("p50", "p99"):
                v = s[f"{key}_{q}"]
                if math.isfinite(v) and v > 0:       # a trace: exact on the log axis
                    at = 0.9 if q == "p50" else 0.1        # left of the line, off the curve
                    fig.add_trace(go.Scatter(x=[v * 1e3] * 3, y=[0, at, 1], mode="lines+text",
                                             text=["", f"{q} {ms_text(v)} ", ""],
                                             textposition="middle left", showlegend=False,
                                             line=dict(color="#555", dash="dot", width=1),
                                             hoverinfo="skip"), row=1, col=col)
    fig.update_layout(height=420, title="Latency per request (empirical CDF)",
                      margin=dict(l=60, r=20, t=80, b=50), hovermode="closest")
    return fig


_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


def batch_figure(res, go=None):
    """The per-iteration trace (``serve(debug=True)``): sequences decoding and requests in the
    system over time (left axis), KV blocks in use (right axis)."""
    go = go or _go()
    tr = res.trace
    step = max(1, math.ceil(len(tr) / _MAX_TRACE_POINTS))
    tr = tr[::step]
    t = tr["t_start"].tolist()
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=t, y=tr["decoding"].tolist(), mode="lines", line_shape="hv",
                             name="decoding (batch)", line=dict(color="#1f77b4"),
                             hovertemplate="t %{x:.3f} s<br>decoding %{y}<extra></extra>"))
    fig.add_trace(go.Scatter(x=t, y=tr["in_system"].tolist(), mode="lines", line_shape="hv",
                             name="in the system (running + waiting)",
                             line=dict(color="#ff7f0e", width=1),
                             hovertemplate="t %{x:.3f} s<br>in the system %{y}<extra></extra>"))
    fig.add_trace(go.Scatter(x=t, y=(100 * tr["blocks_used"] / res.summary["kv_blocks"]).tolist(),
                             mode="lines", line_shape="hv", yaxis="y2", name="KV blocks used (%)",
                             line=dict(color="#2ca02c", width=1, dash="dot"),
                             hovertemplate="t %{x:.3f} s<br>KV blocks %{y:.1f}%<extra></extra>"))
    fig.update_layout(height=380, xaxis_title="simulated time (s)",
                      title="Batch over time" + (f" (every {step}th iteration)" if step > 1
                                                 else ""),
                      yaxis=dict(title="sequences", rangemode="tozero"),
                      yaxis2=dict(title="KV blocks used (%)", overlaying="y", side="right",
                                  range=[0, 105], showgrid=False),
                      legend=dict(orientation="h", y=1.02, x=1, xanchor="right",
                                  yanchor="bottom"),
                      margin=dict(l=60, r=60, t=80, b=50))
    return fig


def _serve_summary(res) -> list[tuple[str, str]]:
    st = res.settings
    return [("model", f"{st['model']} on {st['device']} ({st['dtype'] or 'default dtype'}, "
                      f"tp {st['tp']})"),
            ("workload", f"{st['arrival_rate']:g} req/s; " + _workload(st)),
            *res.summary_rows()]


_STATUS = {0: "finished", 1: "unfinished", 2: "refused"}
_REQ_COLUMNS = [("id", "request", "num"), ("arrival", "arrival", "time"),
                ("ttft", "TTFT", "time"), ("tpot", "TPOT", "time"),
                ("finish", "finish", "time"), ("prompt_len", "prompt", "num"),
                ("output_len", "output", "num"), ("status", "status", "text"),
                ("preemptions", "preempted", "num")]


def _request_table_data(res) -> dict:
    rec, _, ttft, tpot = _latencies(res)
    rows = [[int(r["id"]), float(r["arrival"]), _finite(float(a)), _finite(float(b)),
             _finite(float(r["finish"])), int(r["prompt_len"]), int(r["output_len"]),
             _STATUS[int(r["status"])], int(r["preemptions"])]
            for r, a, b in zip(rec, ttft, tpot)]
    return _columns(_REQ_COLUMNS, rows)


def serve_html(res) -> str:
    """One :class:`~costmodel.serving.ServeResult` as a self-contained page: the summary, the
    TTFT / TPOT distributions, the batch over time (when the run kept its trace:
    ``serve(debug=True)``) and one table row per request."""
    go = _go()
    st = res.settings
    title = f"Serving {st['model']} on {st['device']} at {st['arrival_rate']:g} req/s"
    body = [f"<h1>{html.escape(title)}</h1>", "<h2>Summary</h2>",
            _summary_table(_serve_summary(res)), "<h2>Latency</h2>",
            _fig_html(latency_figure([res], go), first=True)]
    if res.trace is not None and len(res.trace):
        body += ["<h2>Batch over time</h2>", _fig_html(batch_figure(res, go), first=False)]
    else:
        body.append('<p class="note">No per-iteration trace: run serve(debug=True) for the batch '
                    "over time.</p>")
    body += ["<h2>Requests</h2>",
             _table("requests", _request_table_data(res),
                    f"{st['model']}-{st['device']}-serve-{st['arrival_rate']:g}.csv")]
    return _page(title, body)


def curve_figure(results, go=None):
    """Throughput (output tokens/s) against TTFT (left) and TPOT (right), p50 and p99, one point
    per arrival rate (labelled with it); hover gives the rate and its figures."""
    go = go or _go()
    from plotly.subplots import make_subplots

    from .serving import curve_rows
    rows = curve_rows(results)
    x = [r["throughput_tps"] for r in rows]
    data = [[f"{r['arrival_rate']:g}", f"{r['throughput_rps']:.3f}", f"{r['mean_batch']:.1f}",
             r["preemptions"], r["finished"], r["unfinished"] + r["refused"]] for r in rows]
    fig = make_subplots(rows=1, cols=2, subplot_titles=["time to first token",
                                                        "time per output token"])
    for col, key, color in ((1, "ttft", "#d62728"), (2, "tpot", "#1f77b4")):
        for q, style in _Q_STYLE.items():
            ys = [r[f"{key}_{q}"] * 1e3 if math.isfinite(r[f"{key}_{q}"]) else None for r in rows]
            fig.add_trace(go.Scatter(
                x=x, y=ys, mode="lines+markers+text" if q == "p99" else "lines+markers",
                text=[f"{d[0]}/s" for d in data] if q == "p99" else None,
                textposition="top center", textfont=dict(size=10),
                name=f"{key.upper()} {q}", customdata=data,
                line=dict(color=color, dash=style["dash"]),
                marker=dict(symbol=style["symbol"], size=8),
                hovertemplate="<b>%{customdata[0]} req/s</b><br>" + f"{key.upper()} {q} "
                              "%{y:.3f} ms<br>%{x:,.1f} output tok/s, %{customdata[1]} req/s"
                              "<br>mean batch %{customdata[2]}, preemptions %{customdata[3]}"
                              "<br>finished %{customdata[4]}, not %{customdata[5]}"
                              "<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title="throughput (output tokens/s)", row=1, col=col)
        fig.update_yaxes(type="log", title="ms", row=1, col=col)
    st = results[0].settings
    fig.update_layout(height=480, hovermode="closest",
                      title=f"Throughput vs latency: {st['model']} on {st['device']} "
                            "(labels: arrival rate)",
                      margin=dict(l=60, r=20, t=90, b=60))
    return fig


def _curve_table_data(results) -> dict:
    from .serving import CURVE_FIELDS, curve_rows
    kinds = {"arrival_rate": "num", "throughput_rps": "num", "throughput_tps": "num",
             "mean_batch": "num"}
    cols = [(f, f, kinds.get(f, "time" if f[:4] in ("ttft", "tpot") else "num"))
            for f in CURVE_FIELDS]
    return _columns(cols, [[_finite(r[f]) for f in CURVE_FIELDS] for r in curve_rows(results)])


def curve_html(results) -> str:
    """A sweep (:func:`costmodel.serving.sweep`, ``costmodel serve --rates``) as a self-contained
    page: the throughput-latency curve, the latency distributions per rate and the curve's
    table (one row per rate, CSV download)."""
    if not results:
        raise ValueError("curve_html needs at least one serving result")
    go = _go()
    st = results[0].settings
    title = f"Serving {st['model']} on {st['device']}: throughput vs latency"
    rows = [("model", f"{st['model']} on {st['device']} ({st['dtype'] or 'default dtype'}, tp "
                      f"{st['tp']})"),
            ("arrival rates", ", ".join(f"{r.settings['arrival_rate']:g}" for r in results)
             + " req/s (Poisson)"), ("workload", _workload(st))]
    body = [f"<h1>{html.escape(title)}</h1>", "<h2>Summary</h2>", _summary_table(rows),
            "<h2>Throughput-latency curve</h2>", _fig_html(curve_figure(results, go), first=True),
            "<h2>Latency per request, per rate</h2>",
            _fig_html(latency_figure(results, go), first=False), "<h2>Per rate</h2>",
            _table("curve", _curve_table_data(results), f"{st['model']}-{st['device']}-curve.csv")]
    return _page(title, body)


# ----------------------------------------------------------------------------- validation
def validation_figure(v, go=None):
    """Predicted (t_pred) against measured per kernel call on log-log axes, one trace per op,
    the line y = x and +-25 % around it; t_lower as a hidden trace (click its legend entry)."""
    go = go or _go()
    calls = [c for c in v.layers if c.measured > 0 and c.t_pred > 0]
    fig = go.Figure()
    if not calls:
        fig.add_annotation(text="no kernel call with a measured and a predicted time",
                           showarrow=False)
        return fig
    vals = [c.measured for c in calls] + [c.t_pred for c in calls]
    lo, hi = min(vals) / 2, max(vals) * 2
    for k, (name, dash) in {1.0: ("predicted = measured", "solid"),
                            1.25: ("+-25 %", "dot"), 0.8: ("+-25 %", "dot")}.items():
        fig.add_trace(go.Scatter(x=[lo * 1e6, hi * 1e6], y=[lo * k * 1e6, hi * k * 1e6],
                                 mode="lines", name=name, showlegend=k != 0.8, legendgroup=name,
                                 line=dict(color="black" if k == 1 else "#999", dash=dash),
                                 hoverinfo="skip"))
    by_op: dict[str, list] = {}
    for c in calls:
        by_op.setdefault(c.op, []).append(c)

    def points(rs, y, name, visible=True, symbol="circle"):
        data = [[c.name, c.op, c.shapes, fmt_time(c.measured), fmt_time(c.t_pred),
                 f"{100 * c.error:+.1f}%", fmt_time(c.t_lower)] for c in rs]
        return go.Scatter(
            x=[c.measured * 1e6 for c in rs], y=[y(c) * 1e6 for c in rs], mode="markers",
            name=name, customdata=data, visible=True if visible else "legendonly",
            marker=dict(color=_OP_CSS.get(rs[0].op, "black") if visible else "#7f7f7f",
                        symbol=symbol, size=8, line=dict(width=1)),
            hovertemplate="<b>%{customdata[0]}</b><br>op %{customdata[1]}<br>shapes "
                          "%{customdata[2]}<br>measured %{customdata[3]}<br>predicted "
                          "%{customdata[4]} (error %{customdata[5]})<br>t_lower "
                          "%{customdata[6]}<extra></extra>")
    for op, rs in sorted(by_op.items()):
        fig.add_trace(points(rs, lambda c: c.t_pred, f"{op} ({len(rs)})"))
    fig.add_trace(points(calls, lambda c: c.t_lower, "t_lower (the bound)", visible=False,
                         symbol="x"))
    span = [math.log10(lo * 1e6), math.log10(hi * 1e6)]
    fig.update_xaxes(type="log", range=span, title="measured (us)")
    fig.update_yaxes(type="log", range=span, title="predicted t_pred (us)")
    fig.update_layout(height=620, title=f"Predicted vs measured per kernel call: {v.model}, "
                                        f"{v.phase}, {v.backend}",
                      margin=dict(l=70, r=20, t=60, b=60), hovermode="closest")
    return fig


_VAL_COLUMNS = [("name", "layer", "text"), ("op", "op", "text"), ("scope", "scope", "text"),
                ("shapes", "shapes", "text"), ("measured", "measured", "time"),
                ("t_pred", "t_pred", "time"), ("error", "error %", "pct"),
                ("t_lower", "t_lower", "time"), ("tightness", "t_lower / measured", "num")]


def validation_html(v) -> str:
    """A :class:`~costmodel.validate.Validation` as a self-contained page: the summary, the
    predicted-vs-measured scatter and one table row per kernel call."""
    go = _go()
    title = f"{v.model}: predicted vs measured ({v.phase}, {v.backend})"
    pred_k = sum(c.t_pred for c in v.layers)
    rows = [("model", v.model), ("workload", f"phase {v.phase}, " + ", ".join(
                f"{k}={x}" for k, x in v.options.items())),
            ("backend / device", f"{v.backend} on {v.device}"),
            ("profile measured", str(v.profile.get("measured_at", "?"))),
            ("repeats", f"median of {v.repeats} runs"),
            ("kernels", f"{len(v.layers)} calls, measured {fmt_time(v.kernel_s)}, predicted "
                        f"{fmt_time(pred_k)}"),
            ("per layer", f"median |error| {100 * v.median_error:.1f} %, worst "
                          f"{100 * v.worst_error:.1f} % (the {len(v.main)} calls with >= 1 % of "
                          "the kernel time)"),
            ("end to end", f"measured {fmt_time(v.wall_s)}, predicted {fmt_time(v.pred_s)}: "
                           f"error {100 * v.e2e_error:+.1f} %"),
            ("lower bound", f"{len(v.bound_violations)} call(s) measured below t_lower; median "
                            f"t_lower / measured {v.tightness:.2f}")]
    data = _columns(_VAL_COLUMNS, [[c.name, c.op, c.scope, c.shapes, c.measured, c.t_pred,
                                    _finite(100 * c.error), c.t_lower, _finite(c.tightness)]
                                   for c in v.layers])
    body = [f"<h1>{html.escape(title)}</h1>", "<h2>Summary</h2>", _summary_table(rows),
            "<h2>Predicted vs measured</h2>", _fig_html(validation_figure(v, go), first=True),
            "<h2>Kernel calls</h2>",
            _table("calls", data, f"{v.model}-{v.backend}-{v.phase}-validate.csv")]
    return _page(title, body)
