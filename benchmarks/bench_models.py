"""End to end: each model's forward on the numpy vs cpp backend, and vs transformers (PyTorch CPU)
with the same weights, in one process and thread count.

    OMP_NUM_THREADS=2 python benchmarks/bench_models.py [--models llama2 clip sam whisper]
        [--llama2c /path/to/llama2.c]   # a checkout with `run` built: gcc -Ofast -march=native
        -fopenmp run.c -lm -o run

Cases (random weights in real shapes, fp32):
  llama2   stories110M shape (preset llama2-110m's random weights saved as safetensors and loaded
           with from_pretrained): greedy decode tokens/s after a 1-token prompt
           (one single-query forward per token against the KV cache) -- and llama2.c's run.c on
           the same weights exported to its checkpoint format (rope layout aside, which only
           changes the values), reading its "achieved tok/s"
  clip     ViT-B/32: image features for 8 images, text features for 8 prompts of 77 tokens
  sam      ViT-B image encoder on one 1024 x 1024 image (--sam-preset sam-tiny for a quick look)
  whisper  base: encoder on 30 s of audio features + 32 decoder steps' logits (no cache)
Medians of --repeat runs; transformers' time uses torch.inference_mode and torch.set_num_threads.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout works without installing

import pyworkloads as pw  # noqa: E402


def median_seconds(f, repeat: int) -> float:
    f()  # warm-up (page-in, scratch buffers)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def on(backend, f):
    def run():
        with pw.use_backend(backend):
            return f()

    return run


def hf_model(cls_name: str, config_cls: str, cfg_dict: dict, weights):
    """A transformers model built from our config, holding exactly our weights (None if
    unavailable).
    """
    try:
        import torch
        import transformers
    except ImportError as exc:
        print(f"  transformers: skipped ({exc})")
        return None, None
    torch.set_num_threads(pw.kernels.get_num_threads())
    cfg = getattr(transformers, config_cls)(
        **{k: v for k, v in cfg_dict.items() if k not in ("model_type", "architectures")}
    )
    model = getattr(transformers, cls_name)(cfg).eval()
    state = {
        k: torch.from_numpy(np.ascontiguousarray(np.asarray(weights[k], np.float32)))
        for k in weights.keys()
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    print(
        f"  transformers {cls_name}: {len(state)} tensors loaded, missing {sorted(missing)[:3]}, "
        f"unexpected {sorted(unexpected)[:3]}"
    )
    return model, torch


def kernel_share(f) -> None:
    """One profiled run on the cpp backend: time inside the dispatched kernels vs everything else
    (the NumPy glue of the model: activations, RoPE, reshapes, im2col ...)."""
    with pw.use_backend("cpp"):
        t = time.perf_counter()
        with pw.profile() as prof:
            f()
        total = time.perf_counter() - t
    by_op = prof.totals()
    inside = sum(v["seconds"] for v in by_op.values())
    ops = ", ".join(
        f"{op} {v['seconds'] * 1e3:.0f} ms ({v['flops'] / v['seconds'] / 1e9:.0f} GF/s)"
        for op, v in sorted(by_op.items(), key=lambda kv: -kv[1]["seconds"])
        if v["seconds"] > 0
    )
    print(
        f"  cpp profile: {total * 1e3:.0f} ms total, {inside * 1e3:.0f} ms in kernels [{ops}], "
        f"{(total - inside) * 1e3:.0f} ms outside"
    )


def report(name: str, unit: str, times: dict, work: float) -> None:
    """times: seconds per implementation; work: units per run (tokens, images ...)."""
    base = times.get("numpy")
    parts = []
    for impl, t in times.items():
        if t is None:
            continue
        parts.append(
            f"{impl} {work / t:.2f} {unit}"
            + (f" ({base / t:.2f}x numpy)" if base and impl != "numpy" else "")
        )
    print(f"  {name}: " + ", ".join(parts))
    if times.get("cpp") and times.get("transformers"):
        print(f"  {name}: cpp / transformers = {times['transformers'] / times['cpp']:.2f}x")


# ------------------------------------------------------------------------------------------------
def export_llama2c(model, path: Path) -> None:
    """Our weights in llama2.c's legacy checkpoint layout (header of 7 int32, then fp32 tensors)."""
    c, w = model.config, model.weights
    L, D = c.num_hidden_layers, c.hidden_size
    head = D // c.num_attention_heads
    vocab = c.vocab_size if c.tie_word_embeddings else -c.vocab_size
    with open(path, "wb") as f:
        f.write(
            struct.pack(
                "7i",
                D,
                c.intermediate_size,
                L,
                c.num_attention_heads,
                c.num_key_value_heads,
                vocab,
                c.max_position_embeddings,
            )
        )

        def put(name):
            f.write(np.ascontiguousarray(np.asarray(w[name], np.float32)).tobytes())

        def per_layer(suffix):
            for i in range(L):
                put(f"model.layers.{i}.{suffix}")

        put("model.embed_tokens.weight")
        per_layer("input_layernorm.weight")
        for p in ("q", "k", "v", "o"):
            per_layer(f"self_attn.{p}_proj.weight")
        per_layer("post_attention_layernorm.weight")
        for p in ("gate", "down", "up"):  # run.c's w1, w2, w3
            per_layer(f"mlp.{p}_proj.weight")
        put("model.norm.weight")
        f.write(np.zeros(c.max_position_embeddings * head, np.float32).tobytes())  # unused freq_cis
        if not c.tie_word_embeddings:
            put("lm_head.weight")


def bench_llama2(args) -> None:
    n = args.tokens
    ids = np.array([[1]])
    with tempfile.TemporaryDirectory() as tmp:
        # the weights as users load them: a safetensors checkpoint through from_pretrained
        # (float32, read into huge-page memory: it fits), written from the preset's random weights
        preset = pw.llama2.from_preset("llama2-110m")
        ckdir = Path(tmp) / "stories110m"
        ckdir.mkdir()
        pw.io.save_safetensors(ckdir / "model.safetensors",
                               {k: np.asarray(v) for k, v in preset.weights.items()})
        (ckdir / "config.json").write_text(json.dumps(preset.config.to_hf()))
        m = pw.llama2.from_pretrained(ckdir)
        print(f"llama2-110m (stories110M shape, from_pretrained), greedy decode of {n} tokens, "
              "batch 1")
        gen = lambda: m.generate(ids, max_new_tokens=n, eos_token_id=None)  # noqa: E731
        times = {
            "numpy": median_seconds(gen, args.repeat),
            "cpp": median_seconds(on("cpp", gen), args.repeat),
        }
        model, torch = hf_model("LlamaForCausalLM", "LlamaConfig", m.config.to_hf(), preset.weights)
        if model is not None:
            tids = torch.from_numpy(ids)

            def hf_gen():
                with torch.inference_mode():
                    model.generate(
                        tids, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True
                    )

            times["transformers"] = median_seconds(hf_gen, args.repeat)
        report("decode", "tok/s", times, n)
        kernel_share(gen)
        mapped = pw.llama2.from_pretrained(ckdir, in_memory=False)
        in_memory_vs_mapped(on("cpp", gen), on("cpp", lambda: mapped.generate(
            ids, max_new_tokens=n, eos_token_id=None)), n, max(7, args.repeat))
        if args.llama2c:
            llama2c_interleaved(m, Path(args.llama2c), n, on("cpp", gen), max(5, args.repeat))


def in_memory_vs_mapped(read_gen, mapped_gen, n: int, rounds: int) -> None:
    """cpp decode with the checkpoint read into huge-page memory (the default for one that fits)
    against the same file memory-mapped, alternating in one process."""
    read_gen(), mapped_gen()                                        # warm both
    read, mapped = [], []
    for r in range(rounds):
        for gen, out in ((read_gen, read), (mapped_gen, mapped))[::1 if r % 2 == 0 else -1]:
            t = time.perf_counter()
            gen()
            out.append(n / (time.perf_counter() - t))
    ratios = [a / b for a, b in zip(read, mapped)]
    print(f"  decode, weights read into huge pages vs memory-mapped, {rounds} alternating rounds: "
          f"{np.median(read):.1f} vs {np.median(mapped):.1f} tok/s = {np.median(ratios):.2f}x "
          f"({min(ratios):.2f}-{max(ratios):.2f})")


def llama2c_interleaved(m, repo: Path, n: int, cpp_gen, rounds: int) -> None:
    """cpp decode and llama2.c's run.c on the same weights, alternating round by round, so a load
    spell on the shared cores hits both: the median of the per-round ratios is the comparison."""
    exe, tok = repo / "run", repo / "tokenizer.bin"
    if not exe.exists() or not tok.exists():
        print(f"  llama2.c: skipped ({exe} or {tok} missing)")
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(pw.kernels.get_num_threads()))
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "model.bin"
        export_llama2c(m, ckpt)
        cpp_gen()                                                   # warm: page cache, scratch
        for _ in range(rounds):
            t = time.perf_counter()
            cpp_gen()
            ours.append(n / (time.perf_counter() - t))
            # temperature 1, top-p off: random weights make argmax loops; sampling costs the same
            out = subprocess.run(
                [str(exe), str(ckpt), "-z", str(tok), "-t", "1.0", "-p", "1.0", "-n", str(n + 1),
                 "-i", "", "-s", "1"],
                capture_output=True, text=True, env=env,
            )
            hit = re.search(r"achieved tok/s: ([0-9.]+)", out.stderr + out.stdout)
            if not hit:
                print("  llama2.c: no 'achieved tok/s' in its output")
                return
            theirs.append(float(hit.group(1)))
    ratios = [a / b for a, b in zip(ours, theirs)]
    print(f"  decode, {rounds} alternating rounds: cpp {np.median(ours):.1f} tok/s "
          f"{[round(r, 1) for r in ours]}, llama2.c {np.median(theirs):.1f} tok/s "
          f"{[round(r, 1) for r in theirs]}")
    print(f"  decode: cpp / llama2.c = {np.median(ratios):.2f}x (median of the rounds' ratios, "
          f"{min(ratios):.2f}-{max(ratios):.2f})")


def bench_clip(args) -> None:
    c = pw.clip.from_preset("clip-vit-b-32")
    t, v = c.config.text_config, c.config.vision_config
    rng = np.random.default_rng(0)
    px = rng.standard_normal((8, 3, v.image_size, v.image_size)).astype(np.float32)
    ids = rng.integers(1, t.vocab_size - 2, (8, t.max_position_embeddings))
    ids[:, -1] = t.eos_token_id
    print("clip-vit-b-32: image features of 8 images; text features of 8 x 77 tokens")
    model, torch = hf_model("CLIPModel", "CLIPConfig", c.config.to_hf(), c.weights)
    for name, f, work, unit in (
        ("image", lambda: c.get_image_features(px), 8, "images/s"),
        ("text", lambda: c.get_text_features(ids), 8, "texts/s"),
    ):
        times = {
            "numpy": median_seconds(f, args.repeat),
            "cpp": median_seconds(on("cpp", f), args.repeat),
        }
        if model is not None:
            tin = torch.from_numpy(px if name == "image" else ids)

            def hf():
                with torch.inference_mode():
                    return (
                        model.get_image_features(pixel_values=tin)
                        if name == "image"
                        else model.get_text_features(input_ids=tin)
                    )

            times["transformers"] = median_seconds(hf, args.repeat)
        report(name, unit, times, work)
        kernel_share(f)


def bench_sam(args) -> None:
    s = pw.sam.from_preset(args.sam_preset)
    size = s.config.vision_config.image_size
    px = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    print(f"{args.sam_preset}: image encoder, one {size} x {size} image")
    f = lambda: s.get_image_embeddings(px)  # noqa: E731
    reps = max(1, args.repeat // 3)
    times = {"numpy": median_seconds(f, reps), "cpp": median_seconds(on("cpp", f), reps)}
    model, torch = hf_model("SamModel", "SamConfig", s.config.to_hf(), s.weights)
    if model is not None:
        tin = torch.from_numpy(px)

        def hf():
            with torch.inference_mode():
                return model.get_image_embeddings(tin)

        times["transformers"] = median_seconds(hf, reps)
    report("encoder", "images/s", times, 1)
    kernel_share(f)


def bench_whisper(args) -> None:
    w = pw.whisper.from_preset(args.whisper_preset)
    cfg = w.config
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((1, cfg.num_mel_bins, 3000)).astype(np.float32)
    dec = np.concatenate([[cfg.decoder_start_token_id], rng.integers(0, 50000, 31)])[None]
    print(f"{args.whisper_preset}: encoder on 30 s + decoder logits for 32 tokens")
    f = lambda: w(feats, dec)  # noqa: E731
    times = {
        "numpy": median_seconds(f, args.repeat),
        "cpp": median_seconds(on("cpp", f), args.repeat),
    }
    model, torch = hf_model(
        "WhisperForConditionalGeneration", "WhisperConfig", cfg.to_hf(), w.weights
    )
    if model is not None:
        tf, td = torch.from_numpy(feats), torch.from_numpy(dec)

        def hf():
            with torch.inference_mode():
                return model(input_features=tf, decoder_input_ids=td).logits

        times["transformers"] = median_seconds(hf, args.repeat)
    report("forward", "runs/s", times, 1)
    kernel_share(f)


BENCHES = {"llama2": bench_llama2, "clip": bench_clip, "sam": bench_sam, "whisper": bench_whisper}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", nargs="*", default=list(BENCHES), choices=list(BENCHES))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128, help="llama2 decode length")
    ap.add_argument("--llama2c", help="llama2.c checkout with `run` built and tokenizer.bin")
    ap.add_argument("--sam-preset", default="sam-vit-b")
    ap.add_argument("--whisper-preset", default="whisper-base")
    args = ap.parse_args(argv)
    print(f"threads {pw.kernels.get_num_threads()}, backends {pw.kernels.available()}")
    for name in args.models:
        try:
            importlib.import_module(f"pyworkloads.models.{name}")
        except ImportError as exc:
            print(f"{name}: skipped, the model module is not importable ({exc})")
            continue
        BENCHES[name](args)


if __name__ == "__main__":
    main()
