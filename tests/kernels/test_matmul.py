"""matmul on the compiled backends against a float64 NumPy product (property tests).

The error bound is the classical one for a float32 dot product of length K in any summation
order: |err| <= 2·K·eps32·(|a| @ |b|), so it holds for blocked, threaded and vectorised sums alike
and still catches any wrong element (whose error is of the order of |a| @ |b| itself).
"""

from __future__ import annotations

import numpy as np
import pytest
from _kernel_testing import (
    EPS32,
    LAYOUTS,
    assert_within,
    backends,
    dims,
    laid_out,
    on_backend,
    run,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from pyworkloads.kernels.tracing import Traced

# Edge sizes around the cpp kernel's tiles (MR 14 / 6 / 4, NR 32 / 16, KC 512) and SIMD widths.
M_EDGES = (1, 2, 3, 4, 5, 6, 7, 13, 14, 15, 28, 29, 57)
N_EDGES = (1, 15, 16, 17, 31, 32, 33, 63, 65, 97)
K_EDGES = (1, 7, 8, 9, 16, 17, 33, 511, 512, 513)


def check(backend, a, b):
    want = np.matmul(a.astype(np.float64), b.astype(np.float64))
    bound = (
        2
        * max(a.shape[-1], 1)
        * EPS32
        * np.matmul(np.abs(a).astype(np.float64), np.abs(b).astype(np.float64))
    )
    got = run(backend, "matmul", a, b)
    assert got.dtype == np.float32
    assert_within(got, want, bound + 1e-30)


@backends
@settings(max_examples=60, deadline=None)
@given(
    M=dims(*M_EDGES),
    N=dims(*N_EDGES),
    K=dims(*K_EDGES, hi=70),
    la=st.sampled_from(LAYOUTS),
    lb=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**16),
)
def test_matmul_2d_shapes_and_layouts(backend, M, N, K, la, lb, seed):
    rng = np.random.default_rng(seed)
    a = laid_out(rng.standard_normal((M, K), dtype=np.float32), la)
    b = laid_out(rng.standard_normal((K, N), dtype=np.float32), lb)
    check(backend, a, b)


@backends
@settings(max_examples=30, deadline=None)
@given(
    rows=st.sampled_from([1, 2, 3, 4, 5]),
    N=dims(*N_EDGES, hi=300),
    K=dims(*K_EDGES, hi=300),
    seed=st.integers(0, 2**16),
)
def test_matmul_decode_gemv_with_transposed_weight(backend, rows, N, K, seed):
    """The models' linear layers: x [rows, K] @ W.T with W a C-contiguous [N, K] weight."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((N, K), dtype=np.float32)
    x = rng.standard_normal((rows, K), dtype=np.float32)
    check(backend, x, W.T)
    check(backend, x, np.ascontiguousarray(W.T))  # row-major B too


@backends
@settings(max_examples=40, deadline=None)
@given(
    batch_a=st.sampled_from([(), (1,), (3,), (2, 1), (1, 4), (2, 3)]),
    batch_b=st.sampled_from([(), (1,), (3,), (2, 1), (1, 3), (4, 1, 3)]),
    M=dims(1, 5, 15, hi=20),
    N=dims(1, 17, 33, hi=20),
    K=dims(1, 9, hi=20),
    seed=st.integers(0, 2**16),
)
def test_matmul_batched_broadcasting(backend, batch_a, batch_b, M, N, K, seed):
    try:
        np.broadcast_shapes(batch_a, batch_b)
    except ValueError:
        return
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(batch_a + (M, K), dtype=np.float32)
    b = rng.standard_normal(batch_b + (K, N), dtype=np.float32)
    check(backend, a, b)
    check(backend, np.swapaxes(np.swapaxes(a, -1, -2).copy(), -1, -2), b)


@backends
@pytest.mark.parametrize("magnitude", [1e-30, 1e15])
def test_matmul_large_and_tiny_magnitudes(backend, magnitude, rng):
    a = (rng.standard_normal((37, 130)) * magnitude).astype(np.float32)
    b = rng.standard_normal((130, 45)).astype(np.float32)
    check(backend, a, b)


@backends
def test_matmul_real_model_shapes(backend, rng):
    """A prefill and a decode projection of a LLaMA-like layer (dim 768 -> 2048)."""
    W = rng.standard_normal((2048, 768), dtype=np.float32)
    for T in (1, 77):
        check(backend, rng.standard_normal((T, 768), dtype=np.float32), W.T)


@backends
def test_matmul_bad_inputs_raise(backend, rng):
    import pyworkloads.kernels as K

    a = rng.standard_normal((3, 4), dtype=np.float32)
    with on_backend(backend):
        with pytest.raises(ValueError):
            K.matmul(a, a)  # inner dimensions differ
        with pytest.raises(ValueError):
            K.matmul(a[0], a.T)  # 1-D operand
        with pytest.raises(ValueError):
            K.matmul(
                np.zeros((2, 3, 4), np.float32), np.zeros((3, 4, 5), np.float32)
            )  # batch 2 vs 3
        with pytest.raises(TypeError):
            K.matmul(a.astype(np.int32), a.T)


@backends
@settings(max_examples=25, deadline=None)
@given(
    rows=st.sampled_from([1, 2, 3, 4]),
    threads=st.integers(1, 5),
    N=st.sampled_from([1, 15, 16, 17, 100, 513]),
    K=st.sampled_from([1, 7, 8, 9, 17, 31, 33, 200, 1027]),
    layout=st.sampled_from(["row-major W", "W.T", "strided x"]),
    seed=st.integers(0, 2**16),
)
def test_matmul_decode_gemv_on_any_team(backend, rows, threads, N, K, layout, seed):
    """The decode GEMV with a team of 1-5 threads, at sizes big enough to run threaded: x @ W with
    W [K, N] splits K over the threads (ranges of 8 rows; with K < 8·threads some threads have no
    rows) and sums the partial products; x @ W.T splits W's rows.  Tiled up to ~256 kB of weights so
    the kernel's size threshold for threading is met."""
    import pyworkloads.kernels as K_

    rng = np.random.default_rng(seed)
    reps = max(1, 70_000 // max(1, N * K))             # wider N, same edge structure
    W = rng.standard_normal((K, N * reps), dtype=np.float32)
    x = rng.standard_normal((rows, K), dtype=np.float32)
    if layout == "W.T":
        W = np.ascontiguousarray(W.T).T                # [K, N] view of a C-contiguous [N, K]
    if layout == "strided x":
        x = laid_out(x, "strided")
    before = K_.get_num_threads()
    try:
        K_.set_num_threads(threads)
        check(backend, x, W)
    finally:
        K_.set_num_threads(before)


# ---- matmul_group: the projections of one input (Q/K/V, gate/up) in one call ----------------
@backends
@settings(max_examples=40, deadline=None)
@given(
    rows=st.sampled_from([1, 2, 3, 4, 5]),
    Ns=st.lists(st.sampled_from([1, 3, 15, 16, 17, 64, 100, 513]), min_size=1, max_size=4),
    K=st.sampled_from([1, 7, 8, 9, 17, 33, 200, 1027]),
    threads=st.integers(1, 3),
    layout=st.sampled_from(["W.T", "row-major W", "strided x"]),
    seed=st.integers(0, 2**16),
)
def test_matmul_group_is_one_matmul_per_weight(backend, rows, Ns, K, threads, layout, seed):
    """Every output of matmul_group([W1.T, W2.T, ...]) is x @ Wi.T within the dot-product bound,
    and bit-identical to the kernel's own matmul(x, Wi.T): the group splits the weights' rows
    laid end to end over 1-3 threads (ranges that cross from one weight into the next), and
    each row's dot product is the one version 3 computes.  Tiled up to ~256 kB so the group runs
    threaded; row-major weights and strided x take the per-weight fallback."""
    import pyworkloads.kernels as K_

    rng = np.random.default_rng(seed)
    reps = max(1, 70_000 // max(1, sum(Ns) * K))
    Ws = [rng.standard_normal((n * reps, K), dtype=np.float32) for n in Ns]
    bs = [W.T for W in Ws]
    if layout == "row-major W":
        bs = [np.ascontiguousarray(b) for b in bs]
    x = rng.standard_normal((rows, K), dtype=np.float32)
    if layout == "strided x":
        x = laid_out(x, "strided")
    before = K_.get_num_threads()
    try:
        K_.set_num_threads(threads)
        with on_backend(backend):
            got = K_.matmul_group(x, bs)
            each = [K_.matmul(x, b) for b in bs]
    finally:
        K_.set_num_threads(before)
    assert len(got) == len(bs)
    for g, e, b in zip(got, each, bs):
        want = x.astype(np.float64) @ b.astype(np.float64)
        bound = 2 * K * EPS32 * (np.abs(x).astype(np.float64) @ np.abs(b).astype(np.float64))
        assert g.dtype == np.float32
        assert_within(g, want, bound + 1e-30)
        np.testing.assert_array_equal(g, e)


@backends
def test_matmul_group_profiles_and_traces_as_separate_matmuls(backend, rng):
    """A profile sees one "matmul" record per weight (the cost model lines these up with its
    per-projection layers), shares of the group's time in proportion to the weights' sizes; a
    trace records exactly what one matmul per weight records."""
    import pyworkloads.kernels as K_

    x = rng.standard_normal((1, 96), dtype=np.float32)
    Ws = [rng.standard_normal((n, 96), dtype=np.float32) for n in (96, 32, 32)]
    with on_backend(backend), K_.profile() as prof, K_.scope("model.layers.0.self_attn"):
        K_.matmul_group(x, [W.T for W in Ws])
    recs = prof.records
    assert [r.op for r in recs] == ["matmul"] * 3
    assert [r.shapes for r in recs] == [((1, 96), (96, n)) for n in (96, 32, 32)]
    assert [r.macs for r in recs] == [96 * n for n in (96, 32, 32)]
    assert {r.name for r in recs} == {"model.layers.0.self_attn"}
    assert recs[0].seconds == pytest.approx(3 * recs[1].seconds)
    assert recs[1].seconds == pytest.approx(recs[2].seconds)

    def traced(f):
        with K_.trace() as tr:
            f(Traced((1, 96)))
        return [(r.op, r.scope, [a.shape for a in r.inputs if a is not None], r.macs, r.flops)
                for r in tr.records]

    assert traced(lambda a: K_.matmul_group(a, [W.T for W in Ws])) == traced(
        lambda a: [K_.matmul(a, W.T) for W in Ws]
    )


@backends
def test_matmul_group_bad_inputs_raise(backend, rng):
    import pyworkloads.kernels as K_

    x = rng.standard_normal((2, 8), dtype=np.float32)
    W = rng.standard_normal((5, 8), dtype=np.float32)
    with on_backend(backend):
        with pytest.raises(ValueError, match=r"bs\[1\]"):
            K_.matmul_group(x, [W.T, W])                  # [5, 8]: K 5 != 8
        with pytest.raises(ValueError, match="a must be"):
            K_.matmul_group(x[0], [W.T])                  # 1-D a
        with pytest.raises(TypeError, match="bs"):
            K_.matmul_group(x, [W.T.astype(np.int32)])
        assert K_.matmul_group(x, []) == []
