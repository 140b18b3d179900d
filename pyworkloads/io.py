"""Checkpoint I/O: safetensors only, validated before any tensor is touched, read into memory
backed by huge pages or memory-mapped.

A safetensors file is ``u64 little-endian header length N`` + ``N bytes of JSON`` + ``data``.
The JSON maps tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative
to the data section) plus an optional ``"__metadata__"`` of strings.  The tensors' byte ranges,
sorted, tile the data section exactly.

:func:`load_safetensors` returns a :class:`SafeTensors` mapping: looking a name up returns a NumPy
view of the mapped file (float32 stored tensors and integers: zero-copy) or a fresh float32 array
(F16 / BF16 / F64 are converted on each access, so a model can convert layer by layer and never
hold every weight in float32).  A tensor whose offset in the file is not a multiple of its item
size is copied to aligned memory on access instead of mapped.  Every malformed header is a
ValueError naming the file, raised when the file is opened.  Pickle-based formats are refused:
unpickling runs arbitrary code.

Where the tensors live (``in_memory``): a checkpoint that takes at most half of the memory still
available is read into anonymous memory advised to use 2 MB pages (``MADV_HUGEPAGE``); a larger
one is memory-mapped, so the kernel pages it in and out as it is used.  The pages matter for
decode, which reads every weight once per token: 440 MB of float32 weights are 110,000 4-KB
pages, and each new page costs the GEMV a TLB miss and a page-table walk, where 2-MB pages need
220 (benchmarks/README.md has the measured difference).  File-backed mappings do not get huge
pages without the kernel's read-only-THP support for file systems, so reading is the portable
way.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

__all__ = ["load_safetensors", "save_safetensors", "load_checkpoint", "load_config", "SafeTensors",
           "bf16_to_f32", "f32_to_bf16", "CheckpointWeights", "PICKLE_SUFFIXES", "fits_in_memory",
           "read_into_huge_pages", "check_in_memory"]

MAX_HEADER_BYTES = 100 * 1024 * 1024          # the reference implementation's own limit
MAX_JSON_BYTES = 64 * 1024 * 1024             # config.json / index: real ones are under 1 MB
HUGE_PAGE = 2 * 1024 * 1024   # x86-64's transparent huge page: in-memory data starts on one
IN_MEMORY_SHARE = 0.5      # in_memory=None reads checkpoints up to this share of free memory
MAX_RANK = 32             # NumPy 1.x's limit on dimensions; checkpoint tensors have at most 5
MAX_INT_DIGITS = 20       # 2^64 has 20 digits: a longer integer is no u64 offset or dimension
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

# safetensors dtype -> (NumPy storage dtype, bytes per element)
_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_FLOAT_CODES = {"F64", "F32", "F16", "BF16"}


def _refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(
            f"{path}: {path.suffix} checkpoints are Python pickles, which can run arbitrary code "
            "when loaded; pyworkloads reads safetensors only. Convert once with "
            "`transformers`' save_pretrained(..., safe_serialization=True) or safetensors' "
            "convert script.")


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise _DuplicateKey(k)
        d[k] = v
    return d


class _RefusedNumber(ValueError):
    pass


def _parse_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise _RefusedNumber(f"an integer of {digits} digits (more than {MAX_INT_DIGITS}: larger "
                             "than any size, id or offset)")
    return int(text)


def _parse_setting_int(text: str) -> int:
    """An integer of a settings file: sizes out of range are refused by the field's own check,
    which names it; only what int() cannot even convert (~4300 digits) is refused here."""
    digits = len(text.lstrip("-"))
    if digits > 1000:
        raise _RefusedNumber(f"an integer of {digits} digits")
    return int(text)


def _refuse_constant(text: str):
    raise _RefusedNumber(f"{text}, which JSON does not allow")


def _parse_json(raw: bytes, err, what: str):
    """``raw`` as JSON: UTF-8, no repeated names, no NaN/Infinity, integers of at most 20
    digits, nesting within Python's recursion limit; any failure is ``err(message)``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise err(f"{what} is not valid UTF-8 JSON ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_int=_parse_int,
                          parse_constant=_refuse_constant)
    except _DuplicateKey as exc:
        raise err(f"{what} names {_short(exc.args[0])} twice") from None
    except RecursionError:
        raise err(f"{what} nests JSON arrays or objects too deeply") from None
    except _RefusedNumber as exc:
        raise err(f"{what} holds {exc}") from None
    except ValueError as exc:                   # JSONDecodeError
        raise err(f"{what} is not valid UTF-8 JSON ({str(exc)[:200]})") from None


def _check_text(s: str, err, what: str) -> None:
    """JSON can escape lone surrogates (\\ud800), which are not Unicode text."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise err(f"{what} {_short(s)} is not valid Unicode (a lone surrogate)") from None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(v, limit: int = 80) -> str:
    """repr(v), cut to ``limit`` characters (a hostile header can hold megabytes)."""
    r = repr(v)
    return r if len(r) <= limit else r[:limit] + "..."


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 (stored as uint16) -> float32: the 16 bits are the top half of a float32."""
    bits = raw.astype(np.uint32)
    bits <<= 16                                 # in place: a 0-d array stays an array
    return bits.view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), round to nearest even (NaN stays NaN)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
    return np.where(np.isnan(x), 0x7FC0, rounded).astype(np.uint16)


class SafeTensors(Mapping):
    """One validated safetensors file.  ``st[name]`` -> np.ndarray (float tensors as float32,
    integers and bools as stored); ``st.raw(name)`` -> the stored bits, zero-copy.

    ``in_memory``: True reads the file into huge-page-advised memory, False memory-maps it, None
    (the default) reads it when it takes at most ``IN_MEMORY_SHARE`` of the available memory
    (see the module docstring).  Either way the arrays are read-only views."""

    def __init__(self, path, in_memory: bool | None = None):
        self.path = Path(path)
        check_in_memory(in_memory, "SafeTensors")
        _refuse_pickle(self.path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such safetensors file")
        size = self.path.stat().st_size
        if size < 8:
            raise ValueError(f"{self.path}: not a safetensors file (only {size} bytes; "
                             "the 8-byte header length is missing)")
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > MAX_HEADER_BYTES:
                raise ValueError(f"{self.path}: header length {n} exceeds the "
                                 f"{MAX_HEADER_BYTES}-byte limit (corrupt or not safetensors)")
            if 8 + n > size:
                raise ValueError(f"{self.path}: header length {n} runs past the end of the "
                                 f"{size}-byte file (truncated?)")
            header_bytes = f.read(n)
        self.metadata, self._entries = self._parse_header(header_bytes, size - 8 - n)
        self._data_start = 8 + n
        self._bytes = None                          # the file: a read-only mapping or buffer
        self._views: dict[str, np.ndarray] = {}     # raw() of aligned tensors: views, kept
        if in_memory is None:
            in_memory = fits_in_memory(size)
        self.in_memory = bool(in_memory)
        if size > self._data_start and in_memory:
            self._bytes = read_into_huge_pages(self.path, size, self._data_start, self._err)
        elif size > self._data_start:
            with open(self.path, "rb") as f:
                self._bytes = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            mapped = len(self._bytes)
            if mapped != size:                  # replaced or truncated since it was read
                self._bytes.close()
                raise self._err(f"the file changed size while it was opened ({size} bytes, "
                                f"then {mapped})")

    def _err(self, msg):
        return ValueError(f"{self.path}: {msg}")

    def _parse_header(self, raw: bytes, data_len: int):
        """The header's metadata and entries name -> (dtype code, shape, begin, end), checked as
        the reference implementation checks them: every tensor's bytes inside the data section,
        and the tensors, sorted by offset, tiling it -- each one starting where the previous one
        ends, from 0 to the section's end.  A gap, an overlap or bytes left over mean the
        offsets do not describe this file (a header length off by one shifts every value)."""
        header = _parse_json(raw, self._err, "header")
        if not isinstance(header, dict):
            raise self._err(f"header must be a JSON object, got {type(header).__name__}")
        metadata = header.pop("__metadata__", None)
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str)
                                                     for v in metadata.values()):
            raise self._err("__metadata__ must map strings to strings")
        for k, v in metadata.items():
            _check_text(k, self._err, "__metadata__ key")
            _check_text(v, self._err, f"__metadata__[{_short(k)}]")
        entries = {}
        for name, info in header.items():
            _check_text(name, self._err, "tensor name")
            entries[name] = self._entry_of(name, info, data_len)
        spans = sorted((begin, end, name) for name, (_, _, begin, end) in entries.items())
        covered, previous = 0, None
        for begin, end, name in spans:
            if begin > covered:
                raise self._err(f"bytes [{covered}, {begin}) of the data section belong to no "
                                f"tensor (before {_short(name)}): the offsets do not describe this "
                                "file (wrong header length?)")
            if begin < covered:
                raise self._err(f"tensors {_short(previous)} and {_short(name)} overlap in the "
                                "data section")
            covered, previous = end, name
        if covered != data_len:
            raise self._err(f"the data section has {data_len} bytes but its tensors cover "
                            f"{covered}: {data_len - covered} bytes at the end belong to no "
                            "tensor (wrong header length, or bytes appended?)")
        return metadata, entries

    def _entry_of(self, name: str, info, data_len: int):
        """One header entry checked: (code, shape, begin, end)."""
        what = f"tensor {_short(name)}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise self._err(f"{what}: entry must have exactly dtype, shape and "
                            "data_offsets")
        code, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(code, str) or code not in _DTYPES:
            raise self._err(f"{what}: unsupported dtype {_short(code)} "
                            f"(known: {', '.join(_DTYPES)})")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise self._err(f"{what}: shape must be a list of non-negative integers, "
                            f"got {_short(shape)}")
        if len(shape) > MAX_RANK:
            raise self._err(f"{what}: {len(shape)} dimensions, more than the "
                            f"{MAX_RANK} an array may have")
        itemsize = _DTYPES[code].itemsize
        # a zero-size tensor needs no bytes, but NumPy still refuses dimensions whose non-zero
        # product overflows its index type
        if math.prod(max(d, 1) for d in shape) * itemsize > np.iinfo(np.intp).max:
            raise self._err(f"{what}: shape {_short(shape)} is too large for an array")
        if not isinstance(offs, list) or len(offs) != 2 or not all(_is_int(o) for o in offs):
            raise self._err(f"{what}: data_offsets must be two integers, "
                            f"got {_short(offs)}")
        begin, end = offs
        if not 0 <= begin <= end <= data_len:
            raise self._err(f"{what}: data_offsets {offs} fall outside the "
                            f"{data_len}-byte data section (truncated file?)")
        nbytes = math.prod(shape) * itemsize
        if end - begin != nbytes:
            raise self._err(f"{what}: {code} {shape} needs {nbytes} bytes but "
                            f"data_offsets span {end - begin}")
        return code, tuple(shape), begin, end

    # Mapping interface ----------------------------------------------------------------------
    def __getitem__(self, name: str) -> np.ndarray:
        code = self.dtype_of(name)
        if code == "BF16":
            return bf16_to_f32(self._view(name))              # converting copies: aligned
        if code in ("F16", "F64"):
            with np.errstate(over="ignore"):   # F64 beyond float32's range rounds to +-inf
                return self._view(name).astype(np.float32)
        return self.raw(name)

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

    def _view(self, name: str) -> np.ndarray:
        """The stored bytes as an array over the mapping (aligned or not)."""
        code, shape, begin, end = self._entry(name)
        dt = _DTYPES[code]
        if end == begin:
            return np.zeros(shape, dtype=dt)
        arr = np.frombuffer(self._bytes, dtype=dt, count=(end - begin) // dt.itemsize,
                            offset=self._data_start + begin)
        return arr.reshape(shape)

    def raw(self, name: str) -> np.ndarray:
        """The tensor as stored (BF16 as uint16 bits), read-only: a view of the mapped file, or
        a copy when its offset in the file is not a multiple of its item size.

        The format does not require alignment (an odd-length header, or a small tensor of
        another dtype before it, shifts a tensor off it), but the compiled kernels load
        float32s as float32s, and a misaligned load is undefined behaviour in C++.  Copying only
        those tensors keeps every array the kernels see aligned while the usual, aligned file
        stays memory-mapped."""
        arr = self._views.get(name)
        if arr is not None:
            return arr
        arr = self._view(name)
        if not arr.flags.aligned:
            arr = arr.copy()                    # NumPy allocates aligned memory
            arr.flags.writeable = False         # read-only, as the mapped views are
        else:
            # a view costs no memory, so it is kept: a decode step asks for every weight, and
            # building the view again each time is a few microseconds per matrix
            self._views[name] = arr
        return arr

    def dtype_of(self, name: str) -> str:
        """The stored safetensors dtype code ("F32", "BF16", ...)."""
        return self._entry(name)[0]

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self._entry(name)[1]

    def __repr__(self):
        return f"SafeTensors({str(self.path)!r}, {len(self)} tensors)"


def load_safetensors(path, in_memory: bool | None = None) -> SafeTensors:
    """Open and validate one ``.safetensors`` file; see :class:`SafeTensors`."""
    return SafeTensors(path, in_memory)


def read_into_huge_pages(path: Path, size: int, anchor: int, err) -> memoryview:
    """The whole ``size``-byte file in anonymous memory advised to use huge pages, placed so that
    its byte ``anchor`` (the start of the tensor data) falls on a huge-page boundary: a tensor's
    address is then its offset from the anchor plus a multiple of 2 MB, so tensors laid out
    aligned from the anchor (as every writer lays them) are aligned whatever the header's length.
    Read-only, as a mapping opened for reading is.  ``err(msg)`` makes the exception raised when
    the file no longer has ``size`` bytes."""
    if hasattr(mmap, "MAP_PRIVATE"):            # POSIX: private, as shared memory gets no THP
        buf = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    else:
        buf = mmap.mmap(-1, size + HUGE_PAGE)
    if hasattr(mmap, "MADV_HUGEPAGE"):          # Linux; elsewhere the pages stay small
        buf.madvise(mmap.MADV_HUGEPAGE)
    start = np.frombuffer(buf, np.uint8, count=1).ctypes.data
    off = -(start + anchor) % HUGE_PAGE
    view = memoryview(buf)[off:off + size]
    with open(path, "rb") as f:
        got = f.readinto(view)
        more = f.read(1)
    if got != size or more:                     # replaced, truncated or grown since it was read
        raise err(f"the file changed size while it was opened ({size} bytes, then "
                  f"{got + len(more)}{'+' if more else ''})")
    return view.toreadonly()


def check_in_memory(in_memory, where: str) -> None:
    """Refuse an ``in_memory`` that is not True, False or None (1 or "yes" would pass a truth
    test and hide a typo)."""
    if in_memory is not None and not isinstance(in_memory, bool):
        raise TypeError(f"{where}: in_memory must be True, False or None (decide by size), got "
                        f"{_short(in_memory)}")


def fits_in_memory(nbytes: int) -> bool:
    """Whether ``in_memory=None`` reads a checkpoint of ``nbytes``: at most ``IN_MEMORY_SHARE`` of
    the memory this process could still allocate."""
    from . import models  # looked up late: models imports this module
    return nbytes <= IN_MEMORY_SHARE * models.available_memory()


def save_safetensors(path, tensors: Mapping[str, np.ndarray],
                     metadata: dict[str, str] | None = None, dtype: str | None = None) -> None:
    """Write NumPy arrays as safetensors (float arrays optionally stored as "F16" or "BF16").

    The file is written to a temporary name and renamed, so a crash never leaves half a file."""
    path = Path(path)
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    blobs = []
    for name, arr in tensors.items():
        arr = np.asarray(arr)
        if arr.dtype.kind == "f" and dtype == "BF16":
            code, data = "BF16", f32_to_bf16(arr)
        elif arr.dtype.kind == "f" and dtype == "F16":
            code, data = "F16", arr.astype("<f2")
        else:
            code = {np.dtype(v): k for k, v in _DTYPES.items()
                    if k != "BF16"}.get(arr.dtype.newbyteorder("<"))
            if code is None:
                raise TypeError(f"save_safetensors: tensor {name!r} has unsupported dtype "
                                f"{arr.dtype}")
            data = arr.astype(_DTYPES[code])
        header[name] = {"dtype": code, "shape": list(arr.shape)}
        blobs.append((-_DTYPES[code].itemsize, len(blobs), name,
                      np.ascontiguousarray(data).tobytes()))
    # the data in order of decreasing item size (as the safetensors library writes it): with
    # the header padded to 8 bytes, every tensor starts at a multiple of its item size
    blobs.sort()
    offset = 0
    for _, _, name, buf in blobs:
        header[name]["data_offsets"] = [offset, offset + len(buf)]
        offset += len(buf)
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * (-len(hjson) % 8)                         # keep the data section 8-byte aligned
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for *_, buf in blobs:
            f.write(buf)
    os.replace(tmp, path)


class CheckpointWeights(Mapping):
    """The union of a checkpoint's shards: ``weights[hf_name]`` -> np.ndarray (float32 for
    floats)."""

    def __init__(self, files: list[SafeTensors]):
        self.files = files
        self._where: dict[str, SafeTensors] = {}
        for st in files:
            for name in st:
                if name in self._where:
                    raise ValueError(f"tensor {name!r} appears in both {self._where[name].path} "
                                     f"and {st.path}")
                self._where[name] = st

    def _file(self, name):
        try:
            return self._where[name]
        except KeyError:
            raise KeyError(f"checkpoint has no tensor named {name!r}") from None

    def __getitem__(self, name):
        return self._file(name)[name]

    def raw(self, name):
        return self._file(name).raw(name)

    def dtype_of(self, name):
        return self._file(name).dtype_of(name)

    def shape_of(self, name):
        return self._file(name).shape_of(name)

    def __iter__(self):
        return iter(self._where)

    def __len__(self):
        return len(self._where)

    def __contains__(self, name):
        return name in self._where


def load_checkpoint(path, in_memory: bool | None = None) -> CheckpointWeights:
    """All tensors of a Hugging Face checkpoint directory (or one file): ``model.safetensors``, a
    sharded set listed by ``model.safetensors.index.json``, or any single ``*.safetensors``.

    ``in_memory`` as in :class:`SafeTensors`; None decides once for all the shards together."""
    path = Path(path)
    _refuse_pickle(path)
    check_in_memory(in_memory, "load_checkpoint")

    def opened(files: list[Path]) -> list[SafeTensors]:
        whole = in_memory
        if whole is None:
            whole = fits_in_memory(sum(f.stat().st_size for f in files))
        return [SafeTensors(f, whole) for f in files]

    if path.is_file():
        return CheckpointWeights(opened([path]))
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such checkpoint file or directory")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str)
                                                       for v in weight_map.values()):
            raise ValueError(f"{index}: not a valid safetensors index (needs a 'weight_map' "
                             "object mapping tensor names to shard file names)")
        shards = sorted(set(weight_map.values()))
        for s in shards:
            if Path(s).name != s or s in ("", ".", ".."):
                raise ValueError(f"{index}: shard name {s!r} must be a plain file name in the "
                                 "same directory")
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{index}: shard {missing[0]!r} listed in the index does not "
                                    "exist")
        ckpt = CheckpointWeights(opened([path / s for s in shards]))
        missing = [n for n in weight_map if n not in ckpt]
        if missing:
            raise ValueError(f"{index}: {len(missing)} tensors listed in the index are missing "
                             f"from the shards, e.g. {missing[0]!r}")
        return ckpt
    single = path / "model.safetensors"
    if single.is_file():
        return CheckpointWeights(opened([single]))
    found = sorted(path.glob("*.safetensors"))
    if found:
        return CheckpointWeights(opened(found))
    pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"{path}: only pickle checkpoints found ({', '.join(pickles)}); "
                         "pyworkloads loads safetensors only -- re-save with "
                         "save_pretrained(..., safe_serialization=True)")
    raise FileNotFoundError(f"{path}: no *.safetensors files")


def load_config(path) -> dict:
    """``config.json`` of a checkpoint directory (or the file itself) as a dict."""
    path = Path(path)
    f = path / "config.json" if path.is_dir() else path
    if not f.is_file():
        raise FileNotFoundError(f"{f}: no config.json (a Hugging Face checkpoint directory has "
                                "one)")
    return _read_json(f)


def _read_json(f: Path) -> dict:
    """A JSON object file (config.json, an index), refused clearly when it is not one."""
    size = f.stat().st_size
    if size > MAX_JSON_BYTES:
        raise ValueError(f"{f}: {size} bytes, more than the {MAX_JSON_BYTES}-byte limit for a "
                         "JSON settings file (real ones are under 1 MB)")

    def err(msg):
        return ValueError(f"{f}: {msg}")
    try:                                        # repeated names: the last wins, as in Python
        text = f.read_bytes().decode("utf-8")
        obj = json.loads(text, parse_int=_parse_setting_int)
    except UnicodeDecodeError as exc:
        raise err(f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise err("not valid JSON (arrays or objects nested too deeply)") from None
    except _RefusedNumber as exc:
        raise err(f"holds {exc}") from None
    except ValueError as exc:
        raise err(f"not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(obj, dict):
        raise err(f"must be a JSON object, got {type(obj).__name__}")
    return obj
