"""NumPy building blocks against float64 references, closed forms and (when installed) PyTorch."""
from __future__ import annotations

import math

import numpy as np
import pytest
from tolerances import gamma

from pyworkloads import ops


def f64(x):
    return np.asarray(x, np.float64)


# ---- softmax -------------------------------------------------------------------------------
def test_softmax_matches_float64_and_is_stable(rng):
    x = (rng.standard_normal((4, 9)) * 50).astype(np.float32)
    x[0, 0] = 1e30                                         # huge logit: no overflow
    e = np.exp(f64(x) - f64(x).max(-1, keepdims=True))
    # p = e_i / Σe in float32, all relative to p <= 1: the rounding of x - m (moves e^(x-m) by at
    # most u·|x-m|·e^(x-m) <= u/e), a few ulps from exp, γ_9 from the 9-term sum and one division:
    # ≈ 15u ≈ 9e-7
    np.testing.assert_allclose(ops.softmax(x), e / e.sum(-1, keepdims=True), atol=1e-6)


def test_softmax_fully_masked_rows_are_zero():
    x = np.array([[-np.inf, -np.inf], [0.0, -np.inf]], np.float32)
    np.testing.assert_array_equal(ops.softmax(x), [[0, 0], [1, 0]])


def test_softmax_propagates_nan():
    assert np.isnan(ops.softmax(np.array([1.0, np.nan], np.float32))).all()


# ---- activations ---------------------------------------------------------------------------
def test_activations_closed_forms(rng):
    x = (rng.standard_normal(200) * 4).astype(np.float32)
    erf = np.vectorize(math.erf)
    # each activation is x times a float32 gate g(x) in [0, 1] (erf, tanh or the logistic within
    # a few ulps, then ~3 roundings): ≲ 3u·|ref| where g is near 1, at most 3u·9.6 ≈ 1.7e-6 <=
    # 1e-6 + 1e-7·|ref| (assert_allclose's default rtol), and a few u·|x|·g(x) ≪ 1e-6 where g
    # is small
    np.testing.assert_allclose(ops.gelu(x), 0.5 * f64(x) * (1 + erf(f64(x) / math.sqrt(2))),
                               atol=1e-6)
    t = np.tanh(math.sqrt(2 / math.pi) * (f64(x) + 0.044715 * f64(x) ** 3))
    np.testing.assert_allclose(ops.gelu_tanh(x), 0.5 * f64(x) * (1 + t), atol=1e-6)
    np.testing.assert_allclose(ops.quick_gelu(x), f64(x) / (1 + np.exp(-1.702 * f64(x))),
                               atol=1e-6)
    np.testing.assert_allclose(ops.silu(x), f64(x) / (1 + np.exp(-f64(x))), atol=1e-6)
    np.testing.assert_array_equal(ops.relu(x), np.maximum(x, 0))
    for fn in (ops.gelu, ops.gelu_tanh, ops.quick_gelu, ops.silu):
        assert fn(x).dtype == np.float32


# ---- norms ---------------------------------------------------------------------------------
def test_norm_references_match_float64(rng):
    x = (rng.standard_normal((3, 5, 64)) * 3 + 10).astype(np.float32)
    w, b = rng.standard_normal(64).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    xd = f64(x)
    ref_rms = xd / np.sqrt((xd ** 2).mean(-1, keepdims=True) + 1e-6) * w
    # RMSNorm is a chain of products: mean(x²) + eps is 64 squares summed and eps added, all
    # positive (γ_65 relative), the sqrt halves that and rounds once more, then x / rms and
    # · w: every element within (γ_65 / 2 + γ_4)·|ref| ≈ 36u·|ref|
    np.testing.assert_allclose(ops.rms_norm(x, w, 1e-6), ref_rms, rtol=gamma(65) / 2 + gamma(4),
                               atol=0)
    ref_ln = (xd - xd.mean(-1, keepdims=True)) / np.sqrt(xd.var(-1, keepdims=True) + 1e-5) * w + b
    # the mean of 64 values ≈ 10 is off by up to γ_64·10 ≈ 4e-5, a shift of every centred value;
    # divided by σ >= 2 and times |w| <= 2.7 that is <= 5e-5, plus ≈ 40u·|ref| from the
    # variance, the sqrt and the affine terms: inside 1e-4 + 1e-4·|ref|
    np.testing.assert_allclose(ops.layer_norm(x, w, b, 1e-5), ref_ln, rtol=1e-4, atol=1e-4)


# ---- linear ----------------------------------------------------------------------------------
def test_linear(rng):
    x, w, b = rng.standard_normal((2, 3, 8)), rng.standard_normal((5, 8)), rng.standard_normal(5)
    x, w, b = x.astype(np.float32), w.astype(np.float32), b.astype(np.float32)
    # a length-8 float32 dot product plus the bias: 9 roundings of terms whose magnitudes sum to
    # at most S = max(|x|·|w|ᵀ + |b|), in any summation order: <= γ_9·S
    S = (np.abs(f64(x)) @ np.abs(f64(w)).T + np.abs(b)).max()
    np.testing.assert_allclose(ops.linear(x, w, b), f64(x) @ f64(w).T + b, atol=gamma(9) * S,
                               rtol=0)
    with pytest.raises(ValueError, match="input width"):
        ops.linear(x, w[:, :3])


# ---- attention reference -------------------------------------------------------------------
def attention_loops(q, k, v, causal=False, scale=None, bias=None, mask=None):
    """An independent float64 definition: explicit loops over batch, head and query."""
    B, Hq, Tq, Dh = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    scale = 1 / math.sqrt(Dh) if scale is None else scale
    out = np.zeros((B, Hq, Tq, v.shape[-1]))
    full = (B, Hq, Tq, Tk)
    bias = np.zeros(full) if bias is None else np.broadcast_to(f64(bias), full)
    mask = np.ones(full, bool) if mask is None else np.broadcast_to(mask, full)
    for b in range(B):
        for h in range(Hq):
            kh = h // (Hq // Hkv)
            for i in range(Tq):
                s = f64(k[b, kh]) @ f64(q[b, h, i]) * scale + bias[b, h, i]
                ok = mask[b, h, i] & ((np.arange(Tk) <= i + Tk - Tq) if causal else True)
                if not ok.any():
                    continue
                p = np.exp(s[ok] - s[ok].max())
                out[b, h, i] = (p / p.sum()) @ f64(v[b, kh])[ok]
    return out


@pytest.mark.parametrize("B,Hq,Hkv,Tq,Tk,Dh,causal", [
    (1, 1, 1, 1, 1, 4, False), (2, 4, 2, 5, 5, 8, True), (1, 6, 1, 3, 7, 8, True),
    (2, 4, 4, 4, 9, 16, False), (1, 2, 2, 1, 6, 8, True),
])
def test_reference_attention_matches_loops(rng, B, Hq, Hkv, Tq, Tk, Dh, causal):
    q = rng.standard_normal((B, Hq, Tq, Dh)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, Tk, Dh)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, Tk, Dh)).astype(np.float32)
    bias = rng.standard_normal((1, Hq, Tq, Tk)).astype(np.float32)
    mask = rng.random((B, 1, Tq, Tk)) > 0.3
    # float32 scores are length-Dh (<= 16) dots, |s| ≲ 8; softmax rows of <= 9 terms; the
    # output a length-Tk (<= 9) dot of probabilities with |v| ≲ 3: a few tens of roundings of
    # O(1) values, ≈ 30u·3 ≈ 5e-6
    np.testing.assert_allclose(ops.attention(q, k, v, causal=causal),
                               attention_loops(q, k, v, causal), atol=1e-5)
    np.testing.assert_allclose(
        ops.attention(q, k, v, causal=causal, bias=bias, mask=mask, scale=0.3),
        attention_loops(q, k, v, causal, 0.3, bias, mask), atol=1e-5)


def test_attention_all_masked_rows_give_zeros(rng):
    q = rng.standard_normal((1, 1, 2, 4)).astype(np.float32)
    mask = np.array([[True, False], [False, False]])
    out = ops.attention(q, q, q, mask=mask)
    assert np.all(out[0, 0, 1] == 0) and np.all(np.isfinite(out))


# ---- convolutions --------------------------------------------------------------------------
def conv2d_loops(x, w, b, s, p):
    x = np.pad(f64(x), ((0, 0), (0, 0), (p, p), (p, p)))
    B, C, H, W = x.shape
    Cout, _, kh, kw = w.shape
    Ho, Wo = (H - kh) // s + 1, (W - kw) // s + 1
    out = np.zeros((B, Cout, Ho, Wo))
    for i in range(Ho):
        for j in range(Wo):
            patch = x[:, :, i * s:i * s + kh, j * s:j * s + kw]
            out[:, :, i, j] = np.einsum("bchw,ochw->bo", patch, f64(w))
    return out + (0 if b is None else f64(b)[None, :, None, None])


@pytest.mark.parametrize("k,s,p,H", [(3, 1, 1, 7), (3, 2, 1, 8), (4, 4, 0, 8), (16, 16, 0, 32),
                                     (1, 1, 0, 5), (2, 2, 0, 5)])
def test_conv2d(rng, k, s, p, H):
    x = rng.standard_normal((2, 3, H, H + 1)).astype(np.float32)
    w = rng.standard_normal((4, 3, k, k)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    # one float32 GEMM of length K = 3·k² plus the bias.  Up to K = 27 even the worst case
    # γ_(K+1)·Σ|x||w| is below 1e-4 (5.5e-5); beyond, the products have random signs, so the
    # partial sums stay ~√K and the rounding error is ~u·K/√6: ≈ 1e-6 at K = 48 and 2e-5 (one
    # σ) at K = 768, where 1e-4 is 5σ
    np.testing.assert_allclose(ops.conv2d(x, w, b, s, p), conv2d_loops(x, w, b, s, p), atol=1e-4)


@pytest.mark.parametrize("s,p", [(1, 1), (2, 1), (1, 0)])
def test_conv1d(rng, s, p):
    x = rng.standard_normal((2, 3, 11)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    # as a 1-row 2-D conv, then stride/pad
    ref = conv2d_loops(x[:, :, None, :], w[:, :, None, :], b, 1, 0)
    xp = np.pad(x, ((0, 0), (0, 0), (p, p)))
    ref = conv2d_loops(xp[:, :, None, :], w[:, :, None, :], b, 1, 0)[:, :, 0, ::s]
    # one float32 GEMM of length K = Cin·k = 9 plus the bias: <= γ_(K+1)·max(Σ|x||w| + |b|)
    S = conv2d_loops(np.abs(xp)[:, :, None, :], np.abs(w)[:, :, None, :], np.abs(b), 1, 0).max()
    np.testing.assert_allclose(ops.conv1d(x, w, b, stride=s, padding=p), ref,
                               atol=gamma(3 * 3 + 1) * S, rtol=0)
    # time-major: the same numbers, frames by channels in and out
    got = ops.conv1d(x.transpose(0, 2, 1).copy(), w, b, stride=s, padding=p, channels_last=True)
    np.testing.assert_allclose(got, ref.transpose(0, 2, 1), atol=gamma(3 * 3 + 1) * S, rtol=0)
    with pytest.raises(ValueError, match=r"x must be \[B, length, 3\]"):
        ops.conv1d(x, w, b, channels_last=True)


def conv_transpose2d_loops(x, w, b, s, p):
    B, C, H, W = x.shape
    _, Cout, kh, kw = w.shape
    out = np.zeros((B, Cout, (H - 1) * s + kh, (W - 1) * s + kw))
    for i in range(H):
        for j in range(W):
            out[:, :, i * s:i * s + kh, j * s:j * s + kw] += np.einsum("bc,cohw->bohw",
                                                                       f64(x[:, :, i, j]), f64(w))
    out = out[:, :, p:out.shape[2] - p, p:out.shape[3] - p]
    return out + f64(b)[None, :, None, None]


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), (3, 1, 0), (4, 2, 1)])
def test_conv_transpose2d(rng, k, s, p):
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    w = rng.standard_normal((3, 6, k, k)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    # each output sums at most n = Cin·⌈k/s⌉² products (Cin = 3 per tap, ⌈k/s⌉² taps) and the
    # bias: in any order within γ_(n+1) of the sum of their magnitudes
    n = 3 * math.ceil(k / s) ** 2
    S = conv_transpose2d_loops(np.abs(x), np.abs(w), np.abs(b), s, p).max()
    np.testing.assert_allclose(ops.conv_transpose2d(x, w, b, s, p),
                               conv_transpose2d_loops(x, w, b, s, p), atol=gamma(n + 1) * S, rtol=0)


def test_convs_match_torch(rng):
    torch = pytest.importorskip("torch",
                                reason="cross-check against torch.nn.functional needs torch")
    F = torch.nn.functional
    x = rng.standard_normal((1, 4, 9, 10)).astype(np.float32)
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    wt = rng.standard_normal((4, 5, 2, 2)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    T = torch.from_numpy
    # two float32 evaluations, each a sum of at most 36 products of N(0, 1) values and the bias
    # (Σ|x||w| ≲ 35): with random signs the partial sums stay ~√K and each side is off by
    # ~u·K/√6 ≈ 1e-6; 2·γ_37·35 ≈ 1.5e-4 only if every rounding went the same way
    np.testing.assert_allclose(ops.conv2d(x, w, b, 2, 1),
                               F.conv2d(T(x), T(w), T(b), 2, 1).numpy(), atol=1e-4)
    np.testing.assert_allclose(ops.conv_transpose2d(x, wt, b, 2),
                               F.conv_transpose2d(T(x), T(wt), T(b), 2).numpy(), atol=1e-4)
    x1, w1 = x[:, :, 0], w[:, :, 0]
    np.testing.assert_allclose(ops.conv1d(x1, w1, b, 2, 1),
                               F.conv1d(T(x1), T(w1), T(b), 2, 1).numpy(), atol=1e-4)


# ---- bilinear resize -----------------------------------------------------------------------
def test_bilinear_identity_and_constant(rng):
    x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    # same size: the taps are the pixel itself with weight 1 and its neighbour with weight 0,
    # so the result is exact
    np.testing.assert_allclose(ops.interpolate_bilinear(x, (5, 7)), x, atol=1e-6)
    c = np.full((1, 1, 4, 4), 3.0, np.float32)
    # two weights summing to 1 (each rounded to float32), 2 products and a sum per pass, two
    # passes: 3·(1 ± γ_6) ≈ 3 ± 1.1e-6 <= atol + rtol·3 (assert_allclose's default rtol=1e-7)
    np.testing.assert_allclose(ops.interpolate_bilinear(c, (9, 13)), 3.0, atol=1e-6)


@pytest.mark.parametrize("size", [(10, 14), (3, 2), (64, 64), (7, 5)])
def test_bilinear_matches_torch(rng, size):
    torch = pytest.importorskip("torch", reason="cross-check against F.interpolate needs torch")
    x = rng.standard_normal((2, 3, 8, 6)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode="bilinear",
                                          align_corners=False)
    # two passes of two weighted terms, |x| <= 3.2: ≈ 6u·3.2 ≈ 1e-6 on each side; torch derives
    # its weights in float32 from source coordinates <= 8 (≈ 16u absolute), which moves a pass
    # by ≈ 16u·|x1 - x0| ≲ 6e-6 at most
    np.testing.assert_allclose(ops.interpolate_bilinear(x, size), ref.numpy(), atol=1e-5)
