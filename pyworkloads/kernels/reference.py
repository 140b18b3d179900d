"""The NumPy reference implementations of the dispatched kernels.

These are the definitions every other backend is tested against: plain, readable NumPy that
materialises the full attention matrix.  Shapes (glossary used throughout the project):

    B batch, H / Hq query heads, Hkv key/value heads, Tq query tokens, Tk key tokens, Dh head width.
"""
from __future__ import annotations

import numpy as np
from scipy import special

from .. import quant


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax.  Rows that are entirely -inf (fully masked) give all zeros,
    not NaN, so a query that may attend to nothing contributes nothing; so does an empty axis (no
    keys at all).  A NaN or +inf anywhere in a row makes the whole row NaN."""
    m = np.max(x, axis=axis, keepdims=True, initial=-np.inf)
    # all -inf row: avoid -inf - -inf
    m = np.where(np.isneginf(m), 0.0, m).astype(x.dtype, copy=False)
    e = np.exp(x - m)
    s = np.sum(e, axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = e / s
    return np.where(s == 0, 0.0, out).astype(x.dtype, copy=False)   # NaN inputs stay NaN


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[..., M, K] @ [..., K, N] -> [..., M, N], batch dimensions broadcast (np.matmul
    semantics)."""
    return np.matmul(a, b)


def matmul_group(a: np.ndarray, bs) -> list[np.ndarray]:
    """[a @ b for b in bs]: a [M, K], bs [K, Nᵢ] -> [M, Nᵢ] each."""
    return [np.matmul(a, b) for b in bs]


def qmatmul(x: np.ndarray, w) -> np.ndarray:
    """x @ Wᵀ for a block-quantized W (a :class:`pyworkloads.quant.QuantizedTensor` [N, K]):
    decode W to float32 and multiply.  x [M, K] -> [M, N].  W is decoded in slices of rows, so a
    large matrix (a 32000-row head) never exists in float32 all at once."""
    N, K = w.shape
    out = np.empty((x.shape[0], N), dtype=np.float32)
    step = max(1, (1 << 22) // max(1, K))                        # ~16 MB of float32 per slice
    for n in range(0, N, step):
        rows = quant.dequantize(w.data[n:n + step], w.qtype, (min(step, N - n), K))
        out[:, n:n + step] = x @ rows.T                          # [M, rows]
    return out


def rel_pos_bias(rel_h, rel_w):
    """The bias a decomposed relative position stands for (MViTv2, SAM): the keys lie on a
    kh x kw grid, key j = (j // kw, j % kw), and

        bias[..., i, j] = rel_h[..., i, j // kw] + rel_w[..., i, j % kw]

    rel_h [..., Tq, kh], rel_w [..., Tq, kw] -> [..., Tq, kh·kw]."""
    both = rel_h[..., :, None] + rel_w[..., None, :]                        # [..., Tq, kh, kw]
    return both.reshape(*both.shape[:-2], -1)                               # [..., Tq, Tk]


def attention(q, k, v, causal=False, scale=None, bias=None, mask=None, rel_pos=None):
    """Scaled dot-product attention, the textbook way (full score matrix).

    q [B, Hq, Tq, Dh], k [B, Hkv, Tk, Dh], v [B, Hkv, Tk, Dv] with Hq % Hkv == 0 (grouped-query
    attention: query head h reads key/value head h // (Hq // Hkv)).
    causal: query i may see keys j <= i + (Tk - Tq) -- bottom-right aligned, so a single decode
      query (Tq = 1) sees the whole cache.
    bias: additive, broadcastable to [B, Hq, Tq, Tk].  mask: boolean, broadcastable to
      [B, Hq, Tq, Tk], True = may attend (PyTorch SDPA's convention).
    rel_pos: (rel_h, rel_w), a bias in decomposed form (:func:`rel_pos_bias`), added to bias.
    Rows with no allowed key produce zeros.  Returns [B, Hq, Tq, Dv].
    """
    Hq, Hkv = q.shape[1], k.shape[1]
    group = Hq // Hkv
    if group > 1:                                   # share each K/V head across its query group
        k = np.repeat(k, group, axis=1)
        v = np.repeat(v, group, axis=1)
    if scale is None:
        scale = 1.0 / np.sqrt(q.shape[-1])
    s = np.matmul(q, np.swapaxes(k, -1, -2)) * np.asarray(scale, dtype=q.dtype)   # [B, Hq, Tq, Tk]
    if bias is not None:
        s = s + bias
    if rel_pos is not None:
        s = s + rel_pos_bias(*rel_pos)
    allowed = None
    if causal:
        Tq, Tk = q.shape[2], k.shape[2]
        allowed = np.arange(Tk)[None, :] <= np.arange(Tq)[:, None] + (Tk - Tq)
    if mask is not None:
        allowed = mask if allowed is None else (allowed & mask)
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)
    p = softmax(s.astype(q.dtype, copy=False), axis=-1)
    return np.matmul(p, v)


def gelu(x, approximate: str = "none"):
    """Exact GELU: x · Φ(x) = x/2 · (1 + erf(x/√2)) (erf from SciPy, correctly rounded per
    element); ``approximate="sigmoid"``: x · σ(1.702 x), the approximation OpenAI's CLIP was
    trained with ("quick_gelu")."""
    if approximate == "sigmoid":
        return x * special.expit(np.asarray(1.702, x.dtype) * x)
    return 0.5 * x * (1.0 + special.erf(x * np.asarray(1.0 / np.sqrt(2.0), x.dtype)))


def rms_norm(x, weight, eps):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis (LLaMA's RMSNorm)."""
    var = np.mean(np.square(x), axis=-1, keepdims=True)
    return (x / np.sqrt(var + np.asarray(eps, x.dtype))) * weight


def layer_norm(x, weight, bias, eps):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis (biased variance, as
    PyTorch)."""
    mu = np.mean(x, axis=-1, keepdims=True)
    xc = x - mu
    var = np.mean(np.square(xc), axis=-1, keepdims=True)
    y = xc / np.sqrt(var + np.asarray(eps, x.dtype))
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y
