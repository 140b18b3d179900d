"""rms_norm / layer_norm on the compiled backends against float64 NumPy (property tests)."""

from __future__ import annotations

import numpy as np
import pytest
from _kernel_testing import EPS32, assert_within, backends, dims, on_backend, run
from hypothesis import given, settings
from hypothesis import strategies as st


def rms64(x, w, eps):
    x = x.astype(np.float64)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def ln64(x, w, b, eps):
    x = x.astype(np.float64)
    mu = x.mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)
    return y * (1 if w is None else w) + (0 if b is None else b)


def tol(want, D):
    # normalised values are O(1)·|w|: a relative error of a few D·eps plus an absolute floor
    return 8 * max(D, 1) * EPS32 * (np.abs(want) + 1)


@st.composite
def rows(draw):
    lead = draw(st.sampled_from([(), (0,), (1,), (3,), (2, 5), (1, 1, 7)]))
    D = draw(dims(1, 2, 15, 16, 17, 63, 64, 65, 768, lo=1, hi=100))
    magnitude = draw(st.sampled_from([1.0, 1e-3, 1e4, 1e15]))
    layout = draw(st.sampled_from(["c", "strided", "transposed"]))
    return lead, D, magnitude, layout, draw(st.integers(0, 2**16))


def make_x(lead, D, magnitude, layout, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(lead + (D,)) * magnitude + magnitude / 3).astype(np.float32)
    if layout == "strided":
        x = np.repeat(x, 2, axis=-1)[..., ::2]
    elif layout == "transposed" and x.ndim >= 2:
        x = np.swapaxes(np.ascontiguousarray(np.swapaxes(x, 0, -1)), 0, -1)
    return x, rng


@backends
@settings(max_examples=60, deadline=None)
@given(r=rows(), eps=st.sampled_from([1e-6, 1e-5, 0.0]))
def test_rms_norm_matches_float64(backend, r, eps):
    x, rng = make_x(*r)
    w = rng.standard_normal(x.shape[-1]).astype(np.float32)
    if eps == 0.0:
        x[..., 0] += 1  # keep rows away from 0/0
    want = rms64(x, w, eps)
    assert_within(run(backend, "rms_norm", x, w, eps), want, tol(want, x.shape[-1]))


@backends
@settings(max_examples=60, deadline=None)
@given(
    r=rows(),
    affine=st.sampled_from(["both", "weight", "bias", "none"]),
    eps=st.sampled_from([1e-5, 1e-6]),
)
def test_layer_norm_matches_float64(backend, r, affine, eps):
    x, rng = make_x(*r)
    D = x.shape[-1]
    w = rng.standard_normal(D).astype(np.float32) if affine in ("both", "weight") else None
    b = rng.standard_normal(D).astype(np.float32) if affine in ("both", "bias") else None
    want = ln64(x, w, b, eps)
    # a row with huge mean and small spread loses digits in float32 itself: scale by |x|/σ
    xd = x.astype(np.float64)
    cond = (
        (np.abs(xd).max(-1, keepdims=True) / (xd.std(-1, keepdims=True) + np.sqrt(eps) + 1e-300))
        if x.size
        else 1
    )
    assert_within(run(backend, "layer_norm", x, w, b, eps), want, tol(want, D) * cond)


@backends
def test_norms_bad_inputs_raise(backend):
    import pyworkloads.kernels as K

    x = np.ones((2, 8), np.float32)
    with on_backend(backend):
        with pytest.raises(ValueError):
            K.rms_norm(x, np.ones(7, np.float32), 1e-6)
        with pytest.raises(ValueError):
            K.layer_norm(x, None, np.ones(9, np.float32), 1e-5)
        with pytest.raises(ValueError):
            K.rms_norm(x, np.ones(8, np.float32), -1.0)


@backends
@pytest.mark.parametrize(
    "rows, D", [(0, 8192), (1, 8192), (3, 8191), (257, 4096), (1000, 1), (2, 5000)]
)
def test_norms_wide_and_many_rows(backend, rows, D):
    """The widths real models use (up to 8192, LLaMA-70B) and odd row counts, beyond what the
    property test draws."""
    rng = np.random.default_rng(rows * 7919 + D)
    x = (rng.standard_normal((rows, D)) * 3 + 1).astype(np.float32)
    w, b = rng.standard_normal(D).astype(np.float32), rng.standard_normal(D).astype(np.float32)
    want = rms64(x, w, 1e-5)
    assert_within(run(backend, "rms_norm", x, w, 1e-5), want, tol(want, D))
    want = ln64(x, w, b, 1e-5)
    assert_within(run(backend, "layer_norm", x, w, b, 1e-5), want, tol(want, D) * 4)
