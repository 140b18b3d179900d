"""A shape-only run of the engine: the forward functions execute on arrays that carry a shape, a
dtype and where their data comes from, but no numbers.

    with kernels.trace() as tr:
        llama2.forward(ids, traced_weights(llama2.weight_shapes(cfg)), cfg)
    tr.records          # one TraceRecord per kernel call and per elementwise NumPy operation

This is how the cost model gets its layer list from the engine's own code path instead of a second,
hand-written description of each model: a shape that the forward pass computes is the shape the
cost model counts, a kernel the forward pass calls is a layer the cost model reports, and nothing
is allocated or computed (a 70B model at batch 64 traces in milliseconds).

What is recorded:
- every dispatched kernel call (``matmul``, ``attention``, ``rms_norm``, ``layer_norm``,
  ``gelu``) with its operands, its output and the MACs/FLOPs that ``pw.profile()`` would count
  for the same call (the same ``counts`` function computes both);
- every NumPy ufunc applied to a traced array (``x + h``, ``np.exp``, ``scipy.special.expit`` ...)
  as an ``elementwise`` record: one FLOP per output element per ufunc (a transcendental counts as
  one, the convention of the cost model), zero for data movement (``concatenate``, ``pad``);
- an integer-array lookup into a weight (an embedding table, a relative-position table) as an
  ``embedding`` record, and writes into a KV-cache buffer as ``kv_write``.

Where data comes from (:class:`Source`) is what turns shapes into DRAM traffic: a ``weight`` is
read from the checkpoint, a ``kv`` buffer is the KV cache (``cross`` for stored cross-attention
keys and values), anything else is an activation.  Views (reshape, transpose, slices,
``broadcast_to``, ``sliding_window_view``) keep their source and count the distinct elements
behind them (``unique``), so an im2col matrix reads its image once.

Forward functions stay traceable by three rules (see ``pyworkloads/models/common.py``): weights are
read through ``common.weight``, arrays made inside derive from an input (``np.zeros_like``), and
no Python branch depends on the values of an activation.  Anything else -- ``np.asarray`` of a
traced array, ``float(x)``, an unsupported NumPy function -- raises ``TypeError`` naming it.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import string
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Traced", "Source", "TraceRecord", "Trace", "trace", "active_trace", "traced_weights",
           "kv_zeros", "is_traced"]


@dataclass
class Source:
    """Where a traced array's data lives: ``kind`` is "weight" (checkpoint tensor ``name``),
    "kv" (a KV-cache buffer) or "cross" (stored cross-attention keys/values).  ``written``
    counts the positions a decoding step wrote into a KV buffer (along its sequence axis)."""
    kind: str
    name: str
    shape: tuple
    written: int = 0


@dataclass
class TraceRecord:
    """One kernel call or elementwise operation seen by :func:`trace`."""
    op: str                     # matmul | attention | rms_norm | layer_norm | gelu | elementwise
                                # | embedding | kv_write
    scope: str                  # the kernels.scope() active at the call
    inputs: list                # the traced operands (None for absent optional ones)
    output: "Traced | None"
    macs: int = 0
    flops: int = 0              # what pw.profile() counts for a kernel; ufunc applications here
    what: str = ""              # the ufunc or NumPy function of an elementwise record
    options: dict = field(default_factory=dict)   # causal, scale, in_place ...


@dataclass
class Trace:
    records: list[TraceRecord] = field(default_factory=list)

    def add(self, rec: TraceRecord) -> None:
        self.records.append(rec)


_trace: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("pyworkloads_trace",
                                                                     default=None)


def active_trace() -> Trace | None:
    return _trace.get()


@contextlib.contextmanager
def trace():
    """Record instead of compute: inside, every dispatched kernel returns a :class:`Traced`
    result of the right shape and appends a :class:`TraceRecord`."""
    tr = Trace()
    token = _trace.set(tr)
    try:
        yield tr
    finally:
        _trace.reset(token)


SCOPE: contextvars.ContextVar | None = None     # kernels.scope()'s variable, set by the package


def _scope() -> str:
    return SCOPE.get() if SCOPE is not None else ""


def _record(op: str, inputs, output, what: str = "", flops: int = 0, **options) -> None:
    tr = _trace.get()
    if tr is not None:
        tr.add(TraceRecord(op, _scope(), list(inputs), output, flops=int(flops), what=what,
                           options=options))


def is_traced(x) -> bool:
    return isinstance(x, Traced)


# ---------------------------------------------------------------------------------------------
# the shape-only array
# ---------------------------------------------------------------------------------------------
def _dummy(shape) -> np.ndarray:
    """An array of this shape with zero-byte elements: indexing it gives the result's shape at
    no cost, whatever the shape."""
    return np.empty(shape, dtype=np.dtype([]))


def _shape_of(x) -> tuple:
    return x.shape if isinstance(x, Traced) else np.shape(x)


def _dtype_of(x):
    if isinstance(x, Traced):
        return x.dtype
    if isinstance(x, (bool, int, float, complex)):
        return x                  # a Python scalar: weakly typed, as NumPy treats it
    return np.asarray(x).dtype


class Traced:
    """A shape-only stand-in for an ndarray (see the module docstring)."""

    __array_priority__ = 1000

    def __init__(self, shape, dtype=np.float32, source: Source | None = None,
                 unique: int | None = None, origin: str | None = None, contig: bool = True):
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.source = source
        self.origin = origin              # the weight rows were gathered from (names the use)
        self.contig = contig              # C-contiguous, as NumPy would lay the array out
        self.base: Traced | None = None   # the array this is a view of (views share its data)
        size = self.size
        self.unique = size if unique is None else min(int(unique), size)

    # -- array attributes -------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def flags(self):
        return None

    def ascontiguous(self) -> "Traced":
        """What ``np.ascontiguousarray`` does: the array itself, or a copy (recorded)."""
        return self if self.contig else self._copy("contiguous copy")

    def _copy(self, what: str, dtype=None) -> "Traced":
        """A copy NumPy makes.  It keeps the count of distinct elements behind it: an im2col
        matrix copied from a window view still holds one image's worth of data, which is what
        a fused kernel would read (the copy's own traffic is in its record)."""
        out = Traced(self.shape, dtype or self.dtype, self.source, self.unique, self.origin)
        _record("elementwise", [self], out, what=what)
        return out

    @property
    def T(self) -> "Traced":
        return self.transpose()

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        src = f", {self.source.kind} {self.source.name!r}" if self.source else ""
        return f"Traced({list(self.shape)}, {self.dtype}{src})"

    def _refuse(self, what: str):
        raise TypeError(f"{what} of a traced array {self!r} (scope {_scope()!r}): a forward "
                        "function run by kernels.trace() may not depend on the values of its "
                        "arrays")

    def __array__(self, dtype=None, copy=None):
        self._refuse("np.asarray / np.array / np.ascontiguousarray")

    def __bool__(self):
        self._refuse("truth value")

    def __float__(self):
        self._refuse("float()")

    def __int__(self):
        self._refuse("int()")

    def __iter__(self):
        return (self[i] for i in range(self.shape[0]))       # views along the first axis

    def tolist(self):
        self._refuse("tolist()")

    def item(self, *args):
        self._refuse("item()")

    # -- views: same data, new shape --------------------------------------------------------
    def _view(self, shape, unique: int | None = None, contig: bool | None = None) -> "Traced":
        out = Traced(shape, self.dtype, self.source, self.unique if unique is None else unique,
                     self.origin, self.contig if contig is None else contig)
        out.base = self.base if self.base is not None else self
        return out

    def reshape(self, *shape, order="C") -> "Traced":
        """A view of a contiguous array; NumPy copies a strided one (recorded)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        new = _dummy(self.shape).reshape(shape).shape
        if new == self.shape:
            return self
        src = self if self.contig else self._copy("reshape copy")
        return src._view(new, contig=True)

    def transpose(self, *axes) -> "Traced":
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        axes = axes or tuple(reversed(range(self.ndim)))
        moved = [a % self.ndim for a in axes] != list(range(self.ndim))
        return self._view(_dummy(self.shape).transpose(*axes).shape,
                          contig=self.contig and not moved)

    def swapaxes(self, a, b) -> "Traced":
        return self._view(_dummy(self.shape).swapaxes(a, b).shape,
                          contig=self.contig and a % self.ndim == b % self.ndim)

    def squeeze(self, axis=None) -> "Traced":
        return self._view(_dummy(self.shape).squeeze(axis).shape)

    def astype(self, dtype, copy=True, **kw) -> "Traced":
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        return self._copy("astype", dtype)

    def copy(self, order="C") -> "Traced":
        return self._copy("copy")

    def view(self, *args, **kw) -> "Traced":
        return self._view(self.shape)

    # -- indexing ---------------------------------------------------------------------------
    @staticmethod
    def _is_gather(idx) -> bool:
        parts = idx if isinstance(idx, tuple) else (idx,)
        return any(isinstance(p, (np.ndarray, list)) or is_traced(p) for p in parts)

    def __getitem__(self, idx) -> "Traced":
        if is_traced(idx) or (isinstance(idx, tuple) and any(is_traced(p) for p in idx)):
            self._refuse("indexing with a traced array")
        if self._is_gather(idx):
            shape = _gather_shape(self.shape, idx)
        else:
            shape = _dummy(self.shape)[idx].shape
        if not self._is_gather(idx):                                  # a view
            return self._view(shape, min(self.unique, math.prod(shape)),
                              contig=self.contig and _contiguous_index(idx, self.ndim))
        out = Traced(shape, self.dtype, origin=self.origin)         # a new activation
        if self.source is not None and self.source.kind == "weight":
            out.origin = self.source.name
            _record("embedding", [self], out, what="gather")       # rows read from the table
        else:
            _record("elementwise", [self], out, what="gather")
        return out

    def __setitem__(self, idx, value) -> None:
        region = _dummy(self.shape)[idx].shape
        n = math.prod(region)
        if self.source is not None and self.source.kind in ("kv", "cross"):
            seq = self.shape[2] if len(self.shape) == 4 else 1
            self.source.written += n * seq // max(self.size, 1)
            _record("kv_write", [value if is_traced(value) else None], self, what="kv write",
                    elements=n)
        elif is_traced(value):
            _record("elementwise", [value], Traced(region, self.dtype), what="copy")

    # -- arithmetic -------------------------------------------------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.pop("out", None)
        if method == "reduce":
            return _reduction(inputs[0], ufunc.__name__, kwargs.get("axis", 0),
                              kwargs.get("keepdims", False), kwargs.get("dtype"))
        if method != "__call__":
            raise TypeError(f"trace: {ufunc.__name__}.{method} is not supported on traced arrays")
        shape = np.broadcast_shapes(*[_shape_of(x) for x in inputs])
        dtypes = _ufunc_dtypes(ufunc, tuple(_dtype_of(x) for x in inputs))
        if out is not None:
            target = out[0] if isinstance(out, tuple) else out
            result = target
        else:
            result = Traced(shape, dtypes[0])
        flops = 0 if ufunc.__name__ in _NO_FLOP_UFUNCS else math.prod(shape) * ufunc.nout
        _record("elementwise", [x if is_traced(x) else None for x in inputs], result,
                what=ufunc.__name__, flops=flops, in_place=out is not None)
        if ufunc.nout > 1:
            return tuple(Traced(shape, dt) for dt in dtypes)
        return result

    def _binary(name):
        uf = getattr(np, name)

        def op(self, other):
            return uf(self, other)

        def rop(self, other):
            return uf(other, self)

        def iop(self, other):
            return uf(self, other, out=self)
        return op, rop, iop

    __add__, __radd__, __iadd__ = _binary("add")
    __sub__, __rsub__, __isub__ = _binary("subtract")
    __mul__, __rmul__, __imul__ = _binary("multiply")
    __truediv__, __rtruediv__, __itruediv__ = _binary("true_divide")
    __pow__, __rpow__, __ipow__ = _binary("power")
    __lt__ = lambda self, o: np.less(self, o)                   # noqa: E731
    __le__ = lambda self, o: np.less_equal(self, o)             # noqa: E731
    __gt__ = lambda self, o: np.greater(self, o)                # noqa: E731
    __ge__ = lambda self, o: np.greater_equal(self, o)          # noqa: E731
    __eq__ = lambda self, o: np.equal(self, o)                  # noqa: E731
    __ne__ = lambda self, o: np.not_equal(self, o)              # noqa: E731
    __neg__ = lambda self: np.negative(self)                    # noqa: E731
    __abs__ = lambda self: np.absolute(self)                    # noqa: E731
    __hash__ = None
    del _binary

    def __matmul__(self, other):
        self._refuse("the @ operator (use kernels.matmul, which the trace records)")

    __rmatmul__ = __matmul__

    # -- reductions -------------------------------------------------------------------------
    def sum(self, axis=None, dtype=None, keepdims=False, **kw):
        return _reduction(self, "sum", axis, keepdims, dtype)

    def mean(self, axis=None, dtype=None, keepdims=False, **kw):
        return _reduction(self, "mean", axis, keepdims, dtype)

    def max(self, axis=None, keepdims=False, **kw):
        return _reduction(self, "max", axis, keepdims)

    def min(self, axis=None, keepdims=False, **kw):
        return _reduction(self, "min", axis, keepdims)

    def argmax(self, axis=None, **kw):
        self._refuse("argmax")

    # -- NumPy functions --------------------------------------------------------------------
    def __array_function__(self, func, types, args, kwargs):
        impl = _FUNCTIONS.get(func)
        if impl is None:
            raise TypeError(f"trace: numpy.{func.__name__} is not supported on traced arrays "
                            f"(scope {_scope()!r}); see pyworkloads/kernels/trace.py")
        return impl(*args, **kwargs)


_DTYPES: dict = {}


def _ufunc_dtypes(ufunc, in_types: tuple) -> list:
    """The output dtypes of ``ufunc`` on these input dtypes (Python scalars weakly typed), found
    once by applying it to empty arrays."""
    key = (ufunc, tuple(t if isinstance(t, np.dtype) else type(t) for t in in_types))
    if key not in _DTYPES:
        res = ufunc(*[np.empty(0, t) if isinstance(t, np.dtype) else t for t in in_types])
        _DTYPES[key] = [r.dtype for r in res] if isinstance(res, tuple) else [np.asarray(res).dtype]
    return _DTYPES[key]


# data movement and comparisons: no floating-point work
_NO_FLOP_UFUNCS = {"equal", "not_equal", "less", "less_equal", "greater", "greater_equal",
                   "logical_and", "logical_or", "logical_not", "isnan", "isfinite", "isinf",
                   "positive"}


def _gather_shape(shape: tuple, idx) -> tuple:
    """The shape NumPy's advanced indexing gives, without indexing (which would walk every
    index): the index arrays' broadcast shape takes the place of the axes they index when they
    are adjacent, else goes first (NumPy's rule)."""
    parts = list(idx) if isinstance(idx, tuple) else [idx]
    # with an index array present, integers are advanced indices too (0-d arrays)
    adv = [i for i, p in enumerate(parts) if isinstance(p, (np.ndarray, list, int, np.integer))
           and not isinstance(p, bool)]
    block = np.broadcast_shapes(*[np.shape(parts[i]) for i in adv])
    basic = _dummy(shape)[tuple(0 if i in adv else p for i, p in enumerate(parts))].shape
    if adv != list(range(adv[0], adv[-1] + 1)):
        return block + basic
    ndim_real = sum(1 for p in parts if p is not None and p is not Ellipsis)
    out = 0                                                 # output axes before the first array
    for p in parts[:adv[0]]:
        if p is Ellipsis:
            out += len(shape) - ndim_real
        elif p is None or isinstance(p, slice):
            out += 1
    return basic[:out] + block + basic[out:]


def _contiguous_index(idx, ndim: int) -> bool:
    """Whether basic indexing of a C-contiguous array gives a C-contiguous view: integers on the
    leading axes, then at most one unit-step slice, then whole axes only."""
    parts = list(idx) if isinstance(idx, tuple) else [idx]
    if any(p is Ellipsis for p in parts):
        i = parts.index(Ellipsis)
        n_real = sum(1 for p in parts if p is not None and p is not Ellipsis)
        parts[i:i + 1] = [slice(None)] * (ndim - n_real)
    parts = [p for p in parts if p is not None]
    leading = True                                          # still in the leading integers
    for p in parts:
        if not isinstance(p, slice):                        # an integer index
            if not leading:
                return False
        elif p.step not in (None, 1):
            return False
        elif p != slice(None) and not leading:              # a partial slice after an axis
            return False
        else:
            leading = False
    return True


def _reduction(x, name, axis, keepdims, dtype=None) -> Traced:
    axes = range(x.ndim) if axis is None else (axis,) if isinstance(axis, int) else axis
    axes = {a % x.ndim for a in axes}
    shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape) if keepdims or i not in axes)
    out = Traced(shape, dtype or x.dtype)
    _record("elementwise", [x], out, what=name, flops=x.size)
    return out


# ---------------------------------------------------------------------------------------------
# the NumPy functions a forward pass may apply to traced arrays
# ---------------------------------------------------------------------------------------------
def _as_traced(x) -> Traced:
    return x if is_traced(x) else Traced(np.shape(x), np.asarray(x).dtype)


def _movement(what, inputs, shape, dtype) -> Traced:
    out = Traced(shape, dtype)
    _record("elementwise", inputs, out, what=what)
    return out


def _concatenate(arrays, axis=0, out=None, dtype=None, **kw):
    arrays = [_as_traced(a) for a in arrays]
    first = arrays[0].shape
    axis %= len(first)
    for a in arrays[1:]:
        if len(a.shape) != len(first) or any(d != e for i, (d, e) in enumerate(zip(a.shape, first))
                                             if i != axis):
            raise ValueError(f"concatenate: shapes {[a.shape for a in arrays]} differ off axis "
                             f"{axis}")
    shape = first[:axis] + (sum(a.shape[axis] for a in arrays),) + first[axis + 1:]
    return _movement("concatenate", arrays, shape,
                     dtype or np.result_type(*[a.dtype for a in arrays]))


def _stack(arrays, axis=0, out=None, dtype=None, **kw):
    arrays = [_as_traced(a) for a in arrays]
    first = arrays[0].shape
    if any(a.shape != first for a in arrays):
        raise ValueError(f"stack: all arrays need one shape, got {[a.shape for a in arrays]}")
    axis %= len(first) + 1
    shape = first[:axis] + (len(arrays),) + first[axis:]
    return _movement("stack", arrays, shape, dtype or np.result_type(*[a.dtype for a in arrays]))


def _pad(array, pad_width, mode="constant", **kw):
    widths = np.broadcast_to(np.asarray(pad_width, dtype=np.int64), (array.ndim, 2))
    shape = tuple(d + int(lo) + int(hi) for d, (lo, hi) in zip(array.shape, widths))
    return _movement("pad", [array], shape, array.dtype)


def _repeat(a, repeats, axis=None):
    if axis is None:
        return _movement("repeat", [a], (a.size * int(repeats),), a.dtype)
    shape = list(a.shape)
    shape[axis] *= int(repeats)
    return _movement("repeat", [a], tuple(shape), a.dtype)


def _tile(a, reps):
    reps = (reps,) if isinstance(reps, int) else tuple(reps)
    n = max(len(reps), a.ndim)
    dims = (1,) * (n - a.ndim) + a.shape
    reps = (1,) * (n - len(reps)) + reps
    return _movement("tile", [a], tuple(d * r for d, r in zip(dims, reps)), a.dtype)


def _like(fill):
    def make(a, dtype=None, order="K", subok=True, shape=None, **kw):
        shp = a.shape if shape is None else ((shape,) if isinstance(shape, int) else tuple(shape))
        return Traced(shp, dtype or a.dtype)
    return make


def _full_like(a, fill_value, dtype=None, order="K", subok=True, shape=None):
    return _like(None)(a, dtype=dtype, shape=shape)


def _broadcast_to(array, shape, subok=False):
    array = _as_traced(array)
    shape = np.broadcast_to(_dummy(array.shape), shape).shape
    return array._view(shape, array.unique, contig=array.contig and shape == array.shape)


def _broadcast_arrays(*args, subok=False):
    shape = np.broadcast_shapes(*[_shape_of(a) for a in args])
    return [_broadcast_to(a, shape) for a in args]


def _where(condition, x=None, y=None):
    if x is None:
        raise TypeError("trace: np.where with one argument (indices) depends on values")
    shape = np.broadcast_shapes(_shape_of(condition), _shape_of(x), _shape_of(y))
    dtype = np.result_type(_dtype_of(x), _dtype_of(y))
    out = Traced(shape, dtype)
    _record("elementwise", [v if is_traced(v) else None for v in (condition, x, y)], out,
            what="where")
    return out


def _sliding_window_view(x, window_shape, axis=None, **kw):
    shape = np.lib.stride_tricks.sliding_window_view(_dummy(x.shape), window_shape, axis=axis).shape
    return x._view(shape, x.unique, contig=False)


def _einsum(subscripts, *operands, **kw):
    """Shape and MACs of an einsum: the product of every index's extent."""
    inputs, _, output = subscripts.replace(" ", "").partition("->")
    extent = {}
    for spec, op in zip(inputs.split(","), operands):
        if "." in spec:
            raise TypeError("trace: einsum with '...' is not supported on traced arrays")
        for letter, d in zip(spec, _shape_of(op)):
            extent[letter] = max(extent.get(letter, 1), d)
    if not output and "->" not in subscripts:
        output = "".join(sorted(c for c in extent
                                if inputs.count(c) == 1 and c in string.ascii_letters))
    shape = tuple(extent[c] for c in output)
    out = Traced(shape, np.result_type(*[_dtype_of(o) for o in operands]))
    macs = math.prod(extent.values())
    _record("elementwise", [o if is_traced(o) else None for o in operands], out, what="einsum",
            flops=2 * macs)
    return out


def _sum(a, axis=None, dtype=None, out=None, keepdims=False, **kw):
    return _reduction(a, "sum", axis, keepdims, dtype)


def _mean(a, axis=None, dtype=None, out=None, keepdims=False, **kw):
    return _reduction(a, "mean", axis, keepdims, dtype)


def _amax(a, axis=None, out=None, keepdims=False, **kw):
    return _reduction(a, "max", axis, keepdims)


def _amin(a, axis=None, out=None, keepdims=False, **kw):
    return _reduction(a, "min", axis, keepdims)


_FUNCTIONS = {
    np.concatenate: _concatenate,
    np.stack: _stack,
    np.pad: _pad,
    np.repeat: _repeat,
    np.tile: _tile,
    np.zeros_like: _like(0),
    np.empty_like: _like(None),
    np.ones_like: _like(1),
    np.full_like: _full_like,
    np.broadcast_to: _broadcast_to,
    np.broadcast_arrays: _broadcast_arrays,
    np.where: _where,
    np.einsum: _einsum,
    np.lib.stride_tricks.sliding_window_view: _sliding_window_view,
    np.reshape: lambda a, shape=None, *args, **kw: a.reshape(shape),
    np.transpose: lambda a, axes=None: a.transpose(axes) if axes is not None else a.transpose(),
    np.swapaxes: lambda a, axis1, axis2: a.swapaxes(axis1, axis2),
    np.moveaxis: lambda a, source, destination: a.transpose(
        np.moveaxis(np.arange(a.ndim), source, destination).tolist()),
    np.expand_dims: lambda a, axis: a._view(np.expand_dims(_dummy(a.shape), axis).shape),
    np.squeeze: lambda a, axis=None: a.squeeze(axis),
    np.sum: _sum,
    np.mean: _mean,
    np.max: _amax,
    np.amax: _amax,
    np.min: _amin,
    np.amin: _amin,
    np.shape: lambda a: a.shape,
    np.ndim: lambda a: a.ndim,
    np.size: lambda a, axis=None: a.size if axis is None else a.shape[axis],
    np.result_type: lambda *args: np.result_type(*[_dtype_of(a) for a in args]),
}


# ---------------------------------------------------------------------------------------------
# inputs of a traced run
# ---------------------------------------------------------------------------------------------
def traced_weights(shapes, dtype=np.float32) -> dict[str, Traced]:
    """A weights Mapping of shape-only tensors, one per entry of a model's ``weight_shapes``."""
    return {name: Traced(shape, dtype, Source("weight", name, tuple(shape)))
            for name, shape in shapes.items()}


def kv_zeros(kind: str = "kv"):
    """A ``zeros(shape, dtype)`` for ``common.KVCache`` that makes shape-only KV buffers."""
    def zeros(shape, dtype=np.float32):
        return Traced(shape, dtype, Source(kind, "kv_cache", tuple(shape)))
    return zeros
