"""attention on the compiled backends against the NumPy reference evaluated in float64.

Error bound: outputs are convex combinations of V rows, so they are compared with an absolute
tolerance in units of max|V|; the score rounding (a float32 dot product of length Dh) moves the
softmax weights by about exp(Δs) - 1, which grows with |scale·q·k|, hence the second term.
"""

from __future__ import annotations

import numpy as np
import pytest
from _kernel_testing import EPS32, assert_within, backends, dims, on_backend, run
from hypothesis import given, settings
from hypothesis import strategies as st

from pyworkloads.kernels import reference

# cpp tiles: 64 queries x 48 keys per block (AVX-512); Dh/Dv around the 16-lane vectors.
T_EDGES = (1, 2, 47, 48, 49, 63, 64, 65, 97)
D_EDGES = (1, 3, 15, 16, 17, 64, 80)


def reference64(q, k, v, **kw):
    kw = dict(kw)
    if kw.get("bias") is not None:
        kw["bias"] = kw["bias"].astype(np.float64)
    return reference.attention(
        q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), **kw
    )


def check(backend, q, k, v, **kw):
    want = reference64(q, k, v, **kw)
    scale = kw.get("scale") or 1 / np.sqrt(max(q.shape[-1], 1))
    vmax = float(np.abs(v).max()) if v.size else 0.0
    score_err = (
        4
        * q.shape[-1]
        * EPS32
        * scale
        * (float(np.abs(q).max()) * float(np.abs(k).max()) if q.size and k.size else 0)
    )
    got = run(backend, "attention", q, k, v, **kw)
    assert got.dtype == np.float32
    assert_within(got, want, vmax * (2e-6 + 4 * score_err) + 1e-30)


@st.composite
def problems(draw):
    Hkv = draw(st.integers(1, 3))
    group = draw(st.sampled_from([1, 2, 3, 4]))
    causal = draw(st.booleans())
    Tk = draw(dims(*T_EDGES, lo=1, hi=100))
    Tq = draw(
        dims(*T_EDGES, lo=0, hi=Tk if causal else 100).filter(lambda t: not causal or t <= Tk)
    )
    return dict(
        B=draw(st.integers(1, 2)),
        Hq=Hkv * group,
        Hkv=Hkv,
        Tq=Tq,
        Tk=Tk,
        Dh=draw(dims(*D_EDGES, lo=1, hi=20)),
        Dv=draw(dims(*D_EDGES, lo=1, hi=20)),
        causal=causal,
        bias=draw(st.sampled_from([None, "full", "heads", "keys"])),
        mask=draw(st.sampled_from([None, "full", "rows", "keys"])),
        layout=draw(st.sampled_from(["c", "heads-split", "strided"])),
        scale=draw(st.sampled_from([None, 0.1, 2.0])),
        seed=draw(st.integers(0, 2**16)),
    )


def make(p):
    rng = np.random.default_rng(p["seed"])
    B, Hq, Hkv, Tq, Tk, Dh, Dv = (p[n] for n in ("B", "Hq", "Hkv", "Tq", "Tk", "Dh", "Dv"))
    q = rng.standard_normal((B, Hq, Tq, Dh), dtype=np.float32)
    k = rng.standard_normal((B, Hkv, Tk, Dh), dtype=np.float32)
    v = rng.standard_normal((B, Hkv, Tk, Dv), dtype=np.float32)
    if p["layout"] == "heads-split":  # [B, T, H, D] activations viewed as [B, H, T, D]
        q, k, v = (
            np.ascontiguousarray(x.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3) for x in (q, k, v)
        )
    elif p["layout"] == "strided":
        q, k, v = (np.repeat(x, 2, axis=2)[:, :, ::2] for x in (q, k, v))
    kw = dict(causal=p["causal"], scale=p["scale"])
    bias_shape = {"full": (B, Hq, Tq, Tk), "heads": (Hq, Tq, Tk), "keys": (Tk,)}.get(p["bias"])
    if bias_shape:
        kw["bias"] = rng.standard_normal(bias_shape, dtype=np.float32)
    mask_shape = {"full": (B, Hq, Tq, Tk), "rows": (B, 1, Tq, 1), "keys": (1, 1, 1, Tk)}.get(
        p["mask"]
    )
    if mask_shape:
        kw["mask"] = rng.random(mask_shape) < 0.6
    return q, k, v, kw


@backends
@settings(max_examples=80, deadline=None)
@given(p=problems())
def test_attention_matches_reference(backend, p):
    q, k, v, kw = make(p)
    check(backend, q, k, v, **kw)


@backends
@pytest.mark.parametrize("Tq, Tk", [(1, 1), (1, 200), (5, 130), (130, 130)])
def test_attention_all_masked_rows_give_zeros(backend, rng, Tq, Tk):
    q, k, v = (
        rng.standard_normal(s, dtype=np.float32)
        for s in ((1, 2, Tq, 16), (1, 2, Tk, 16), (1, 2, Tk, 16))
    )
    mask = rng.random((1, 1, Tq, Tk)) < 0.5
    mask[..., 0, :] = False  # query 0 may attend to nothing
    check(backend, q, k, v, mask=mask)
    bias = np.where(mask, 0.0, -np.inf).astype(np.float32)  # the same as an additive -inf mask
    check(backend, q, k, v, bias=bias)
    out = run(backend, "attention", q, k, v, mask=mask)
    assert np.all(out[..., 0, :] == 0)


@backends
@pytest.mark.parametrize("magnitude", [30.0, 1e3])
def test_attention_large_scores(backend, rng, magnitude):
    """Sharp softmax: scores in the thousands must not overflow exp (online max subtraction)."""
    q = (rng.standard_normal((1, 2, 70, 32)) * magnitude).astype(np.float32)
    k = rng.standard_normal((1, 2, 90, 32)).astype(np.float32)
    v = rng.standard_normal((1, 2, 90, 32)).astype(np.float32)
    check(backend, q, k, v, causal=True)


@backends
@pytest.mark.parametrize("T, group", [(300, 1), (257, 4)])
def test_attention_decode_step_sees_whole_cache(backend, rng, T, group):
    """Tq = 1 with causal=True (bottom-right) attends to every cached key; GQA shares K/V heads."""
    q = rng.standard_normal((2, 4 * group, 1, 64), dtype=np.float32)
    k, v = (rng.standard_normal((2, 4, T, 64), dtype=np.float32) for _ in range(2))
    check(backend, q, k, v, causal=True)
    check(backend, q, k, v, causal=False)


@backends
def test_attention_bad_inputs_raise(backend, rng):
    import pyworkloads.kernels as K

    q = rng.standard_normal((1, 4, 5, 8), dtype=np.float32)
    kv = rng.standard_normal((1, 3, 5, 8), dtype=np.float32)
    with on_backend(backend):
        with pytest.raises(ValueError):
            K.attention(q, kv, kv)  # 4 query heads, 3 kv heads
        with pytest.raises(ValueError):
            K.attention(q[0], q[0], q[0])  # 3-D
        with pytest.raises(ValueError):
            K.attention(q, q[:, :, :3], q[:, :, :3], causal=True)  # causal with Tq > Tk
        with pytest.raises(ValueError):
            K.attention(q, q, q, bias=np.zeros((2, 5), np.float32))  # bias does not broadcast
        with pytest.raises(TypeError):
            K.attention(q, q, q, mask=np.ones((5, 5), np.float32))  # mask must be boolean
        with pytest.raises(ValueError):
            K.attention(q, q, q, scale=float("nan"))


# ---- rel_pos: a bias in decomposed form (SAM's relative positions) --------------------------
@st.composite
def rel_pos_problems(draw):
    kh, kw = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    Tk = kh * kw
    return dict(
        B=draw(st.integers(1, 2)),
        H=draw(st.integers(1, 3)),
        Tq=draw(st.sampled_from([1, 2, 5, Tk, 63, 65, 97])),
        kh=kh,
        kw=kw,
        Dh=draw(dims(*D_EDGES, lo=1, hi=20)),
        shape=draw(st.sampled_from(["full", "heads", "rows"])),
        bias=draw(st.booleans()),
        mask=draw(st.booleans()),
        scale=draw(st.sampled_from([None, 0.3])),
        seed=draw(st.integers(0, 2**16)),
    )


@backends
@settings(max_examples=60, deadline=None)
@given(p=rel_pos_problems())
def test_attention_rel_pos_is_the_bias_it_stands_for(backend, p):
    """attention(..., rel_pos=(rel_h, rel_w)) equals the reference with the bias formed out,
    rel_h[..., i, j // kw] + rel_w[..., i, j % kw] (reference.rel_pos_bias), for the tiled
    (Tq > 1) and decode (Tq = 1) paths, broadcast tables, and together with a bias and a mask."""
    rng = np.random.default_rng(p["seed"])
    B, H, Tq, kh, kw, Dh = (p[n] for n in ("B", "H", "Tq", "kh", "kw", "Dh"))
    Tk = kh * kw
    q = rng.standard_normal((B, H, Tq, Dh), dtype=np.float32)
    k, v = (rng.standard_normal((B, H, Tk, Dh), dtype=np.float32) for _ in range(2))
    lead = {"full": (B, H, Tq), "heads": (H, Tq), "rows": (Tq,)}[p["shape"]]
    rel_h = (2 * rng.standard_normal(lead + (kh,))).astype(np.float32)
    rel_w = (2 * rng.standard_normal(lead + (kw,))).astype(np.float32)
    kw_ = dict(scale=p["scale"])
    if p["bias"]:
        kw_["bias"] = rng.standard_normal((Tq, Tk), dtype=np.float32)
    if p["mask"]:
        kw_["mask"] = rng.random((B, 1, Tq, Tk)) < 0.7
    formed = reference.rel_pos_bias(rel_h.astype(np.float64), rel_w.astype(np.float64))
    want = reference64(q, k, v, **dict(kw_, bias=formed + kw_.get("bias", 0.0)))
    got = run(backend, "attention", q, k, v, rel_pos=(rel_h, rel_w), **kw_)
    scale = p["scale"] or 1 / np.sqrt(Dh)
    score_err = 4 * Dh * EPS32 * scale * float(np.abs(q).max()) * float(np.abs(k).max())
    score_err += 4 * EPS32 * (4 + (3 if p["bias"] else 0))   # the bias terms' float32 sums
    assert got.dtype == np.float32
    assert_within(got, want, float(np.abs(v).max()) * (2e-6 + 4 * score_err) + 1e-30)


@backends
def test_attention_rel_pos_bad_inputs_raise(backend, rng):
    import pyworkloads.kernels as K

    q = rng.standard_normal((1, 2, 6, 8), dtype=np.float32)          # Tk = 6 = 2 x 3
    rh, rw = rng.standard_normal((1, 2, 6, 2), dtype=np.float32), rng.standard_normal(
        (1, 2, 6, 3), dtype=np.float32
    )
    with on_backend(backend):
        with pytest.raises(ValueError, match="kh x kw"):
            K.attention(q, q, q, rel_pos=(rh, rh))                  # 2 x 2 != 6 keys
        with pytest.raises(ValueError, match=r"rel_pos\[1\]"):
            K.attention(q, q, q, rel_pos=(rh, rw[:, :, :4]))         # 4 rows, not Tq = 6
        with pytest.raises(TypeError, match="pair"):
            K.attention(q, q, q, rel_pos=rh)
        with pytest.raises(TypeError):
            K.attention(q, q, q, rel_pos=(rh.astype(np.int32), rw))
