"""What the four models share (pyworkloads/models/common.py): argument checks with one wording,
weight access and checks, random weights, the KV cache."""
from __future__ import annotations

import numpy as np
import pytest

from pyworkloads import io
from pyworkloads.models import common


@pytest.mark.parametrize("bad", [True, 1.0, "3", None, [3]])
def test_check_int_refuses_what_is_not_an_integer(bad):
    with pytest.raises(ValueError, match="layers must be an integer"):
        common.check_int(bad, "layers")


def test_check_int_bounds_and_numpy_integers():
    assert type(common.check_int(np.int64(7), "n")) is int
    with pytest.raises(ValueError, match=r"n must be an integer >= 1, got 0"):
        common.check_int(0, "n")
    with pytest.raises(ValueError, match=r"n must be an integer <= 4, got 5"):
        common.check_int(5, "n", maximum=4)
    assert common.check_int(-3, "n", minimum=None) == -3


def test_check_number_bool_and_choice():
    assert common.check_number(2, "eps", minimum=0) == 2.0
    for bad in (float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match="eps must be a finite number"):
            common.check_number(bad, "eps")
    with pytest.raises(ValueError, match="theta must be > 0"):
        common.check_number(0.0, "theta", minimum=0, exclusive_minimum=True)
    assert common.check_bool(np.bool_(True), "tie") is True
    with pytest.raises(ValueError, match="tie must be true or false"):
        common.check_bool("x", "tie")
    with pytest.raises(ValueError, match="act must be one of 'silu', 'gelu'"):
        common.check_choice("relu6", "act", ("silu", "gelu"))


def test_check_token_ids():
    ids = common.check_token_ids([1, 2, 3], "ids", vocab_size=10)
    assert ids.shape == (1, 3) and ids.dtype == np.int64
    cases = [(np.array([[1, 10]]), ValueError, r"id 10, outside the vocabulary \[0, 10\)"),
             (np.array([[-1, 2]]), ValueError, r"id -1, outside"),
             (np.array([[1.0]]), TypeError, "integer dtype"),
             ("hello", TypeError, "tokenize the text first"),
             ([[1, 2], [3]], ValueError, "rectangular"),
             (np.zeros((1, 0), np.int64), ValueError, "empty"),
             (np.zeros((1, 2, 3), np.int64), ValueError, r"\[batch, tokens\]")]
    for arg, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            common.check_token_ids(arg, "ids", vocab_size=10)
    with pytest.raises(ValueError, match="more than the 2 positions left"):
        common.check_token_ids([[1, 2, 3]], "ids", vocab_size=10, max_length=2)


def test_weight_access_converts_only_what_it_reads(tmp_path):
    """A bf16 checkpoint: ``weight`` converts one tensor, ``embedding`` only the rows looked up,
    both exactly (bf16 -> float32 is a bit shift)."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((50, 8)).astype(np.float32)
    path = tmp_path / "m.safetensors"
    io.save_safetensors(path, {"emb.weight": table, "lin.weight": table[:4],
                               "lin.bias": table[0, :4]}, dtype="BF16")
    ckpt = io.load_checkpoint(path)
    exact = io.bf16_to_f32(io.f32_to_bf16(table))
    ids = np.array([[3, 49, 3]])
    np.testing.assert_array_equal(common.embedding(ids, ckpt, "emb.weight"), exact[ids])
    np.testing.assert_array_equal(common.weight(ckpt, "lin.weight"), exact[:4])
    x = np.ones((2, 8), np.float32)
    # the bias is used because the checkpoint has it: x·Wᵀ + b
    y = common.linear(x, ckpt, "lin")
    # an 8-term float32 sum of exact bf16 values ~1 plus the bias: within γ_9 of Σ|terms| <= 30
    np.testing.assert_allclose(y, x @ exact[:4].T + exact[0, :4], rtol=0, atol=9 * 2**-24 * 30)
    with pytest.raises(KeyError, match="no tensor named 'nope.weight'"):
        common.weight(ckpt, "nope.weight")


def test_check_weights_names_the_tensor():
    shapes = {"a.weight": (2, 3), "a.bias": (2,)}
    ok = {"a.weight": np.zeros((2, 3), np.float32), "a.bias": np.zeros(2, np.float32), "extra": 1}
    common.check_weights(ok, shapes, "toy")
    with pytest.raises(ValueError, match="lack 1 tensor.*'a.bias'"):
        common.check_weights({"a.weight": ok["a.weight"]}, shapes, "toy")
    with pytest.raises(ValueError, match=r"'a.weight' has shape \(3, 2\)"):
        common.check_weights({**ok, "a.weight": np.zeros((3, 2), np.float32)}, shapes, "toy")
    with pytest.raises(TypeError, match="'a.bias' is stored as int64"):
        common.check_weights({**ok, "a.bias": np.zeros(2, np.int64)}, shapes, "toy")


def test_random_weights():
    shapes = {"x.layer_norm.weight": (4,), "x.proj.weight": (300, 200), "x.proj.bias": (300,)}
    w = common.random_weights(shapes, seed=3, std=0.02)
    assert all(t.dtype == np.float32 and t.shape == shapes[k] for k, t in w.items())
    assert np.all(w["x.layer_norm.weight"] == 1) and np.all(w["x.proj.bias"] == 0)
    # 60,000 draws of N(0, 0.02²): the sample std is within 1 % (~7 standard errors of it)
    assert abs(w["x.proj.weight"].std() - 0.02) < 2e-4
    again = common.random_weights(shapes, seed=3, std=0.02)
    np.testing.assert_array_equal(w["x.proj.weight"], again["x.proj.weight"])
    custom = common.random_weights(
        shapes, init=lambda name, shape, rng: np.full(shape, 5.0) if "bias" in name else None)
    assert np.all(custom["x.proj.bias"] == 5)
    assert common.count_params(shapes) == 4 + 60_000 + 300


def test_kv_cache_appends_in_place_and_checks_room():
    cache = common.KVCache(layers=2, batch=1, kv_heads=2, head_dim=3, capacity=5)
    k = np.ones((1, 2, 2, 3), np.float32)
    ks, vs = cache.append(0, k, 2 * k)
    assert ks.shape == (1, 2, 2, 3) and np.shares_memory(ks, cache.k[0])
    cache.advance(2)
    ks, vs = cache.append(0, 3 * k[:, :, :1], 4 * k[:, :, :1])
    assert ks.shape == (1, 2, 3, 3) and float(ks[0, 0, 2, 0]) == 3 and float(vs[0, 0, 0, 0]) == 2
    cache.advance(1)
    cache.check_room(1, 2)
    with pytest.raises(ValueError, match=r"full: 3 cached \+ 3 new tokens > its capacity 5"):
        cache.check_room(1, 3)
    with pytest.raises(ValueError, match="made for batch 1"):
        cache.check_room(2, 1)
    with pytest.raises(ValueError, match="KVCache capacity must be an integer >= 1"):
        common.KVCache(1, 1, 1, 1, capacity=0)
