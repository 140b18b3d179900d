"""Edge cases of the CUDA interop, copy and norm code (cpp/cuda/interop.cpp, copy.cu, norms*.cu):
deep and permuted NumPy views, merged pack layouts, odd norm widths, misaligned device views,
results read on another stream.

Host-side tests use ``_cuda.describe()``, which parses an argument exactly as the ops do but
touches no device, so they run wherever the extension was built.  The GPU tests skip without a
usable device (and the device-array ones without PyTorch built with CUDA).
"""

from __future__ import annotations

import numpy as np
import pytest

_cuda = pytest.importorskip(
    "pyworkloads._cuda", reason="the CUDA extension was not built (no nvcc at configure time)"
)

from pyworkloads.kernels import reference  # noqa: E402

HAS_GPU = _cuda.device_status()[0] > 0
gpu = pytest.mark.skipif(not HAS_GPU, reason=f"no usable CUDA device ({_cuda.device_status()[1]})")


class FakeDeviceArray:
    """Just enough of __cuda_array_interface__ for describe(); the pointer is never read."""

    def __init__(self, shape, strides=None, typestr="<f4"):
        self._iface = dict(
            shape=tuple(shape),
            typestr=typestr,
            data=(0xDEAD0000, False),
            strides=strides,
            version=3,
        )

    @property
    def __cuda_array_interface__(self):
        return self._iface


# ---- host side ----------------------------------------------------------------------------------
def test_numpy_view_deeper_than_8_dims_is_packed_on_the_host():
    # The device copy has 8 layout slots: a permuted 9-D NumPy view used to be sent "as it lies"
    # and overflowed them when packed.  Now it is made C-contiguous before upload.
    x = np.zeros((1, 2, 1, 3, 1, 2, 1, 2, 3), np.float32).transpose(8, 1, 2, 3, 4, 5, 6, 7, 0)
    d = _cuda.describe(x)
    assert d["shape"] == x.shape
    assert d["c_contiguous"] is True
    assert d["strides"] == tuple(s // 4 for s in np.ascontiguousarray(x).strides)


def test_numpy_permuted_view_up_to_8_dims_is_still_sent_as_it_lies():
    w = np.zeros((3, 5), np.float32).T  # the W.T of every linear layer: no host copy
    d = _cuda.describe(w)
    assert d["c_contiguous"] is False and d["strides"] == (1, 5)


def test_empty_arrays_are_contiguous_whatever_their_strides():
    d = _cuda.describe(FakeDeviceArray((0, 3), strides=(4, 8)))
    assert d["c_contiguous"] is True


def test_device_pack_layout_merges_dimensions():
    # a [2, 3, 8, 5] block sliced to [:, :, :4]: element strides (120, 40, 5, 1) walk as [6, 20]
    x = FakeDeviceArray((2, 3, 4, 5), strides=(480, 160, 20, 4))
    assert _cuda.describe(x)["c_contiguous"] is False
    assert _cuda.pack_layout(x) == ((6, 20), (40, 1))
    # size-1 dimensions with arbitrary strides disappear; a transpose stays 2-D
    assert _cuda.pack_layout(FakeDeviceArray((1, 3, 1, 5), strides=(996, 4, 76, 12))) == (
        (3, 5),
        (1, 3),
    )
    # a uniformly strided view (every other element) is one dimension
    assert _cuda.pack_layout(
        FakeDeviceArray((2,) * 8, strides=tuple(8 * 2 ** (7 - i) for i in range(8)))
    ) == ((256,), (2,))


def test_device_pack_layout_of_8_dims_fits():
    strides = tuple(
        4 * 3 ** (7 - i) for i in range(8)
    )  # element strides 3^k: no two dimensions merge
    shape, st = _cuda.pack_layout(FakeDeviceArray((2,) * 8, strides=strides))
    assert shape == (2,) * 8 and st == tuple(3 ** (7 - i) for i in range(8))


# ---- GPU -----------------------------------------------------------------------------------------
def torch_cuda():
    torch = pytest.importorskip("torch", reason="device-array tests need PyTorch")
    if not torch.cuda.is_available():
        pytest.skip("device-array tests need PyTorch built with CUDA")
    return torch


@gpu
def test_rms_norm_of_a_9d_permuted_numpy_view():
    rng = np.random.default_rng(0)
    x = (
        rng.standard_normal((2, 1, 3, 1, 2, 1, 2, 1, 16))
        .astype(np.float32)
        .transpose(4, 1, 2, 3, 0, 5, 6, 7, 8)
    )
    w = rng.standard_normal(16).astype(np.float32)
    got = _cuda.rms_norm(x, w, 1e-6)
    np.testing.assert_allclose(
        got, reference.rms_norm(x.astype(np.float64), w, 1e-6), rtol=1e-5, atol=1e-5
    )


@gpu
@pytest.mark.parametrize("algo", ["auto", "block", "warp", "rows"])
@pytest.mark.parametrize(
    "rows, D", [(0, 8), (3, 1), (2, 7), (5, 24), (1, 4097), (2, 8193), (7, 33)]
)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_norm_edge_widths(rows, D, algo, dtype):
    rng = np.random.default_rng(D)
    x = (rng.standard_normal((rows, D)) + 2.0).astype(dtype)
    w, b = rng.standard_normal(D).astype(dtype), rng.standard_normal(D).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 4e-3
    x64, w64, b64 = (a.astype(np.float64) for a in (x, w, b))
    np.testing.assert_allclose(
        _cuda.rms_norm(x, w, 1e-6, algo=algo),
        reference.rms_norm(x64, w64, 1e-6),
        rtol=tol,
        atol=tol,
    )
    np.testing.assert_allclose(
        _cuda.layer_norm(x, w, b, 1e-5, algo=algo),
        reference.layer_norm(x64, w64, b64, 1e-5),
        rtol=tol,
        atol=tol * 10,
    )


@gpu
@pytest.mark.parametrize("offset", [1, 2, 4, 8])
@pytest.mark.parametrize("algo", ["auto", "warp", "rows"])
def test_norm_misaligned_device_views(offset, algo):
    # x, weight and out= a few elements past a 16-byte boundary: the vectorised path must not be
    # taken
    torch = torch_cuda()
    rows, D = 5, 64
    g = torch.Generator().manual_seed(offset)
    flat = torch.randn(rows * D + offset, generator=g).half().cuda()
    x = flat[offset:].view(rows, D)
    w = torch.randn(D + offset, generator=g).half().cuda()[offset:]
    out = torch.empty(rows * D + offset, dtype=torch.float16, device="cuda")[offset:].view(rows, D)
    _cuda.rms_norm(x, w, 1e-6, algo=algo, out=out)
    want = reference.rms_norm(x.cpu().double().numpy(), w.cpu().double().numpy(), 1e-6)
    np.testing.assert_allclose(out.cpu().double().numpy(), want, rtol=4e-3, atol=4e-3)


@gpu
def test_strided_device_view_packed_through_the_merged_layout():
    # a [2, 3, 8, 5] tensor sliced to [:, :, :4, :] then used as a matrix operand in float32
    torch = torch_cuda()
    base = torch.randn(2, 3, 8, 5, device="cuda")
    a = base[:, :, :4, :].transpose(-1, -2)  # [2, 3, 5, 4], not unit-stride on the last axis
    b = torch.randn(4, 6, device="cuda")
    got = torch.from_dlpack(_cuda.matmul(a, b)).cpu().double().numpy()
    want = a.cpu().double().numpy() @ b.cpu().double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@gpu
def test_device_array_result_read_on_a_side_stream():
    # A DeviceArray exported to a consumer on another stream (DLPack stream != 1) must be complete.
    torch = torch_cuda()
    x = torch.randn(512, 1024, device="cuda")
    w = torch.randn(1024, device="cuda")
    res = _cuda.rms_norm(x, w, 1e-6)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        y = torch.from_dlpack(res).clone()
    side.synchronize()
    want = reference.rms_norm(x.cpu().double().numpy(), w.cpu().double().numpy(), 1e-6)
    np.testing.assert_allclose(y.cpu().double().numpy(), want, rtol=1e-5, atol=1e-5)


@gpu
def test_device_array_dlpack_copy_true_gives_independent_memory():
    torch = torch_cuda()
    x = torch.randn(4, 8, device="cuda")
    res = _cuda.rms_norm(x, torch.ones(8, device="cuda"), 1e-6)
    shared = torch.from_dlpack(res)
    copied = torch.from_dlpack(res, copy=True)
    assert copied.data_ptr() != shared.data_ptr()
    torch.testing.assert_close(copied, shared)
    shared.zero_()
    assert copied.abs().sum().item() > 0
