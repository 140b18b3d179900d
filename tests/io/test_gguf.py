"""The GGUF loader: every supported tensor type against the gguf package's own decoders, the
metadata as plain Python values, and crafted bad files -- each a quick ValueError naming the
problem, without large allocations.  Every file starts as a valid one written by
gguf.GGUFWriter; the bad ones are that file with a few bytes patched or cut."""
from __future__ import annotations

import struct
import time
import tracemalloc

import numpy as np
import pytest

from pyworkloads import gguf_io, quant

gguf = pytest.importorskip("gguf", reason="GGUF files are written with the gguf package")
T = gguf.GGMLQuantizationType

# weights per block, bytes per block, and where each block keeps its fp16 scales (the K-quants
# are written as random bytes with these fields set to moderate finite values)
K_QUANT_SCALES = {"Q4_K": (0, 2), "Q6_K": (208,)}


def k_quant_blocks(rng, qtype: str, rows: int, K: int) -> np.ndarray:
    """Random but valid blocks: random quants and sub-block scales, fp16 scales in [1e-3, 1e-2]."""
    block, size = quant.BLOCKS[qtype]
    b = rng.integers(0, 256, (rows * K // block, size), dtype=np.uint8)
    for at in K_QUANT_SCALES[qtype]:
        d = rng.uniform(1e-3, 1e-2, len(b)).astype(np.float16)
        b[:, at:at + 2] = d.view(np.uint8).reshape(-1, 2)
    return b.reshape(rows, -1)


def stored(rng, qtype: str, shape) -> tuple[np.ndarray, np.ndarray]:
    """(what GGUFWriter is given, the float32 values the file means) for a tensor of ``qtype``."""
    x = rng.standard_normal(shape).astype(np.float32)
    if qtype == "F32":
        return x, x
    if qtype == "F16":
        return x.astype(np.float16), x.astype(np.float16).astype(np.float32)
    rows = int(np.prod(shape[:-1]))
    if qtype in K_QUANT_SCALES:
        data = k_quant_blocks(rng, qtype, rows, shape[-1]).reshape(*shape[:-1], -1)
    else:
        data = gguf.quants.quantize(x, T[qtype])              # BF16 included: bytes
    return data, gguf.quants.dequantize(data, T[qtype])


def write(path, tensors: dict, kv: dict | None = None, arch: str = "test"):
    """A GGUF file of ``tensors`` (name -> (type name, writer array)) and metadata ``kv``."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in (kv or {}).items():
        if isinstance(value, list):
            w.add_array(key, value)
        elif isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_int32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_string(key, value)
    for name, (qtype, data) in tensors.items():
        raw = None if qtype in ("F32", "F16") else T[qtype]
        w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K"]


def test_supported_types_are_the_quant_modules():
    assert set(gguf_io.SUPPORTED_TYPES) == {"F32", "F16", "BF16", *quant.BLOCKS}
    assert set(TYPES) <= set(gguf_io.SUPPORTED_TYPES)


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("shape", [(3, 256), (2, 3, 512)], ids=["2d", "3d"])
def test_every_type_loads_as_the_gguf_package_decodes_it(tmp_path, rng, qtype, shape):
    data, want = stored(rng, qtype, shape)
    ckpt = gguf_io.load_gguf(write(tmp_path / "t.gguf", {"w": (qtype, data)}))
    assert ckpt.dtype_of("w") == qtype
    assert ckpt.shape_of("w") == shape                  # NumPy order: GGUF's dims reversed
    t = ckpt["w"]
    if qtype in quant.BLOCKS:
        assert isinstance(t, quant.QuantizedTensor)
        assert t.qtype == qtype and t.shape == shape
        block, size = quant.BLOCKS[qtype]
        assert t.data.dtype == np.uint8 and t.data.shape == (int(np.prod(shape[:-1])),
                                                             shape[-1] // block * size)
        got = t.dequantize()
    else:
        got = t
        assert got.dtype == np.float32
    assert got.shape == shape
    np.testing.assert_array_equal(got, want)


def test_float32_is_a_read_only_view_of_the_map(tmp_path, rng):
    w = rng.standard_normal((64, 32)).astype(np.float32)
    ckpt = gguf_io.load_gguf(write(tmp_path / "m.gguf", {"w": ("F32", w)}))
    a, b = ckpt["w"], ckpt["w"]
    assert not a.flags.writeable and np.shares_memory(a, b)
    np.testing.assert_array_equal(a, w)


def test_raw_bits_and_views(tmp_path, rng):
    """raw(): BF16 as uint16 bits (as io.SafeTensors), F16 as stored, blocks as the mapped bytes."""
    bf, _ = stored(rng, "BF16", (4, 32))
    q, _ = stored(rng, "Q8_0", (4, 64))
    h, _ = stored(rng, "F16", (4, 32))
    ckpt = gguf_io.load_gguf(write(tmp_path / "r.gguf", {"bf": ("BF16", bf), "q": ("Q8_0", q),
                                                          "h": ("F16", h)}))
    bits = ckpt.raw("bf")
    assert bits.dtype == np.uint16 and bits.shape == (4, 32)
    np.testing.assert_array_equal(bits, bf.view(np.uint16))
    assert ckpt.raw("h").dtype == np.float16
    qt = ckpt["q"]
    assert np.shares_memory(qt.data, ckpt.raw("q")) and not qt.data.flags.writeable


def test_in_memory_and_mapped_hold_the_same_bytes(tmp_path, rng):
    """in_memory=True reads the file into huge-page memory with the first tensor on a page
    boundary; every tensor, float or blocks, is the same as through the gguf package's mapping."""
    tensors = {"f": ("F32", stored(rng, "F32", (3, 32))[0]),
               "q": ("Q8_0", stored(rng, "Q8_0", (4, 64))[0]),
               "k": ("Q4_K", stored(rng, "Q4_K", (2, 256))[0])}
    f = write(tmp_path / "m.gguf", tensors)
    mapped, read = gguf_io.load_gguf(f, in_memory=False), gguf_io.load_gguf(f, in_memory=True)
    assert (mapped.in_memory, read.in_memory) == (False, True)
    starts = sorted(read.raw(n).ctypes.data for n in tensors)
    assert starts[0] % (2 << 20) == 0
    for name in tensors:
        a, b = mapped.raw(name), read.raw(name)
        np.testing.assert_array_equal(a, b)
        assert not b.flags.writeable and not np.shares_memory(a, b)
    np.testing.assert_array_equal(read["q"].dequantize(), mapped["q"].dequantize())


def test_in_memory_refuses_a_file_that_changes_size_and_a_bad_flag(tmp_path, rng, monkeypatch):
    f = write(tmp_path / "m.gguf", {"w": ("F32", stored(rng, "F32", (2, 32))[0])})
    with pytest.raises(TypeError, match="in_memory must be True, False or None"):
        gguf_io.load_gguf(f, in_memory="yes")
    reader = gguf_io.GGUFCheckpoint._reader

    def reader_then_grow(self, size):
        out = reader(self, size)
        with open(f, "ab") as fh:                       # after the checks, before the read
            fh.write(b"\0" * 8)
        return out

    monkeypatch.setattr(gguf_io.GGUFCheckpoint, "_reader", reader_then_grow)
    with pytest.raises(ValueError, match="changed size while it was opened") as exc:
        gguf_io.load_gguf(f, in_memory=True)
    assert str(f) in str(exc.value)


def test_metadata_is_plain_python(tmp_path, rng):
    kv = {"s": "héllo", "i": -7, "f": 0.5, "b": True, "strs": ["a", "", "ü"],
          "ints": [1, 2, 3], "floats": [0.25, -1.5], "bools": [True, False]}
    w = gguf.GGUFWriter(str(tmp_path / "k.gguf"), "test")
    for k, v in kv.items():
        (w.add_array if isinstance(v, list) else {str: w.add_string, int: w.add_int32,
                                                  float: w.add_float32, bool: w.add_bool}[
            type(v)])(k, v)
    w.add_uint64("u64", 2 ** 40)
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    md = gguf_io.load_gguf(tmp_path / "k.gguf").metadata
    assert md["general.architecture"] == "test"
    for k, v in kv.items():
        assert md[k] == v and type(md[k]) is type(v), k
    assert all(type(x) is type(v[0]) for k, v in kv.items() if isinstance(v, list) and v
               for x in md[k])
    assert md["u64"] == 2 ** 40 and type(md["u64"]) is int
    assert not any(k.startswith("GGUF.") for k in md)            # the reader's pseudo-keys


@pytest.mark.parametrize("kind", ["Q5_K", "F64", "I32"])
def test_unsupported_types_are_named(tmp_path, rng, kind):
    if kind == "Q5_K":
        data = np.zeros((2, 176), np.uint8)                      # 256 weights per row
    else:
        data = np.zeros((2, 4), {"F64": np.float64, "I32": np.int32}[kind])
    w = gguf.GGUFWriter(str(tmp_path / "u.gguf"), "test")
    w.add_tensor("ok", np.zeros(4, np.float32))
    w.add_tensor("odd.weight", data, raw_dtype=T[kind] if kind == "Q5_K" else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match=rf"'odd.weight' is stored as {kind}.*supported: "
                                         r"F32, F16, BF16, Q8_0"):
        gguf_io.load_gguf(tmp_path / "u.gguf")


# ---------------------------------------------------------------------------------------------
# crafted bad files
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def valid(tmp_path, rng):
    """A small valid file's bytes: metadata of every kind, an array, an F32 and a Q8_0 tensor."""
    q, _ = stored(rng, "Q8_0", (2, 64))
    path = write(tmp_path / "v.gguf", {"emb.weight": ("F32", np.ones((3, 8), np.float32)),
                                       "proj.weight": ("Q8_0", q)},
                 {"name": "tiny", "count": 5, "list": ["x", "yy", "zzz"], "nums": [1, 2]})
    gguf_io.load_gguf(path)                                             # valid as written
    return path.read_bytes()


def _refused(tmp_path, data: bytes, match: str):
    """Loading ``data`` is a ValueError matching ``match``, fast and without large allocations."""
    p = tmp_path / "bad.gguf"
    p.write_bytes(data)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ValueError, match=match) as info:
            gguf_io.load_gguf(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 2.0
    assert peak < 16 * 2 ** 20, f"{peak} bytes allocated to refuse a {len(data)}-byte file"
    assert str(p) in str(info.value)
    return info.value


def _key_end(data: bytes, key: bytes) -> int:
    """Where a metadata key's value type starts (just after the key's bytes)."""
    return data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)


def _tensor_info(data: bytes, name: bytes) -> int:
    """Where a tensor info's dimension count starts (just after the name's bytes)."""
    return data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)


def _patch(data: bytes, at: int, fmt: str, *values) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, at, *values)
    return bytes(b)


def test_not_gguf(tmp_path):
    _refused(tmp_path, b"GGML" + bytes(40), "not a GGUF file")
    _refused(tmp_path, b"GGUF", "not a GGUF file .*only 4 bytes")
    _refused(tmp_path, b"", "not a GGUF file")


def test_versions(tmp_path, valid):
    _refused(tmp_path, _patch(valid, 4, "<I", 1), "GGUF version 1 is not supported")
    _refused(tmp_path, _patch(valid, 4, "<I", 99), "GGUF version 99")
    _refused(tmp_path, _patch(valid, 4, ">I", 3), "big-endian")


def test_truncated_at_several_points(tmp_path, valid):
    info = _tensor_info(valid, b"proj.weight")
    _refused(tmp_path, valid[:20], "only 20 bytes; the 24-byte header is missing")
    (tmp_path / "v.gguf").write_bytes(valid)
    last = gguf.GGUFReader(tmp_path / "v.gguf").tensors[-1]     # proj.weight, then padding
    end = last.data_offset + last.n_bytes
    for cut, what in ((30, "5 metadata keys"), (_key_end(valid, b"list") + 10, "list"),
                      (_key_end(valid, b"list") + 30, "list"),
                      (info - 3, "name of tensor"), (info + 10, "proj.weight"),
                      (end - 1, "proj.weight.*past the end"),
                      (end - 100, "past the end")):
        _refused(tmp_path, valid[:cut], f"(?s){what}.*(truncated|past the end)")


def test_hostile_counts_fail_fast(tmp_path, valid):
    _refused(tmp_path, _patch(valid, 8, "<Q", 2 ** 62), f"claims {2 ** 62} tensors")
    _refused(tmp_path, _patch(valid, 16, "<Q", 2 ** 62), f"claims {2 ** 62} metadata keys")
    # a count within the limits that still cannot fit in the file
    _refused(tmp_path, _patch(valid, 16, "<Q", 60000), "60000 metadata keys, which need")
    at = _key_end(valid, b"list") + 8                        # value type, element type, length
    _refused(tmp_path, _patch(valid, at, "<Q", 2 ** 40), f"claims {2 ** 40} elements in the "
                                                         "array 'list'")
    # the same length on an array of 1-byte elements, which GGUFReader would loop on forever
    at = _key_end(valid, b"nums")
    _refused(tmp_path, _patch(valid, at, "<IIQ", 9, 0, 2 ** 40), f"{2 ** 40} elements")
    # a string of 2^63 bytes
    _refused(tmp_path, _patch(valid, _key_end(valid, b"name") + 4, "<Q", 2 ** 63),
             "needs 9223372036854775808 bytes")


def test_bad_value_types(tmp_path, valid):
    _refused(tmp_path, _patch(valid, _key_end(valid, b"count"), "<I", 13),
             "'count' has unknown value type 13")
    _refused(tmp_path, _patch(valid, _key_end(valid, b"nums") + 4, "<I", 9),
             "'nums' is an array of arrays")
    _refused(tmp_path, _patch(valid, _key_end(valid, b"nums") + 4, "<I", 77),
             "array of unknown value type 77")


def test_bad_keys(tmp_path, valid):
    dup = valid.replace(struct.pack("<Q", 5) + b"count", struct.pack("<Q", 5) + b"\xffount", 1)
    _refused(tmp_path, dup, "metadata key #.* is not valid UTF-8")
    twice = valid.replace(struct.pack("<Q", 4) + b"nums", struct.pack("<Q", 4) + b"name", 1)
    _refused(tmp_path, twice, "metadata key 'name' appears twice")


def test_unknown_tensor_type_id_names_the_tensor(tmp_path, valid):
    at = _tensor_info(valid, b"proj.weight") + 4 + 2 * 8     # n_dims, two dims, then the type
    _refused(tmp_path, _patch(valid, at, "<I", 99),
             "tensor 'proj.weight' has unknown ggml type id 99 .supported: F32")


def test_offsets_sizes_and_alignment(tmp_path, valid):
    info = _tensor_info(valid, b"proj.weight")
    offset_at = info + 4 + 16 + 4                            # n_dims, two dims, type, offset
    _refused(tmp_path, _patch(valid, offset_at, "<Q", 2 ** 40), "'proj.weight'.*past the end")
    _refused(tmp_path, _patch(valid, offset_at, "<Q", 2 ** 64 - 32), "past the end")
    _refused(tmp_path, _patch(valid, offset_at, "<Q", 36), "'proj.weight': data offset 36 is "
                                                          "not a multiple of .*alignment .32.")
    # proj.weight moved onto emb.weight's bytes
    _refused(tmp_path, _patch(valid, offset_at, "<Q", 0), "'emb.weight' and 'proj.weight' "
                                                         "overlap")
    # a wrong size: emb.weight claims 3 x 64 floats, running into proj.weight
    emb = _tensor_info(valid, b"emb.weight")
    _refused(tmp_path, _patch(valid, emb + 4, "<Q", 64), "overlap|past the end")
    # rows that are not whole blocks: Q8_0 rows of 48 weights
    _refused(tmp_path, _patch(valid, info + 4, "<Q", 48), "blocks of 32 weights, but its rows "
                                                         "have 48")
    # five dimensions
    _refused(tmp_path, _patch(valid, info, "<I", 5), "'proj.weight' has 5 dimensions")
    # F32 stored as Q4_K: 8-wide rows are not 256-weight blocks
    _refused(tmp_path, _patch(valid, _tensor_info(valid, b"emb.weight") + 4 + 16, "<I", 12),
             "blocks of 256 weights")


def test_duplicate_tensor_names(tmp_path, rng):
    p = write(tmp_path / "d.gguf", {"aa": ("F32", np.ones(4, np.float32)),
                                    "ab": ("F32", np.ones(4, np.float32))})
    data = p.read_bytes().replace(b"ab", b"aa")
    _refused(tmp_path, data, "tensor 'aa' appears twice")


def test_alignment_key(tmp_path):
    def with_alignment(value):
        w = gguf.GGUFWriter(str(tmp_path / "a.gguf"), "test")
        w.add_custom_alignment(value)                      # the key, and the writer's padding
        w.add_tensor("x", np.arange(8, dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return (tmp_path / "a.gguf").read_bytes()

    ckpt_bytes = with_alignment(64)
    (tmp_path / "ok.gguf").write_bytes(ckpt_bytes)
    ckpt = gguf_io.load_gguf(tmp_path / "ok.gguf")
    assert ckpt.alignment == 64
    np.testing.assert_array_equal(ckpt["x"], np.arange(8, dtype=np.float32))
    at = _key_end(ckpt_bytes, b"general.alignment") + 4
    _refused(tmp_path, _patch(ckpt_bytes, at, "<I", 48), "power of two, got 48")
    _refused(tmp_path, _patch(ckpt_bytes, at, "<I", 0), "power of two, got 0")
    _refused(tmp_path, _patch(ckpt_bytes, at - 4, "<I", 10), "general.alignment must be a uint32")


def test_alignment_one_copies_misaligned_floats(tmp_path, rng):
    """general.alignment 1 packs tensors back to back: an F32 tensor after a 34-byte Q8_0 row is
    not 4-byte aligned in memory, so raw() hands out an aligned copy (as io.SafeTensors does)."""
    q, _ = stored(rng, "Q8_0", (1, 32))
    x = rng.standard_normal((3, 5)).astype(np.float32)
    w = gguf.GGUFWriter(str(tmp_path / "a1.gguf"), "test")
    w.add_custom_alignment(1)
    w.add_tensor("q", q, raw_dtype=T.Q8_0)
    w.add_tensor("x", x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ckpt = gguf_io.load_gguf(tmp_path / "a1.gguf")
    got = ckpt["x"]
    assert got.flags.aligned and not got.flags.writeable
    np.testing.assert_array_equal(got, x)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        gguf_io.load_gguf(tmp_path / "nope.gguf")
    with pytest.raises(FileNotFoundError):
        gguf_io.load_gguf(tmp_path)


def test_lookup_errors_name_the_tensor(tmp_path, valid):
    (tmp_path / "v.gguf").write_bytes(valid)
    ckpt = gguf_io.load_gguf(tmp_path / "v.gguf")
    assert set(ckpt) == {"emb.weight", "proj.weight"} and len(ckpt) == 2
    with pytest.raises(KeyError, match="no tensor named 'missing'"):
        ckpt["missing"]
    assert "GGUFCheckpoint" in repr(ckpt)
