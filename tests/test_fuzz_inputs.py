"""Fuzzing the inputs a checkpoint brings: safetensors headers and config.json values.

Every generated input must end in a result or a clear error:

* a safetensors file either loads -- and then its tensors tile the data section, each holds the
  bytes its data_offsets name, and each array is aligned -- or raises ValueError (that type
  exactly, not TypeError, RecursionError or a NumPy error) naming the file, when it is opened;
* a config.json of any family either parses -- and then every size is within the limits of
  ``pyworkloads.models.common`` and the weight layout is built in milliseconds -- or raises
  ValueError or TypeError whose message names the field (or its section) and stays short.

The runs are bounded (``max_examples``, derandomized so CI sees the same inputs every time) and
take a few seconds in all.  dev/hostile/loader.py and dev/hostile/configs.py run the same kind
of inputs at scale, in subprocesses with memory and time limits.
"""
from __future__ import annotations

import json
import math
import struct
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyworkloads as pw
from pyworkloads import io
from pyworkloads.models import common

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ---------------------------------------------------------------------------------------------
# safetensors headers
# ---------------------------------------------------------------------------------------------
CODES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
         "U8": "u1", "BOOL": "?"}

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
                         st.sampled_from(list(CODES) + ["f32", "F8_E4M3", ""]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=8)
shapes = st.lists(st.integers(0, 4), max_size=3)


@st.composite
def valid_files(draw):
    """(header dict, data bytes, pad header to 8 bytes?) of a valid file."""
    header, blobs, off = {}, [], 0
    for i in range(draw(st.integers(0, 4))):
        code, shape = draw(st.sampled_from(list(CODES))), draw(shapes)
        n = math.prod(shape) * np.dtype(CODES[code]).itemsize
        header[f"t{i}"] = {"dtype": code, "shape": shape, "data_offsets": [off, off + n]}
        blobs.append(draw(st.binary(min_size=n, max_size=n)))
        off += n
    if draw(st.booleans()):
        header["__metadata__"] = {"format": "np"}
    return header, b"".join(blobs), draw(st.booleans())


def encode(header, data: bytes, pad: bool, length_delta: int = 0) -> bytes:
    h = json.dumps(header).encode() if not isinstance(header, bytes) else header
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", max(0, len(h) + length_delta)) + h + data


@st.composite
def mutated_files(draw):
    header, data, pad = draw(valid_files())
    names = [k for k in header if k != "__metadata__"]
    op = draw(st.sampled_from(["field", "entry", "top", "length", "bytes", "data", "raw"]))
    if op == "field" and names:
        name = draw(st.sampled_from(names))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        header[name][field] = draw(st.one_of(json_values, shapes,
                                             st.lists(st.integers(-8, 80), max_size=3)))
    elif op == "entry" and names:
        header[draw(st.sampled_from(names))] = draw(json_values)
    elif op == "top":
        header = draw(st.one_of(json_values, st.just({"__metadata__": draw(json_values)})))
    elif op == "length":
        return encode(header, data, pad, draw(st.integers(-9, 9)))
    elif op == "bytes":                                   # overwrite a few header bytes
        blob = bytearray(encode(header, data, pad))
        n = struct.unpack("<Q", blob[:8])[0]
        for _ in range(draw(st.integers(1, 3))):
            if n:
                blob[8 + draw(st.integers(0, n - 1))] = draw(st.sampled_from(
                    list(b'{}[]",:0123456789-. e') + [0x80, 0xff, 0x00]))
        return bytes(blob)
    elif op == "data":                                    # bytes missing or left over
        data = data[:draw(st.integers(0, len(data)))] + draw(st.binary(max_size=6))
    elif op == "raw":                                     # any bytes, any length prefix
        return draw(st.binary(max_size=8)) + draw(st.binary(max_size=64))
    return encode(header, data, pad)


def check_loaded(path, st_file) -> None:
    """What a loaded file must satisfy, from its bytes alone."""
    blob = path.read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    assert set(st_file) == set(entries)
    covered = 0
    for begin, end in sorted(tuple(v["data_offsets"]) for v in entries.values()):
        assert begin == covered                           # no gap, no overlap
        covered = end
    assert covered == len(data)                           # and nothing left over
    for name, v in entries.items():
        raw = st_file.raw(name)
        b, e = v["data_offsets"]
        assert raw.tobytes() == data[b:e] and raw.shape == tuple(v["shape"])
        assert raw.ctypes.data % raw.itemsize == 0 or raw.size == 0
        conv = st_file[name]
        assert conv.ctypes.data % conv.itemsize == 0 or conv.size == 0


def load_or_clear_error(path):
    """The loaded file, or None after a ValueError that names the file."""
    try:
        return io.load_safetensors(path)
    except ValueError as exc:
        assert type(exc) is ValueError, f"{type(exc).__name__}: {exc}"
        assert str(path) in str(exc)
        return None


@FUZZ
@given(blob=mutated_files())
def test_mutated_safetensors_load_right_or_fail_clearly(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("st") / "f.safetensors"
    path.write_bytes(blob)
    t0 = time.perf_counter()
    loaded = load_or_clear_error(path)
    if loaded is not None:
        check_loaded(path, loaded)
    assert time.perf_counter() - t0 < 1.0


@FUZZ
@given(file=valid_files())
def test_valid_safetensors_load_bit_exact(tmp_path_factory, file):
    path = tmp_path_factory.mktemp("st") / "f.safetensors"
    path.write_bytes(encode(*file))
    loaded = io.load_safetensors(path)
    check_loaded(path, loaded)


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(blob=mutated_files())
def test_what_loads_the_safetensors_library_accepts_too(tmp_path_factory, blob):
    """The reference implementation as an oracle: nothing it refuses may load here."""
    safe_open = pytest.importorskip(
        "safetensors", reason="the oracle is the safetensors package (pip install safetensors)"
    ).safe_open
    path = tmp_path_factory.mktemp("st") / "f.safetensors"
    path.write_bytes(blob)
    if load_or_clear_error(path) is not None:
        with safe_open(str(path), "numpy") as f:
            for k in f.keys():
                f.get_slice(k).get_shape()


# ---------------------------------------------------------------------------------------------
# config.json values
# ---------------------------------------------------------------------------------------------
PRESETS = {"llama2": "llama2-tiny", "clip": "clip-tiny", "sam": "sam-tiny",
           "whisper": "whisper-tiny-random"}
BASES = {f: json.loads(json.dumps(getattr(pw, f).PRESETS[p].to_hf())) for f, p in PRESETS.items()}


def leaf_paths(d: dict, prefix=()) -> list[tuple]:
    out = []
    for k, v in d.items():
        out.append(prefix + (k,))
        if isinstance(v, dict):
            out += leaf_paths(v, prefix + (k,))
    return out


def dict_get(d: dict, path: tuple):
    for k in path:
        d = d[k]
    return d


PATHS = [(f, p) for f in PRESETS for p in leaf_paths(BASES[f]) if p[-1] != "architectures"]
hostile_values = st.one_of(
    json_values,
    st.sampled_from([0, -1, 10 ** 12, 2 ** 63, 2 ** 64, 10 ** 30, 1.5, float("nan"), True, False,
                     "", "x", [], {}, None, [1, 2], common.MAX_LAYERS + 1, common.MAX_WIDTH + 1,
                     common.MAX_POSITIONS + 1]))
SIZE_FIELDS = {p[-1] for f, p in PATHS if type(dict_get(BASES[f], p)) is int
               and not p[-1].endswith("token_id")}
SIZE_LIMITS = {"num_hidden_layers": common.MAX_LAYERS, "encoder_layers": common.MAX_LAYERS,
               "decoder_layers": common.MAX_LAYERS, "iou_head_depth": common.MAX_LAYERS,
               "num_multimask_outputs": common.MAX_LAYERS, "max_position_embeddings":
               common.MAX_POSITIONS, "max_source_positions": common.MAX_POSITIONS,
               "max_target_positions": common.MAX_POSITIONS}


def check_parsed(family: str, config) -> None:
    """A config that parses has every size within the limits, and its weights' layout is built
    at once."""
    sections = [config] + [getattr(config, s) for s in ("text_config", "vision_config",
                                                         "prompt_encoder_config",
                                                         "mask_decoder_config")
                           if hasattr(config, s)]
    for sec in sections:
        for k, v in vars(sec).items():
            if k in SIZE_FIELDS:
                assert 0 <= v <= SIZE_LIMITS.get(k, common.MAX_WIDTH), (k, v)
    t0 = time.perf_counter()
    getattr(pw, family).count_params(config)
    assert time.perf_counter() - t0 < 0.5


@settings(max_examples=600, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(PATHS), value=hostile_values)
def test_config_json_values_parse_or_fail_naming_the_field(case, value):
    family, path = case
    d = json.loads(json.dumps(BASES[family]))
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    t0 = time.perf_counter()
    try:
        config = getattr(pw, family).Config.from_hf(d)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        assert "unhashable" not in msg and len(msg) < 600, msg
        assert any(p in msg for p in path), (path, msg)
    else:
        check_parsed(family, config)
    assert time.perf_counter() - t0 < 0.5


@settings(max_examples=100, deadline=None, derandomize=True)
@given(family=st.sampled_from(list(PRESETS)), value=json_values)
def test_config_json_of_any_shape_parses_or_fails_clearly(family, value):
    """Not an object at all, or sections that are not objects."""
    for d in (value, {**BASES[family], **({k: value for k in BASES[family]
                                           if isinstance(BASES[family][k], dict)})}):
        try:
            config = getattr(pw, family).Config.from_hf(d)
        except (ValueError, TypeError) as exc:
            assert "unhashable" not in str(exc) and len(str(exc)) < 600
        else:
            check_parsed(family, config)
