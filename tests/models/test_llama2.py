"""LLaMA 2 without torch: config parsing, presets and parameter counts, input validation, the KV
cache against full recomputes, sampling, RoPE layouts, grouped-query attention written out
against the kernel, profile scopes, layer-by-layer weight conversion, the tokenizer and chat
format, the CLI hooks, and parity with the committed transformers fixture."""
from __future__ import annotations

import argparse
import importlib.util
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from tolerances import gamma  # tests/ is on sys.path (rootdir conftest)

import pyworkloads as pw
from pyworkloads import io
from pyworkloads.models import llama2
from pyworkloads.models.common import KVCache
from pyworkloads.models.llama2 import Config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FIX = FIXTURES / "llama2"
BACKENDS = [b for b in ("numpy", "cpp", "cuda") if b in pw.kernels.available()]
# Two runs of one model whose sums differ only in order (other matrix shapes pick other BLAS
# blockings; cached keys; permuted channels) give logits that differ by float32 rounding alone.
# The random models here have |logits| < 5, where an ulp is 4.8e-7; the runs differ by a few ulps
# (4e-6 at most measured) and SAME_SUMS is 20 ulps.
SAME_SUMS = 1e-5


def _fixture_helpers():
    spec = importlib.util.spec_from_file_location("make_llama2_fixture",
                                                  FIXTURES / "make_llama2_fixture.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny(**kw) -> Config:
    base = dict(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=61, max_position_embeddings=32, rope_theta=300.0)
    return Config(**{**base, **kw})


def model(config=None, seed=0, std=0.2) -> llama2.Llama2:
    """A random model whose logits vary enough that greedy decoding does not repeat one token."""
    config = config or tiny()
    w = llama2.random_weights(config, seed, std=std)
    rng = np.random.default_rng(seed + 1)
    for k in w:
        if k.endswith("norm.weight"):
            w[k] = (1 + 0.2 * rng.standard_normal(w[k].shape)).astype(np.float32)
    return llama2.Llama2(config, w)


# ---------------------------------------------------------------------------------------------
# configs and presets
# ---------------------------------------------------------------------------------------------
def test_published_parameter_counts():
    # Touvron et al. 2023 / the HF model cards: 6,738,415,616; 13,015,864,320; 68,976,648,192
    assert llama2.count_params(llama2.PRESETS["llama2-7b"]) == 6_738_415_616
    assert llama2.count_params(llama2.PRESETS["llama2-13b"]) == 13_015_864_320
    assert llama2.count_params(llama2.PRESETS["llama2-70b"]) == 68_976_648_192
    for name in ("7b", "13b", "70b"):
        assert llama2.PRESETS[f"llama2-{name}-chat"] == llama2.PRESETS[f"llama2-{name}"]


def test_preset_shapes():
    p = llama2.PRESETS["llama2-70b"]
    assert (p.hidden_size, p.intermediate_size, p.num_hidden_layers, p.num_attention_heads,
            p.num_key_value_heads, p.head_dim, p.vocab_size, p.max_position_embeddings) == \
        (8192, 28672, 80, 64, 8, 128, 32000, 4096)
    p = llama2.PRESETS["llama2-7b"]
    assert (p.hidden_size, p.intermediate_size, p.num_hidden_layers, p.num_key_value_heads,
            p.rms_norm_eps) == (4096, 11008, 32, 32, 1e-5)


def test_config_from_hf_rope_theta_versions():
    base = dict(hidden_size=32, intermediate_size=40, num_hidden_layers=1, num_attention_heads=4,
                vocab_size=50)
    assert Config.from_hf(base).rope_theta == 10000.0                           # absent
    assert Config.from_hf({**base, "rope_theta": 5e5}).rope_theta == 5e5        # transformers 4.x
    v5 = {**base, "rope_parameters": {"rope_theta": 1234.0, "rope_type": "default"}}   # 5.x
    c = Config.from_hf(v5)
    assert c.rope_theta == 1234.0 and c.rope_scaling is None
    assert c.num_key_value_heads == 4 and c.head_dim == 8                       # defaults
    assert (c.rms_norm_eps, c.max_position_embeddings) == (1e-6, 2048)          # LlamaConfig's
    assert Config.from_hf({**base, "eos_token_id": [2, 7]}).eos_ids == (2, 7)
    lin = Config.from_hf({**base, "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert lin.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert Config.from_hf(c.to_hf()) == c


@pytest.mark.parametrize("cfg,match", [
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "llama3"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "yarn"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "dynamic"),
    ({"model_type": "mistral"}, "model_type"),
    ({"num_key_value_heads": 3}, "multiple of num_key_value_heads"),
    ({"head_dim": 7}, "head_dim must be even"),
    ({"hidden_act": "tanhh"}, "hidden_act"),
])
def test_config_refuses_what_it_cannot_honour(cfg, match):
    base = dict(hidden_size=32, intermediate_size=40, num_hidden_layers=1, num_attention_heads=4,
                vocab_size=50)
    with pytest.raises(ValueError, match=match):
        Config.from_hf({**base, **cfg})


def test_config_requires_structural_keys():
    with pytest.raises(ValueError, match="vocab_size"):
        Config.from_hf(dict(hidden_size=32, intermediate_size=40, num_hidden_layers=1,
                            num_attention_heads=4))


def test_from_preset_refuses_what_does_not_fit(monkeypatch):
    monkeypatch.setattr("pyworkloads.models.available_memory", lambda: 10_000_000)
    with pytest.raises(MemoryError, match="llama2-tiny.*GB"):
        llama2.from_preset("llama2-tiny")
    monkeypatch.undo()
    with pytest.raises(MemoryError, match="275.9 GB"):             # 68,976,648,192 params x 4 bytes
        llama2.from_preset("llama2-70b")
    with pytest.raises(ValueError, match="unknown preset"):
        llama2.from_preset("llama2-8b")


def test_from_preset_random_weights():
    m = llama2.from_preset("llama2-tiny", seed=3)
    w = m.weights["model.layers.0.mlp.up_proj.weight"]
    assert w.dtype == np.float32 and abs(w.std() - 0.02) < 0.002
    assert np.all(m.weights["model.norm.weight"] == 1)
    again = llama2.from_preset("llama2-tiny", seed=3).weights["model.layers.0.mlp.up_proj.weight"]
    np.testing.assert_array_equal(w, again)


# ---------------------------------------------------------------------------------------------
# input validation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ids,exc,match", [
    ([[1, 2, 61]], ValueError, "id 61, outside the vocabulary"),
    ([[1, -2, 3]], ValueError, "id -2, outside the vocabulary"),
    (np.array([[1.0, 2.0]]), TypeError, "integer dtype"),
    (np.array([[True, False]]), TypeError, "integer dtype"),
    ("hello", TypeError, "token ids"),
    (np.zeros((1, 0), np.int64), ValueError, "empty"),
    (np.zeros((0, 3), np.int64), ValueError, "empty"),
    (np.ones((1, 33), np.int64), ValueError, "more than the 32 positions left in the model's"),
    (np.ones((1, 2, 3), np.int64), ValueError, "batch, tokens"),
])
def test_bad_input_ids(ids, exc, match):
    m = model()
    with pytest.raises(exc, match=match):
        m(ids)
    with pytest.raises(exc, match=match):
        m.generate(ids, max_new_tokens=1)


def test_generate_argument_checks():
    m = model()
    ids = np.array([[1, 2, 3]])
    with pytest.raises(ValueError, match="max_position_embeddings"):
        m.generate(ids, max_new_tokens=30)                 # 3 + 30 > 32
    for kw, match in [({"max_new_tokens": -1}, "max_new_tokens"),
                      ({"temperature": -0.5}, "temperature"),
                      ({"top_k": 0}, "top_k"), ({"top_p": 1.5}, "top_p")]:
        with pytest.raises(ValueError, match=match):
            m.generate(ids, **{"max_new_tokens": 2, **kw})
    np.testing.assert_array_equal(m.generate(ids, max_new_tokens=0), ids)
    with pytest.raises(ValueError, match="top_p"):
        m.generate_stream(ids, top_p=0)                    # checked at the call, before iterating


def test_missing_or_misshapen_weights():
    cfg = tiny()
    w = llama2.random_weights(cfg)
    del w["lm_head.weight"]
    with pytest.raises(ValueError, match="lm_head.weight.*untied"):
        llama2.Llama2(cfg, w)
    w = llama2.random_weights(cfg)
    w["model.layers.1.self_attn.k_proj.weight"] = w["model.layers.1.self_attn.q_proj.weight"]
    with pytest.raises(ValueError, match="k_proj.weight.*shape"):
        llama2.Llama2(cfg, w)


# ---------------------------------------------------------------------------------------------
# forward pass, cache and generation
# ---------------------------------------------------------------------------------------------
def test_logits_shape_dtype_and_batch_independence():
    m = model()
    ids = np.random.default_rng(1).integers(0, 61, (3, 9))
    logits = m(ids)
    assert logits.shape == (3, 9, 61) and logits.dtype == np.float32
    np.testing.assert_allclose(m(ids[1:2])[0], logits[1], atol=SAME_SUMS)
    np.testing.assert_array_equal(m(ids[1]), m(ids[1:2]))                     # 1-D = one sequence
    # causality: later tokens do not change earlier logits
    ids2 = ids.copy()
    ids2[:, 6:] = (ids2[:, 6:] + 1) % 61
    np.testing.assert_allclose(m(ids2)[:, :6], logits[:, :6], atol=SAME_SUMS)
    assert not np.allclose(m(ids2)[:, 6:], logits[:, 6:])


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_kv_cache_decode_equals_full_recompute(kv_heads):
    m = model(tiny(num_key_value_heads=kv_heads))
    ids = np.random.default_rng(2).integers(0, 61, (2, 12))
    full = m(ids)                                                             # [2, 12, V]
    cache = m.new_cache(2, 12)
    np.testing.assert_allclose(m.forward(ids[:, :5], cache), full[:, :5], atol=SAME_SUMS)
    chunk = m.forward(ids[:, 5:7], cache)                                     # 2 tokens at once
    np.testing.assert_allclose(chunk, full[:, 5:7], atol=SAME_SUMS)
    for t in range(7, 12):
        step = m.forward(ids[:, t:t + 1], cache)                              # [2, 1, V]
        np.testing.assert_allclose(step[:, 0], full[:, t], atol=SAME_SUMS)
    assert cache.length == 12
    with pytest.raises(ValueError, match="KV cache full"):
        m.forward(ids[:, :1], cache)


def test_greedy_generate_equals_argmax_of_recompute():
    m = model()
    ids = np.random.default_rng(3).integers(3, 61, (2, 4))
    out = m.generate(ids, max_new_tokens=10, eos_token_id=None)
    assert out.shape == (2, 14)
    seq = ids
    for _ in range(10):
        seq = np.concatenate([seq, m(seq)[:, -1].argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(out, seq)
    assert len(set(out[0, 4:].tolist())) > 2                      # not a degenerate repeat


def test_generate_stops_at_eos_and_pads():
    m = model()
    ids = np.array([[5, 9, 11], [7, 8, 2]])
    free = m.generate(ids, max_new_tokens=6, eos_token_id=None)
    eos = int(free[0, 4])                                         # the 2nd token row 0 makes
    out = m.generate(ids, max_new_tokens=6, eos_token_id=eos)
    np.testing.assert_array_equal(out[0, :5], free[0, :5])
    assert np.all(out[0, 5:] == eos)                              # padded after stopping
    row1 = free[1, 3:].tolist()
    if eos not in row1:                                                       # row 1 ran to the end
        assert out.shape[1] == 9 and out[1, 3:].tolist() == row1


def test_sampling_seeded_and_topk1_is_greedy():
    m = model()
    ids = np.array([[4, 5, 6]])
    a = m.generate(ids, 8, temperature=1.0, seed=7, eos_token_id=None)
    b = m.generate(ids, 8, temperature=1.0, seed=7, eos_token_id=None)
    np.testing.assert_array_equal(a, b)
    greedy = m.generate(ids, 8, eos_token_id=None)
    for cut in ({"top_k": 1}, {"top_p": 1e-6}):
        got = m.generate(ids, 8, temperature=0.7, seed=1, eos_token_id=None, **cut)
        np.testing.assert_array_equal(got, greedy)
    others = {tuple(m.generate(ids, 8, temperature=2.0, seed=s, eos_token_id=None)[0])
              for s in range(4)}
    assert len(others) > 1


def test_sample_next_distribution():
    """Frequencies of 40k draws match the renormalised softmax computed in float64."""
    logits = np.array([[2.0, 1.0, 0.5, 0.0, -1.0, 3.0]], np.float32)
    rng = np.random.default_rng(0)

    def expected(T, k, p):
        z = logits[0].astype(np.float64) / T
        q = np.exp(z - z.max())
        q /= q.sum()
        keep = np.zeros(6, bool)
        order = np.argsort(-q)
        keep[order[:k]] = True
        cum = np.cumsum(q[order])
        keep[order[np.searchsorted(cum, p) + 1:]] = False      # smallest prefix reaching p
        q = np.where(keep, q, 0)
        return q / q.sum()

    n = 40000
    for T, k, p in [(1.0, 6, 1.0), (0.5, 3, 1.0), (1.5, 6, 0.8)]:
        draws = np.concatenate([llama2.sample_next(np.repeat(logits, 1000, 0), T, k, p, rng)
                                for _ in range(n // 1000)])
        freq = np.bincount(draws, minlength=6) / n
        # a frequency of n draws has standard deviation sqrt(q(1-q)/n) <= 0.0025: 0.01 is 4 sigma
        np.testing.assert_allclose(freq, expected(T, k, p), atol=0.01)


def _to_meta_layout(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo the q/k row permutation HF's conversion script applies to Meta checkpoints:
    HF rows (head, half j, i) -> Meta rows (head, i, j).  w [H·Dh, D] -> [H·Dh, D]."""
    Dh = w.shape[0] // heads
    return w.reshape(heads, 2, Dh // 2, -1).transpose(0, 2, 1, 3).reshape(w.shape)


def test_interleaved_rope_layout_matches_half_on_meta_weights():
    m = model()
    cfg = m.config
    meta = dict(m.weights)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}.self_attn"
        for proj, heads in (("q_proj", cfg.num_attention_heads),
                            ("k_proj", cfg.num_key_value_heads)):
            meta[f"{p}.{proj}.weight"] = _to_meta_layout(meta[f"{p}.{proj}.weight"], heads)
    ids = np.random.default_rng(4).integers(0, 61, (1, 10))
    ref = m(ids)
    interleaved = llama2.Llama2(cfg, meta, rope_layout="interleaved")(ids)
    np.testing.assert_allclose(interleaved, ref, atol=SAME_SUMS)             # q·k in another order
    wrong = llama2.Llama2(cfg, meta, rope_layout="half")(ids)
    assert np.abs(wrong - ref).max() > 1e-3                                     # the layout matters


def test_profile_scopes_follow_hf_module_names():
    m = model()
    with pw.profile() as prof:
        m(np.array([[1, 2, 3]]))
    names = {r.name for r in prof.records}
    assert names == {"model.layers.0.self_attn", "model.layers.1.self_attn",
                     "model.layers.0.mlp", "model.layers.1.mlp",
                     "model.layers.0.input_layernorm", "model.layers.0.post_attention_layernorm",
                     "model.layers.1.input_layernorm", "model.layers.1.post_attention_layernorm",
                     "model.norm", "lm_head"}
    attn = [r for r in prof.records if r.op == "attention"]
    assert attn[0].shapes[0] == (1, 4, 3, 8)
    assert attn[0].shapes[1] == (1, 2, 3, 8)                                   # K/V not repeated


def test_scopes_nest_inside_the_layer():
    """Every kernel of block i runs in a module of ``model.layers.{i}``, named by its full path."""
    m = model()
    with pw.profile() as prof:
        m(np.array([[1, 2, 3]]))
    layer = [r.name for r in prof.records if r.name.startswith("model.layers.")]
    assert layer and all(n.split(".")[3] in ("input_layernorm", "self_attn",
                                             "post_attention_layernorm", "mlp") for n in layer)
    assert {r.op for r in prof.records if r.name.endswith(".self_attn")} == {"matmul", "attention"}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T,S", [(7, 7), (3, 10), (1, 9)])
def test_grouped_query_attention_reference_equals_the_kernel(backend, T, S):
    """The written-out definition (each K/V head repeated H/KVH times) gives what the attention
    kernel gives without copying K/V, for a prompt (T = S) and for queries after a cache."""
    B, H, KVH, Dh = 2, 6, 2, 16
    rng = np.random.default_rng(100 * T + S)
    q = rng.standard_normal((B, H, T, Dh), dtype=np.float32)
    k = rng.standard_normal((B, KVH, S, Dh), dtype=np.float32)
    v = rng.standard_normal((B, KVH, S, Dh), dtype=np.float32)
    want = llama2.grouped_query_attention(q, k, v)                            # [B, H, T, Dh]
    with pw.use_backend(backend):
        got = pw.kernels.attention(q, k, v, causal=True)
    assert got.shape == want.shape == (B, H, T, Dh) and want.dtype == np.float32
    # Either float32 evaluation is off the exact value by at most: each score q.k/sqrt(Dh) by
    # delta = gamma(Dh + 2) * sum|q||k| / sqrt(Dh); each softmax weight by a relative
    # 2 delta + gamma(S + 4) (max, exp, sum of S, division); the weighted sum of S values adds
    # gamma(S) relative to sum p|v| <= max|v|.  The bound holds in any summation order (blocked
    # online softmax included); twice it covers both sides.
    k_full = np.repeat(k, H // KVH, axis=1).astype(np.float64)
    delta = gamma(Dh + 2) * (np.abs(q) @ np.abs(k_full).swapaxes(-1, -2)).max() / np.sqrt(Dh)
    bound = 2 * (2 * delta + gamma(2 * S + 4)) * np.abs(v).max()
    assert np.abs(got - want).max() <= bound
    # the test tells the group mapping apart: query head h reads K/V head h // 3, not h % 2
    tiled = llama2.grouped_query_attention(q[:, [0, 2, 4, 1, 3, 5]], k, v)[:, [0, 3, 1, 4, 2, 5]]
    assert np.abs(tiled - got).max() > 100 * bound


def rope(x, theta: float = 10000.0, offset: int = 0, layout: str = "half"):
    """The model's RoPE on x [..., T, Dh] at positions offset .. offset + T - 1."""
    cfg = Config(hidden_size=x.shape[-1], intermediate_size=1, num_hidden_layers=1,
                 num_attention_heads=1, vocab_size=3, rope_theta=theta)     # ids 1, 2: bos, eos
    cos, sin = llama2.rope_tables(cfg, offset, x.shape[-2])                    # [T, Dh/2]
    return llama2.apply_rope(x, cos, sin, layout)


def test_rope_tables_and_linear_scaling():
    """The angles are p · θ^(-2i/Dh) at positions p (divided by the factor with linear
    scaling), evaluated in float64 and rounded once to float32."""
    for factor in (None, 2.0):
        scaling = None if factor is None else {"rope_type": "linear", "factor": factor}
        cfg = tiny(rope_scaling=scaling)
        cos, sin = llama2.rope_tables(cfg, 4, 5)                               # [5, 4] each
        inv = cfg.rope_theta ** (-np.arange(0, 8, 2) / 8)
        angles = (np.arange(4, 9) / (factor or 1.0))[:, None] * inv[None, :]
        np.testing.assert_array_equal(cos, np.cos(angles).astype(np.float32))
        np.testing.assert_array_equal(sin, np.sin(angles).astype(np.float32))
    x = np.zeros((1, 1, 5, 8), np.float32)
    with pytest.raises(ValueError, match="rope_layout"):
        llama2.apply_rope(x, cos, sin, "meta")


def test_rope_preserves_norms_and_is_relative(rng):
    q = rng.standard_normal((1, 2, 6, 16)).astype(np.float32)
    r = rope(q, theta=10000.0)
    # each rotated pair is 2 products and a sum with float32 cos/sin (γ_3 of |x1·c| + |x2·s|),
    # which moves the 16-vector by <= √2·γ_3·||q||; each float32 norm sums 16 squares (γ_16,
    # halved by the sqrt) and rounds the sqrt: <= (γ_16 + γ_7)·||q|| together
    np.testing.assert_allclose(np.linalg.norm(r, axis=-1), np.linalg.norm(q, axis=-1),
                               rtol=gamma(16) + gamma(7))
    # <R(m) q, R(n) k> depends only on m - n
    a, b = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    def at(v, pos):
        return rope(v[None, None, None, :], offset=pos)[0, 0, 0]
    # both sides: two rotations (√2·γ_3 each) and a length-16 dot (γ_16) of values ~1, so each is
    # within ≈ 25u·Σ|a||b| ≈ 2e-5 of the exact <a, R(4) b> (≈ 10 here, Σ|a||b| ≈ 12): far inside
    # 1e-4·|ref| ≈ 1e-3
    np.testing.assert_allclose(at(a, 7) @ at(b, 3), at(a, 104) @ at(b, 100), rtol=1e-4)
    # position 0: cos 0 = 1 and sin 0 = 0 exactly, so the identity is exact
    np.testing.assert_allclose(rope(q, offset=0)[..., 0, :], q[..., 0, :])


def test_rope_half_layout_on_permuted_weights_equals_interleaved(rng):
    """HF's Meta->HF conversion permutes q/k rows (pairs (2i, 2i+1) -> (i, i + Dh/2)); attention
    scores must not change."""
    Dh, D, T = 8, 12, 5
    x = rng.standard_normal((T, D)).astype(np.float32)
    wq = rng.standard_normal((Dh, D)).astype(np.float32)
    wk = rng.standard_normal((Dh, D)).astype(np.float32)
    perm = np.concatenate([np.arange(0, Dh, 2), np.arange(1, Dh, 2)])
    def scores(wq, wk, layout):
        q = rope((x @ wq.T)[None, None], theta=500.0, layout=layout)
        k = rope((x @ wk.T)[None, None], theta=500.0, layout=layout)
        return q[0, 0] @ k[0, 0].T
    # both layouts do the same products; only the order of the length-8 score sums differs
    # (Σ|q||k| <= 160): ~√8·u·160 ≈ 3e-5 apart with random rounding (2·γ_8·160 ≈ 1.5e-4 only if
    # every rounding went the same way)
    np.testing.assert_allclose(scores(wq[perm], wk[perm], "half"), scores(wq, wk, "interleaved"),
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="layout"):
        rope(x[None, None], layout="sideways")


def test_rope_matches_transformers_rotate_half(rng):
    torch = pytest.importorskip("torch",
                                reason="cross-check against transformers' RoPE needs torch")
    llama = pytest.importorskip("transformers.models.llama.modeling_llama",
                                reason="needs transformers")
    q = rng.standard_normal((1, 2, 6, 16)).astype(np.float32)
    inv = 1.0 / 10000 ** (torch.arange(0, 16, 2).float() / 16)
    ang = torch.arange(3, 9).float()[:, None] * inv[None]
    emb = torch.cat([ang, ang], -1)
    ref, _ = llama.apply_rotary_pos_emb(torch.from_numpy(q), torch.from_numpy(q), emb.cos()[None],
                                        emb.sin()[None])
    # transformers computes the angles (<= 8 rad) in float32 from a float32 inv_freq, a few ulps
    # of 8 (≈ 24u absolute), we in float64; plus 3 roundings on each side, for |q| <= 2.4:
    # ≈ 30u·2.4 ≈ 4e-6
    np.testing.assert_allclose(rope(q, offset=3), ref.numpy(), atol=1e-5)


def test_forward_function_with_a_cache():
    """The pure forward appends to a common.KVCache and advances it by T once per call."""
    m = model()
    cfg = m.config
    ids = np.random.default_rng(7).integers(0, 61, (2, 6))
    cache = m.new_cache(2, 8)
    assert isinstance(cache, KVCache) and cache.capacity == 8 and len(cache.k) == 2
    assert cache.k[0].shape == (2, cfg.num_key_value_heads, 8, cfg.head_dim)
    first = llama2.forward(ids[:, :4], m.weights, cfg, cache)                  # [2, 4, V]
    assert cache.length == 4
    last = llama2.forward(ids[:, 4:], m.weights, cfg, cache, last_only=True)   # [2, 1, V]
    assert cache.length == 6 and last.shape == (2, 1, 61)
    full = llama2.forward(ids, m.weights, cfg)                                 # [2, 6, V]
    np.testing.assert_allclose(first, full[:, :4], atol=SAME_SUMS, rtol=0)
    np.testing.assert_allclose(last[:, 0], full[:, -1], atol=SAME_SUMS, rtol=0)
    with pytest.raises(ValueError, match="KV cache max_length"):
        m.new_cache(1, cfg.max_position_embeddings + 1)
    with pytest.raises(ValueError, match="batch"):
        m.forward(ids[:1, :1], cache)


# ---------------------------------------------------------------------------------------------
# checkpoints on disk
# ---------------------------------------------------------------------------------------------
def _save(tmp_path, m, dtype=None, tokenizer=None):
    (tmp_path / "config.json").write_text(json.dumps(m.config.to_hf()))
    io.save_safetensors(tmp_path / "model.safetensors", m.weights, dtype=dtype)
    if tokenizer is not None:
        tokenizer.save(str(tmp_path / "tokenizer.json"))
    return tmp_path


# Rounding every weight by at most u relative (fp16: u = 2^-11, bf16: u = 2^-8) moves logits of
# size <= 3.1 by a few u·3 through two layers and the head (1.8e-3 and 2.4e-2 measured): the
# bounds are 13·u·3 and 9·u·3.
@pytest.mark.parametrize("dtype,atol", [(None, 0.0), ("F16", 2e-2), ("BF16", 1e-1)])
def test_from_pretrained_roundtrip(tmp_path, dtype, atol):
    m = model(tiny(tie_word_embeddings=True))
    loaded = llama2.from_pretrained(_save(tmp_path, m, dtype))
    assert loaded.config == m.config and loaded.tokenizer is None
    ids = np.array([[1, 5, 9, 60]])
    np.testing.assert_allclose(loaded(ids), m(ids), atol=atol, rtol=0)
    # exactly what converting the stored values gives
    exact = llama2.Llama2(m.config, {k: loaded.weights[k] for k in loaded.weights})
    np.testing.assert_array_equal(loaded(ids), exact(ids))


def test_fp16_forward_converts_one_layer_at_a_time(tmp_path):
    """A forward over a memory-mapped fp16 checkpoint allocates about one weight matrix in
    float32 at a time -- never the whole model (tracemalloc sees NumPy's allocations, not the
    mapped file)."""
    cfg = Config(hidden_size=128, intermediate_size=512, num_hidden_layers=8, num_attention_heads=4,
                 vocab_size=256, max_position_embeddings=64)
    m = llama2.from_pretrained(_save(tmp_path, model(cfg), "F16"))
    shapes = llama2.weight_shapes(cfg)
    layer_fp32 = 4 * sum(np.prod(s) for k, s in shapes.items() if k.startswith("model.layers.0."))
    total_fp32 = 4 * llama2.count_params(cfg)
    assert total_fp32 > 6 * layer_fp32                         # the bound below can tell them apart
    ids = np.arange(16)[None] % 256
    m(ids)                                                     # warm up lazy imports and caches
    tracemalloc.start()
    m(ids)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < layer_fp32, (peak, layer_fp32, total_fp32)


def test_sharded_checkpoint(tmp_path):
    m = model()
    (tmp_path / "config.json").write_text(json.dumps(m.config.to_hf()))
    names = list(m.weights)
    shards = {"model-00001-of-00002.safetensors": names[:9],
              "model-00002-of-00002.safetensors": names[9:]}
    for fname, keys in shards.items():
        io.save_safetensors(tmp_path / fname, {k: m.weights[k] for k in keys}, dtype="BF16")
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    loaded = llama2.from_pretrained(tmp_path)
    ids = np.array([[3, 4, 5]])
    np.testing.assert_allclose(loaded(ids), m(ids), atol=0.1)                 # bf16: see above
    assert len(loaded.weights.files) == 2


def test_committed_fixture_matches_transformers():
    """tests/fixtures/llama2: a bf16 GQA checkpoint; transformers' logits and greedy tokens."""
    exp = io.load_safetensors(FIX / "expected.safetensors")
    m = llama2.from_pretrained(FIX)
    assert m.weights.dtype_of("model.layers.0.mlp.up_proj.weight") == "BF16"
    assert m.config.num_key_value_heads < m.config.num_attention_heads
    assert m.config.rope_theta == 500.0
    ids = exp["input_ids"]
    # both compute in float32 from the same stored values, in other orders: logits |z| < 2 (ulp
    # 2.4e-7) through 2 layers of sums <= 48 long differ by a few ulps; 1e-4 is 400 ulps
    np.testing.assert_allclose(m(ids), exp["logits"], atol=1e-4, rtol=0)
    greedy = exp["greedy"]
    got = m.generate(ids, greedy.shape[1] - ids.shape[1], eos_token_id=None)
    np.testing.assert_array_equal(got, greedy)


@pytest.mark.skipif("cpp" not in pw.kernels.available(),
                    reason="the cpp backend is not available: "
                    f"{pw.kernels.unavailable_reason('cpp')}")
def test_cpp_backend_matches_numpy():
    m = llama2.from_pretrained(FIX)
    exp = io.load_safetensors(FIX / "expected.safetensors")
    ref = m(exp["input_ids"])
    with pw.use_backend("cpp"), pw.profile() as prof:
        got = m(exp["input_ids"])
        gen = m.generate(exp["input_ids"], 6, eos_token_id=None)
    assert {r.backend for r in prof.records if r.op == "matmul"} == {"cpp"}
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)       # other orders: as the fixture
    np.testing.assert_array_equal(gen, exp["greedy"][:, :gen.shape[1]])


# ---------------------------------------------------------------------------------------------
# tokenizer, text generation, chat format
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("tokenizers", reason="text generation needs the tokenizers library")
    return _fixture_helpers().make_tokenizer()


def test_generate_text_streams_what_it_returns(tmp_path, tokenizer):
    m = model(tiny(vocab_size=tokenizer.get_vocab_size(), max_position_embeddings=64))
    loaded = llama2.from_pretrained(_save(tmp_path, m, tokenizer=tokenizer))
    assert loaded.tokenizer is not None
    ids = loaded.encode("Once upon a time")
    assert ids[0, 0] == 1 and loaded.decode(ids) == "Once upon a time"
    assert loaded.decode(loaded.encode("naïve é")) == "naïve é"           # byte fallback round trip
    pieces = []
    text = loaded.generate_text("Once upon a time", max_new_tokens=12, stream=pieces.append)
    if "\ufffd" not in text:      # random weights may spell invalid UTF-8 in byte tokens
        assert "".join(pieces) == text
    new = loaded.generate(ids, 12)[0, ids.shape[1]:].tolist()
    if 2 in new:
        new = new[:new.index(2)]
    assert text == tokenizer.decode(new, skip_special_tokens=True)
    with pytest.raises(ValueError, match="no tokenizer"):
        m.generate_text("hi")


def test_text_stream_pieces_join_to_the_whole(tokenizer):
    """Multi-byte characters spelled by byte-fallback tokens and '▁'-prefixed words come out
    whole."""
    text = "Once upon a naïve time, 日本 émigrés ran fast."
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert sum(tokenizer.id_to_token(i).startswith("<0x") for i in ids) >= 9   # bytes exercised
    stream = llama2.TextStream(tokenizer)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_chat_prompt_format():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi! "},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye?"}]
    assert llama2.chat_prompt(msgs) == ("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi! [/INST] "
                                        "Hello. </s><s>[INST] Bye? [/INST]")
    assert llama2.chat_prompt([{"role": "user", "content": "x"}]) == "<s>[INST] x [/INST]"
    with pytest.raises(ValueError, match="alternate"):
        llama2.chat_prompt([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(ValueError, match="end with a user"):
        llama2.chat_prompt([{"role": "user", "content": "a"},
                            {"role": "assistant", "content": "b"}])


def test_chat_prompt_special_tokens_encode_as_specials(tokenizer):
    ids = tokenizer.encode(llama2.chat_prompt([{"role": "user", "content": "Tell me a story"}]),
                           add_special_tokens=False).ids
    assert ids[0] == 1 and ids.count(1) == 1


# ---------------------------------------------------------------------------------------------
# command line hooks
# ---------------------------------------------------------------------------------------------
def _args(*argv):
    p = argparse.ArgumentParser()
    llama2.add_run_arguments(p)
    return p.parse_args(list(argv))


def test_demo_runs():
    line = llama2.demo()
    assert "llama2-tiny" in line and "greedy ids" in line


def test_run_cli_preset_with_ids_and_bytes(capsys):
    assert llama2.run_cli(_args("--preset", "llama2-tiny", "--prompt", "1 450 4996",
                                "--max-new-tokens", "5")) == 0
    out = capsys.readouterr().out
    m = llama2.from_preset("llama2-tiny", seed=0)
    expected = m.generate(np.array([[1, 450, 4996]]), 5)[0, 3:]
    assert out.split("\n")[0].split() == [str(t) for t in expected]
    assert "tokens/s" in out and "3 prompt tokens" in out
    assert llama2.run_cli(_args("--preset", "llama2-tiny", "--prompt", "Hi",
                                "--max-new-tokens", "2")) == 0
    assert "3 prompt tokens" in capsys.readouterr().out                    # <s> + 2 bytes


def test_run_cli_model_dir_streams_text(tmp_path, tokenizer, capsys):
    m = model(tiny(vocab_size=tokenizer.get_vocab_size(), max_position_embeddings=128))
    d = _save(tmp_path, m, tokenizer=tokenizer)
    assert llama2.run_cli(_args("--model", str(d), "--prompt", "Once upon",
                                "--max-new-tokens", "6")) == 0
    out = capsys.readouterr().out
    pieces = []
    llama2.from_pretrained(d).generate_text("Once upon", 6, stream=pieces.append)
    assert out.startswith("".join(pieces) + "\n[") and "tokens/s" in out
    assert llama2.run_cli(_args("--model", str(d), "--chat", "--system", "Be brief.",
                                "--prompt", "Hi")) == 0
    assert llama2.run_cli(_args("--model", str(tmp_path / "nope"), "--prompt", "x")) == 2
    assert "error:" in capsys.readouterr().err
