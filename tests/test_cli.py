"""The pyworkloads command line (run in-process through cli.main)."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import pyworkloads as pw
from pyworkloads import cli


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("info", "demo", "run", "profile"):
        assert cmd in out


def test_info_lists_backends(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "numpy  available" in out
    for b in ("cpp", "cuda"):
        assert b in out
    if "cuda" not in pw.available():
        assert "cuda   unavailable" in out


def test_demo_runs_every_model_on_every_backend(capsys):
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    for model in cli._model_modules():
        for backend in pw.available():
            assert any(line.split()[:2] == [model, backend]
                       for line in out.splitlines()), (model, backend, out)


def test_unavailable_backend_and_unknown_model_are_clean_errors(capsys):
    missing = [b for b in ("cpp", "cuda") if b not in pw.available()]
    if missing:
        assert cli.main(["demo", "--backends", missing[0]]) == 2
        assert f"backend '{missing[0]}' unavailable" in capsys.readouterr().err
    assert cli.main(["demo", "--models", "gpt5"]) == 2
    assert "unknown model 'gpt5'" in capsys.readouterr().err


def test_bad_thread_count(capsys):
    assert cli.main(["--threads", "0", "info"]) == 2
    assert "positive integer" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# user errors through the real command, one process each: one "error:" line, no traceback
# ---------------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"


def _run(argv, debug=False, timeout=120):
    env = {k: v for k, v in os.environ.items() if k != "PYWORKLOADS_DEBUG"}
    env["PYTHONPATH"] = str(ROOT)
    if debug:
        env["PYWORKLOADS_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-m", "pyworkloads.cli", *map(str, argv)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """Broken files and checkpoints the cases below point at."""
    import shutil

    from PIL import Image
    d = tmp_path_factory.mktemp("bad")
    photo = d / "photo.png"
    Image.fromarray(np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3)).save(photo)
    raw = photo.read_bytes()
    (d / "truncated.png").write_bytes(raw[:len(raw) // 2])
    (d / "junk.jpg").write_bytes(bytes(range(256)) * 4)
    (d / "text.txt").write_text("not an image or a sound\n")
    (d / "a_dir").mkdir()
    # a 30000 x 30000 greyscale PNG in ~1 KB: its header alone trips the pixel limit
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    (d / "bomb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 30001 * 4)) + _png_chunk(b"IEND", b""))
    # a 32 KB WAV whose header claims 1 Hz
    data = bytes(32000)
    fmt = struct.pack("<HHIIHH", 1, 1, 1, 2, 2, 16)
    body = b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data))
    (d / "1hz.wav").write_bytes(b"RIFF" + struct.pack("<I", len(body) + len(data)) + body + data)
    for name, src in (("clip", FIX / "clip"), ("llama2", FIX / "llama2"),
                      ("whisper", FIX / "whisper" / "tiny")):
        shutil.copytree(src, d / f"{name}_badtok")
        (d / f"{name}_badtok" / "tokenizer.json").write_bytes(b'{"model": ')
    shutil.copytree(FIX / "clip", d / "clip_badcfg")
    (d / "clip_badcfg" / "tokenizer_config.json").write_text("[]")
    return d


def _png_chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _clip(d, *images, model=None, labels="a cat,a dog", extra=()):
    return ["run", "clip", "--model", model or FIX / "clip", "--image",
            *[d / i for i in images], "--labels", labels, *extra]


def _sam(d, image, extra=("--point", "5,6")):
    return ["run", "sam", "--preset", "sam-tiny", "--image", d / image, "--out",
            d / "mask.png", *extra]


def _whisper(d, audio, model=None):
    return ["run", "whisper", "--model", model or FIX / "whisper" / "tiny", audio, "--no-progress"]


USER_ERRORS = {
    "clip: corrupt tokenizer.json": (lambda d: _clip(d, "photo.png", model=d / "clip_badtok"),
                                     "tokenizer.json"),
    "clip: tokenizer_config.json a list": (
        lambda d: _clip(d, "photo.png", model=d / "clip_badcfg"), "tokenizer_config.json"),
    "clip: truncated image": (lambda d: _clip(d, "truncated.png"), "truncated.png"),
    "clip: random bytes as image": (lambda d: _clip(d, "junk.jpg"), "junk.jpg"),
    "clip: text file as image": (lambda d: _clip(d, "text.txt"), "text.txt"),
    "clip: decompression bomb": (lambda d: _clip(d, "bomb.png"), "decompression bomb"),
    "clip: directory as image": (lambda d: _clip(d, "a_dir"), "is a directory"),
    "clip: missing image": (lambda d: _clip(d, "nope.png"), "no such file"),
    "clip: image as checkpoint": (lambda d: _clip(d, "photo.png", model=d / "photo.png"),
                                  "error"),
    "clip: no labels": (lambda d: _clip(d, "photo.png", labels=" , "), "--labels"),
    "clip: template of two slots": (
        lambda d: _clip(d, "photo.png", extra=("--template", "{}{}")), "--template"),
    "clip: template without a slot": (
        lambda d: _clip(d, "photo.png", extra=("--template", "a photo")), "--template"),
    "sam: truncated image": (lambda d: _sam(d, "truncated.png"), "truncated.png"),
    "sam: decompression bomb": (lambda d: _sam(d, "bomb.png"), "limit"),
    "sam: directory as image": (lambda d: _sam(d, "a_dir"), "is a directory"),
    "sam: --out a directory": (
        lambda d: _sam(d, "photo.png", ("--point", "5,6", "--out", d / "a_dir")),
        "is a directory"),
    "sam: --point nan": (lambda d: _sam(d, "photo.png", ("--point", "nan,3")), "NaN"),
    "sam: --point of one number": (lambda d: _sam(d, "photo.png", ("--point", "3")), "--point"),
    "whisper: 32 KB WAV claiming 1 Hz": (lambda d: _whisper(d, d / "1hz.wav"), "1 Hz"),
    "whisper: directory as audio": (lambda d: _whisper(d, d / "a_dir"), "is a directory"),
    "whisper: image as audio": (lambda d: _whisper(d, d / "photo.png"), "cannot read audio"),
    "whisper: corrupt tokenizer.json": (
        lambda d: _whisper(d, FIX / "whisper" / "speech.wav", d / "whisper_badtok"),
        "not a valid tokenizer file"),
    "llama2: corrupt tokenizer.json": (
        lambda d: ["run", "llama2", "--model", d / "llama2_badtok"], "not a valid tokenizer file"),
    "llama2: missing checkpoint": (lambda d: ["run", "llama2", "--model", d / "nope"], "nope"),
}


@pytest.mark.parametrize("case", list(USER_ERRORS))
def test_user_errors_are_one_line_without_traceback(bad_inputs, case):
    argv, words = USER_ERRORS[case]
    p = _run(argv(bad_inputs))
    assert p.returncode != 0, p.stdout
    assert "Traceback" not in p.stdout + p.stderr, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if "error: " in ln]
    assert errors and words in errors[-1], p.stderr


def test_debug_variable_shows_the_traceback(bad_inputs):
    argv, _ = USER_ERRORS["clip: truncated image"]
    p = _run(argv(bad_inputs), debug=True)
    assert p.returncode != 0 and "Traceback" in p.stderr and "truncated.png" in p.stderr


def test_keyboard_interrupt_is_quiet(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "cmd_info", interrupted)
    assert cli.main(["info"]) == 130
    assert capsys.readouterr().err.strip() == "pyworkloads: interrupted"
