"""NaN, infinities and huge values through the compiled kernels: every backend returns what the
NumPy reference (pyworkloads/kernels/reference.py, in float32) returns -- NaN at the same places,
the same infinities, and finite values within the float32 bound of each op.

The inputs are built so that the reference itself is well defined.  q and k (and the matmul
operands) hold multiples of 1/4 of modest size: their products and short sums are exact in float32
in any order, so every backend computes the very same scores, and an overflow, an inf - inf or a
0 · inf happens in all of them or in none.  Huge values come in where the result does not depend
on the order of summation: through the scale, the bias and v (attention), 1e18 operands whose
products stay finite (matmul), 1e20 elements whose squares overflow (norms).  What may differ is
only rounding, bounded as stated at each check.  Hypothesis runs are bounded and derandomized.
"""

from __future__ import annotations

import numpy as np
import pytest
from _kernel_testing import (
    LAYOUTS,
    assert_same_values,
    backends,
    backends_with,
    dims,
    laid_out,
    run,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import U32  # tests/ is on sys.path (rootdir conftest)

from pyworkloads.kernels import reference

NAN, INF = float("nan"), float("inf")
FUZZ = settings(max_examples=60, deadline=None, derandomize=True)


def dyadic(rng, shape, hi):
    """Multiples of 1/4 in [-hi/4, hi/4], as float32."""
    return (rng.integers(-hi, hi + 1, shape) / 4).astype(np.float32)


def sprinkle(rng, x, values, count):
    """x with `count` elements (at random places) replaced by values drawn from `values`."""
    x = x.copy()
    if x.size and count:
        idx = rng.integers(0, x.size, count)
        x.reshape(-1)[idx] = rng.choice(np.asarray(values, np.float32), count)
    return x


def finite_abs(x):
    a = np.abs(np.asarray(x, np.float64))
    return np.where(np.isfinite(a), a, 0.0)


def reference_attention(q, k, v, **kw):
    with np.errstate(all="ignore"):
        return reference.attention(q, k, v, **kw)


def attention_bound(v):
    """Outputs are convex combinations of v rows.  The scores are the same float32 numbers in
    every backend (exact dot products, one rounding for the scale and one for the bias), so only
    exp (a few ulps per weight), the softmax sum and the weighted sum over Tk keys (γ(Tk) each)
    and the online rescaling (a few ulps per key block) differ: (4·Tk + 32)·u·max|v| covers it."""
    Tk = v.shape[2]
    return (4 * Tk + 32) * U32 * float(finite_abs(v).max(initial=0.0)) + 1e-37


def check_attention(backend, q, k, v, **kw):
    want = reference_attention(q, k, v, **kw)
    got = run(backend, "attention", q, k, v, **kw)
    assert got.dtype == np.float32
    assert_same_values(got, want, attention_bound(v))


# ------------------------------------------------------------------------------------------------
# attention
# ------------------------------------------------------------------------------------------------
T_EDGES = (1, 2, 47, 48, 49, 63, 64, 65, 97)


@st.composite
def attention_shapes(draw):
    Hkv = draw(st.integers(1, 2))
    causal = draw(st.booleans())
    Tk = draw(dims(*T_EDGES, lo=1, hi=100))
    Tq = draw(
        dims(*T_EDGES, lo=1, hi=Tk if causal else 100).filter(lambda t: not causal or t <= Tk)
    )
    return dict(
        B=draw(st.integers(1, 2)), Hkv=Hkv, Hq=Hkv * draw(st.sampled_from([1, 2])), Tq=Tq, Tk=Tk,
        Dh=draw(st.sampled_from([1, 3, 8, 16, 17])), Dv=draw(st.sampled_from([1, 4, 17])),
        causal=causal,
    )


def masks(rng, p, kind):
    """None, or a boolean mask broadcasting to [B, Hq, Tq, Tk] with some rows fully masked."""
    if kind is None:
        return None
    shape = {"full": (p["B"], p["Hq"], p["Tq"], p["Tk"]), "rows": (p["Tq"], p["Tk"]),
             "keys": (1, 1, 1, p["Tk"])}[kind]
    m = rng.random(shape) < 0.6
    if kind != "keys":
        m[..., rng.integers(0, p["Tq"], max(1, p["Tq"] // 4)), :] = False
    return m


@backends
@FUZZ
@given(
    p=attention_shapes(),
    q_specials=st.integers(0, 3),
    k_specials=st.integers(0, 3),
    bias=st.sampled_from([None, "keys", "full"]),
    bias_specials=st.integers(0, 6),
    mask=st.sampled_from([None, "full", "rows"]),
    scale=st.sampled_from([None, 0.5, -1.0, 0.0, 2.0**-100, 1e30, 3e38]),
    seed=st.integers(0, 2**16),
)
def test_attention_nonfinite_scores(backend, p, q_specials, k_specials, bias, bias_specials, mask,
                                    scale, seed):
    """NaN or inf in q, k or the bias, scales that overflow the scores, biases of -inf, +inf and
    3e38, fully masked rows: a row whose allowed scores hold a NaN or +inf is NaN throughout, a
    row with no allowed key is zeros, and -inf scores act as masked keys -- as the reference."""
    rng = np.random.default_rng(seed)
    B, Hq, Hkv, Tq, Tk, Dh, Dv = (p[n] for n in ("B", "Hq", "Hkv", "Tq", "Tk", "Dh", "Dv"))
    q = sprinkle(rng, dyadic(rng, (B, Hq, Tq, Dh), 8), (NAN, INF, -INF), q_specials)
    k = sprinkle(rng, dyadic(rng, (B, Hkv, Tk, Dh), 8), (NAN, INF, -INF), k_specials)
    v = dyadic(rng, (B, Hkv, Tk, Dv), 16)
    kw = dict(causal=p["causal"], scale=scale, mask=masks(rng, p, mask))
    if bias is not None:
        shape = (Tk,) if bias == "keys" else (B, Hq, Tq, Tk)
        kw["bias"] = sprinkle(rng, dyadic(rng, shape, 8),
                              (NAN, INF, -INF, -INF, 1e30, -1e30, 3e38), bias_specials)
    check_attention(backend, q, k, v, **kw)


@backends
@FUZZ
@given(
    p=attention_shapes(),
    v_specials=st.integers(1, 4),
    mask=st.sampled_from([None, "full", "rows", "keys"]),
    seed=st.integers(0, 2**16),
)
def test_attention_nonfinite_and_huge_values(backend, p, v_specials, mask, seed):
    """NaN, inf and 3e38 in v.  The scores stay small (|s| <= 4, so no weight underflows), and
    the reference multiplies every v row by its weight, 0 for a masked key: a NaN in v reaches
    its column of every query row, an inf gives inf where its weight is positive and NaN where
    it is 0 (a masked key, a key above the causal diagonal), and 3e38 values, whose weighted
    average is finite, must stay finite."""
    rng = np.random.default_rng(seed)
    B, Hq, Hkv, Tq, Tk, Dh, Dv = (p[n] for n in ("B", "Hq", "Hkv", "Tq", "Tk", "Dh", "Dv"))
    q = dyadic(rng, (B, Hq, Tq, Dh), 4)
    k = dyadic(rng, (B, Hkv, Tk, Dh), 4)
    v = sprinkle(rng, dyadic(rng, (B, Hkv, Tk, Dv), 16), (NAN, INF, -INF, 3e38, -3e38, 3e38),
                 v_specials)
    check_attention(backend, q, k, v, causal=p["causal"], mask=masks(rng, p, mask))


@backends
@pytest.mark.parametrize("Tq", [1, 5, 70])
@pytest.mark.parametrize("where", ["q", "k", "v", "bias"])
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_attention_one_nonfinite_element(backend, Tq, where, value):
    """One non-finite element, for the decode (Tq = 1) and the tiled path: the reference's rows
    and columns of NaN, inf and zeros, exactly."""
    rng = np.random.default_rng(3)
    q = dyadic(rng, (1, 2, Tq, 8), 8)
    k = dyadic(rng, (1, 2, 75, 8), 8)
    v = dyadic(rng, (1, 2, 75, 8), 16)
    bias = np.zeros((Tq, 75), np.float32)
    row = {"q": q[0, 1, Tq // 2], "k": k[0, 1, 40], "v": v[0, 1, 40], "bias": bias[Tq // 2]}
    row[where][3] = value
    for causal in (False, True):
        check_attention(backend, q, k, v, causal=causal, bias=bias)


@backends
def test_attention_nan_query_row_is_nan_not_zeros(backend):
    q = np.full((1, 1, 1, 4), NAN, np.float32)
    kv = np.ones((1, 1, 3, 4), np.float32)
    assert np.isnan(run(backend, "attention", q, kv, kv)).all()


@backends
@pytest.mark.parametrize("Tq", [1, 3, 130])
def test_attention_nan_in_v_at_masked_keys_reaches_every_row(backend, Tq):
    """The reference multiplies masked keys' v rows by 0: NaN stays NaN even where no query may
    look, including keys the causal mask hides from a whole block of queries."""
    rng = np.random.default_rng(1)
    q, k = dyadic(rng, (1, 1, Tq, 8), 8), dyadic(rng, (1, 1, 200, 8), 8)
    v = dyadic(rng, (1, 1, 200, 8), 16)
    v[0, 0, 199, 2] = NAN                              # above the diagonal of every earlier query
    for causal in (False, True):
        mask = np.ones((Tq, 200), bool)
        mask[:, 150:] = False
        check_attention(backend, q, k, v, causal=causal, mask=mask)
        got = run(backend, "attention", q, k, v, causal=causal, mask=mask)
        assert np.isnan(got[..., 2]).all() and np.isfinite(np.delete(got, 2, axis=-1)).all()


@backends
def test_attention_huge_v_does_not_overflow(backend):
    """Averages of 3e38 are 3e38: the weights sum to 1, however the kernel accumulates."""
    q = np.zeros((1, 2, 70, 8), np.float32)
    kv = np.zeros((1, 2, 90, 8), np.float32)
    v = np.full((1, 2, 90, 8), 3e38, np.float32)
    for Tq in (1, 70):
        check_attention(backend, q[:, :, :Tq], kv, v)
        check_attention(backend, q[:, :, :Tq], kv, v, causal=True)


@backends
def test_attention_without_keys_gives_zeros(backend):
    q = np.ones((1, 2, 3, 8), np.float32)
    kv = np.ones((1, 2, 0, 8), np.float32)
    want = np.zeros((1, 2, 3, 8), np.float32)
    np.testing.assert_array_equal(reference_attention(q, kv, kv), want)
    np.testing.assert_array_equal(run(backend, "attention", q, kv, kv), want)


# ------------------------------------------------------------------------------------------------
# matmul, norms, gelu
# ------------------------------------------------------------------------------------------------
@backends
@FUZZ
@given(
    M=dims(1, 5, 14, 15, 29, hi=40), N=dims(1, 16, 17, 33, hi=40), K=dims(1, 8, 17, hi=40),
    batch=st.sampled_from([(), (2,), (1,)]),
    a_specials=st.integers(0, 4), b_specials=st.integers(0, 4),
    la=st.sampled_from(LAYOUTS), lb=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**16),
)
def test_matmul_nonfinite_and_huge(backend, M, N, K, batch, a_specials, b_specials, la, lb, seed):
    """NaN, ±inf, 0 and ±1e18 (whose products, 1e36, and sums of up to 40 of them stay finite):
    0·inf and inf - inf are NaN, NaN spreads along its row and column, as np.matmul.  Finite
    elements: a dot product of length K in any order is within γ(K)·Σ|a||b| (Higham §3.1)."""
    rng = np.random.default_rng(seed)
    specials = (NAN, INF, -INF, 0.0, 1e18, -1e18)
    a = sprinkle(rng, dyadic(rng, batch + (M, K), 16), specials, a_specials)
    b = sprinkle(rng, dyadic(rng, (K, N), 16), specials, b_specials)
    a, b = laid_out(a, la), laid_out(b, lb)
    with np.errstate(all="ignore"):
        want = reference.matmul(a, b)
    bound = 2 * (K + 2) * U32 * np.matmul(finite_abs(a), finite_abs(b)) + 1e-37
    assert_same_values(run(backend, "matmul", a, b), want, bound)


@backends
@FUZZ
@given(
    op=st.sampled_from(["rms_norm", "layer_norm"]),
    lead=st.sampled_from([(1,), (3,), (2, 5)]),
    D=dims(1, 15, 16, 17, 64, 65, lo=1, hi=100),
    x_specials=st.integers(0, 4), w_specials=st.integers(0, 2), b_specials=st.integers(0, 2),
    eps=st.sampled_from([1e-6, 1e-5, 0.0]), seed=st.integers(0, 2**16),
)
def test_norms_nonfinite_and_huge(backend, op, lead, D, x_specials, w_specials, b_specials, eps,
                                  seed):
    """NaN and ±inf in x, weight or bias; 1e20, whose square overflows (the row's mean square is
    inf and its finite elements normalise to 0); eps = 0 on constant rows (0/0).  Finite outputs:
    the row sums (γ(D)) and a few roundings per element, relative to the terms of the result."""
    rng = np.random.default_rng(seed)
    specials = (NAN, INF, -INF, 1e20, -1e20)
    x = sprinkle(rng, dyadic(rng, lead + (D,), 16), specials, x_specials)
    if eps == 0.0 and rng.random() < 0.3:
        x[0] = x[0, 0]                                # a constant row: variance 0
    w = sprinkle(rng, dyadic(rng, (D,), 16), (NAN, INF, -INF), w_specials)
    b = sprinkle(rng, dyadic(rng, (D,), 16), (NAN, INF, -INF), b_specials)
    args = (x, w, eps) if op == "rms_norm" else (x, w, b, eps)
    with np.errstate(all="ignore"):
        want = getattr(reference, op)(*args)
        scaled = np.abs(getattr(reference, op)(x.astype(np.float64), finite_abs(w), *(
            (eps,) if op == "rms_norm" else (None, eps))))
    terms = np.where(np.isfinite(scaled), scaled, 0.0)
    if op == "layer_norm":
        terms = terms + finite_abs(b)
    bound = (8 * D + 16) * U32 * (terms + 1.0)
    assert_same_values(run(backend, op, *args), want, bound)


@backends_with("gelu")
@FUZZ
@given(n=dims(1, 7, 8, 17, 65, hi=100), specials=st.integers(0, 10), seed=st.integers(0, 2**16))
def test_gelu_nonfinite_and_huge(backend, n, specials, seed):
    """GELU(NaN) = NaN, GELU(inf) = inf, GELU(-inf) = NaN in the reference (-inf · 0), GELU of
    ±3e38 finite; elsewhere within the cpp kernel's documented 4e-7·max(1, |x|) of the reference
    (plus the reference's own few ulps)."""
    rng = np.random.default_rng(seed)
    x = sprinkle(rng, (rng.standard_normal(n) * 10).astype(np.float32),
                 (NAN, INF, -INF, 3e38, -3e38, 1e-40), specials)
    with np.errstate(all="ignore"):
        want = reference.gelu(x)
    assert_same_values(run(backend, "gelu", x), want, 5e-7 * np.maximum(1.0, finite_abs(x)))


@pytest.mark.parametrize("Tq", [1, 5])
@pytest.mark.parametrize("where", ["q", "k", "v", "bias"])
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_cpp_naive_attention_is_the_reference(Tq, where, value):
    """version="naive" of the cpp extension (the oracle of its fast versions, and their fallback
    for rows that are not finite) computes the reference's arithmetic."""
    import pyworkloads.kernels as K

    if "cpp" not in K.available():
        pytest.skip(f"the cpp backend is unavailable: {K.unavailable_reason('cpp')}")
    from pyworkloads import _kernels

    rng = np.random.default_rng(4)
    q, k = dyadic(rng, (1, 2, Tq, 8), 8), dyadic(rng, (1, 2, 9, 8), 8)
    v = dyadic(rng, (1, 2, 9, 8), 16)
    bias = np.zeros((Tq, 9), np.float32)
    mask = np.ones((Tq, 9), bool)
    mask[0] = False
    row = {"q": q[0, 1, Tq - 1], "k": k[0, 1, 6], "v": v[0, 1, 8], "bias": bias[Tq - 1]}
    row[where][3] = value
    for causal in (False, True):
        kw = dict(causal=causal, bias=bias, mask=mask)
        got = _kernels.attention(q, k, v, version="naive", **kw)
        assert_same_values(got, reference_attention(q, k, v, **kw), attention_bound(v))


@backends
@pytest.mark.parametrize("Tq", [1, 6, 70])
def test_attention_finite_scores_below_minus_3e38_are_real_scores(backend, Tq):
    """A scale of 3e38 puts finite scores near -3.4e38: the softmax of a row whose every score is
    that low still gives its best key weight 1 (only -inf means "no key"), as the reference does."""
    q = np.full((1, 1, Tq, 2), -0.5, np.float32)
    k = np.array([[[[1.0, 1.125], [1.125, 1.125]]]], np.float32)    # scores -3.19e38, -3.38e38
    v = np.array([[[[2.5], [-4.0]]]], np.float32)
    want = reference_attention(q, k, v, scale=3e38)
    np.testing.assert_array_equal(want, np.full((1, 1, Tq, 1), 2.5, np.float32))
    check_attention(backend, q, k, v, scale=3e38)
    check_attention(backend, q, k, v, scale=3e38, causal=Tq == 1)


@backends
@pytest.mark.parametrize("K", [1, 9, 15, 17])
@pytest.mark.parametrize("layout", ["row-major W", "W.T"])
def test_decode_gemv_infinite_weight_in_the_last_rows(backend, K, layout):
    """x @ W with an infinite weight in W's last row (x finite and nonzero): the output column is
    inf, never NaN -- the row-major GEMV sweeps W's rows in groups and must not pad a short last
    group with zero-weighted copies of a row (0 · inf is NaN)."""
    W = np.ones((K, 40), np.float32)
    W[K - 1, 3] = INF
    W[K - 1, 5] = -INF
    x = np.ones((2, K), np.float32)
    if layout == "W.T":
        W = np.ascontiguousarray(W.T).T
    got = run(backend, "matmul", x, W)
    want = x.astype(np.float64) @ W.astype(np.float64)
    np.testing.assert_array_equal(got, want.astype(np.float32))
