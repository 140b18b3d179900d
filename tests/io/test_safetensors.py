"""The safetensors loader: round trips, zero-copy mapping, sharding, and crafted bad files."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from pyworkloads import io


def write_raw(path, header: dict | bytes, data: bytes = b"", header_len: int | None = None):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h) if header_len is None else header_len) + h + data)
    return path


def test_round_trip_dtypes(tmp_path, rng):
    tensors = {"w": rng.standard_normal((3, 5)).astype(np.float32),
               "ids": np.arange(6, dtype=np.int64).reshape(2, 3),
               "i32": np.array([1, -2], dtype=np.int32),
               "empty": np.zeros((0, 4), np.float32),
               "scalar": np.array(2.5, np.float32)}
    io.save_safetensors(tmp_path / "a.safetensors", tensors, metadata={"format": "np"})
    st = io.load_safetensors(tmp_path / "a.safetensors")
    assert st.metadata == {"format": "np"}
    assert set(st) == set(tensors)
    for k, v in tensors.items():
        got = st[k]
        assert got.dtype == v.dtype and got.shape == v.shape
        np.testing.assert_array_equal(got, v)


@pytest.mark.parametrize("in_memory", [False, True])
def test_float32_is_a_view_not_a_copy(tmp_path, rng, in_memory):
    w = rng.standard_normal((64, 64)).astype(np.float32)
    io.save_safetensors(tmp_path / "m.safetensors", {"w": w})
    st = io.load_safetensors(tmp_path / "m.safetensors", in_memory)
    assert st.in_memory is in_memory
    a, b = st["w"], st["w"]
    assert not a.flags.writeable                      # a view of the read-only bytes
    assert np.shares_memory(a, b)                     # both views of the same bytes
    np.testing.assert_array_equal(a, w)


def test_in_memory_by_default_when_the_file_takes_at_most_half_the_free_memory(
        tmp_path, rng, monkeypatch):
    f = tmp_path / "m.safetensors"
    io.save_safetensors(f, {"w": rng.standard_normal((64, 64)).astype(np.float32)})
    size = f.stat().st_size
    monkeypatch.setattr("pyworkloads.models.available_memory", lambda: 2 * size)
    assert io.load_safetensors(f).in_memory
    monkeypatch.setattr("pyworkloads.models.available_memory", lambda: 2 * size - 1)
    assert not io.load_safetensors(f).in_memory
    assert io.load_safetensors(f, in_memory=True).in_memory      # asked for: no size rule


def test_in_memory_data_section_starts_on_a_huge_page(tmp_path, rng):
    """The placement that lets the kernel back the weights with 2 MB pages: the tensor at offset
    0 of the data section sits on a HUGE_PAGE boundary, and a tensor at offset o at o past it."""
    tensors = {"a": rng.standard_normal(5).astype(np.float32),
               "b": rng.standard_normal((3, 4)).astype(np.float32)}
    f = tmp_path / "m.safetensors"
    io.save_safetensors(f, tensors)
    header_len = struct.unpack("<Q", f.read_bytes()[:8])[0]
    st = io.load_safetensors(f, in_memory=True)
    offsets = {k: v - 8 - header_len for k, v in _file_offsets(f).items()}
    assert sorted(offsets.values())[0] == 0
    for name, off in offsets.items():
        assert st.raw(name).ctypes.data % io.HUGE_PAGE == off
        np.testing.assert_array_equal(st.raw(name), tensors[name])


@pytest.mark.parametrize("change", ["truncated", "grown"])
def test_in_memory_refuses_a_file_that_changes_size_while_it_is_read(tmp_path, monkeypatch,
                                                                       change):
    f = tmp_path / "w.safetensors"
    io.save_safetensors(f, {"w": np.ones(64, np.float32)})
    parse = io.SafeTensors._parse_header

    def parse_then_change(self, raw, data_len):
        out = parse(self, raw, data_len)
        with open(f, "r+b") as fh:                       # between the header and the data
            if change == "truncated":
                fh.truncate(f.stat().st_size - 4)
            else:
                fh.seek(0, 2)
                fh.write(b"\0" * 4)
        return out

    monkeypatch.setattr(io.SafeTensors, "_parse_header", parse_then_change)
    with pytest.raises(ValueError, match="changed size while it was opened") as exc:
        io.load_safetensors(f, in_memory=True)
    assert str(f) in str(exc.value)


@pytest.mark.parametrize("bad", ["yes", 1, 0.5])
def test_in_memory_must_be_true_false_or_none(tmp_path, bad):
    f = tmp_path / "w.safetensors"
    io.save_safetensors(f, {"w": np.ones(4, np.float32)})
    with pytest.raises(TypeError, match="in_memory must be True, False or None"):
        io.load_safetensors(f, bad)
    with pytest.raises(TypeError, match="load_checkpoint: in_memory"):
        io.load_checkpoint(f, bad)


@pytest.mark.parametrize("code", ["F16", "BF16"])
def test_half_precisions_convert_to_float32(tmp_path, rng, code):
    w = rng.standard_normal((7, 9)).astype(np.float32)
    io.save_safetensors(tmp_path / "h.safetensors", {"w": w}, dtype=code)
    st = io.load_safetensors(tmp_path / "h.safetensors")
    assert st.dtype_of("w") == code
    got = st["w"]
    assert got.dtype == np.float32
    # F16 keeps 11 significant bits, BF16 8: round to nearest is within half an ulp, 2^-11 or
    # 2^-8 relative.  Below 2^-14 F16 is subnormal with a fixed spacing of 2^-24, so there the
    # error is up to 2^-25 absolute; BF16 has float32's exponent range and no such floor.
    tol = 2.0 ** -11 if code == "F16" else 2.0 ** -8
    np.testing.assert_allclose(got, w, rtol=tol, atol=2.0 ** -25 if code == "F16" else 0.0)


def test_bf16_conversion_matches_torch(tmp_path, rng):
    torch = pytest.importorskip("torch",
                                reason="bf16 bit-exactness is checked against torch when installed")
    w = rng.standard_normal(1000).astype(np.float32) * 100
    ref = torch.from_numpy(w).to(torch.bfloat16)
    np.testing.assert_array_equal(io.f32_to_bf16(w), ref.view(torch.int16).numpy().view(np.uint16))
    np.testing.assert_array_equal(io.bf16_to_f32(io.f32_to_bf16(w)), ref.float().numpy())


def test_files_interoperate_with_the_safetensors_library(tmp_path, rng):
    st_np = pytest.importorskip("safetensors.numpy",
                                reason="interop check needs the safetensors package")
    t = {"a": rng.standard_normal((4, 3)).astype(np.float32), "b": np.arange(5, dtype=np.int32),
         "c": rng.standard_normal(3).astype(np.float16)}
    st_np.save_file(t, str(tmp_path / "lib.safetensors"))
    ours = io.load_safetensors(tmp_path / "lib.safetensors")
    for k in t:
        np.testing.assert_array_equal(ours[k], t[k].astype(np.float32) if k == "c" else t[k])
    io.save_safetensors(tmp_path / "ours.safetensors", t)
    back = st_np.load_file(str(tmp_path / "ours.safetensors"))
    for k in t:
        np.testing.assert_array_equal(back[k], t[k])


def test_sharded_checkpoint(tmp_path, rng):
    a, b = rng.standard_normal((2, 2)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    io.save_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"a": a})
    io.save_safetensors(tmp_path / "model-00002-of-00002.safetensors", {"b": b})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                        "b": "model-00002-of-00002.safetensors"}}))
    ck = io.load_checkpoint(tmp_path)
    np.testing.assert_array_equal(ck["a"], a)
    np.testing.assert_array_equal(ck["b"], b)
    assert len(ck) == 2 and ck.shape_of("b") == (3,)
    with pytest.raises(KeyError, match="no tensor named 'zzz'"):
        ck["zzz"]


def test_sharded_checkpoint_is_read_into_memory_or_mapped_as_a_whole(tmp_path, rng,
                                                                      monkeypatch):
    """in_memory=None decides on the shards' total: shards that fit one by one but not together
    are all mapped."""
    for i in (1, 2):
        io.save_safetensors(tmp_path / f"model-0000{i}-of-00002.safetensors",
                            {f"w{i}": rng.standard_normal(256).astype(np.float32)})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {f"w{i}": f"model-0000{i}-of-00002.safetensors" for i in (1, 2)}}))
    total = sum(f.stat().st_size for f in tmp_path.glob("*.safetensors"))
    monkeypatch.setattr("pyworkloads.models.available_memory", lambda: 2 * total - 2)
    assert [st.in_memory for st in io.load_checkpoint(tmp_path).files] == [False, False]
    monkeypatch.setattr("pyworkloads.models.available_memory", lambda: 2 * total)
    ck = io.load_checkpoint(tmp_path)
    assert [st.in_memory for st in ck.files] == [True, True]
    assert [st.in_memory for st in io.load_checkpoint(tmp_path, False).files] == [False, False]


def test_sharded_index_listing_a_missing_shard(tmp_path, rng):
    io.save_safetensors(tmp_path / "s1.safetensors", {"a": np.zeros(2, np.float32)})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="shard 's2.safetensors' listed in the index"):
        io.load_checkpoint(tmp_path)


def test_sharded_index_listing_a_missing_tensor(tmp_path, rng):
    io.save_safetensors(tmp_path / "s1.safetensors", {"a": np.zeros(2, np.float32)})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors"}}))
    with pytest.raises(ValueError, match="missing from the shards"):
        io.load_checkpoint(tmp_path)


def test_shard_names_cannot_escape_the_directory(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "../evil.safetensors"}}))
    with pytest.raises(ValueError, match="plain file name"):
        io.load_checkpoint(tmp_path)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth", "x.ckpt"])
def test_pickle_formats_are_refused(tmp_path, name):
    f = tmp_path / name
    f.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ValueError, match="safetensors"):
        io.load_safetensors(f)
    with pytest.raises(ValueError, match="safetensors"):
        io.load_checkpoint(tmp_path)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        io.load_safetensors(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        io.load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        io.load_config(tmp_path)


def test_bad_config_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        io.load_config(tmp_path)


F32_2x2 = {"t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}


@pytest.mark.parametrize("header, data, header_len, message", [
    (b"", b"", None, "only 8 bytes|not a safetensors"),
    (F32_2x2, bytes(16), 2**40, "exceeds"),
    (F32_2x2, bytes(16), 10_000, "runs past the end"),
    (b"{oops", b"", None, "not valid UTF-8 JSON"),
    (b"\xff\xfe", b"", None, "not valid UTF-8 JSON"),
    (b"[1, 2]", b"", None, "must be a JSON object"),
    ({"t": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, bytes(4), None,
     "unsupported dtype"),
    ({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4), None,
     "non-negative"),
    ({"t": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 4]}}, bytes(4), None,
     "non-negative integers"),
    ({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8), None,
     "needs 12 bytes"),
    (F32_2x2, bytes(10), None, "outside the 10-byte data section"),
    ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}, bytes(8), None, "outside"),
    ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, bytes(8), None, "two integers"),
    ({"t": {"dtype": "F32", "shape": [1]}}, bytes(8), None,
     "exactly dtype, shape and data_offsets"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12), None, "overlap"),
    (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
     b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
     bytes(4), None, "twice"),
    ({"__metadata__": {"k": 1}}, b"", None, "strings to strings"),
])
def test_malformed_files_raise_clear_errors(tmp_path, header, data, header_len, message):
    f = tmp_path / "bad.safetensors"
    if header == b"" and data == b"":
        f.write_bytes(b"\x01\x02")                    # shorter than the 8-byte length prefix
    else:
        write_raw(f, header, data, header_len)
    with pytest.raises(ValueError, match=message) as exc:
        io.load_safetensors(f)
    assert str(f) in str(exc.value)                    # the message names the file


def test_truncated_real_file(tmp_path, rng):
    f = tmp_path / "t.safetensors"
    io.save_safetensors(f, {"w": rng.standard_normal((32, 32)).astype(np.float32)})
    blob = f.read_bytes()
    f.write_bytes(blob[: len(blob) - 100])
    with pytest.raises(ValueError, match="truncated"):
        io.load_safetensors(f)


# ---------------------------------------------------------------------------------------------
# the data section: tiled by the tensors, or refused
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("delta", [-3, -2, -1, 1, 2, 3])
def test_header_length_off_by_a_few_bytes_is_refused(tmp_path, rng, delta):
    """A length prefix that is off moves the data section's start, so every value would be read
    shifted: the offsets then no longer tile the section (or the JSON breaks).  The header ends
    in padding spaces, so a shorter length still leaves valid JSON."""
    w, b = rng.standard_normal(16).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    header = json.dumps({"w": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]},
                         "b": {"dtype": "F32", "shape": [3], "data_offsets": [64, 76]}}).encode()
    header += b" " * (8 + -len(header) % 8)
    f = write_raw(tmp_path / "w.safetensors", header, w.tobytes() + b.tobytes(),
                  header_len=len(header) + delta)
    with pytest.raises(ValueError, match="belong to no tensor|not valid UTF-8 JSON") as exc:
        io.load_safetensors(f)
    assert str(f) in str(exc.value)


@pytest.mark.parametrize("offsets, data, message", [
    ([[0, 4]], bytes(8), r"8 bytes but its tensors cover 4: 4 bytes at the end"),
    ([[4, 8]], bytes(8), r"bytes \[0, 4\) of the data section belong to no tensor"),
    ([[0, 4], [8, 12]], bytes(12), r"bytes \[4, 8\) .* belong to no tensor \(before 'b'\)"),
    ([[0, 4], [0, 4]], bytes(4), "overlap"),
])
def test_tensors_must_tile_the_data_section(tmp_path, offsets, data, message):
    header = {name: {"dtype": "F32", "shape": [1], "data_offsets": o}
              for name, o in zip("ab", offsets)}
    f = write_raw(tmp_path / "gap.safetensors", header, data)
    with pytest.raises(ValueError, match=message) as exc:
        io.load_safetensors(f)
    assert str(f) in str(exc.value)


def test_zero_size_tensors_tile_anywhere_between_others(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
              "e": {"dtype": "F32", "shape": [0, 3], "data_offsets": [4, 4]},
              "z": {"dtype": "I64", "shape": [0], "data_offsets": [0, 0]},
              "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}
    data = np.array([1.5, -2.0], np.float32).tobytes()
    st = io.load_safetensors(write_raw(tmp_path / "z.safetensors", header, data))
    assert st["e"].shape == (0, 3) and st["z"].dtype == np.int64
    assert float(st["a"][0]) == 1.5 and float(st["b"][0]) == -2.0


DEEP = b"[" * 100_000 + b"]" * 100_000
T1 = '"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'


@pytest.mark.parametrize("header, message", [
    (b"null", "must be a JSON object"),
    (b"3", "must be a JSON object"),
    (b'"x"', "must be a JSON object"),
    (DEEP, "nested|nests"),
    (b'{"t": ' + DEEP + b"}", "nests"),
    (b'{"__metadata__": ' + DEEP + b", " + T1.encode() + b"}", "nests"),
    (('{"t": {"dtype": "F32", "shape": [' + "9" * 5000 + '], "data_offsets": [0, 4]}}').encode(),
     "integer of 5000 digits"),
    (b'{"t": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}', "NaN"),
    (b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, Infinity]}}', "Infinity"),
    (b'{"t": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}', "unsupported dtype"),
    (b'{"t": {"dtype": {"a": 1}, "shape": [1], "data_offsets": [0, 4]}}', "unsupported dtype"),
    (b'{"t": {"dtype": null, "shape": [1], "data_offsets": [0, 4]}}', "unsupported dtype"),
    (b'{"t": {"dtype": 4, "shape": [1], "data_offsets": [0, 4]}}', "unsupported dtype"),
    (b'{"t": {"dtype": "F32", "shape": [true], "data_offsets": [0, 4]}}', "non-negative integers"),
    (b'{"t": {"dtype": "F32", "shape": 4, "data_offsets": [0, 4]}}', "non-negative integers"),
    (b'{"t": {"dtype": "F32", "shape": [[1]], "data_offsets": [0, 4]}}', "non-negative integers"),
    (b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": [0.0, 4.0]}}', "two integers"),
    (b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": [false, 4]}}', "two integers"),
    (b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": ["0", "4"]}}', "two integers"),
    (b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": "0-4"}}', "two integers"),
    (b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}', "outside"),
    (b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 18446744073709551616]}}',
     "outside"),
    (b'{"t": {"dtype": "F32", "shape": [4611686018427387904, 0], "data_offsets": [0, 0]}}',
     "too large for an array"),
    (b'{"t": {"dtype": "F32", "shape": [4611686018427387904, 4611686018427387904], '
     b'"data_offsets": [0, 4]}}', "too large for an array|needs"),
    (('{"t": {"dtype": "F32", "shape": [' + ",".join(["1"] * 70) + '], "data_offsets": [0, 4]}}'
      ).encode(), "70 dimensions, more than the 32"),
    (b'{"\\ud800": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', "lone surrogate"),
    (b'{"__metadata__": {"\\udfff": "v"}, ' + T1.encode() + b"}", "lone surrogate"),
    (b'{"__metadata__": [], ' + T1.encode() + b"}", "strings to strings"),
    (b'{"__metadata__": "x", ' + T1.encode() + b"}", "strings to strings"),
    (b'{"__metadata__": {"a": {"b": "c"}}, ' + T1.encode() + b"}", "strings to strings"),
    (b"\xef\xbb\xbf{" + T1.encode() + b"}", "not valid UTF-8 JSON"),
    (b"{" + T1.encode() + b"}\x00", "not valid UTF-8 JSON"),
])
def test_every_malformed_header_is_a_value_error_naming_the_file(tmp_path, header, message):
    """Not TypeError, RecursionError, or a NumPy error when a tensor is first read."""
    f = write_raw(tmp_path / "bad.safetensors", header, bytes(4))
    with pytest.raises(ValueError, match=message) as exc:
        io.load_safetensors(f)
    assert type(exc.value) is ValueError and str(f) in str(exc.value)


def test_metadata_null_means_none(tmp_path):
    f = write_raw(tmp_path / "m.safetensors", b'{"__metadata__": null, ' + T1.encode() + b"}",
                  bytes(4))
    assert io.load_safetensors(f).metadata == {}


# ---------------------------------------------------------------------------------------------
# alignment
# ---------------------------------------------------------------------------------------------
def _file_offsets(path) -> dict[str, int]:
    """Where each tensor starts in the file: 8 + header length + its begin offset."""
    blob = path.read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    return {k: 8 + n + v["data_offsets"][0] for k, v in json.loads(blob[8:8 + n]).items()}


def _misaligned_file(path, tensors: dict[str, tuple[str, np.ndarray]]):
    """A valid file whose header length is odd, so every tensor starts off its item size."""
    header, blobs, off = {}, [], 0
    for name, (code, arr) in tensors.items():
        buf = arr.tobytes()
        header[name] = {"dtype": code, "shape": list(arr.shape),
                        "data_offsets": [off, off + len(buf)]}
        blobs.append(buf)
        off += len(buf)
    h = json.dumps(header).encode()
    h += b" " * ((1 - len(h)) % 8)                       # 8 + len(h) is odd
    return write_raw(path, h, b"".join(blobs))


@pytest.mark.parametrize("in_memory", [False, True])
def test_misaligned_tensors_are_returned_as_aligned_read_only_copies(tmp_path, rng, in_memory):
    """Mapped, the odd header puts every tensor off its item size and raw() copies them; read
    into memory, the data section starts on a page, so only the int64 (at offset 140) is off."""
    w = rng.standard_normal((5, 7)).astype(np.float32)
    ids = np.arange(-3, 6, dtype=np.int64)
    half = rng.standard_normal(9).astype(np.float32)
    f = _misaligned_file(tmp_path / "odd.safetensors",
                         {"w": ("F32", w), "ids": ("I64", ids),
                          "h": ("BF16", io.f32_to_bf16(half)), "f16": ("F16", half.astype("<f2"))})
    assert all(start % 2 for start in _file_offsets(f).values())   # each off its item size
    st = io.load_safetensors(f, in_memory)
    for name, want in (("w", w), ("ids", ids), ("h", io.bf16_to_f32(io.f32_to_bf16(half))),
                       ("f16", half.astype(np.float16).astype(np.float32))):
        for a in (st[name], st.raw(name)):
            assert a.flags.aligned and a.ctypes.data % a.itemsize == 0
        np.testing.assert_array_equal(st[name], want)
        assert not st.raw(name).flags.writeable


def test_writer_lays_mixed_dtypes_out_aligned_and_they_stay_mapped(tmp_path, rng):
    """Tensors of 1-, 2- and 8-byte items in an order that would misalign the 8-byte ones if
    written as given: the writer orders the data by item size, so all are mapped, none copied."""
    tensors = {"u8": np.arange(3, dtype=np.uint8), "f16": np.ones(3, np.float16),
               "f64": rng.standard_normal(3), "i64": np.arange(5, dtype=np.int64),
               "f32": rng.standard_normal(3).astype(np.float32)}
    io.save_safetensors(tmp_path / "mix.safetensors", tensors)
    st = io.load_safetensors(tmp_path / "mix.safetensors")
    assert list(st) == list(tensors)                       # the header keeps the given order
    starts = _file_offsets(tmp_path / "mix.safetensors")
    for name, t in tensors.items():
        assert starts[name] % t.itemsize == 0
        assert np.shares_memory(st.raw(name), st.raw(name))   # mapped, not copied
        np.testing.assert_array_equal(st.raw(name), t)


# ---------------------------------------------------------------------------------------------
# config.json and the shard index
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    (b"[1, 2]", "must be a JSON object"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"hidden_size": ' + b"9" * 5000 + b"}", "integer of 5000 digits"),
    (b'{"a": "\xff"}', "not valid UTF-8"),
    (b"{oops", "not valid JSON"),
])
def test_config_json_errors_name_the_file(tmp_path, text, message):
    (tmp_path / "config.json").write_bytes(text)
    with pytest.raises(ValueError, match=message) as exc:
        io.load_config(tmp_path)
    assert type(exc.value) is ValueError and str(tmp_path / "config.json") in str(exc.value)


def test_config_json_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "MAX_JSON_BYTES", 16)
    (tmp_path / "config.json").write_text('{"hidden_size": 4096, "layers": 32}')
    with pytest.raises(ValueError, match="more than the 16-byte limit"):
        io.load_config(tmp_path)


@pytest.mark.parametrize("index", [
    {"weight_map": ["a", "b"]},
    {"weight_map": {"a": 3}},
    {"weight_map": {"a": None}},
    {"weight_map": {"a": ".."}},
    {"no_weight_map": {}},
    [],
])
def test_malformed_shard_index(tmp_path, index):
    io.save_safetensors(tmp_path / "s1.safetensors", {"a": np.zeros(2, np.float32)})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="index|must be a JSON object|plain file name") as exc:
        io.load_checkpoint(tmp_path)
    assert "model.safetensors.index.json" in str(exc.value)


@pytest.mark.parametrize("code", ["F32", "F16", "BF16", "F64"])
def test_scalar_tensors_are_zero_dimensional_arrays_in_every_dtype(tmp_path, code):
    """A 0-d BF16 tensor came back as a NumPy scalar (a shift of a 0-d array makes one)."""
    io.save_safetensors(tmp_path / "s.safetensors", {"s": np.array(2.5, np.float32)},
                        dtype=code if code in ("F16", "BF16") else None)
    if code == "F64":
        io.save_safetensors(tmp_path / "s.safetensors", {"s": np.array(2.5)})
    got = io.load_safetensors(tmp_path / "s.safetensors")["s"]
    assert isinstance(got, np.ndarray) and got.shape == () and got.dtype == np.float32
    assert float(got) == 2.5                               # exact in every one of the formats


def test_f64_beyond_float32_range_becomes_infinity_quietly(tmp_path):
    io.save_safetensors(tmp_path / "d.safetensors", {"d": np.array([1e300, -1e300, 1.0])})
    with np.errstate(all="raise"):                        # a warning would raise here
        got = io.load_safetensors(tmp_path / "d.safetensors")["d"]
    np.testing.assert_array_equal(got, np.array([np.inf, -np.inf, 1.0], np.float32))


def test_a_file_that_changes_size_while_it_is_opened_is_refused(tmp_path, monkeypatch):
    """The header is read, then the file mapped: a file truncated in between would be read past
    its end (SIGBUS) if the mapping were not measured again."""
    f = tmp_path / "w.safetensors"
    io.save_safetensors(f, {"w": np.ones(4, np.float32)})
    real = io.mmap.mmap

    class Shorter:
        def __init__(self, *args, **kwargs):
            self.m = real(*args, **kwargs)

        def __len__(self):
            return len(self.m) - 4

        def close(self):
            self.m.close()

    monkeypatch.setattr(io.mmap, "mmap", Shorter)
    with pytest.raises(ValueError, match="changed size while it was opened") as exc:
        io.load_safetensors(f, in_memory=False)
    assert str(f) in str(exc.value)
