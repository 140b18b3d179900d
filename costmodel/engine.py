"""Layer records from the engine's own forward pass.

The cost model has no second description of any model: a family module (``graphs/<model>.py``)
runs the pyworkloads forward functions under :func:`pyworkloads.kernels.trace` -- shapes only,
no arithmetic -- and :func:`add_trace` turns what the trace saw into :class:`~costmodel.graph.Layer`
records, one per kernel call:

==============  ==================================================================================
trace record    layer record
==============  ==================================================================================
matmul          with a weight operand: a weight GEMM named after the weight's module
                (``model.layers.3.mlp.up_proj``) -- or after the scope using it, for a tied
                weight (``lm_head`` reads the embedding table) --, op ``conv`` when the stored
                weight is a convolution kernel; the bias add that follows it joins it as its
                epilogue (and as a NumPy call in its ``work`` column).
                Without one: a product of activations, named after the table its rows were
                gathered from (SAM's ``rel_pos_h``), else ``<scope>.matmul``.
attention       named after the scope; K/V read from a KV-cache buffer are ``cache`` traffic
                (the positions written this step are the cache writes), stored cross-attention
                K/V are ``cross`` traffic, anything else is an activation.
rms_norm,       named after the weight's module.
layer_norm
gelu            an activation named ``<scope>.gelu``.
embedding       a table lookup: the rows read.
elementwise     every ufunc the engine applied outside the kernels (residual adds, RoPE,
                activations, scaling), summed per scope into one ``<scope>.elementwise``
                record: its FLOPs are what ran, its traffic is fused away unless
                ``fuse_elementwise=False``; weights it reads (position tables) are charged.
                Its ``work`` column lists the calls per function -- ``name:calls:elements:
                loops`` -- which a calibrated profile prices one by one (an exponential costs
                more than an add; a strided or broadcast operand costs a loop per row).
==============  ==================================================================================

Tensor parallelism is the one term added analytically, per family (:class:`TensorParallel`):
which weight GEMMs are column- or row-parallel, and which scopes hold sharded activations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pyworkloads.kernels.tracing import Trace, Traced, TraceRecord

from .graph import GraphBuilder, Layer, _shape

__all__ = ["TensorParallel", "add_trace", "module_name"]


@dataclass(frozen=True)
class TensorParallel:
    """Megatron-style sharding of a family: weight modules whose name ends in one of ``col`` split
    their output width, ``row`` their input width (an all-reduce follows); elementwise work in a
    scope ending in one of ``sharded`` runs on 1/tp of the activations."""
    col: tuple[str, ...] = ()
    row: tuple[str, ...] = ()
    sharded: tuple[str, ...] = ()

    def parallel(self, name: str) -> str | None:
        last = name.rsplit(".", 1)[-1]
        return "col" if last in self.col else "row" if last in self.row else None

    def is_sharded(self, scope: str) -> bool:
        return scope.rsplit(".", 1)[-1] in self.sharded


def module_name(tensor: str) -> str:
    """``model.layers.3.mlp.up_proj.weight`` -> ``model.layers.3.mlp.up_proj``."""
    for suffix in (".weight", ".bias"):
        if tensor.endswith(suffix):
            return tensor[: -len(suffix)]
    return tensor


def _weight(x) -> str | None:
    """The checkpoint tensor a traced operand reads, if it is one."""
    if isinstance(x, Traced) and x.source is not None and x.source.kind == "weight":
        return x.source.name
    return None


def _elems(x) -> int:
    """Distinct elements an operand reads (a real array the trace was given: all of them)."""
    return x.unique if isinstance(x, Traced) else int(np.size(x))


def _traced(xs) -> list[Traced]:
    return [x for x in xs if isinstance(x, Traced)]


class _Converter:
    def __init__(self, gb: GraphBuilder, tp: TensorParallel):
        self.gb, self.tp = gb, tp
        self.gemms: dict[str, tuple] = {}          # weight module -> (GEMM record, parallel)
        self.gemm_inputs: set[int] = set()         # id() of the activations GEMMs have read
        self.elementwise: dict[str, dict] = {}     # scope -> running sums

    def matmul(self, r: TraceRecord) -> None:
        a, b = r.inputs[0], r.inputs[1]
        out = r.output
        M, K, N = a.shape[-2], a.shape[-1], out.shape[-1]
        batch = math.prod(out.shape[:-2])
        w = b if _weight(b) else a if _weight(a) else None
        if w is None:                                  # a product of two activations
            origin = next((x.origin for x in (b, a) if isinstance(x, Traced) and x.origin), None)
            name = module_name(origin) if origin else f"{r.scope}.matmul" if r.scope else "matmul"
            self.gb.matmul_record(name, batch, M, K, N, a_elems=_elems(a), b_elems=_elems(b))
            return
        name = module_name(w.source.name)
        if r.scope and not name.startswith(r.scope):   # a tied weight: the module using it names it
            name = r.scope
        x = a if w is b else b
        op = "conv" if len(w.source.shape) >= 3 else "matmul"
        parallel = self.tp.parallel(name)
        rec = self.gb.weight_gemm(name, op, rows=batch * M, d_in=K, d_out=N, weight_elems=w.unique,
                                  act_in_elems=_elems(x), act_out_elems=out.size, parallel=parallel,
                                  tensor=w.source.name)
        self.gemms[name] = (rec, parallel)
        if isinstance(x, Traced):                      # q/k/v (gate/up) read one tensor
            data = id(x if x.base is None else x.base)  # views of it (reshapes) included
            if data in self.gemm_inputs:
                rec.bytes_act_transient = rec.bytes_act_in
            self.gemm_inputs.add(data)

    def attention(self, r: TraceRecord) -> None:
        q, k, v, bias = r.inputs[0], r.inputs[1], r.inputs[2], r.inputs[3]
        rel_pos = r.inputs[5:7]                          # (rel_h, rel_w) of a decomposed bias
        B, H, Tq, Dh = q.shape
        src = k.source
        if src is not None and src.kind == "kv":
            kv, new = "cache", src.written
        elif src is not None and src.kind == "cross":
            kv, new = "cross", 0
        else:
            kv, new = "none", 0
        self.gb.attention(r.scope or "attention", B, H, k.shape[1], Tq, k.shape[2], Dh,
                          dv=v.shape[3], causal=bool(r.options.get("causal")),
                          bias=(bias is not None) + 2 * bool(rel_pos), kv_cache=kv, new_kv=new,
                          bias_elems=sum(t.unique for t in (bias, *rel_pos)
                                         if isinstance(t, Traced)))

    def norm(self, r: TraceRecord) -> None:
        x = r.inputs[0]
        params = [p for p in (r.inputs[1:3] if r.op == "layer_norm" else r.inputs[1:2])
                  if isinstance(p, Traced)]
        name = module_name(_weight(params[0])) if params and _weight(params[0]) else r.scope or r.op
        D = x.shape[-1]
        self.gb.norm(name, r.op, x.size // D, D, affine=len(params))

    def embedding(self, r: TraceRecord) -> None:
        table, out = r.inputs[0], r.output
        width = table.shape[-1] if table.ndim > 1 else 1
        self.gb.embedding(module_name(table.source.name), out.size // width, width)

    def ufunc(self, r: TraceRecord) -> None:
        ins = _traced(r.inputs)
        bias = [x for x in ins if _weight(x) and _weight(x).endswith(".bias")]
        if r.what == "add" and r.options.get("in_place") and bias:
            gemm = self.gemms.get(module_name(_weight(bias[0])))
            if gemm is not None:                       # the bias add of a GEMM: its epilogue
                self.gb.add_bias(gemm[0], gemm[1], r.output.size, bias[0].size,
                                 loops=_ufunc_work(ins, r.output)[1])
                return
        acc = self.elementwise.get(r.scope)
        if acc is None:
            acc = self.elementwise[r.scope] = dict(flops=0, weights=0, act_in=0, act_out=0, what={},
                elems=0, calls=0, work={}, kept=0)
            self.gb.layers.append(None)                # placeholder, filled in at the end
            acc["slot"] = len(self.gb.layers) - 1
        acc["flops"] += r.flops
        acc["calls"] += 1
        acc["elems"] = max(acc["elems"], r.output.size if r.output is not None else 0)
        acc["what"][r.what] = acc["what"].get(r.what, 0) + 1
        w = acc["work"].setdefault(r.what, [0, 0, 0])
        for i, v in enumerate((1, *_ufunc_work(ins, r.output))):
            w[i] += v
        acts = [x for x in ins if not _weight(x)]
        for x in ins:
            if _weight(x):
                acc["weights"] += x.unique
            else:
                acc["act_in"] += x.unique
        acc["kept"] += _kept_by_backward(r.what, acts, r.output)
        if r.output is not None:
            acc["act_out"] += r.output.size

    def finish(self) -> None:
        for scope, acc in self.elementwise.items():
            what = " ".join(f"{k}x{n}" if n > 1 else k for k, n in acc["what"].items())
            split = self.gb.tp if self.tp.is_sharded(scope) else 1
            work = " ".join(f"{k.replace(' ', '_')}:{c}:{e // split}:{lo // split}"
                            for k, (c, e, lo) in acc["work"].items())
            self.gb.scope = scope
            self.gb.elementwise_record(f"{scope}.elementwise" if scope else "elementwise",
                                       flops=acc["flops"] // split, what=what,
                                       shape=_shape(acc["elems"] // split),
                                       weight_elems=acc["weights"],
                                       act_in_elems=acc["act_in"] // split,
                                       act_out_elems=acc["act_out"] // split, at=acc["slot"],
                                       calls=acc["calls"], work=work,
                                       kept_elems=acc["kept"] // split)


# NumPy calls whose gradient needs none of their inputs (sums, differences, copies) or, applied to
# one activation, only their output (an exponential's or a logistic's derivative is its value)
_KEEP_NOTHING = frozenset(("add", "subtract", "negative", "positive", "concatenate", "copy",
                           "reshape copy", "stack", "where", "take", "transpose copy"))
_KEEP_OUTPUT = frozenset(("exp", "expit", "tanh", "sqrt"))


def _kept_by_backward(what: str, acts: list[Traced], out: Traced | None) -> int:
    """Elements of one NumPy call's activations that a backward pass keeps, as autograd does: none
    for sums and copies; for a product or quotient both operands when both are activations,
    none when the other operand is a constant (the constant is kept); the output of an
    exponential-like function; otherwise (not classified) every activation input."""
    if what in _KEEP_NOTHING:
        return 0
    if what in ("multiply", "divide", "true_divide"):
        return sum(x.unique for x in acts) if len(acts) >= 2 else 0
    if what in _KEEP_OUTPUT and out is not None:
        return out.size
    return sum(x.unique for x in acts)


def _ufunc_work(ins: list[Traced], out: Traced | None) -> tuple[int, int]:
    """(elements, inner loops) of one NumPy call: the elements of its largest operand, and --
    when an operand is strided or broadcast, so that NumPy walks the arrays one row at a time --
    how many rows of the last axis it walks (each costs NumPy a loop set-up)."""
    arrays = ins + ([out] if out is not None else [])
    if not arrays:
        return 0, 0
    big = max(arrays, key=lambda x: x.size)
    plain = all(x.contig and (x.shape == big.shape or x.size == 1) for x in arrays)
    inner = big.shape[-1] if big.ndim else 1
    return big.size, 0 if plain else big.size // max(inner, 1)


def add_trace(gb: GraphBuilder, trace: Trace, tp: TensorParallel = TensorParallel()) -> list[Layer]:
    """Append the layer records of a traced forward pass to ``gb`` (see the module docstring)."""
    c = _Converter(gb, tp)
    for r in trace.records:
        gb.scope = r.scope
        if r.op == "matmul":
            c.matmul(r)
        elif r.op == "attention":
            c.attention(r)
        elif r.op in ("rms_norm", "layer_norm"):
            c.norm(r)
        elif r.op == "gelu":
            gb.gelu(f"{r.scope}.gelu" if r.scope else "gelu", r.output.size,
                    sharded=tp.is_sharded(r.scope))
        elif r.op == "embedding":
            c.embedding(r)
        elif r.op == "elementwise":
            c.ufunc(r)
        elif r.op != "kv_write":                       # cache writes are the attention's traffic
            raise ValueError(f"trace record of unknown op {r.op!r}")
    c.finish()
    gb.scope = ""
    return gb.layers
