"""costmodel.serving: the serving simulator's invariants, its closed form against analyze(), and
its errors."""
import math

import numpy as np
import pytest

import costmodel as cm
from costmodel import serving
from costmodel.cli import main

LLAMA = "llama2-7b"
DEV = "h100-sxm"


def test_pricer_reproduces_analyze():
    """The closed-form iteration price equals analyze()'s roofline sum at points it was not
    fitted on (decode at batch 7 / KV 700, a prefill of 300 tokens)."""
    p = serving.pricer(LLAMA, DEV)
    dec = cm.analyze(LLAMA, DEV, phase="decode", batch=7, seq_len=700)
    pre = cm.analyze(LLAMA, DEV, phase="prefill", seq_len=300)
    assert p.decode(7, 700) == pytest.approx(dec.summary["tpot_s"], rel=1e-9)
    assert p.prefill(300) == pytest.approx(pre.summary["ttft_s"], rel=1e-9)
    # one token of one sequence in the cache: 2 (K, V) x layers x KV heads x head dim x 2 bytes
    cfg = p.cfg
    assert p.kv_token == 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 2


def test_zero_load_closed_form_matches_analyze_and_simulator():
    z = serving.zero_load(LLAMA, DEV, prompt_len=256, output_len=64)
    gen = cm.analyze(LLAMA, DEV, phase="generate", seq_len=256, new_tokens=64)
    assert z["ttft"] == pytest.approx(gen.summary["ttft_s"], rel=1e-9)
    assert z["tpot"] == pytest.approx(gen.summary["tpot_s"], rel=1e-9)
    # a tiny arrival rate: every request is served alone
    r = cm.serve(LLAMA, DEV, arrival_rate=0.05, prompt_len=256, output_len=64, duration=200)
    rec = r.records
    # the requests that met no other one in the system
    prev_done = np.r_[-np.inf, rec["finish"][:-1]]
    next_in = np.r_[rec["arrival"][1:], np.inf]
    rec = rec[(rec["arrival"] > prev_done) & (rec["finish"] < next_in)]
    assert len(rec) >= 4
    assert rec["first_token"] - rec["arrival"] == pytest.approx(z["ttft"], rel=1e-9)
    tpot = (rec["finish"] - rec["first_token"]) / 63
    assert tpot == pytest.approx(z["tpot"], rel=1e-9)


def test_no_request_lost_and_kv_never_exceeded():
    """Overload on a small cache (25 % of the memory): preemptions happen, the blocks in use
    never exceed the cache and always cover what the sequences hold, counts add up."""
    r = cm.serve(LLAMA, DEV, arrival_rate=60, prompt_len=("uniform", 200, 900),
                 output_len=("uniform", 50, 400), duration=10, memory_fraction=0.25, debug=True)
    s, tr = r.summary, r.trace
    assert s["preemptions"] > 0
    assert s["arrived"] == len(r.records) == s["finished"] + s["unfinished"] + s["refused"]
    assert s["unfinished"] == 0 and s["refused"] == 0 and s["finished"] > 400
    assert np.all(tr["blocks_used"] <= s["kv_blocks"])
    assert np.all(tr["blocks_needed"] <= tr["blocks_used"])
    assert tr["blocks_used"].max() > 0.9 * s["kv_blocks"]          # the cache was the limit
    assert np.all(r.records["finish"] >= r.records["first_token"])
    assert np.all(r.records["first_token"] > r.records["arrival"])
    # stopping at the end of the arrivals instead: the rest is reported unfinished, not lost
    cut = cm.serve(LLAMA, DEV, arrival_rate=60, prompt_len=("uniform", 200, 900),
                   output_len=("uniform", 50, 400), duration=10, memory_fraction=0.25,
                   drain=False)
    c = cut.summary
    assert c["unfinished"] > 0
    assert c["arrived"] == c["finished"] + c["unfinished"] + c["refused"] == s["arrived"]
    assert np.all(np.isnan(cut.records["finish"][cut.records["status"] == 1]))


def test_littles_law():
    """Time-average number in system (from the iteration trace) = throughput x mean time in
    system (from the request records).  The trace sees an arrival from the start of the next
    iteration, so each request can shift the integral by at most one iteration."""
    r = cm.serve(LLAMA, DEV, arrival_rate=40, prompt_len=("lognormal", 400, 0.6),
                 output_len=("uniform", 20, 300), duration=20, debug=True, seed=3)
    tr, rec = r.trace, r.records
    T = r.summary["makespan"]
    area = float(np.sum(tr["in_system"] * (tr["t_end"] - tr["t_start"])))
    L = area / T
    W = float(np.mean(rec["finish"] - rec["arrival"]))
    lam = len(rec) / T
    tol = len(rec) * float(np.max(tr["t_end"] - tr["t_start"])) / T
    assert r.summary["mean_batch"] > 10                       # a real queue, not single requests
    assert abs(L - lam * W) <= tol
    assert tol < 0.1 * L


def test_deterministic_under_seed_and_monotone_in_load():
    kw = dict(prompt_len=("uniform", 100, 1000), output_len=("lognormal", 120, 0.5), duration=10)
    a = cm.serve(LLAMA, DEV, arrival_rate=20, seed=7, **kw)
    b = cm.serve(LLAMA, DEV, arrival_rate=20, seed=7, **kw)
    c = cm.serve(LLAMA, DEV, arrival_rate=20, seed=8, **kw)
    np.testing.assert_array_equal(a.records, b.records)
    assert a.summary == b.summary
    assert not np.array_equal(a.records["arrival"], c.records["arrival"])
    curve = serving.sweep(LLAMA, [5, 30, 60], device=DEV, **kw)
    p99 = [r.summary["ttft_p99"] for r in curve]
    tput = [r.summary["throughput_rps"] for r in curve]
    assert p99[0] < p99[1] < p99[2]
    assert tput[0] < tput[1] < tput[2]


def test_chunked_prefill_respects_budget():
    r = cm.serve(LLAMA, DEV, arrival_rate=30, prompt_len=2000, output_len=50, duration=5,
                 chunked_prefill=256, debug=True)
    tr = r.trace
    assert np.all(tr["decoding"] + tr["prefill_tokens"] <= 256)
    assert tr["prefill_tokens"].max() > 0
    assert r.summary["finished"] == r.summary["arrived"] > 50
    whole = cm.serve(LLAMA, DEV, arrival_rate=30, prompt_len=2000, output_len=50, duration=5,
                     debug=True)
    assert whole.trace["prefill_tokens"].max() >= 2000       # whole prompts in one iteration
    # chunking caps the iteration, so the decoders' p99 TPOT is lower than with whole prefills
    assert r.summary["tpot_p99"] < whole.summary["tpot_p99"]


def test_whisper_decoder_serving():
    """Whisper: the prompt is the decoder prompt, each request holds its cross-attention K/V
    (2 x layers x 1500 positions x d_model) and its prefill runs the encoder."""
    m = "whisper-large-v3"
    p = serving.pricer(m, DEV)
    cfg = p.cfg
    assert p.kv_request == 2 * cfg.decoder_layers * cfg.max_source_positions * cfg.d_model * 2
    z = serving.zero_load(m, DEV, prompt_len=4, output_len=100)
    gen = cm.analyze(m, DEV, phase="generate", seq_len=4, new_tokens=100)
    assert z["ttft"] == pytest.approx(gen.summary["ttft_s"], rel=1e-9)
    assert z["ttft"] > gen.summary["encoder_s"] > 0
    assert z["tpot"] == pytest.approx(gen.summary["tpot_s"], rel=1e-9)
    r = cm.serve(m, DEV, arrival_rate=30, prompt_len=4, output_len=("uniform", 20, 200),
                 duration=5, memory_fraction=0.06, debug=True)
    s = r.summary
    assert s["finished"] == s["arrived"] > 100
    # every running request holds its cross-attention blocks: the cache bounds the batch
    blocks_per_request = math.ceil(p.kv_request / (16 * p.kv_token))
    assert s["max_batch"] <= s["kv_blocks"] // blocks_per_request
    assert np.all(r.trace["blocks_used"] <= s["kv_blocks"])


@pytest.mark.parametrize("kw, match", [
    (dict(arrival_rate=-1), "arrival_rate must be a positive number"),
    (dict(duration=0), "duration must be a positive number"),
    (dict(prompt_len=("poisson", 3)), "prompt_len: unknown distribution"),
    (dict(output_len=("uniform", 10, 5)), "output_len: uniform needs lo <= hi"),
    (dict(prompt_len=5000), r"prompt_len: the length must be an integer in 1\.\.4096"),
    (dict(block_size=0), "block_size must be an integer >= 1"),
    (dict(arrival_rate=math.inf), "needs num_requests"),
    (dict(memory_fraction=1.5), "memory_fraction must be in"),
])
def test_bad_arguments(kw, match):
    args = dict(arrival_rate=1.0, duration=1.0)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        cm.serve(LLAMA, DEV, **args)


def test_model_that_does_not_fit_and_wrong_family():
    with pytest.raises(ValueError, match="llama2-70b does not fit on h100-sxm for serving"):
        cm.serve("llama2-70b", DEV, arrival_rate=1, duration=1)
    with pytest.raises(ValueError, match="generating decoders"):
        cm.serve("clip-vit-b-32", DEV, arrival_rate=1, duration=1)


def test_offline_benchmark_all_at_once():
    r = cm.serve(LLAMA, DEV, arrival_rate=math.inf, num_requests=200, prompt_len=256,
                 output_len=128)
    assert r.summary["finished"] == 200
    assert np.all(r.records["arrival"] == 0)
    assert r.summary["mean_batch"] > 100


def test_cli_serve_curve(tmp_path, capsys):
    csv = tmp_path / "curve.csv"
    rc = main(["serve", LLAMA, "--device", DEV, "--rates", "2,40", "--duration", "5",
               "--prompt-len", "uniform:100:600", "--output-len", "64", "--csv", str(csv)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| rate (req/s) |" in out and "| 40 |" in out
    lines = csv.read_text().splitlines()
    assert lines[0].startswith("arrival_rate,throughput_rps")
    assert len(lines) == 3
    rc = main(["serve", LLAMA, "--device", DEV, "--rate", "-2"])
    assert rc == 2
    assert "arrival_rate must be a positive number" in capsys.readouterr().err


def test_cli_serve_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curve.png"
    rc = main(["serve", LLAMA, "--device", DEV, "--rates", "2,20", "--duration", "3",
               "--plot", str(png)])
    assert rc == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("model, kw", [
    (LLAMA, dict(arrival_rate=5, prompt_len=512, output_len=128, duration=20)),
    (LLAMA, dict(arrival_rate=50, prompt_len=("uniform", 100, 1500), output_len=("lognormal", 150,
                 0.7), duration=10, chunked_prefill=512, seed=2)),
    (LLAMA, dict(arrival_rate=60, prompt_len=("uniform", 200, 900), output_len=("uniform", 50, 400),
                 duration=5, memory_fraction=0.25, drain=False, seed=1)),
    ("whisper-large-v3", dict(arrival_rate=10, prompt_len=("uniform", 1, 50),
                              output_len=("uniform", 20, 300), duration=10, seed=4)),
])
def test_fast_path_equals_step_by_step(model, kw):
    """Skipping over runs of plain decode steps gives the same records, summary and trace as
    simulating one iteration per loop, bit for bit, with and without preemptions."""
    fast = cm.serve(model, DEV, debug=True, **kw)
    slow = cm.serve(model, DEV, debug=True, _fast=False, **kw)
    assert fast.records.tobytes() == slow.records.tobytes()
    assert fast.trace.tobytes() == slow.trace.tobytes()
    assert fast.summary == slow.summary
    assert fast.summary["finished"] > 20
    if kw.get("memory_fraction"):
        assert fast.summary["preemptions"] > 0 and fast.summary["unfinished"] > 0
