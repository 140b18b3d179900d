"""GELU on the compiled backends against a float64 definition (property tests)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _kernel_testing import backends_with, on_backend, run
from hypothesis import given, settings
from hypothesis import strategies as st

import pyworkloads.kernels as K

EPS32 = float(np.finfo(np.float32).eps)

backends = backends_with("gelu")


def gelu64(x):
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1.0 + np.vectorize(math.erf, otypes=[np.float64])(x / math.sqrt(2.0)))


@backends
@settings(max_examples=60, deadline=None)
@given(
    shape=st.sampled_from([(0,), (1,), (7,), (3, 17), (2, 3, 33), (1000,)]),
    scale=st.sampled_from([1e-3, 1.0, 4.0, 30.0]),
    strided=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_gelu_matches_float64(backend, shape, scale, strided, seed):
    x = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
    if strided and x.ndim:
        x = np.repeat(x, 2, axis=-1)[..., ::2]
    got = run(backend, "gelu", x)
    assert got.shape == x.shape and got.dtype == np.float32
    # the approximation's error is below 1.5e-7 in Φ, so below ~2e-7·|x| in gelu, plus float32
    # rounding
    np.testing.assert_allclose(
        got, gelu64(x), rtol=0, atol=1e-6 * (1 + float(np.abs(x).max(initial=0)))
    )


@backends
def test_gelu_special_values_behave_like_the_reference(backend):
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e30, -1e30, -10.0, 10.0], np.float32)
    with np.errstate(invalid="ignore"):  # -inf · Φ(-inf) = -inf · 0 is NaN, as in the reference
        want = K.reference.gelu(x)
    got = run(backend, "gelu", x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-6, atol=1e-7)


@backends
def test_gelu_refuses_other_dtypes(backend):
    with on_backend(backend), pytest.raises(TypeError, match="float32"):
        K.gelu(np.ones(4))


def test_gelu_is_profiled():
    with K.profile() as prof:
        K.gelu(np.ones((2, 3), np.float32))
    (rec,) = prof.records
    assert (rec.op, rec.flops, rec.bytes) == ("gelu", 5 * 6, 2 * 6 * 4)


@backends
def test_gelu_on_a_permuted_view_keeps_its_layout(backend):
    """A channels-first view of channels-last data is computed in memory order, not copied
    through a strided transpose first; the result has the input's layout, as a NumPy ufunc's."""
    data = np.random.default_rng(3).standard_normal((2, 5, 6, 7)).astype(np.float32)
    x = data.transpose(0, 3, 1, 2)                              # [B, C, h, w] over [B, h, w, C]
    got = run(backend, "gelu", x)
    assert got.shape == x.shape and got.strides == x.strides
    np.testing.assert_allclose(got, gelu64(x), rtol=0, atol=1e-6 * (1 + float(np.abs(x).max())))
    with K.profile() as prof, on_backend(backend):
        K.gelu(x)
    assert [(r.op, r.shapes) for r in prof.records] == [("gelu", (data.shape,))]  # memory order


def quick_gelu64(x):
    x = np.asarray(x, np.float64)
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(-1.702 * x))


@backends
@settings(max_examples=60, deadline=None)
@given(
    shape=st.sampled_from([(0,), (1,), (7,), (3, 17), (2, 3, 33), (1000,), (70000,)]),
    scale=st.sampled_from([1e-3, 1.0, 4.0, 30.0, 100.0]),
    strided=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_quick_gelu_matches_float64(backend, shape, scale, strided, seed):
    """approximate="sigmoid" (CLIP's quick_gelu) against x / (1 + e^(-1.702 x)) in float64.  z =
    1.702·x rounded to float32 (as the NumPy reference rounds it too) is off by half an ulp, which
    e^z turns into a relative error of |z|·u; exp, add and divide add a few ulps more; below z =
    -87.3 the kernel's σ is 0 where float32 still has denormals, an absolute error under
    |x|·e^-87.3 < 1e-36."""
    x = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
    if strided and x.ndim:
        x = np.repeat(x, 2, axis=-1)[..., ::2]
    got = run(backend, "gelu", x, approximate="sigmoid")
    assert got.shape == x.shape and got.dtype == np.float32
    want = quick_gelu64(x)
    bound = (np.abs(1.702 * x.astype(np.float64)) + 8) * EPS32 * np.abs(want) + 1e-36
    err = np.abs(got - want)
    assert np.all(err <= bound), (x[err > bound][:3], got[err > bound][:3], want[err > bound][:3])


@backends
def test_quick_gelu_special_values_behave_like_the_reference(backend):
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e30, -1e30, -60.0, -51.5, -10.0, 10.0, 60.0],
                 np.float32)
    with np.errstate(invalid="ignore"):  # -inf · σ(-inf) = -inf · 0 is NaN, as in the reference
        want = K.reference.gelu(x, approximate="sigmoid")
    got = run(backend, "gelu", x, approximate="sigmoid")
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=100 * EPS32, atol=1e-36)


@backends
def test_gelu_refuses_unknown_approximations(backend):
    with on_backend(backend), pytest.raises(ValueError, match="approximate must be"):
        K.gelu(np.ones(4, np.float32), approximate="tanh")
