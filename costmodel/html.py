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

plotly is an optional dependency (``pip install "pyworkloads[html]"``).
"""
from __future__ import annotations

import html
import json
import math

from .plots import _groups, time_parts
from .report import fmt_bytes, fmt_summary, fmt_time

__all__ = ["report_html", "compare_html", "INSTALL_HINT"]

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
    total = rep.total["t_lower"] or 1.0
    cols = [c for c in _COLUMNS if c[0] != "t_pred" or rep.device.profile is not None]
    rows = []
    for r in rep.layers:
        d = dict(r.as_dict(), bytes=r.bytes, share=100 * r.t_lower / total)
        rows.append([_finite(d[k]) for k, _, _ in cols])
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

    def cell(k, v):
        if isinstance(v, bool) or v is None:
            return str(v) if v is not None else "-"
        if k.endswith("_per_s"):
            return f"{v:,.1f}"
        if k.endswith("_s") or k.endswith("_per_prompt"):
            return fmt_time(v)
        return str(v)
    rows = [[k] + [cell(k, r.summary.get(k)) for r in reps] for k in keys]
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
