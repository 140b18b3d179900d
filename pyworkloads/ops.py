"""NumPy building blocks shared by the four models.

Each function is short and pure; its docstring gives the shapes.  The four heavy ops (matmul,
attention, rms_norm, layer_norm) go through :mod:`pyworkloads.kernels`, so switching backend or
profiling covers everything built on them -- including linear layers and convolutions, which are
written here as matrix products (im2col) for exactly that reason.

Shapes use the project's dimension letters (docs/glossary.md) and, for the general layers here,
Din/Dout (a linear layer's widths), Cin/Cout (a convolution's channels), h, w (a feature map's
height and width), n (a sequence's length) and kh, kw (a kernel's size).
"""
from __future__ import annotations

import numpy as np
from scipy import special

from . import kernels, quant
from .kernels import attention, layer_norm, matmul, rms_norm  # noqa: F401  (re-exported)
from .kernels.reference import softmax  # noqa: F401  (re-exported)

__all__ = [
    "linear", "linears", "contiguous", "layer_norm", "rms_norm", "softmax", "gelu", "gelu_tanh",
    "quick_gelu",
    "silu", "relu", "attention", "matmul", "conv1d", "conv2d", "conv_transpose2d",
    "interpolate_bilinear", "ACTIVATIONS",
]


# ---------------------------------------------------------------------------------------------
# dense layers
# ---------------------------------------------------------------------------------------------
def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """y = x Wᵀ + b with PyTorch's weight layout.  x [..., Din], weight [Dout, Din] (float, or a
    :class:`~pyworkloads.quant.QuantizedTensor`), bias [Dout].

    Leading dimensions are folded into one GEMM of (prod(...), Din) x (Din, Dout)."""
    _check_width(x, weight)
    lead = x.shape[:-1]
    if isinstance(weight, quant.QuantizedTensor):     # block-quantized rows, decoded in the kernel
        y = kernels.qmatmul(x.reshape(-1, x.shape[-1]), weight)           # [rows, Dout]
    else:
        y = kernels.matmul(x.reshape(-1, x.shape[-1]), weight.T)          # [rows, Dout]
    if bias is not None:
        y += bias
    return y.reshape(*lead, weight.shape[0])


def _check_width(x, weight) -> None:
    if x.shape[-1] != weight.shape[-1]:
        raise ValueError(f"linear: x's last dimension {x.shape[-1]} != weight's input width "
                         f"{weight.shape[-1]}")


def linears(x: np.ndarray, weights: list, biases: list | None = None) -> list[np.ndarray]:
    """``[linear(x, w, b) for w, b in zip(weights, biases)]``: the layers that read the same x
    (attention's Q, K and V projections; SwiGLU's gate and up).  Float weights go to the kernels
    as one :func:`kernels.matmul_group` call, which the cpp backend runs as a single pass over
    all of them; its results, profile and trace are those of the separate layers."""
    biases = [None] * len(weights) if biases is None else biases
    for w in weights:
        _check_width(x, w)
    if any(isinstance(w, quant.QuantizedTensor) for w in weights):
        return [linear(x, w, b) for w, b in zip(weights, biases)]
    lead = x.shape[:-1]
    ys = kernels.matmul_group(x.reshape(-1, x.shape[-1]), [w.T for w in weights])  # [rows, Dout]
    for y, b in zip(ys, biases):
        if b is not None:
            y += b
    return [y.reshape(*lead, w.shape[0]) for y, w in zip(ys, weights)]


def contiguous(x):
    """x as a C-contiguous array (a copy only when it is not one already).  Models call this
    rather than ``np.ascontiguousarray``, which would turn the shape-only arrays of
    :func:`pyworkloads.kernels.trace` into object arrays."""
    if hasattr(x, "ascontiguous"):                       # a traced array: it records the copy
        return x.ascontiguous()
    return x if x.flags.c_contiguous else x.copy(order="C")


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
    """x · σ(1.702 x): the GELU approximation OpenAI's CLIP was trained with, dispatched (see
    :func:`kernels.gelu`)."""
    return kernels.gelu(x, approximate="sigmoid")


def silu(x):
    """x · σ(x) (a.k.a. swish), the gate of LLaMA's SwiGLU."""
    return x * special.expit(x)


def relu(x):
    return np.maximum(x, 0)


ACTIVATIONS = {"gelu": gelu, "gelu_new": gelu_tanh, "gelu_pytorch_tanh": gelu_tanh,
               "quick_gelu": quick_gelu, "silu": silu, "swish": silu, "relu": relu}


# ---------------------------------------------------------------------------------------------
# convolutions as matrix products
# ---------------------------------------------------------------------------------------------
def _pair(v):
    return (v, v) if isinstance(v, (int, np.integer)) else tuple(v)


def conv1d(x, weight, bias=None, stride: int = 1, padding: int = 0, channels_last: bool = False):
    """x [B, Cin, n], weight [Cout, Cin, k] -> [B, Cout, (n + 2p - k) // s + 1] (zero padding).

    ``channels_last``: x [B, n, Cin] -> [B, nout, Cout], time-major, the layout the GEMM produces
    and a transformer continues in; a stack of convolutions then needs no transposes (a strided
    transpose of a long signal costs more than the convolution's GEMM)."""
    Cout, Cin, k = weight.shape
    c_axis, t_axis = (2, 1) if channels_last else (1, 2)
    if x.ndim != 3 or x.shape[c_axis] != Cin:
        want = f"[B, length, {Cin}]" if channels_last else f"[B, {Cin}, length]"
        raise ValueError(f"conv1d: x must be {want}, got {tuple(x.shape)}")
    if padding:
        pad = [(0, 0)] * 3
        pad[t_axis] = (padding, padding)
        x = np.pad(x, pad)
    cols = np.lib.stride_tricks.sliding_window_view(x, k, axis=t_axis)   # window axis last
    if channels_last:
        cols = cols[:, ::stride]                                         # [B, nout, Cin, k]
    else:
        cols = cols[:, :, ::stride].transpose(0, 2, 1, 3)                # [B, nout, Cin, k]
    cols = cols.reshape(x.shape[0], -1, Cin * k)                         # [B, nout, Cin·k]
    y = linear(cols, weight.reshape(Cout, Cin * k), bias)                # [B, nout, Cout]
    return y if channels_last else y.transpose(0, 2, 1)


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """x [B, Cin, h, w], weight [Cout, Cin, kh, kw] -> [B, Cout, ho, wo] (zero padding)."""
    Cout, Cin, kh, kw = weight.shape
    if x.ndim != 4 or x.shape[1] != Cin:
        raise ValueError(f"conv2d: x must be [B, {Cin}, height, width], got {tuple(x.shape)}")
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    B = x.shape[0]
    if (kh, kw) == (sh, sw) and x.shape[2] % kh == 0 and x.shape[3] % kw == 0:
        # non-overlapping patches (ViT patch embedding): a reshape, no window copy
        ho, wo = x.shape[2] // kh, x.shape[3] // kw
        cols = x.reshape(B, Cin, ho, kh, wo, kw).transpose(0, 2, 4, 1, 3, 5)
    else:
        win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
        ho, wo = win.shape[2], win.shape[3]
        cols = win.transpose(0, 2, 3, 1, 4, 5)                          # [B, ho, wo, Cin, kh, kw]
    y = linear(cols.reshape(B, ho * wo, Cin * kh * kw),
               weight.reshape(Cout, -1), bias)                          # [B, ho·wo, Cout]
    return y.transpose(0, 2, 1).reshape(B, Cout, ho, wo)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0):
    """Transposed convolution.  x [B, Cin, h, w], weight [Cin, Cout, kh, kw] (PyTorch layout)
    -> [B, Cout, (h-1)·s - 2p + kh, (w-1)·s - 2p + kw].

    Every input pixel scatters a kh×kw patch: one GEMM makes all patches, then each kernel tap
    is added into the output on a strided grid.  The GEMM takes the input as it lies, channels
    by pixels ([Cout·kh·kw, Cin] @ [B, Cin, h·w]), so each tap comes out as a [B, Cout, h, w]
    image whose rows are contiguous.  When the stride equals the kernel (SAM's 2x2, stride 2
    upscaling) the patches do not overlap: tap (i, j) of pixel (y, x) lands on (y·kh + i,
    x·kw + j), one strided copy per tap, with the bias added on the way."""
    Cin, Cout, kh, kw = weight.shape
    if x.ndim != 4 or x.shape[1] != Cin:
        raise ValueError(f"conv_transpose2d: x must be [B, {Cin}, height, width], "
                         f"got {tuple(x.shape)}")
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    B, _, h, w = x.shape
    patches = kernels.matmul(weight.reshape(Cin, -1).T,
                             x.reshape(B, Cin, h * w))                  # [B, Cout·kh·kw, h·w]
    taps = patches.reshape(B, Cout, kh, kw, h, w)                 # tap (i, j): [B, Cout, h, w]
    if (kh, kw) == (sh, sw) and (ph, pw) == (0, 0):
        out = np.empty_like(patches, shape=(B, Cout, h, kh, w, kw))
        for i in range(kh):
            for j in range(kw):
                if bias is not None:
                    np.add(taps[:, :, i, j], bias[None, :, None, None], out=out[:, :, :, i, :, j])
                else:
                    out[:, :, :, i, :, j] = taps[:, :, i, j]
        return out.reshape(B, Cout, h * kh, w * kw)                     # (a view)
    hf, wf = (h - 1) * sh + kh, (w - 1) * sw + kw
    out = np.zeros_like(patches, shape=(B, Cout, hf, wf))
    for i in range(kh):
        for j in range(kw):
            out[:, :, i:i + (h - 1) * sh + 1:sh, j:j + (w - 1) * sw + 1:sw] += taps[:, :, i, j]
    out = out[:, :, ph:hf - ph, pw:wf - pw]
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
    """Resize the last two axes of x [..., h, w] to size (ho, wo) like
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` (no antialiasing)."""
    ho, wo = size
    i0, i1, a0, a1 = _linear_taps(x.shape[-2], ho)
    j0, j1, b0, b1 = _linear_taps(x.shape[-1], wo)
    dt = x.dtype
    rows = (x[..., i0, :] * a0[:, None].astype(dt)
            + x[..., i1, :] * a1[:, None].astype(dt))                       # [..., ho, w]
    return rows[..., j0] * b0.astype(dt) + rows[..., j1] * b1.astype(dt)
