"""What the four models share: weight access and the layers built from it, argument checks, one
KV cache, config parsing and random weights.

The layers take their arguments in one order everywhere -- activations, the weights Mapping, the
Hugging Face module path, then hyper-parameters -- so ``linear(x, weights,
"model.layers.3.mlp.up_proj")`` reads the tensors ``model.layers.3.mlp.up_proj.weight`` (and
``.bias`` when the checkpoint has one).

Forward functions written with these helpers also run under :func:`pyworkloads.kernels.trace`
(the shape-only run the cost model reads its layer list from), so they follow three rules:
weights are read with :func:`weight` (never ``np.asarray``), arrays made inside a forward pass
derive from an input (``np.zeros_like(x, shape=...)``), and no Python branch depends on the
values of an activation.
"""
from __future__ import annotations

import math
import numbers
import os
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path

import numpy as np

from .. import io, kernels, ops, quant

__all__ = [
    "weight", "linear", "linears", "layer_norm", "rms_norm", "embedding", "check_weights",
    "random_weights",
    "count_params", "check_int", "check_number", "check_bool", "check_choice", "check_token_ids",
    "check_layers", "check_width", "check_positions", "check_token_id", "check_sizes",
    "MAX_LAYERS", "MAX_WIDTH", "MAX_POSITIONS", "describe", "config_from_dict", "KVCache",
    "available_memory", "check_fits",
]


# ---------------------------------------------------------------------------------------------
# weights and the layers built on them
# ---------------------------------------------------------------------------------------------
def weight(weights: Mapping, name: str) -> np.ndarray:
    """The tensor ``name`` as float32, converted now (a view when it is stored as float32), so a
    memory-mapped fp16/bf16 checkpoint is never held in float32 as a whole.  A block-quantized
    matrix (:class:`~pyworkloads.quant.QuantizedTensor`) stays quantized: ``linear`` runs it
    through ``kernels.qmatmul``."""
    try:
        w = weights[name]
    except KeyError:
        raise KeyError(f"the weights have no tensor named {name!r}") from None
    if isinstance(w, np.ndarray):
        return w if w.dtype == np.float32 else np.asarray(w, dtype=np.float32)
    if isinstance(w, quant.QuantizedTensor) or not np.isscalar(w):
        return w    # kept in its blocks (kernels.qmatmul), or a traced tensor (kernels.trace)
    return np.asarray(w, dtype=np.float32)


def linear(x, weights: Mapping, name: str):
    """y = x Wᵀ + b of the module ``name``.  x [..., Din] -> [..., Dout]; the bias is used when
    the checkpoint has ``name.bias``."""
    bias = weight(weights, f"{name}.bias") if f"{name}.bias" in weights else None
    return ops.linear(x, weight(weights, f"{name}.weight"), bias)


def linears(x, weights: Mapping, names: list[str]):
    """``[linear(x, weights, name) for name in names]``, run as one kernel call over all the
    weights (:func:`ops.linears`): the projections that read the same x."""
    ws = [weight(weights, f"{n}.weight") for n in names]
    bs = [weight(weights, f"{n}.bias") if f"{n}.bias" in weights else None for n in names]
    return ops.linears(x, ws, bs)


def layer_norm(x, weights: Mapping, name: str, eps: float):
    """LayerNorm over the last axis with the module's weight and bias.  x [..., D] -> [..., D]."""
    with kernels.scope(name):
        w, b = weight(weights, f"{name}.weight"), weight(weights, f"{name}.bias")
        return kernels.layer_norm(x, w, b, eps)


def rms_norm(x, weights: Mapping, name: str, eps: float):
    """RMSNorm over the last axis with the module's weight.  x [..., D] -> [..., D]."""
    with kernels.scope(name):
        return kernels.rms_norm(x, weight(weights, f"{name}.weight"), eps)


def embedding(ids: np.ndarray, weights: Mapping, name: str) -> np.ndarray:
    """Rows of the table ``name``.  ids int [...] -> float32 [..., D].  Only the rows looked up are
    converted, never a memory-mapped table as a whole (nor a quantized one decoded whole)."""
    stored = weights.dtype_of(name) if hasattr(weights, "dtype_of") else None
    if stored is None:                                                     # a dict of arrays
        table = weight(weights, name)
        return table.rows(ids) if isinstance(table, quant.QuantizedTensor) else table[ids]
    if stored in quant.BLOCKS:
        return weights[name].rows(ids)                                     # [..., D]
    if hasattr(weights, "raw"):                                            # a checkpoint on disk
        rows = weights.raw(name)[ids]                                      # [..., D] as stored
        return io.bf16_to_f32(rows) if weights.dtype_of(name) == "BF16" else rows.astype(np.float32)
    return weight(weights, name)[ids]                                      # [..., D]


FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


def check_weights(weights: Mapping, shapes: Mapping[str, tuple], model: str) -> None:
    """Every tensor of ``shapes`` is present, of that shape and of a float dtype; the error names
    the tensor.  Extra tensors (buffers old checkpoints carry) are ignored."""
    shape_of = getattr(weights, "shape_of", None)
    dtype_of = getattr(weights, "dtype_of", None)
    missing = [n for n in shapes if n not in weights]
    if missing:
        raise ValueError(f"{model} weights lack {len(missing)} tensor(s) the config needs, "
                         f"e.g. {missing[0]!r} (shape {tuple(shapes[missing[0]])})")
    for name, shape in shapes.items():
        got = tuple(shape_of(name)) if shape_of else tuple(np.shape(weights[name]))
        if got != tuple(shape):
            raise ValueError(f"{model} weight {name!r} has shape {got}, "
                             f"but the config needs {tuple(shape)}")
        if dtype_of:
            dt = dtype_of(name)
        elif isinstance(weights[name], quant.QuantizedTensor):
            dt = weights[name].qtype
        else:
            dt = np.asarray(weights[name]).dtype
            dt = "F32" if dt.kind == "f" else str(dt)
        if dt in quant.BLOCKS and len(shape) != 2:
            raise TypeError(f"{model} weight {name!r} is block-quantized ({dt}), but only "
                            "matrices may be: it must be stored as a float dtype")
        if dt not in FLOAT_DTYPES and dt not in quant.BLOCKS:
            raise TypeError(f"{model} weight {name!r} is stored as {dt}; expected a float "
                            f"dtype (F32, F16, BF16) or a block format ({', '.join(quant.BLOCKS)})")


Init = Callable[[str, tuple, np.random.Generator], "np.ndarray | None"]


def random_weights(shapes: Mapping[str, tuple], seed: int = 0, std: float = 0.02,
                   init: Init | None = None) -> dict[str, np.ndarray]:
    """float32 weights of the given shapes: N(0, std) matrices and embeddings, norm weights at 1,
    biases at 0.  ``init(name, shape, rng)`` may return a tensor for any name (None: the default),
    e.g. Whisper's fixed sinusoidal positions."""
    check_fits(4 * count_params(shapes), "random weights")
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        t = init(name, tuple(shape), rng) if init is not None else None
        if t is None:
            if name.endswith(".bias"):
                t = np.zeros(shape, np.float32)
            elif len(shape) == 1 and name.endswith(".weight") and ("norm" in name
                                                                   or "layrnorm" in name):
                t = np.ones(shape, np.float32)
            else:
                t = rng.standard_normal(shape, dtype=np.float32)
                t *= np.float32(std)
        out[name] = np.asarray(t, dtype=np.float32)
    return out


def count_params(shapes: Mapping[str, tuple]) -> int:
    """The number of parameters of a weight layout (each tensor once)."""
    return sum(math.prod(s) for s in shapes.values())


# ---------------------------------------------------------------------------------------------
# argument checks: one wording for every model
# ---------------------------------------------------------------------------------------------
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60


def describe(value) -> str:
    """A value for an error message: short, however large or deeply nested (Python refuses to
    format integers of more than 4300 digits)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        bits = int(value).bit_length()
        return str(int(value)) if bits <= 128 else f"an integer of {bits} bits"
    return _REPR.repr(value)


def check_int(value, name: str, minimum: int | None = 1, maximum: int | None = None,
              limit: str = "") -> int:
    """``value`` as an int, refusing bools, floats and values outside [minimum, maximum]
    (``limit`` says, in the message, what the maximum stands for)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {describe(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {describe(value)}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an integer <= {maximum}{limit}, got {describe(value)}")
    return value


# Limits on a config's sizes, far beyond any real checkpoint and small enough that nothing built
# from them (the weight layout's names, a KV cache's shape, a parameter count) can take long or
# overflow: a config is refused in microseconds, before any list of layers is built.
MAX_LAYERS = 1000
"""Layers of a stack, and other counts of repeated modules (mask tokens, MLP depth): the deepest
released transformers have about 130 layers (LLaMA 3.1 405B: 126)."""
MAX_WIDTH = 2 ** 20
"""Widths, head counts, vocabulary sizes, image sides, channels: the widest real hidden sizes are
~16k-50k and the largest vocabularies ~256k; 1,048,576 leaves room and keeps any one weight
matrix within 2^40 elements."""
MAX_POSITIONS = 2 ** 24
"""Context lengths (max_position_embeddings and the like): long-context configs reach ~10M."""


def check_layers(value, name: str, minimum: int = 1) -> int:
    """A count of layers (or of other repeated modules) in [minimum, MAX_LAYERS]."""
    return check_int(value, name, minimum, MAX_LAYERS,
                     " (no real checkpoint repeats a module that often; the deepest have ~130 "
                     "layers)")


def check_width(value, name: str, minimum: int = 1) -> int:
    """A width, head count, vocabulary size or image side in [minimum, MAX_WIDTH]."""
    return check_int(value, name, minimum, MAX_WIDTH,
                     " (2^20: no real checkpoint has a size that large)")


def check_positions(value, name: str) -> int:
    """A context length in [1, MAX_POSITIONS]."""
    return check_int(value, name, 1, MAX_POSITIONS,
                     " (2^24: no real checkpoint has a context that long)")


def check_token_id(value, name: str, vocab_size: int, optional: bool = False) -> int | None:
    """A special token's id in [0, vocab_size) (None allowed when ``optional``)."""
    if value is None and optional:
        return None
    return check_int(value, name, 0, vocab_size - 1, f" (inside the vocabulary of {vocab_size})")


def check_sizes(cfg, what: str, widths=(), layers=(), positions=(), token_ids=()) -> None:
    """Replace each named field of the config ``cfg`` by its checked value: widths with
    :func:`check_width`, layer counts with :func:`check_layers`, context lengths with
    :func:`check_positions`, then special token ids with :func:`check_token_id` against
    ``cfg.vocab_size``."""
    for names, check in ((widths, check_width), (layers, check_layers),
                         (positions, check_positions)):
        for f in names:
            setattr(cfg, f, check(getattr(cfg, f), f"{what}.{f}"))
    for f in token_ids:
        setattr(cfg, f, check_token_id(getattr(cfg, f), f"{what}.{f}", cfg.vocab_size))


def check_number(value, name: str, minimum: float | None = None, maximum: float | None = None,
                 exclusive_minimum: bool = False) -> float:
    """``value`` as a finite float in [minimum, maximum] ((minimum, maximum] when exclusive)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a finite number, got {describe(value)}")
    try:
        value = float(value)                    # an integer beyond float's range: OverflowError
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
        op = ">" if exclusive_minimum else ">="
        raise ValueError(f"{name} must be {op} {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_bool(value, name: str) -> bool:
    """A real bool (``"false"`` or 0 would be truthy or silently coerced)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be true or false, got {describe(value)}")
    return bool(value)


def check_choice(value, name: str, choices) -> object:
    """One of ``choices``, compared by type, then value (so a list or an array is refused, not
    compared element by element)."""
    if not any(isinstance(value, type(c)) and value == c for c in choices):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, "
                         f"got {describe(value)}")
    return value


def check_token_ids(ids, name: str, vocab_size: int, max_length: int | None = None) -> np.ndarray:
    """Token ids as int64 [B, T] (a 1-D sequence becomes [1, T]), each in [0, vocab_size), at most
    ``max_length`` per row."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{name} must be integer token ids, got {type(ids).__name__}; "
                        "tokenize the text first")
    try:
        arr = np.asarray(ids)
    except ValueError:
        raise ValueError(f"{name} must be a rectangular [batch, tokens] array "
                         "(rows of equal length)") from None
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype, got {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be [batch, tokens] (or a 1-D sequence), "
                         f"got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); give at least one token per row")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} contains id {bad}, outside the vocabulary [0, {vocab_size})")
    if max_length is not None and arr.shape[1] > max_length:
        raise ValueError(f"{name} has {arr.shape[1]} tokens per row, more than the "
                         f"{max_length} positions left in the model's context")
    return arr.astype(np.int64, copy=False)


def config_from_dict(cls, d, what: str):
    """A config dataclass from the keys of a Hugging Face config dict that it knows (the others --
    architectures, id2label, torch_dtype ... -- are bookkeeping this engine does not need)."""
    if d is None:
        d = {}
    if not isinstance(d, Mapping):
        raise TypeError(f"{what} must be an object (a section of config.json), "
                        f"got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in known})


# ---------------------------------------------------------------------------------------------
# tokenizers
# ---------------------------------------------------------------------------------------------
def tokenizer_from_file(file: Path):
    """A ``tokenizers.Tokenizer`` from a checkpoint's tokenizer.json; a file that is not one is a
    ValueError naming it (the Rust library raises a bare Exception, or panics)."""
    from tokenizers import Tokenizer
    try:
        return Tokenizer.from_file(str(file))
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException as exc:
        raise ValueError(f"{file}: not a valid tokenizer file ({type(exc).__name__}: "
                         f"{str(exc)[:200]})") from exc


# ---------------------------------------------------------------------------------------------
# the KV cache
# ---------------------------------------------------------------------------------------------
class KVCache:
    """Keys and values of the tokens seen so far, for every attention layer of a decoder:
    ``k[i]``, ``v[i]`` are [B, KVH, capacity, Dh], preallocated, and the first ``length``
    positions are filled.  A decoding step writes its new columns in place (no copy of the past)
    and attends to the filled prefix.

    ``zeros`` makes the buffers (``np.zeros``; the cost model's trace passes shape-only ones)."""

    def __init__(self, layers: int, batch: int, kv_heads: int, head_dim: int, capacity: int,
                 zeros: Callable = np.zeros):
        sizes = dict(layers=layers, batch=batch, kv_heads=kv_heads, head_dim=head_dim,
                     capacity=capacity)
        for arg, v in sizes.items():
            check_int(v, f"KVCache {arg}")
        shape = (batch, kv_heads, capacity, head_dim)
        self.k = [zeros(shape, np.float32) for _ in range(layers)]
        self.v = [zeros(shape, np.float32) for _ in range(layers)]
        self.batch, self.capacity, self.length = batch, capacity, 0

    def check_room(self, batch: int, new: int) -> None:
        """Refuse a step of ``new`` tokens for ``batch`` rows that this cache cannot hold."""
        if batch != self.batch:
            raise ValueError(f"the input has batch {batch} but the KV cache was made for "
                             f"batch {self.batch}")
        if self.length + new > self.capacity:
            raise ValueError(f"KV cache full: {self.length} cached + {new} new tokens > "
                             f"its capacity {self.capacity}")

    def append(self, layer: int, k, v):
        """Write k, v [B, KVH, T, Dh] after the Tc = ``length`` cached positions of ``layer`` and
        return that layer's keys and values so far, [B, KVH, Tc + T, Dh] each (views, no copy).
        ``length`` advances once per step, in :meth:`advance`, after every layer has appended."""
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, new: int) -> None:
        self.length += new


# ---------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------
def available_memory() -> int:
    """Bytes this process could still allocate: the kernel's MemAvailable, capped by a cgroup
    (container) limit when there is one."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return avail


def check_fits(need_bytes: int, label: str) -> None:
    """Refuse, with MemoryError, random float32 weights that would not fit (every from_preset,
    and :func:`random_weights` itself, before it allocates anything)."""
    from . import available_memory as avail_fn  # looked up late so tests can patch it there
    avail = avail_fn()
    if need_bytes > 0.9 * avail:
        raise MemoryError(f"{label}: random float32 weights need {need_bytes / 1e9:.1f} GB but "
                          f"only {avail / 1e9:.1f} GB of memory is available; pick a smaller "
                          "preset, or load an fp16/bf16 checkpoint with from_pretrained "
                          "(memory-mapped, converted per use)")
