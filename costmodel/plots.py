"""Plots of a report (matplotlib, imported on first use; the Agg backend, so no display is needed).

* :func:`roofline` -- every record a point at (arithmetic intensity, attained FLOP/s bound), under
  the device's memory roof, its tensor-core roof(s) at the report's dtypes and its vector roof.
  Only the costliest layer types (the top ``label_top`` by time) get a text label; the points
  are told apart by op in the legend.
* :func:`breakdown` -- per-layer-type time (t_lower), split into the compute-bound,
  memory-bound and collective parts of its records (see :func:`time_parts`), largest first.

Both return the figure; the legends list only what was drawn.
"""
from __future__ import annotations

from pathlib import Path

from .report import grouped

__all__ = ["roofline", "breakdown", "save", "time_parts", "PART_COLORS"]

_COLORS = {"matmul": "tab:blue", "conv": "tab:cyan", "attention": "tab:red",
           "rms_norm": "tab:green", "layer_norm": "tab:green", "gelu": "tab:olive",
           "elementwise": "tab:olive", "embedding": "tab:gray", "allreduce": "tab:purple"}
# a distinct marker per op, so that points landing on one spot (a decode step's attention and
# its projections, all near 1 FLOP/byte) stay visible: hollow markers are drawn over filled ones
_MARKERS = {"matmul": ("o", True, 30), "conv": ("s", True, 30), "attention": ("D", False, 70),
            "rms_norm": ("^", True, 30), "layer_norm": ("^", True, 30), "gelu": ("v", True, 30),
            "elementwise": ("v", True, 30), "embedding": ("X", True, 40),
            "allreduce": ("P", True, 40)}
PART_COLORS = {"compute": "tab:orange", "memory": "tab:blue", "collective": "tab:purple"}


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def time_parts(layers) -> dict[str, float]:
    """Split the t_lower of some records into where each record's time goes: its collective
    (``t_comm``) and the rest, max(compute, memory), to "compute" or "memory" by which of the two
    is larger for that record.  The parts sum to Σ t_lower."""
    out = {"compute": 0.0, "memory": 0.0, "collective": 0.0}
    for r in layers:
        rest = r.t_lower - r.t_comm
        out["collective"] += r.t_comm
        out["compute" if r.t_compute >= r.t_memory else "memory"] += rest
    return out


def _groups(rep) -> list[dict]:
    """grouped(rep) rows with their time parts added (the records of a row: same phase, layer
    type and op)."""
    rows = grouped(rep)
    index = {(g["phase"], g["name"], g["op"]): g for g in rows}
    members: dict[tuple, list] = {}
    for r in rep.layers:
        members.setdefault((r.phase, r.block, r.op), []).append(r)
    for key, g in index.items():
        g["parts"] = time_parts(members[key])
    return rows


def _short(name: str) -> str:
    """The last two parts of a module path, without the '*' of repeated layers."""
    parts = [p for p in name.split(".") if p != "*"]
    return ".".join(parts[-2:])


def roofline(rep, ax=None, label_top: int = 5):
    """Draw the roofline of ``rep`` into ``ax`` (a new figure when None); returns the figure.

    Every record with FLOPs and bytes is a point; the ``label_top`` layer types with the most
    time get a label (types at one point share it), placed where it overlaps no other label."""
    plt = _plt()
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(10, 6), dpi=110)
    dev = rep.device
    pts = [r for r in rep.layers if r.bytes > 0 and r.flops > 0 and r.t_lower > 0]
    if not pts:
        raise ValueError("the report has no layer with both FLOPs and bytes to place on a roofline")
    xs = [r.intensity for r in pts]
    ys = [r.flops / r.t_lower for r in pts]
    dtypes = sorted({r.dtype for r in pts
                     if r.op in ("matmul", "conv", "attention") and dev.supports(r.dtype)},
                    key=dev.peak)
    top_peak = max([dev.peak(dt) for dt in dtypes] + [dev.vector_peak])
    # the x range reaches past the highest ridge point (every roof drawn with its corner) and
    # holds every point; the y range holds every point and the highest roof
    lo, hi = min(xs + [0.1]) / 3, max(xs + [top_peak / dev.bandwidth]) * 4
    grid = [lo * (hi / lo) ** (i / 400) for i in range(401)]   # log-spaced intensities
    ax.plot(grid, [min(dev.bandwidth * x, top_peak) for x in grid], color="black", lw=1.4,
            label=f"memory roof {dev.bandwidth / 1e9:,.0f} GB/s")
    for dt, ls in zip(dtypes, ("--", "-.", (0, (5, 1)), (0, (3, 1, 1, 1)))):
        roof = [dev.peak(dt) for x in grid if dev.bandwidth * x >= dev.peak(dt)]
        ax.plot(grid[len(grid) - len(roof):], roof, color="tab:blue", ls=ls, lw=1.2,
                label=f"tensor {dt} roof {dev.peak(dt) / 1e12:,.1f} TFLOP/s")
    vroof = [dev.vector_peak for x in grid if dev.bandwidth * x >= dev.vector_peak]
    ax.plot(grid[len(grid) - len(vroof):], vroof, color="tab:green", ls=":", lw=1.2,
            label=f"vector fp32 roof {dev.vector_peak / 1e12:,.1f} TFLOP/s")
    # one scatter per op, hollow markers last so they stay visible over coinciding filled ones
    by_op: dict[str, list] = {}
    for r, x, y in zip(pts, xs, ys):
        by_op.setdefault(r.op, []).append((x, y))
    for op in sorted(by_op, key=lambda op: _MARKERS.get(op, ("o", True, 30))[1], reverse=True):
        marker, filled, size = _MARKERS.get(op, ("o", True, 30))
        color = _COLORS.get(op, "black")
        ax.scatter([p[0] for p in by_op[op]], [p[1] for p in by_op[op]], s=size, marker=marker,
                   facecolors=color if filled else "none", edgecolors=color,
                   linewidths=1.5 if not filled else 0.5, alpha=0.8 if filled else 1.0,
                   label=f"{op} ({len(by_op[op])})", zorder=4 if filled else 5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(min(ys + [dev.bandwidth * lo]) / 3, top_peak * 3)
    ax.set_xlabel("arithmetic intensity (FLOP / byte of DRAM traffic)")
    ax.set_ylabel("attained FLOP/s at the roofline bound")
    ax.set_title(f"{rep.model} · {rep.phase} · {rep.device.name}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(True, which="both", alpha=0.2)
    if fig is not None:
        fig.tight_layout()                       # the final layout first: labels are placed in it
    _label_top(rep, ax, label_top)
    return fig or ax.figure


def _label_top(rep, ax, k: int) -> None:
    """Label the k costliest layer types.  Types whose points coincide on screen (within a few
    pixels) share one label; each label goes to the first of a ring of offsets around its point
    where its box overlaps no label placed before and stays inside the axes.  Placement is in
    screen space: call it once the figure's layout is final (labels stay out of the layout)."""
    total = rep.total["t_lower"] or 1.0
    top = [g for g in sorted(_groups(rep), key=lambda g: -g["t_lower"])
           if g["bytes"] and g["flops"] and g["t_lower"]][:k]
    if not top:
        return
    to_px = ax.transData.transform
    spots: list[tuple[tuple, list[str]]] = []        # (data point, label lines)
    for g in top:
        at = (g["intensity"], g["flops"] / g["t_lower"])
        px = to_px(at)
        line = f"{_short(g['name'])} {100 * g['t_lower'] / total:.0f}%"
        for spot, lines in spots:
            if abs(to_px(spot)[0] - px[0]) < 6 and abs(to_px(spot)[1] - px[1]) < 6:
                lines.append(line)
                break
        else:
            spots.append((at, [line]))
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed = []
    offsets = [(dx * r, dy * r) for r in (14, 40, 80, 130)
               for dx, dy in ((1, -1), (1, 1), (-1, -1), (-1, 1), (0, -1.4), (0, 1.4))]
    for at, lines in spots:
        text = "\n".join(lines)
        for dx, dy in offsets:
            ann = ax.annotate(text, at, xytext=(dx, dy), textcoords="offset points", fontsize=7,
                              ha="left" if dx >= 0 else "right", va="top" if dy < 0 else "bottom",
                              bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="0.7", alpha=0.9),
                              arrowprops=dict(arrowstyle="-", lw=0.6, color="0.4"), zorder=6)
            ann.set_in_layout(False)
            box = ann.get_window_extent(renderer)
            inside = (box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0
                      and box.y1 <= frame.y1)
            if inside and not any(box.overlaps(b) for b in placed):
                placed.append(box)
                break
            ann.remove()
        else:                                       # nowhere free: the legend-style fallback
            ann = ax.annotate(text, at, xytext=offsets[0], textcoords="offset points",
                              fontsize=7, va="top", zorder=6,
                              bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="0.7"))
            ann.set_in_layout(False)
            placed.append(ann.get_window_extent(renderer))


def breakdown(rep, ax=None, top: int = 20):
    """Horizontal stacked bars of time per layer type (t_lower, summed over repeated layers):
    the part of its records that are compute-bound, memory-bound, and their collectives (see
    :func:`time_parts`).  The ``top`` costliest types are drawn, the rest summed in one bar."""
    plt = _plt()
    fig = None
    rows = sorted(_groups(rep), key=lambda g: -g["t_lower"])
    shown, rest = rows[:top], rows[top:]
    if rest:
        parts = {p: sum(g["parts"][p] for g in rest) for p in PART_COLORS}
        shown.append({"label": f"the other {len(rest)} layer types", "parts": parts})
    shown = shown[::-1]                          # barh draws bottom-up: largest on top
    if ax is None:
        fig, ax = plt.subplots(figsize=(10, 0.32 * len(shown) + 1.6), dpi=110)
    names = [g.get("label") or f"{g['phase']}: {g['name'].removeprefix('model.')}"
             + (f" ({g['op']})" if g["op"] != "matmul" else "") for g in shown]
    left = [0.0] * len(shown)
    for part, color in PART_COLORS.items():
        widths = [g["parts"][part] * 1e3 for g in shown]
        if not any(widths):                      # only what is drawn goes in the legend
            continue
        ax.barh(names, widths, left=left, color=color, label=f"{part}-bound"
                if part != "collective" else "collective (interconnect)")
        left = [a + w for a, w in zip(left, widths)]
    # the bars' sticky edges would end the axis at the longest bar: leave it some room
    ax.set_xlim(0, max(left) * 1.06 or 1.0)
    ax.set_xlabel("time at the roofline bound (ms, summed over repeated layers)")
    ax.set_title(f"{rep.model} · {rep.phase} · {rep.device.name}: "
                 f"total {rep.total['t_lower'] * 1e3:,.3f} ms", fontsize=10)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, axis="x", alpha=0.2)
    return fig or ax.figure


def save(rep, path, kind: str = "roofline") -> Path:
    """Write a PNG: kind "roofline", "breakdown" or "both" (side by side)."""
    plt = _plt()
    path = Path(path)
    if kind == "roofline":
        fig = roofline(rep)
    elif kind == "breakdown":
        fig = breakdown(rep)
    elif kind == "both":
        fig, (a, b) = plt.subplots(1, 2, figsize=(20, 7), dpi=110,
                                   gridspec_kw={"width_ratios": [1.1, 1]})
        roofline(rep, a, label_top=0)
        breakdown(rep, b)
        fig.tight_layout()
        _label_top(rep, a, 5)
    else:
        raise ValueError(f"kind must be 'roofline', 'breakdown' or 'both', got {kind!r}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
