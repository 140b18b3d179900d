"""Host-side behaviour of the CUDA extension, testable without a GPU.

Every op of ``pyworkloads._cuda`` validates its arguments (dtypes, shapes, options, the array
protocols) before it touches the driver, so these checks run on any machine where the extension
was built.  Tests that need the *absence* of a GPU (valid calls failing with "no usable CUDA
device") skip on a GPU machine; the GPU behaviour itself is tested in test_cuda_kernels.py.
"""

from __future__ import annotations

import numpy as np
import pytest

_cuda = pytest.importorskip(
    "pyworkloads._cuda", reason="the CUDA extension was not built (no nvcc at configure time)"
)

import pyworkloads.kernels as K  # noqa: E402

HAS_GPU = _cuda.device_status()[0] > 0
no_gpu_only = pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU error path; a GPU is present")

f32 = np.float32


class FakeDeviceArray:
    """Just enough of __cuda_array_interface__ to reach the validation; the pointer is never
    read.
    """

    def __init__(self, shape, typestr="<f4", strides=None, **extra):
        self._iface = dict(
            shape=tuple(shape),
            typestr=typestr,
            data=(0xDEAD0000, False),
            strides=strides,
            version=3,
            **extra,
        )

    @property
    def __cuda_array_interface__(self):
        return self._iface


def a(*shape, dtype=f32):
    return np.zeros(shape, dtype)


# --------------------------------------------------------------------------------------------
# availability
# --------------------------------------------------------------------------------------------
def test_device_status_never_raises():
    n, why = _cuda.device_status()
    assert isinstance(n, int) and n >= 0
    assert isinstance(why, str)
    if n == 0:
        assert why, "a machine without devices must say why"
    assert isinstance(_cuda.runtime_version(), int) and _cuda.runtime_version() > 0
    assert isinstance(_cuda.driver_version(), int)


def test_algorithm_names_are_accepted():
    # every advertised version parses (the call then fails on shapes, before any device work)
    for op, names in _cuda.ALGORITHMS.items():
        assert names[0] == "auto"
        for name in names:
            with pytest.raises(ValueError, match="dimension|multiple|shape"):
                if op == "matmul":
                    _cuda.matmul(a(3, 4), a(5, 6), algo=name)
                elif op == "attention":
                    _cuda.attention(*_qkv(Hq=3, Hkv=2, dtype=np.float16), algo=name)
                else:
                    getattr(_cuda, op)(
                        a(2, 8), a(7), *([None] if op == "layer_norm" else []), 1e-5, algo=name
                    )


@no_gpu_only
def test_backend_reported_unavailable_without_gpu():
    assert "cuda" not in K.available()
    assert "no usable CUDA device" in K.unavailable_reason("cuda")
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available"):
        with K.use_backend("cuda"):
            pass


@no_gpu_only
@pytest.mark.parametrize(
    "call",
    [
        lambda: _cuda.matmul(a(3, 4), a(4, 5)),
        lambda: _cuda.attention(a(1, 2, 3, 8), a(1, 1, 5, 8), a(1, 1, 5, 8), causal=True),
        lambda: _cuda.rms_norm(a(2, 8), a(8), 1e-6),
        lambda: _cuda.layer_norm(a(2, 8), None, None, 1e-5),
        lambda: _cuda.matmul(FakeDeviceArray((3, 4)), FakeDeviceArray((4, 5))),
        lambda: _cuda.synchronize(),
        lambda: _cuda.to_device(a(3, 4)),
    ],
    ids=[
        "matmul",
        "attention",
        "rms_norm",
        "layer_norm",
        "device-arrays",
        "synchronize",
        "to_device",
    ],
)
def test_valid_calls_fail_clearly_without_gpu(call):
    with pytest.raises(RuntimeError, match="no usable CUDA device"):
        call()


# --------------------------------------------------------------------------------------------
# argument validation (before any device call: the same errors with or without a GPU)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "arg, exc, msg",
    [
        (a(3, dtype=np.float64), TypeError, "float32, float16 or bool"),
        ([1.0, 2.0], TypeError, "NumPy array or a CUDA device array"),
        (None, TypeError, "got None"),
    ],
)
def test_to_device_validation(arg, exc, msg):
    with pytest.raises(exc, match=msg):
        _cuda.to_device(arg)


@pytest.mark.parametrize(
    "args, kwargs, exc, msg",
    [
        ((a(4), a(4, 5)), {}, ValueError, "at least 2 dimensions"),
        ((a(3, 4), a(3, 5)), {}, ValueError, "must equal b's second-to-last"),
        ((a(2, 3, 4), a(3, 4, 5)), {}, ValueError, "do not broadcast"),
        ((a(3, 4, dtype=np.float64), a(4, 5)), {}, TypeError, "float32, float16 or bool"),
        ((a(3, 4), a(4, 5, dtype=np.float16)), {}, TypeError, "must have the dtype of a"),
        ((a(3, 4, dtype=bool), a(4, 5, dtype=bool)), {}, TypeError, "got bool"),
        (([[1.0]], a(1, 1)), {}, TypeError, "NumPy array or a CUDA device array"),
        ((None, a(1, 1)), {}, TypeError, "got None"),
        ((a(3, 4), a(4, 5)), {"algo": "fast"}, ValueError, "algo must be one of"),
        ((a(3, 4), a(4, 5)), {"algo": "wgmma"}, ValueError, "float16 or bfloat16"),
        ((a(3, 4), a(4, 5)), {"algo": "mma"}, ValueError, "float16 or bfloat16"),
        ((a(1, 1, 1, 1, 1, 1, 1, 2, 2), a(2, 2)), {}, ValueError, "at most 6 batch dimensions"),
    ],
)
def test_matmul_validation(args, kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        _cuda.matmul(*args, **kwargs)


def _qkv(B=1, Hq=4, Hkv=2, Tq=3, Tk=5, Dh=8, Dv=None, dtype=f32):
    return (
        a(B, Hq, Tq, Dh, dtype=dtype),
        a(B, Hkv, Tk, Dh, dtype=dtype),
        a(B, Hkv, Tk, Dv or Dh, dtype=dtype),
    )


@pytest.mark.parametrize(
    "qkv, kwargs, exc, msg",
    [
        ((a(4, 3, 8), a(1, 4, 5, 8), a(1, 4, 5, 8)), {}, ValueError, "q must be 4-D"),
        (_qkv(Hq=3, Hkv=2), {}, ValueError, "multiple of key/value heads"),
        ((a(1, 2, 3, 8), a(1, 2, 5, 4), a(1, 2, 5, 8)), {}, ValueError, "head widths differ"),
        ((a(1, 2, 3, 8), a(1, 2, 5, 8), a(1, 2, 4, 8)), {}, ValueError, "share heads and length"),
        ((a(2, 2, 3, 8), a(1, 2, 5, 8), a(1, 2, 5, 8)), {}, ValueError, "batch sizes differ"),
        (_qkv(Tq=6, Tk=5), {"causal": True}, ValueError, "causal needs Tq <= Tk"),
        (_qkv(), {"scale": float("inf")}, ValueError, "scale must be a finite"),
        (_qkv(), {"scale": 1e39}, ValueError, "finite float32"),
        (_qkv(Dh=0), {}, ValueError, "Dh >= 1"),
        (_qkv(), {"bias": a(2, 5)}, ValueError, "does not broadcast"),
        (_qkv(), {"bias": a(1, 1, 1, 1, 5)}, ValueError, "at most 4 dimensions"),
        (_qkv(), {"bias": a(1, 1, 1, 5, dtype=bool)}, TypeError, "got bool"),
        (_qkv(), {"mask": a(1, 1, 1, 5)}, TypeError, "mask must be a boolean array"),
        (_qkv(), {"mask": a(3, 4, dtype=bool)}, ValueError, "does not broadcast"),
        (_qkv(Dh=264), {}, ValueError, "head widths up to 256"),
        (_qkv(), {"algo": "mma"}, ValueError, "float16/bfloat16"),
        (_qkv(Dh=192, dtype=np.float16), {"algo": "mma"}, ValueError, "head widths <= 128"),
        (_qkv(), {"algo": "mma_async"}, ValueError, "float16/bfloat16"),
        (_qkv(Dh=192, dtype=np.float16), {"algo": "mma_async"}, ValueError, "head widths <= 128"),
        (_qkv(), {"algo": "flash3"}, ValueError, "algo must be one of"),
        (
            (a(1, 2, 3, 8), a(1, 2, 5, 8, dtype=np.float16), a(1, 2, 5, 8)),
            {},
            TypeError,
            "k must have the dtype of q",
        ),
    ],
)
def test_attention_validation(qkv, kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        _cuda.attention(*qkv, **kwargs)


@pytest.mark.parametrize(
    "call, exc, msg",
    [
        (lambda: _cuda.rms_norm(a(2, 8), a(7), 1e-6), ValueError, r"weight must have shape \(8,\)"),
        (lambda: _cuda.rms_norm(a(2, 8), None, 1e-6), ValueError, "weight is required"),
        (
            lambda: _cuda.rms_norm(a(2, 8), a(8), -1.0),
            ValueError,
            "eps must be a finite number >= 0",
        ),
        (
            lambda: _cuda.rms_norm(a(2, 8), a(8), float("nan")),
            ValueError,
            "eps must be a finite number >= 0",
        ),
        (
            lambda: _cuda.rms_norm(a(2, 8, dtype=np.float64), a(8), 1e-6),
            TypeError,
            "float32, float16 or bool",
        ),
        (
            lambda: _cuda.rms_norm(a(2, 8), a(8, dtype=np.float16), 1e-6),
            TypeError,
            "weight must have the dtype of x",
        ),
        (
            lambda: _cuda.layer_norm(a(2, 8), a(8), a(2, 8), 1e-5),
            ValueError,
            r"bias must have shape \(8,\)",
        ),
        (
            lambda: _cuda.layer_norm(a(2, 8), None, None, 1e-5, algo="fused"),
            ValueError,
            "algo must be one of",
        ),
        (
            lambda: _cuda.layer_norm(np.array(1.0, f32), None, None, 1e-5),
            ValueError,
            "at least 1 dimension",
        ),
    ],
)
def test_norm_validation(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


# --------------------------------------------------------------------------------------------
# out= and the array protocols
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "out, exc, msg",
    [
        (a(3, 5), TypeError, "out must be a CUDA device array"),
        (FakeDeviceArray((3, 4)), ValueError, r"out must have shape \(3, 5\)"),
        (FakeDeviceArray((3, 5), typestr="<f2"), TypeError, "out must have dtype float32"),
        (FakeDeviceArray((3, 5), strides=(4, 12)), ValueError, "C-contiguous"),
    ],
)
def test_out_validation(out, exc, msg):
    with pytest.raises(exc, match=msg):
        _cuda.matmul(a(3, 4), a(4, 5), out=out)


def test_describe_reads_cuda_array_interface():
    d = _cuda.describe(FakeDeviceArray((2, 3), strides=(4, 8)))  # a transposed float32 view
    assert d == {
        "dtype": "float32",
        "shape": (2, 3),
        "strides": (1, 2),
        "on_device": True,
        "device": -1,
        "c_contiguous": False,
    }
    d = _cuda.describe(FakeDeviceArray((4, 1, 6), typestr="<f2"))
    assert d["dtype"] == "float16" and d["strides"] == (6, 6, 1) and d["c_contiguous"]


def test_describe_numpy_layouts():
    x = np.arange(24, dtype=f32).reshape(2, 3, 4)
    d = _cuda.describe(x.transpose(2, 0, 1))  # dense permutation: sent as it lies
    assert d["on_device"] is False and d["shape"] == (4, 2, 3) and d["strides"] == (1, 12, 4)
    assert not d["c_contiguous"]
    d = _cuda.describe(x[:, :, ::2])  # gaps: packed on the host first
    assert d["shape"] == (2, 3, 2) and d["strides"] == (6, 2, 1) and d["c_contiguous"]
    d = _cuda.describe(x[:, ::-1])  # negative strides: packed too
    assert d["strides"] == (12, 4, 1)
    assert _cuda.describe(np.zeros(5, bool))["dtype"] == "bool"


@pytest.mark.parametrize(
    "iface, exc, msg",
    [
        (dict(typestr="<f8"), TypeError, "unsupported __cuda_array_interface__ typestr"),
        (dict(typestr="<f4", strides=(6, 4)), TypeError, "multiples of the element size"),
        (dict(typestr="<f4", strides=(4,)), TypeError, "differ in length"),
        (dict(typestr="<f4", mask=(0, False)), TypeError, "masked"),
        (dict(typestr="<f4", stream=0), ValueError, "stream 0"),
    ],
)
def test_cuda_array_interface_validation(iface, exc, msg):
    fake = FakeDeviceArray(
        (2, 3),
        **{k: v for k, v in iface.items() if k not in ("typestr", "strides")},
        typestr=iface["typestr"],
        strides=iface.get("strides"),
    )
    with pytest.raises(exc, match=msg):
        _cuda.describe(fake)


def test_cuda_array_interface_null_pointer_rejected():
    fake = FakeDeviceArray((2, 3))
    fake._iface["data"] = (0, False)
    with pytest.raises(ValueError, match="null data pointer"):
        _cuda.describe(fake)
    fake._iface["shape"] = (0, 3)  # empty arrays may have a null pointer
    assert _cuda.describe(fake)["shape"] == (0, 3)


def test_dlpack_cpu_tensors():
    torch = pytest.importorskip(
        "torch", reason="DLPack producer for the test (pip install torch==2.13.0)"
    )
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    d = _cuda.describe(t)  # CPU DLPack: read through NumPy
    assert d["on_device"] is False and d["dtype"] == "float32" and d["shape"] == (2, 3)
    with pytest.raises(TypeError, match="bfloat16 CPU tensor"):
        _cuda.describe(t.to(torch.bfloat16))
    with pytest.raises(TypeError, match="unsupported DLPack dtype"):
        _cuda.describe(t.to(torch.int64))
    assert t.sum().item() == 15.0  # the capsule was released, t intact


def test_validation_happens_before_device_work_for_device_arrays():
    # A fake device array with a bogus pointer must be rejected on shape alone, never dereferenced.
    with pytest.raises(ValueError, match="must equal b's second-to-last"):
        _cuda.matmul(FakeDeviceArray((3, 4)), FakeDeviceArray((5, 6)))
    with pytest.raises(TypeError, match="must have the dtype of q"):
        _cuda.attention(
            FakeDeviceArray((1, 2, 3, 8)),
            FakeDeviceArray((1, 2, 3, 8), typestr="<f2"),
            FakeDeviceArray((1, 2, 3, 8)),
        )


def test_dlpack_producer_is_asked_once_for_its_device():
    # A CUDA DLPack producer is asked __dlpack_device__() once per argument and then
    # __dlpack__(stream=1)
    # (each is a Python call in PyTorch, paid on every op).  The capsule here comes from a CPU
    # tensor,
    # so the argument is then read as host data; only the handshake is under test.
    torch = pytest.importorskip(
        "torch", reason="DLPack producer for the test (pip install torch==2.13.0)"
    )

    class CudaProducer:
        def __init__(self, t):
            self.t, self.device_calls, self.dlpack_kwargs = t, 0, []

        def __dlpack_device__(self):
            self.device_calls += 1
            return (2, 0)  # kDLCUDA, device 0

        def __dlpack__(self, **kw):
            self.dlpack_kwargs.append(kw)
            return self.t.__dlpack__()

        def __array__(self, dtype=None, copy=None):  # the host read of a CPU capsule
            return self.t.numpy()

    p = CudaProducer(torch.ones(2, 3))
    d = _cuda.describe(p)
    assert d["shape"] == (2, 3)
    assert p.device_calls == 1 and p.dlpack_kwargs == [{"stream": 1}]
