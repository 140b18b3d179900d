"""The cache the cpp kernels' large outputs come from (cpp/outputs.h): a freed output's block is
handed to the next output of its size, an output still alive never shares memory with another,
and the limit bounds what is kept.  Run for every ISA module this CPU executes."""

from __future__ import annotations

import numpy as np
import pytest

import pyworkloads.kernels as K
from pyworkloads.kernels import reference

if "cpp" not in K.available():
    pytest.skip(
        f"the cpp backend is unavailable: {K.unavailable_reason('cpp')}", allow_module_level=True
    )

from pyworkloads import _kernels  # noqa: E402

MIB = 1 << 20


@pytest.fixture(params=_kernels.isas())
def mod(request):
    """One ISA module, its cache emptied first and its limit restored after."""
    m = _kernels.module(request.param)
    before = m._output_cache()["limit"]
    m._output_cache(0)
    m._output_cache(before)
    yield m
    m._output_cache(before)


def big(rng, rows=512, cols=1024):                       # 2 MiB of float32
    return rng.standard_normal((rows, cols)).astype(np.float32)


def test_a_freed_output_is_reused_by_the_next_of_its_size(mod, rng):
    x = big(rng)
    y = mod.gelu(x)
    block = y.ctypes.data
    assert y.flags.c_contiguous and y.flags.writeable and block % 64 == 0
    del y
    s0 = mod._output_cache()
    assert s0["idle_bytes"] == x.nbytes and s0["idle_blocks"] == 1
    z = mod.gelu(x)
    s1 = mod._output_cache()
    assert z.ctypes.data == block and s1["hits"] == s0["hits"] + 1 and s1["idle_bytes"] == 0
    np.testing.assert_allclose(z, reference.gelu(x), rtol=1e-6, atol=1e-6)


def test_live_outputs_never_share_memory_and_every_op_uses_the_cache(mod, rng):
    """Outputs of matmul, matmul_group, attention, the norms and gelu, all alive at once: each
    correct, none sharing memory with another, each block returned when its array goes."""
    a, b = big(rng, 512, 256), big(rng, 256, 1024)
    q = rng.standard_normal((1, 2, 512, 256)).astype(np.float32)
    w = rng.standard_normal(1024).astype(np.float32)
    outs = {"matmul": (mod.matmul(a, b), reference.matmul(a, b)),
            "gelu": (mod.gelu(a @ b), reference.gelu(a @ b)),
            "rms_norm": (mod.rms_norm(a @ b, w, 1e-6), reference.rms_norm(a @ b, w, 1e-6)),
            "layer_norm": (mod.layer_norm(a @ b, w, w, 1e-5),
                           reference.layer_norm(a @ b, w, w, 1e-5)),
            "attention": (mod.attention(q, q, q), reference.attention(q, q, q))}
    g1, g2 = mod.matmul_group(a[:4], [b, b])
    outs["group0"] = (g1, reference.matmul(a[:4], b))
    outs["group1"] = (g2, reference.matmul(a[:4], b))
    got = [o for o, _ in outs.values()]
    for i, x in enumerate(got):
        for y in got[i + 1:]:
            assert not np.shares_memory(x, y)
    for name, (o, want) in outs.items():
        np.testing.assert_allclose(o, want, rtol=1e-4, atol=1e-4, err_msg=name)
    idle = mod._output_cache()["idle_bytes"]
    del outs, got, o
    # matmul, gelu and the two norms 2 MiB each, attention 1 MiB; the group's 16 KB are malloc's
    assert mod._output_cache()["idle_bytes"] == idle + 4 * 2 * MIB + MIB


def test_the_limit_bounds_what_is_kept(mod, rng):
    x = big(rng)
    ys = [mod.gelu(x) for _ in range(3)]                 # three live 2 MiB outputs
    mod._output_cache(3 * MIB)
    del ys                                              # only one fits under 3 MiB
    s = mod._output_cache()
    assert s["idle_blocks"] == 1 and s["idle_bytes"] == 2 * MIB
    mod._output_cache(0)                                # off: releases it, keeps nothing
    y = mod.gelu(x)
    np.testing.assert_allclose(y, reference.gelu(x), rtol=1e-6, atol=1e-6)
    del y
    assert mod._output_cache()["idle_bytes"] == 0


def test_small_outputs_do_not_use_the_cache(mod, rng):
    x = rng.standard_normal((4, 64)).astype(np.float32)
    s0 = mod._output_cache()
    mod.gelu(x)
    s1 = mod._output_cache()
    assert (s1["hits"], s1["misses"], s1["idle_bytes"]) == (s0["hits"], s0["misses"],
                                                             s0["idle_bytes"])


def test_output_cache_limit_applies_to_every_module_and_bad_limits_are_refused(rng):
    before = _kernels.output_cache()["limit"]
    try:
        assert K.cpu_output_cache(5 * MIB)["limit"] == 5 * MIB
        for isa in _kernels.isas():
            assert _kernels.module(isa)._output_cache()["limit"] == 5 * MIB
        for bad in (-1, 1.5, True, "1"):
            with pytest.raises(ValueError, match="limit must be a number of bytes >= 0"):
                _kernels.output_cache(bad)
        with pytest.raises(ValueError, match="limit must be a number of bytes >= 0"):
            _kernels.module(_kernels.isas()[0])._output_cache(-1)
    finally:
        _kernels.output_cache(before)


def test_an_output_whose_size_overflows_is_refused(mod):
    """Zero-stride operands make a 2^31 x 2^31 product from no memory at all: its 2^64 bytes
    must be refused by name, not wrapped around to a small block the kernel then overruns."""
    a = np.broadcast_to(np.float32(1), (2**31, 1))
    b = np.broadcast_to(np.float32(1), (1, 2**31))
    with pytest.raises(ValueError, match=r"shape \(2147483648, 2147483648\) is too large"):
        mod.matmul(a, b)


def test_a_recycled_block_never_shows_its_old_contents(mod):
    """A block comes back holding its last array's values (fresh pages were zeros): every output
    element must be written, down to the empty reductions whose answer is all zeros."""
    def stale(shape):
        mod.gelu(np.full(shape, 7.0, np.float32))         # freed at once: its block, full of 7s
        assert mod._output_cache()["idle_bytes"] >= np.prod(shape) * 4

    stale((1024, 512))
    np.testing.assert_array_equal(
        mod.matmul(np.zeros((1024, 0), np.float32), np.zeros((0, 512), np.float32)), 0.0)
    stale((1024, 512))
    (y,) = mod.matmul_group(np.zeros((1024, 0), np.float32), [np.zeros((0, 512), np.float32)])
    np.testing.assert_array_equal(y, 0.0)
    stale((1, 2, 512, 256))
    q, empty = np.ones((1, 2, 512, 256), np.float32), np.zeros((1, 2, 0, 256), np.float32)
    np.testing.assert_array_equal(mod.attention(q, empty, empty), 0.0)
    stale((1, 2, 512, 256))
    q = np.ones((1, 2, 512, 256), np.float32)
    mask = np.zeros((512, 512), bool)                      # no key allowed: zeros, as the reference
    np.testing.assert_array_equal(mod.attention(q, q, q, mask=mask), 0.0)
