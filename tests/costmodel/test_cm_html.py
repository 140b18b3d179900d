"""The HTML report (costmodel.html): self-contained, drawn in a real headless browser without a
network request; and the PNG plots (costmodel.plots): labels apart, data inside the axes,
legends of what is drawn."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from itertools import combinations

import pytest

import costmodel as cm
from costmodel.cli import main
from costmodel.report import fmt_bytes, fmt_time


@pytest.fixture(scope="module")
def rep():
    return cm.analyze("llama2-110m", device="h100-sxm", phase="decode", seq_len=256)


class _Refs(HTMLParser):
    """Every tag and its src/href attributes (script bodies are raw text: not parsed as tags)."""

    def __init__(self):
        super().__init__()
        self.tags, self.refs = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [(tag, k, v or "") for k, v in attrs if k in ("src", "href")]


# ----------------------------------------------------------------------------- page content
def test_page_is_self_contained_and_holds_the_report(rep):
    pytest.importorskip("plotly", reason="the HTML report needs plotly (pyworkloads[html])")
    page = rep.to_html()
    p = _Refs()
    p.feed(page)
    assert p.tags[:1] == ["html"] and "script" in p.tags
    assert not [r for r in p.refs if r[0] in ("script", "link", "img", "iframe")], p.refs
    assert not [r for r in p.refs if re.match(r"\s*(https?:|//|wss?:)", r[2])], p.refs
    assert "<script src" not in page.lower() and "<link" not in page.lower()
    assert "Plotly.newPlot" in page and "plotly.js v" in page        # the library, inline
    for r in rep.layers:                                               # every layer, in the data
        assert json.dumps(r.name) in page
    s = rep.summary                                                    # the summary's values
    assert f"<td>{fmt_time(s['tpot_s'])}</td>" in page
    assert f"<td>{s['tokens_per_s']:,.2f}</td>" in page
    assert f"total {fmt_bytes(s['memory_bytes']['total'])}</td>" in page
    assert '<td class="fits">True</td>' in page


def test_missing_plotly_names_the_extra(rep, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)   # import fails
    with pytest.raises(ImportError, match=re.escape('pip install "pyworkloads[html]"')):
        rep.to_html()
    rc = main(["report", "llama2-110m", "--device", "h100-sxm", "--format", "html",
               "-o", str(tmp_path / "r.html")])
    err = capsys.readouterr().err
    assert rc == 1 and 'pyworkloads[html]' in err and "matplotlib" not in err


def test_cli_html_report_and_compare(capsys, tmp_path):
    pytest.importorskip("plotly", reason="the HTML report needs plotly (pyworkloads[html])")
    f = tmp_path / "r.html"
    assert main(["report", "llama2-110m", "--device", "l4", "--phase", "decode", "--format",
                 "html", "-o", str(f)]) == 0
    assert "model.layers.11.mlp.down_proj" in f.read_text()
    c = tmp_path / "c.html"
    assert main(["compare", "clip-vit-b-32", "--devices", "a100-sxm-80gb,h100-sxm,l4",
                 "--format", "html", "-o", str(c)]) == 0
    page = c.read_text()
    reps = [cm.analyze("clip-vit-b-32", device=d) for d in ("a100-sxm-80gb", "h100-sxm", "l4")]
    for r in reps:                                     # each device's column and its figures
        assert f"[{r.device.key}]" in page and f"{r.summary['images_per_s']:,.1f}" in page
    t = tmp_path / "c.txt"                             # -o for the text formats too
    assert main(["compare", "clip-vit-b-32", "--devices", "l4", "-o", str(t)]) == 0
    assert "images_per_s" in t.read_text()
    capsys.readouterr()


# ----------------------------------------------------------------------------- in a browser
_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def _browser():
    exe = next((shutil.which(b) for b in _BROWSERS if shutil.which(b)), None)
    if exe is None:
        if os.environ.get("PYWORKLOADS_EXPECT_BROWSER") == "1":
            pytest.fail("PYWORKLOADS_EXPECT_BROWSER=1 but no chromium/chrome on PATH")
        pytest.skip("no headless browser (chromium) on PATH")
    return exe


def _load(exe, page, tmp_path):
    """Load ``page`` (a file) headless, the network unreachable (a dead proxy); returns the DOM
    after the scripts ran and the http(s)/ws URLs the page asked for (from the net log; the
    browser's own background requests carry no page origin and are left out)."""
    log = tmp_path / f"{page.stem}.netlog.json"
    args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-extensions",
            "--proxy-server=127.0.0.1:9", "--virtual-time-budget=8000",
            f"--log-net-log={log}", "--dump-dom", page.as_uri()]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    net = json.loads(log.read_text())
    kinds = {v: k for k, v in net["constants"]["logEventTypes"].items()}
    asked = {e["params"]["url"] for e in net["events"]
             if kinds.get(e["type"]) == "URL_REQUEST_START_JOB"
             and re.match(r"(https?|wss?)://", e["params"].get("url", ""))
             and e["params"].get("initiator") != "not an origin"}
    return out.stdout, asked


def test_report_draws_in_a_browser_without_the_network(rep, tmp_path):
    pytest.importorskip("plotly", reason="the HTML report needs plotly (pyworkloads[html])")
    exe = _browser()
    # the check itself: a page that loads a script and an image from the web is caught
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><script src="https://cdn.example.org/x.js"></script>'
                   '<img src="http://example.org/a.png"></body></html>')
    _, asked = _load(exe, bad, tmp_path)
    assert asked == {"https://cdn.example.org/x.js", "http://example.org/a.png"}
    page = tmp_path / "report.html"
    page.write_text(rep.to_html())
    dom, asked = _load(exe, page, tmp_path)
    assert asked == set()
    assert len(re.findall(r'<svg class="main-svg"', dom)) >= 4        # both figures drew
    n_points = len(re.findall(r'class="point plotly-customdata"', dom))   # hover data: roofline
    n_roofline = sum(1 for r in rep.layers if r.bytes > 0 and r.flops > 0 and r.t_lower > 0)
    assert n_points == n_roofline > 100                                # one marker per layer
    assert len(re.findall(r'class="point"', dom)) >= 2 * 8             # the stacked bars
    assert "<td>model.layers.0.self_attn.q_proj</td>" in dom            # the table, rendered
    assert f"{len(rep.layers)} of {len(rep.layers)} records" in dom


# ------------------------------------------------------------------ train, serve, validate
def _offline(page: str) -> None:
    """No tag loads anything; plotly.js inline exactly once."""
    p = _Refs()
    p.feed(page)
    assert p.tags[:1] == ["html"]
    assert not [r for r in p.refs if r[0] in ("script", "link", "img", "iframe")], p.refs
    assert not [r for r in p.refs if re.match(r"\s*(https?:|//|wss?:)", r[2])], p.refs
    assert "<script src" not in page.lower() and "<link" not in page.lower()
    assert page.count("plotly.js v") == 1 and "Plotly.newPlot" in page


@pytest.fixture(scope="module")
def trained():
    return cm.train("llama2-110m", "a100-sxm-80gb", batch=4, seq_len=128, recompute="selective")


@pytest.fixture(scope="module")
def curve():
    return cm.sweep("llama2-110m", [2, 20], device="h100-sxm", duration=4, prompt_len=64,
                    output_len=16)


def test_train_page(trained, tmp_path, capsys):
    pytest.importorskip("plotly", reason="the HTML report needs plotly (pyworkloads[html])")
    from costmodel.html import train_groups
    rep = trained
    # the bars: per GPU per step, the micro-batch records scaled back to the whole step --
    # dp = tp = pp = 1: the step's FLOPs (computed from the global batch) and compute time
    groups = train_groups(rep)
    assert sum(sum(g["flops"].values()) for g in groups) == pytest.approx(rep.flops_per_step)
    assert sum(sum(g["time"].values()) for g in groups) == \
        pytest.approx(rep.time_parts["compute_s"])
    attn = next(g for g in groups if g["op"] == "attention")
    assert attn["flops"]["forward"] > 0
    assert attn["flops"]["recompute"] == pytest.approx(attn["flops"]["forward"])
    assert rep.options["microbatches"] == 4
    page = rep.to_html(tokens=1e9)
    _offline(page)
    for r in rep.layers:                                     # forward, .grad and .recompute
        assert json.dumps(r.name) in page
    run = rep.summary(tokens=1e9)
    for text in (f"<td>{rep.mfu:.1%}</td>", fmt_time(rep.time_per_step),
                 f"total {fmt_bytes(rep.memory['total'])} of {fmt_bytes(rep.device.memory)}",
                 f"{run['steps']:,} steps", '<td class="fits">True</td>',
                 f"{rep.flops_per_step:.4g}", "capacity 80.00 GB", "recompute"):
        assert text in page, text
    f = tmp_path / "t.html"
    assert main(["train", "llama2-110m", "--device", "a100-sxm-80gb", "--batch", "4",
                 "--seq-len", "128", "--recompute", "selective", "--format", "html",
                 "-o", str(f)]) == 0
    assert "model.layers.11.mlp.down_proj.grad" in f.read_text()
    capsys.readouterr()


def test_serve_pages(curve, tmp_path, capsys):
    pytest.importorskip("plotly", reason="the HTML report needs plotly (pyworkloads[html])")
    from costmodel.html import curve_html
    one = cm.serve("llama2-110m", "h100-sxm", arrival_rate=20, duration=4, prompt_len=64,
                   output_len=16, debug=True)
    page = one.to_html()
    _offline(page)
    s = one.summary
    assert s["finished"] > 40 and s["max_batch"] > 1
    for text in (f"{s['ttft_p50'] * 1e3:.2f} ms / {s['ttft_p99'] * 1e3:.2f} ms",
                 f"{s['tpot_p50'] * 1e3:.2f} ms / {s['tpot_p99'] * 1e3:.2f} ms",
                 f"{s['throughput_tps']:,.1f} output tok/s", "Batch over time",
                 "decoding (batch)"):
        assert text in page, text
    table = json.loads(re.search(r'layerTable\("requests", (.*?), "', page).group(1))
    assert [r[0] for r in table["rows"]] == list(range(s["arrived"]))   # one row per request
    assert "No per-iteration trace" in curve[0].to_html()                  # no debug: no trace
    page = curve_html(curve)
    _offline(page)
    for r in curve:                                   # each rate's point and its figures
        rate = r.settings["arrival_rate"]
        assert f'"{rate:g}\\u002fs"' in page and f'"{r.summary["throughput_rps"]:.3f}"' in page
        assert f'"name":"{rate:g} req\\u002fs"' in page         # its latency CDF
    f = tmp_path / "c.html"
    assert main(["serve", "llama2-110m", "--device", "h100-sxm", "--rates", "2,20",
                 "--duration", "4", "--prompt-len", "64", "--output-len", "16",
                 "--format", "html", "-o", str(f)]) == 0
    assert "Throughput-latency curve" in f.read_text()
    assert main(["serve", "llama2-110m", "--device", "h100-sxm", "--format", "html"]) == 2
    assert "--format html needs -o" in capsys.readouterr().err


def test_validate_page(tmp_path, monkeypatch, capsys):
    pytest.importorskip("plotly", reason="the HTML report needs plotly (pyworkloads[html])")
    pytest.importorskip("pyworkloads._kernels", reason="the compiled kernels are not built")
    from costmodel import calibration as C
    monkeypatch.setenv("COSTMODEL_CACHE_DIR", str(tmp_path))
    eff = 0.5                                     # a made-up profile: predictions to compare
    pts = {"matmul": [[0, 6, 6, eff], [10, 12, 12, eff]],
           "attention": [[0, 6, 6, 0, eff], [10, 10, 7, 1, eff]],
           "rms_norm": [[0, 6, eff], [12, 12, eff]], "layer_norm": [[0, 6, eff], [12, 12, eff]],
           "gelu": [[10, eff], [20, eff]]}
    C.Profile(backend="cpp", machine=C.machine_identity("cpp"), measured_at="now",
              peak_flops=1e11, peak_how="made up", bandwidth=1e10,
              bandwidth_by_size=[[1e3, 2e10], [1e9, 1e10]],
              overhead={op: 1e-6 for op in C.KERNEL_OPS}, glue={op: 2e-6 for op in C.KERNEL_OPS},
              ufunc_call=1e-6, points=pts, attention_impl="flash").save(C.profile_path("cpp"))
    v = cm.validate("llama2-tiny", phase="decode", seq_len=4, repeats=1, min_seconds=0)
    page = v.to_html()
    _offline(page)
    assert len(v.layers) > 5
    for c in v.layers:                                # each call in the plot's hover and table
        assert json.dumps(c.name) in page and f"{100 * c.error:+.1f}%" in page
    assert "predicted = measured" in page and '"type":"log"' in page
    assert f"median |error| {100 * v.median_error:.1f} %" in page
    f = tmp_path / "v.html"
    assert main(["validate", "llama2-tiny", "--phase", "decode", "--seq-len", "4",
                 "--repeats", "1", "--seconds", "0", "--format", "html", "-o", str(f)]) == 0
    assert "Predicted vs measured" in f.read_text()
    capsys.readouterr()


def test_train_and_curve_pages_draw_in_a_browser_without_the_network(trained, curve, tmp_path):
    pytest.importorskip("plotly", reason="the HTML report needs plotly (pyworkloads[html])")
    from costmodel.html import curve_html, train_groups
    exe = _browser()
    page = tmp_path / "train.html"
    page.write_text(trained.to_html())
    dom, asked = _load(exe, page, tmp_path)
    assert asked == set()
    assert len(re.findall(r'<svg class="main-svg"', dom)) >= 4          # both figures drew
    groups = train_groups(trained)
    bars = sum(1 for g in groups for d in (g["flops"], g["time"]) for v in d.values() if v)
    # the per-type bars, the four kinds of memory, the step's forward / backward / recompute
    assert len(re.findall(r'class="point"', dom)) >= bars + 4 + 3
    assert f"{len(trained.layers)} of {len(trained.layers)} records" in dom
    page = tmp_path / "curve.html"
    page.write_text(curve_html(curve))
    dom, asked = _load(exe, page, tmp_path)
    assert asked == set()
    # the curve: TTFT and TPOT, p50 and p99, one hoverable marker per rate each
    assert len(re.findall(r'class="point plotly-customdata"', dom)) == 4 * len(curve)
    assert len(re.findall(r'class="js-line"', dom)) >= 4 + 2 * len(curve)    # + the CDFs
    assert f"{len(curve)} of {len(curve)} records" in dom


# ----------------------------------------------------------------------------- PNG plots
@pytest.fixture(scope="module")
def plt():
    pytest.importorskip("matplotlib", reason="plots need matplotlib")
    from costmodel.plots import _plt
    return _plt()


@pytest.mark.parametrize("model,kw", [
    ("llama2-7b", dict(device="h100-sxm", phase="decode", seq_len=2048)),
    ("sam-vit-b", dict(device="a100-sxm-80gb", prompts=16))])
def test_roofline_labels_apart_and_data_inside(plt, model, kw):
    from costmodel.plots import roofline
    r = cm.analyze(model, **kw)
    fig = roofline(r)
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.texts if t.get_text()]
    assert 1 <= len(labels) <= 5
    boxes = [t.get_window_extent(renderer) for t in labels]
    frame = ax.get_window_extent(renderer)
    assert not [(a, b) for a, b in combinations(boxes, 2) if a.overlaps(b)]
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1
               for b in boxes)
    top = max(cm.report.grouped(r), key=lambda g: g["t_lower"])       # the costliest type
    assert any(top["name"].split(".")[-1] in t.get_text() for t in labels)
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    pts = [(x.intensity, x.flops / x.t_lower) for x in r.layers if x.bytes and x.flops]
    assert all(x0 < x < x1 and y0 < y < y1 for x, y in pts)
    drawn = [c for c in ax.collections if len(c.get_offsets())]
    assert sum(len(c.get_offsets()) for c in drawn) == len(pts)
    # attention is drawn over the matmuls it shares a decode point with
    z = {c.get_label().split()[0]: c.get_zorder() for c in drawn}
    assert z["attention"] > z["matmul"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ax.get_legend_handles_labels()[1]
    assert sorted(t.split()[0] for t in legend if "roof" not in t) == \
        sorted({x.op for x in r.layers if x.bytes and x.flops})
    plt.close(fig)


@pytest.mark.parametrize("tp", [1, 2])
def test_breakdown_parts_axis_and_legend(plt, tp):
    from costmodel.plots import breakdown
    r = cm.analyze("llama2-110m", device="h100-sxm", phase="decode", seq_len=256, tp=tp)
    fig = breakdown(r, top=8)
    ax = fig.axes[0]
    bars = [p for p in ax.patches]
    right = max(p.get_x() + p.get_width() for p in bars)
    assert right < ax.get_xlim()[1]                                    # inside the axis
    # the parts add up to the report's total (the rest of the types in one bar)
    assert sum(p.get_width() for p in bars) == pytest.approx(r.total["t_lower"] * 1e3, rel=1e-9)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    has_comm = any(x.op == "allreduce" for x in r.layers)
    assert has_comm == (tp > 1)
    assert ("collective (interconnect)" in legend) == has_comm
    assert legend == [c.get_label() for c in ax.containers]
    # an elementwise record is compute-bound, a projection memory-bound: both parts drawn
    assert legend[:2] == ["compute-bound", "memory-bound"]
    plt.close(fig)
