"""Hostile audio, image, tokenizer and prompt inputs against the library: about 300 cases, each
run in a forked child under a time limit and an address-space limit, each outcome classified.

    python dev/hostile/media.py                  # this checkout
    python dev/hostile/media.py --root DIR       # another checkout (e.g. an export of main)
    python dev/hostile/media.py -v               # also list every case that is not ok / clear
    python dev/hostile/media.py -k png           # only the cases whose name contains "png"

Outcomes:
  ok               a result the case's check accepts
  clear error      ValueError, TypeError, OSError or RuntimeError (not RecursionError) raised
                   by the project's own code (the innermost frame of the traceback is in
                   pyworkloads/), with a message
  wrong            a result for an input that must be refused, a result that fails its check
                   (e.g. 16-bit pixels saturated, channels read as samples), or a valid input
                   refused
  crash            a signal, or any other exception: another type, or one raised inside a
                   library (PIL, numpy, scipy, tokenizers, json ...)
  hang             still running at the time limit (--timeout)
  over-allocation  MemoryError or a failed allocation under the address-space limit
                   (--mem-gib above the parent's), or a peak resident size more than
                   --rss-mib above the parent's

Each case names what it expects: "ok" (a valid input that must give a correct result),
"error" (an input that must be refused) or "either" (a result that passes the check, or a clear
error).  The inputs come from --seed: the same seed gives the same cases.  Children are forked
from a parent that has imported everything and loaded the small models once, so a case costs
milliseconds unless it misbehaves.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import select
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")          # no thread pools in the parent: children fork clean
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve()
OUTCOMES = ("ok", "clear error", "wrong", "crash", "hang", "over-allocation")
# what a clear error is: one of these types, raised by the project's own code with a message
CLEAR = (ValueError, TypeError, OSError, RuntimeError)
UNCLEAR = (RecursionError, NotImplementedError)


@dataclass
class Case:
    area: str
    name: str
    fn: object                      # () -> result, run in the child
    expect: str = "either"          # "ok" | "error" | "either"
    check: object = None            # result -> None (fine) or a reason it is wrong
    outcome: str = ""
    detail: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# running one case in a forked child
# ---------------------------------------------------------------------------------------------
def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _raised_by(exc: BaseException, dirs: tuple[str, ...]) -> str | None:
    """The file:line of the innermost frame of exc's traceback when it lies in one of dirs."""
    tb = exc.__traceback__
    if tb is None:
        return None
    last = traceback.extract_tb(tb)[-1]
    path = os.path.realpath(last.filename)
    return f"{Path(path).name}:{last.lineno}" if path.startswith(dirs) else None


def _child(case: Case, wfd: int, mem_bytes: int, project_dirs: tuple[str, ...], log: str):
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    limit = _status_kib("VmSize") * 1024 + mem_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    try:
        result = case.fn()
        try:
            reason = case.check(result) if case.check is not None else None
        except Exception as exc:                      # a result the check cannot even read
            reason = f"check failed on the result: {type(exc).__name__}: {exc}"
        out = ["result", reason or ""]
    except MemoryError as exc:
        out = ["memory", f"MemoryError: {exc}"]
    except BaseException as exc:                      # noqa: BLE001 -- classify everything
        where = _raised_by(exc, project_dirs)
        text = f"{type(exc).__name__}: {exc}"
        clear = (isinstance(exc, CLEAR) and not isinstance(exc, UNCLEAR) and where
                 and str(exc))
        out = ["clear" if clear else "crash", f"{text} [{where or 'raised in a library'}]"]
    data = json.dumps([out[0], out[1][:400]]).encode()
    os.write(wfd, data)
    os._exit(0)


def run_case(case: Case, timeout: float, mem_bytes: int, rss_bytes: int,
             project_dirs: tuple[str, ...], tmp: str) -> None:
    log = os.path.join(tmp, "child.log")
    r, w = os.pipe()
    base_rss = _status_kib("VmRSS") * 1024
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:                                              # the child
        os.close(r)
        try:
            _child(case, w, mem_bytes, project_dirs, log)
        finally:
            os._exit(3)
    os.close(w)
    chunks, timed_out = [], False
    while True:
        left = timeout - (time.perf_counter() - t0)
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([r], [], [], left)
        if not ready:
            continue
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status, usage = os.wait4(pid, 0)
    os.close(r)
    case.seconds = time.perf_counter() - t0
    peak = usage.ru_maxrss * 1024 - base_rss
    try:
        stderr = Path(log).read_text(errors="replace")[-2000:]
    except OSError:
        stderr = ""
    if timed_out:
        case.outcome, case.detail = "hang", f"still running after {timeout:.0f} s"
        return
    if not chunks:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        text = f"died ({'signal ' + str(sig) if sig else 'exit ' + str(os.WEXITSTATUS(status))})"
        if "memory allocation of" in stderr or "bad_alloc" in stderr:
            case.outcome, case.detail = "over-allocation", f"{text}: {stderr.strip()[-200:]}"
        else:
            case.outcome, case.detail = "crash", f"{text}: {stderr.strip()[-200:]}"
        return
    kind, detail = json.loads(b"".join(chunks))
    if kind == "memory":
        case.outcome, case.detail = "over-allocation", detail
    elif peak > rss_bytes:
        case.outcome = "over-allocation"
        case.detail = f"peak memory {peak / 2**20:.0f} MiB above the parent's ({kind}: {detail})"
    elif kind == "crash":
        case.outcome, case.detail = "crash", detail
    elif kind == "clear":
        if case.expect == "ok":
            case.outcome, case.detail = "wrong", f"refused a valid input: {detail}"
        else:
            case.outcome, case.detail = "clear error", detail
    elif case.expect == "error":
        case.outcome, case.detail = "wrong", "returned a result; must be refused"
    elif detail:
        case.outcome, case.detail = "wrong", detail
    else:
        case.outcome, case.detail = "ok", ""


# ---------------------------------------------------------------------------------------------
# input builders
# ---------------------------------------------------------------------------------------------
def wav_bytes(rate=16000, channels=1, bits=16, fmt=1, frames=1600, payload=None, data_len=None,
              block_align=None, byte_rate=None, riff_len=None):
    """A RIFF/WAVE file with every header field settable; the payload is a 440 Hz tone at
    amplitude 0.5 in the declared format (or random bytes where the format has no simple
    encoding)."""
    import numpy as np
    width = max(bits, 0) // 8
    n = frames * max(channels, 0)
    if payload is None:
        t = np.arange(frames) / max(rate, 1)
        x = np.repeat(0.5 * np.sin(2 * np.pi * 440 * t), max(channels, 0))
        if fmt == 1 and bits == 16:
            payload = np.round(x * 32767).astype("<i2").tobytes()
        elif fmt == 1 and bits == 8:
            payload = np.round(x * 127 + 128).astype(np.uint8).tobytes()
        elif fmt == 1 and bits == 32:
            payload = np.round(x * 2147483647).astype("<i4").tobytes()
        elif fmt == 1 and bits == 24:
            v = np.round(x * 8388607).astype("<i4").tobytes()
            payload = b"".join(v[i:i + 3] for i in range(0, len(v), 4))
        elif fmt == 3 and bits == 32:
            payload = x.astype("<f4").tobytes()
        elif fmt == 3 and bits == 64:
            payload = x.astype("<f8").tobytes()
        else:
            payload = np.random.default_rng(n).integers(0, 256, n * max(width, 1),
                                                        dtype=np.uint8).tobytes()
    block_align = channels * width if block_align is None else block_align
    byte_rate = rate * block_align if byte_rate is None else byte_rate
    data_len = len(payload) if data_len is None else data_len
    fmt_chunk = struct.pack("<HHIIHH", fmt & 0xFFFF, channels & 0xFFFF, rate & 0xFFFFFFFF,
                            byte_rate & 0xFFFFFFFF, block_align & 0xFFFF, bits & 0xFFFF)
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk
            + b"data" + struct.pack("<I", data_len & 0xFFFFFFFF) + payload)
    riff_len = len(body) if riff_len is None else riff_len
    return b"RIFF" + struct.pack("<I", riff_len & 0xFFFFFFFF) + body


def png_bytes(width, height, bit_depth=8, color_type=0, rows=None, interlace=0, zero_fill=True):
    """A PNG with the given IHDR; rows: the raw filtered scanlines (default: all zero, which
    deflate compresses ~1000:1, so a tiny file can declare a huge image)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(color_type, 1)
    if rows is None and zero_fill:
        # compressed a MiB at a time; past 256 MiB of pixels only the first MiB is written (the
        # file then claims more than it holds, as a decompression bomb's header does)
        total = (1 + (width * channels * bit_depth + 7) // 8) * height
        total = total if total <= 2**28 else 2**20
        comp, parts, zeros = zlib.compressobj(9), [], b"\x00" * 2**20
        for start in range(0, total, 2**20):
            parts.append(comp.compress(zeros[:min(2**20, total - start)]))
        blob = b"".join(parts) + comp.flush()
    else:
        blob = zlib.compress(rows or b"")
    if rows is None and zero_fill and interlace == 1:        # Adam7: seven sub-images
        total = sum((1 + (-(-(width - x0) // dx) * channels * bit_depth + 7) // 8)
                    * -(-(height - y0) // dy)
                    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4),
                                           (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
                    if width > x0 and height > y0)
        blob = zlib.compress(b"\x00" * total)
    ihdr = struct.pack(">IIBBBBB", width & 0xFFFFFFFF, height & 0xFFFFFFFF, bit_depth, color_type,
                       0, 0, interlace)
    extra = chunk(b"PLTE", bytes(range(256)) * 3) if color_type == 3 else b""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", blob)
            + chunk(b"IEND", b""))


def png16(a):
    """uint16 [h, w] or [h, w, c] -> a 16-bit PNG (grey, grey+alpha, RGB or RGBA)."""
    import numpy as np
    a = np.asarray(a, np.uint16)
    if a.ndim == 2:
        a = a[:, :, None]
    ct = {1: 0, 2: 4, 3: 2, 4: 6}[a.shape[2]]
    be = a.astype(">u2")
    rows = b"".join(b"\x00" + be[i].tobytes() for i in range(a.shape[0]))
    return png_bytes(a.shape[1], a.shape[0], 16, ct, rows=rows)


# ---------------------------------------------------------------------------------------------
# the cases
# ---------------------------------------------------------------------------------------------
def build_cases(tmp: Path, seed: int, root: Path) -> list[Case]:
    import numpy as np
    from PIL import Image

    from pyworkloads import audio as A
    from pyworkloads.models import clip, sam, whisper

    rng = np.random.default_rng(seed)
    fixtures = root / "tests" / "fixtures"
    cases: list[Case] = []

    def add(area, name, fn, expect="either", check=None):
        cases.append(Case(area, name, fn, expect, check))

    def write(name, data: bytes) -> Path:
        p = tmp / name
        p.write_bytes(data)
        return p

    # -- checks -------------------------------------------------------------------------------
    def wave_check(n_expected=None, limit=None):
        def check(y):
            y = np.asarray(y)
            if y.ndim != 1 or y.dtype != np.float32:
                return f"not float32 [samples]: {y.dtype} {y.shape}"
            if not np.all(np.isfinite(y)):
                return "non-finite samples in the result"
            if n_expected is not None and abs(y.size - n_expected) > 1:
                return f"{y.size} samples, expected {n_expected}"
            if limit is not None and y.size > limit:
                return f"{y.size} samples from a small input (more than {limit})"
            return None
        return check

    def clip_check(level=None, size=224):
        def check(x):
            x = np.asarray(x)
            if x.shape != (1, 3, size, size) or x.dtype != np.float32:
                return f"shape {x.shape} dtype {x.dtype}, expected (1, 3, {size}, {size}) float32"
            if not np.all(np.isfinite(x)):
                return "non-finite pixels"
            if level is not None:
                want = (level / 255 - clip.CLIP_MEAN[0]) / clip.CLIP_STD[0]
                # a uniform image stays uniform through bicubic resizing; float32 rounding only
                if abs(float(x[0, 0].mean()) - want) > 1e-4:
                    got = float(x[0, 0].mean()) * clip.CLIP_STD[0] + clip.CLIP_MEAN[0]
                    return f"8-bit level {got * 255:.1f}, expected {level}"
            return None
        return check

    def sam_check(level=None, shape=None):
        def check(out):
            pv, original, reshaped = out
            pv = np.asarray(pv)
            if pv.shape != (1, 3, 1024, 1024) or not np.all(np.isfinite(pv)):
                return f"pixel_values {pv.shape}, or non-finite"
            if shape is not None and tuple(original) != tuple(shape):
                return f"original size {original}, expected {shape}"
            if not (1 <= reshaped[0] <= 1024 and 1 <= reshaped[1] <= 1024):
                return f"reshaped size {reshaped} outside 1..1024"
            if level is not None:
                h, w = reshaped
                want = (level / 255 - float(sam.IMAGE_MEAN[0])) / float(sam.IMAGE_STD[0])
                got = float(pv[0, 0, :h, :w].mean())
                if abs(got - want) > 1e-4:
                    lvl = (got * float(sam.IMAGE_STD[0]) + float(sam.IMAGE_MEAN[0])) * 255
                    return f"8-bit level {lvl:.1f}, expected {level}"
            return None
        return check

    # =========================================================================================
    # audio files: WAV header fields, truncations, mutations, other formats
    # =========================================================================================
    area = "audio files"
    frames = 1600
    for rate in (0, 1, 2, 100, 999, 1000, 4000, 8000, 11025, 16000, 22050, 32000, 44100, 48000,
                 96000, 192000, 384000, 768000, 768001, 1_000_000, 2**24, 2**31 - 1, 2**32 - 1):
        f = write(f"rate_{rate}.wav", wav_bytes(rate=rate, frames=frames))
        n_out = -(-frames * 16000 // rate) if rate else None
        expect = "error" if rate < 1000 or rate > 768000 else (
            "ok" if 8000 <= rate <= 192000 else "either")
        add(area, f"wav rate {rate} Hz", lambda f=f: A.load_audio(f), expect,
            wave_check(n_out if expect != "error" else None, limit=16 * frames + 1))
    # a 32 KB file whose header claims 1 Hz (the 256 M-sample case)
    f = write("rate_1_32k.wav", wav_bytes(rate=1, frames=16000))
    add(area, "wav 32 KB at 1 Hz", lambda f=f: A.load_audio(f), "error")
    for ch in (0, 1, 2, 3, 8, 9, 64, 255, 1024, 65535):
        fr = 64 if ch > 8 else frames
        f = write(f"ch_{ch}.wav", wav_bytes(channels=ch, frames=fr))
        add(area, f"wav {ch} channels", lambda f=f: A.load_audio(f),
            "ok" if 1 <= ch <= 8 else "either", wave_check(fr if ch else None))
    for fmt, bits in [(1, 0), (1, 1), (1, 4), (1, 7), (1, 8), (1, 12), (1, 16), (1, 20), (1, 24),
                      (1, 32), (1, 40), (1, 64), (1, 255), (3, 16), (3, 32), (3, 64), (6, 8),
                      (7, 8), (2, 4), (0x55, 16), (0, 16), (0xFFFE, 16), (0xFFFF, 16),
                      (17, 4)]:
        f = write(f"fmt_{fmt}_{bits}.wav", wav_bytes(fmt=fmt, bits=bits))
        valid = (fmt, bits) in ((1, 8), (1, 16), (1, 24), (1, 32), (3, 32), (3, 64))
        add(area, f"wav format {fmt:#x} {bits}-bit", lambda f=f: A.load_audio(f),
            "ok" if valid else "either", wave_check(frames if valid else None, 16 * frames))
    for dl in (0, 1, 3, 1599, 3201, 6400, 2**31, 2**32 - 1):
        f = write(f"dl_{dl}.wav", wav_bytes(data_len=dl))
        add(area, f"wav data length field {dl}", lambda f=f: A.load_audio(f), "either",
            wave_check(limit=16 * frames))
    for ba, br in ((0, None), (1, None), (3, None), (65535, None), (None, 0), (None, 1),
                   (None, 2**32 - 1)):
        f = write(f"ba_{ba}_{br}.wav", wav_bytes(block_align=ba, byte_rate=br))
        add(area, f"wav block align {ba} byte rate {br}", lambda f=f: A.load_audio(f), "either",
            wave_check(limit=16 * frames))
    for riff in (0, 4, 2**32 - 1):
        f = write(f"riff_{riff}.wav", wav_bytes(riff_len=riff))
        add(area, f"wav RIFF length {riff}", lambda f=f: A.load_audio(f), "either",
            wave_check(limit=16 * frames))
    good = wav_bytes(frames=frames)
    for cut in (0, 4, 12, 20, 36, 43, 44, 45, 100, len(good) - 1):
        f = write(f"cut_{cut}.wav", good[:cut])
        add(area, f"wav truncated to {cut} bytes", lambda f=f: A.load_audio(f),
            "error" if cut <= 44 else "either", wave_check(limit=frames))
    for i in range(30):                                   # random byte mutations of the header
        data = bytearray(good)
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(0, 44))] = int(rng.integers(0, 256))
        f = write(f"mut_{i}.wav", bytes(data))
        add(area, f"wav header mutation {i}", lambda f=f: A.load_audio(f), "either",
            wave_check(limit=16 * frames * 4))
    f = write("nan.wav", wav_bytes(fmt=3, bits=32, payload=np.full(frames, np.nan,
                                                                  "<f4").tobytes()))
    add(area, "wav float NaN samples", lambda f=f: A.load_audio(f), "error")
    f = write("inf.wav", wav_bytes(fmt=3, bits=64, payload=np.full(frames, np.inf,
                                                                  "<f8").tobytes()))
    add(area, "wav double inf samples", lambda f=f: A.load_audio(f), "error")
    f = write("huge.wav", wav_bytes(fmt=3, bits=64, payload=np.full(frames, 1e300,
                                                                   "<f8").tobytes()))
    add(area, "wav double 1e300 samples", lambda f=f: A.load_audio(f), "either",
        wave_check(frames))
    f = write("empty.wav", b"")
    add(area, "empty file", lambda f=f: A.load_audio(f), "error")
    f = write("text.wav", b"hello, this is not audio\n" * 40)
    add(area, "text file", lambda f=f: A.load_audio(f), "error")
    add(area, "png as audio", lambda: A.load_audio(write("img.wav", png_bytes(4, 4))), "error")
    add(area, "directory", lambda: A.load_audio(tmp), "error")
    add(area, "missing file", lambda: A.load_audio(tmp / "missing.wav"), "error")
    import soundfile as sf
    for fmt_name, sub in (("FLAC", "PCM_16"), ("OGG", "VORBIS")):
        p = tmp / f"tone.{fmt_name.lower()}"
        t = np.arange(22050) / 22050
        sf.write(p, 0.5 * np.sin(2 * np.pi * 440 * t), 22050, format=fmt_name, subtype=sub)
        add(area, f"{fmt_name} at 22050 Hz", lambda p=p: A.load_audio(p), "ok",
            wave_check(16000))
    f = write("ro.wav", good)
    os.chmod(f, 0)
    add(area, "unreadable file (mode 000)", lambda f=f: A.load_audio(f),
        "either" if os.geteuid() == 0 else "error", wave_check(frames))

    # =========================================================================================
    # audio arrays and spectrogram arguments
    # =========================================================================================
    area = "audio arrays"
    x = (0.5 * np.sin(2 * np.pi * 440 * np.arange(4000) / 16000)).astype(np.float32)

    def same_as_x(y):
        y = np.asarray(y)
        if y.shape != x.shape:
            return f"shape {y.shape}, expected {x.shape} (channels read as samples?)"
        # the mean of identical channels is the channel, to float32 rounding
        return None if np.abs(y - x).max() <= 1e-6 else "values differ from the channel"

    for name, arr, expect, check in [
        ("[N]", x, "ok", same_as_x),
        ("[2, N] channels first", np.stack([x, x]), "ok", same_as_x),
        ("[N, 2] channels last", np.stack([x, x], 1), "ok", same_as_x),
        ("[1, N]", x[None], "ok", same_as_x),
        ("[N, 1]", x[:, None], "ok", same_as_x),
        ("[8, N]", np.stack([x] * 8), "ok", same_as_x),
        ("[N, 8]", np.stack([x] * 8, 1), "ok", same_as_x),
        ("[9, N]", np.stack([x] * 9), "either", same_as_x),
        ("[64, N]", np.stack([x] * 64), "either", same_as_x),
        ("[2, 2]", np.ones((2, 2), np.float32), "either", None),
        ("[3, 5]", np.ones((3, 5), np.float32), "either", None),
        ("[100, 1000]", np.zeros((100, 1000), np.float32), "either", None),
        ("[2, 3, N]", np.zeros((2, 3, 100), np.float32), "error", None),
        ("[0]", np.zeros(0, np.float32), "error", None),
        ("[0, 2]", np.zeros((0, 2), np.float32), "error", None),
        ("[2, 0]", np.zeros((2, 0), np.float32), "error", None),
        ("scalar", np.float32(0.5), "error", None),
        ("NaN", np.r_[x, np.nan].astype(np.float32), "error", None),
        ("inf", np.r_[x, np.inf].astype(np.float32), "error", None),
        ("float64 1e300", np.r_[x.astype(np.float64), 1e300], "either", None),
        ("float16", x.astype(np.float16), "ok", wave_check(x.size)),
        ("int16", (x * 32767).astype(np.int16), "ok", wave_check(x.size)),
        ("uint8", (x * 127 + 128).astype(np.uint8), "ok", wave_check(x.size)),
        ("int64", (x * 2**62).astype(np.int64), "ok", wave_check(x.size)),
        ("bool", x > 0, "error", None),
        ("complex", x.astype(np.complex64), "error", None),
        ("object", np.array([0.1, "a"], object), "error", None),
        ("strings", np.array(["a", "b"]), "error", None),
        ("list of floats", x.tolist(), "ok", wave_check(x.size)),
        ("nested ragged list", [[0.1, 0.2], [0.3]], "error", None),
        ("None", None, "error", None),
        ("dict", {"a": 1}, "error", None),
    ]:
        add(area, f"load_audio {name}", lambda a=arr: A.load_audio(a), expect, check)
    for orig in (0, -1, 1, 999, 1000, 8000, 44100, 767999, 768000, 768001, 2**31 - 1, 1.5,
                 "16000", True, np.int64(8000), float("nan")):
        valid = isinstance(orig, (int, np.integer)) and not isinstance(orig, bool) and \
            8000 <= orig <= 768000
        n_out = -(-x.size * 16000 // int(orig)) if valid else None
        add(area, f"load_audio orig_sr={orig!r}", lambda o=orig: A.load_audio(x, orig_sr=o),
            "ok" if valid else ("error" if not isinstance(orig, (int, np.integer))
                                or isinstance(orig, bool) or orig < 1000 or orig > 768000
                                else "either"),
            wave_check(n_out, limit=16 * x.size))
    for sr in (0, -16000, 1, 8000, 48000, 2**31 - 1, 16000.0):
        valid = isinstance(sr, int) and 8000 <= sr <= 768000
        add(area, f"load_audio sr={sr!r}", lambda s=sr: A.load_audio(x, sr=s),
            "ok" if valid else "error", wave_check(limit=16 * x.size))
    for kw, expect in [
        (dict(n_mels=0), "error"), (dict(n_mels=-1), "error"), (dict(n_mels=80), "ok"),
        (dict(n_mels=128), "ok"), (dict(n_mels=10**6), "error"), (dict(n_mels=2.5), "error"),
        (dict(n_samples=0), "error"), (dict(n_samples=10**12), "error"),
        (dict(n_samples=-5), "error"), (dict(n_samples=160), "either"),
        (dict(chunk_frames=0), "error"), (dict(chunk_frames=-1), "error"),
        (dict(chunk_frames=10**12), "either"), (dict(chunk_frames=1.5), "error"),
        (dict(dynamic_range=float("nan")), "error"), (dict(dynamic_range=float("inf")), "error"),
        (dict(dynamic_range=0), "error"), (dict(pad_mode="wrap"), "error"),
        (dict(pad_mode=None), "error"),
    ]:
        def mel_check(m, kw=kw):
            m = np.asarray(m)
            return None if m.ndim == 2 and np.all(np.isfinite(m)) else f"bad log-mel {m.shape}"
        add(area, f"log_mel_spectrogram {kw}", lambda kw=kw: A.log_mel_spectrogram(x, **kw),
            expect, mel_check)

    # Whisper's transcribe: the audio and the prompt arguments (the tiny fixture checkpoint)
    wmodel = whisper.from_pretrained(fixtures / "whisper" / "tiny")
    speech = fixtures / "whisper" / "speech.wav"
    for kw, expect in [(dict(language=5), "error"), (dict(language=["en"]), "error"),
                       (dict(language="klingon"), "error"), (dict(task="summarise"), "error"),
                       (dict(task=3), "error"), (dict(language="en"), "either")]:
        add(area, f"transcribe {kw}",
            lambda kw=kw: wmodel.transcribe(speech, progress=False, **kw).text, expect,
            lambda t: None if isinstance(t, str) else f"text is {type(t).__name__}")
    add(area, "transcribe a [2, N] array",
        lambda: wmodel.transcribe(np.stack([x, x]), progress=False, language="en").text,
        "either", lambda t: None if isinstance(t, str) else "no text")

    # =========================================================================================
    # image files
    # =========================================================================================
    area = "image files"

    def img_cases(name, path, expect="either", level=None, shape=None, sam_expect=None):
        add(area, f"clip {name}", lambda p=path: clip.preprocess(p), expect, clip_check(level))
        add(area, f"sam {name}", lambda p=path: sam.preprocess(p), sam_expect or expect,
            sam_check(level, shape))

    for w, h, expect, sam_expect in [
            (1, 1, "ok", "ok"), (1, 100000, "either", "either"), (100000, 1, "either", "either"),
            (3000, 1, "either", "ok"), (1, 3000, "either", "ok"), (3000, 2, "either", "ok"),
            (8000, 6, "either", "ok"), (500, 500, "ok", "ok"), (7, 3, "ok", "ok"),
            (0, 10, "error", "error"), (10, 0, "error", "error"), (2**31, 1, "error", "error"),
            (20000, 20000, "error", "error"), (50000, 50000, "error", "error"),
            (2**31 - 1, 2**31 - 1, "error", "error"), (12000, 12000, "either", "either")]:
        p = write(f"size_{w}x{h}.png", png_bytes(w, h))
        img_cases(f"png {w}x{h} ({p.stat().st_size} bytes)", p, expect, 0, (h, w), sam_expect)
    for bd, ct in [(1, 0), (2, 0), (4, 0), (8, 0), (16, 0), (8, 2), (16, 2), (1, 3), (8, 3),
                   (8, 4), (16, 4), (8, 6), (16, 6), (3, 0), (16, 3), (8, 1), (8, 5), (32, 0)]:
        valid = (bd, ct) in ((1, 0), (2, 0), (4, 0), (8, 0), (16, 0), (8, 2), (16, 2), (1, 3),
                             (8, 3), (8, 4), (16, 4), (8, 6), (16, 6))
        p = write(f"depth_{bd}_{ct}.png", png_bytes(9, 7, bd, ct))
        lvl = None if ct in (3, 4, 6) else 0           # palette / alpha: other colours
        img_cases(f"png {bd}-bit colour type {ct}", p, "ok" if valid else "error", lvl, (7, 9))
    g = np.full((6, 10), 0x4000, np.uint16)              # 16384 / 257 = 63.75 -> level 64
    img_cases("png 16-bit grey 0x4000", write("g16.png", png16(g)), "ok", 64, (6, 10))
    img_cases("png 16-bit grey 0xFFFF", write("g16max.png", png16(g * 0 + 0xFFFF)), "ok", 255)
    img_cases("png 16-bit grey 0x0101", write("g16one.png", png16(g * 0 + 0x0101)), "ok", 1)
    img_cases("png 16-bit RGB 0x4000", write("rgb16.png", png16(np.stack([g] * 3, -1))), "ok",
              64)
    trans = np.stack([g, g * 0], -1)                     # 16-bit grey, fully transparent
    img_cases("png 16-bit grey+alpha transparent", write("ga16.png", png16(trans)), "ok", 255)
    p = write("interlaced.png", png_bytes(33, 17, 8, 2, interlace=1))
    img_cases("png interlaced", p, "ok", 0)
    p = write("interlace_bad.png", png_bytes(33, 17, 8, 2, interlace=7))
    img_cases("png interlace method 7", p, "error")
    base = png_bytes(40, 30, 8, 2, rows=bytes(rng.integers(0, 256, 30 * 121, dtype=np.uint8)))
    for cut in (0, 8, 16, 33, 50, len(base) // 2, len(base) - 12, len(base) - 1):
        p = write(f"png_cut_{cut}.png", base[:cut])
        img_cases(f"png truncated to {cut} bytes", p, "either" if cut >= len(base) - 12
                  else "error")
    bad_crc = bytearray(base)
    bad_crc[29] ^= 0xFF
    img_cases("png bad IHDR CRC", write("badcrc.png", bytes(bad_crc)), "error")
    img_cases("png with trailing junk", write("trail.png", base + b"junk" * 100), "either")
    for i in range(12):                                   # random mutations of the header bytes
        data = bytearray(base)
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(8, 33))] = int(rng.integers(0, 256))
        img_cases(f"png header mutation {i}", write(f"pmut_{i}.png", bytes(data)))
    for name, mode, fmt, fill in [("jpeg L", "L", "JPEG", 64), ("jpeg RGB", "RGB", "JPEG", None),
                                  ("jpeg CMYK", "CMYK", "JPEG", None), ("gif P", "P", "GIF", None),
                                  ("bmp RGB", "RGB", "BMP", None),
                                  ("tiff I;16", "I;16", "TIFF", None),
                                  ("tiff F", "F", "TIFF", None), ("tiff I", "I", "TIFF", None),
                                  ("tiff RGBA", "RGBA", "TIFF", None),
                                  ("webp RGB", "RGB", "WEBP", None),
                                  ("ppm RGB", "RGB", "PPM", None), ("ico RGBA", "RGBA", "ICO",
                                                                    None)]:
        im = Image.new(mode, (16, 12))
        buf = io.BytesIO()
        try:
            im.save(buf, fmt)
        except (OSError, KeyError, ValueError):
            continue
        img_cases(name, write(f"fmt_{name.replace(' ', '_').replace(';', '')}", buf.getvalue()),
                  "either")
    pgm16 = b"P5 10 6 65535\n" + np.full(60, 0x4000, ">u2").tobytes()
    img_cases("pgm 16-bit 0x4000", write("g16.pgm", pgm16), "ok", 64)
    img_cases("empty file", write("empty.png", b""), "error")
    img_cases("text file", write("text.png", b"not an image\n" * 10), "error")
    img_cases("wav as image", write("audio.png", good), "error")
    img_cases("directory", tmp, "error")
    img_cases("missing file", tmp / "missing.png", "error")
    ro = write("ro.png", png_bytes(4, 4))
    os.chmod(ro, 0)
    img_cases("unreadable file (mode 000)", ro, "either" if os.geteuid() == 0 else "error")

    # =========================================================================================
    # image objects (PIL images, arrays) and preprocessing arguments
    # =========================================================================================
    area = "image objects"
    for mode, px, level in [("1", 1, 255), ("L", 64, 64), ("LA", (64, 255), 64),
                            ("LA", (64, 0), 255), ("La", (64, 255), None), ("P", 64, None),
                            ("PA", (0, 0), 255), ("RGB", (64, 64, 64), 64),
                            ("RGBA", (64, 64, 64, 0), 255), ("RGBa", (64, 64, 64, 255), 64),
                            ("RGBX", (64, 64, 64, 0), 64), ("CMYK", (0, 0, 0, 191), 64),
                            ("YCbCr", (64, 128, 128), 64), ("LAB", (128, 128, 128), None),
                            ("HSV", (0, 0, 64), 64), ("I", 0x4000, 64), ("I", 70000, None),
                            ("I", -5, None), ("I;16", 0x4000, 64), ("I;16B", 0x4000, 64),
                            ("I;16L", 0x4000, 64), ("I;16N", 0x4000, 64), ("F", 0.5, None),
                            ("F", 64.0, None)]:
        im = Image.new(mode, (12, 8), px)
        expect = "ok" if level is not None else "either"
        add(area, f"clip PIL {mode} {px}", lambda im=im: clip.preprocess(im), expect,
            clip_check(level))
        add(area, f"sam PIL {mode} {px}", lambda im=im: sam.preprocess(im), expect,
            sam_check(level, (8, 12)))
    u8 = np.full((8, 12, 3), 64, np.uint8)
    for name, arr, expect, level in [
            ("uint8 [h, w, 3]", u8, "ok", 64), ("uint8 [h, w]", u8[..., 0], "ok", 64),
            ("uint8 [h, w, 1]", u8[..., :1], "ok", 64),
            ("uint8 [h, w, 4] opaque", np.dstack([u8, u8[..., :1] * 0 + 255]), "ok", 64),
            ("uint8 [h, w, 4] transparent", np.dstack([u8, u8[..., :1] * 0]), "ok", 255),
            ("uint8 [h, w, 2]", u8[..., :2], "error", None),
            ("uint8 [h, w, 5]", np.dstack([u8, u8[..., :2]]), "error", None),
            ("uint16 [h, w, 3] 0x4000", (u8.astype(np.uint16) * 0 + 0x4000), "either", 64),
            ("float32 [h, w, 3]", u8.astype(np.float32), "error", None),
            ("float64 [h, w, 3] 0..1", u8 / 255.0, "error", None),
            ("bool [h, w]", u8[..., 0] > 0, "error", None),
            ("int64 [h, w, 3]", u8.astype(np.int64), "error", None),
            ("[0, w, 3]", u8[:0], "error", None), ("[h, 0, 3]", u8[:, :0], "error", None),
            ("[3, h, w]", np.zeros((3, 8, 12), np.uint8), "error", None),
            ("4-D", u8[None], "error", None), ("1-D", u8.ravel(), "error", None),
            ("[1, 100000, 3]", np.zeros((1, 100000, 3), np.uint8), "either", None),
            ("[100000, 1, 3]", np.zeros((100000, 1, 3), np.uint8), "either", None),
            ("[1, 3000, 3]", np.zeros((1, 3000, 3), np.uint8), "either", None),
            ("list", [[1, 2], [3, 4]], "either", None), ("None", None, "error", None),
            ("bytes", b"\x89PNG", "error", None), ("int", 5, "error", None)]:
        add(area, f"clip array {name}", lambda a=arr: clip.preprocess(a), expect,
            clip_check(level))
        sam_exp = "ok" if name in ("[1, 3000, 3]",) else expect
        add(area, f"sam array {name}", lambda a=arr: sam.preprocess(a), sam_exp,
            sam_check(level))
    for kw, expect in [(dict(size=0), "error"), (dict(size=-1), "error"),
                       (dict(size=10**6), "error"), (dict(size=2.5), "error"),
                       (dict(size=True), "error"), (dict(size=16, crop_size=32), "error"),
                       (dict(size=16, crop_size=0), "error"), (dict(mean=(0.5,)), "error"),
                       (dict(std=(0, 0, 0)), "error"), (dict(std=(float("nan"),) * 3), "error"),
                       (dict(mean="abc"), "error"), (dict(size=3000), "either"),
                       (dict(size=1), "either")]:
        size = kw.get("size", 224) if isinstance(kw.get("size", 224), int) else 224
        crop = kw.get("crop_size", size)

        def check(out, size=size, crop=crop):
            out = np.asarray(out)
            ok = out.shape == (1, 3, crop, crop) and np.all(np.isfinite(out))
            return None if ok else f"shape {out.shape} or non-finite"
        add(area, f"clip preprocess {kw}", lambda kw=kw: clip.preprocess(u8, **kw), expect, check)
    for size, expect in [(0, "error"), (-1, "error"), (10**6, "error"), (2.5, "error"),
                         (64, "ok")]:
        def check(out, size=size):
            return None if np.asarray(out[0]).shape == (1, 3, size, size) else "shape"
        add(area, f"sam preprocess image_size={size}",
            lambda s=size: sam.preprocess(u8, image_size=s), expect, check)

    # =========================================================================================
    # tokenizers
    # =========================================================================================
    area = "tokenizers"
    real = (fixtures / "clip" / "tokenizer.json").read_bytes()
    real_cfg = (fixtures / "clip" / "tokenizer_config.json").read_bytes()

    def tok_dir(name, tok: bytes | None, cfg: bytes | None = None) -> Path:
        d = tmp / f"tok_{name}"
        d.mkdir()
        if tok is not None:
            (d / "tokenizer.json").write_bytes(tok)
        if cfg is not None:
            (d / "tokenizer_config.json").write_bytes(cfg)
        return d

    def tok_check(t):
        ids = clip.tokenize(["a photo of a cat"], t)
        return None if ids.shape == (1, 77) else f"ids {ids.shape}"

    for name, data, expect in [
            ("empty", b"", "error"), ("open brace", b"{", "error"), ("list", b"[]", "error"),
            ("empty object", b"{}", "error"), ("null", b"null", "error"),
            ("number", b"5", "error"), ("binary junk", bytes(rng.integers(0, 256, 300,
                                                                         dtype=np.uint8)),
                                                   "error"),
            ("invalid utf-8", b'{"model": "\xff\xfe"}', "error"),
            ("model is a number", b'{"model": 1}', "error"),
            ("BPE without vocab", b'{"model": {"type": "BPE"}}', "error"),
            ("BPE without endoftext",
             b'{"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}',
             "error"),
            ("huge id", b'{"version": "1.0", "model": {"type": "BPE", "vocab": '
             b'{"<|endoftext|>": 18446744073709551615}, "merges": []}}', "error"),
            ("negative id", b'{"version": "1.0", "model": {"type": "BPE", "vocab": '
             b'{"<|endoftext|>": -1}, "merges": []}}', "error"),
            ("deep nesting", b"[" * 100000 + b"]" * 100000, "error"),
            ("truncated 10%", real[:len(real) // 10], "error"),
            ("truncated 50%", real[:len(real) // 2], "error"),
            ("truncated last byte", real[:-1], "either"),
            ("utf-16", real.decode().encode("utf-16"), "error"),
            ("real", real, "ok")]:
        d = tok_dir(name.replace(" ", "_").replace("%", ""), data)
        add(area, f"tokenizer.json {name}", lambda d=d: clip.load_tokenizer(d), expect, tok_check)
    for i in range(10):                                   # random byte flips in the real file
        data = bytearray(real)
        for _ in range(int(rng.integers(1, 6))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        d = tok_dir(f"flip_{i}", bytes(data))
        add(area, f"tokenizer.json byte flips {i}", lambda d=d: clip.load_tokenizer(d), "either",
            tok_check)
    for name, cfg, expect in [("corrupt", b"{", "error"), ("a list", b"[]", "error"),
                              ("pad token a number", b'{"pad_token": 5}', "either"),
                              ("pad content a number", b'{"pad_token": {"content": 5}}', "either"),
                              ("pad token unknown", b'{"pad_token": "zzzz"}', "either"),
                              ("invalid utf-8", b'{"pad_token": "\xff"}', "error"),
                              ("real", real_cfg, "ok")]:
        d = tok_dir("cfg_" + name.replace(" ", "_"), real, cfg)
        add(area, f"tokenizer_config.json {name}", lambda d=d: clip.load_tokenizer(d), expect,
            tok_check)
    d = tok_dir("dir_as_file", None)
    (d / "tokenizer.json").mkdir()
    add(area, "tokenizer.json is a directory", lambda d=d: clip.load_tokenizer(d), "error")
    add(area, "tokenizer directory missing", lambda: clip.load_tokenizer(tmp / "nope"), "error")
    add(area, "tokenizer path None", lambda: clip.load_tokenizer(None), "error")
    add(area, "tokenizer path is an image", lambda: clip.load_tokenizer(tmp / "g16.png"), "error")

    # =========================================================================================
    # prompts: CLIP texts, SAM points / boxes / labels / masks
    # =========================================================================================
    area = "prompts"
    tok = clip.load_tokenizer(fixtures / "clip")

    def ids_check(T=77):
        def check(ids):
            ids = np.asarray(ids)
            return None if ids.ndim == 2 and ids.shape[1] == T and ids.dtype == np.int64 else \
                f"ids {ids.dtype} {ids.shape}"
        return check

    for name, texts, kw, expect, T in [
            ("a string", "a cat", {}, "ok", 77), ("a list", ["a cat", "a dog"], {}, "ok", 77),
            ("None", None, {}, "error", 77), ("empty list", [], {}, "error", 77),
            ("[None]", [None], {}, "error", 77), ("[1]", [1], {}, "error", 77),
            ("bytes", b"a cat", {}, "error", 77), ("10k words", "cat " * 10000, {}, "error", 77),
            ("10k words truncated", "cat " * 10000, dict(truncate=True), "ok", 77),
            ("lone surrogate", "a \ud800 cat", {}, "either", 77),
            ("NUL", "a\x00cat", {}, "either", 77), ("emoji", "🐱" * 20, {}, "either", 77),
            ("context 0", "a", dict(context_length=0), "error", 0),
            ("context 1", "a", dict(context_length=1), "error", 1),
            ("context 10**9", "a", dict(context_length=10**9), "error", 10**9),
            ("context -1", "a", dict(context_length=-1), "error", -1),
            ("context 1.5", "a", dict(context_length=1.5), "error", 1),
            ("context True", "a", dict(context_length=True), "error", 1),
            ("padding x", "a", dict(padding="x"), "error", 77),
            ("padding longest", "a cat", dict(padding="longest"), "ok", 4)]:
        add(area, f"clip tokenize {name}", lambda t=texts, kw=kw: clip.tokenize(t, tok, **kw),
            expect, ids_check(T))
    smodel = sam.from_preset("sam-tiny", seed=0)
    pred = sam.SamPredictor(smodel)
    pred.set_image(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))

    def mask_check(out):
        masks, scores, low = out
        masks, scores = np.asarray(masks), np.asarray(scores)
        if masks.ndim != 3 or masks.shape[1:] != (40, 60):
            return f"masks {masks.shape}"
        return None if np.all(np.isfinite(scores)) else "non-finite scores"

    nan, inf = float("nan"), float("inf")
    for name, kw, expect in [
            ("point", dict(points=[[10, 20]]), "ok"),
            ("point and box", dict(points=[[10, 20]], box=[0, 0, 30, 30]), "ok"),
            ("box", dict(box=[5, 5, 50, 35]), "ok"),
            ("inverted box", dict(box=[50, 35, 5, 5]), "either"),
            ("point outside the image", dict(points=[[-100, 1e4]]), "either"),
            ("point 1e30", dict(points=[[1e30, 1e30]]), "either"),
            ("point NaN", dict(points=[[nan, 3]]), "error"),
            ("point inf", dict(points=[[inf, 3]]), "error"),
            ("box NaN", dict(box=[0, 0, nan, 3]), "error"),
            ("box -inf", dict(box=[-inf, 0, 3, 3]), "error"),
            ("points [2]", dict(points=[10, 20]), "error"),
            ("points [1, 3]", dict(points=[[1, 2, 3]]), "error"),
            ("points [0, 2]", dict(points=np.zeros((0, 2))), "either"),
            ("points strings", dict(points=[["a", "b"]]), "error"),
            ("points ragged", dict(points=[[1, 2], [3]]), "error"),
            ("points None with labels", dict(labels=[1]), "error"),
            ("labels 2", dict(points=[[1, 2]], labels=[2]), "error"),
            ("labels -10", dict(points=[[1, 2]], labels=[-10]), "either"),
            ("labels 0.5", dict(points=[[1, 2]], labels=[0.5]), "error"),
            ("labels strings", dict(points=[[1, 2]], labels=["a"]), "error"),
            ("labels too many", dict(points=[[1, 2]], labels=[1, 1]), "error"),
            ("labels 2-D", dict(points=[[1, 2]], labels=[[1]]), "error"),
            ("box [2, 4]", dict(box=[[0, 0, 1, 1], [0, 0, 2, 2]]), "error"),
            ("box [3]", dict(box=[0, 0, 1]), "error"),
            ("box strings", dict(box=["a"] * 4), "error"),
            ("mask_input wrong size", dict(mask_input=np.zeros((1, 8, 8))), "error"),
            ("mask_input NaN", dict(mask_input=np.full((1, 32, 32), nan)), "error"),
            ("mask_input right", dict(mask_input=np.zeros((1, 32, 32))), "ok"),
            ("nothing", dict(), "error"),
            ("10000 points", dict(points=np.zeros((10000, 2))), "either")]:
        add(area, f"sam predict {name}", lambda kw=kw: pred.predict(**kw), expect, mask_check)
    add(area, "sam predict before set_image",
        lambda: sam.SamPredictor(smodel).predict(points=[[1, 2]]), "error")
    add(area, "sam set_image 1x3000 then predict",
        lambda: _sam_thin(sam, smodel, np), "ok",
        lambda out: None if np.asarray(out[0]).shape[1:] == (1, 3000) else "mask shape")
    return cases


def _sam_thin(sam, model, np):
    p = sam.SamPredictor(model)
    p.set_image(np.zeros((1, 3000, 3), np.uint8))
    return p.predict(points=[[1500, 0]])


# ---------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=HERE.parents[2],
                    help="the checkout to test (default: this one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per case")
    ap.add_argument("--mem-gib", type=float, default=2.0,
                    help="address space a case may add to the parent's")
    ap.add_argument("--rss-mib", type=float, default=768.0,
                    help="peak resident memory a case may add to the parent's")
    ap.add_argument("-k", default="", help="only cases whose area or name contains this")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("-a", "--all", action="store_true", help="list every case and its outcome")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    sys.path.insert(0, str(root))
    import warnings
    warnings.simplefilter("ignore")
    project_dirs = (str(root / "pyworkloads") + os.sep,)
    tmp = Path(tempfile.mkdtemp(prefix="hostile-media-"))
    try:
        t0 = time.perf_counter()
        cases = [c for c in build_cases(tmp, args.seed, root)
                 if args.k in c.name or args.k in c.area]
        import pyworkloads
        if not os.path.realpath(pyworkloads.__file__).startswith(str(root)):
            raise SystemExit(f"imported {pyworkloads.__file__}, not the checkout {root}")
        for c in cases:
            run_case(c, args.timeout, int(args.mem_gib * 2**30), int(args.rss_mib * 2**20),
                     project_dirs, str(tmp))
        print_table(cases, f"media campaign on {root} (seed {args.seed}, "
                    f"{time.perf_counter() - t0:.0f} s)")
        if args.verbose or args.all:
            for c in cases:
                if args.all or c.outcome not in ("ok", "clear error"):
                    print(f"  [{c.outcome}] {c.area}: {c.name} (expects {c.expect}; "
                          f"{c.seconds:.1f} s)  {c.detail}")
    finally:
        for p in tmp.iterdir():
            if p.is_file():
                os.chmod(p, 0o600)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def print_table(cases, title):
    """The counts per area and in total, one row each."""
    areas = list(dict.fromkeys(c.area for c in cases))
    w = max(len(a) for a in areas + ["total"])
    head = f"{'area':<{w}} {'tried':>6} " + " ".join(f"{o:>{max(len(o), 5)}}" for o in OUTCOMES)
    print(title)
    print(head)
    print("-" * len(head))
    for a in areas + ["total"]:
        sel = [c for c in cases if a in ("total", c.area)]
        print(f"{a:<{w}} {len(sel):>6} " + " ".join(
            f"{sum(c.outcome == o for c in sel):>{max(len(o), 5)}}" for o in OUTCOMES))


if __name__ == "__main__":
    sys.exit(main())
