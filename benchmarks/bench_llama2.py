"""LLaMA 2 prefill and decode throughput: pyworkloads (numpy, and cpp when built) vs transformers
on torch CPU, the same random weights, in the same run.

    python benchmarks/bench_llama2.py                       # llama2-110m, 64-token prompt, 16
    decode steps
    python benchmarks/bench_llama2.py --backend numpy --prompt-len 256 --decode-tokens 64 --repeats
    5
    python benchmarks/bench_llama2.py --preset llama2-tiny --no-torch

Both sides do the same work: prefill = one forward over the prompt that fills the KV cache and
computes the logits of the last position only (transformers: ``logits_to_keep=1``); decode = one
single-token forward per step against the cache, greedy.  Reported: median over --repeats (after
a short warm-up run; repeats go round-robin over the implementations) in tokens/s (batch x tokens /
seconds), and each backend's ratio to torch.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pyworkloads as pw  # noqa: E402
from pyworkloads.models import llama2  # noqa: E402


def time_ours(model: llama2.Llama2, ids: np.ndarray, steps: int):
    """(prefill seconds, decode seconds per step) of one generation."""
    B, T = ids.shape
    cache = model.new_cache(B, T + steps)
    t0 = time.perf_counter()
    logits = model.forward(ids, cache, last_only=True)[:, -1]  # [B, V]
    t1 = time.perf_counter()
    for _ in range(steps):
        nxt = logits.argmax(-1)[:, None]  # [B, 1]
        logits = model.forward(nxt, cache, last_only=True)[:, -1]
    t2 = time.perf_counter()
    return t1 - t0, (t2 - t1) / steps


def torch_model(config: llama2.Config, weights: dict):
    import torch
    import transformers

    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config.to_hf())).eval()
    missing, unexpected = hf.load_state_dict(
        {k: torch.from_numpy(v) for k, v in weights.items()}, strict=False
    )
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(
            f"weights do not fit transformers' model: missing {missing}, unexpected {unexpected}"
        )
    if config.tie_word_embeddings:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    return hf


def time_torch(hf, ids: np.ndarray, steps: int):
    import torch

    t = torch.from_numpy(ids)
    with torch.inference_mode():
        # transformers 5 names the KV cache ``cache``; 4.x called it ``past_key_values``
        key = "cache" if "cache" in hf(t[:, :1], use_cache=True).keys() else "past_key_values"
        t0 = time.perf_counter()
        out = hf(t, use_cache=True, logits_to_keep=1)
        t1 = time.perf_counter()
        for _ in range(steps):
            out = hf(
                out.logits[:, -1].argmax(-1)[:, None],
                use_cache=True,
                logits_to_keep=1,
                **{key: out[key]},
            )
        t2 = time.perf_counter()
    return t1 - t0, (t2 - t1) / steps


def measure(cases: dict, repeats: int) -> dict:
    """{name: (run, warmup)} -> {name: (median prefill s, median decode s/step)}.  The repeats
    go round-robin over the implementations, so a change in machine load during the run (shared
    cores) hits all of them alike instead of whichever happened to run then."""
    for _, warmup in cases.values():
        warmup()  # a short run: threads, allocator, caches
    runs = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (run, _) in cases.items():
            runs[name].append(run())
    return {
        name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
        for name, rs in runs.items()
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="llama2-110m", choices=[p for p in llama2.PRESETS])
    ap.add_argument(
        "--backend", default=None, help="comma-separated backends (default: all available)"
    )
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--threads", type=int, default=None, help="threads for torch and the cpp kernels"
    )
    ap.add_argument("--no-torch", action="store_true", help="skip the transformers baseline")
    args = ap.parse_args(argv)

    backends = args.backend.split(",") if args.backend else pw.kernels.available()
    for b in backends:
        if b not in pw.kernels.available():
            ap.error(f"backend {b!r} unavailable: {pw.kernels.unavailable_reason(b)}")
    config = llama2.PRESETS[args.preset]
    model = llama2.from_preset(args.preset, seed=0)  # refuses what does not fit
    B, T, N = args.batch, args.prompt_len, args.decode_tokens
    ids = np.random.default_rng(0).integers(3, config.vocab_size, (B, T))
    if args.threads:
        pw.set_num_threads(args.threads)
    print(
        f"{args.preset}: {llama2.count_params(config) / 1e6:.1f}M params (D={config.hidden_size}, "
        f"L={config.num_hidden_layers}, H={config.num_attention_heads}, "
        f"F={config.intermediate_size}, "
        f"V={config.vocab_size}, tied={config.tie_word_embeddings}), float32 weights"
    )
    print(
        f"batch {B}, prompt {T} tokens, {N} decode steps; median of {args.repeats} after a warm-up "
        "| "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy "
        f"{np.__version__}"
    )

    def on(backend, fn):
        def run():
            with pw.use_backend(backend):
                return fn()

        return run

    cases = {
        f"pyworkloads[{b}]": (
            on(b, lambda: time_ours(model, ids, N)),
            on(b, lambda: time_ours(model, ids[:, :8], 2)),
        )
        for b in backends
    }
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("(torch not installed: no transformers baseline)")
        else:
            if args.threads:
                torch.set_num_threads(args.threads)
            hf = torch_model(config, model.weights)
            with torch.inference_mode():
                ref = hf(torch.from_numpy(ids)).logits.numpy()
            diff = float(np.abs(model(ids) - ref).max())
            print(
                f"same weights: max |logits - transformers| = {diff:.2e}; torch "
                f"{torch.__version__}, "
                f"{torch.get_num_threads()} threads"
            )
            cases["transformers[torch cpu]"] = (
                lambda: time_torch(hf, ids, N),
                lambda: time_torch(hf, ids[:, :8], 2),
            )

    rows = measure(cases, args.repeats)
    base = rows.get("transformers[torch cpu]")
    print(
        f"\n{'implementation':<26} {'prefill tok/s':>14} {'decode tok/s':>13} {'ms/step':>9} "
        f"{'prefill x torch':>16} {'decode x torch':>15}"
    )
    for name, (pre, dec) in rows.items():
        r = (f"{base[0] / pre:>16.2f} {base[1] / dec:>15.2f}") if base else ""
        print(f"{name:<26} {B * T / pre:>14.1f} {B / dec:>13.1f} {dec * 1e3:>9.2f} {r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
