"""The examples in examples/ run as a user runs them -- ``python examples/<name>.py`` in a fresh
process from the repository root, default arguments -- and print what they promise.

The subprocess imports the same pyworkloads this test imported: the installed package in CI, the
source tree under ``python -m pytest`` from a checkout (its parent goes on PYTHONPATH; the
script's own folder, examples/, is what Python puts first on sys.path, never the repository root).

Where the committed fixtures carry transformers' outputs, the examples' printed tokens are checked
against them: the whole path (tokenizer or audio file -> model -> decoding) then has an independent
reference."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pyworkloads as pw

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def run_example(name: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    pkg_parent = str(Path(pw.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(
        [pkg_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def ok_output(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, (f"exit code {proc.returncode}\nstdout:\n{proc.stdout}\n"
                                  f"stderr:\n{proc.stderr}")
    return proc.stdout


def int_list(out: str, label: str) -> list[int]:
    """The integers of the line '<label>: [1, 2, ...]' (or '<label> [1, 2, ...]')."""
    m = re.search(rf"^{re.escape(label)}:? \[([\d, ]*)\]$", out, re.M)
    assert m, f"no '{label}: [...]' line in:\n{out}"
    return [int(t) for t in m.group(1).split(",") if t.strip()]


def test_llama2_generate_gives_transformers_greedy_tokens():
    out = ok_output(run_example("llama2_generate.py"))
    want = pw.io.load_safetensors(FIXTURES / "llama2" / "expected.safetensors")
    prompt = want["input_ids"][0]               # "Once upon a time", the example's default
    assert int_list(out, "prompt: 'Once upon a time' -> input_ids") == prompt.tolist()
    new = int_list(out, "generated ids")
    ref = want["greedy"][0, len(prompt):].tolist()      # transformers' 10 greedy tokens
    assert len(new) >= len(ref) and new[:len(ref)] == ref
    assert re.search(r"^text: 'Once upon a time", out, re.M)


def test_clip_zero_shot_probabilities_are_the_scaled_cosines_softmaxed():
    out = ok_output(run_example("clip_zero_shot.py"))
    assert "-> pixel_values [1, 3, 32, 32]" in out
    rows = re.findall(r"^\s+([\d.]+)%\s+cos ([+-][\d.]+)\s+(.+)$", out, re.M)
    assert sorted(r[2] for r in rows) == sorted(["woman in uniform", "cat", "dog", "diagram"])
    probs = np.array([float(r[0]) / 100 for r in rows])
    cos = np.array([float(r[1]) for r in rows])
    assert np.all(np.diff(probs) <= 0), "labels are listed most likely first"
    # zero_shot() against the two towers run separately: softmax(exp(logit_scale) * cosine)
    weights = pw.io.load_safetensors(FIXTURES / "clip" / "model.safetensors")
    scale = math.exp(float(weights["logit_scale"]))
    z = np.exp(scale * (cos - cos.max()))
    # the cosines are printed to 0.001, so each logit scale·cos is off by <= scale·5e-4 and each
    # softmax ratio p_i / p̃_i by at most exp(±2·scale·5e-4); the probabilities are printed to
    # 0.01 % (<= 5e-5), and the example's own float32 softmax adds ~1e-6
    np.testing.assert_allclose(probs, z / z.sum(), rtol=math.expm1(2 * scale * 5e-4),
                               atol=5e-5 + 1e-6)


def test_sam_segment_point_and_box_prompts(tmp_path):
    png = tmp_path / "mask.png"
    out = ok_output(run_example("sam_segment.py", "--out", str(png)))
    m = re.search(r"^image (\d+)x(\d+) -> image embeddings \[1, 16, 8, 8\]", out, re.M)
    assert m, out
    W, H = int(m.group(1)), int(m.group(2))
    assert f": 3 masks [{H}, {W}] from low-res logits [32, 32]" in out
    masks = re.findall(r"^  mask \d: predicted IoU -?[\d.]+, +[\d.]+% of the image$", out, re.M)
    assert len(masks) == 3
    assert re.search(r"^box \(.*\): 1 mask, predicted IoU", out, re.M)
    from PIL import Image
    with Image.open(png) as im:
        assert im.size == (W, H)


def test_whisper_transcribe_gives_transformers_tokens():
    out = ok_output(run_example("whisper_transcribe.py"))
    assert "log-mel [80, 3000]" in out
    assert re.search(r"^language: en$", out, re.M)
    expected = pw.io.load_safetensors(FIXTURES / "whisper" / "expected.safetensors")
    want = expected["generate_timestamps"][0]
    # generate(language="en", return_timestamps=True)
    assert int_list(out, "tokens") == want.tolist()
    assert re.search(r"^  \[ *[\d.]+ s -> *[\d.]+ s\] ", out, re.M)


def test_backends_and_profile_agree_and_match_the_cost_model():
    out = ok_output(run_example("backends_and_profile.py"))
    for b in pw.available():
        assert re.search(rf"^{b} +[\d.]+ +[\d.e+-]+  \[", out, re.M), \
            f"no row for backend {b}:\n{out}"
        assert f"prof.summary() on {b}:" in out
    assert re.search(r"^model\.layers\.0\.mlp +matmul ", out, re.M)
    assert "all backends agree and the FLOP counts match" in out


def test_costmodel_examples_run():
    """The cost-model examples (written with the cost model) stay runnable too."""
    out = ok_output(run_example("costmodel_published.py"))
    rows = re.findall(r"published +[\d.]+ ms -> bound / measured = +\d+%$", out, re.M)
    assert len(rows) >= 3, out
    out = ok_output(run_example("costmodel_cpu_check.py"))
    assert re.search(r"^kernel +bound ms +measured ms", out, re.M), out
    assert re.search(r"^all +[\d.]+ +[\d.]+ +\d+%$", out, re.M), out


@pytest.mark.parametrize("name", ["llama2_generate.py", "clip_zero_shot.py", "sam_segment.py",
                                  "whisper_transcribe.py"])
def test_a_missing_model_directory_is_a_one_line_error(name, tmp_path):
    proc = run_example(name, "--model", str(tmp_path / "nowhere"))
    assert proc.returncode != 0
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
