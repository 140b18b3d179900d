"""float32 arrays that are not aligned to 4 bytes -- views into a mapped file whose header length is
not a multiple of 4, as the safetensors loader returns them, or fields of packed records -- give
the compiled kernels the same results as aligned copies of the same values.

Reading a float through a misaligned pointer is undefined behaviour in C++ even where the CPU
tolerates it; dev/sanitize.sh runs these tests under UndefinedBehaviorSanitizer, which aborts on
such a load.
"""

from __future__ import annotations

import numpy as np
import pytest
from _kernel_testing import EPS32, assert_within, backends, backends_with, run


def unaligned(x: np.ndarray, offset: int) -> np.ndarray:
    """x's values in a buffer starting `offset` bytes past an aligned address."""
    buf = np.zeros(x.nbytes + 8, np.uint8)
    y = np.frombuffer(buf.data, np.float32, x.size, offset).reshape(x.shape)
    y.flags.writeable = True
    y[...] = x
    assert y.ctypes.data % 4 == offset % 4
    return y


def packed_field(x: np.ndarray) -> np.ndarray:
    """x's values as a field of packed 6-byte records: a stride that is not a multiple of 4."""
    rec = np.zeros(x.shape, np.dtype([("v", np.float32), ("pad", np.uint8, 2)]))
    rec["v"] = x
    return rec["v"]


MISALIGN = [
    pytest.param(lambda x: unaligned(x, 1), id="offset1"),
    pytest.param(lambda x: unaligned(x, 2), id="offset2"),
    pytest.param(lambda x: unaligned(x, 3), id="offset3"),
    pytest.param(lambda x: unaligned(x[..., ::-1], 3)[..., ::-1], id="offset3-reversed"),
    pytest.param(packed_field, id="packed-field"),
]


def same(backend, op, args, kwargs, misalign, which, bound=0.0):
    """op with the arguments at positions `which` misaligned equals op on the aligned arrays
    (within `bound`, where the misaligned copy has another layout and so another summation
    order)."""
    want = run(backend, op, *args, **kwargs)
    bad = [misalign(a) if i in which else a for i, a in enumerate(args)]
    for i in which:
        assert not bad[i].flags.aligned
    assert_within(run(backend, op, *bad, **kwargs), want, bound)


@backends
@pytest.mark.parametrize("misalign", MISALIGN)
@pytest.mark.parametrize("which", [(0,), (1,), (0, 1)])
@pytest.mark.parametrize("M", [1, 3, 70])
def test_matmul(backend, rng, misalign, which, M):
    a = rng.standard_normal((M, 300), dtype=np.float32)
    w = rng.standard_normal((200, 300), dtype=np.float32)
    # a row-major and a transposed B sum in different orders: γ(K)·|a|@|b| (Higham §3.1)
    bound = 2 * 300 * EPS32 * (np.abs(a).astype(np.float64) @ np.abs(w.T))
    same(backend, "matmul", (a, w.T), {}, misalign, which, bound)
    same(backend, "matmul", (a, np.ascontiguousarray(w.T)), {}, misalign, which, bound)


@backends
@pytest.mark.parametrize("misalign", MISALIGN)
@pytest.mark.parametrize("which", [(0,), (1,), (2,), (0, 1, 2)])
@pytest.mark.parametrize("Tq", [1, 70])
def test_attention(backend, rng, misalign, which, Tq):
    q = rng.standard_normal((1, 4, Tq, 16), dtype=np.float32)
    k, v = (rng.standard_normal((1, 2, 90, 16), dtype=np.float32) for _ in range(2))
    same(backend, "attention", (q, k, v), dict(causal=True), misalign, which)


@backends
@pytest.mark.parametrize("misalign", MISALIGN)
def test_attention_bias(backend, rng, misalign):
    q, k, v = (rng.standard_normal((1, 2, 70, 16), dtype=np.float32) for _ in range(3))
    bias = rng.standard_normal((70, 70), dtype=np.float32)
    want = run(backend, "attention", q, k, v, bias=bias)
    np.testing.assert_array_equal(run(backend, "attention", q, k, v, bias=misalign(bias)), want)


@backends
@pytest.mark.parametrize("misalign", MISALIGN)
@pytest.mark.parametrize("op", ["rms_norm", "layer_norm"])
@pytest.mark.parametrize("which", [(0,), (1,), (0, 1, 2)])
def test_norms(backend, rng, misalign, op, which):
    x = rng.standard_normal((300, 257), dtype=np.float32)
    w, b = rng.standard_normal(257, dtype=np.float32), rng.standard_normal(257, dtype=np.float32)
    args = (x, w, 1e-6) if op == "rms_norm" else (x, w, b, 1e-5)
    same(backend, op, args, {}, misalign, [i for i in which if i < len(args) - 1])


@backends_with("gelu")
@pytest.mark.parametrize("misalign", MISALIGN)
def test_gelu(backend, rng, misalign):
    x = rng.standard_normal((300, 257), dtype=np.float32)
    same(backend, "gelu", (x,), {}, misalign, (0,))


def test_cpp_fused_residual_norm_with_unaligned_residual(rng):
    import pyworkloads.kernels as K

    if "cpp" not in K.available():
        pytest.skip(f"the cpp backend is unavailable: {K.unavailable_reason('cpp')}")
    from pyworkloads import _kernels

    x, r = (rng.standard_normal((50, 65), dtype=np.float32) for _ in range(2))
    w = rng.standard_normal(65, dtype=np.float32)
    want = _kernels.rms_norm(x, w, 1e-6, residual=r)
    got = _kernels.rms_norm(unaligned(x, 1), unaligned(w, 2), 1e-6, residual=unaligned(r, 3))
    for g, wnt in zip(got, want):
        np.testing.assert_array_equal(g, wnt)
