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


def test_float32_is_memory_mapped_not_copied(tmp_path, rng):
    w = rng.standard_normal((64, 64)).astype(np.float32)
    io.save_safetensors(tmp_path / "m.safetensors", {"w": w})
    st = io.load_safetensors(tmp_path / "m.safetensors")
    a, b = st["w"], st["w"]
    assert not a.flags.writeable                      # a view of the read-only mapping
    assert np.shares_memory(a, b)                     # both views of the same mapped bytes


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
