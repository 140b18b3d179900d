"""Backend dispatch, validation at the dispatch layer, and the profiler's records."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import pyworkloads as pw
from pyworkloads import kernels


def test_numpy_is_always_available_and_default():
    assert "numpy" in pw.available()
    assert pw.get_backend() == "numpy"


def test_expected_backends_are_built():
    """CI sets PYWORKLOADS_EXPECT_BACKENDS so that a broken build fails loudly instead of every
    C++ test skipping."""
    expected = [b for b in os.environ.get("PYWORKLOADS_EXPECT_BACKENDS", "").split(",") if b]
    if not expected:
        pytest.skip("PYWORKLOADS_EXPECT_BACKENDS not set (CI sets it to the backends the build "
                    "must provide)")
    for b in expected:
        assert b in pw.available(), (f"backend {b} expected but unavailable: "
                                     f"{kernels.unavailable_reason(b)}")


def test_cuda_extension_is_built_when_expected():
    """CI compiles the CUDA code (it cannot run it): the extension must import and report
    devices."""
    if not os.environ.get("PYWORKLOADS_EXPECT_CUDA_BUILD"):
        pytest.skip("PYWORKLOADS_EXPECT_CUDA_BUILD not set (CI sets it: its build must "
                    "include the CUDA extension)")
    from pyworkloads import _cuda
    n, why = _cuda.device_status()
    assert n > 0 or why, "device_status must explain why there is no device"


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        with pw.use_backend("tpu"):
            pass


def test_cuda_without_gpu_raises_clearly():
    if "cuda" in pw.available():
        pytest.skip("a CUDA device is present here")
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available"):
        with pw.use_backend("cuda"):
            pass
    assert pw.get_backend() == "numpy"


def test_use_backend_is_scoped_and_per_thread():
    other = [b for b in pw.available() if b != "numpy"]
    if not other:
        pytest.skip("only the numpy backend is built here")
    seen = {}
    with pw.use_backend(other[0]):
        assert pw.get_backend() == other[0]
        t = threading.Thread(target=lambda: seen.setdefault("thread", pw.get_backend()))
        t.start()
        t.join()
    assert pw.get_backend() == "numpy"
    assert seen["thread"] == "numpy"            # a backend choice does not leak into other threads


def test_profile_counts_and_scopes(rng):
    a = rng.standard_normal((2, 3, 4)).astype(np.float32)
    b = rng.standard_normal((4, 5)).astype(np.float32)
    q = rng.standard_normal((1, 4, 3, 8)).astype(np.float32)
    k = rng.standard_normal((1, 2, 6, 8)).astype(np.float32)
    x = rng.standard_normal((3, 16)).astype(np.float32)
    w = np.ones(16, np.float32)
    with pw.profile() as prof:
        with kernels.scope("model"), kernels.scope("layers.0"):
            kernels.matmul(a, b)
            kernels.attention(q, k, k, causal=True)
        kernels.rms_norm(x, w, 1e-6)
        kernels.layer_norm(x, w, None, 1e-5)
    mm, att, rms, ln = prof.records
    assert (mm.op, mm.name, mm.macs, mm.flops) == ("matmul", "model.layers.0", 2 * 3 * 5 * 4,
                                                   2 * 2 * 3 * 5 * 4)
    assert mm.bytes == (a.size + b.size + 2 * 3 * 5) * 4
    assert att.macs == 1 * 4 * 3 * 6 * (8 + 8)
    assert att.flops == 2 * att.macs + 6 * (4 * 3 * 6)
    assert (rms.name, rms.flops) == ("", 4 * x.size)
    assert ln.flops == 6 * x.size
    assert all(r.seconds >= 0 and r.backend == "numpy" for r in prof.records)
    table = prof.summary()
    assert "matmul" in table and "attention" in table
    assert "model.layers.0" in prof.summary(by="name")


def test_no_profile_no_records(rng):
    with pw.profile() as prof:
        pass
    kernels.matmul(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32))
    assert prof.records == []


@pytest.mark.parametrize("call, exc, message", [
    (lambda: kernels.matmul(np.ones((2, 3), np.float32), np.ones((4, 2), np.float32)),
     ValueError, "a's last dimension"),
    (lambda: kernels.matmul(np.ones(3, np.float32), np.ones((3, 2), np.float32)),
     ValueError, "at least 2 dimensions"),
    (lambda: kernels.matmul(np.ones((2, 2, 3), np.float32), np.ones((3, 3, 2), np.float32)),
     ValueError, "do not broadcast"),
    (lambda: kernels.matmul(np.ones((2, 2), np.int64), np.ones((2, 2), np.float32)),
     TypeError, "floating-point"),
    (lambda: kernels.attention(np.ones((1, 3, 2, 4)), np.ones((1, 2, 2, 4)), np.ones((1, 2, 2, 4))),
     ValueError, "multiple of key/value heads"),
    (lambda: kernels.attention(np.ones((1, 2, 2, 4)), np.ones((1, 2, 2, 5)), np.ones((1, 2, 2, 5))),
     ValueError, "head widths"),
    (lambda: kernels.attention(np.ones((2, 4)), np.ones((2, 4)), np.ones((2, 4))),
     ValueError, "4-D"),
    (lambda: kernels.attention(np.ones((1, 1, 3, 4)), np.ones((1, 1, 2, 4)), np.ones((1, 1, 2, 4)),
                               causal=True),
     ValueError, "Tq <= Tk"),
    (lambda: kernels.attention(np.ones((1, 1, 2, 4)), np.ones((1, 1, 2, 4)), np.ones((1, 1, 2, 4)),
                               mask=np.ones((2, 2))),
     TypeError, "boolean"),
    (lambda: kernels.attention(np.ones((1, 1, 2, 4)), np.ones((1, 1, 2, 4)), np.ones((1, 1, 2, 4)),
                               bias=np.ones((3, 2))),
     ValueError, "does not broadcast"),
    (lambda: kernels.attention(np.ones((1, 1, 2, 4)), np.ones((1, 1, 2, 4)), np.ones((1, 1, 3, 4))),
     ValueError, "share heads and length"),
    (lambda: kernels.rms_norm(np.ones((2, 4), np.float32), np.ones(3, np.float32)),
     ValueError, r"weight must have shape \(4,\)"),
    (lambda: kernels.rms_norm(np.ones((2, 4), np.float32), np.ones(4, np.float32), eps=-1.0),
     ValueError, "eps"),
    (lambda: kernels.layer_norm(np.ones((2, 4), np.float32), None, np.ones(5, np.float32)),
     ValueError, r"bias must have shape \(4,\)"),
    (lambda: kernels.set_num_threads(0), ValueError, "positive integer"),
])
def test_validation_messages(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


@pytest.mark.parametrize("backend", [b for b in ("cpp", "cuda")])
def test_compiled_backends_refuse_float64_clearly(backend):
    if backend not in pw.available():
        pytest.skip(f"backend {backend} not available: {kernels.unavailable_reason(backend)}")
    x = np.ones((2, 4))
    with pw.use_backend(backend), pytest.raises(TypeError, match="float32"):
        kernels.rms_norm(x, np.ones(4), 1e-6)


Q = np.ones((1, 2, 3, 4), np.float32)
KV = np.ones((1, 2, 5, 4), np.float32)


@pytest.mark.parametrize("backend", pw.available())
@pytest.mark.parametrize("args, kwargs, exc, message", [
    ((Q, KV, KV), dict(mask=np.ones((3, 1, 3, 5), bool)), ValueError, "does not broadcast"),
    ((Q, KV, KV), dict(mask=np.ones((2, 5), bool)), ValueError, "does not broadcast"),
    ((Q, KV, KV), dict(bias=np.zeros((2, 2, 3, 5), np.float32)), ValueError, "does not broadcast"),
    ((Q, KV, KV), dict(bias=np.zeros((1, 4, 1, 1), np.float32)), ValueError, "does not broadcast"),
    ((Q, KV, KV), dict(bias=np.zeros((0,), np.float32)), ValueError, "does not broadcast"),
    ((Q, KV, KV), dict(mask=np.ones((1, 1, 1, 3, 5), bool)), ValueError, "at most 4"),
    ((Q[..., :0], KV[..., :0], KV), {}, ValueError, "Dh >= 1"),
    ((Q, KV, KV), dict(scale=1e39), ValueError, "float32"),
    ((Q, KV, KV), dict(scale=-1e300), ValueError, "float32"),
    ((Q, KV, KV), dict(scale=2**1000), ValueError, "float32"),
    ((Q, KV, KV), dict(scale=float("inf")), ValueError, "finite"),
    ((Q, KV, KV), dict(scale=True), TypeError, "real number"),
    ((Q, KV, KV), dict(scale=1 + 1j), TypeError, "real number"),
    ((Q, KV, KV), dict(scale="0.5"), TypeError, "real number"),
])
def test_attention_arguments_refused_alike_by_every_backend(backend, args, kwargs, exc, message):
    """A mask or bias that would broadcast the scores (and the output) up, or to nothing, a head
    width of 0 (the default scale 1/sqrt(0) is inf) and scales that are not finite numbers in the
    inputs' dtype: the dispatcher refuses them the same way for every backend."""
    with pw.use_backend(backend), pytest.raises(exc, match=message):
        kernels.attention(*args, **kwargs)


@pytest.mark.parametrize("backend", pw.available())
def test_attention_broadcasting_down_and_largest_float32_scale_are_accepted(backend):
    with pw.use_backend(backend):
        out = kernels.attention(Q, KV, KV, mask=np.ones((1, 1, 1, 5), bool),
                                bias=np.zeros((5,), np.float32), scale=np.float32(2.0))
        assert out.shape == (1, 2, 3, 4)
        with np.errstate(over="ignore", invalid="ignore"):     # the reference's inf and NaN
            big = kernels.attention(Q, KV, KV, scale=3.4e38)  # ones: scores 4 * 3.4e38 = inf
    assert np.isnan(big).all()
