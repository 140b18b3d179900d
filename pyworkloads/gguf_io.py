"""GGUF checkpoints (llama.cpp's format): metadata and tensors, memory-mapped, validated first.

A GGUF file is ``"GGUF"``, a u32 version (2 or 3), a u64 tensor count and a u64 metadata count,
then the metadata (key/value pairs: integers, floats, bools, strings and arrays of one of these),
the tensor infos (name, dimensions innermost first, ggml type id, offset into the data section),
padding to ``general.alignment`` (32 by default) and the data section.  All little-endian.

:func:`load_gguf` returns a :class:`GGUFCheckpoint`: a read-only Mapping from the file's tensor
names to tensors, with ``.metadata`` as plain Python values.  The values and the tensor views
come from the ``gguf`` package's ``GGUFReader``; this module adds the checks it lacks.  The
reader trusts every count and length it reads: an array claiming 2^40 elements makes it loop
forever, appending an empty array per element (a read past the end of the map yields an empty
array, not an error), and a large count in a large file makes it walk the tensor data as if it
were metadata.  So before the reader sees the file, :func:`_check_layout` walks the header's
structure -- lengths, counts, type ids, dimensions and offsets, no values -- and refuses any
count that cannot fit in the bytes left, then every tensor whose data falls outside the file,
overlaps another, is misaligned or is of a type this package cannot compute with.

Tensors come back as the models want them (the same contract as :class:`.io.SafeTensors`):
F32 as a read-only view of the mapped file, F16 and BF16 converted to float32 on each access
(``raw`` gives the stored bits: BF16 as uint16), and block-quantized types as a
:class:`~pyworkloads.quant.QuantizedTensor` whose ``data`` is a uint8 view [rows, bytes per row]
of the map.  Shapes are in NumPy / Hugging Face order (outermost first), the reverse of the
order GGUF lists them in.
"""
from __future__ import annotations

import math
import mmap
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import quant
from .io import bf16_to_f32, check_in_memory, fits_in_memory, read_into_huge_pages

__all__ = ["load_gguf", "GGUFCheckpoint", "SUPPORTED_TYPES", "MAX_TENSORS", "MAX_KEYS",
           "MAX_ARRAY_ITEMS"]

GGUF_MAGIC = b"GGUF"
VERSIONS = (2, 3)             # v1 counted in u32 and is long gone; the gguf package reads 2 and 3
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4                  # GGML_MAX_DIMS: ggml tensors have at most four dimensions

# Limits far beyond real files, so that a hostile header is refused before the reader (which
# spends ~10 microseconds and a NumPy array per metadata element) is handed it.  The largest
# real files have ~1,000 tensors and ~50 keys; the longest arrays are a vocabulary's tokens,
# scores, types and merges, each at most the vocabulary size (the models refuse more than 2^20).
MAX_TENSORS = 2 ** 16
MAX_KEYS = 2 ** 16
MAX_ARRAY_ITEMS = 2 ** 21     # metadata array elements, all arrays together (LLaMA 3: 0.54M)

# the float types, by ggml name: NumPy storage dtype
_FLOAT_TYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
SUPPORTED_TYPES = (*_FLOAT_TYPES, *quant.BLOCKS)
"""The ggml tensor types :func:`load_gguf` accepts: the float types the kernels read and the block
formats :mod:`pyworkloads.quant` decodes."""

# metadata value types (gguf's GGUFValueType): fixed sizes; 8 is a string, 9 an array
_FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_UINT32, _STRING, _ARRAY = 4, 8, 9
# the reader lists the header's counts among the metadata fields, under these names
_READER_HEADER_FIELDS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")
_TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32",
               6: "float32", 7: "bool", 8: "string", 9: "array", 10: "uint64", 11: "int64",
               12: "float64"}


def _short(v, limit: int = 80) -> str:
    """repr(v), cut to ``limit`` characters (a hostile name can be megabytes long)."""
    r = repr(v)
    return r if len(r) <= limit else r[:limit] + "..."


def _ggml_types() -> dict[int, str]:
    """ggml type id -> name (0 -> "F32", 12 -> "Q4_K", ...), as the gguf package knows them."""
    from gguf import GGMLQuantizationType
    return {t.value: t.name for t in GGMLQuantizationType}


def _type_size(type_name: str) -> tuple[int, int]:
    """(elements per block, bytes per block) of a supported type."""
    if type_name in _FLOAT_TYPES:
        return 1, _FLOAT_TYPES[type_name].itemsize
    return quant.BLOCKS[type_name]


class _TensorInfo(NamedTuple):
    name: str
    type_name: str
    shape: tuple[int, ...]        # NumPy order (outermost first)
    start: int                    # absolute byte offset in the file
    nbytes: int


# ---------------------------------------------------------------------------------------------
# the layout walk: every count and length checked against the bytes that are left
# ---------------------------------------------------------------------------------------------
class _Walk:
    """A cursor over the file's bytes that refuses to read past the end."""

    def __init__(self, buf, path: Path):
        self.buf, self.path, self.size, self.pos = buf, path, len(buf), 0

    def err(self, msg: str) -> ValueError:
        return ValueError(f"{self.path}: {msg}")

    def left(self) -> int:
        return self.size - self.pos

    def take(self, n: int, what: str) -> int:
        """Skip ``n`` bytes, returning where they start."""
        if n > self.left():
            raise self.err(f"{what} at byte {self.pos} needs {n} bytes, but the file ends "
                           f"{self.left()} bytes later (truncated?)")
        at, self.pos = self.pos, self.pos + n
        return at

    def u32(self, what: str) -> int:
        return struct.unpack_from("<I", self.buf, self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack_from("<Q", self.buf, self.take(8, what))[0]

    def string(self, what: str) -> str:
        n = self.u64(f"the length of {what}")
        at = self.take(n, f"{what} ({n} bytes)")
        try:
            return bytes(self.buf[at:at + n]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.err(f"{what} at byte {at} is not valid UTF-8 ({exc.reason})") from None

    def skip_string(self, what: str) -> None:
        n = self.u64(f"the length of {what}")
        self.take(n, f"{what} ({n} bytes)")


def _check_count(walk: _Walk, count: int, what: str, min_size: int, limit: int) -> None:
    """A count read from the header, refused when its items cannot fit in the bytes left (each
    takes at least ``min_size``) or exceed ``limit``: checked before any loop runs over it."""
    if count > limit:
        raise walk.err(f"the header claims {count} {what}, more than the {limit} this loader "
                       "accepts (real files have far fewer): corrupt or hostile file")
    if count * min_size > walk.left():
        raise walk.err(f"the header claims {count} {what}, which need at least "
                       f"{count * min_size} bytes, but only {walk.left()} are left in the "
                       "file (truncated or corrupt?)")


def _skip_value(walk: _Walk, vtype: int, key: str, items: list[int]) -> None:
    """Step over one metadata value of type ``vtype``; ``items`` counts array elements so far."""
    what = f"the value of metadata {_short(key)}"
    if vtype in _FIXED_SIZES:
        walk.take(_FIXED_SIZES[vtype], what)
    elif vtype == _STRING:
        walk.skip_string(what)
    elif vtype == _ARRAY:
        itype = walk.u32(f"the element type of {what}")
        n = walk.u64(f"the length of {what}")
        if itype == _ARRAY:
            raise walk.err(f"metadata {_short(key)} is an array of arrays, which GGUF readers "
                           "(llama.cpp's included) do not support")
        if itype not in _TYPE_NAMES:
            raise walk.err(f"metadata {_short(key)} is an array of unknown value type {itype} "
                           f"(known: 0-12)")
        _check_count(walk, n, f"elements in the array {_short(key)}",
                     _FIXED_SIZES.get(itype, 8), MAX_ARRAY_ITEMS - items[0])
        items[0] += n
        if itype == _STRING:
            for i in range(n):
                walk.skip_string(f"element {i} of {what}")
        else:
            walk.take(n * _FIXED_SIZES[itype], what)
    else:
        raise walk.err(f"metadata {_short(key)} has unknown value type {vtype} (known: 0-12)")


def _check_layout(buf, path: Path) -> tuple[int, int, list[_TensorInfo]]:
    """Walk the header of the GGUF bytes ``buf``: -> (version, alignment, tensor infos).

    Every count is checked against the bytes left before it is looped over, every string and
    array against the end of the file, and every tensor's data against the file, its alignment
    and the other tensors.  Only lengths, type ids, dimensions and offsets are read (and
    ``general.alignment``, which places the data section): the values are the reader's job."""
    walk = _Walk(buf, path)
    if walk.size < 24 or bytes(buf[:4]) != GGUF_MAGIC:
        got = bytes(buf[:4])
        raise walk.err(f"not a GGUF file (it starts with {got!r}, not {GGUF_MAGIC!r}"
                       + (f", and has only {walk.size} bytes" if walk.size < 24 else "") + ")")
    version = struct.unpack_from("<I", buf, 4)[0]
    if version not in VERSIONS:
        swapped = struct.unpack_from(">I", buf, 4)[0]
        if swapped in VERSIONS:
            raise walk.err(f"a big-endian GGUF file (version {swapped}); only little-endian "
                           "files are supported (the kernels read little-endian data)")
        raise walk.err(f"GGUF version {version} is not supported (supported: "
                       f"{', '.join(map(str, VERSIONS))})")
    walk.pos = 8
    n_tensors = walk.u64("the tensor count")
    n_keys = walk.u64("the metadata count")
    # the smallest key/value: an empty key (8), its type (4) and a 1-byte value
    _check_count(walk, n_keys, "metadata keys", 13, MAX_KEYS)
    keys, items, alignment = set(), [0], DEFAULT_ALIGNMENT
    for i in range(n_keys):
        key = walk.string(f"metadata key #{i}")
        if key in keys:
            raise walk.err(f"metadata key {_short(key)} appears twice")
        keys.add(key)
        vtype = walk.u32(f"the value type of metadata {_short(key)}")
        at = walk.pos
        _skip_value(walk, vtype, key, items)
        if key == "general.alignment":            # it places the data section: read it here
            if vtype != _UINT32:
                raise walk.err(f"general.alignment must be a uint32, got a "
                               f"{_TYPE_NAMES.get(vtype, f'value of type {vtype}')}")
            alignment = struct.unpack_from("<I", buf, at)[0]
            if alignment == 0 or alignment & (alignment - 1):
                raise walk.err(f"general.alignment must be a power of two, got {alignment}")
    # the smallest tensor info: an empty name (8), no dimensions (4), type (4), offset (8)
    _check_count(walk, n_tensors, "tensors", 24, MAX_TENSORS)
    types = _ggml_types()
    raw = []
    for i in range(n_tensors):
        name = walk.string(f"the name of tensor #{i}")
        what = f"tensor {_short(name)}"
        n_dims = walk.u32(f"the dimension count of {what}")
        if n_dims > MAX_DIMS:
            raise walk.err(f"{what} has {n_dims} dimensions; ggml tensors have at most "
                           f"{MAX_DIMS}")
        dims = [walk.u64(f"dimension {j} of {what}") for j in range(n_dims)]
        type_id = walk.u32(f"the type of {what}")
        offset = walk.u64(f"the data offset of {what}")
        raw.append((name, dims, type_id, offset))
    data_start = -(-walk.pos // alignment) * alignment       # the next multiple of alignment
    tensors, names = [], set()
    for name, dims, type_id, offset in raw:
        what = f"tensor {_short(name)}"
        if name in names:
            raise walk.err(f"{what} appears twice")
        names.add(name)
        if type_id not in types:
            raise walk.err(f"{what} has unknown ggml type id {type_id} (supported: "
                           f"{', '.join(SUPPORTED_TYPES)})")
        tname = types[type_id]
        if tname not in SUPPORTED_TYPES:
            raise walk.err(f"{what} is stored as {tname} (ggml type {type_id}), which this "
                           f"package cannot compute with (supported: {', '.join(SUPPORTED_TYPES)})")
        shape = tuple(reversed(dims))                          # GGUF lists innermost first
        block, size = _type_size(tname)
        if not shape and block > 1:
            raise walk.err(f"{what}: a {tname} tensor needs at least one dimension (its rows "
                           "of blocks), got none")
        if shape and shape[-1] % block:
            raise walk.err(f"{what}: {tname} stores rows in blocks of {block} weights, but its "
                           f"rows have {shape[-1]} (shape {shape})")
        n = math.prod(shape)
        nbytes = n // block * size
        if offset % alignment:
            raise walk.err(f"{what}: data offset {offset} is not a multiple of the file's "
                           f"alignment ({alignment}): misaligned data")
        start = data_start + offset
        if start + nbytes > walk.size:
            raise walk.err(f"{what}: {tname} {shape} needs {nbytes} bytes at byte {start}, "
                           f"past the end of the {walk.size}-byte file (truncated, or a wrong "
                           "shape or offset?)")
        tensors.append(_TensorInfo(name, tname, shape, start, nbytes))
    spans = sorted((t.start, t.start + t.nbytes, t.name) for t in tensors if t.nbytes)
    for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
        if begin < end:
            raise walk.err(f"the data of tensors {_short(a)} and {_short(b)} overlap (a wrong "
                           "shape or offset?)")
    return version, alignment, tensors


# ---------------------------------------------------------------------------------------------
# metadata values: the reader's fields as plain Python values
# ---------------------------------------------------------------------------------------------
def _field_value(field, path: Path):
    """A ``gguf.ReaderField`` as str, int, float, bool or a list of one of those."""
    def text(part, where):
        try:
            return bytes(part).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: {where} is not valid UTF-8 ({exc.reason})") from None

    main = int(field.types[0])
    where = f"metadata {_short(field.name)}"
    if main == _STRING:
        return text(field.parts[-1], where)
    if main != _ARRAY:
        return field.parts[-1][0].item()
    if not field.data or len(field.types) < 2:                  # an empty array
        return []
    if int(field.types[-1]) == _STRING:
        return [text(field.parts[i], f"element {k} of {where}") for k, i in enumerate(field.data)]
    return np.concatenate([field.parts[i] for i in field.data]).tolist()


# ---------------------------------------------------------------------------------------------
# the checkpoint
# ---------------------------------------------------------------------------------------------
class GGUFCheckpoint(Mapping):
    """One validated GGUF file.  ``ckpt[name]`` -> float32 np.ndarray (F32, F16, BF16) or
    :class:`~pyworkloads.quant.QuantizedTensor`; ``ckpt.raw(name)`` -> the stored values or
    bytes, zero-copy; ``dtype_of`` -> the ggml type name ("F32", "Q4_K", ...); ``shape_of`` ->
    the logical shape, outermost first.  ``metadata``: key -> str, int, float, bool or list;
    ``version``: 2 or 3; ``alignment``: of the data section.

    ``in_memory`` as for safetensors (:class:`pyworkloads.io.SafeTensors`): True reads the file
    into huge-page-advised memory, False keeps the gguf package's mapping, None reads it when
    it takes at most half of the free memory."""

    def __init__(self, path, in_memory: bool | None = None):
        self.path = Path(path)
        check_in_memory(in_memory, "GGUFCheckpoint")
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such GGUF file")
        size = self.path.stat().st_size
        if size < 24:
            raise ValueError(f"{self.path}: not a GGUF file (only {size} bytes; the 24-byte "
                             "header is missing)")
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            self.version, self.alignment, infos = _check_layout(m, self.path)
        reader = self._reader(size)
        self.metadata = {name: _field_value(field, self.path)
                         for name, field in reader.fields.items()
                         if name not in _READER_HEADER_FIELDS}
        self.in_memory = fits_in_memory(size) if in_memory is None else in_memory
        data = None
        if self.in_memory and infos:
            data = read_into_huge_pages(self.path, size, min(i.start for i in infos), self._err)
        self._entries = self._arrays(reader, infos, data)

    def _err(self, msg: str) -> ValueError:
        return ValueError(f"{self.path}: {msg}")

    def _reader(self, size: int):
        """The gguf package's reader over the checked file; whatever it raises (ValueError,
        KeyError, IndexError, struct or NumPy errors) becomes a ValueError naming the file."""
        from gguf import GGUFReader
        try:
            reader = GGUFReader(self.path)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            raise self._err(f"the gguf package could not read it ({type(exc).__name__}: "
                            f"{_short(str(exc), 200)})") from exc
        if len(reader.data) != size:                # replaced or truncated since it was checked
            raise self._err(f"the file changed size while it was opened ({size} bytes, then "
                            f"{len(reader.data)})")
        return reader

    def _arrays(self, reader, infos: list[_TensorInfo],
                data: memoryview | None) -> dict[str, tuple[_TensorInfo, object]]:
        """name -> (info, stored array): a view of each tensor's bytes -- in the reader's mapping,
        or in ``data`` (the file read into memory) -- checked to be where the layout walk found
        it, reshaped to [rows, bytes per row] (blocks), or to the logical shape (floats)."""
        found = {t.name: t for t in reader.tensors}
        entries = {}
        for info in infos:
            t = found.get(info.name)
            start = None if t is None else int(t.data_offset)
            if start != info.start or np.asarray(t.data).nbytes != info.nbytes:
                raise self._err(f"tensor {_short(info.name)}: the gguf package places it "
                                "differently from the header walk (corrupt header?)")
            if data is None:
                raw = np.asarray(t.data).reshape(-1).view(np.uint8)   # the bytes, zero-copy
            else:
                raw = np.frombuffer(data, np.uint8, count=info.nbytes, offset=info.start)
            if info.type_name in _FLOAT_TYPES:
                arr = raw.view(_FLOAT_TYPES[info.type_name]).reshape(info.shape)
            else:
                block, size = quant.BLOCKS[info.type_name]
                K = info.shape[-1] if info.shape else 1
                arr = raw.reshape(math.prod(info.shape[:-1]), K // block * size)
            entries[info.name] = (info, arr)
        return entries

    # Mapping interface ----------------------------------------------------------------------
    def __getitem__(self, name: str):
        info, arr = self._entry(name)
        if info.type_name == "F32":
            return self.raw(name)
        if info.type_name == "F16":
            return arr.astype(np.float32)
        if info.type_name == "BF16":
            return bf16_to_f32(arr)
        return quant.QuantizedTensor(info.type_name, info.shape, arr)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def _entry(self, name):
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None

    def raw(self, name: str) -> np.ndarray:
        """The tensor as stored, read-only: F32/F16 values and BF16 bits (uint16) in the logical
        shape, blocks as uint8 [rows, bytes per row].  A view of the mapped file, or a copy when
        an alignment below the item size (``general.alignment`` may be 1) leaves it at an
        address the compiled kernels must not load floats from."""
        arr = self._entry(name)[1]
        if not arr.flags.aligned:
            arr = arr.copy()                        # NumPy allocates aligned memory
            arr.flags.writeable = False
        return arr

    def dtype_of(self, name: str) -> str:
        """The ggml type name: "F32", "F16", "BF16", "Q8_0", "Q4_K", ..."""
        return self._entry(name)[0].type_name

    def shape_of(self, name: str) -> tuple[int, ...]:
        """The logical shape, outermost first (GGUF lists it the other way round)."""
        return self._entry(name)[0].shape

    def __repr__(self):
        return f"GGUFCheckpoint({str(self.path)!r}, {len(self)} tensors)"


def load_gguf(path, in_memory: bool | None = None) -> GGUFCheckpoint:
    """Open and validate one ``.gguf`` file; see :class:`GGUFCheckpoint`."""
    return GGUFCheckpoint(path, in_memory)
