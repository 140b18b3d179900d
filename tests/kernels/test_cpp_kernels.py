"""The cpp backend's own contract: naive versions, every GEMM path (small cache blocks force
multi-block packing with tiny matrices), strict argument checking on the extension itself (it
must never crash, whatever it is given), threads, and concurrent calls from Python threads."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib

import numpy as np
import pytest
from _kernel_testing import EPS32, LAYOUTS, assert_within, dims, laid_out
from hypothesis import given, settings
from hypothesis import strategies as st

import pyworkloads.kernels as K

if "cpp" not in K.available():
    pytest.skip(
        f"the cpp backend is unavailable: {K.unavailable_reason('cpp')}", allow_module_level=True
    )

from pyworkloads import _kernels  # noqa: E402


@contextlib.contextmanager
def small_blocks():
    """GEMM cache blocks of a few micro-tiles, so small matrices cross every block boundary."""
    MR, NR, kc, mc, nc = _kernels._matmul_tile()
    _kernels._set_matmul_blocking(5, 2 * MR, 2 * NR)
    try:
        yield
    finally:
        _kernels._set_matmul_blocking(kc, mc, nc)


@settings(max_examples=40, deadline=None)
@given(
    M=dims(1, 6, 14, 15, 29, 43, hi=60),
    N=dims(1, 31, 33, 64, 65, 129, hi=70),
    K=dims(1, 4, 5, 6, 11, hi=30),
    la=st.sampled_from(LAYOUTS),
    lb=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**16),
)
def test_gemm_crosses_every_block_boundary(M, N, K, la, lb, seed):
    rng = np.random.default_rng(seed)
    a = laid_out(rng.standard_normal((M, K), dtype=np.float32), la)
    b = laid_out(rng.standard_normal((K, N), dtype=np.float32), lb)
    want = a.astype(np.float64) @ b.astype(np.float64)
    bound = 2 * K * EPS32 * (np.abs(a).astype(np.float64) @ np.abs(b)) + 1e-30
    with small_blocks():
        got = _kernels.matmul(a, b)
    assert_within(got, want, bound)


@pytest.mark.parametrize(
    "shape_a, shape_b", [((0, 3), (3, 4)), ((3, 0), (0, 4)), ((2, 0, 3), (3, 5)), ((5, 3), (3, 0))]
)
def test_matmul_empty_operands(shape_a, shape_b):
    a, b = np.ones(shape_a, np.float32), np.ones(shape_b, np.float32)
    np.testing.assert_array_equal(_kernels.matmul(a, b), np.matmul(a, b))


@settings(max_examples=25, deadline=None)
@given(M=dims(1, 5, hi=20), N=dims(1, 33, hi=40), K=dims(1, 17, hi=40), seed=st.integers(0, 2**16))
def test_naive_and_fast_matmul_agree(M, N, K, seed):
    rng = np.random.default_rng(seed)
    a, b = (
        rng.standard_normal((M, K), dtype=np.float32),
        rng.standard_normal((K, N), dtype=np.float32),
    )
    np.testing.assert_allclose(
        _kernels.matmul(a, b, version="naive"), _kernels.matmul(a, b), rtol=1e-5, atol=1e-5
    )


def test_naive_and_fast_attention_and_norms_agree(rng):
    q, k, v = (rng.standard_normal((2, 4, 70, 24), dtype=np.float32) for _ in range(3))
    mask = rng.random((70, 70)) < 0.7
    for causal in (False, True):
        np.testing.assert_allclose(
            _kernels.attention(q, k, v, causal=causal, mask=mask, version="naive"),
            _kernels.attention(q, k, v, causal=causal, mask=mask),
            rtol=1e-5,
            atol=2e-6,
        )
    x, w, b = (
        rng.standard_normal((9, 65), dtype=np.float32),
        rng.standard_normal(65, dtype=np.float32),
        rng.standard_normal(65, dtype=np.float32),
    )
    np.testing.assert_allclose(
        _kernels.rms_norm(x, w, 1e-6, version="naive"),
        _kernels.rms_norm(x, w, 1e-6),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        _kernels.layer_norm(x, w, b, 1e-5, version="naive"),
        _kernels.layer_norm(x, w, b, 1e-5),
        rtol=1e-5,
        atol=1e-5,
    )


def test_attention_without_keys_gives_zeros():
    q = np.ones((1, 2, 3, 8), np.float32)
    kv = np.ones((1, 2, 0, 8), np.float32)
    np.testing.assert_array_equal(_kernels.attention(q, kv, kv), np.zeros((1, 2, 3, 8), np.float32))


def test_fused_residual_norms(rng):
    x, r = (
        rng.standard_normal((2, 3, 40), dtype=np.float32),
        rng.standard_normal((2, 3, 40), dtype=np.float32),
    )
    w, b = rng.standard_normal(40, dtype=np.float32), rng.standard_normal(40, dtype=np.float32)
    y, h = _kernels.rms_norm(x, w, 1e-6, residual=r)
    np.testing.assert_array_equal(h, x + r)
    np.testing.assert_allclose(y, _kernels.rms_norm(x + r, w, 1e-6), rtol=1e-6, atol=1e-6)
    y, h = _kernels.layer_norm(x, w, b, 1e-5, residual=r)
    np.testing.assert_array_equal(h, x + r)
    np.testing.assert_allclose(y, _kernels.layer_norm(x + r, w, b, 1e-5), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# strict arguments: float32 only (TypeError, no silent casting), shapes (ValueError), never a crash
# ------------------------------------------------------------------------------------------------
F = np.ones((4, 4), np.float32)
Q = np.ones((1, 2, 3, 4), np.float32)


@pytest.mark.parametrize(
    "call",
    [
        lambda: _kernels.matmul(F.astype(np.float64), F),
        lambda: _kernels.matmul(F, F.astype(np.float16)),
        lambda: _kernels.matmul([[1.0]], [[1.0]]),
        lambda: _kernels.matmul(None, F),
        lambda: _kernels.attention(Q.astype(np.float64), Q, Q),
        lambda: _kernels.attention(Q, Q, Q, bias=np.zeros((3, 3), np.float64)),
        lambda: _kernels.attention(Q, Q, Q, mask=np.ones((3, 3), np.int8)),
        lambda: _kernels.attention(Q, Q, Q, mask=[[True]]),
        lambda: _kernels.attention(Q, Q, Q, scale="big"),
        lambda: _kernels.rms_norm(F.astype(np.float64), np.ones(4, np.float32), 1e-6),
        lambda: _kernels.layer_norm(F, np.ones(4, np.float64), None, 1e-5),
    ],
)
def test_wrong_types_raise_typeerror(call):
    with pytest.raises(TypeError):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda: _kernels.matmul(F, np.ones((5, 2), np.float32)),
        lambda: _kernels.matmul(np.ones(4, np.float32), F),
        lambda: _kernels.matmul(np.ones((2, 4, 4), np.float32), np.ones((3, 4, 4), np.float32)),
        lambda: _kernels.matmul(F, F, version="fastest"),
        lambda: _kernels.attention(Q[0], Q[0], Q[0]),
        lambda: _kernels.attention(
            Q, np.ones((1, 3, 3, 4), np.float32), np.ones((1, 3, 3, 4), np.float32)
        ),
        lambda: _kernels.attention(Q, Q, np.ones((1, 2, 5, 4), np.float32)),
        lambda: _kernels.attention(Q, Q[..., :3], Q),
        lambda: _kernels.attention(Q, Q[:, :, :2], Q[:, :, :2], causal=True),
        lambda: _kernels.attention(Q, Q, Q, bias=np.zeros((2, 3, 3, 3, 3), np.float32)),
        lambda: _kernels.attention(Q, Q, Q, bias=np.zeros((4, 3), np.float32)),
        lambda: _kernels.attention(Q, Q, Q, mask=np.ones((3, 2), bool)),
        lambda: _kernels.attention(Q, Q, Q, scale=float("inf")),
        lambda: _kernels.rms_norm(F, np.ones(3, np.float32), 1e-6),
        lambda: _kernels.rms_norm(F, np.ones(4, np.float32), float("nan")),
        lambda: _kernels.layer_norm(F, None, np.ones((1, 4), np.float32), 1e-5),
        lambda: _kernels.rms_norm(
            F, np.ones(4, np.float32), 1e-6, residual=np.ones((4, 3), np.float32)
        ),
    ],
)
def test_bad_shapes_and_values_raise_valueerror(call):
    with pytest.raises(ValueError):
        call()


# ------------------------------------------------------------------------------------------------
# threads
# ------------------------------------------------------------------------------------------------
def test_set_num_threads_is_respected():
    before = _kernels.get_num_threads()
    try:
        K.set_num_threads(1)
        assert _kernels.get_num_threads() == 1
        a = np.ones((300, 300), np.float32)
        np.testing.assert_array_equal(_kernels.matmul(a, a), np.full((300, 300), 300, np.float32))
    finally:
        K.set_num_threads(before)
    assert _kernels.get_num_threads() == before


def test_concurrent_calls_from_python_threads(rng):
    """The GIL is released inside the kernels: calls from several Python threads at once (each
    with its own scratch buffers and OpenMP team) must give the same results as one at a time."""
    jobs = []
    for i in range(12):
        a = rng.standard_normal((40 + 13 * i, 300), dtype=np.float32)
        w = rng.standard_normal((200 + i, 300), dtype=np.float32)
        q, k, v = (rng.standard_normal((1, 2, 30 + 7 * i, 32), dtype=np.float32) for _ in range(3))
        x1 = rng.standard_normal((1, 300), dtype=np.float32)
        jobs += [
            (_kernels.matmul, (a, w.T), {}),
            (_kernels.matmul, (x1, w.T), {}),
            (_kernels.attention, (q, k, v), {"causal": True}),
            (_kernels.rms_norm, (a, w[0], 1e-6), {}),
            (_kernels.layer_norm, (a, w[1], w[2], 1e-5), {}),
        ]
    want = [f(*args, **kw) for f, args, kw in jobs]
    with cf.ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            got = list(pool.map(lambda job: job[0](*job[1], **job[2]), jobs))
            for g, w_ in zip(got, want):
                np.testing.assert_array_equal(g, w_)
