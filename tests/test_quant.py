"""Block quantization (pyworkloads.quant): the decoders equal llama.cpp's, as the ``gguf``
package (llama.cpp's own Python reader) implements them, bit for bit; the Q8_0/Q4_0/Q4_1 encoders
write the same bytes as its reference quantizers; the reference ``qmatmul`` and the quantized
LLaMA model compute what their float32 definitions compute."""

from __future__ import annotations

import numpy as np
import pytest

import pyworkloads as pw
from pyworkloads import kernels, quant

gguf = pytest.importorskip("gguf", reason="the gguf package is the independent reference")
from gguf import quants as gq  # noqa: E402


def gtype(qtype):
    return gguf.GGMLQuantizationType[qtype]


def scaled_rows(rng, rows, K):
    """Rows of very different magnitudes, with the edge cases the encoders round specially."""
    x = rng.standard_normal((rows, K)).astype(np.float32)
    x *= np.float32(10.0) ** rng.uniform(-6, 3, (rows, 1)).astype(np.float32)
    x[0, :32] = 0                                    # an all-zero block: scale 0, inverse 0
    x[1, :32] = np.arange(-16, 16) / 2               # exact halves: roundf's ties away from 0
    x[2, :32] = np.float32(1e-30)                    # scales below float16's range: 0
    x[3, 7] = -np.abs(x[3, :32]).max() * 3           # a negative peak (Q4_0 keeps its sign)
    return x


def raw_blocks(rng, qtype, n_blocks, scale_at, finite=True):
    """Random K-quant blocks: every bit random except the fp16 scales, set to moderate values
    (or left random when ``finite`` is False, so NaN and inf scales occur)."""
    size = quant.BLOCKS[qtype][1]
    b = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    if finite:
        for at in scale_at:
            d = rng.uniform(-0.05, 0.05, n_blocks).astype(np.float16)
            b[:, at:at + 2] = d[:, None].view(np.uint8)
    return b


K_SCALES = {"Q4_K": (0, 2), "Q6_K": (208,)}


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1"])
def test_encoders_write_ggmls_bytes_and_decoders_invert_them(qtype, rng):
    x = scaled_rows(rng, 9, 256)
    ours = quant.quantize(x, qtype)
    ref = gq.quantize(x, gtype(qtype))
    np.testing.assert_array_equal(ours.data, ref)
    np.testing.assert_array_equal(ours.dequantize(), gq.dequantize(ref, gtype(qtype)))
    assert ours.shape == x.shape and ours.nbytes == ref.nbytes


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
@pytest.mark.parametrize("finite", [True, False])
def test_k_quant_decoders_equal_ggmls(qtype, finite, rng):
    blocks = raw_blocks(rng, qtype, 24, K_SCALES[qtype], finite)
    data = blocks.reshape(3, -1)                                    # 3 rows of 8 blocks
    with np.errstate(invalid="ignore", over="ignore"):
        got = quant.dequantize(data, qtype, (3, 8 * 256))
        want = gq.dequantize(data, gtype(qtype))
    np.testing.assert_array_equal(got, want)                        # NaNs in the same places


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1"])
def test_decoders_of_random_bytes_equal_ggmls(qtype, rng):
    """Every bit pattern, NaN/inf scales included, not only what an encoder writes."""
    data = rng.integers(0, 256, (5, 4 * quant.BLOCKS[qtype][1]), dtype=np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):
        np.testing.assert_array_equal(quant.dequantize(data, qtype, (5, 128)),
                                      gq.dequantize(data, gtype(qtype)))


def test_bits_per_weight():
    assert [quant.bits_per_weight(t) for t in quant.BLOCKS] == [8.5, 4.5, 5.0, 4.5, 6.5625]


def test_rows_decode_only_the_rows_asked_for(rng):
    qt = quant.quantize(rng.standard_normal((50, 64)).astype(np.float32), "Q4_0")
    ids = np.array([[3, 49], [0, 3]])
    np.testing.assert_array_equal(qt.rows(ids), qt.dequantize()[ids])


def test_quantize_and_tensor_refuse_bad_input(rng):
    with pytest.raises(ValueError, match="multiple of Q8_0's block of 32"):
        quant.quantize(np.zeros((2, 40), np.float32), "Q8_0")
    with pytest.raises(ValueError, match="NaN or inf"):
        quant.quantize(np.full((1, 32), np.inf, np.float32), "Q4_0")
    with pytest.raises(ValueError, match="K-quants are decoded, not written"):
        quant.quantize(np.zeros((1, 256), np.float32), "Q4_K")
    with pytest.raises(TypeError, match="floating-point"):
        quant.quantize(np.zeros((1, 32), np.int32), "Q8_0")
    with pytest.raises(ValueError, match="qtype must be one of"):
        quant.QuantizedTensor("Q3_K", (1, 256), np.zeros((1, 110), np.uint8))
    with pytest.raises(ValueError, match=r"must be uint8 \(2, 34\)"):
        quant.QuantizedTensor("Q8_0", (2, 32), np.zeros((2, 33), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        quant.QuantizedTensor("Q8_0", (1, 32), np.zeros((1, 34), np.int8))
    with pytest.raises(TypeError, match="no transpose"):
        quant.quantize(np.zeros((1, 32), np.float32), "Q8_0").T


# ---- the dispatched op ----------------------------------------------------------------------
@pytest.mark.parametrize("qtype", list(quant.BLOCKS))
def test_reference_qmatmul_is_x_times_decoded_w_transposed(qtype, rng):
    block = quant.BLOCKS[qtype][0]
    K = 2 * block
    if qtype in K_SCALES:
        w = quant.QuantizedTensor(qtype, (7, K),
                                  raw_blocks(rng, qtype, 14, K_SCALES[qtype]).reshape(7, -1))
    else:
        w = quant.quantize(rng.standard_normal((7, K)).astype(np.float32), qtype)
    x = rng.standard_normal((3, K)).astype(np.float32)
    want = x.astype(np.float64) @ gq.dequantize(w.data, gtype(qtype)).astype(np.float64).T
    with kernels.profile() as prof:
        got = kernels.qmatmul(x, w)
    bound = 1e-6 * (np.abs(x) @ np.abs(w.dequantize()).T) + 1e-30
    assert got.dtype == np.float32 and got.shape == (3, 7)
    assert np.all(np.abs(got - want) <= bound)
    (rec,) = prof.records
    assert (rec.op, rec.macs, rec.flops) == ("qmatmul", 3 * 7 * K, 2 * 3 * 7 * K)
    assert rec.bytes == x.nbytes + w.nbytes + got.nbytes         # the weight at its stored size


def test_qmatmul_refuses_bad_arguments(rng):
    w = quant.quantize(rng.standard_normal((4, 32)).astype(np.float32), "Q8_0")
    with pytest.raises(TypeError, match="QuantizedTensor"):
        kernels.qmatmul(np.zeros((1, 32), np.float32), np.zeros((4, 32), np.float32))
    with pytest.raises(ValueError, match="same K"):
        kernels.qmatmul(np.zeros((1, 64), np.float32), w)
    with pytest.raises(ValueError, match="same K"):
        kernels.qmatmul(np.zeros(32, np.float32), w)
    with pytest.raises(TypeError, match="float32"):
        kernels.qmatmul(np.zeros((1, 32), np.float64), w)


# ---- the quantized model --------------------------------------------------------------------
def llama_config():
    # every matrix's K a multiple of 32: D = 64, F = 96, head_dim 16
    return pw.llama2.Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
                            max_position_embeddings=64)


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1"])
def test_quantize_weights_policy(qtype):
    cfg = llama_config()
    w = pw.llama2.random_weights(cfg, seed=1)
    q = pw.llama2.quantize_weights(w, cfg, qtype)
    assert q["model.layers.1.mlp.down_proj.weight"].qtype == qtype.upper()
    assert q["model.embed_tokens.weight"].qtype == "Q8_0"        # the tied head: 8 bits always
    assert q["model.norm.weight"] is w["model.norm.weight"]      # vectors stay float
    odd = pw.llama2.Config(**{**cfg.__dict__, "intermediate_size": 100})
    q = pw.llama2.quantize_weights(pw.llama2.random_weights(odd), odd, qtype)
    assert isinstance(q["model.layers.0.mlp.down_proj.weight"], np.ndarray)   # K = 100: float
    assert q["model.layers.0.mlp.up_proj.weight"].qtype == qtype.upper()
    with pytest.raises(ValueError, match="quantize"):
        pw.llama2.quantize_weights(w, cfg, "q3_k")


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1"])
def test_quantized_model_runs_its_decoded_weights(qtype, rng):
    """A model on quantized weights computes what the float model computes on the decoded
    weights -- the quantized path adds no error of its own -- and its logits stay near the
    unquantized model's (the drift that quantization itself causes)."""
    cfg = llama_config()
    w = pw.llama2.random_weights(cfg, seed=2)
    mq = pw.llama2.Llama2(cfg, pw.llama2.quantize_weights(w, cfg, qtype))
    decoded = {k: v.dequantize() if isinstance(v, quant.QuantizedTensor) else v
               for k, v in mq.weights.items()}
    md, mf = pw.llama2.Llama2(cfg, decoded), pw.llama2.Llama2(cfg, w)
    ids = rng.integers(0, cfg.vocab_size, (2, 9))
    lq, ld, lf = mq(ids), md(ids), mf(ids)
    np.testing.assert_allclose(lq, ld, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(mq.generate(ids, max_new_tokens=5),
                                  md.generate(ids, max_new_tokens=5))
    drift = np.abs(lq - lf).max() / np.abs(lf).max()
    assert drift < (0.02 if qtype == "q8_0" else 0.25), drift


def test_from_pretrained_quantizes_on_load(tmp_path, rng):
    """A bf16 safetensors checkpoint quantized as it loads equals quantizing its weights by hand;
    ``pyworkloads run llama2 --quantize`` runs it."""
    import json

    from pyworkloads import cli, io

    cfg = llama_config()
    w = pw.llama2.random_weights(cfg, seed=3)
    io.save_safetensors(tmp_path / "model.safetensors",
                        w, dtype="BF16")
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_hf()))
    m = pw.llama2.from_pretrained(tmp_path, quantize="q4_0")
    stored = {k: io.bf16_to_f32(io.f32_to_bf16(v)) for k, v in w.items()}
    want = pw.llama2.quantize_weights(stored, cfg, "q4_0")
    for name, t in want.items():
        got = m.weights[name]
        if isinstance(t, quant.QuantizedTensor):
            assert got.qtype == t.qtype
            np.testing.assert_array_equal(got.data, t.data)
        else:
            np.testing.assert_array_equal(np.asarray(got, np.float32), t)
    ids = rng.integers(0, cfg.vocab_size, (1, 5))
    np.testing.assert_array_equal(m(ids), pw.llama2.Llama2(cfg, want)(ids))
    assert cli.main(["run", "llama2", "--model", str(tmp_path), "--quantize", "q8_0",
                     "--prompt", "1 2 3", "--max-new-tokens", "2"]) == 2   # no tokenizer: refused
    assert cli.main(["run", "llama2", "--preset", "llama2-tiny", "--quantize", "q8_0",
                     "--prompt", "1 2 3", "--max-new-tokens", "2"]) == 0
