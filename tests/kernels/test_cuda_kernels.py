"""The CUDA kernels against the NumPy reference (float64), on a GPU.

Skips with the reason when the ``cuda`` backend is unavailable (no extension, no GPU, no
driver).  Every algorithm version is checked, not only the one ``auto`` picks, on edge sizes
(0, 1, odd, tile boundaries +-1) as well as regular ones.  Device-array tests (DLPack /
__cuda_array_interface__, bfloat16, out=, non-contiguous views) use PyTorch with CUDA and skip
without it.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import pyworkloads.kernels as K
from pyworkloads.kernels import reference

pytestmark = pytest.mark.gpu

if "cuda" not in K.available():
    pytest.skip(
        f"the cuda backend is unavailable: {K.unavailable_reason('cuda')}", allow_module_level=True
    )

from pyworkloads import _cuda  # noqa: E402


def torch_cuda():
    torch = pytest.importorskip("torch", reason="device-array tests need PyTorch")
    if not torch.cuda.is_available():
        pytest.skip("device-array tests need PyTorch built with CUDA")
    return torch


def rand(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def assert_close(got, want, atol, rtol):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    err = np.abs(got - want)
    bound = atol + rtol * np.abs(want)
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.size else None
    assert np.all(err <= bound), f"max excess at {worst}: got {got[worst]}, want {want[worst]}"


# --------------------------------------------------------------------------------------------
# matmul
# --------------------------------------------------------------------------------------------
MATMUL_SHAPES = [
    ((1, 1), (1, 1)),
    ((3, 5), (5, 7)),
    ((0, 4), (4, 3)),
    ((4, 0), (0, 3)),
    ((127, 9), (9, 129)),
    ((128, 128), (128, 128)),
    ((129, 257), (257, 131)),
    ((2, 3, 33, 17), (17, 65)),
    ((4, 1, 8, 24), (1, 3, 24, 40)),
]


@pytest.mark.parametrize("algo", ["naive", "tiled"])
@pytest.mark.parametrize("sa, sb", MATMUL_SHAPES)
def test_matmul_float32(rng, algo, sa, sb):
    x, y = rand(rng, *sa), rand(rng, *sb)
    want = np.matmul(x.astype(np.float64), y.astype(np.float64))
    got = _cuda.matmul(x, y, algo=algo)
    assert got.dtype == np.float32
    K_ = sa[-1]
    assert_close(got, want, atol=1e-5 * np.sqrt(max(K_, 1)), rtol=1e-5 * np.sqrt(max(K_, 1)))


@pytest.mark.parametrize("algo", ["naive", "tiled", "mma"])
@pytest.mark.parametrize(
    "sa, sb", MATMUL_SHAPES + [((200, 72), (72, 136)), ((64, 1000), (1000, 48))]
)
def test_matmul_float16(rng, algo, sa, sb):
    x, y = rand(rng, *sa, dtype=np.float16), rand(rng, *sb, dtype=np.float16)
    want = np.matmul(
        x.astype(np.float64), y.astype(np.float64)
    )  # exact products of the fp16 inputs
    got = _cuda.matmul(x, y, algo=algo)
    assert got.dtype == np.float16
    # FP32 accumulation, one rounding to fp16 at the end (relative 2^-11)
    assert_close(got, want, atol=1e-3 * np.sqrt(max(sa[-1], 1)), rtol=2e-3)


@pytest.mark.parametrize("view", ["transposed", "permuted-batch", "strided", "reversed"])
def test_matmul_numpy_layouts(rng, view):
    # dense views (W.T, permuted batches) are uploaded as they lie and packed on the device;
    # the others are packed on the host
    W = rand(rng, 3, 40, 33)
    b = {
        "transposed": W.transpose(0, 2, 1),
        "permuted-batch": rand(rng, 40, 3, 33).transpose(1, 0, 2),
        "strided": np.repeat(W, 2, axis=2)[:, :, ::2].swapaxes(1, 2),
        "reversed": W[:, ::-1, ::-1].swapaxes(1, 2),
    }[view]
    x = rand(rng, 3, 17, b.shape[1])
    got = _cuda.matmul(x, b)
    assert_close(got, x.astype(np.float64) @ b.astype(np.float64), atol=1e-4, rtol=1e-4)


def test_attention_numpy_heads_split_layout(rng):
    # [B, T, H, D] activations viewed as [B, H, T, D]: a dense permutation, no host copy
    q, k, v = (rand(rng, 2, 70, 4, 64).transpose(0, 2, 1, 3) for _ in range(3))
    assert_close(
        _cuda.attention(q, k, v, causal=True),
        attention_ref(q, k, v, causal=True),
        atol=2e-5,
        rtol=1e-4,
    )


@pytest.mark.parametrize("algo", ["mma"])
def test_matmul_large_k_accumulates_in_float32(rng, algo):
    x = np.full((16, 4096), 0.01, np.float16)
    y = np.ones((4096, 16), np.float16)
    got = _cuda.matmul(x, y, algo=algo)
    want = x.astype(np.float64) @ y.astype(np.float64)
    assert_close(got, want, atol=0, rtol=2e-3)  # fp16 accumulation would be far off


# --------------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------------
def attention_ref(q, k, v, **kw):
    if k.shape[2] == 0:  # no keys: every row attends to nothing (the reference's
        return np.zeros(q.shape[:3] + v.shape[3:])  # max over an empty axis cannot say so)
    f = lambda t: None if t is None else (t if t.dtype == np.bool_ else t.astype(np.float64))  # noqa: E731
    kw = {n: f(t) if isinstance(t, np.ndarray) else t for n, t in kw.items()}
    return reference.attention(f(q), f(k), f(v), **kw)


ATTN_CASES = [
    # B, Hq, Hkv, Tq, Tk, Dh, Dv, causal
    (1, 1, 1, 1, 1, 8, 8, False),
    (2, 4, 4, 17, 17, 64, 64, True),
    (1, 8, 2, 70, 70, 64, 64, True),  # GQA, tile boundary + 6
    (1, 4, 1, 1, 130, 128, 128, True),  # decode: one query sees the whole cache
    (2, 2, 2, 33, 129, 80, 80, True),  # causal, Tq < Tk (bottom-right)
    (1, 2, 2, 50, 77, 64, 32, False),  # cross attention, Dv != Dh
    (1, 2, 1, 65, 64, 96, 96, False),
    (1, 1, 1, 40, 40, 200, 200, True),  # wide heads: the simt kernel
    (1, 2, 2, 5, 0, 16, 16, False),  # no keys: zeros
    (1, 2, 2, 0, 5, 16, 16, False),  # no queries
]


@pytest.mark.parametrize("case", ATTN_CASES)
def test_attention_float32(rng, case):
    B, Hq, Hkv, Tq, Tk, Dh, Dv, causal = case
    q, k, v = rand(rng, B, Hq, Tq, Dh), rand(rng, B, Hkv, Tk, Dh), rand(rng, B, Hkv, Tk, Dv)
    got = _cuda.attention(q, k, v, causal=causal, algo="simt")
    assert_close(got, attention_ref(q, k, v, causal=causal), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("algo", ["simt", "mma", "mma_async"])
@pytest.mark.parametrize("case", [c for c in ATTN_CASES if max(c[5], c[6]) <= 128])
def test_attention_float16(rng, algo, case):
    B, Hq, Hkv, Tq, Tk, Dh, Dv, causal = case
    q, k, v = (
        rand(rng, B, Hq, Tq, Dh, dtype=np.float16),
        rand(rng, B, Hkv, Tk, Dh, dtype=np.float16),
        rand(rng, B, Hkv, Tk, Dv, dtype=np.float16),
    )
    got = _cuda.attention(q, k, v, causal=causal, algo=algo)
    assert got.dtype == np.float16
    # P is rounded to fp16 before the PV product (mma): relative error ~ 2^-11 per term
    assert_close(got, attention_ref(q, k, v, causal=causal), atol=4e-3, rtol=1e-2)


@pytest.mark.parametrize(
    "dtype, algo",
    [(np.float32, "simt"), (np.float16, "simt"), (np.float16, "mma"), (np.float16, "mma_async")],
)
def test_attention_bias_and_mask(rng, dtype, algo):
    B, Hq, Hkv, Tq, Tk, D = 2, 4, 2, 37, 90, 64
    q, k, v = (
        rand(rng, B, Hq, Tq, D, dtype=dtype),
        rand(rng, B, Hkv, Tk, D, dtype=dtype),
        rand(rng, B, Hkv, Tk, D, dtype=dtype),
    )
    bias = rand(rng, 1, Hq, Tq, Tk, dtype=dtype)  # broadcast over batch
    mask = rng.random((B, 1, 1, Tk)) > 0.3  # key padding, broadcast over heads/queries
    mask[1, :, :, :] = False  # batch 1 fully masked: zeros
    tol = dict(atol=2e-5, rtol=1e-4) if dtype == np.float32 else dict(atol=4e-3, rtol=1e-2)
    for causal in (False, True):
        got = _cuda.attention(q, k, v, causal=causal, bias=bias, mask=mask, algo=algo)
        want = attention_ref(q, k, v, causal=causal, bias=bias, mask=mask)
        assert np.all(np.asarray(got, np.float64)[1] == 0)
        assert_close(got, want, **tol)


@pytest.mark.parametrize("algo", ["simt", "mma", "mma_async"])
def test_attention_full_mask_rows_and_scale(rng, algo):
    q, k, v = (
        rand(rng, 1, 2, 9, 32, dtype=np.float16),
        rand(rng, 1, 2, 9, 32, dtype=np.float16),
        rand(rng, 1, 2, 9, 32, dtype=np.float16),
    )
    mask = np.ones((9, 9), bool)
    mask[3] = False  # query 3 attends to nothing
    got = _cuda.attention(q, k, v, scale=0.3, mask=mask, algo=algo)
    want = attention_ref(q, k, v, scale=0.3, mask=mask)
    assert np.all(np.asarray(got)[:, :, 3] == 0)
    assert_close(got, want, atol=4e-3, rtol=1e-2)


@pytest.mark.parametrize(
    "algo, dtype", [("simt", np.float32), ("mma", np.float16), ("mma_async", np.float16)]
)
def test_attention_large_logits_are_stable(rng, algo, dtype):
    # scores in the thousands: exp must only ever see differences to the running max
    q = (rand(rng, 1, 2, 70, 32) * 30).astype(dtype)
    k, v = rand(rng, 1, 2, 90, 32, dtype=dtype), rand(rng, 1, 2, 90, 32, dtype=dtype)
    got = _cuda.attention(q, k, v, causal=True, algo=algo)
    assert np.all(np.isfinite(np.asarray(got, np.float64)))
    # a score error of δ moves the weights by ~δ: the rounding of a length-32 dot product
    # accumulated
    # in float32; fp16 adds the rounding of P and of the output (2^-11 relative each)
    eps32 = float(np.finfo(np.float32).eps)
    score_err = 4 * 32 * eps32 * float(np.abs(q).max()) * float(np.abs(k).max()) / np.sqrt(32)
    base = 1e-5 if dtype == np.float32 else 4e-3
    assert_close(
        got,
        attention_ref(q, k, v, causal=True),
        atol=float(np.abs(v).max()) * (base + 4 * score_err),
        rtol=0,
    )


# --------------------------------------------------------------------------------------------
# norms
# --------------------------------------------------------------------------------------------
# (9, 200) .. (2, 8200): v3 'rows' warp rows with 2/4/8 packs per lane and a partly filled last
# 8-row block, block rows of 64..256 threads, and the v2 fallback past 2048 packs (fp32 8200).
NORM_SHAPES = [
    (1, 1),
    (3, 7),
    (5, 64),
    (2, 3, 100),
    (4, 4096),
    (2, 5000),
    (0, 8),
    (3, 0),
    (9, 200),
    (9, 480),
    (9, 1000),
    (9, 2048),
    (2, 8200),
]


@pytest.mark.parametrize("algo", ["block", "warp", "rows"])
@pytest.mark.parametrize("shape", NORM_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_norms(rng, algo, shape, dtype):
    x = (rand(rng, *shape) * 3 + 1).astype(dtype)
    w, b = rand(rng, shape[-1], dtype=dtype), rand(rng, shape[-1], dtype=dtype)
    x64, w64, b64 = (t.astype(np.float64) for t in (x, w, b))
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == np.float32 else dict(atol=2e-3, rtol=2e-3)
    got = _cuda.rms_norm(x, w, 1e-6, algo=algo)
    assert got.dtype == dtype
    assert_close(got, reference.rms_norm(x64, w64, 1e-6), **tol)
    assert_close(
        _cuda.layer_norm(x, w, b, 1e-5, algo=algo), reference.layer_norm(x64, w64, b64, 1e-5), **tol
    )
    assert_close(
        _cuda.layer_norm(x, None, None, 1e-5, algo=algo),
        reference.layer_norm(x64, None, None, 1e-5),
        **tol,
    )


def test_layer_norm_large_mean_no_cancellation(rng):
    x = (rand(rng, 4, 1000) + 1e4).astype(np.float32)
    got = _cuda.layer_norm(x, None, None, 1e-5)
    assert_close(
        got, reference.layer_norm(x.astype(np.float64), None, None, 1e-5), atol=2e-3, rtol=2e-3
    )


# --------------------------------------------------------------------------------------------
# the backend through the dispatcher, and the models
# --------------------------------------------------------------------------------------------
def test_dispatch_runs_on_cuda(rng):
    x, y = rand(rng, 2, 16, 24), rand(rng, 24, 8)
    with K.use_backend("cuda"), K.profile() as prof:
        got = K.matmul(x, y)
        K.rms_norm(got, np.ones(8, np.float32), 1e-6)
    assert [r.backend for r in prof.records] == ["cuda", "cuda"]
    assert_close(got, x.astype(np.float64) @ y, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("model", ["llama2", "clip", "sam", "whisper"])
def test_model_demo_runs_on_cuda(model):
    try:
        mod = importlib.import_module(f"pyworkloads.models.{model}")
    except ImportError as exc:
        pytest.skip(f"pyworkloads.models.{model} is not importable: {exc}")
    with K.use_backend("cuda"), K.profile() as prof:
        line = mod.demo()
    assert isinstance(line, str) and line
    assert any(r.backend == "cuda" for r in prof.records)


# --------------------------------------------------------------------------------------------
# device arrays: DLPack / __cuda_array_interface__, bfloat16, out=, strided views
# --------------------------------------------------------------------------------------------
def test_device_arrays_bfloat16_zero_copy():
    torch = torch_cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(3, 200, 72, device="cuda", dtype=torch.bfloat16, generator=g)
    b = torch.randn(72, 136, device="cuda", dtype=torch.bfloat16, generator=g)
    c = _cuda.matmul(a, b)  # DLPack in (bf16 has no CAI typestr)
    assert isinstance(c, _cuda.DeviceArray) and c.dtype == "bfloat16" and c.shape == (3, 200, 136)
    ct = torch.from_dlpack(c)  # zero-copy out
    assert ct.data_ptr() == c.data_ptr and ct.dtype == torch.bfloat16
    want = a.double() @ b.double()
    assert torch.allclose(ct.double(), want, atol=0.05, rtol=1e-2)
    del c
    assert torch.isfinite(ct).all()  # the capsule keeps the memory alive


def test_device_arrays_out_and_strided_views():
    torch = torch_cuda()
    g = torch.Generator(device="cuda").manual_seed(1)
    a = torch.randn(150, 70, device="cuda", generator=g)
    b = torch.randn(90, 70, device="cuda", generator=g).t()  # transposed view: packed first
    out = torch.empty(150, 90, device="cuda")
    res = _cuda.matmul(a, b, out=out)
    assert res is out
    assert torch.allclose(out, a @ b, atol=1e-4, rtol=1e-4)
    q = torch.randn(2, 64, 4, 64, device="cuda", dtype=torch.float16, generator=g).transpose(
        1, 2
    )  # [B, H, T, D] view
    k = torch.randn(2, 64, 4, 64, device="cuda", dtype=torch.float16, generator=g).transpose(1, 2)
    v = torch.randn(2, 64, 4, 64, device="cuda", dtype=torch.float16, generator=g).transpose(1, 2)
    got = torch.from_dlpack(_cuda.attention(q, k, v, causal=True))
    want = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), is_causal=True
    )
    assert torch.allclose(got.float(), want, atol=4e-3, rtol=1e-2)


def test_device_arrays_cuda_array_interface_and_norms():
    torch = torch_cuda()
    g = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(64, 4096, device="cuda", dtype=torch.float16, generator=g)
    w = torch.randn(4096, device="cuda", dtype=torch.float16, generator=g)
    y = _cuda.rms_norm(x, w, 1e-6)
    assert (
        "__cuda_array_interface__" in dir(type(y))
        and y.__cuda_array_interface__["typestr"] == "<f2"
    )
    yt = torch.as_tensor(y, device="cuda")  # via __cuda_array_interface__
    want = torch.nn.functional.rms_norm(x.float(), (4096,), w.float(), 1e-6)
    assert torch.allclose(yt.float(), want, atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(y.numpy().astype(np.float32), yt.float().cpu().numpy())


def test_to_device_numpy_and_device_arrays(rng):
    # NumPy in (C-contiguous, strided view, bool) -> DeviceArray copies with the same values
    x = rand(rng, 33, 70)
    for src in (x, x[:, ::3], x.T, np.asarray(x > 0)):
        d = _cuda.to_device(src)
        assert isinstance(d, _cuda.DeviceArray) and d.shape == src.shape
        np.testing.assert_array_equal(d.numpy(), src)
    # a NumPy matmul with one operand kept on the device: the same bits, a DeviceArray result
    w = rand(rng, 70, 40)
    dw = _cuda.to_device(w)
    got = _cuda.matmul(x, dw)
    assert isinstance(got, _cuda.DeviceArray)
    np.testing.assert_array_equal(got.numpy(), _cuda.matmul(x, w))
    # device arrays: a copy (not a view) of a bfloat16 torch tensor and of a strided one
    torch = torch_cuda()
    t = torch.randn(64, 48, device="cuda", dtype=torch.bfloat16)
    for src in (t, t.t()):
        d = _cuda.to_device(src)
        back = torch.from_dlpack(d)
        assert (
            back.dtype == torch.bfloat16
            and back.data_ptr() != src.data_ptr()
            and torch.equal(back, src.contiguous())
        )
    before = torch.from_dlpack(_cuda.to_device(t)).clone()
    d = _cuda.to_device(t)
    t.add_(1)  # the copy does not follow its source
    torch.cuda.synchronize()
    assert torch.equal(torch.from_dlpack(d), before)
    # norms with every argument a DeviceArray (the C++-only import path bench_cuda times)
    xn, wn = torch.randn(16, 256, device="cuda"), torch.randn(256, device="cuda")
    out = _cuda.to_device(torch.empty(16, 256, device="cuda"))
    assert _cuda.rms_norm(_cuda.to_device(xn), _cuda.to_device(wn), 1e-6, out=out) is out
    assert torch.allclose(
        torch.from_dlpack(out),
        torch.nn.functional.rms_norm(xn, (256,), wn, 1e-6),
        atol=1e-5,
        rtol=1e-5,
    )


def test_device_arrays_on_different_streams():
    torch = torch_cuda()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        x = torch.full((256, 1024), 2.0, device="cuda")  # produced on a side stream
        w = torch.ones(1024, device="cuda")
        y = torch.from_dlpack(_cuda.rms_norm(x, w, 0.0))
    torch.cuda.synchronize()
    assert torch.allclose(y, torch.ones_like(y))


# --------------------------------------------------------------------------------------------
# attention mma_async
# --------------------------------------------------------------------------------------------
# What v3 adds over v2: a two-stage cp.async K/V ring (wrapping many times on long key ranges),
# 128-row blocks for widths <= 64 and 64-row blocks for <= 128, zero-filled tails, the v2 fallback
# when rows are not 16-byte aligned, 32-bit paired output stores (scalar when out= is only
# 2-byte aligned), and auto choosing it.
MMA_ASYNC_CASES = [
    # B, Hq, Hkv, Tq, Tk, Dh, Dv, causal
    (1, 2, 1, 600, 600, 64, 64, True),  # 10 key tiles: plain and diagonal tiles, the ring wraps
    (1, 2, 2, 300, 520, 64, 64, False),  # non-causal, ragged Tq and Tk
    (2, 2, 1, 260, 700, 128, 128, True),  # width 128 (64-row blocks), causal with Tq < Tk
    (1, 1, 1, 200, 90, 64, 64, False),  # Tq > Tk: two query blocks over a ragged key range
    (1, 2, 2, 129, 129, 40, 24, False),  # widths below the template's, Dv != Dh
    (1, 4, 4, 64, 64, 64, 64, True),  # exactly one key tile, a partly filled block, all diagonal
]


@pytest.mark.parametrize("case", MMA_ASYNC_CASES)
def test_attention_mma_async_many_tiles(rng, case):
    B, Hq, Hkv, Tq, Tk, Dh, Dv, causal = case
    q, k, v = (
        rand(rng, B, Hq, Tq, Dh, dtype=np.float16),
        rand(rng, B, Hkv, Tk, Dh, dtype=np.float16),
        rand(rng, B, Hkv, Tk, Dv, dtype=np.float16),
    )
    got = _cuda.attention(q, k, v, causal=causal, algo="mma_async")
    assert got.dtype == np.float16
    assert_close(got, attention_ref(q, k, v, causal=causal), atol=4e-3, rtol=1e-2)


def test_attention_mma_async_bias_mask_many_tiles(rng):
    B, Hq, Hkv, Tq, Tk, D = 2, 2, 1, 150, 333, 128
    q, k, v = (
        rand(rng, B, Hq, Tq, D, dtype=np.float16),
        rand(rng, B, Hkv, Tk, D, dtype=np.float16),
        rand(rng, B, Hkv, Tk, D, dtype=np.float16),
    )
    bias = rand(rng, B, 1, Tq, Tk, dtype=np.float16)  # broadcast over heads
    mask = rng.random((1, Hq, Tq, Tk)) > 0.2  # broadcast over batch
    mask[:, :, 7] = False  # row 7: zeros
    for causal in (False, True):
        got = _cuda.attention(q, k, v, causal=causal, bias=bias, mask=mask, algo="mma_async")
        assert np.all(np.asarray(got)[:, :, 7] == 0)
        assert_close(
            got, attention_ref(q, k, v, causal=causal, bias=bias, mask=mask), atol=4e-3, rtol=1e-2
        )


def test_attention_auto_runs_mma_async(rng):
    q, k, v = (rand(rng, 1, 2, 100, 64, dtype=np.float16) for _ in range(3))
    auto = _cuda.attention(q, k, v, causal=True)
    assert np.array_equal(
        np.asarray(auto), np.asarray(_cuda.attention(q, k, v, causal=True, algo="mma_async"))
    )


def test_attention_mma_async_width_not_multiple_of_8_falls_back(rng):
    q, k, v = (rand(rng, 1, 2, 70, 36, dtype=np.float16) for _ in range(3))  # p.vec false: v2 runs
    got = _cuda.attention(q, k, v, causal=True, algo="mma_async")
    assert_close(got, attention_ref(q, k, v, causal=True), atol=4e-3, rtol=1e-2)


def _sdpa_ref(torch, q, k, v, causal):
    rep = q.shape[1] // k.shape[1]  # GQA: repeat the kv heads
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return torch.nn.functional.scaled_dot_product_attention(
        q.double(), k.double(), v.double(), is_causal=causal
    )


def test_attention_mma_async_bfloat16_device_arrays():
    torch = torch_cuda()
    g = torch.Generator(device="cuda").manual_seed(3)
    q = torch.randn(1, 4, 1024, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, 2, 1024, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(1, 2, 1024, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    got = torch.from_dlpack(_cuda.attention(q, k, v, causal=True, algo="mma_async"))
    assert got.dtype == torch.bfloat16
    # P and the output are rounded to bfloat16 (2^-8 relative)
    assert torch.allclose(got.double(), _sdpa_ref(torch, q, k, v, True), atol=2e-2, rtol=2e-2)


def test_attention_mma_async_unaligned_rows_and_output():
    torch = torch_cuda()
    g = torch.Generator(device="cuda").manual_seed(4)
    B, H, T, D = 1, 2, 150, 64
    # rows 68 halves apart (136 bytes): not 16-byte aligned, so v2 runs
    q = torch.randn(B, H, T, 68, device="cuda", dtype=torch.float16, generator=g)[..., :D]
    k = torch.randn(B, H, T, 68, device="cuda", dtype=torch.float16, generator=g)[..., :D]
    v = torch.randn(B, H, T, D, device="cuda", dtype=torch.float16, generator=g)
    got = torch.from_dlpack(_cuda.attention(q, k, v, causal=True, algo="mma_async"))
    assert torch.allclose(got.double(), _sdpa_ref(torch, q, k, v, True), atol=4e-3, rtol=1e-2)
    # a base pointer 2 bytes past alignment: v2 as well
    qm = torch.empty(B * H * T * D + 1, device="cuda", dtype=torch.float16)[1:].view(B, H, T, D)
    qm.copy_(q)
    got = torch.from_dlpack(_cuda.attention(qm, k.contiguous(), v, causal=True, algo="mma_async"))
    assert torch.allclose(got.double(), _sdpa_ref(torch, q, k, v, True), atol=4e-3, rtol=1e-2)
    # aligned inputs (v3 runs) into an out= that is only 2-byte aligned: element-wise stores
    out = torch.empty(B * H * T * D + 1, device="cuda", dtype=torch.float16)[1:].view(B, H, T, D)
    _cuda.attention(q.contiguous(), k.contiguous(), v, causal=True, algo="mma_async", out=out)
    assert torch.allclose(out.double(), _sdpa_ref(torch, q, k, v, True), atol=4e-3, rtol=1e-2)


# --------------------------------------------------------------------------------------------
# matmul versions 4 and 5: wgmma (Hopper, sm_90a builds)
# --------------------------------------------------------------------------------------------
# What they add: the B -> B^T pre-pass (one copy when B is broadcast, one per batch otherwise, K
# padded to 8), 128-byte-swizzled cp.async tiles read through wgmma descriptors, K steps of 64 with
# a 4-slot ring, the m64n256 accumulator layout in the epilogue, B read as it lies (wgmma_direct),
# the TMA feed (wgmma_tma), and the version 3 fallback for rows that are not 16-byte aligned.
def wgmma_or_skip(a, b, algo="wgmma", **kw):
    try:
        return _cuda.matmul(a, b, algo=algo, **kw)
    except ValueError as exc:
        if "Hopper" in str(exc):
            pytest.skip(f"wgmma does not run here: {exc}")
        raise


WGMMA_SHAPES = [
    ((1, 8), (8, 1)),  # one element, one chunk
    ((4, 0), (0, 3)),
    ((0, 8), (8, 5)),  # K = 0 (no B^T scratch: C = 0), M = 0
    ((130, 72), (72, 260)),  # ragged M and N tiles, two K steps (64 + 8)
    ((64, 200), (200, 40)),  # 4 K steps: the ring fills, partial last step
    ((257, 1000), (1000, 513)),  # 16 K steps: the ring wraps 4 times, 3x3 tiles
    ((2, 3, 33, 16), (16, 24)),  # batch, B broadcast: one transposed copy
    ((3, 20, 24), (3, 24, 300)),  # batched B: one transposed copy per batch
    ((4, 1, 8, 24), (1, 3, 24, 40)),  # broadcast on both sides
    ((128, 4096), (4096, 256)),  # one block, a long K: FP32 accumulation
    ((40, 520), (520, 24)),  # 9 K steps: the ring wraps twice
    ((64, 64), (64, 100)),  # N % 8 != 0: direct B rows are not 16-byte aligned (transposed path)
]


# wgmma (B transposed first), wgmma_direct (B read through an MN-major descriptor instead) and
# wgmma_tma (that, fed by TMA and mbarriers; one matrix, or a batch that folds into one, else
# wgmma_direct)
@pytest.mark.parametrize("algo", ["wgmma", "wgmma_direct", "wgmma_tma"])
@pytest.mark.parametrize("sa, sb", WGMMA_SHAPES)
def test_matmul_wgmma_float16(rng, sa, sb, algo):
    a, b = rand(rng, *sa, dtype=np.float16), rand(rng, *sb, dtype=np.float16)
    got = wgmma_or_skip(a, b, algo)
    want = a.astype(np.float64) @ b.astype(np.float64)
    assert got.dtype == np.float16
    assert_close(got, want, atol=1e-3 * np.sqrt(sa[-1]), rtol=2e-3)  # as test_matmul_float16


@pytest.mark.parametrize("K", [1, 7, 17, 63])
def test_matmul_wgmma_unaligned_rows_fall_back(rng, K):
    # K % 8 != 0: A's rows are not 16-byte aligned, so version 3 (mma) runs; same results
    a, b = rand(rng, 40, K, dtype=np.float16), rand(rng, K, 70, dtype=np.float16)
    got = wgmma_or_skip(a, b)
    assert_close(
        got, a.astype(np.float64) @ b.astype(np.float64), atol=1e-3 * np.sqrt(K), rtol=2e-3
    )


def test_matmul_wgmma_transposed_weight_and_auto(rng):
    # x @ W.T as the models call it (B a transposed view), and auto picking wgmma_tma on Hopper
    x, w = rand(rng, 96, 320, dtype=np.float16), rand(rng, 200, 320, dtype=np.float16)
    got = wgmma_or_skip(x, w.T, "wgmma_tma")
    assert _cuda.matmul_last_kernel() == "wgmma_tma"
    assert_close(
        got, x.astype(np.float64) @ w.T.astype(np.float64), atol=1e-3 * np.sqrt(320), rtol=2e-3
    )
    np.testing.assert_array_equal(
        _cuda.matmul(x, w.T), got
    )  # auto = wgmma_tma here (same kernel, same bits)
    assert _cuda.matmul_last_kernel() == "wgmma_tma"


@pytest.mark.parametrize("algo", ["wgmma", "wgmma_direct", "wgmma_tma"])
def test_matmul_wgmma_bfloat16_device_arrays(algo):
    torch = torch_cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(2, 300, 256, device="cuda", dtype=torch.bfloat16, generator=g)
    b = torch.randn(256, 520, device="cuda", dtype=torch.bfloat16, generator=g)
    try:
        c = torch.from_dlpack(_cuda.matmul(a, b, algo=algo))
    except ValueError as exc:
        if "Hopper" in str(exc):
            pytest.skip(f"wgmma does not run here: {exc}")
        raise
    want = a.double() @ b.double()
    assert torch.allclose(c.double(), want, atol=0.15, rtol=1e-2)
    out = torch.empty(2, 300, 520, device="cuda", dtype=torch.bfloat16)
    _cuda.matmul(a, b, algo=algo, out=out)
    assert torch.equal(out, c)


@pytest.mark.parametrize("algo", ["auto", "wgmma_tma"])
@pytest.mark.parametrize(
    "M, K, N", [(300, 256, 520), (4096, 4096, 4096), (129, 72, 300), (1, 64, 8), (8192, 128, 8192)]
)
def test_matmul_tma_one_matrix_bfloat16(M, K, N, algo):
    # one matrix, so the TMA path itself runs (ragged edges: the TMA zero-fills past them); 4096^3
    # and 8192 x 128 x 8192 (2048 tiles of 2 K steps) give many tiles per SM.
    # N = 300: B's rows (600 bytes) break the TMA's 16-byte stride rule, so the cp.async kernel runs
    torch = torch_cuda()
    if algo == "auto":  # auto runs mma off Hopper: skip there as the named algos do
        wgmma_or_skip(np.ones((8, 8), np.float16), np.ones((8, 8), np.float16))
    g = torch.Generator(device="cuda").manual_seed(1)
    a = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=g)
    b = torch.randn(K, N, device="cuda", dtype=torch.bfloat16, generator=g)
    try:
        c = torch.from_dlpack(_cuda.matmul(a, b, algo=algo)).double()
    except ValueError as exc:
        if "Hopper" in str(exc):
            pytest.skip(f"wgmma does not run here: {exc}")
        raise
    # not a silent fallback where the TMA applies (e.g. a driver without the TMA encoder); B's rows
    # not 16-byte aligned: wgmma, through the transposed copy
    assert _cuda.matmul_last_kernel() == ("wgmma_tma" if N % 8 == 0 else "wgmma")
    want = a.double() @ b.double()
    assert torch.allclose(c, want, atol=0.02 * K**0.5, rtol=1e-2)


@pytest.mark.parametrize(
    "sa, sb, folds",
    [
        (
            (2, 300, 256),
            (256, 520),
            True,
        ),  # x [B, T, D] @ W: the batch folds into M (one TMA problem)
        ((2, 3, 40, 64), (64, 72), True),  # two batch dimensions
        ((3, 20, 64), (3, 64, 296), False),  # B batched: stays batched (the cp.async kernels)
    ],
)
def test_matmul_tma_batch_fold(rng, sa, sb, folds):
    a, b = rand(rng, *sa, dtype=np.float16), rand(rng, *sb, dtype=np.float16)
    got = wgmma_or_skip(a, b, "wgmma_tma")
    # folded: the TMA kernel itself; else wgmma_direct
    assert _cuda.matmul_last_kernel() == ("wgmma_tma" if folds else "wgmma_direct")
    want = a.astype(np.float64) @ b.astype(np.float64)
    assert got.shape == want.shape
    assert_close(got, want, atol=1e-3 * np.sqrt(sa[-1]), rtol=2e-3)
    if folds:  # the same rows as one [B T, D] matrix: the same bits
        flat = wgmma_or_skip(a.reshape(-1, sa[-1]), b, "wgmma_tma")
        np.testing.assert_array_equal(got.reshape(flat.shape), flat)
