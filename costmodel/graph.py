"""Per-layer records (:class:`Layer`), precisions, and the builder that emits the records.

``costmodel.engine`` walks a shape-only trace of the engine's forward pass and calls one builder
method per kernel: ``weight_gemm`` (linear layers and convolutions as their im2col GEMMs, with
``add_bias`` for a fused bias), ``matmul_record`` (products of two activations), ``attention``,
``norm``, ``gelu``, ``embedding``, ``elementwise_record`` and ``allreduce``.  Each method counts
the work of that kernel under the conventions of the README's cost-model section and appends a
:class:`Layer`.  Times are filled in afterwards by :mod:`costmodel.roofline` for a given device,
so the same records serve every device.

Counts (all exact integers):
  macs         multiply-accumulates of matrix products / convolutions actually executed
  flops        all floating-point work actually executed (2·macs + softmax, norm, activation ...)
  flops_vector the part of ``flops`` that runs on vector units (not tensor cores): softmax, norms,
               activations, bias adds -- timed at the device's vector peak
  flops_dense  2·macs at full unmasked extent (PyTorch FlopCounterMode's convention)
The engine-facing conventions (attention softmax = 6 FLOPs per score (+1 with a bias), rms_norm
4 per element, layer_norm 5 + 1 per affine term, GELU 5) are those of ``pyworkloads.kernels``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields

from .gguf import FORMATS as GGUF_FORMATS
from .gguf import MIXES as GGUF_MIXES
from .gguf import block_bytes

__all__ = ["Layer", "Precision", "GraphBuilder", "DTYPE_BYTES", "SCHEMA"]

# storage bytes per element; int4 adds its group-scale metadata in Precision.weight_bytes; a GGUF
# block format's figure (scales included) is exact -- bytes per block / weights per block
DTYPE_BYTES = {"fp32": 4.0, "tf32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0,
               "int4": 0.5, **{f: size / block for f, (block, size) in GGUF_FORMATS.items()}}
ACT_DTYPES = ("fp32", "bf16", "fp16", "fp8")
# weights: llama.cpp's block formats (q8_0, q4_0, q4_1, q4_k, q6_k) and its q4_k_m recipe too
WEIGHT_DTYPES = ("fp32", "bf16", "fp16", "fp8", "int8", "int4", *GGUF_FORMATS, *GGUF_MIXES)
KV_DTYPES = ("fp32", "bf16", "fp16", "fp8", "int8")
# the modules of token-embedding tables (a tied head reads one of them)
TOKEN_TABLES = ("embed_tokens", "token_embedding")

# FLOPs per element of the dispatched GELU kernel (scale, erf, add, two multiplies), as
# pyworkloads.kernels counts it; elementwise work outside the kernels is counted by the trace.
GELU_FLOPS = 5


@dataclass
class Layer:
    """One kernel of one layer (docs/architecture.md §5 schema, + phase/step and three extension
    columns)."""
    name: str                 # HF module path, e.g. "model.layers.3.self_attn.q_proj"
    op: str                   # matmul | conv | attention | rms_norm | layer_norm | gelu
                              # | elementwise | embedding | allreduce
    shapes: str               # human-readable operand shapes
    dtype: str                # compute dtype
    macs: int = 0
    flops: int = 0
    flops_dense: int = 0
    bytes_weights: float = 0
    bytes_act_in: float = 0
    bytes_act_out: float = 0
    bytes_kv_read: float = 0
    bytes_kv_write: float = 0
    intensity: float = 0.0
    bound: str = ""
    t_compute: float = 0.0
    t_memory: float = 0.0
    t_lower: float = 0.0
    t_upper: float = 0.0
    phase: str = ""
    step: str = ""            # "" (one pass), "7" (decode step 7), "0..127" (summed over steps)
    flops_vector: int = 0     # extension: the non-tensor-core part of flops
    bytes_comm: float = 0     # extension: bytes each device sends in collectives (tensor parallel)
    t_comm: float = 0.0       # extension: interconnect time of collectives
    scope: str = ""           # extension: the kernels.scope() the engine ran it in
    t_pred: float = 0.0       # extension: predicted time from a calibrated device profile
    calls: int = 1            # extension: kernel or ufunc calls this record stands for
    bytes_unfused: float = 0  # extension: an elementwise record's traffic were it not fused
    flops_special: int = 0    # extension: the part of flops_vector that is exponentials (softmax)
    hops: int = 0             # extension: the steps of a collective, each costing a link latency
    work: str = ""            # extension: an elementwise record's NumPy calls, per function
                              # "name:calls:elements:loops ..." (one step's, for summed steps)
    weights_dtype: str = ""   # extension: the storage dtype of the weights a GEMM or table
                              # lookup reads ("q4_0": a qmatmul in the engine); "" without any
    bytes_act_transient: float = 0  # extension: the part of bytes_act_in a backward pass need
                              # not keep from this record: a tensor an earlier GEMM kept (q/k/v's
                              # shared input), the inputs of additions, of copies and of products
                              # with a constant (autograd keeps the constant)

    @property
    def bytes(self) -> float:
        """Compulsory DRAM traffic of this kernel."""
        return (self.bytes_weights + self.bytes_act_in + self.bytes_act_out
                + self.bytes_kv_read + self.bytes_kv_write)

    @property
    def block(self) -> str:
        """The layer-type key used to aggregate repeated layers: digits replaced by '*'."""
        return ".".join("*" if p.isdigit() else p for p in self.name.split("."))

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


SCHEMA = tuple(f.name for f in fields(Layer))
COUNT_FIELDS = ("macs", "flops", "flops_dense", "flops_vector", "bytes_weights", "bytes_act_in",
                "bytes_act_out", "bytes_kv_read", "bytes_kv_write", "bytes_comm", "calls",
                "bytes_unfused", "flops_special", "bytes_act_transient")
TIME_FIELDS = ("t_compute", "t_memory", "t_lower", "t_upper", "t_comm", "t_pred")


@dataclass(frozen=True)
class Precision:
    """Storage dtypes of weights, activations and the KV cache, and what the matmuls compute in.

    ``weights="int4"`` or ``"int8"`` is weight-only quantisation: weights are read at 4 (8) bits
    plus one ``scale_dtype`` scale per ``group_size`` weights (int4) or per output channel (int8),
    and dequantised to the activation dtype, which the tensor cores run.  fp8 weights *and*
    activations run the fp8 tensor-core rate.  fp32 matmuls run
    at the vector FP32 rate unless ``tf32=True`` (PyTorch's default is full FP32).

    llama.cpp's block formats (``"q8_0"``, ``"q4_0"``, ``"q4_1"``, ``"q4_k"``, ``"q6_k"``;
    :mod:`costmodel.gguf`) are weight-only too, at their exact bytes per block, scales included
    (``group_size`` does not apply: the block is the format's).  A matrix whose rows are not a
    whole number of blocks stays a float at the activation dtype, as the engine keeps it.
    ``embedding`` is the dtype of the token-embedding tables and of the output head (``lm_head``,
    Whisper's ``proj_out``, or a tied head reading the table); by default the engine's policy
    (``pyworkloads.llama2.quantize_weights``): q8_0 under the 4-bit formats (q4_*), the weights'
    format under q8_0 and q6_k, and for the other dtypes the weights' dtype (an int4 model's
    tables as bf16).  ``weights="q4_k_m"`` is llama.cpp's per-tensor recipe, which
    :meth:`resolve` fills into ``overrides`` (module name -> dtype) for a model's config;
    ``overrides`` may also be given (a GGUF file's formats, tensor by tensor)."""
    weights: str = "bf16"
    activations: str = "bf16"
    kv: str = "bf16"
    group_size: int = 128
    scale_dtype: str = "fp16"
    tf32: bool = False
    embedding: str | None = None
    overrides: tuple = ()

    def __post_init__(self):
        for arg, val, allowed in (("weights", self.weights, WEIGHT_DTYPES),
                                  ("activations", self.activations, ACT_DTYPES),
                                  ("kv", self.kv, KV_DTYPES),
                                  ("scale_dtype", self.scale_dtype, ("fp32", "bf16", "fp16"))):
            if val not in allowed:
                raise ValueError(f"{arg} dtype must be one of {', '.join(allowed)}, got {val!r}")
        stored = tuple(d for d in WEIGHT_DTYPES if d not in GGUF_MIXES)
        if self.embedding is not None and self.embedding not in stored:
            raise ValueError(f"embedding dtype must be None or one of {', '.join(stored)}, got "
                             f"{self.embedding!r}")
        for pair in self.overrides:
            if (not isinstance(pair, tuple) or len(pair) != 2 or not isinstance(pair[0], str)
                    or pair[1] not in stored):
                raise ValueError(f"overrides must be (module name, dtype) pairs with a dtype of "
                                 f"{', '.join(stored)}, got {pair!r}")
        if (isinstance(self.group_size, bool) or not isinstance(self.group_size, int)
                or self.group_size < 1):
            raise ValueError(f"group_size must be a positive integer, got {self.group_size!r}")

    @classmethod
    def parse(cls, dtype: str | None = None, weights=None, activations=None, kv=None,
              default_activations: str = "bf16", **kw) -> "Precision":
        """``dtype`` sets all three (int4 / int8 and the GGUF formats mean weight-only: their
        activations and cache are ``default_activations``, the device's float -- fp32 on the
        CPU, what the engine computes in; 16-bit on accelerators); explicit ``weights`` /
        ``activations`` / ``kv`` override it."""
        dtype = dtype or "bf16"
        if dtype not in WEIGHT_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(WEIGHT_DTYPES)}, got {dtype!r}")
        act = dtype if dtype in ACT_DTYPES else default_activations
        act = activations or act
        return cls(weights=weights or dtype, activations=act, kv=kv or act, **kw)

    def resolve(self, cfg) -> "Precision":
        """This precision for one model: a recipe (``weights="q4_k_m"``) gets its per-module
        dtypes for ``cfg`` (``overrides`` given win); any other precision is returned as it
        is."""
        if self.weights not in GGUF_MIXES:
            return self
        from .gguf import resolve_mix
        table = dict(resolve_mix(self.weights, cfg)) | dict(self.overrides)
        return dataclasses.replace(self, overrides=tuple(table.items()))

    @property
    def act_bytes(self) -> float:
        return DTYPE_BYTES[self.activations]

    @property
    def kv_bytes(self) -> float:
        return DTYPE_BYTES[self.kv]

    @property
    def block_formats(self) -> bool:
        """Weights in llama.cpp's block formats (some or all of them)."""
        return (self.weights in GGUF_FORMATS or self.weights in GGUF_MIXES
                or self.embedding in GGUF_FORMATS
                or any(dt in GGUF_FORMATS for _, dt in self.overrides))

    def is_outer(self, name: str, tensor: str | None = None) -> bool:
        """A token-embedding table (module ``name``) or the output head (``lm_head``, Whisper's
        ``proj_out``, or any GEMM whose weight ``tensor`` is an embedding table: a tied head)."""
        mods = [name] + ([tensor.removesuffix(".weight")] if tensor else [])
        return name in ("lm_head", "proj_out") or any(m.rsplit(".", 1)[-1] in TOKEN_TABLES
                                                      for m in mods)

    def weight_dtype(self, name: str, k: int, tensor: str | None = None,
                     table: bool = False) -> str:
        """The storage dtype of the weights of module ``name`` (the record's name), whose rows
        hold ``k`` weights (a GEMM's input width); ``tensor``: the checkpoint tensor it reads;
        ``table``: a lookup in a table rather than a GEMM."""
        outer = self.is_outer(name, tensor)
        if table and not outer:
            # position tables (SAM's rel_pos ...): llama.cpp never quantizes them; the other
            # dtypes keep this model's old convention (int4 tables as bf16)
            if self.block_formats:
                return self.activations
            return self.weights if self.weights != "int4" else "bf16"
        if outer and self.embedding is not None:
            dt = self.embedding
        elif self.overrides:
            # the module's own entry; a tied head takes its table's
            table_of = tensor.removesuffix(".weight") if tensor else None
            dt = (dict(self.overrides).get(name) or dict(self.overrides).get(table_of)
                  or self._default(outer, table))
        else:
            dt = self._default(outer, table)
        if dt in GGUF_FORMATS and k % GGUF_FORMATS[dt][0]:
            return self.activations            # not a whole number of blocks: stays a float
        return dt

    def _default(self, outer: bool, table: bool) -> str:
        w = self.weights
        if w in GGUF_MIXES:
            if not self.overrides:
                raise ValueError(f"weights {w!r} is llama.cpp's per-tensor recipe: resolve it "
                                 "for a model first (Precision.resolve(config))")
            return self.activations            # a module the recipe does not name: a float
        if outer and w in GGUF_FORMATS:
            return "q8_0" if w.startswith("q4") else w
        if table and w == "int4":
            return "bf16"
        return w

    def weight_bytes(self, n: int, rows: int, dtype: str | None = None) -> float:
        """Bytes of an n-element weight with ``rows`` output channels stored as ``dtype``
        (default: the weights' dtype), quantisation metadata included."""
        dt = dtype or self.weights
        if dt in GGUF_FORMATS:
            return block_bytes(dt, n)
        if dt in GGUF_MIXES:
            raise ValueError(f"weights {dt!r} is a per-tensor recipe: ask for one tensor's dtype "
                             "(Precision.weight_dtype)")
        b = n * DTYPE_BYTES[dt]
        if dt == "int4":
            b += math.ceil(n / self.group_size) * DTYPE_BYTES[self.scale_dtype]
        elif dt == "int8":                            # one scale per output channel
            b += rows * DTYPE_BYTES[self.scale_dtype]
        return b

    @property
    def matmul_dtype(self) -> str:
        """The tensor-core rate the weight GEMMs run at."""
        if self.weights == "fp8" and self.activations == "fp8":
            return "fp8"
        return self._compute(self.activations)

    @property
    def attention_dtype(self) -> str:
        return ("fp8" if self.activations == "fp8" and self.kv == "fp8"
                else self._compute(self.activations))

    def _compute(self, dt: str) -> str:
        if dt == "fp32":
            return "tf32" if self.tf32 else "fp32"
        return "bf16" if dt == "fp8" else dt

    def describe(self) -> str:
        s = f"weights {self.weights}, activations {self.activations}, kv {self.kv}"
        if self.weights == "int4":
            s += f" (group {self.group_size}, {self.scale_dtype} scales)"
        if self.block_formats:
            if self.embedding or not self.overrides:
                s += f"; embedding/head {self.embedding or self._default(True, False)}"
            counts: dict[str, int] = {}
            for _, dt in self.overrides:
                counts[dt] = counts.get(dt, 0) + 1
            if counts:                    # a recipe's or a file's formats, matrix by matrix
                s += "; matrices " + ", ".join(f"{n} {dt}" for dt, n in counts.items())
        return s


def _shape(*dims) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


class GraphBuilder:
    """Collects :class:`Layer` records.  ``tp`` splits matmuls and heads Megatron-style across
    ``tp`` devices (column-parallel in, row-parallel out, one all-reduce after each row-parallel
    layer); all counts are per device."""

    def __init__(self, precision: Precision, attention: str = "flash", tp: int = 1,
                 fuse_elementwise: bool = True, phase: str = "", step: str = "",
                 collective: str = "ring", flash_block: int | None = None):
        if attention not in ("flash", "unfused"):
            raise ValueError(f"attention must be 'flash' or 'unfused', got {attention!r}")
        if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
            raise ValueError(f"tp must be a positive integer, got {tp!r}")
        if collective not in ("ring", "tree"):
            raise ValueError(f"collective must be 'ring' or 'tree', got {collective!r}")
        if flash_block is not None and (isinstance(flash_block, bool)
                                        or not isinstance(flash_block, int) or flash_block < 1):
            raise ValueError(f"flash_block must be None or a positive integer, got {flash_block!r}")
        self.collective = collective
        self.flash_block = flash_block
        self.p = precision
        self.attention_impl = attention
        self.tp = tp
        self.fuse = fuse_elementwise
        self.phase = phase
        self.step = step
        self.scope = ""                     # the engine scope of the records being added
        self.layers: list[Layer] = []

    def _add(self, at: int | None = None, **kw) -> Layer:
        """Make a record and append it (or put it in the placeholder slot ``at``)."""
        rec = Layer(phase=self.phase, step=self.step, scope=self.scope, **kw)
        if at is None:
            self.layers.append(rec)
        else:
            self.layers[at] = rec
        return rec

    def split(self, n: int, what: str) -> int:
        """n / tp, which must divide exactly."""
        if n % self.tp:
            raise ValueError(f"tp={self.tp} does not divide {what} ({n})")
        return n // self.tp

    # -- dense ---------------------------------------------------------------------------------
    def weight_gemm(self, name: str, op: str, rows: int, d_in: int, d_out: int, weight_elems: int,
                    act_in_elems: int, act_out_elems: int, parallel: str | None = None,
                    tensor: str | None = None) -> Layer:
        """x [rows, d_in] · W [d_in, d_out]: a linear layer, or a convolution run as its im2col
        GEMM (op "conv").  ``weight_elems`` / ``act_in_elems`` are the distinct elements read (an
        im2col matrix reads its image once), ``act_out_elems`` those written.  ``tensor``: the
        checkpoint tensor of the weight (a tied head reads the embedding table), which with
        ``name`` decides the weight's storage dtype (:meth:`Precision.weight_dtype`: blocks run
        along d_in, the rows of PyTorch's [d_out, d_in] weight).

        parallel: None (replicated), "col" (d_out split over tp devices) or "row" (d_in split, an
        all-reduce of the output follows)."""
        if parallel == "col":
            d_out = self.split(d_out, f"{name} output width")
            weight_elems, act_out_elems = weight_elems // self.tp, act_out_elems // self.tp
        elif parallel == "row":
            d_in = self.split(d_in, f"{name} input width")
            weight_elems, act_in_elems = weight_elems // self.tp, act_in_elems // self.tp
        macs = rows * d_in * d_out
        a = self.p.act_bytes
        wdt = self.p.weight_dtype(name, d_in, tensor)
        rec = self._add(name=name, op=op, shapes=f"{_shape(rows, d_in)}x{_shape(d_in, d_out)}",
                        dtype=self.p.matmul_dtype, macs=macs, flops=2 * macs, flops_dense=2 * macs,
                        bytes_weights=self.p.weight_bytes(weight_elems, d_out, wdt),
                        bytes_act_in=act_in_elems * a, bytes_act_out=act_out_elems * a,
                        weights_dtype=wdt)
        if parallel == "row" and self.tp > 1:
            self.allreduce(name + ".allreduce", act_out_elems)
        return rec

    def add_bias(self, rec: Layer, parallel: str | None, out_elems: int, bias_elems: int,
                 loops: int = 0) -> None:
        """A bias add fused into the epilogue of GEMM ``rec``: one vector FLOP per output element
        and the bias read.  A column-parallel layer adds its slice of the bias; a row-parallel
        one adds the whole bias once, after the reduction.  The engine adds it with NumPy after
        the kernel, so the record's ``work`` lists that call (``loops``: the rows it walks)."""
        split = self.tp if parallel == "col" else 1
        elems = out_elems // split
        rec.flops += elems
        rec.flops_vector += elems
        rec.bytes_weights += bias_elems // split * self.p.act_bytes
        rec.work = f"{rec.work} add:1:{elems}:{loops // split}".strip()

    def matmul_record(self, name: str, batch: int, m: int, k: int, n: int,
                      a_elems: int | None = None, b_elems: int | None = None) -> Layer:
        """A product of two activations (no weights): [batch, m, k] x [batch, k, n]."""
        macs = batch * m * k * n
        a = self.p.act_bytes
        a_elems = batch * m * k if a_elems is None else a_elems
        b_elems = batch * k * n if b_elems is None else b_elems
        return self._add(name=name, op="matmul",
                         shapes=f"{_shape(batch, m, k)}x{_shape(batch, k, n)}",
                         dtype=self.p._compute(self.p.activations), macs=macs, flops=2 * macs,
                         flops_dense=2 * macs, bytes_act_in=(a_elems + b_elems) * a,
                         bytes_act_out=batch * m * n * a)

    # -- attention -----------------------------------------------------------------------------
    def attention(self, name: str, batch: int, heads: int, kv_heads: int, tq: int, tk: int, dh: int,
                  dv: int | None = None, causal: bool = False, bias: int = 0,
                  kv_cache: str = "none", new_kv: int = 0, bias_elems: int = 0):
        """softmax(q kᵀ · scale [+ bias]) v.  q [B, H, Tq, Dh], k/v [B, KVH, Tk, Dh/Dv].

        kv_cache: "none" (k/v are fresh activations, e.g. encoders), "cache" (k/v are read from the
        KV cache at its current length ``tk``; ``new_kv`` entries were appended by this step and are
        charged as cache writes) or "cross" (cross-attention K/V computed once and re-read).
        ``bias``: additions per score (0 or False: none; 1 or True: a bias tensor; +2 for a
        decomposed relative-position bias, whose two terms are added in the kernel).
        ``bias_elems``: elements of the additive bias tensors read (relative-position / masks).
        Flash: the causal tiles above the diagonal are skipped (exact count of allowed pairs, tile
        granularity ignored) and S/P stay on chip; K and V are read once (compulsory traffic), or
        once per block of ``flash_block`` queries when that option is set (FlashAttention's outer
        loop re-reads them for every query block).  Unfused: the full rectangle is computed and
        masked, as the NumPy reference does, and S and P go through DRAM.  One exponential per
        score computed (``flops_special``) runs on special-function units where a device has
        them."""
        dv = dh if dv is None else dv
        heads = self.split(heads, f"{name} heads")
        # fewer KV heads than devices: replicated
        kv_heads = kv_heads // self.tp if kv_heads >= self.tp else 1
        full = batch * heads * tq * tk
        if causal and self.attention_impl == "flash":
            if tq > tk:
                raise ValueError(f"{name}: causal attention needs tq <= tk, got {tq} > {tk}")
            pairs = batch * heads * (tq * (tk - tq) + tq * (tq + 1) // 2)
        else:
            pairs = full
        macs = pairs * (dh + dv)
        vec = pairs * (6 + int(bias))
        a, kvb = self.p.act_bytes, self.p.kv_bytes
        kv_elems = batch * kv_heads * tk * (dh + dv)
        if self.attention_impl == "flash" and self.flash_block:
            kv_elems *= -(-tq // self.flash_block)               # K/V re-read per query block
        rec = dict(bytes_act_in=batch * heads * tq * dh * a,
                   bytes_act_out=batch * heads * tq * dv * a)
        if kv_cache == "none":
            rec["bytes_act_in"] += kv_elems * a
        elif kv_cache in ("cache", "cross"):
            rec["bytes_kv_read"] = kv_elems * kvb
            rec["bytes_kv_write"] = batch * kv_heads * new_kv * (dh + dv) * kvb
        else:
            raise ValueError(f"kv_cache must be 'none', 'cache' or 'cross', got {kv_cache!r}")
        if bias_elems:
            rec["bytes_act_in"] += bias_elems * a
        if self.attention_impl == "unfused":
            rec["bytes_act_out"] += 2 * full * a       # S written, P written
            rec["bytes_act_in"] += 2 * full * a        # S read by softmax, P read by P·V
        return self._add(name=name, op="attention",
                  shapes=f"q{_shape(batch, heads, tq, dh)} kv{_shape(batch, kv_heads, tk, dv)}"
                         + (" causal" if causal else ""),
                  dtype=self.p.attention_dtype, macs=macs, flops=2 * macs + vec, flops_vector=vec,
                  flops_special=pairs, flops_dense=2 * full * (dh + dv), **rec)

    # -- vector ops ----------------------------------------------------------------------------
    def norm(self, name: str, kind: str, rows: int, width: int, affine: int = 2):
        """RMSNorm (4 FLOPs/element) or LayerNorm (5 + 1 per affine term) over the last axis."""
        if kind == "rms_norm":
            per = 4
        elif kind == "layer_norm":
            per = 5 + affine
        else:
            raise ValueError(f"norm kind must be 'rms_norm' or 'layer_norm', got {kind!r}")
        n = rows * width
        a = self.p.act_bytes
        return self._add(name=name, op=kind, shapes=_shape(rows, width), dtype="fp32",
                  flops=per * n, flops_vector=per * n,
                  bytes_weights=(affine if kind == "layer_norm" else 1) * width * a,
                  bytes_act_in=n * a, bytes_act_out=n * a)

    def elementwise_record(self, name: str, flops: int, what: str, shape: str,
                           weight_elems: int = 0, act_in_elems: int = 0, act_out_elems: int = 0,
                           at: int | None = None, calls: int = 1, work: str = "",
                           kept_elems: int | None = None) -> Layer:
        """Elementwise work outside the kernels (residual adds, RoPE, activations, scaling):
        fused into a neighbouring kernel by default, so only the weights it reads (a position
        table) cost traffic; ``fuse_elementwise=False`` charges every read and write."""
        a = self.p.act_bytes
        return self._add(at=at, name=name, op="elementwise", shapes=f"{shape} {what}".strip(),
                         dtype="fp32",
                         flops=flops, flops_vector=flops, bytes_weights=weight_elems * a,
                         bytes_act_in=0 if self.fuse else act_in_elems * a,
                         bytes_act_out=0 if self.fuse else act_out_elems * a, calls=calls,
                         bytes_unfused=(weight_elems + act_in_elems + act_out_elems) * a,
                         work=work, bytes_act_transient=0 if self.fuse or kept_elems is None
                         else (act_in_elems - kept_elems) * a)

    def gelu(self, name: str, elems: int, sharded: bool = False) -> Layer:
        """The dispatched GELU kernel over ``elems`` elements (1/tp of them when the activations
        are sharded), GELU_FLOPS per element as pyworkloads.kernels counts it."""
        n = elems // self.tp if sharded else elems
        a = self.p.act_bytes
        return self._add(name=name, op="gelu", shapes=_shape(n), dtype="fp32",
                         flops=GELU_FLOPS * n, flops_vector=GELU_FLOPS * n,
                         bytes_act_in=0 if self.fuse else n * a,
                         bytes_act_out=0 if self.fuse else n * a, bytes_unfused=2 * n * a)

    def embedding(self, name: str, tokens: int, width: int):
        """A table lookup: reads ``tokens`` rows (weights traffic) and writes them (no FLOPs).
        A block-quantized table is read in whole rows of blocks, scales included."""
        a = self.p.act_bytes
        wdt = self.p.weight_dtype(name, width, table=True)
        return self._add(name=name, op="embedding", shapes=_shape(tokens, width),
                  dtype=self.p.activations,
                  bytes_weights=(block_bytes(wdt, tokens * width) if wdt in GGUF_FORMATS
                                 else tokens * width * DTYPE_BYTES[wdt]),
                  bytes_act_out=tokens * width * a, bytes_unfused=2 * tokens * width * a,
                  weights_dtype=wdt)

    def allreduce(self, name: str, elems: int):
        """All-reduce over ``tp`` devices (α-β): each sends (and receives) 2·(tp-1)/tp of the
        tensor, in 2·(tp-1) steps on a ring or 2·⌈log2 tp⌉ on a tree (reduce, then broadcast;
        Rabenseifner's volume), each step costing the link latency."""
        if self.tp == 1:
            return None
        sent = 2 * (self.tp - 1) / self.tp * elems * self.p.act_bytes
        hops = 2 * (self.tp - 1) if self.collective == "ring" else 2 * math.ceil(math.log2(self.tp))
        return self._add(name=name, op="allreduce",
                         shapes=f"{_shape(elems)} x tp{self.tp} {self.collective}",
                         dtype=self.p.activations, flops=elems * (self.tp - 1) // self.tp,
                         flops_vector=elems * (self.tp - 1) // self.tp, bytes_comm=sent, hops=hops)
