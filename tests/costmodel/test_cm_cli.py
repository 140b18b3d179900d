"""The costmodel command: every format, the plots, the device table, comparisons, clean errors."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from costmodel.cli import main
from costmodel.graph import SCHEMA

ROOT = Path(__file__).resolve().parents[2]


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("fmt", ["table", "md", "csv", "json"])
def test_report_every_format(capsys, fmt):
    rc, out, err = run(capsys, "report", "llama2-7b", "--device", "h100-sxm", "--phase", "decode",
                       "--seq-len", "2048", "--format", fmt)
    assert rc == 0, err
    if fmt == "json":
        doc = json.loads(out)
        assert doc["params"] == 6738415616 and doc["summary"]["tpot_s"] > 0
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(out)))             # plain CSV: header first
        assert tuple(rows[0]) == SCHEMA and len(rows) > 400
        assert sum(float(r["macs"]) for r in rows) > 6.7e9          # every weight once, ~1 MAC each
    elif fmt == "md":
        assert "| tpot_s |" in out and "| TOTAL |" in out
    else:
        assert "tpot_s" in out and "model.layers.*.mlp.down_proj" in out


def test_report_to_file_and_per_layer(capsys, tmp_path):
    f = tmp_path / "r.md"
    rc, out, err = run(capsys, "report", "whisper-tiny", "--device", "l4", "--format", "md",
                       "--per-layer", "-o", str(f))
    assert rc == 0 and f.is_file() and "model.decoder.layers.3.encoder_attn" in f.read_text()


@pytest.mark.parametrize("kind", ["roofline", "breakdown", "both"])
def test_plot_is_written(capsys, tmp_path, kind):
    pytest.importorskip("matplotlib", reason="plots need matplotlib")
    png = tmp_path / f"{kind}.png"
    rc, out, err = run(capsys, "plot", "sam-vit-b", "--device", "a100-sxm-80gb", "--kind", kind,
                       "-o", str(png))
    assert rc == 0, err
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_devices_and_compare(capsys):
    rc, out, _ = run(capsys, "devices")
    assert rc == 0 and "h100-sxm" in out and "3350" in out
    rc, out, _ = run(capsys, "devices", "--json")
    assert json.loads(out)["a100-sxm-80gb"]["sources"]["bandwidth_gbps"].startswith("ref")
    rc, out, err = run(capsys, "devices", "--check")
    assert rc == 0 and "0 problem(s)" in err
    rc, out, err = run(capsys, "compare", "clip-vit-l-14", "--devices", "a100-sxm-80gb,h100-sxm,l4",
                       "--batch", "32")
    assert rc == 0, err
    assert "images_per_s" in out and "l4" in out.splitlines()[1]


@pytest.mark.parametrize("argv,msg", [
    (["report", "llama2-7x", "--device", "h100-sxm"], "unknown model 'llama2-7x'"),
    (["report", "llama2-7b", "--device", "h1000"], "unknown device 'h1000'"),
    (["report", "llama2-7b", "--device", "h100-sxm", "--batch", "-1"], "batch must be"),
    (["report", "llama2-7b", "--device", "h100-sxm", "--phase", "image"],
     "phase 'image' does not apply"),
    (["report", "llama2-7b", "--device", "v100-sxm2"], "no bf16 tensor rate"),
    (["report", "llama2-7b", "--device", "h100-sxm", "--format", "xml"], "invalid choice"),
    (["report", "llama2-7b"], "--device"),
    (["compare", "llama2-7b", "--devices", ","], "at least one device"),
    (["--devices-file", "/nonexistent.toml", "devices"], "does not exist"),
])
def test_bad_input_is_a_clean_error(capsys, argv, msg):
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    assert msg in err and "Traceback" not in err


def test_console_entry_point_runs_as_a_process():
    p = subprocess.run([sys.executable, "-m", "costmodel.cli", "report", "nope", "--device",
                        "h100-sxm"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2 and "unknown model 'nope'" in p.stderr and "Traceback" not in p.stderr


def _process(*argv, debug=False):
    env = {k: v for k, v in os.environ.items() if k != "PYWORKLOADS_DEBUG"}
    env["PYTHONPATH"] = str(ROOT)
    if debug:
        env["PYWORKLOADS_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-m", "costmodel.cli", *map(str, argv)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


@pytest.mark.parametrize("case", ["devices file a directory", "devices file corrupt",
                                  "devices file a list", "report -o a directory",
                                  "plot -o a directory", "report -o in a missing directory"])
def test_user_errors_in_a_process_are_one_line(tmp_path, case):
    if case.startswith("plot"):
        pytest.importorskip("matplotlib", reason="plots need matplotlib")
    bad = tmp_path / "bad.toml"
    bad.write_text("[h200\nbandwidth = ")
    lst = tmp_path / "list.json"
    lst.write_text("[1, 2, 3]")
    rep = ["report", "llama2-7b", "--device", "h100-sxm"]
    argv = {"devices file a directory": ["--devices-file", tmp_path, "devices"],
            "devices file corrupt": ["--devices-file", bad, "devices"],
            "devices file a list": ["--devices-file", lst, "devices"],
            "report -o a directory": rep + ["-o", tmp_path],
            "plot -o a directory": ["plot", "llama2-7b", "--device", "h100-sxm", "-o", tmp_path],
            "report -o in a missing directory": rep + ["-o", tmp_path / "no" / "r.txt"]}[case]
    p = _process(*argv)
    assert p.returncode in (1, 2), (p.returncode, p.stdout)
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("costmodel: error: "), p.stderr
    assert not (tmp_path.parent / f"{tmp_path.name}.png").exists()     # nothing written beside


def test_debug_variable_shows_the_traceback():
    p = _process("report", "nope", "--device", "h100-sxm", debug=True)
    assert p.returncode != 0 and "Traceback" in p.stderr and "unknown model 'nope'" in p.stderr


def test_keyboard_interrupt_is_quiet(monkeypatch, capsys):
    from costmodel import cli

    def interrupted(a):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_cmd_devices", interrupted)
    assert main(["devices"]) == 130
    assert capsys.readouterr().err.strip() == "costmodel: interrupted"
