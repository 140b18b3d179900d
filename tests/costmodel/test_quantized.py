"""llama.cpp's block formats in the cost model: exact bytes per weight from the block layouts,
analysis totals, the Q4_K_M recipe, the CLI, per-call bytes equal to what ``pw.profile()``
counts for the quantized engine, and validate() on a tiny quantized LLaMA."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

import costmodel as cm
import pyworkloads as pw
from costmodel import calibration as C
from costmodel.cli import main
from costmodel.graph import DTYPE_BYTES, GraphBuilder, Precision
from costmodel.validate import kernel_op, stored_dtypes
from pyworkloads import quant

FP16 = 2
# bytes per block, from the block layouts (pyworkloads/quant.py's table, ggml's structs):
# integers of the weights + their scales
LAYOUT = {
    "q8_0": (32, 32 * 8 // 8 + FP16),                       # int8 q, one fp16 d
    "q4_0": (32, 32 * 4 // 8 + FP16),                       # nibbles, d
    "q4_1": (32, 32 * 4 // 8 + 2 * FP16),                   # nibbles, d and m
    "q4_k": (256, 256 * 4 // 8 + 8 * 12 // 8 + 2 * FP16),   # nibbles, 8 x (6-bit scale, 6-bit
                                                            # min) in 12 bytes, d and dmin
    "q6_k": (256, 256 * 4 // 8 + 256 * 2 // 8 + 16 + FP16),  # low nibbles, top 2 bits, 16 int8
                                                             # sub-block scales, d
}
BITS = {"q8_0": 8.5, "q4_0": 4.5, "q4_1": 5.0, "q4_k": 4.5, "q6_k": 6.5625}


def llama(**kw) -> pw.llama2.Config:
    """A small LLaMA whose matrices have rows of whole 32-weight blocks (unless ``kw`` says
    otherwise)."""
    base = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, vocab_size=100, max_position_embeddings=64,
                tie_word_embeddings=False)
    return pw.llama2.Config(**{**base, **kw})


def gemms(rep, name: str):
    return [r for r in rep.layers if r.name == name and r.op == "matmul"]


# ---------------------------------------------------------------------------------------------
# bytes per weight
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", sorted(LAYOUT))
def test_bytes_per_weight_from_the_block_layouts(fmt):
    block, size = LAYOUT[fmt]
    assert DTYPE_BYTES[fmt] == size / block and 8 * size / block == BITS[fmt]
    assert quant.BLOCKS[fmt.upper()] == (block, size)          # the engine's table agrees
    n = 4096 * 4096
    p = Precision.parse(fmt)
    assert p.weight_bytes(n, 4096) == n // block * size        # e.g. q4_k: 4096·4096/256·144
    assert isinstance(p.weight_bytes(n, 4096), int)            # exact, no rounding
    with pytest.raises(ValueError, match="whole number of"):
        p.weight_bytes(block + 1, 1)
    # one q_proj of LLaMA 2 7B in a decode step: exactly its blocks
    rep = cm.analyze("llama2-7b", "h100-sxm", phase="decode", seq_len=64, dtype=fmt)
    q = gemms(rep, "model.layers.0.self_attn.q_proj")[0]
    assert q.bytes_weights == n // block * size and q.weights_dtype == fmt
    assert q.dtype == "bf16"                                   # weight-only: bf16 tensor cores


def test_llama2_7b_q4_0_totals():
    """Every matrix of a decode step at q4_0, the embedding row and head at q8_0 (the engine's
    policy for 4-bit formats), norms in bf16; the weights' memory tensor by tensor."""
    rep = cm.analyze("llama2-7b", "h100-sxm", phase="decode", seq_len=128, dtype="q4_0")
    D, F, V, L = 4096, 11008, 32000, 32
    layer = (4 * D * D + 3 * D * F) // 32 * 18
    head = V * D // 32 * 34
    stored = sum(r.bytes_weights for r in rep.layers if r.weights_dtype)
    assert stored == L * layer + head + D // 32 * 34           # + the one embedding row read
    assert {r.weights_dtype for r in rep.layers if r.op == "embedding"} == {"q8_0"}
    assert gemms(rep, "lm_head")[0].weights_dtype == "q8_0"
    assert rep.summary["memory_bytes"]["weights"] == L * layer + 2 * head + (2 * L + 1) * D * 2
    assert rep.options["precision"] == ("weights q4_0, activations bf16, kv bf16; "
                                        "embedding/head q8_0")
    # activations and cache stay 16-bit: the KV read of a decode step is bf16
    bf16 = cm.analyze("llama2-7b", "h100-sxm", phase="decode", seq_len=128, dtype="bf16")
    attn = [(a.bytes_kv_read, b.bytes_kv_read) for a, b in zip(rep.layers, bf16.layers)
            if a.op == "attention"]
    assert attn and all(a == b for a, b in attn)
    # an explicit embedding dtype moves the table and the head
    e16 = cm.analyze("llama2-7b", "h100-sxm", phase="decode", seq_len=128, dtype="q4_0",
                     embedding="fp16")
    assert gemms(e16, "lm_head")[0].bytes_weights == V * D * 2
    with pytest.raises(ValueError, match="embedding dtype must be"):
        cm.analyze("llama2-7b", "h100-sxm", dtype="q4_0", embedding="q4_k_m")


def test_block_formats_on_the_cpu_device_keep_fp32_activations():
    """The engine decodes a block-quantized weight to float32 and computes in float32."""
    p = Precision.parse("q8_0", default_activations="fp32")
    assert (p.activations, p.kv, p.matmul_dtype) == ("fp32", "fp32", "fp32")
    assert Precision.parse("q8_0").activations == "bf16"


def test_rows_that_are_not_whole_blocks_stay_float():
    """K = 40 is no whole number of 32-weight blocks: the engine keeps such a matrix float32,
    and so does the cost model (at the activation dtype), in the GEMM and in the memory."""
    cfg = llama(intermediate_size=40)
    rep = cm.analyze(cfg, "h100-sxm", phase="decode", seq_len=8, dtype="fp32", weights="q4_1")
    down = gemms(rep, "model.layers.0.mlp.down_proj")[0]
    up = gemms(rep, "model.layers.0.mlp.up_proj")[0]
    assert (down.weights_dtype, down.bytes_weights) == ("fp32", 40 * 64 * 4)
    assert (up.weights_dtype, up.bytes_weights) == ("q4_1", 40 * 64 // 32 * 20)
    with pytest.raises(ValueError, match="must be one of .*q4_k_m, got 'q5_0'"):
        cm.analyze(cfg, "h100-sxm", dtype="q5_0")


# ---------------------------------------------------------------------------------------------
# Q4_K_M
# ---------------------------------------------------------------------------------------------
def test_q4_k_m_follows_llama_cpp_on_llama2_7b():
    rep = cm.analyze("llama2-7b", "h100-sxm", phase="decode", seq_len=64, dtype="q4_k_m")
    more = [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]   # use_more_bits(i, 32)
    for proj in ("self_attn.v_proj", "mlp.down_proj"):
        six = [int(r.name.split(".")[2]) for r in rep.layers
               if r.name.endswith(proj) and r.weights_dtype == "q6_k"]
        assert six == more                                      # half of the 32 layers
    others = {r.weights_dtype for r in rep.layers if r.op == "matmul" and r.weights_dtype
              and r.name.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "o_proj", "gate_proj",
                                                  "up_proj")}
    assert others == {"q4_k"}
    assert gemms(rep, "lm_head")[0].weights_dtype == "q6_k"      # the output matrix
    assert [r.weights_dtype for r in rep.layers if r.op == "embedding"] == ["q4_k"]
    D, F, V = 4096, 11008, 32000
    k4, k6 = (lambda n: n // 256 * 144), (lambda n: n // 256 * 210)
    want = (32 * (k4(3 * D * D) + 2 * k4(D * F)) + 16 * (k6(D * D) + k6(D * F))
            + 16 * (k4(D * D) + k4(D * F)) + k4(V * D) + k6(V * D) + 65 * D * 2)
    assert rep.summary["memory_bytes"]["weights"] == want


def test_q4_k_m_tied_head_and_refusals():
    tied = cm.analyze("llama2-110m", "h100-sxm", phase="decode", seq_len=16, dtype="q4_k_m")
    # no output.weight: the table takes the output rule, Q6_K, and the head reads it
    assert gemms(tied, "lm_head")[0].weights_dtype == "q6_k"
    assert [r.weights_dtype for r in tied.layers if r.op == "embedding"] == ["q6_k"]
    with pytest.raises(ValueError, match="70B rule"):
        cm.analyze("llama2-70b", "h100-sxm", dtype="q4_k_m")
    with pytest.raises(ValueError, match="rows of 64 weights.*Q5_0"):
        cm.analyze("llama2-tiny", "h100-sxm", dtype="q4_k_m")
    with pytest.raises(ValueError, match="does not apply to a whisper model"):
        cm.analyze("whisper-tiny", "h100-sxm", dtype="q4_k_m")
    with pytest.raises(ValueError, match="resolve it for a model first"):
        Precision.parse("q4_k_m").weight_dtype("model.layers.0.mlp.up_proj", 4096)


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------
def test_cli_dtype_q4_0(capsys):
    rc = main(["report", "llama2-7b", "--device", "h100-sxm", "--phase", "decode", "--seq-len",
               "64", "--dtype", "q4_0", "--format", "json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    doc = json.loads(out)
    q = [r for r in doc["layers"] if r["name"] == "model.layers.0.self_attn.q_proj"][0]
    assert q["bytes_weights"] == 4096 * 4096 // 32 * 18 and q["weights_dtype"] == "q4_0"
    rc = main(["report", "llama2-7b", "--device", "h100-sxm", "--dtype", "q4_0",
               "--embedding-dtype", "q4_0", "--format", "json"])
    doc = json.loads(capsys.readouterr()[0])
    head = [r for r in doc["layers"] if r["name"] == "lm_head"][0]
    assert rc == 0 and head["bytes_weights"] == 32000 * 4096 // 32 * 18
    rc = main(["report", "llama2-7b", "--device", "h100-sxm", "--dtype", "q5_0"])
    assert rc == 2 and "invalid choice: 'q5_0'" in capsys.readouterr()[1]


# ---------------------------------------------------------------------------------------------
# the engine: what pw.profile() counts
# ---------------------------------------------------------------------------------------------
def assert_calls_match(layers, records) -> int:
    """Call by call: the kernel the cost model expects, and a GEMM's bytes (weights at their
    stored size, activations in and out) equal to the profile's.  Returns the qmatmul calls."""
    kernels = [r for r in layers if r.op in ("matmul", "attention", "rms_norm")]
    assert len(kernels) == len(records)
    for k, r in zip(kernels, records):
        assert (kernel_op(k), k.scope) == (r.op, r.name), k.name
        if r.op in ("matmul", "qmatmul"):
            assert k.bytes == r.bytes, (k.name, k.weights_dtype, k.bytes, r.bytes)
            assert (r.op == "qmatmul") == (k.weights_dtype in C.GGUF_FORMATS)
            if r.op == "qmatmul":
                assert r.dtype == f"float32x{k.weights_dtype.upper()}"
    return sum(r.op == "qmatmul" for r in records)


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q4_1"])
@pytest.mark.parametrize("cfg", [llama(), llama(tie_word_embeddings=True, num_hidden_layers=1),
                                 llama(intermediate_size=40, num_key_value_heads=4)],
                         ids=["untied", "tied", "k40"])
def test_bytes_equal_the_engine_profile(fmt, cfg):
    m = pw.llama2.from_preset(cfg, quantize=fmt)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(2, 5))
    kw = dict(dtype="fp32", weights=fmt, attention="unfused")
    with pw.use_backend("numpy"):
        with pw.profile() as prof:
            m(ids)
        rep = cm.analyze(cfg, "h100-sxm", phase="prefill", batch=2, seq_len=5, logits="all", **kw)
        n = assert_calls_match(rep.layers, prof.records)
        L, float_down = cfg.num_hidden_layers, cfg.intermediate_size % 32 != 0
        assert n == 7 * L + 1 - (L if float_down else 0)     # every matrix but a K = 40 one
        cache = m.new_cache(2, 6)
        m.forward(ids, cache, last_only=True)
        with pw.profile() as prof:
            m.forward(ids[:, :1], cache, last_only=True)     # one step at KV length 6
        rep = cm.analyze(cfg, "h100-sxm", phase="decode", batch=2, seq_len=6, **kw)
        assert assert_calls_match(rep.layers, prof.records) == n


def test_a_mix_of_formats_tensor_by_tensor_equals_the_engine():
    """A GGUF-like model: K-quants, Q8_0 and float matrices side by side (random blocks), its
    formats read tensor by tensor (what validate does for a .gguf file)."""
    cfg = llama(hidden_size=256, intermediate_size=512, num_hidden_layers=1, head_dim=64,
                vocab_size=64)
    w = dict(pw.llama2.random_weights(cfg, 0))
    pool = C._BytePool(np.random.default_rng(1), nbytes=1 << 20)
    formats = {"model.layers.0.self_attn.v_proj": "q6_k", "model.layers.0.mlp.down_proj": "q6_k",
               "model.layers.0.mlp.up_proj": "q4_k", "model.layers.0.self_attn.q_proj": "q4_k",
               "lm_head": "q8_0", "model.embed_tokens": "q4_0"}
    for module, fmt in formats.items():
        n, k = w[module + ".weight"].shape
        w[module + ".weight"] = pool.weights(fmt, n, k)[0]
    m = pw.llama2.Llama2(cfg, w)
    stored = stored_dtypes(m.weights, cfg)
    assert stored == {**{k: "fp32" for k in ("model.layers.0.self_attn.k_proj",
                                             "model.layers.0.self_attn.o_proj",
                                             "model.layers.0.mlp.gate_proj")}, **formats}
    assert stored_dtypes(pw.llama2.random_weights(cfg, 0), cfg) is None
    ids = np.zeros((1, 3), np.int64)
    with pw.use_backend("numpy"), pw.profile() as prof:
        m(ids)
    rep = cm.analyze(cfg, "h100-sxm", phase="prefill", seq_len=3, logits="all", dtype="fp32",
                     weight_dtypes=stored, attention="unfused")
    assert assert_calls_match(rep.layers, prof.records) == 5      # q, v, up, down, head
    emb = [r for r in rep.layers if r.op == "embedding"][0]
    assert (emb.weights_dtype, emb.bytes_weights) == ("q4_0", 3 * 256 // 32 * 18)


# ---------------------------------------------------------------------------------------------
# calibration and validation
# ---------------------------------------------------------------------------------------------
def synthetic_profile(eff: float = 0.5, qeff: float = 0.05, formats=("q8_0", "q4_0")):
    pts = {"matmul": [[0, 6, 6, eff], [10, 12, 12, eff]],
           "attention": [[0, 6, 6, 0, eff], [10, 10, 7, 1, eff]],
           "rms_norm": [[0, 6, eff], [12, 12, eff]], "layer_norm": [[0, 6, eff], [12, 12, eff]],
           "gelu": [[10, eff], [20, eff]],
           **{C.qmatmul_key(f): [[0, 6, 6, qeff], [10, 12, 12, qeff]] for f in formats}}
    return C.Profile(backend="cpp", machine=C.machine_identity("cpp"), measured_at="now",
                     peak_flops=1e11, peak_how="made up", bandwidth=1e10,
                     bandwidth_by_size=[[1e3, 2e10], [1e9, 1e10]],
                     overhead={op: 1e-6 for op in C.KERNEL_OPS},
                     glue={op: 2e-6 for op in C.KERNEL_OPS}, ufunc_call=1e-6, points=pts,
                     attention_impl="flash", qmatmul_backend=C.qmatmul_backend("cpp"))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COSTMODEL_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_a_quantized_gemm_is_predicted_from_its_formats_points():
    prof = synthetic_profile(eff=0.5, qeff=0.05)
    gb = GraphBuilder(Precision.parse("fp32", weights="q4_0"))
    q = gb.weight_gemm("m", "matmul", 1, 1024, 1024, weight_elems=1024 * 1024,
                       act_in_elems=1024, act_out_elems=1024)
    f = GraphBuilder(Precision.parse("fp32")).weight_gemm(
        "m", "matmul", 1, 1024, 1024, weight_elems=1024 * 1024, act_in_elems=1024,
        act_out_elems=1024)
    assert C._features(q)[0] == "qmatmul:q4_0" and C._features(f)[0] == "matmul"
    assert prof.predict(q, part="kernel") == pytest.approx(1e-6 + prof.roof(q) / 0.05)
    assert prof.predict(f, part="kernel") == pytest.approx(1e-6 + prof.roof(f) / 0.5)
    assert prof.roof(q) < prof.roof(f)                     # fewer bytes streamed
    q1 = dataclasses.replace(q, weights_dtype="q4_1")      # a format the profile never measured
    assert prof.predict(q1) is None


def test_calibration_weights_decode_to_finite_numbers_and_the_grid_is_small():
    rng = np.random.default_rng(0)
    pool = C._BytePool(rng, nbytes=1 << 20)
    for fmt, (block, size) in C.GGUF_FORMATS.items():
        w = pool.weights(fmt, 8, 2 * 256)[0]
        assert w.data.shape == (8, 2 * 256 // block * size)
        x = np.ones((1, 512), np.float32)
        assert np.isfinite(w.dequantize()).all() and np.isfinite(pw.kernels.qmatmul(x, w)).all()
    # the reference decodes ~3 ns a weight: the full grid stays at seconds per format and pass
    for quick in (False, True):
        grid = C._qgrid(quick)
        assert grid and all(k * n <= 2 ** 24 and m * k * n <= 2 ** 28 for m, k, n in grid)
        assert sum(k * n for _, k, n in grid) <= 80e6


def test_validate_a_tiny_quantized_llama(cache):
    synthetic_profile().save(C.profile_path("cpp"))
    v = cm.validate("llama2-tiny", backend="cpp", phase="decode", seq_len=5, quantize="q4_0",
                    repeats=1, min_seconds=0)
    ops = [c.op for c in v.layers]
    # q/k/v/o, gate, up per layer and the head; down_proj (K = 172) stays a float matmul
    assert ops.count("qmatmul") == 2 * 6 + 1 and ops.count("matmul") == 2
    assert all(c.measured > 0 and c.t_pred >= c.t_lower > 0 for c in v.layers)
    assert v.options["quantize"] == "q4_0" and v.pred_s > 0
    with pytest.raises(ValueError, match="has no qmatmul points of q4_1"):
        cm.validate("llama2-tiny", phase="decode", seq_len=5, quantize="q4_1", repeats=1)
    with pytest.raises(ValueError, match="quantize must be None or one of q8_0, q4_0, q4_1"):
        cm.validate("llama2-tiny", quantize="q4_k")
    with pytest.raises(ValueError, match="quantize applies to llama2 models"):
        cm.validate("clip-tiny", quantize="q8_0")
    stale = dataclasses.replace(synthetic_profile(), qmatmul_backend="elsewhere")
    stale.save(C.profile_path("cpp"))
    with pytest.raises(ValueError, match="calibrate again"):
        cm.validate("llama2-tiny", phase="decode", seq_len=5, quantize="q8_0", repeats=1)


def test_cli_validate_quantize(cache, capsys):
    synthetic_profile().save(C.profile_path("cpp"))
    rc = main(["validate", "llama2-tiny", "--phase", "prefill", "--seq-len", "3", "--quantize",
               "q8_0", "--repeats", "1", "--seconds", "0", "--format", "json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["options"]["quantize"] == "q8_0"
    assert sum(r["op"] == "qmatmul" for r in doc["layers"]) == 13
    assert math.isfinite(doc["e2e_error"])
