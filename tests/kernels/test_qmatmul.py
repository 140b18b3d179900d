"""qmatmul and dequantize (cpp/qmatmul.cpp) against gguf's NumPy decoder of llama.cpp's block
formats, at every ISA level this CPU runs (property tests).

The oracle is independent code: ``gguf.quants.dequantize`` (the gguf package, a test dependency).
Decoding is exact in float32 (every product in the formats is exact, see the header of
cpp/qmatmul.cpp), so ``dequantize`` must equal gguf's weights bit for bit, and the float versions'
only error is that of a float32 dot product of length K: |err| <= 2·K·eps32·(|x| @ |W|ᵀ) in any
summation order.  Version 4 ("int8", the default for M <= GEMV_M on the avx2 and avx512 builds)
rounds x to int8 per block of 32 first, which adds at most Σ_blocks dx/2·Σ|w| (dx = max|x| / 127
of the block) -- `qmatmul_bound` is that bound plus the float rounding, nothing looser.  Blocks
are built two ways: Q8_0/Q4_0/Q4_1 by gguf's own quantizer from random floats; Q4_K and Q6_K
(which gguf only decodes) as random bytes with the fp16 scale fields set to finite moderate
values -- every bit pattern of the rest is a valid block (`raw_blocks`, used for all five formats
in version 4's test: Q8_0's −128 is a weight gguf's quantizer never writes).
"""

from __future__ import annotations

import numpy as np
import pytest
from _kernel_testing import EPS32, assert_same_values, assert_within, backends_with, on_backend
from hypothesis import given, settings
from hypothesis import strategies as st

gguf = pytest.importorskip(
    "gguf", reason="the qmatmul tests need gguf's reference decoder (pip install 'gguf>=0.10')"
)
from gguf import quants  # noqa: E402

from pyworkloads import _kernels  # noqa: E402

QTYPES = ("Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K")
QUANTIZABLE = ("Q8_0", "Q4_0", "Q4_1")          # gguf writes these; the K-quants it only reads
SCALE_FIELDS = {"Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q4_K": (0, 2), "Q6_K": (208,)}
M_SIZES = (1, 2, 3, 7, 16, 65, 300)
VERSIONS = ("fast", "naive", "gemv", "gemm", "int8")
backends = backends_with("qmatmul")


def gtype(qtype: str):
    return getattr(gguf.GGMLQuantizationType, qtype)


def geometry(qtype: str) -> tuple[int, int]:
    """(weights per block, bytes per block)."""
    return gguf.GGML_QUANT_SIZES[gtype(qtype)]


def random_blocks(rng, qtype: str, N: int, K: int) -> np.ndarray:
    """uint8 [N, K / block * type_size]: a random valid weight in qtype."""
    block, size = geometry(qtype)
    if qtype in QUANTIZABLE:
        w = rng.standard_normal((N, K)).astype(np.float32) * np.float32(rng.uniform(0.01, 3))
        return np.ascontiguousarray(quants.quantize(w, gtype(qtype)))
    return raw_blocks(rng, qtype, N, K)


def gguf_weights(w: np.ndarray, qtype: str) -> np.ndarray:
    return np.asarray(quants.dequantize(w, gtype(qtype)), np.float32)


def uses_int8(backend, version: str, M: int) -> bool:
    """Whether qmatmul runs version 4 (int8 activations) for this call on this backend."""
    with on_backend(backend):
        has = bool(getattr(_kernels, "QMATMUL_INT8", False))
        gemv_m = _kernels.QMATMUL_GEMV_M
    return has and (version == "int8" or (version == "fast" and M <= gemv_m))


def without_field(w: np.ndarray, qtype: str, at: int) -> np.ndarray:
    """w with the fp16 field at byte `at` of every block set to 0."""
    _, size = geometry(qtype)
    w = w.copy()
    w.reshape(w.shape[0], -1, size)[..., at:at + 2] = 0
    return w


def finite_abs(a: np.ndarray) -> np.ndarray:
    return np.abs(np.where(np.isfinite(a), a, 0)).astype(np.float64)


def qmatmul_bound(x: np.ndarray, w: np.ndarray, qtype: str, int8: bool) -> np.ndarray:
    """|qmatmul(x, w) − x @ Wᵀ| may reach: the float32 dot product's 2·K·eps32·(|x| @ |W|ᵀ); for
    version 4 also the activations' rounding, Σ_k dx_k/2·|W[n, k]| (dx_k = max|x| / 127 over k's
    block of 32, times 1 + 2·eps32 for its own rounding), with the float term taken over |x| + dx/2
    and, for Q4_1 and Q4_K, over |d·q| + |m| instead of |W| (their scale and min terms are summed
    separately).  Non-finite entries count as 0 (those outputs are compared for equality)."""
    K = x.shape[1]
    absx = finite_abs(x)
    absW = finite_abs(gguf_weights(w, qtype))
    if not int8:
        return 2 * K * EPS32 * (absx @ absW.T) + 1e-30
    fields = SCALE_FIELDS[qtype]
    mag = absW if len(fields) == 1 else sum(
        finite_abs(gguf_weights(without_field(w, qtype, at), qtype)) for at in fields
    )
    dx = np.repeat(absx.reshape(len(x), K // 32, 32).max(-1) / 127, 32, axis=1) * (1 + 2 * EPS32)
    return (dx / 2) @ absW.T + 2 * K * EPS32 * ((absx + dx / 2) @ mag.T) + 1e-30


def qmatmul(backend, x, w, qtype, **kw):
    with on_backend(backend):
        return _kernels.qmatmul(x, w, qtype, **kw)


def dequantize(backend, w, qtype, K):
    with on_backend(backend):
        return _kernels.dequantize(w, qtype, K)


@backends
@pytest.mark.parametrize("qtype", QTYPES)
@settings(max_examples=10, deadline=None)
@given(
    M=st.sampled_from(M_SIZES),
    N=st.integers(0, 20).map(lambda n: 2 * n + 1),
    blocks=st.integers(1, 5),
    version=st.sampled_from(VERSIONS),
    seed=st.integers(0, 2**16),
)
def test_qmatmul_matches_gguf(backend, qtype, M, N, blocks, version, seed):
    """x @ dequantize(W).T for every path (naive, the register-decode GEMV, the packed GEMM) at
    M around both sides of the GEMV/GEMM switch, odd N, K a few blocks long."""
    rng = np.random.default_rng(seed)
    block, _ = geometry(qtype)
    K = block * (blocks if block == 256 else 8 * blocks - 3)      # 32-blocks: odd block counts too
    w = random_blocks(rng, qtype, N, K)
    W = gguf_weights(w, qtype).astype(np.float64)
    x = rng.standard_normal((M, K)).astype(np.float32)
    if version == "int8" and not uses_int8(backend, version, M):
        with pytest.raises(ValueError, match="int8"):
            qmatmul(backend, x, w, qtype, version=version)
        return
    got = qmatmul(backend, x, w, qtype, version=version)
    assert got.dtype == np.float32 and got.shape == (M, N)
    bound = qmatmul_bound(x, w, qtype, uses_int8(backend, version, M))
    assert_within(got, x.astype(np.float64) @ W.T, bound)


def raw_blocks(rng, qtype: str, N: int, K: int) -> np.ndarray:
    """uint8 [N, K / block * type_size]: random bytes, the fp16 scale fields set to finite values:
    every weight integer occurs, Q8_0's −128 included (which gguf's quantizer never writes)."""
    block, size = geometry(qtype)
    raw = rng.integers(0, 256, (N, K // block, size), dtype=np.uint8)
    for at in SCALE_FIELDS[qtype]:
        d = rng.uniform(-0.05, 0.05, (N, K // block)).astype(np.float16)
        raw[..., at:at + 2] = d.view(np.uint8).reshape(N, K // block, 2)
    return raw.reshape(N, K // block * size)


@backends
@pytest.mark.parametrize("qtype", QTYPES)
def test_int8_version_within_its_bound(backend, qtype):
    """Version 4 (x rounded to int8 per 32) at the decode row counts, odd N, K a whole number of
    steps of 256 weights or not (the 32-weight formats' tail), against float64 x @ Wᵀ within
    qmatmul_bound's activation-rounding bound; "fast" must be the same computation."""
    if not uses_int8(backend, "int8", 1):
        pytest.skip("version 'int8' is not built into the portable kernels")
    rng = np.random.default_rng(11)
    block, _ = geometry(qtype)
    for K in sorted({block * 2, 32 * 13, 768} - ({32 * 13} if block == 256 else set())):
        N = 37
        for w in (raw_blocks(rng, qtype, N, K), random_blocks(rng, qtype, N, K)):
            W = gguf_weights(w, qtype).astype(np.float64)
            for M in (1, 2, 3, 7, 8):
                x = (rng.standard_normal((M, K)) * rng.uniform(0.1, 10, (M, 1))).astype(np.float32)
                x[:, :32] *= np.float32(1e-3)              # blocks of very different scales
                got = qmatmul(backend, x, w, qtype, version="int8")
                assert got.dtype == np.float32 and got.shape == (M, N)
                assert_within(got, x.astype(np.float64) @ W.T, qmatmul_bound(x, w, qtype, True))
                np.testing.assert_array_equal(qmatmul(backend, x, w, qtype), got)


@backends
def test_int8_sends_tiny_blocks_to_the_float_version(backend, rng):
    """A row of x with a block whose max|x| is below 2^-100 (not 0) would get a subnormal dx: it
    goes through version 2, so its error is the float bound; the other rows stay on version 4."""
    if not uses_int8(backend, "int8", 1):
        pytest.skip("version 'int8' is not built into the portable kernels")
    K, N = 256, 9
    w = random_blocks(rng, "Q4_K", N, K)
    W = gguf_weights(w, "Q4_K").astype(np.float64)
    x = rng.standard_normal((3, K)).astype(np.float32)
    x[1, 32:64] *= np.float32(1e-35)
    x[2, 64:96] = 0.0                                                  # 0 is fine: dx = 0
    got = qmatmul(backend, x, w, "Q4_K", version="int8")
    np.testing.assert_array_equal(got[1], qmatmul(backend, x[1:2], w, "Q4_K", version="gemv")[0])
    assert_within(got, x.astype(np.float64) @ W.T, qmatmul_bound(x, w, "Q4_K", True))


@backends
@pytest.mark.parametrize("qtype", QTYPES)
@settings(max_examples=8, deadline=None)
@given(N=st.integers(1, 9), blocks=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_dequantize_equals_gguf_bit_for_bit(backend, qtype, N, blocks, seed):
    rng = np.random.default_rng(seed)
    K = geometry(qtype)[0] * blocks
    w = random_blocks(rng, qtype, N, K)
    got = dequantize(backend, w, qtype, K)
    assert got.dtype == np.float32 and got.shape == (N, K)
    np.testing.assert_array_equal(got.view(np.uint32), gguf_weights(w, qtype).view(np.uint32))


@backends
@pytest.mark.parametrize("qtype", QTYPES)
def test_real_model_shapes(backend, qtype, rng):
    """A stories110M projection (768 -> 2048) at decode and prefill sizes, with enough weights that
    the kernels run on every thread."""
    N, K = 2048, 768
    w = random_blocks(rng, qtype, N, K)
    W = gguf_weights(w, qtype).astype(np.float64)
    for M in (1, 4, 77):
        x = rng.standard_normal((M, K)).astype(np.float32)
        bound = qmatmul_bound(x, w, qtype, uses_int8(backend, "fast", M))
        assert_within(qmatmul(backend, x, w, qtype), x.astype(np.float64) @ W.T, bound)


@backends
@pytest.mark.parametrize("threads", [1, 2, 3, 5])
def test_any_team_size(backend, threads, rng):
    """The GEMV splits W's rows over the team and the GEMM packs panels cooperatively: the result
    must not depend on how many threads there are (sizes above the kernels' threading threshold)."""
    import pyworkloads.kernels as K_

    N, K = 301, 512
    w = random_blocks(rng, "Q4_K", N, K)
    W = gguf_weights(w, "Q4_K").astype(np.float64)
    before = K_.get_num_threads()
    try:
        K_.set_num_threads(threads)
        for M in (1, 5, 40):
            x = rng.standard_normal((M, K)).astype(np.float32)
            bound = qmatmul_bound(x, w, "Q4_K", uses_int8(backend, "fast", M))
            assert_within(qmatmul(backend, x, w, "Q4_K"), x.astype(np.float64) @ W.T, bound)
    finally:
        K_.set_num_threads(before)


@backends
def test_read_only_and_unaligned_views(backend, rng):
    """w may be a read-only view of a mapped file, at any byte offset; x a strided float32 view."""
    N, K = 9, 256
    w = random_blocks(rng, "Q6_K", N, K)
    buf = np.frombuffer(b"\0" + w.tobytes(), np.uint8)            # read-only, odd address
    view = buf[1:].reshape(w.shape)
    assert not view.flags.writeable
    x = np.zeros((3, 2 * K), np.float32)[:, ::2]
    x[...] = rng.standard_normal((3, K))
    want = qmatmul(backend, np.ascontiguousarray(x), w, "Q6_K")
    np.testing.assert_array_equal(qmatmul(backend, x, view, "Q6_K"), want)
    np.testing.assert_array_equal(dequantize(backend, view, "Q6_K", K), gguf_weights(w, "Q6_K"))


@backends
def test_empty_shapes(backend, rng):
    w = random_blocks(rng, "Q8_0", 3, 64)
    assert qmatmul(backend, np.zeros((0, 64), np.float32), w, "Q8_0").shape == (0, 3)
    assert qmatmul(backend, np.zeros((2, 64), np.float32), w[:0], "Q8_0").shape == (2, 0)
    out = qmatmul(backend, np.zeros((2, 0), np.float32), np.zeros((3, 0), np.uint8), "Q8_0")
    np.testing.assert_array_equal(out, np.zeros((2, 3), np.float32))
    assert dequantize(backend, np.zeros((3, 0), np.uint8), "Q4_K", 0).shape == (3, 0)


@backends
def test_bad_arguments_raise(backend, rng):
    K = 256
    w = random_blocks(rng, "Q4_K", 5, K)
    x = rng.standard_normal((2, K)).astype(np.float32)
    with on_backend(backend):
        q = _kernels.qmatmul
        with pytest.raises(TypeError, match="x"):
            q(x.astype(np.float64), w, "Q4_K")
        with pytest.raises(TypeError, match="w"):
            q(x, w.astype(np.int8), "Q4_K")
        with pytest.raises(TypeError, match="w"):
            q(x, w.tolist(), "Q4_K")
        with pytest.raises(ValueError, match="bytes per row"):
            q(x, w[:, :-1].copy(), "Q4_K")                            # wrong byte width
        with pytest.raises(ValueError, match="bytes per row"):
            q(x, w, "Q6_K")                                           # another format's width
        with pytest.raises(ValueError, match="multiple of Q4_K's block of 256"):
            q(x[:, :100].copy(), w, "Q4_K")
        with pytest.raises(ValueError, match="qtype must be one of 'Q8_0', 'Q4_0'"):
            q(x, w, "Q5_K")
        with pytest.raises(ValueError, match="qtype"):
            q(x, w, "q4_k")
        with pytest.raises(ValueError, match="x must be 2-D"):
            q(x[0], w, "Q4_K")
        with pytest.raises(ValueError, match="x must be 2-D"):
            q(x[None], w, "Q4_K")
        with pytest.raises(ValueError, match="w must be 2-D"):
            q(x, w[None], "Q4_K")
        with pytest.raises(ValueError, match="C-contiguous"):
            q(x, np.asfortranarray(w), "Q4_K")
        with pytest.raises(ValueError, match="C-contiguous"):
            q(x, np.concatenate([w, w], 1)[:, ::2], "Q4_K")
        for bad in ("slow", "INT8", "int4", ""):
            with pytest.raises(ValueError, match="'fast', 'naive', 'gemv', 'gemm' or 'int8'"):
                q(x, w, "Q4_K", version=bad)
        if not getattr(_kernels, "QMATMUL_INT8", False):              # the portable build
            with pytest.raises(ValueError, match="'int8' needs the avx2 or avx512 build"):
                q(x, w, "Q4_K", version="int8")
        d = _kernels.dequantize
        with pytest.raises(ValueError, match="bytes per row"):
            d(w, "Q4_K", 512)
        with pytest.raises(ValueError, match="multiple"):
            d(w, "Q4_K", 300)
        with pytest.raises(ValueError, match="K must be >= 0"):
            d(w, "Q4_K", -256)
        with pytest.raises(ValueError, match="qtype"):
            d(w, "F16", K)
        with pytest.raises(ValueError, match="too large"):            # K / 32 * 34 overflows
            d(random_blocks(rng, "Q8_0", 1, 32), "Q8_0", 2**63 - 32)


def with_scale(w: np.ndarray, qtype: str, row: int, block: int, value: float) -> np.ndarray:
    """w with the fp16 scale `d` of one block set to value (inf, nan)."""
    w = w.copy()
    _, size = geometry(qtype)
    at = SCALE_FIELDS[qtype][0]
    w[row, block * size + at:block * size + at + 2] = np.array([value], np.float16).view(np.uint8)
    return w


@backends
@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("version", VERSIONS)
def test_nonfinite_propagate_as_in_the_reference(backend, qtype, version):
    """inf/NaN in x and an infinite or NaN scale in W give NaN and inf exactly where
    x @ dequantize(W).T has them (no 0·inf from padding or from factoring a scale out): the
    reference sums the float64 products x[m, k]·W[n, k] directly."""
    rng = np.random.default_rng(7)
    block, _ = geometry(qtype)
    N, K, M = 13, 2 * block, 20
    w = random_blocks(rng, qtype, N, K)
    w = with_scale(w, qtype, 2, 1, np.inf)
    w = with_scale(w, qtype, 5, 0, -np.inf)
    w = with_scale(w, qtype, 11, 1, np.nan)
    x = rng.standard_normal((M, K)).astype(np.float32)
    x[3, 5] = np.inf
    x[7, K - 1] = -np.inf
    x[9, 0] = np.nan
    x[10, :] = 0.0                                                    # 0 · inf = NaN rows
    W = dequantize(backend, w, qtype, K).astype(np.float64)
    with np.errstate(all="ignore"):
        want = (x.astype(np.float64)[:, None, :] * W[None, :, :]).sum(-1)
        assert np.isnan(want).any() and np.isinf(want).any()
    if version == "int8" and not uses_int8(backend, version, M):
        pytest.skip("version 'int8' is not built into the portable kernels")
    for rows in (slice(0, M), slice(0, 1), slice(3, 4), slice(10, 11), slice(8, 12)):
        xr = np.ascontiguousarray(x[rows])
        got = qmatmul(backend, xr, w, qtype, version=version)
        with np.errstate(all="ignore"):
            bound = qmatmul_bound(xr, w, qtype, uses_int8(backend, version, len(xr)))
        assert_same_values(got, want[rows], bound)
