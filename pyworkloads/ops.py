"""NumPy building blocks shared by the four models.

Each function is short and pure; its docstring gives the shapes.  The four heavy ops (matmul,
attention, rms_norm, layer_norm) go through :mod:`pyworkloads.kernels`, so switching backend or
profiling covers everything built on them -- including linear layers and convolutions, which are
written here as matrix products (im2col) for exactly that reason.

Glossary: B batch, T tokens, D width, H heads, Dh head width, C channels, L length, K kernel.
"""
from __future__ import annotations

import numpy as np
from scipy import special

from . import kernels
from .kernels import attention, layer_norm, matmul, rms_norm  # noqa: F401  (re-exported)
from .kernels.reference import softmax  # noqa: F401  (re-exported)

__all__ = [
    "linear", "contiguous", "embedding", "layer_norm", "rms_norm", "softmax", "gelu", "gelu_tanh",
    "quick_gelu", "silu", "relu", "rope_cos_sin", "apply_rope", "rope", "attention", "matmul",
    "conv1d", "conv2d",
    "conv_transpose2d", "interpolate_bilinear", "channel_layer_norm", "ACTIVATIONS",
]


# ---------------------------------------------------------------------------------------------
# dense layers
# ---------------------------------------------------------------------------------------------
def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """y = x Wᵀ + b with PyTorch's weight layout.  x [..., Din], weight [Dout, Din], bias [Dout].

    Leading dimensions are folded into one GEMM of (prod(...), Din) x (Din, Dout)."""
    if x.shape[-1] != weight.shape[-1]:
        raise ValueError(f"linear: x's last dimension {x.shape[-1]} != weight's input width "
                         f"{weight.shape[-1]}")
    lead = x.shape[:-1]
    y = kernels.matmul(x.reshape(-1, x.shape[-1]), weight.T)              # [N, Dout]
    if bias is not None:
        y += bias
    return y.reshape(*lead, weight.shape[0])


def contiguous(x):
    """x as a C-contiguous array (a copy only when it is not one already).  Models call this
    rather than ``np.ascontiguousarray``, which would turn the shape-only arrays of
    :func:`pyworkloads.kernels.trace` into object arrays."""
    return x if getattr(x, "flags", None) is None or x.flags.c_contiguous else x.copy(order="C")


def embedding(ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Row lookup.  ids int [...], table [V, D] -> [..., D]; ids must lie in [0, V)."""
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"embedding: ids must be integers, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        raise ValueError(f"embedding: ids must lie in [0, {table.shape[0]}), got range "
                         f"[{ids.min()}, {ids.max()}]")
    return table[ids]


# ---------------------------------------------------------------------------------------------
# activations (all elementwise, dtype-preserving)
# ---------------------------------------------------------------------------------------------
def gelu(x):
    """Exact GELU: x · Φ(x) = x/2 · (1 + erf(x/√2)), dispatched (see :func:`kernels.gelu`)."""
    return kernels.gelu(x)


def gelu_tanh(x):
    """GELU's tanh approximation (GPT-2, "gelu_new" / "gelu_pytorch_tanh")."""
    c = np.asarray(np.sqrt(2.0 / np.pi), x.dtype)
    return 0.5 * x * (1.0 + np.tanh(c * (x + np.asarray(0.044715, x.dtype) * x * x * x)))


def quick_gelu(x):
    """x · σ(1.702 x): the GELU approximation OpenAI's CLIP was trained with."""
    return x * special.expit(np.asarray(1.702, x.dtype) * x)


def silu(x):
    """x · σ(x) (a.k.a. swish), the gate of LLaMA's SwiGLU."""
    return x * special.expit(x)


def relu(x):
    return np.maximum(x, 0)


ACTIVATIONS = {"gelu": gelu, "gelu_new": gelu_tanh, "gelu_pytorch_tanh": gelu_tanh,
               "quick_gelu": quick_gelu, "silu": silu, "swish": silu, "relu": relu}


# ---------------------------------------------------------------------------------------------
# rotary position embeddings
# ---------------------------------------------------------------------------------------------
def rope_cos_sin(head_dim: int, positions, theta: float = 10000.0, dtype=np.float32):
    """cos, sin of the rotation angles pos · θ^(-2i/Dh), i < Dh/2.  positions int [T] -> two
    [T, Dh/2]."""
    if head_dim % 2:
        raise ValueError(f"rope: head_dim must be even, got {head_dim}")
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def apply_rope(x, cos, sin, layout: str = "half"):
    """Rotate pairs of channels of x [..., T, Dh] by the angles in cos/sin [T, Dh/2].

    layout="half": the pair is (x[i], x[i + Dh/2]) -- Hugging Face checkpoints (``rotate_half``).
    layout="interleaved": the pair is (x[2i], x[2i+1]) -- Meta's original checkpoints and the
    RoFormer paper.  HF's conversion script permutes the q/k projection rows so that the two give
    identical attention scores."""
    if layout == "half":
        h = x.shape[-1] // 2
        x1, x2 = x[..., :h], x[..., h:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    if layout == "interleaved":
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x1 * cos - x2 * sin
        out[..., 1::2] = x2 * cos + x1 * sin
        return out
    raise ValueError(f"rope: layout must be 'half' or 'interleaved', got {layout!r}")


def rope(x, theta: float = 10000.0, offset: int = 0, layout: str = "half"):
    """RoPE for x [..., T, Dh] at positions offset .. offset+T-1 (offset = tokens already
    cached)."""
    cos, sin = rope_cos_sin(x.shape[-1], np.arange(offset, offset + x.shape[-2]), theta, x.dtype)
    return apply_rope(x, cos, sin, layout)


# ---------------------------------------------------------------------------------------------
# convolutions as matrix products
# ---------------------------------------------------------------------------------------------
def _pair(v):
    return (v, v) if isinstance(v, (int, np.integer)) else tuple(v)


def conv1d(x, weight, bias=None, stride: int = 1, padding: int = 0):
    """x [B, Cin, L], weight [Cout, Cin, K] -> [B, Cout, (L + 2p - K) // s + 1] (zero padding)."""
    Cout, Cin, K = weight.shape
    if x.ndim != 3 or x.shape[1] != Cin:
        raise ValueError(f"conv1d: x must be [B, {Cin}, L], got {tuple(x.shape)}")
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding)))
    cols = np.lib.stride_tricks.sliding_window_view(
        x, K, axis=2)[:, :, ::stride]                                    # [B, Cin, Lout, K]
    cols = cols.transpose(0, 2, 1, 3).reshape(x.shape[0], -1, Cin * K)   # [B, Lout, Cin·K]
    y = linear(cols, weight.reshape(Cout, Cin * K), bias)                # [B, Lout, Cout]
    return y.transpose(0, 2, 1)


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """x [B, Cin, H, W], weight [Cout, Cin, kh, kw] -> [B, Cout, Hout, Wout] (zero padding)."""
    Cout, Cin, kh, kw = weight.shape
    if x.ndim != 4 or x.shape[1] != Cin:
        raise ValueError(f"conv2d: x must be [B, {Cin}, H, W], got {tuple(x.shape)}")
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    B = x.shape[0]
    if (kh, kw) == (sh, sw) and x.shape[2] % kh == 0 and x.shape[3] % kw == 0:
        # non-overlapping patches (ViT patch embedding): a reshape, no window copy
        Ho, Wo = x.shape[2] // kh, x.shape[3] // kw
        cols = x.reshape(B, Cin, Ho, kh, Wo, kw).transpose(0, 2, 4, 1, 3, 5)
    else:
        win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
        Ho, Wo = win.shape[2], win.shape[3]
        cols = win.transpose(0, 2, 3, 1, 4, 5)                          # [B, Ho, Wo, Cin, kh, kw]
    y = linear(cols.reshape(B, Ho * Wo, Cin * kh * kw),
               weight.reshape(Cout, -1), bias)                          # [B, Ho·Wo, Cout]
    return y.transpose(0, 2, 1).reshape(B, Cout, Ho, Wo)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0):
    """Transposed convolution.  x [B, Cin, H, W], weight [Cin, Cout, kh, kw] (PyTorch layout)
    -> [B, Cout, (H-1)·s - 2p + kh, (W-1)·s - 2p + kw].

    Every input pixel scatters a kh×kw patch: one GEMM makes all patches, then each kernel tap
    is added into the output on a strided grid."""
    Cin, Cout, kh, kw = weight.shape
    if x.ndim != 4 or x.shape[1] != Cin:
        raise ValueError(f"conv_transpose2d: x must be [B, {Cin}, H, W], got {tuple(x.shape)}")
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    B, _, H, W = x.shape
    patches = kernels.matmul(x.transpose(0, 2, 3, 1).reshape(B, H * W, Cin),
                             weight.reshape(Cin, -1))
    patches = patches.reshape(B, H, W, Cout, kh, kw)
    Hf, Wf = (H - 1) * sh + kh, (W - 1) * sw + kw
    out = np.zeros_like(patches, shape=(B, Cout, Hf, Wf))
    for i in range(kh):
        for j in range(kw):
            out[:, :, i:i + (H - 1) * sh + 1:sh, j:j + (W - 1) * sw + 1:sw] += (
                patches[..., i, j].transpose(0, 3, 1, 2))
    out = out[:, :, ph:Hf - ph, pw:Wf - pw]
    if bias is not None:
        out = out + bias[None, :, None, None]
    return contiguous(out)


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------
def _linear_taps(n_in: int, n_out: int):
    """Source indices and weights of PyTorch's bilinear interpolation (align_corners=False)."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    return i0, i1, 1.0 - w1, w1


def interpolate_bilinear(x, size):
    """Resize the last two axes of x [..., H, W] to size (Ho, Wo) like
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` (no antialiasing)."""
    Ho, Wo = size
    i0, i1, a0, a1 = _linear_taps(x.shape[-2], Ho)
    j0, j1, b0, b1 = _linear_taps(x.shape[-1], Wo)
    dt = x.dtype
    rows = (x[..., i0, :] * a0[:, None].astype(dt)
            + x[..., i1, :] * a1[:, None].astype(dt))                       # [..., Ho, W]
    return rows[..., j0] * b0.astype(dt) + rows[..., j1] * b1.astype(dt)


def channel_layer_norm(x, weight, bias, eps: float = 1e-6):
    """LayerNorm over the channel axis of NCHW x [B, C, H, W] (SAM's neck and mask decoder)."""
    y = kernels.layer_norm(contiguous(x.transpose(0, 2, 3, 1)), weight, bias, eps)
    return y.transpose(0, 3, 1, 2)
