"""Plots of a report (matplotlib, imported on first use; the Agg backend, so no display is needed).

* :func:`roofline` -- every record a point at (arithmetic intensity, attained FLOP/s bound), under
  the device's memory roof, its tensor-core roof(s) at the report's dtypes and its vector roof.
* :func:`breakdown` -- per-layer-type time (t_lower), split into the compute and memory parts of
  each record's bound, largest first.
"""
from __future__ import annotations

from pathlib import Path

from .report import grouped

__all__ = ["roofline", "breakdown", "save"]

_COLORS = {"matmul": "tab:blue", "conv": "tab:cyan", "attention": "tab:red",
           "rms_norm": "tab:green", "layer_norm": "tab:green", "gelu": "tab:olive",
           "elementwise": "tab:olive", "embedding": "tab:gray", "allreduce": "tab:purple"}


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def roofline(rep, ax=None, label_top: int = 6):
    """Draw the roofline of ``rep`` into ``ax`` (a new figure when None); returns the figure."""
    plt = _plt()
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
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
    # the x range always reaches past the highest ridge point, so every roof is drawn with its
    # corner
    lo, hi = min(xs + [0.1]) / 2, max(xs + [top_peak / dev.bandwidth]) * 4
    grid = [lo * (hi / lo) ** (i / 400) for i in range(401)]
    # the memory roof rises until the highest compute roof; each compute roof starts at its ridge
    # point
    ax.plot(grid, [min(dev.bandwidth * x, top_peak) for x in grid], color="black", lw=1.4,
            label=f"memory roof {dev.bandwidth / 1e9:,.0f} GB/s")
    for dt in dtypes:
        roof = [dev.peak(dt) for x in grid if dev.bandwidth * x >= dev.peak(dt)]
        ax.plot(grid[len(grid) - len(roof):], roof, color="tab:blue", ls="--", lw=1.2)
        ax.text(hi / 1.2, dev.peak(dt) * 1.1, f"tensor {dt} {dev.peak(dt) / 1e12:,.1f} TFLOP/s",
                fontsize=8, color="tab:blue", ha="right")
    vroof = [dev.vector_peak for x in grid if dev.bandwidth * x >= dev.vector_peak]
    ax.plot(grid[len(grid) - len(vroof):], vroof, color="tab:green", ls=":", lw=1.2)
    ax.text(hi / 1.2, dev.vector_peak * 1.1,
            f"vector fp32 {dev.vector_peak / 1e12:,.1f} TFLOP/s (softmax, norms, "
            f"activations)", fontsize=8, color="tab:green", ha="right")
    seen = set()
    for r, x, y in zip(pts, xs, ys):
        ax.scatter([x], [y], s=18, color=_COLORS.get(r.op, "black"), alpha=0.7,
                   label=r.op if r.op not in seen else None, zorder=3)
        seen.add(r.op)
    # label the costliest layer types; layers that land on the same point share one label
    labels: dict[tuple, list[str]] = {}
    for g in sorted(grouped(rep), key=lambda g: -g["t_lower"])[:label_top]:
        if g["bytes"] and g["flops"] and g["t_lower"]:
            short = ".".join(p for p in g["name"].split(".")[-2:] if p != "*")
            at = (float(f"{g['intensity']:.3g}"), float(f"{g['flops'] / g['t_lower']:.3g}"))
            labels.setdefault(at, []).append(f"{short} ({g['phase']})" if g["phase"] else short)
    for k, (at, names) in enumerate(labels.items()):
        ax.annotate("\n".join(names), at, fontsize=7, xytext=(8, -14 - 10 * (k % 3)),
                    textcoords="offset points", va="top",
                    arrowprops=dict(arrowstyle="-", lw=0.5, color="gray"))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(min(ys + [dev.bandwidth * lo]) / 2, top_peak * 3)
    ax.set_xlabel("arithmetic intensity (FLOP / byte of DRAM traffic)")
    ax.set_ylabel("attained FLOP/s at the roofline bound")
    ax.set_title(f"{rep.model} · {rep.phase} · {rep.device.name}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, which="both", alpha=0.2)
    return fig or ax.figure


def breakdown(rep, ax=None, top: int = 20):
    """Horizontal bars of time per layer type (t_lower), compute-bound part vs memory-bound part."""
    plt = _plt()
    fig = None
    rows = sorted(grouped(rep), key=lambda g: -g["t_lower"])[:top][::-1]
    if ax is None:
        fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.5), dpi=110)
    names = [f"{g['phase']}: {g['name']}" + (f" ({g['op']})" if g["op"] not in ("matmul",) else "")
             for g in rows]
    comp = [g["t_lower"] * 1e3 if g["bound"] == "compute" else 0 for g in rows]
    mem = [g["t_lower"] * 1e3 if g["bound"] == "memory" else 0 for g in rows]
    other = [g["t_lower"] * 1e3 if g["bound"] not in ("compute", "memory") else 0 for g in rows]
    ax.barh(names, comp, color="tab:orange", label="compute-bound")
    ax.barh(names, mem, left=comp, color="tab:blue", label="memory-bound")
    ax.barh(names, other, left=[c + m for c, m in zip(comp, mem)], color="tab:purple",
            label="collective")
    ax.set_xlabel("time at the roofline bound (ms, summed over repeated layers)")
    ax.set_title(f"{rep.model} · {rep.phase} · {rep.device.name}: "
                 f"total {rep.total['t_lower'] * 1e3:,.3f} ms", fontsize=10)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=8)
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
        fig, (a, b) = plt.subplots(1, 2, figsize=(18, 7), dpi=110)
        roofline(rep, a)
        breakdown(rep, b)
    else:
        raise ValueError(f"kind must be 'roofline', 'breakdown' or 'both', got {kind!r}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
