"""Checkpoint I/O: safetensors only, memory-mapped, validated before any tensor is touched.

A safetensors file is ``u64 little-endian header length N`` + ``N bytes of JSON`` + ``data``.
The JSON maps tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative
to the data section) plus an optional ``"__metadata__"`` of strings.

:func:`load_safetensors` returns a :class:`SafeTensors` mapping: looking a name up returns a NumPy
view of the mapped file (float32 stored tensors and integers: zero-copy) or a fresh float32 array
(F16 / BF16 / F64 are converted on each access, so a model can convert layer by layer and never
hold every weight in float32).  Pickle-based formats are refused: unpickling runs arbitrary code.
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
           "bf16_to_f32", "f32_to_bf16", "CheckpointWeights", "PICKLE_SUFFIXES"]

MAX_HEADER_BYTES = 100 * 1024 * 1024          # the reference implementation's own limit
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


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 (stored as uint16) -> float32: the 16 bits are the top half of a float32."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), round to nearest even (NaN stays NaN)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
    return np.where(np.isnan(x), 0x7FC0, rounded).astype(np.uint16)


class SafeTensors(Mapping):
    """One validated, memory-mapped safetensors file.  ``st[name]`` -> np.ndarray (float tensors
    as float32, integers and bools as stored); ``st.raw(name)`` -> the stored bits, zero-copy."""

    def __init__(self, path):
        self.path = Path(path)
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
        self._mmap = None
        if size > self._data_start:
            with open(self.path, "rb") as f:
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def _err(self, msg):
        return ValueError(f"{self.path}: {msg}")

    def _parse_header(self, raw: bytes, data_len: int):
        def no_duplicates(pairs):
            d = {}
            for k, v in pairs:
                if k in d:
                    raise self._err(f"header names tensor {k!r} twice")
                d[k] = v
            return d
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._err(f"header is not valid UTF-8 JSON ({exc})") from None
        if not isinstance(header, dict):
            raise self._err("header must be a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in metadata.items()):
            raise self._err("__metadata__ must map strings to strings")
        entries = {}
        spans = []
        for name, info in header.items():
            if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
                raise self._err(f"tensor {name!r}: entry must have exactly dtype, shape and "
                                "data_offsets")
            code, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
            if code not in _DTYPES:
                raise self._err(f"tensor {name!r}: unsupported dtype {code!r} "
                                f"(known: {', '.join(_DTYPES)})")
            if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                                      and d >= 0 for d in shape):
                raise self._err(f"tensor {name!r}: shape must be a list of non-negative integers, "
                                f"got {shape!r}")
            if (not isinstance(offs, list) or len(offs) != 2
                    or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
                raise self._err(f"tensor {name!r}: data_offsets must be two integers, got {offs!r}")
            begin, end = offs
            if not 0 <= begin <= end <= data_len:
                raise self._err(f"tensor {name!r}: data_offsets {offs} fall outside the "
                                f"{data_len}-byte data section (truncated file?)")
            nbytes = math.prod(shape) * _DTYPES[code].itemsize
            if end - begin != nbytes:
                raise self._err(f"tensor {name!r}: {code} {shape} needs {nbytes} bytes but "
                                f"data_offsets span {end - begin}")
            entries[name] = (code, tuple(shape), begin, end)
            spans.append((begin, end, name))
        spans.sort()
        for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
            if b1 < e0:
                raise self._err(f"tensors {n0!r} and {n1!r} overlap in the data section")
        return metadata, entries

    # Mapping interface ----------------------------------------------------------------------
    def __getitem__(self, name: str) -> np.ndarray:
        code = self.dtype_of(name)
        raw = self.raw(name)
        if code == "BF16":
            return bf16_to_f32(raw)
        if code in ("F16", "F64"):
            return raw.astype(np.float32)
        return raw

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
        """The tensor as stored (BF16 as uint16 bits), a read-only view of the mapped file."""
        code, shape, begin, end = self._entry(name)
        dt = _DTYPES[code]
        if end == begin:
            return np.zeros(shape, dtype=dt)
        arr = np.frombuffer(self._mmap, dtype=dt, count=(end - begin) // dt.itemsize,
                            offset=self._data_start + begin)
        return arr.reshape(shape)

    def dtype_of(self, name: str) -> str:
        """The stored safetensors dtype code ("F32", "BF16", ...)."""
        return self._entry(name)[0]

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self._entry(name)[1]

    def __repr__(self):
        return f"SafeTensors({str(self.path)!r}, {len(self)} tensors)"


def load_safetensors(path) -> SafeTensors:
    """Open and validate one ``.safetensors`` file; see :class:`SafeTensors`."""
    return SafeTensors(path)


def save_safetensors(path, tensors: Mapping[str, np.ndarray],
                     metadata: dict[str, str] | None = None, dtype: str | None = None) -> None:
    """Write NumPy arrays as safetensors (float arrays optionally stored as "F16" or "BF16").

    The file is written to a temporary name and renamed, so a crash never leaves half a file."""
    path = Path(path)
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    blobs, offset = [], 0
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
        buf = np.ascontiguousarray(data).tobytes()
        header[name] = {"dtype": code, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(buf)]}
        blobs.append(buf)
        offset += len(buf)
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * (-len(hjson) % 8)                         # keep the data section 8-byte aligned
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)
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


def load_checkpoint(path) -> CheckpointWeights:
    """All tensors of a Hugging Face checkpoint directory (or one file): ``model.safetensors``, a
    sharded set listed by ``model.safetensors.index.json``, or any single ``*.safetensors``."""
    path = Path(path)
    _refuse_pickle(path)
    if path.is_file():
        return CheckpointWeights([SafeTensors(path)])
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such checkpoint file or directory")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{index}: not a valid safetensors index (needs a 'weight_map' "
                             f"object): {exc}") from None
        shards = sorted(set(weight_map.values()))
        for s in shards:
            if Path(s).name != s:
                raise ValueError(f"{index}: shard name {s!r} must be a plain file name in the "
                                 "same directory")
        files = [SafeTensors(path / s) for s in shards]
        ckpt = CheckpointWeights(files)
        missing = [n for n in weight_map if n not in ckpt]
        if missing:
            raise ValueError(f"{index}: {len(missing)} tensors listed in the index are missing "
                             f"from the shards, e.g. {missing[0]!r}")
        return ckpt
    single = path / "model.safetensors"
    if single.is_file():
        return CheckpointWeights([SafeTensors(single)])
    found = sorted(path.glob("*.safetensors"))
    if found:
        return CheckpointWeights([SafeTensors(f) for f in found])
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
    try:
        cfg = json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{f}: not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{f}: config must be a JSON object")
    return cfg
