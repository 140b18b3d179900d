"""Fuzzing the audio and image inputs with hypothesis: WAV headers (rate, channels, bit depth,
format code, data length), PNG headers (size, bit depth, colour type, interlace), PIL modes and
array shapes and dtypes.  Every input must end in a result of the documented shape, or in a
clear error.

A clear error is a ValueError, TypeError or OSError (FileNotFoundError, IsADirectoryError ...)
raised by pyworkloads' own code -- the innermost frame of its traceback is in the package -- so
an error escaping from PIL, numpy, scipy or soundfile, or of any other type, fails the test.
Each test runs a fixed, derandomized set of examples (no deadline: the first example pays for
imports), with the size limits lowered where the limit itself is what is probed, so that every
example stays cheap.
"""
from __future__ import annotations

import importlib
import struct
import tempfile
import traceback
import zlib
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="fuzzing needs hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import pyworkloads  # noqa: E402
from pyworkloads import audio as A  # noqa: E402
from pyworkloads.models import clip, sam  # noqa: E402

PACKAGE = str(Path(pyworkloads.__file__).resolve().parent)
# the module (clip.preprocess is the function of the same name)
CLIP_PREPROCESS = importlib.import_module("pyworkloads.models.clip.preprocess")
FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def _result_or_clear_error(fn, check):
    """fn() -> check(result) must pass, or fn raises a clear error (see the module docstring)."""
    try:
        out = fn()
    except (ValueError, TypeError, OSError) as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        assert str(Path(frame.filename).resolve()).startswith(PACKAGE), (
            f"{type(exc).__name__} escaped from {frame.filename}:{frame.lineno}: {exc}")
        assert str(exc), f"{type(exc).__name__} without a message"
        return exc
    check(out)
    return out


# ---------------------------------------------------------------------------------------------
# audio: WAV headers
# ---------------------------------------------------------------------------------------------
def _wav(rate, channels, bits, fmt, payload: bytes, data_len=None, block_align=None):
    block_align = channels * (bits // 8) if block_align is None else block_align
    fmt_chunk = struct.pack("<HHIIHH", fmt, channels, rate, (rate * block_align) & 0xFFFFFFFF,
                            block_align & 0xFFFF, bits)
    data_len = len(payload) if data_len is None else data_len
    body = (b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt_chunk
            + b"data" + struct.pack("<I", data_len) + payload)
    return b"RIFF" + struct.pack("<I", len(body)) + body


RATES = st.one_of(st.sampled_from([0, 1, 999, 1000, 8000, 11025, 16000, 44100, 48000, 96000,
                                   768000, 768001, 2**31 - 1, 2**32 - 1]),
                  st.integers(0, 2**32 - 1))


VALID_FORMATS = [(1, 8), (1, 16), (1, 24), (1, 32), (3, 32), (3, 64)]      # (format code, bits)


@FUZZ
@given(rate=RATES, channels=st.integers(1, 8), fmt_bits=st.sampled_from(VALID_FORMATS),
       frames=st.integers(0, 512), seed=st.integers(0, 2**16),
       bad_channels=st.one_of(st.none(), st.integers(0, 65535)),
       bad_fmt_bits=st.one_of(st.none(), st.tuples(st.integers(0, 65535), st.integers(0, 255))),
       data_len=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
       block_align=st.one_of(st.none(), st.integers(0, 65535)))
def test_wav_headers(rate, channels, fmt_bits, frames, seed, bad_channels, bad_fmt_bits, data_len,
                     block_align):
    """A valid WAV at any rate, with any of its other header fields possibly replaced by an
    arbitrary value: mono samples whose count follows from the payload and the rates (at most 16
    per payload frame: from the lowest accepted rate, 1 kHz, to 16 kHz), or a clear error."""
    fmt, bits = fmt_bits if bad_fmt_bits is None else bad_fmt_bits
    channels = channels if bad_channels is None else bad_channels
    n_bytes = frames * max(channels, 1) * max(bits // 8, 1)
    payload = np.random.default_rng(seed).integers(0, 256, n_bytes, dtype=np.uint8).tobytes()
    if fmt == 3:                         # finite float samples (random bytes hold NaNs)
        payload = np.full(n_bytes // (bits // 8), 0.25, f"<f{bits // 8}").tobytes()
    data = _wav(rate, channels, bits, fmt, payload, data_len, block_align)
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "x.wav"
        f.write_bytes(data)

        def check(y):
            assert y.dtype == np.float32 and y.ndim == 1 and y.size > 0
            assert np.all(np.isfinite(y))
            assert y.size <= 16 * max(frames, len(payload)) + 1, (y.size, frames, rate)
        _result_or_clear_error(lambda: A.load_audio(f), check)


@FUZZ
@given(shape=st.lists(st.integers(0, 40), min_size=0, max_size=3),
       dtype=st.sampled_from(["float32", "float64", "float16", "int16", "uint8", "int64", "bool",
                              "complex64"]),
       orig_sr=st.one_of(st.none(), RATES, st.floats(allow_nan=True)),
       special=st.sampled_from([None, np.nan, np.inf, 1e300]))
def test_audio_arrays(shape, dtype, orig_sr, special):
    """Arrays of any shape, dtype and rate (a duration limit of 0.1 s makes the limit reachable
    with small arrays): mono float32 samples or a clear error."""
    x = np.ones(shape, dtype=dtype)
    if special is not None and x.size and x.dtype.kind == "f":
        with np.errstate(over="ignore"):
            x.flat[0] = special

    def check(y):
        assert y.dtype == np.float32 and y.ndim == 1 and y.size > 0 and np.all(np.isfinite(y))
        # the longer axis of a 2-D array is the samples: at most 16x more after resampling
        assert y.size <= 16 * max(shape) + 1
    with mock.patch.object(A, "MAX_DURATION_S", 0.1):
        _result_or_clear_error(lambda: A.load_audio(x, orig_sr=orig_sr), check)


@FUZZ
@given(n=st.integers(0, 2000), n_mels=st.integers(-1, 300),
       n_samples=st.one_of(st.none(), st.integers(-1, 10**13)),
       chunk_frames=st.integers(-1, 10**12),
       dynamic_range=st.one_of(st.none(), st.floats(allow_nan=True)))
def test_log_mel_arguments(n, n_mels, n_samples, chunk_frames, dynamic_range):
    x = np.sin(np.arange(n, dtype=np.float32))
    expect_frames = (n if n_samples is None else n_samples) // A.HOP_LENGTH

    def check(m):
        assert m.dtype == np.float32 and m.shape == (n_mels, expect_frames)
        assert np.all(np.isfinite(m))
    with mock.patch.object(A, "MAX_DURATION_S", 1):           # n_samples up to 16000
        _result_or_clear_error(lambda: A.log_mel_spectrogram(
            x, n_mels, n_samples, chunk_frames=chunk_frames, dynamic_range=dynamic_range),
            check)


# ---------------------------------------------------------------------------------------------
# images: PNG headers, PIL modes, arrays
# ---------------------------------------------------------------------------------------------
def _png(width, height, bit_depth, color_type, interlace, raw: bytes):
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, interlace)
    plte = chunk(b"PLTE", bytes(range(256)) * 3) if color_type == 3 else b""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + plte
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _channels(color_type):
    return {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(color_type, 1)


def _clip_check(size):
    def check(x):
        assert x.shape == (1, 3, size, size) and x.dtype == np.float32
        assert np.all(np.isfinite(x))
    return check


def _sam_check(image_size, hw=None):
    def check(out):
        pv, original, (h, w) = out
        assert pv.shape == (1, 3, image_size, image_size) and np.all(np.isfinite(pv))
        assert 1 <= h <= image_size and 1 <= w <= image_size
        assert hw is None or tuple(original) == hw
    return check


@FUZZ
@given(width=st.one_of(st.integers(0, 48), st.integers(0, 2**31 - 1)),
       height=st.one_of(st.integers(0, 48), st.integers(0, 2**31 - 1)),
       bit_depth=st.sampled_from([1, 2, 3, 4, 8, 16, 32]),
       color_type=st.sampled_from([0, 1, 2, 3, 4, 5, 6]), interlace=st.sampled_from([0, 1, 2]),
       seed=st.integers(0, 2**16), keep=st.floats(0, 1))
def test_png_headers(width, height, bit_depth, color_type, interlace, seed, keep):
    """Any PNG header with random pixel rows (all of them, or a truncated part): the models'
    inputs or a clear error.  Pixel data is generated only for images of up to 64 K pixels, so
    large headers come with little data -- decompression bombs, truncated images.  PIL's pixel
    limit is lowered to 2^20 so that the images it admits decode quickly."""
    from PIL import Image
    line = 1 + (width * _channels(color_type) * bit_depth + 7) // 8
    size = line * height if width * height <= 2**16 else 4096
    raw = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    raw = raw[:int(len(raw) * keep)] if keep < 0.9 else raw
    data = _png(width, height, bit_depth, color_type, interlace, raw)
    with tempfile.TemporaryDirectory() as d, mock.patch.object(Image, "MAX_IMAGE_PIXELS", 2**20):
        f = Path(d) / "x.png"
        f.write_bytes(data)
        _result_or_clear_error(lambda: clip.preprocess(f, 16), _clip_check(16))
        _result_or_clear_error(lambda: sam.preprocess(f, 32), _sam_check(32))


@FUZZ
@given(long=st.integers(1, 10**6), short=st.integers(1, 3), portrait=st.booleans(),
       size=st.integers(1, 64))
def test_extreme_aspect_ratios(long, short, portrait, size):
    """Strips of any aspect ratio: CLIP's input or its resize limit (lowered to 2^16 pixels so
    the boundary is cheap to reach), and always SAM's input (at least one pixel each way)."""
    shape = (long, short) if portrait else (short, long)
    img = np.zeros(shape, np.uint8)
    with mock.patch.object(CLIP_PREPROCESS, "MAX_RESIZED_PIXELS", 2**16):
        out = _result_or_clear_error(lambda: clip.preprocess(img, size), _clip_check(size))
    if isinstance(out, Exception):
        assert "MAX_RESIZED_PIXELS" in str(out)
    out = sam.preprocess(img, 64)
    _sam_check(64, shape)(out)


MODES = ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB",
         "HSV", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"]


@FUZZ
@given(mode=st.sampled_from(MODES), w=st.integers(1, 24), h=st.integers(1, 24),
       seed=st.integers(0, 2**16), transparency=st.booleans())
def test_pil_modes(mode, w, h, seed, transparency):
    """PIL images of every mode with random pixels (mode I beyond 16 bits and mode F are refused
    with a clear error; the rest convert)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    n_bytes = len(Image.new(mode, (w, h)).tobytes())
    im = Image.frombytes(mode, (w, h), rng.integers(0, 256, n_bytes, dtype=np.uint8).tobytes())
    if transparency:
        im.info["transparency"] = 0 if mode not in ("RGB", "RGBX") else (0, 0, 0)
    clip_out = _result_or_clear_error(lambda: clip.preprocess(im, 8), _clip_check(8))
    sam_out = _result_or_clear_error(lambda: sam.preprocess(im, 16), _sam_check(16, (h, w)))
    if mode.startswith("I;16") or (mode == "I" and not isinstance(clip_out, Exception)):
        # 16-bit levels v become round(v / 257), the opaque level white where transparent
        v = np.asarray(im).astype(np.int64)
        grey = np.round(v / 257).astype(np.uint8)
        if transparency:
            grey[v == 0] = 255
        rgb = np.repeat(grey[..., None], 3, axis=2)
        np.testing.assert_array_equal(clip_out, clip.preprocess(rgb, 8))
        np.testing.assert_array_equal(sam_out[0], sam.preprocess(rgb, 16)[0])


@FUZZ
@given(shape=st.lists(st.integers(0, 12), min_size=0, max_size=4),
       dtype=st.sampled_from(["uint8", "uint16", "float32", "int64", "bool", "int8"]))
def test_image_arrays(shape, dtype):
    x = np.full(shape, 7, dtype=dtype)
    _result_or_clear_error(lambda: clip.preprocess(x, 8), _clip_check(8))
    _result_or_clear_error(lambda: sam.preprocess(x, 16), _sam_check(16))
