"""One model on every kernel backend: check the outputs agree, profile every kernel call, and put
the measured per-layer FLOPs and times next to the cost model's prediction for this CPU.

    python examples/backends_and_profile.py                          # llama2-tiny, random weights
    python examples/backends_and_profile.py --preset llama2-110m --tokens 128
    python examples/backends_and_profile.py --model ~/models/Llama-2-7b-hf --tokens 64

Three things to read in the output:
1. the backends table: every backend in ``pw.available()`` ("numpy" is the reference; "cpp" and,
   with a GPU, "cuda" are the compiled kernels) gives the same logits and the same greedy tokens;
2. ``prof.summary()`` per backend: calls, GFLOP, MB moved and achieved GFLOP/s of each kernel
   family;
3. the per-layer table: the FLOPs the profiler counted while the forward ran (from the arrays each
   kernel actually received) and the FLOPs ``costmodel.analyze`` derives from the config alone --
   two independent counts that must be equal -- and, per backend, the measured time next to the
   roofline bound of the ``cpu`` device (this machine, calibrated once by a short NumPy
   measurement).
Exit status 1 if the backends disagree or the two FLOP counts differ.
(From a source checkout without ``pip install .``, run with PYTHONPATH=. )
"""
import argparse
import sys
import time
from collections import defaultdict

import numpy as np

import costmodel
import pyworkloads as pw

KERNEL_OPS = ("matmul", "attention", "rms_norm", "layer_norm")


def scope_of(name: str, scopes) -> str:
    """The profiler scope a cost-model record belongs to: the longest scope that is a dotted prefix
    of its name (the profiler names the HF module around a kernel call, e.g. model.layers.0.mlp;
    the cost model names the projection itself, model.layers.0.mlp.up_proj)."""
    best = ""
    for s in scopes:
        if (name == s or name.startswith(s + ".")) and len(s) > len(best):
            best = s
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="DIR", help="Hugging Face LLaMA checkpoint directory")
    src.add_argument("--preset", default="llama2-tiny", choices=list(pw.llama2.PRESETS),
                     help="random weights in a preset's shapes (default llama2-tiny)")
    ap.add_argument("--tokens", type=int, default=32,
                    help="prompt length of the profiled forward pass")
    ap.add_argument("--new-tokens", type=int, default=8,
                    help="greedy tokens compared across backends")
    args = ap.parse_args()

    m = (pw.llama2.from_pretrained(args.model) if args.model
         else pw.llama2.from_preset(args.preset, seed=0))
    label = args.model or f"{args.preset} (random weights)"
    if not 1 <= args.tokens <= m.config.max_position_embeddings - args.new_tokens:
        raise ValueError(f"--tokens must lie in "
                         f"[1, {m.config.max_position_embeddings - args.new_tokens}] "
                         f"(the context minus --new-tokens), got {args.tokens}")
    ids = np.random.default_rng(0).integers(3, m.config.vocab_size, size=(1, args.tokens))  # [1, T]
    backends = pw.available()
    print(f"{label}: {m.num_parameters / 1e6:.2f}M parameters, prompt of {args.tokens} tokens; "
          f"backends here: {', '.join(backends)}")

    # 1. the same forward pass and greedy decode on every backend, the forward under the profiler
    logits, greedy, profiles, seconds = {}, {}, {}, {}
    for b in backends:
        with pw.use_backend(b):
            m(ids[:, :4])                          # warm-up: thread pools, GPU context, caches
            with pw.profile() as prof:
                t0 = time.perf_counter()
                logits[b] = np.asarray(m(ids))     # [1, T, V]
                seconds[b] = time.perf_counter() - t0
            greedy[b] = m.generate(ids[:, :8], max_new_tokens=args.new_tokens,
                                   eos_token_id=None)[0, 8:]
        profiles[b] = prof
    ref = logits["numpy"]
    ok = True
    print(f"\n{'backend':<8} {'forward ms':>11} {'max |logits - numpy|':>21}  greedy tokens")
    for b in backends:
        err = (float(np.abs(logits[b].astype(np.float64) - ref).max())
               / max(1.0, float(np.abs(ref).max())))
        same = bool(np.array_equal(greedy[b], greedy["numpy"]))
        # the tolerance of tests/kernels (scale-aware)
        ok &= (err <= 1e-4 and same)
        print(f"{b:<8} {seconds[b] * 1e3:11.2f} {err:21.2e}  {greedy[b].tolist()}"
              f"{'' if same else '  <- differs from numpy'}")

    # 2. what the profiler saw, per kernel family
    for b in backends:
        print(f"\nprof.summary() on {b}:\n{profiles[b].summary()}")

    # 3. the cost model for the same work: float32 as the engine computes, unfused attention (the
    #    NumPy reference materialises the full score matrix), logits at every position (m(ids)
    #    returns them all), on the "cpu" device
    r = costmodel.analyze(m.config, device="cpu", phase="prefill", batch=1, seq_len=args.tokens,
                          dtype="fp32", attention="unfused", logits="all")
    scopes = {rec.name for rec in profiles["numpy"].records}
    model_flops, bound = defaultdict(int), defaultdict(float)
    for layer in r.layers:
        if layer.op in KERNEL_OPS:
            key = (scope_of(layer.name, scopes), layer.op)
            model_flops[key] += layer.flops
            bound[key] += layer.t_lower                        # max(compute, memory) on this CPU
    measured_flops, measured_s = defaultdict(int), defaultdict(float)
    for b in backends:
        for rec in profiles[b].records:
            measured_s[(b, rec.name, rec.op)] += rec.seconds
            # activations are elementwise in the model
            if b == "numpy" and rec.op in KERNEL_OPS:
                measured_flops[(rec.name, rec.op)] += rec.flops
    dev = r.device
    print(f"\ncost model on '{dev.key}' ({dev.name}: {dev.peak('fp32') / 1e9:.0f} GFLOP/s fp32 "
          f"GEMM, {dev.bandwidth / 1e9:.0f} GB/s) vs the profiled forward")
    head = f"{'layer (profiler scope)':<40} {'op':<10} {'MFLOP run':>10} {'MFLOP model':>12}  " + \
           "".join(f"{b + ' ms':>10}" for b in backends) + f" {'bound ms':>9}"
    print(head + "\n" + "-" * len(head))
    # call order
    for key in list(measured_flops) + [k for k in model_flops if k not in measured_flops]:
        same = measured_flops.get(key) == model_flops.get(key)
        ok &= same
        print(f"{key[0] or '(no scope)':<40} {key[1]:<10} {measured_flops.get(key, 0) / 1e6:10.3f} "
              f"{model_flops.get(key, 0) / 1e6:12.3f}{'  ' if same else ' !'}"
              + "".join(f"{measured_s[(b, *key)] * 1e3:10.3f}" for b in backends)
              + f" {bound[key] * 1e3:9.3f}")
    tot = {b: sum(v for k, v in measured_s.items() if k[0] == b) for b in backends}
    print(f"{'all kernels':<40} {'':<10} {sum(measured_flops.values()) / 1e6:10.3f} "
          f"{sum(model_flops.values()) / 1e6:12.3f}  "
          + "".join(f"{tot[b] * 1e3:10.3f}" for b in backends)
          + f" {sum(bound.values()) * 1e3:9.3f}")
    print("\nbound / measured is the fraction of this CPU's roofline a backend reaches; tiny "
          "layers are dominated by call overhead, so try --preset llama2-110m.")
    print("all backends agree and the FLOP counts match" if ok else
          "MISMATCH: see the rows marked '!' or '<- differs from numpy' above")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, TypeError, FileNotFoundError, MemoryError) as exc:
        sys.exit(f"error: {exc}")
