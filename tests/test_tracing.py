"""pyworkloads.kernels.trace(): shape-only runs of NumPy code.

The shapes a traced function computes must be the shapes the same function computes on real
arrays, every dispatched kernel must be recorded with the MACs/FLOPs that pw.profile() counts for
the real call, and anything that would depend on values must be refused."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import special

import pyworkloads as pw
from pyworkloads import kernels, ops
from pyworkloads.kernels.tracing import Source, Traced, kv_zeros, traced_weights
from pyworkloads.models.common import KVCache, layer_norm, linear


def block(x, weights, cache=None):
    """A little of everything the models do: a conv stem, a padded window reshape, a biased
    projection, an attention with a KV cache, a norm, GELU, a residual, gathers and
    concatenation."""
    with kernels.scope("stem"):
        x = ops.conv2d(x, weights["stem.weight"], weights["stem.bias"],
                       stride=2, padding=1)                                   # [B, C, 4, 4]
    B, C, Hh, Ww = x.shape
    x = np.pad(x.transpose(0, 2, 3, 1), ((0, 0), (0, 1), (0, 1), (0, 0)))     # [B, 5, 5, C]
    x = x.reshape(B, 25, C)
    cls = np.broadcast_to(weights["cls"], (B, 1, C))
    x = np.concatenate([cls, x], axis=1)                                      # [B, 26, C]
    with kernels.scope("blk"):
        h = layer_norm(x, weights, "blk.ln", 1e-5)
        q = linear(h, weights, "blk.q").reshape(B, 26, 2, C // 2).transpose(0, 2, 1, 3)
        k = linear(h, weights, "blk.k").reshape(B, 26, 2, C // 2).transpose(0, 2, 1, 3)
        if cache is not None:
            k, _ = cache.append(0, k, k)
            cache.advance(26)
        o = kernels.attention(q, k, k, causal=True)                           # [B, 2, 26, C/2]
        x = x + ops.gelu(o.transpose(0, 2, 1, 3).reshape(B, 26, C))
        x = x * special.expit(x)
    return np.where(np.arange(26)[None, :, None] > 3, x, 0.0)[:, 0]           # [B, C]


SHAPES = {"stem.weight": (8, 3, 3, 3), "stem.bias": (8,), "cls": (1, 1, 8), "blk.ln.weight": (8,),
          "blk.ln.bias": (8,), "blk.q.weight": (8, 8), "blk.q.bias": (8,), "blk.k.weight": (8, 8)}


def test_traced_shapes_and_kernel_counts_equal_a_real_run():
    rng = np.random.default_rng(0)
    weights = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    with pw.profile() as prof:
        real = block(x, weights)
    with kernels.trace() as tr:
        traced = block(Traced(x.shape), traced_weights(SHAPES))
    assert traced.shape == real.shape and traced.dtype == real.dtype
    kernel_calls = [r for r in tr.records if r.op in ("matmul", "attention", "layer_norm", "gelu")]
    assert [(r.op, r.scope, r.macs, r.flops) for r in kernel_calls] == \
        [(r.op, r.name, r.macs, r.flops) for r in prof.records]
    # the conv's im2col GEMM reads the stem weight; the padded image is read once (unique elements)
    conv = kernel_calls[0]
    assert conv.inputs[1].source.name == "stem.weight" and conv.inputs[1].unique == 8 * 27
    assert conv.inputs[0].unique == 2 * 3 * 10 * 10
    ops_seen = {r.what for r in tr.records if r.op == "elementwise"}
    assert {"add", "multiply", "expit", "where", "pad", "concatenate"} <= ops_seen


def test_elementwise_flops_are_one_per_element_per_ufunc():
    x = Traced((4, 5))
    with kernels.trace() as tr:
        y = np.exp(x) * 2.0 + x
        y = np.concatenate([y, y], axis=0)
    assert [(r.what, r.flops) for r in tr.records] == [("exp", 20), ("multiply", 20), ("add", 20),
                                                       ("concatenate", 0)]
    assert y.shape == (8, 5)


def test_kv_cache_writes_are_counted_and_read_back_as_cache():
    cache = KVCache(1, 2, 2, 4, capacity=40, zeros=kv_zeros())
    cache.advance(30)
    k = Traced((2, 2, 3, 4))
    with kernels.trace() as tr:
        ks, vs = cache.append(0, k, k)
        kernels.attention(Traced((2, 2, 3, 4)), ks, vs, causal=True)
    assert ks.shape == (2, 2, 33, 4) and ks.source.kind == "kv" and ks.source.written == 3
    att = [r for r in tr.records if r.op == "attention"][0]
    assert att.inputs[1].source.kind == "kv" and att.macs == 2 * 2 * 3 * 33 * 8


def test_embedding_gather_of_a_weight_is_recorded_with_the_rows_read():
    table = traced_weights({"emb.weight": (1000, 16)})["emb.weight"]
    ids = np.zeros((3, 7), np.int64)
    with kernels.trace() as tr:
        rows = table[ids]
    assert rows.shape == (3, 7, 16)
    assert tr.records[0].op == "embedding" and tr.records[0].output.size == 3 * 7 * 16
    assert rows.source is None                       # the rows are an activation from here on


def test_huge_shapes_cost_nothing():
    x = Traced((64, 4096, 28672))                                    # 30 GB if it were real
    with kernels.trace() as tr:
        y = kernels.matmul(x, Traced((28672, 8192)))
        z = np.pad(y, ((0, 0), (0, 1), (0, 0)))[:, 1:]
    assert z.shape == (64, 4096, 8192) and tr.records[0].macs == 64 * 4096 * 28672 * 8192


@pytest.mark.parametrize("bad", [
    lambda x: np.asarray(x),
    lambda x: np.ascontiguousarray(x),
    lambda x: float(x[0, 0]),
    lambda x: bool(x.sum() > 0),
    lambda x: x @ x,
    lambda x: np.linalg.norm(x),
    lambda x: x[x[0]],
])
def test_value_dependent_code_is_refused(bad):
    with kernels.trace(), pytest.raises(TypeError, match="trace"):
        bad(Traced((3, 3)))


def test_source_survives_views_and_conversion():
    w = Traced((6, 4), source=Source("weight", "a.weight", (6, 4)))
    v = w.T.reshape(2, 12).astype(np.float16)[:, :6]
    assert v.source.name == "a.weight" and v.shape == (2, 6) and v.dtype == np.float16
    assert not v.contig and ops.contiguous(v).contig and ops.contiguous(v).source is v.source
    assert ops.contiguous(w) is w


def test_copies_numpy_makes_are_recorded_where_numpy_makes_them():
    """A reshape of a strided view and ops.contiguous of one copy the data (as NumPy does); a
    reshape of a contiguous array and a leading-axis slice are free views."""
    rng = np.random.default_rng(0)
    real = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    cases = [lambda x: x.reshape(6, 20),                        # view
             lambda x: x.transpose(0, 2, 1, 3).reshape(2, 4, 15),   # copy
             lambda x: x[1:],                                   # view
             lambda x: ops.contiguous(x[:, :, 1:3]),            # copy
             lambda x: ops.contiguous(x[0]),                    # view
             lambda x: x.astype(np.float32)]                    # astype copies by default
    for f in cases:
        out = f(real)
        copied = not np.shares_memory(out, real)
        with kernels.trace() as tr:
            traced = f(Traced(real.shape))
        recorded = [r.what for r in tr.records]
        assert traced.shape == out.shape
        assert bool(recorded) == copied, (recorded, copied)
        assert traced.contig == out.flags.c_contiguous


IDS = np.array([[1, 2, 3], [0, 1, 2]])


@pytest.mark.parametrize("idx", [IDS, (slice(None), IDS), (IDS, slice(None), IDS), (Ellipsis, IDS),
                                 (0, slice(None), IDS), (slice(1, 3), None, IDS), (IDS, 2),
                                 (np.arange(5), np.arange(5)), (Ellipsis, 0, IDS)])
def test_gather_shapes_follow_numpys_advanced_indexing(idx):
    """Computed without walking the index arrays (a [batch, tokens] id array can be huge)."""
    real = np.zeros((5, 6, 7, 8))[idx]
    assert Traced((5, 6, 7, 8))[idx].shape == real.shape
