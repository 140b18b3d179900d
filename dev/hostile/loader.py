"""Hostile safetensors files against the loader (``pyworkloads.io.load_safetensors``): counts.

    python dev/hostile/loader.py [--root CHECKOUT] [--n 6000] [--seed 0] [--jobs 2] [--show 3]

Six valid files (every dtype the loader reads, zero-size tensors, metadata, a header whose odd
length leaves the data section unaligned, an empty file, one written by the ``safetensors``
library) are mutated with a fixed seed: the 8-byte header length, bytes of the header, the
data section's length, and -- after parsing the header -- single fields replaced by hostile
JSON (wrong types, huge, negative or fractional numbers, deep nesting, 5000-digit integers,
lone surrogates, duplicate names, ...).  Each file runs in a child process (batches, restarted
after a crash or a hang) under an address-space limit (RLIMIT_AS) and a per-file timeout; the
child opens the file, reads every tensor both ways (``st[name]``, ``st.raw(name)``) and also
asks the ``safetensors`` library (the format's reference implementation) whether the file is
valid.  Outcomes:

  loaded      the library accepts the file too, and every tensor's bytes are the bytes its
              data_offsets name, at an address aligned to its item size
  clear       ValueError whose message names the file, raised while opening it
  unclear     any other exception, or one raised only when a tensor is read
  wrong       loaded although the library refuses the file, or values differ from the bytes
              data_offsets name
  misaligned  loaded right, but a tensor's address is not a multiple of its item size (the
              kernels would read it with misaligned loads)
  crash       the child died (signal or exit without a result)
  hang        no result within --timeout seconds
  over-alloc  MemoryError, more than 64 MiB traced by tracemalloc (the files are < 1 MiB), or
              a case that stalls after its process grew by more than 64 MiB

``--root`` picks the checkout whose ``pyworkloads`` is imported (default: this one), so the same
command measures another branch, e.g. ``git archive main | tar -x -C /tmp/main``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
ADDRESS_SPACE = 1 << 30                 # RLIMIT_AS of a child: Python + NumPy take ~270 MB
OVER_ALLOC = 64 << 20                   # tracemalloc peak above which a case over-allocates
STALL_GROWTH = 64 << 20                 # a stalled case that grew this much over-allocates
COLUMNS = ("loaded", "clear", "unclear", "wrong", "misaligned", "crash", "hang", "over-alloc")

# ---------------------------------------------------------------------------------------------
# valid files
# ---------------------------------------------------------------------------------------------
CODES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
         "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def serialize(tensors: list[tuple[str, str, np.ndarray]], metadata=None, align: bool = True):
    """(name, code, array) -> safetensors bytes; ``align`` pads the header to 8 bytes."""
    header, blobs, off = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, code, arr in tensors:
        buf = np.ascontiguousarray(arr, dtype=CODES[code]).tobytes()
        header[name] = {"dtype": code, "shape": list(arr.shape),
                        "data_offsets": [off, off + len(buf)]}
        blobs.append(buf)
        off += len(buf)
    h = json.dumps(header, separators=(",", ":")).encode()
    if align:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def bases(rng: np.random.Generator) -> list[bytes]:
    every = [("w.f32", "F32", rng.standard_normal((4, 3))),
             ("w.f16", "F16", rng.standard_normal(5)),
             ("w.bf16", "BF16", rng.integers(0, 1 << 16, (2, 2))),
             ("w.f64", "F64", rng.standard_normal(3)), ("ids.i64", "I64", np.arange(3)),
             ("ids.i32", "I32", np.arange(4)), ("ids.i16", "I16", np.arange(2)),
             ("b.u8", "U8", np.arange(7)), ("b.i8", "I8", np.arange(3)),
             ("m.bool", "BOOL", np.array([True, False]))]
    out = [serialize(every, {"format": "pt"}),
           serialize(every, None, align=False),                        # odd header length
           serialize([("emb", "F32", rng.standard_normal((16, 4))), ("e0", "F32", np.zeros((0, 4))),
                      ("s", "F32", np.array(2.5)), ("e1", "I64", np.zeros(0))]),
           serialize([]),
           serialize([("x", "F16", rng.standard_normal(3)), ("y", "F32", rng.standard_normal(2))],
                     align=False)]
    try:                                        # a file as the reference implementation writes it
        from safetensors.numpy import save
        out.append(save({"a": rng.standard_normal((3, 5)).astype(np.float32),
                         "b": np.arange(6, dtype=np.int32)}, metadata={"k": "v"}))
    except ImportError:
        pass
    return out


# ---------------------------------------------------------------------------------------------
# mutations
# ---------------------------------------------------------------------------------------------
RAW = "\x00raw{}\x00"                   # a placeholder for JSON text json.dumps cannot write


def hostile_values(rng: random.Random, field: str, current):
    """JSON values to put where ``current`` was: wrong types and out-of-range numbers."""
    common = [None, True, False, 0, -1, 1.5, "x", "", [], {}, [1], {"a": 1}, 2 ** 63, 2 ** 64,
              -(2 ** 63), 10 ** 30, RAW.format("nan"), RAW.format("inf"), RAW.format("deep"),
              RAW.format("bigint")]
    if field == "dtype":
        return common + ["f32", "F8_E4M3", "Q4_0", "I4", "U64", "C64", "F32 ", *CODES]
    if field == "shape":
        s = list(current)
        return common + [[-1], [2 ** 63], [2 ** 64], [1] * 70, [1] * 33, [2 ** 62, 0], [0, 2 ** 70],
                         [1.0], ["1"], [True], [[2]], [None], s[::-1], s + [1], [0] + s,
                         s[:-1], [x + 1 for x in s], [2 ** 31, 2 ** 31, 0], [10 ** 30, 0]]
    if field == "data_offsets":
        b, e = current
        return common + [[b, e + 1], [b, e - 1], [b + 1, e + 1], [b - 1, e - 1], [b + 4, e + 4],
                         [e, b], [-1, e], [b, 2 ** 64], [b], [b, e, 0], [float(b), float(e)],
                         [str(b), str(e)], [b, None], [0, e - b], [b + 1, e], [b, 10 ** 30]]
    return common


def mutate_json(rng: random.Random, blob: bytes) -> tuple[str, bytes]:
    """Parse the header, change one thing, write it back with a matching length prefix."""
    n = struct.unpack("<Q", blob[:8])[0]
    header, data = json.loads(blob[8:8 + n]), blob[8 + n:]
    names = [k for k in header if k != "__metadata__"]
    raws = {}
    op = rng.choice(["field", "field", "field", "field", "entry", "metadata", "top", "name",
                     "duplicate", "swap"]) if names else rng.choice(["metadata", "top", "name"])
    if op == "field":
        name = rng.choice(names)
        field = rng.choice(["dtype", "shape", "data_offsets"])
        header[name][field] = rng.choice(hostile_values(rng, field, header[name][field]))
        kind = f"json:{field}"
    elif op == "entry":
        name = rng.choice(names)
        choice = rng.randrange(4)
        if choice == 0:
            del header[name][rng.choice(["dtype", "shape", "data_offsets"])]
        elif choice == 1:
            header[name]["extra"] = 1
        else:
            header[name] = rng.choice(hostile_values(rng, "entry", None))
        kind = "json:entry"
    elif op == "metadata":
        header["__metadata__"] = rng.choice([None, [], "x", 1, {"a": 1}, {"a": {"b": "c"}},
                                            {"a": None}, {RAW.format("sur"): "v"},
                                            RAW.format("deep")])
        kind = "json:metadata"
    elif op == "top":
        header = rng.choice([[], "x", 1, None, RAW.format("deep"), [header]])
        kind = "json:top"
    elif op == "name":
        new = rng.choice(["", RAW.format("sur"), "a" * 100_000, "__metadata__x", "\n", "é"])
        if names:
            header[new] = header.pop(rng.choice(names))
        else:
            header[new] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
        kind = "json:name"
    elif op == "duplicate":
        name = rng.choice(names)
        raws["dup"] = json.dumps(name) + ":" + json.dumps(header[name])
        header["\x00dupkey\x00"] = RAW.format("dup")
        kind = "json:duplicate"
    else:                                      # swap two tensors' offsets: valid if sizes agree
        a, b = rng.choice(names), rng.choice(names)
        header[a]["data_offsets"], header[b]["data_offsets"] = (header[b]["data_offsets"],
                                                                 header[a]["data_offsets"])
        kind = "json:swap"
    text = json.dumps(header, separators=(",", ":"))
    depth = rng.choice([10, 1000, 100_000])
    fill = {"nan": rng.choice(["NaN", "Infinity", "-Infinity"]), "inf": "1e999",
            "deep": "[" * depth + "]" * depth, "bigint": "9" * rng.choice([20, 5000]),
            "sur": '"\\ud800"'}
    if "dup" in raws:                           # the placeholder pair becomes a repeated name
        text = text.replace(json.dumps("\x00dupkey\x00") + ":" + json.dumps(RAW.format("dup")),
                            raws["dup"])
    for key, val in fill.items():               # each quoted placeholder becomes raw JSON text
        text = text.replace(json.dumps(RAW.format(key)), val)
    h = text.encode("utf-8", "surrogatepass")
    if rng.random() < 0.5:
        h += b" " * (-len(h) % 8)
    return kind, struct.pack("<Q", len(h)) + h + data


def mutate_bytes(rng: random.Random, blob: bytes) -> tuple[str, bytes]:
    if len(blob) < 8:                           # a first mutation truncated it already
        return "bytes:short", blob + bytes(rng.randrange(256) for _ in range(rng.randrange(8)))
    n = min(struct.unpack("<Q", blob[:8])[0], len(blob) - 8)     # a first mutation may lie
    op = rng.choice(["length", "length", "flip", "flip", "insert", "delete", "truncate", "append",
                     "nonutf8"])
    b = bytearray(blob)
    if op == "length":
        new = rng.choice([n + d for d in (-8, -3, -2, -1, 1, 2, 3, 8)]
                         + [0, 1, 2, 7, 2 ** 63, 2 ** 64 - 1, len(blob) - 8, len(blob),
                            100 * 1024 * 1024 + 1, rng.randrange(2 ** 64)])
        b[:8] = struct.pack("<Q", max(0, new) % 2 ** 64)
    elif op == "flip" and n:
        for _ in range(rng.randint(1, 3)):
            i = 8 + rng.randrange(n)
            b[i] = rng.choice(list(b'{}[]",:0123456789-eE.tfn ') + [rng.randrange(256)])
    elif op == "insert" and n:
        i = 8 + rng.randrange(n + 1)
        b[i:i] = bytes(rng.choice(list(b' {}[]",:09')) for _ in range(rng.randint(1, 4)))
        if rng.random() < 0.5:
            b[:8] = struct.pack("<Q", n + (len(b) - len(blob)))
    elif op == "delete" and n:
        i = 8 + rng.randrange(n)
        del b[i:i + rng.randint(1, 4)]
        if rng.random() < 0.5:
            b[:8] = struct.pack("<Q", max(0, n - (len(blob) - len(b))))
    elif op == "truncate":
        del b[rng.randrange(len(blob) + 1):]
    elif op == "append":
        b += bytes(rng.randrange(256) for _ in range(rng.choice([1, 2, 3, 4, 8, 100])))
    elif op == "nonutf8" and n:
        i = 8 + rng.randrange(n)
        b[i] = rng.choice([0x80, 0xC0, 0xFF, 0xED])
    return f"bytes:{op}", bytes(b)


def generate(n: int, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    valid = bases(np.random.default_rng(seed))
    cases = [("valid", v) for v in valid]
    while len(cases) < n:
        base = rng.choice(valid)
        kind, blob = (mutate_json if rng.random() < 0.6 else mutate_bytes)(rng, base)
        if rng.random() < 0.15:                 # a second mutation on top
            kind2, blob2 = mutate_bytes(rng, blob)
            kind, blob = f"{kind}+{kind2}", blob2
        cases.append((kind, blob))
    return cases


# ---------------------------------------------------------------------------------------------
# the child: open, read every tensor, compare with the reference implementation
# ---------------------------------------------------------------------------------------------
def expected_bytes(path: Path) -> dict[str, bytes] | None:
    """What each tensor's data_offsets name, for a file the reference library accepts."""
    blob = path.read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])          # the library accepted it: plain JSON
    data = blob[8 + n:]
    return {k: data[v["data_offsets"][0]:v["data_offsets"][1]]
            for k, v in header.items() if k != "__metadata__"}


def reference_accepts(path: Path) -> bool:
    try:
        from safetensors import safe_open
    except ImportError:
        return True
    try:
        with safe_open(str(path), "numpy") as f:
            f.metadata()
            for k in f.keys():
                f.get_slice(k).get_shape()
        return True
    except Exception:
        return False


def run_one(path: Path) -> dict:
    import tracemalloc

    from pyworkloads import io
    tracemalloc.reset_peak()
    res: dict = {}
    phase = "open"
    try:
        st = io.load_safetensors(path)
        phase = "read"
        got, misaligned = {}, False
        for name in st:
            raw = st.raw(name)
            conv = st[name]
            for a in (raw, conv):
                if a.size and a.ctypes.data % a.itemsize:
                    misaligned = True
            got[name] = (raw.tobytes(), st.dtype_of(name), conv)
        res["outcome"] = "ok"
        res["misaligned"] = misaligned
        if not reference_accepts(path):
            res["wrong"] = "accepted a file the safetensors library refuses"
        else:
            want = expected_bytes(path)
            if set(want) != set(got):
                res["wrong"] = "tensor names differ"
            for name, (raw_bytes, code, conv) in got.items():
                if want.get(name) != raw_bytes:
                    res["wrong"] = f"{name}: bytes differ from data_offsets"
                    break
                ref = np.frombuffer(raw_bytes, dtype=CODES[code])
                if code == "BF16":
                    ref = (ref.astype(np.uint32) << 16).view(np.float32)
                elif code in ("F16", "F64"):
                    ref = ref.astype(np.float32)
                if not np.array_equal(ref, conv.ravel(), equal_nan=ref.dtype.kind == "f"):
                    res["wrong"] = f"{name}: converted values differ"
                    break
    except MemoryError:
        res["outcome"] = "memory"
    except BaseException as exc:                # noqa: BLE001 -- classifying every outcome
        res["outcome"] = "error"
        res["etype"] = type(exc).__name__
        res["msg"] = str(exc)[:300]
        res["clear"] = (isinstance(exc, ValueError) and phase == "open"
                        and str(path) in str(exc))
        res["reference_accepts"] = reference_accepts(path)
    res["peak"] = tracemalloc.get_traced_memory()[1]
    return res


def child(root: str, case_dir: str, start: int, end: int, limit: int) -> None:
    import resource
    import tracemalloc
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.path.insert(0, root)
    import pyworkloads.io  # noqa: F401  (imported before the first case is timed)
    tracemalloc.start()
    for i in range(start, end):
        print(f"S {i}", flush=True)
        res = run_one(Path(case_dir) / f"{i}.safetensors")
        print(f"R {i} {json.dumps(res)}", flush=True)


# ---------------------------------------------------------------------------------------------
# the parent: batches of cases in children, restarted after a crash or a hang
# ---------------------------------------------------------------------------------------------
def _vm_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_batch(cmd: list[str], start: int, end: int, timeout: float, results: dict) -> None:
    """Run cases [start, end) in children; a child that dies or stalls costs one case."""
    cur = start
    while cur < end:
        p = subprocess.Popen(cmd + [str(cur), str(end)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, bufsize=0)
        fd = p.stdout.fileno()
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        pending, rss_at_start = b"", 0          # read straight from the pipe: no buffer hides
        running, deadline = None, time.monotonic() + 60     # lines from select (start-up: 60 s)
        while True:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                if running is None:
                    p.kill()
                    p.wait()
                    raise RuntimeError("the child did not start: " + " ".join(cmd))
                grown = _vm_rss(p.pid) - rss_at_start
                p.kill()
                p.wait()
                results[running] = {"outcome": "over-alloc" if grown > STALL_GROWTH
                                    else "hang", "peak": grown}
                cur = running + 1
                break
            chunk = os.read(fd, 1 << 16)
            if not chunk:                       # the child is gone
                rc = p.wait()
                if running is not None:
                    results[running] = {"outcome": "crash", "rc": rc}
                    cur = running + 1
                else:
                    cur = end
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                tag, i, *rest = line.decode().split(" ", 2)
                if tag == "S":
                    running, deadline = int(i), time.monotonic() + timeout
                    rss_at_start = _vm_rss(p.pid)
                elif tag == "R":
                    results[int(i)] = json.loads(rest[0])
                    running, deadline = None, time.monotonic() + timeout
        sel.close()
        p.stdout.close()
        if p.poll() is None:
            p.kill()
            p.wait()


def classify(res: dict) -> str:
    o = res["outcome"]
    if o in ("crash", "hang", "over-alloc"):
        return o
    if o == "memory" or res.get("peak", 0) > OVER_ALLOC:
        return "over-alloc"
    if o == "error":
        return "clear" if res.get("clear") else "unclear"
    if res.get("wrong"):
        return "wrong"
    return "misaligned" if res.get("misaligned") else "loaded"


def run_campaign(script: str, root: str, case_dir: str, n: int, jobs: int, timeout: float,
                 batch: int = 400) -> dict[int, dict]:
    cmd = [sys.executable, script, "--child", root, case_dir, str(ADDRESS_SPACE)]
    results: dict[int, dict] = {}
    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(run_batch, cmd, s, min(n, s + batch), timeout, results)
                   for s in range(0, n, batch)]
        for f in futures:
            f.result()
    return results


def table(title: str, counts: Counter, tried: int) -> str:
    head = "| " + " | ".join(("area", "tried") + COLUMNS) + " |"
    rule = "|" + "---|" * (len(COLUMNS) + 2)
    row = "| " + " | ".join([title, str(tried)] + [str(counts.get(c, 0)) for c in COLUMNS]) + " |"
    return "\n".join((head, rule, row))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=str(ROOT), help="checkout whose pyworkloads is imported")
    ap.add_argument("--n", type=int, default=6000, help="files to try (default 6000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per file")
    ap.add_argument("--show", type=int, default=3, help="examples to print per bad outcome")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        root, case_dir, limit, start, end = args.child
        child(root, case_dir, int(start), int(end), int(limit))
        return 0
    t0 = time.monotonic()
    cases = generate(args.n, args.seed)
    with tempfile.TemporaryDirectory(prefix="hostile-loader-") as d:
        for i, (_, blob) in enumerate(cases):
            (Path(d) / f"{i}.safetensors").write_bytes(blob)
        results = run_campaign(os.path.abspath(__file__), os.path.abspath(args.root), d,
                               len(cases), args.jobs, args.timeout)
    counts, examples = Counter(), {}
    by_kind: dict[str, Counter] = {}
    for i, (kind, _) in enumerate(cases):
        c = classify(results[i])
        counts[c] += 1
        by_kind.setdefault(kind.split("+")[0], Counter())[c] += 1
        if c not in ("loaded", "clear"):
            examples.setdefault(c, []).append((i, kind, results[i]))
    print(f"safetensors loader, {len(cases)} files, seed {args.seed}, root {args.root}, "
          f"{time.monotonic() - t0:.0f} s\n")
    print(table("loader", counts, len(cases)))
    print("\nby mutation:")
    for kind in sorted(by_kind):
        print(f"  {kind:18s} " + "  ".join(f"{c} {k}" for k, c in sorted(by_kind[kind].items())))
    stricter = Counter(kind.split("+")[0] for i, (kind, _) in enumerate(cases)
                       if classify(results[i]) == "clear" and results[i].get("reference_accepts"))
    if stricter:
        print(f"\nrefused although the safetensors library accepts them ({sum(stricter.values())}):"
              f" {', '.join(f'{k} {c}' for k, c in sorted(stricter.items()))}")
        for i, (kind, _) in enumerate(cases):
            if classify(results[i]) == "clear" and results[i].get("reference_accepts"):
                examples.setdefault("stricter", []).append((i, kind, results[i]))
    for c, ex in sorted(examples.items()):
        print(f"\n{c} ({len(ex)}), e.g.:")
        for i, kind, res in ex[:args.show]:
            detail = res.get("wrong") or f"{res.get('etype', '')}: {res.get('msg', '')}"
            if res["outcome"] in ("hang", "over-alloc"):
                detail = f"killed after {args.timeout:g} s, grown by {res['peak'] >> 20} MiB"
            print(f"  #{i} {kind}: {detail[:200] if c != 'misaligned' else 'misaligned tensor'}")
    bad = sum(counts[c] for c in ("unclear", "wrong", "misaligned", "crash", "hang",
                                  "over-alloc"))
    return 1 if bad else 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
