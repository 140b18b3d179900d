"""Hostile command lines for ``pyworkloads`` and ``costmodel``: about 90 invocations, each a real
process (``python -m pyworkloads.cli ...``) under a time limit and an address-space limit, each
outcome classified.

    python dev/hostile/cli.py                    # this checkout
    python dev/hostile/cli.py --root DIR         # another checkout (e.g. an export of main)
    python dev/hostile/cli.py -v                 # also list every case that is not ok / clear
    python dev/hostile/cli.py -k sam             # only the cases whose name contains "sam"

Outcomes:
  ok               exit status 0 and the expected output, for a valid command line
  clear error      a non-zero exit status, an ``error: ...`` line on stderr and no traceback
  wrong            exit status 0 for a command line that must fail, a valid command line that
                   fails, or a failure with no ``error:`` line on stderr
  crash            a traceback, or a signal
  hang             still running at the time limit (--timeout)
  over-allocation  MemoryError, "Unable to allocate" or a failed allocation in the output
                   (the process runs under RLIMIT_AS = --mem-gib)

The inputs (images, audio, broken checkpoints and device files) come from --seed and the test
fixtures of the checkout; PYWORKLOADS_DEBUG is unset in the children.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
from media import png16, png_bytes, print_table, wav_bytes  # noqa: E402

OUTCOMES = ("ok", "clear error", "wrong", "crash", "hang", "over-allocation")
MEMORY_WORDS = ("MemoryError", "Unable to allocate", "memory allocation of", "bad_alloc")


@dataclass
class Case:
    area: str
    name: str
    argv: list
    expect: str = "either"           # "ok" | "error" | "either"
    want: str = ""                   # text stdout must contain for "ok"
    outcome: str = ""
    detail: str = ""
    seconds: float = 0.0


def classify(case: Case, rc: int | None, out: str, err: str) -> None:
    text = out + err
    if rc is None:
        case.outcome, case.detail = "hang", "timed out"
    elif any(w in text for w in MEMORY_WORDS):
        case.outcome, case.detail = "over-allocation", _last(err or out)
    elif "Traceback" in text:
        case.outcome, case.detail = "crash", _last(err)
    elif rc < 0:
        case.outcome, case.detail = "crash", f"signal {-rc}"
    elif rc == 0:
        if case.expect == "error":
            case.outcome, case.detail = "wrong", f"exit 0; must fail ({_last(out)})"
        elif case.want and case.want not in out:
            case.outcome, case.detail = "wrong", f"output lacks {case.want!r}: {_last(out)}"
        else:
            case.outcome = "ok"
    elif not any("error:" in ln for ln in err.splitlines()):
        case.outcome, case.detail = "wrong", f"exit {rc} with no 'error:' on stderr: {_last(text)}"
    elif case.expect == "ok":
        case.outcome, case.detail = "wrong", f"a valid command line failed: {_last(err)}"
    else:
        case.outcome, case.detail = "clear error", _last(err)


def _last(s: str) -> str:
    lines = [ln for ln in s.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def run_case(case: Case, root: Path, timeout: float, mem_bytes: int) -> None:
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
    env = {k: v for k, v in os.environ.items() if k != "PYWORKLOADS_DEBUG"}
    env.update(PYTHONPATH=str(root), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    prog = "pyworkloads.cli" if case.area.startswith("pyworkloads") else "costmodel.cli"
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", prog, *map(str, case.argv)], cwd=root, env=env,
                           capture_output=True, timeout=timeout, preexec_fn=limit,
                           stdin=subprocess.DEVNULL)
        rc, out, err = p.returncode, p.stdout.decode(errors="replace"), \
            p.stderr.decode(errors="replace")
    except subprocess.TimeoutExpired:
        rc, out, err = None, "", ""
    case.seconds = time.perf_counter() - t0
    classify(case, rc, out, err)


def build_cases(tmp: Path, seed: int, root: Path) -> list[Case]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    fx = root / "tests" / "fixtures"
    cases: list[Case] = []

    def add(area, name, argv, expect="either", want=""):
        cases.append(Case(area, name, list(argv), expect, want))

    def write(name, data: bytes) -> Path:
        p = tmp / name
        p.write_bytes(data)
        return p

    def copy_ckpt(src: Path, name: str) -> Path:
        d = tmp / name
        shutil.copytree(src, d)
        return d

    # -- inputs --------------------------------------------------------------------------------
    photo = tmp / "photo.png"
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(photo)
    cmyk = tmp / "cmyk.jpg"
    Image.new("CMYK", (40, 30), (10, 200, 30, 0)).save(cmyk)
    g16 = write("g16.png", png16(np.full((20, 30), 0x4000, np.uint16)))
    thin = write("thin.png", png_bytes(100000, 1))            # the 1 x 100000 PNG
    thin_sam = write("thin3000.png", png_bytes(3000, 1))
    bomb = write("bomb.png", png_bytes(30000, 30000))
    raw = photo.read_bytes()
    trunc = write("truncated.png", raw[:len(raw) // 2])
    junk = write("junk.png", bytes(rng.integers(0, 256, 500, dtype=np.uint8)))
    text = write("notes.txt", b"just some text\n")
    empty = write("empty.png", b"")
    unread = write("unreadable.png", raw)
    os.chmod(unread, 0)
    speech = fx / "whisper" / "speech.wav"
    wav_1hz = write("1hz.wav", wav_bytes(rate=1, frames=16000))
    wav_huge = write("huge_rate.wav", wav_bytes(rate=2**31 - 1, frames=1600))
    wav_bad = write("bad.wav", b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    wav_nan = write("nan.wav", wav_bytes(fmt=3, bits=32,
                                         payload=np.full(1600, np.nan, "<f4").tobytes()))
    d_missing = tmp / "missing"
    some_dir = tmp / "a_directory"
    some_dir.mkdir()

    clip_ok = fx / "clip"
    clip_badtok = copy_ckpt(clip_ok, "clip_badtok")
    (clip_badtok / "tokenizer.json").write_bytes(b'{"model": ')
    clip_badcfg = copy_ckpt(clip_ok, "clip_badcfg")
    (clip_badcfg / "tokenizer_config.json").write_bytes(b"[1, 2")
    clip_listcfg = copy_ckpt(clip_ok, "clip_listcfg")
    (clip_listcfg / "tokenizer_config.json").write_bytes(b"[]")
    clip_tokdir = copy_ckpt(clip_ok, "clip_tokdir")
    (clip_tokdir / "tokenizer.json").unlink()
    (clip_tokdir / "tokenizer.json").mkdir()
    clip_badpre = copy_ckpt(clip_ok, "clip_badpre")
    (clip_badpre / "preprocessor_config.json").write_bytes(b"{")
    llama_ok = fx / "llama2"
    llama_badtok = copy_ckpt(llama_ok, "llama_badtok")
    (llama_badtok / "tokenizer.json").write_bytes(bytes(range(256)))
    whisper_ok = fx / "whisper" / "tiny"
    whisper_badtok = copy_ckpt(whisper_ok, "whisper_badtok")
    (whisper_badtok / "tokenizer.json").write_bytes(b"")
    sam_ok = fx / "sam"

    # -- pyworkloads: general ------------------------------------------------------------------
    area = "pyworkloads"
    add(area, "--help", ["--help"], "ok", "usage")
    add(area, "--version", ["--version"], "ok", "pyworkloads")
    add(area, "info", ["info"], "ok", "backends")
    add(area, "no command", [], "error")
    add(area, "unknown command", ["fly"], "error")
    add(area, "demo one model", ["demo", "--models", "llama2", "--backends", "numpy"], "ok",
        "llama2-tiny")
    add(area, "demo unknown model", ["demo", "--models", "gpt5"], "error")
    add(area, "demo unknown backend", ["demo", "--backends", "tpu"], "error")
    add(area, "demo empty model list", ["demo", "--models", ""], "either")
    add(area, "profile unknown model", ["profile", "gpt5"], "error")
    add(area, "profile --by x", ["profile", "llama2", "--by", "x"], "error")
    add(area, "profile llama2", ["profile", "llama2"], "ok", "llama2")
    add(area, "--threads 0", ["--threads", "0", "info"], "error")
    add(area, "--threads -3", ["--threads", "-3", "info"], "error")
    add(area, "--threads abc", ["--threads", "abc", "info"], "error")
    add(area, "--threads 100000 on cpp", ["--threads", "100000", "demo", "--models", "llama2",
                                          "--backends", "cpp"], "either")

    # -- run llama2 ----------------------------------------------------------------------------
    area = "pyworkloads llama2"
    base = ["run", "llama2", "--preset", "llama2-tiny", "--max-new-tokens", "3"]
    add(area, "preset", base + ["--prompt", "hi"], "ok", "generated")
    add(area, "checkpoint", ["run", "llama2", "--model", llama_ok, "--prompt", "hi",
                             "--max-new-tokens", "2"], "ok", "generated")
    add(area, "missing checkpoint", ["run", "llama2", "--model", d_missing], "error")
    add(area, "checkpoint is a file", ["run", "llama2", "--model", text], "error")
    add(area, "empty directory", ["run", "llama2", "--model", some_dir], "error")
    add(area, "corrupt tokenizer.json", ["run", "llama2", "--model", llama_badtok], "error")
    for opt, val, expect in [("--max-new-tokens", "-1", "error"),
                             ("--max-new-tokens", "abc", "error"),
                             ("--temperature", "nan", "error"), ("--temperature", "-1", "error"),
                             ("--top-k", "0", "error"), ("--top-p", "2", "error"),
                             ("--top-p", "nan", "error"), ("--seed", "-1", "error"),
                             ("--rope-layout", "spiral", "error"), ("--prompt", "", "either"),
                             ("--prompt", "x" * 5000, "either"), ("--preset", "gpt5", "error")]:
        argv = [a for a in base]
        if opt == "--max-new-tokens":
            argv = argv[:-2]
        add(area, f"{opt} {val[:20]!r}", argv + [opt, val], expect)
    add(area, "--chat --system", base + ["--chat", "--system", "be brief"], "ok", "generated")

    # -- run clip --------------------------------------------------------------------------------
    area = "pyworkloads clip"

    def clip_run(model=clip_ok, images=(photo,), labels="a cat,a dog", *extra):
        return ["run", "clip", "--model", model, "--image", *images, "--labels", labels, *extra]
    add(area, "photo", clip_run(), "ok", "a cat")
    add(area, "two images", clip_run(clip_ok, (photo, cmyk)), "ok", "a dog")
    add(area, "CMYK JPEG", clip_run(clip_ok, (cmyk,)), "ok", "a cat")
    add(area, "16-bit PNG", clip_run(clip_ok, (g16,)), "ok", "a cat")
    add(area, "1x100000 PNG", clip_run(clip_ok, (thin,)), "either")
    add(area, "decompression bomb", clip_run(clip_ok, (bomb,)), "error")
    add(area, "truncated image", clip_run(clip_ok, (trunc,)), "error")
    add(area, "random bytes", clip_run(clip_ok, (junk,)), "error")
    add(area, "text file", clip_run(clip_ok, (text,)), "error")
    add(area, "empty file", clip_run(clip_ok, (empty,)), "error")
    add(area, "unreadable image", clip_run(clip_ok, (unread,)),
        "either" if os.geteuid() == 0 else "error")
    add(area, "directory as image", clip_run(clip_ok, (some_dir,)), "error")
    add(area, "missing image", clip_run(clip_ok, (tmp / "nope.png",)), "error")
    add(area, "empty labels", clip_run(clip_ok, (photo,), ""), "error")
    add(area, "labels only commas", clip_run(clip_ok, (photo,), ",,"), "error")
    add(area, "template {}{}", clip_run(clip_ok, (photo,), "a,b", "--template", "{}{}"),
        "error")
    add(area, "template {x}", clip_run(clip_ok, (photo,), "a,b", "--template", "{x}"), "error")
    add(area, "template unbalanced", clip_run(clip_ok, (photo,), "a,b", "--template", "{"),
        "error")
    add(area, "template without {}", clip_run(clip_ok, (photo,), "a,b", "--template", "cat"),
        "either")
    add(area, "label of 5000 words", clip_run(clip_ok, (photo,), "cat " * 5000), "either")
    add(area, "corrupt tokenizer.json", clip_run(clip_badtok), "error")
    add(area, "corrupt tokenizer_config.json", clip_run(clip_badcfg), "error")
    add(area, "tokenizer_config.json a list", clip_run(clip_listcfg), "error")
    add(area, "tokenizer.json a directory", clip_run(clip_tokdir), "error")
    add(area, "corrupt preprocessor_config.json", clip_run(clip_badpre), "error")
    add(area, "missing checkpoint", clip_run(d_missing), "error")
    add(area, "checkpoint is an image", clip_run(photo), "error")

    # -- run sam ---------------------------------------------------------------------------------
    area = "pyworkloads sam"
    out_png = tmp / "mask.png"

    def sam_run(image=photo, *extra, model=("--preset", "sam-tiny")):
        return ["run", "sam", *model, "--image", image, *extra]
    pt = ["--point", "10,12", "--out", out_png]
    add(area, "point", sam_run(photo, *pt), "ok", "mask(s)")
    add(area, "checkpoint, box", sam_run(photo, "--box", "2,3,30,20", "--out", out_png,
                                         model=("--model", sam_ok)), "ok", "mask(s)")
    add(area, "16-bit PNG", sam_run(g16, *pt), "ok", "mask(s)")
    add(area, "1x3000 image", sam_run(thin_sam, "--point", "1500,0", "--out", out_png), "ok",
        "mask(s)")
    add(area, "decompression bomb", sam_run(bomb, *pt), "error")
    add(area, "truncated image", sam_run(trunc, *pt), "error")
    add(area, "random bytes", sam_run(junk, *pt), "error")
    add(area, "directory as image", sam_run(some_dir, *pt), "error")
    add(area, "missing image", sam_run(tmp / "nope.png", *pt), "error")
    add(area, "no prompt", sam_run(photo, "--out", out_png), "error")
    for name, extra in [("point a,b", ["--point", "a,b"]), ("point 1", ["--point", "1"]),
                        ("point nan,1", ["--point", "nan,1"]),
                        ("point inf,1", ["--point", "inf,1"]),
                        ("box of 3", ["--box", "1,2,3"]), ("box nan", ["--box", "0,0,nan,4"]),
                        ("label 2", ["--point", "1,1", "--label", "2"]),
                        ("two labels one point", ["--point", "1,1", "--label", "1",
                                                  "--label", "0"]),
                        ("alpha 2", ["--point", "1,1", "--alpha", "2"]),
                        ("alpha nan", ["--point", "1,1", "--alpha", "nan"])]:
        add(area, name, sam_run(photo, *extra, "--out", out_png), "error")
    add(area, "out is a directory", sam_run(photo, "--point", "1,1", "--out", some_dir), "error")
    add(area, "out in a missing directory", sam_run(photo, "--point", "1,1", "--out",
                                                    tmp / "no" / "m.png"), "error")
    add(area, "missing checkpoint", sam_run(photo, *pt, model=("--model", d_missing)), "error")

    # -- run whisper -----------------------------------------------------------------------------
    area = "pyworkloads whisper"

    def whisper_run(audio, *extra, model=whisper_ok):
        return ["run", "whisper", "--model", model, audio, "--no-progress", *extra]
    add(area, "speech", whisper_run(speech), "ok", "language")
    add(area, "missing audio", whisper_run(tmp / "nope.wav"), "error")
    add(area, "directory as audio", whisper_run(some_dir), "error")
    add(area, "text as audio", whisper_run(text), "error")
    add(area, "image as audio", whisper_run(photo), "error")
    add(area, "corrupt WAV", whisper_run(wav_bad), "error")
    add(area, "NaN samples", whisper_run(wav_nan), "error")
    add(area, "32 KB WAV at 1 Hz", whisper_run(wav_1hz), "error")
    add(area, "WAV at 2^31-1 Hz", whisper_run(wav_huge), "error")
    add(area, "unknown language", whisper_run(speech, "--language", "klingon"), "error")
    add(area, "task x", whisper_run(speech, "--task", "x"), "error")
    add(area, "missing checkpoint", whisper_run(speech, model=d_missing), "error")
    add(area, "corrupt tokenizer.json", whisper_run(speech, model=whisper_badtok), "error")

    # -- costmodel -------------------------------------------------------------------------------
    area = "costmodel"
    rep = ["report", "llama2-7b", "--device", "h100-sxm"]
    bad_toml = write("bad.toml", b"[h200\nbandwidth = ")
    odd_toml = write("odd.toml", b'[mydev]\nname = "x"\nbandwidth_gbps = "fast"\n')
    list_json = write("list.json", b"[1, 2, 3]")
    add(area, "report", rep, "ok", "tpot_s")
    add(area, "--help", ["--help"], "ok", "usage")
    add(area, "no command", [], "error")
    add(area, "unknown model", ["report", "gpt5", "--device", "h100-sxm"], "error")
    add(area, "unknown device", ["report", "llama2-7b", "--device", "abacus"], "error")
    for opt, val in [("--batch", "0"), ("--batch", "-1"), ("--batch", str(10**30)),
                     ("--seq-len", "0"), ("--seq-len", "-5"), ("--seq-len", str(10**12)),
                     ("--new-tokens", "-1"), ("--tp", "0"), ("--tp", "3"),
                     ("--group-size", "0"), ("--group-size", "-7"), ("--batch", "1.5"),
                     ("--phase", "dream"), ("--dtype", "int3")]:
        add(area, f"{opt} {val[:12]}", rep + [opt, val], "error" if opt != "--tp" or val == "0"
            else "either")
    sam_rep = ["report", "sam-vit-b", "--device", "h100-sxm"]
    for opt, val in [("--prompts", "0"), ("--points", "-1"), ("--prompts", str(10**9))]:
        add(area, f"sam {opt} {val}", sam_rep + [opt, val], "error" if int(val) <= 0
            else "either")
    add(area, "clip --text-batch 0", ["report", "clip-vit-b-32", "--device", "h100-sxm",
                                      "--text-batch", "0"], "error")
    add(area, "devices file missing", ["--devices-file", tmp / "nope.toml", "devices"], "error")
    add(area, "devices file a directory", ["--devices-file", some_dir, "devices"], "error")
    add(area, "devices file corrupt TOML", ["--devices-file", bad_toml, "devices"], "error")
    add(area, "devices file odd values", ["--devices-file", odd_toml, "devices"], "error")
    add(area, "devices file a JSON list", ["--devices-file", list_json, "devices"], "error")
    add(area, "devices file an image", ["--devices-file", photo, "devices"], "error")
    add(area, "devices --check corrupt", ["devices", "--check", bad_toml], "error")
    add(area, "devices --check missing", ["devices", "--check", tmp / "nope.toml"], "error")
    add(area, "-o a directory", rep + ["-o", some_dir], "error")
    add(area, "-o in a missing directory", rep + ["-o", tmp / "no" / "r.txt"], "error")
    add(area, "compare with an unknown device", ["compare", "llama2-7b", "--devices",
                                                 "h100-sxm,abacus"], "error")
    add(area, "plot to a directory", ["plot", "llama2-7b", "--device", "h100-sxm", "-o",
                                      some_dir], "error")
    return cases


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=HERE.parents[2],
                    help="the checkout to test (default: this one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per command line")
    ap.add_argument("--mem-gib", type=float, default=2.5, help="RLIMIT_AS of each process")
    ap.add_argument("-k", default="", help="only cases whose area or name contains this")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("-a", "--all", action="store_true", help="list every case and its outcome")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="hostile-cli-"))
    try:
        t0 = time.perf_counter()
        cases = [c for c in build_cases(tmp, args.seed, root)
                 if args.k in c.name or args.k in c.area]
        for c in cases:
            run_case(c, root, args.timeout, int(args.mem_gib * 2**30))
        print_table(cases, f"command-line campaign on {root} (seed {args.seed}, "
                    f"{time.perf_counter() - t0:.0f} s)")
        if args.verbose or args.all:
            for c in cases:
                if args.all or c.outcome not in ("ok", "clear error"):
                    print(f"  [{c.outcome}] {c.area}: {c.name} (expects {c.expect}; "
                          f"{c.seconds:.1f} s)  {c.detail}")
    finally:
        for p in tmp.rglob("*"):
            if p.is_file():
                os.chmod(p, 0o600)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
