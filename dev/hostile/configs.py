"""Hostile config.json files against the four model families' from_pretrained: counts.

    python dev/hostile/configs.py [--root CHECKOUT] [--n 2000] [--seed 0] [--jobs 2] [--show 3]

The config of each family's tiny preset (llama2-tiny, clip-tiny, sam-tiny, whisper-tiny-random)
is mutated with a fixed seed, one field at a time -- every field of every section, in turn:

  hostile  a value no real checkpoint has: 0 or negative sizes, 10^12 or 2^63 layers, floats,
           strings, lists, objects, bools or NaN where an integer is expected, non-bools for
           flags, unknown activation names, out-of-vocabulary token ids, settings the engine does
           not implement (Whisper's scale_embedding) ...  It must be refused.
  benign   a plausible value (the size +-1 or doubled, another activation, null, the field
           deleted): a clear refusal (e.g. the weights no longer match) and a model that runs
           are both right.

Each mutated config.json sits next to the preset's random weights (model.safetensors) and goes
through ``from_pretrained``; a model that loads runs one small forward pass.  Every case runs in a
child process (batches, restarted after a crash or a hang) with an address-space limit
(RLIMIT_AS) and a per-case timeout.  Outcomes:

  accepted    loaded and ran with finite outputs, for a benign value
  clear       ValueError or TypeError raised by a check in pyworkloads (a ``raise`` statement)
              whose message names the field (or, for a value that passes the config's checks,
              the weight tensor that does not match)
  unclear     any other exception: Python's own (unhashable type, ZeroDivisionError, IndexError,
              ...), NumPy's, or a check that does not say which field
  wrong       loaded and ran although the value is hostile, or gave non-finite outputs
  crash       the child died;  hang: no result within --timeout seconds
  over-alloc  MemoryError, more than 512 MiB traced by tracemalloc, or a case that
              stalls after its process grew by more than 64 MiB

``--root`` picks the checkout whose ``pyworkloads`` is imported (default: this one).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ADDRESS_SPACE = 1 << 30                 # RLIMIT_AS of a child: Python + NumPy take ~270 MB
OVER_ALLOC = 512 << 20                  # tracemalloc peak above which a case over-allocates
STALL_GROWTH = 64 << 20                 # a stalled case that grew this much over-allocates
COLUMNS = ("accepted", "clear", "unclear", "wrong", "crash", "hang", "over-alloc")
FAMILIES = {"llama2": "llama2-tiny", "clip": "clip-tiny", "sam": "sam-tiny",
            "whisper": "whisper-tiny-random"}
IGNORED = {"architectures"}             # bookkeeping every parser ignores by design
TOKEN_IDS = {"bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"}
ZERO_OK = TOKEN_IDS | {"window_size", "logit_scale_init_value", "layer_norm_eps", "rms_norm_eps"}
LAYER_COUNTS = {"num_hidden_layers", "encoder_layers", "decoder_layers", "iou_head_depth",
                "num_multimask_outputs"}
# values of real config.json fields that change the computation in a way the engine does not
# implement: accepting them would give wrong outputs silently
UNSUPPORTED = {("whisper", "scale_embedding"): [True]}
NAN, INF = float("nan"), float("inf")


# ---------------------------------------------------------------------------------------------
# mutations
# ---------------------------------------------------------------------------------------------
def pools(family: str, key: str, v) -> tuple[list, list]:
    """(hostile values, benign values) for field ``key`` whose valid value is ``v``."""
    common = ["x", "", [], {}, {"a": 1}, NAN, INF, -INF]
    if isinstance(v, bool):
        unsupported = UNSUPPORTED.get((family, key), [])
        flip = [] if (not v) in unsupported else [not v]
        return (common + ["true", "false", 0, 1, 2, 0.0, [v], *unsupported], flip + [None])
    if isinstance(v, int):
        hostile = common + [-1, -(2 ** 63), 10 ** 12, 2 ** 63, 2 ** 64, 10 ** 30, 1.5, float(v),
                            str(v), [v], True, False]
        benign = [v + 1, 2 * v, None]
        if key not in TOKEN_IDS:
            benign.append(10 ** 6 if key not in LAYER_COUNTS else 1000)
        if key in LAYER_COUNTS:
            hostile.append(10 ** 6)
        if key == "eos_token_id":               # LLaMA and Whisper configs may list several
            hostile.remove([v])
            benign.append([v])
        if key in ZERO_OK:
            benign.append(0)
        else:
            hostile.append(0)
        if v > 1:
            benign.append(v - 1)
        return hostile, benign
    if isinstance(v, float):
        hostile = common + [str(v), [v], True, False]
        benign = [2 * v, v / 2, None]
        if key in ZERO_OK:
            benign.append(0.0)
            (benign if key == "logit_scale_init_value" else hostile).append(-1.0)
        else:
            hostile += [0.0, -1.0]
        if key == "mlp_ratio":                  # used only without mlp_dim (as transformers)
            benign.append(1e300)
        return hostile, benign
    if isinstance(v, str):
        other = {"silu": "gelu", "gelu": "relu", "relu": "gelu", "quick_gelu": "gelu"}.get(v)
        hostile = ["nope", "", v.upper() if v.upper() != v else v.lower(), 1, [v], {}, True]
        if key == "rope_type":
            hostile += ["yarn", "dynamic", "llama3"]
        return hostile, ([other] if other else []) + [None]
    if isinstance(v, list):
        return ([3, "x", [[1]], ["1"], [-1], [10 ** 12], [1.5], [True], {}, [None], [NAN]],
                [[], [0], None])
    return [], []


def fields(d: dict, prefix=()) -> list[tuple]:
    """Paths of every leaf and every section of a config dict."""
    out = []
    for k, v in d.items():
        if k in IGNORED:
            continue
        if isinstance(v, dict):
            out.append(prefix + (k,))                     # the section itself
            out += fields(v, prefix + (k,))
        else:
            out.append(prefix + (k,))
    return out


def get(d: dict, path: tuple):
    for k in path:
        d = d[k]
    return d


def put(d: dict, path: tuple, value) -> dict:
    d = json.loads(json.dumps(d))
    node = d
    for k in path[:-1]:
        node = node[k]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return d


DELETE = object()


def generate(base: dict[str, dict], n: int, seed: int) -> list[dict]:
    """Cases {family, path, hostile, config}: each family's fields in turn, a value drawn from
    the field's hostile values three times out of four."""
    rng = random.Random(seed)
    cases = [{"family": f, "path": [], "hostile": False, "config": base[f]} for f in FAMILIES]
    per_family = {f: fields(base[f]) for f in FAMILIES}
    turn = {f: 0 for f in FAMILIES}
    fams = list(FAMILIES)
    while len(cases) < n:
        f = fams[len(cases) % len(fams)]
        paths = per_family[f]
        if turn[f] % len(paths) == 0:
            rng.shuffle(paths)
        path = paths[turn[f] % len(paths)]
        turn[f] += 1
        v = get(base[f], path)
        if isinstance(v, dict):                           # a whole section
            hostile, benign = [[], "x", 1, True, [v]], [None, DELETE]
        else:
            hostile, benign = pools(f, path[-1], v)
            benign = benign + [DELETE]
        if rng.random() < 0.1 and len(path) == 1 and rng.random() < 0.5:
            cfg, path, is_hostile = rng.choice([[], "x", 1, None, [base[f]]]), (), True
        else:
            is_hostile = bool(hostile) and rng.random() < 0.75
            value = rng.choice(hostile if is_hostile else benign)
            cfg = put(base[f], path, value)
        cases.append({"family": f, "path": list(path), "hostile": is_hostile, "config": cfg})
    return cases


# ---------------------------------------------------------------------------------------------
# the child: from_pretrained and one small forward pass
# ---------------------------------------------------------------------------------------------
def setup(root: str, out: str) -> None:
    """The presets' configs and random weights, written by the checkout under test."""
    sys.path.insert(0, root)
    import pyworkloads as pw
    from pyworkloads import io
    configs = {}
    for fam, preset in FAMILIES.items():
        m = getattr(pw, fam).from_preset(preset, seed=0)
        weights = {k: v for k, v in m.weights.items()}
        io.save_safetensors(Path(out) / f"{fam}.safetensors", weights)
        configs[fam] = m.config.to_hf()
    (Path(out) / "base.json").write_text(json.dumps(configs))


def forward(pw, fam: str, m):
    import numpy as np
    if fam == "llama2":
        return [m(np.array([[1, 2, 3]]))]
    if fam == "clip":
        v = m.config.vision_config
        pixels = np.zeros((1, v.num_channels, v.image_size, v.image_size), np.float32)
        t = m.config.text_config
        eos = t.eos_token_id if isinstance(t.eos_token_id, int) and 0 <= t.eos_token_id < 512 \
            else 511                            # the text tower pools at the end-of-text token
        return [m.get_text_features(np.array([[1, 2, eos]])), m.get_image_features(pixels)]
    if fam == "sam":
        v = m.config.vision_config
        pixels = np.zeros((1, v.num_channels, v.image_size, v.image_size), np.float32)
        out = m(pixel_values=pixels, input_points=np.array([[[[10.0, 20.0]]]]))
        return [out.pred_masks, out.iou_scores]
    c = m.config
    feats = np.zeros((1, c.num_mel_bins, c.n_audio_frames), np.float32)
    return [m(feats, np.array([[c.decoder_start_token_id]]))]


def _explicit_raise(exc: BaseException, root: str) -> bool:
    """Whether the innermost frame is a ``raise`` statement in the checkout's pyworkloads."""
    import linecache
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    fname = tb.tb_frame.f_code.co_filename
    if not fname.startswith(os.path.join(root, "pyworkloads")):
        return False
    # a raise statement may span lines: look back to the statement's first line
    for line in range(tb.tb_lineno, max(0, tb.tb_lineno - 6), -1):
        text = linecache.getline(fname, line).strip()
        if text.startswith("raise "):
            return True
        if text.endswith(":") or not text:
            break
    return False


def run_one(root: str, work: Path, weights_dir: Path, case: dict) -> dict:
    import tracemalloc

    import numpy as np

    import pyworkloads as pw
    fam, path = case["family"], case["path"]
    d = work / "case"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(case["config"]))
    link = d / "model.safetensors"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(weights_dir / f"{fam}.safetensors")
    tracemalloc.reset_peak()
    res: dict = {}
    try:
        m = getattr(pw, fam).from_pretrained(d)
        outs = forward(pw, fam, m)
        res["outcome"] = "ok"
        res["finite"] = all(bool(np.all(np.isfinite(o))) for o in outs)
    except MemoryError as exc:
        res["outcome"] = "memory"
        res["msg"] = str(exc)[:300]
        res["explicit"] = _explicit_raise(exc, root)
    except BaseException as exc:                # noqa: BLE001 -- classifying every outcome
        msg = str(exc)
        res["outcome"] = "error"
        res["etype"] = type(exc).__name__
        res["msg"] = msg[:300]
        names = path[-1] in msg if path else True
        weights = "weight" in msg
        res["clear"] = (isinstance(exc, (ValueError, TypeError)) and _explicit_raise(exc, root)
                        and (names or weights))
    res["peak"] = tracemalloc.get_traced_memory()[1]
    return res


def child(root: str, case_file: str, limit: int, start: int, end: int) -> None:
    import resource
    import tracemalloc
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.path.insert(0, root)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import pyworkloads  # noqa: F401  (imported before the first case is timed)
    cases = json.loads(Path(case_file).read_text())
    weights_dir = Path(case_file).parent
    tracemalloc.start()
    with tempfile.TemporaryDirectory(prefix="hostile-config-") as work:
        for i in range(start, end):
            print(f"S {i}", flush=True)
            res = run_one(root, Path(work), weights_dir, cases[i])
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


def classify(case: dict, res: dict) -> str:
    o = res["outcome"]
    if o in ("crash", "hang", "over-alloc"):
        return o
    if o == "memory":
        return "clear" if res.get("explicit") else "over-alloc"
    if res.get("peak", 0) > OVER_ALLOC:
        return "over-alloc"
    if o == "error":
        return "clear" if res.get("clear") else "unclear"
    if case["hostile"] or not res.get("finite"):
        return "wrong"
    return "accepted"


def table(title: str, counts: Counter, tried: int) -> str:
    head = "| " + " | ".join(("area", "tried") + COLUMNS) + " |"
    rule = "|" + "---|" * (len(COLUMNS) + 2)
    row = "| " + " | ".join([title, str(tried)] + [str(counts.get(c, 0)) for c in COLUMNS]) + " |"
    return "\n".join((head, rule, row))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=str(ROOT), help="checkout whose pyworkloads is imported")
    ap.add_argument("--n", type=int, default=2000, help="configs to try (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per config")
    ap.add_argument("--show", type=int, default=3, help="examples to print per bad outcome")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--setup", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        root, case_file, limit, start, end = args.child
        child(root, case_file, int(limit), int(start), int(end))
        return 0
    if args.setup:
        setup(*args.setup)
        return 0
    t0 = time.monotonic()
    root = os.path.abspath(args.root)
    script = os.path.abspath(__file__)
    with tempfile.TemporaryDirectory(prefix="hostile-configs-") as d:
        subprocess.run([sys.executable, script, "--setup", root, d], check=True)
        base = json.loads((Path(d) / "base.json").read_text())
        cases = generate(base, args.n, args.seed)
        (Path(d) / "cases.json").write_text(json.dumps(cases))
        cmd = [sys.executable, script, "--child", root, str(Path(d) / "cases.json"),
               str(ADDRESS_SPACE)]
        results: dict[int, dict] = {}
        batch = 250
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(run_batch, cmd, s, min(len(cases), s + batch), args.timeout,
                                   results) for s in range(0, len(cases), batch)]
            for fut in futures:
                fut.result()
    counts, examples = Counter(), {}
    per_family: dict[str, Counter] = {}
    for i, case in enumerate(cases):
        c = classify(case, results[i])
        counts[c] += 1
        per_family.setdefault(case["family"], Counter())[c] += 1
        if c not in ("accepted", "clear"):
            examples.setdefault(c, []).append((i, case, results[i]))
    hostile = sum(c["hostile"] for c in cases)
    print(f"config.json, {len(cases)} configs ({hostile} hostile values), seed {args.seed}, "
          f"root {root}, {time.monotonic() - t0:.0f} s\n")
    print(table("configs", counts, len(cases)))
    print("\nby family:")
    for fam, c in per_family.items():
        print(f"  {fam:8s} {sum(c.values()):4d} tried: "
              + "  ".join(f"{n} {k}" for k, n in sorted(c.items())))
    for c, ex in sorted(examples.items()):
        print(f"\n{c} ({len(ex)}), e.g.:")
        seen = set()
        for i, case, res in ex:
            key = (case["family"], tuple(case["path"]))
            if key in seen:
                continue
            seen.add(key)
            if len(seen) > args.show:
                break
            value = get(case["config"], case["path"]) if case["path"] and _has(case) else "..."
            detail = f"{res.get('etype', '')}: {res.get('msg', '')}" if "msg" in res else ""
            if res["outcome"] in ("hang", "over-alloc"):
                detail = f"killed after {args.timeout:g} s, grown by {res['peak'] >> 20} MiB"
            elif c == "over-alloc":
                detail = f"{detail} (peak {res.get('peak', 0) >> 20} MiB traced)"
            print(f"  #{i} {case['family']} {'.'.join(case['path']) or '<config>'} = "
                  f"{_short(value)}: {detail[:160]}")
    bad = sum(counts[c] for c in ("unclear", "wrong", "crash", "hang", "over-alloc"))
    return 1 if bad else 0


def _has(case) -> bool:
    try:
        get(case["config"], case["path"])
        return True
    except (KeyError, TypeError):
        return False


def _short(v) -> str:
    r = repr(v) if not (isinstance(v, float) and math.isnan(v)) else "NaN"
    return r if len(r) <= 40 else r[:40] + "..."


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
