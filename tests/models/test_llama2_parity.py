"""Parity with transformers' LlamaForCausalLM: tiny random configs saved with save_pretrained
(safetensors) and loaded through our public from_pretrained.  Logits within 1e-4 (both sides
computing in float32 from the same stored values) and identical greedy tokens."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import require_transformers  # tests/ is on sys.path (rootdir conftest)

from pyworkloads.models import llama2

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# Both sides compute in float32 from the same stored values, in other orders: the logits of these
# models are |z| < 4 (ulp 4.8e-7) and differ by a few ulps (2.6e-6 at most measured) through
# <= 3 layers of sums <= 96 long; PARITY is 200 ulps at that scale.
PARITY = 1e-4


def _helpers():
    spec = importlib.util.spec_from_file_location("make_llama2_fixture",
                                                  FIXTURES / "make_llama2_fixture.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rope(theta, **extra):
    return {"rope_parameters": {"rope_type": "default", "rope_theta": theta, **extra}}


CONFIGS = {
    # GQA, untied, eps 1e-6
    "gqa": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
                num_key_value_heads=2, vocab_size=128, rms_norm_eps=1e-6,
                tie_word_embeddings=False, **_rope(10000.0)),
    # MQA, tied, a large rope theta, eps 1e-5
    "mqa_tied": dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                     num_attention_heads=6, num_key_value_heads=1, vocab_size=100,
                     rms_norm_eps=1e-5, tie_word_embeddings=True, **_rope(500000.0)),
    # odd widths everywhere: hidden 42 (3 heads of 14), intermediate 55, vocabulary 101
    "odd": dict(hidden_size=42, intermediate_size=55, num_hidden_layers=2, num_attention_heads=3,
                num_key_value_heads=3, vocab_size=101, rms_norm_eps=1e-5,
                tie_word_embeddings=False, **_rope(1000.0)),
    # explicit head_dim (q width 4*12 = 48 != hidden 40), projection biases
    "head_dim_bias": dict(hidden_size=40, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=12, vocab_size=90,
                          attention_bias=True, mlp_bias=True, tie_word_embeddings=False,
                          **_rope(10000.0)),
    # linear RoPE scaling (positions / 2)
    "linear_rope": dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=4, vocab_size=80,
                        tie_word_embeddings=True, **_rope(10000.0, rope_type="linear", factor=2.0)),
}


def _save(tmp_path, name, torch_dtype=None, seed=0, std=0.1, **save_kw):
    torch, _ = require_transformers()
    cfg = dict(CONFIGS[name], max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
    model = _helpers().hf_model(seed=seed, std=std, **cfg)
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    model.save_pretrained(tmp_path, safe_serialization=True, **save_kw)
    return tmp_path


def _reference(path):
    """transformers' model loading the same files, computing in float32."""
    torch, transformers = require_transformers()
    return transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _logits(ref, ids):
    import torch
    with torch.no_grad():
        return ref(torch.from_numpy(ids)).logits.numpy()


def _ids(vocab, shape=(2, 13), seed=0):
    return np.random.default_rng(seed).integers(0, vocab, shape)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers(tmp_path, name):
    path = _save(tmp_path, name)
    ours, ref = llama2.from_pretrained(path), _reference(path)
    assert ours.config.num_key_value_heads == CONFIGS[name]["num_key_value_heads"]
    ids = _ids(ours.config.vocab_size)
    want = _logits(ref, ids)
    assert np.abs(want).max() > 0.5                       # the comparison is not of near-zeros
    got = ours(ids)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=PARITY, rtol=0)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_checkpoints(tmp_path, dtype):
    torch, _ = require_transformers()
    path = _save(tmp_path, "gqa", torch_dtype=getattr(torch, dtype))
    ours, ref = llama2.from_pretrained(path), _reference(path)
    stored = ours.weights.dtype_of("model.layers.0.self_attn.q_proj.weight")
    assert stored == {"float16": "F16", "bfloat16": "BF16"}[dtype]
    ids = _ids(128)
    np.testing.assert_allclose(ours(ids), _logits(ref, ids), atol=PARITY, rtol=0)


def test_sharded_save_pretrained(tmp_path):
    path = _save(tmp_path, "mqa_tied", max_shard_size="20KB")
    assert (path / "model.safetensors.index.json").is_file()
    ours, ref = llama2.from_pretrained(path), _reference(path)
    assert len(ours.weights.files) > 1
    ids = _ids(100)
    np.testing.assert_allclose(ours(ids), _logits(ref, ids), atol=PARITY, rtol=0)


def test_transformers4_style_config(tmp_path):
    """A config.json with the 4.x top-level rope_theta (and null rope_scaling) loads the same."""
    path = _save(tmp_path, "mqa_tied")
    ids = _ids(100)
    want = _logits(_reference(path), ids)
    cfg = json.loads((path / "config.json").read_text())
    theta = cfg.pop("rope_parameters")["rope_theta"]
    v4 = {**cfg, "rope_theta": theta, "rope_scaling": None}
    (path / "config.json").write_text(json.dumps(v4))
    ours = llama2.from_pretrained(path)
    assert ours.config.rope_theta == 500000.0
    np.testing.assert_allclose(ours(ids), want, atol=PARITY, rtol=0)


@pytest.mark.parametrize("name", ["gqa", "mqa_tied", "odd"])
def test_greedy_generate_matches_transformers(tmp_path, name):
    torch, _ = require_transformers()
    path = _save(tmp_path, name, seed=1, std=0.3)        # larger weights: varied continuations
    ours, ref = llama2.from_pretrained(path), _reference(path)
    ids = _ids(ours.config.vocab_size, (2, 6), seed=1)
    t = torch.from_numpy(ids)
    with torch.no_grad():
        want = ref.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=20,
                            do_sample=False, eos_token_id=None, pad_token_id=0).numpy()
    got = ours.generate(ids, max_new_tokens=20, eos_token_id=None)
    np.testing.assert_array_equal(got, want)
    assert len(set(got[:, 6:].ravel().tolist())) > 3                 # not one token repeated


def test_greedy_generate_with_eos_matches_transformers(tmp_path):
    """Stopping: pick as eos a token transformers emits mid-way; both stop there (one row)."""
    torch, _ = require_transformers()
    path = _save(tmp_path, "gqa", seed=2)
    ours, ref = llama2.from_pretrained(path), _reference(path)
    ids = _ids(128, (1, 5), seed=2)
    free = ours.generate(ids, max_new_tokens=12, eos_token_id=None)
    eos = int(free[0, 9])
    t = torch.from_numpy(ids)
    with torch.no_grad():
        want = ref.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=12,
                            do_sample=False, eos_token_id=eos, pad_token_id=eos).numpy()
    got = ours.generate(ids, max_new_tokens=12, eos_token_id=eos)
    np.testing.assert_array_equal(got, want)
    assert got.shape[1] <= 10


def test_count_params_matches_transformers():
    torch, transformers = require_transformers()
    for name, cfg in CONFIGS.items():
        with torch.device("meta"):
            hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
        ours = llama2.Config.from_hf(hf.config.to_dict())
        assert llama2.count_params(ours) == hf.num_parameters(), name
    for preset in ("llama2-7b", "llama2-70b"):          # shapes only: meta tensors, no memory
        hf_config = transformers.LlamaConfig(**llama2.PRESETS[preset].to_hf())
        with torch.device("meta"):
            hf = transformers.LlamaForCausalLM(hf_config)
        assert llama2.count_params(llama2.PRESETS[preset]) == hf.num_parameters(), preset
