"""Weight-only quantization in llama.cpp's (ggml's) block formats, the formats of GGUF files.

A quantized matrix [N, K] keeps each row of K weights as K / block blocks.  A block stores
integers q and one or two float16 numbers that turn them back into weights; the kernels decode
a block in registers and never hold the float32 matrix.  The formats, per block (bytes / weights
= the bytes a weight costs when decode streams it):

=======  ======  =========  ========================================================================
format   block   bytes      weight w of an integer q
=======  ======  =========  ========================================================================
Q8_0     32      34         w = d·q,            q int8;   d fp16 (8.5 bits per weight)
Q4_0     32      18         w = d·(q − 8),      q 0..15;  d fp16 (4.5)
Q4_1     32      20         w = d·q + m,        q 0..15;  d, m fp16 (5.0)
Q4_K     256     144        w = (d·sc)·q − (dmin·mn), q 0..15; eight sub-blocks of 32 weights,
                            each with a 6-bit scale sc and a 6-bit min mn; d, dmin fp16 (4.5)
Q6_K     256     210        w = (d·sc)·(q − 32), q 0..63; sixteen sub-blocks of 16, each with an
                            int8 scale sc; d fp16 (6.5625)
=======  ======  =========  ========================================================================

"K-quants" (Q4_K, Q6_K) are quantized in two levels: a float16 super-scale per 256 weights and
small integer scales per sub-block, so their scales cost a fraction of a bit per weight.  A
"Q4_K_M" GGUF file mixes Q4_K with Q6_K for the tensors that hurt most when quantized.

The decoders below are the definitions (NumPy, float32 arithmetic in ggml's order, so they give
the same floats as llama.cpp's ``dequantize_row_*`` and the ``gguf`` package); the cpp backend's
kernels are tested against them.  :func:`quantize` writes Q8_0, Q4_0 and Q4_1 as ggml's reference
quantizers do (round to nearest, one scale per block from the block's largest magnitude); the
K-quants' quantizers search for scales and are not reproduced here.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["BLOCKS", "QUANTIZERS", "QuantizedTensor", "dequantize", "quantize",
           "bits_per_weight"]

# weights per block, bytes per block
BLOCKS: dict[str, tuple[int, int]] = {
    "Q8_0": (32, 34),
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q4_K": (256, 144),
    "Q6_K": (256, 210),
}
QUANTIZERS = ("Q8_0", "Q4_0", "Q4_1")


def bits_per_weight(qtype: str) -> float:
    """Storage bits per weight of a block format, scales included (Q8_0: 8.5)."""
    block, size = BLOCKS[_check_qtype(qtype)]
    return 8 * size / block


def _check_qtype(qtype) -> str:
    if not isinstance(qtype, str) or qtype.upper() not in BLOCKS:
        raise ValueError(f"qtype must be one of {', '.join(BLOCKS)}, got {qtype!r}")
    return qtype.upper()


# ---------------------------------------------------------------------------------------------
# decoding: blocks uint8 [n, bytes per block] -> weights float32 [n, block]
# ---------------------------------------------------------------------------------------------
def _f16(blocks: np.ndarray, at: int) -> np.ndarray:
    """The float16 stored at byte ``at`` of every block, as float32 [n, 1]."""
    return np.ascontiguousarray(blocks[:, at:at + 2]).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """Bytes [n, 16] -> 4-bit values [n, 32]: the 16 low nibbles, then the 16 high nibbles."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _q8_0(b):
    d = _f16(b, 0)                                                      # [n, 1]
    q = b[:, 2:34].view(np.int8).astype(np.float32)                     # [n, 32]
    return q * d


def _q4_0(b):
    d = _f16(b, 0)                                                      # [n, 1]
    q = _nibbles(b[:, 2:18]).astype(np.int8) - np.int8(8)               # [n, 32] in -8..7
    return d * q.astype(np.float32)


def _q4_1(b):
    d, m = _f16(b, 0), _f16(b, 2)                                       # [n, 1] each
    q = _nibbles(b[:, 4:20]).astype(np.float32)                         # [n, 32] in 0..15
    return d * q + m


def _q4_k_scales(s: np.ndarray):
    """The eight 6-bit (scale, min) pairs packed into 12 bytes [n, 12] -> two uint8 [n, 8].

    Bytes 0-3 hold scales 0-3 in their low 6 bits, bytes 4-7 mins 0-3; scales and mins 4-7 keep
    their low 4 bits in bytes 8-11 (scale low nibble, min high nibble) and their top 2 bits in
    the spare top bits of bytes 0-3 (scales) and 4-7 (mins)."""
    lo, mid, hi = s[:, 0:4], s[:, 4:8], s[:, 8:12]                      # [n, 4] each
    sc = np.concatenate([lo & 63, (hi & 0x0F) | ((lo >> 6) << 4)], axis=-1)
    mn = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=-1)
    return sc, mn                                                       # [n, 8] each


def _q4_k(b):
    n = b.shape[0]
    d, dmin = _f16(b, 0), _f16(b, 2)                                    # [n, 1]
    sc, mn = _q4_k_scales(b[:, 4:16])                                   # [n, 8]
    qs = b[:, 16:144].reshape(n, 4, 32)                                 # 4 chunks of 32 bytes
    q = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(n, 8, 32)        # chunk c -> 2c, 2c+1
    scale = (d * sc.astype(np.float32))[:, :, None]                     # [n, 8, 1]
    offset = (dmin * mn.astype(np.float32))[:, :, None]                 # [n, 8, 1]
    return (scale * q.astype(np.float32) - offset).reshape(n, 256)


def _q6_k(b):
    n = b.shape[0]
    ql = b[:, 0:128].reshape(n, 2, 64)                                  # low 4 bits, per half
    qh = b[:, 128:192].reshape(n, 2, 32)                                # high 2 bits, per half
    sc = b[:, 192:208].view(np.int8).astype(np.float32)                 # [n, 16]
    d = _f16(b, 208)                                                    # [n, 1]
    # in each half of 128: weights 0-63 take the low nibbles of ql[0:64], 64-127 the high
    # nibbles; qh[l] holds the top bits of weights l, l+32, l+64, l+96 in bit pairs 0-1 .. 6-7
    low = np.concatenate([ql & 0x0F, ql >> 4], axis=-1)                 # [n, 2, 128]
    high = np.concatenate([(qh >> s) & 3 for s in (0, 2, 4, 6)], axis=-1)   # [n, 2, 128]
    q = (low | (high << 4)).astype(np.int8) - np.int8(32)               # [n, 2, 128] in -32..31
    scale = (d * sc)[:, :, None]                                        # [n, 16, 1]
    return (scale * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, 256)


_DECODERS = {"Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_1": _q4_1, "Q4_K": _q4_k, "Q6_K": _q6_k}


def dequantize(data: np.ndarray, qtype: str, shape) -> np.ndarray:
    """The float32 weights of shape ``shape`` (..., K) stored as rows of blocks
    ``data`` uint8 [rows, K / block · bytes]."""
    qtype = _check_qtype(qtype)
    block, size = BLOCKS[qtype]
    blocks = np.asarray(data, dtype=np.uint8).reshape(-1, size)         # [rows · K/block, bytes]
    return _DECODERS[qtype](blocks).reshape(shape)


# ---------------------------------------------------------------------------------------------
# encoding (ggml's reference quantizers): x float32 [n, block] -> blocks uint8 [n, bytes]
# ---------------------------------------------------------------------------------------------
def _as_f16_bytes(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16).view(np.uint8)                          # [n, 2]


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """C's roundf: halves go away from zero (NumPy's round goes to even)."""
    return np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """[n, 32] values 0..15 -> [n, 16] bytes, the inverse of :func:`_nibbles`."""
    return (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)


def _encode_q8_0(x):
    d = np.abs(x).max(axis=1, keepdims=True) / np.float32(127)          # [n, 1]
    q = _round_half_away(x * _inverse(d)).astype(np.int8)               # [n, 32]
    return np.concatenate([_as_f16_bytes(d), q.view(np.uint8)], axis=1)


def _encode_q4_0(x):
    # the block's value of largest magnitude, with its sign, maps to q = 0 (w = -8·d)
    peak = np.take_along_axis(x, np.abs(x).argmax(axis=1)[:, None], axis=1)
    d = peak / np.float32(-8)                                           # [n, 1]
    q = np.trunc(x * _inverse(d) + np.float32(8.5)).clip(0, 15).astype(np.uint8)
    return np.concatenate([_as_f16_bytes(d), _pack_nibbles(q)], axis=1)


def _encode_q4_1(x):
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    d = (hi - lo) / np.float32(15)                                      # [n, 1]
    q = np.trunc((x - lo) * _inverse(d) + np.float32(0.5)).clip(0, 15).astype(np.uint8)
    return np.concatenate([_as_f16_bytes(d), _as_f16_bytes(lo), _pack_nibbles(q)], axis=1)


_ENCODERS = {"Q8_0": _encode_q8_0, "Q4_0": _encode_q4_0, "Q4_1": _encode_q4_1}


def quantize(x, qtype: str) -> QuantizedTensor:
    """Quantize float weights [..., K] (K a multiple of 32) to Q8_0, Q4_0 or Q4_1, row by row.
    Non-finite weights are refused: one inf would make its whole block NaN."""
    qtype = _check_qtype(qtype)
    if qtype not in _ENCODERS:
        raise ValueError(f"quantize: qtype must be one of {', '.join(QUANTIZERS)} (the K-quants "
                         f"are decoded, not written, here), got {qtype!r}")
    x = np.asarray(x)
    if x.dtype.kind != "f" or x.ndim < 1:
        raise TypeError(f"quantize: x must be a floating-point array of at least 1 dimension, "
                        f"got dtype {x.dtype}, shape {x.shape}")
    block, size = BLOCKS[qtype]
    if x.shape[-1] % block:
        raise ValueError(f"quantize: the last dimension ({x.shape[-1]}) must be a multiple of "
                         f"{qtype}'s block of {block} weights")
    x = x.astype(np.float32, copy=False)
    rows = math.prod(x.shape[:-1])
    out = np.empty((rows, x.shape[-1] // block * size), np.uint8)
    chunk = max(1, (1 << 22) // max(1, x.shape[-1]))                   # ~16 MB of float32 at a time
    flat = x.reshape(rows, x.shape[-1])
    for r in range(0, rows, chunk):
        part = flat[r:r + chunk]
        if not np.isfinite(part).all():
            raise ValueError("quantize: x holds NaN or inf; a block's scale would not be finite")
        out[r:r + chunk] = _ENCODERS[qtype](part.reshape(-1, block)).reshape(len(part), -1)
    return QuantizedTensor(qtype, x.shape, out)


# ---------------------------------------------------------------------------------------------
# the tensor the models see
# ---------------------------------------------------------------------------------------------
class QuantizedTensor:
    """A weight tensor of logical shape (..., K) stored as block-quantized rows.

    ``data`` is uint8 [rows, K / block · bytes per block], usually a read-only view of a
    memory-mapped GGUF file.  Models pass it to ``kernels.qmatmul``; ``dequantize()`` gives the
    float32 tensor and ``rows(ids)`` a few of its rows (an embedding lookup)."""

    __slots__ = ("qtype", "shape", "data")

    def __init__(self, qtype: str, shape, data: np.ndarray):
        qtype = _check_qtype(qtype)
        shape = tuple(int(n) for n in shape)
        block, size = BLOCKS[qtype]
        if not shape or any(n < 0 for n in shape):
            raise ValueError(f"QuantizedTensor: shape must be non-empty and non-negative, got "
                             f"{shape}")
        if shape[-1] % block:
            raise ValueError(f"QuantizedTensor: the last dimension ({shape[-1]}) must be a "
                             f"multiple of {qtype}'s block of {block} weights")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
            raise TypeError("QuantizedTensor: data must be a uint8 NumPy array, got "
                            f"{getattr(data, 'dtype', type(data).__name__)}")
        want = (math.prod(shape[:-1]), shape[-1] // block * size)
        if data.shape != want:
            raise ValueError(f"QuantizedTensor: {qtype} data for shape {shape} must be uint8 "
                             f"{want} (rows, blocks x {size} bytes), got {data.shape}")
        self.qtype, self.shape, self.data = qtype, shape, data

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes stored (what a kernel streams), not the float32 size."""
        return int(self.data.nbytes)

    @property
    def T(self):
        raise TypeError("a QuantizedTensor has no transpose: pass it to kernels.qmatmul, which "
                        "computes x @ W.T from its rows")

    def dequantize(self) -> np.ndarray:
        """The float32 tensor, shape ``self.shape``."""
        return dequantize(self.data, self.qtype, self.shape)

    def rows(self, ids) -> np.ndarray:
        """Rows ``ids`` (int array [...]) of a 2-D tensor, decoded: float32 [..., K]."""
        ids = np.asarray(ids)
        picked = self.data[ids.reshape(-1)]                                # [n, bytes per row]
        return dequantize(picked, self.qtype, ids.shape + self.shape[-1:])

    def __repr__(self) -> str:
        return f"QuantizedTensor({self.qtype}, shape={self.shape}, {self.nbytes} bytes)"
