"""Quantized LLaMA decode: block-quantized weights (Q8_0, Q4_0, Q4_K) against the float32 cpp
decode and llama2.c's ``runq.c`` (int8, groups of 64) on the same weights, in one run.

    OMP_NUM_THREADS=2 python benchmarks/bench_quant_decode.py [--llama2c /path/to/llama2.c]
        [--tokens 128] [--rounds 7] [--isa avx2]

The stories110M shape (preset llama2-110m, random weights, tied head), batch 1, greedy decode of
--tokens after a 1-token prompt.  Models, all through the public loaders:
  fp32   the weights saved as safetensors, ``from_pretrained(dir)``
  q8_0   ``from_pretrained(dir, quantize="q8_0")``: every matrix Q8_0
  q4_0   ``from_pretrained(dir, quantize="q4_0")``: layer matrices Q4_0, the tied head Q8_0
  q4_k   a GGUF file (``gguf.GGUFWriter``) whose layer matrices are random valid Q4_K blocks
         and whose tied head is Q6_K, the mix of a "Q4_K_M" file; ``from_pretrained(x.gguf)``
  runq   llama2.c's runq.c (built ``gcc -Ofast -march=native -fopenmp runq.c -lm -o runq``) on
         the fp32 weights exported to its version-2 checkpoint (int8, one fp32 scale per 64)
Rounds alternate the implementations, so a load spell on the shared cores hits all of them; the
ratios are medians of per-round ratios.  Weight bandwidth = the bytes of the matrices a token
streams / seconds per token, against the machine's streaming read bandwidth measured here
(``stream_read`` over 1 GB).  The accuracy lines compare the quantized models' logits with the
float32 model's on the same prompt (teacher-forced over --tokens positions) and their greedy tokens.
"""

from __future__ import annotations

import argparse
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
from pyworkloads import _kernels, quant  # noqa: E402


def export_runq(model, path: Path, group: int = 64) -> None:
    """Our float32 weights in llama2.c's version-2 (Q8_0) checkpoint: a 256-byte header, the norms
    in fp32, then each matrix as int8 values followed by one fp32 scale per ``group`` weights
    (llama2.c's export.py ``version2_export``, written here from its description)."""
    c, w = model.config, model.weights
    L = c.num_hidden_layers

    def q80(name):
        x = np.asarray(w[name], np.float32).reshape(-1, group)
        scale = np.abs(x).max(axis=1) / np.float32(127)
        q = np.round(x / scale[:, None]).astype(np.int8)
        return q.tobytes() + scale.astype(np.float32).tobytes()

    with open(path, "wb") as f:
        f.write(struct.pack("<Ii", 0x616B3432, 2))                        # "ak42", version 2
        f.write(struct.pack("<7i", c.hidden_size, c.intermediate_size, L, c.num_attention_heads,
                            c.num_key_value_heads, c.vocab_size, c.max_position_embeddings))
        f.write(struct.pack("<Bi", int(c.tie_word_embeddings), group))
        f.write(b"\0" * (256 - f.tell()))
        for norm in ("input_layernorm", "post_attention_layernorm"):
            for i in range(L):
                f.write(np.asarray(w[f"model.layers.{i}.{norm}.weight"], np.float32).tobytes())
        f.write(np.asarray(w["model.norm.weight"], np.float32).tobytes())
        f.write(q80("model.embed_tokens.weight"))
        for proj in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                     "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj", "mlp.up_proj"):
            for i in range(L):                                            # w1 = gate, w2 = down
                f.write(q80(f"model.layers.{i}.{proj}.weight"))
        if not c.tie_word_embeddings:
            f.write(q80("lm_head.weight"))


GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
              "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def random_kquant(rng, qtype: str, rows: int, K: int) -> np.ndarray:
    """Valid random blocks: random quants and sub-block scales, float16 super-scales sized so the
    weights have a standard deviation near 0.02, like the float model's."""
    block, size = quant.BLOCKS[qtype]
    b = rng.integers(0, 256, (rows * K // block, size), dtype=np.uint8)
    if qtype == "Q4_K":                         # w = d·sc·q − dmin·mn, sc/mn 0..63, q 0..15
        b[:, 0:2] = np.full((len(b), 1), 0.02 / 32 / 4.5, np.float16).view(np.uint8)
        b[:, 2:4] = np.full((len(b), 1), 0.02 / 32 / 4.5 * 7.5, np.float16).view(np.uint8)
    else:                                       # Q6_K: w = d·sc·(q − 32), sc int8
        b[:, 192:208] = rng.integers(1, 16, (len(b), 16), dtype=np.uint8)
        b[:, 208:210] = np.full((len(b), 1), 0.02 / 8 / 18, np.float16).view(np.uint8)
    return b.reshape(rows, -1)


def write_q4_k_m_gguf(model, path: Path, seed: int = 0) -> None:
    import gguf

    c, w, rng = model.config, model.weights, np.random.default_rng(seed)
    g = gguf.GGUFWriter(str(path), "llama")
    g.add_context_length(c.max_position_embeddings)
    g.add_embedding_length(c.hidden_size)
    g.add_block_count(c.num_hidden_layers)
    g.add_feed_forward_length(c.intermediate_size)
    g.add_head_count(c.num_attention_heads)
    g.add_head_count_kv(c.num_key_value_heads)
    g.add_rope_dimension_count(c.head_dim)
    g.add_layer_norm_rms_eps(c.rms_norm_eps)
    g.add_rope_freq_base(c.rope_theta)
    g.add_vocab_size(c.vocab_size)
    g.add_bos_token_id(c.bos_token_id)
    g.add_eos_token_id(c.eos_token_id)

    def put_quant(name, qtype, rows, K):
        g.add_tensor(name, random_kquant(rng, qtype, rows, K),
                     raw_dtype=gguf.GGMLQuantizationType[qtype])

    put_quant("token_embd.weight", "Q6_K", c.vocab_size, c.hidden_size)
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}"
        g.add_tensor(f"blk.{i}.attn_norm.weight", np.asarray(w[f"{p}.input_layernorm.weight"]))
        g.add_tensor(f"blk.{i}.ffn_norm.weight",
                     np.asarray(w[f"{p}.post_attention_layernorm.weight"]))
        for hf, short in GGUF_NAMES.items():
            rows, K = w[f"{p}.{hf}.weight"].shape
            put_quant(f"blk.{i}.{short}.weight", "Q4_K", rows, K)
    g.add_tensor("output_norm.weight", np.asarray(w["model.norm.weight"]))
    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.write_tensors_to_file()
    g.close()


def matrix_bytes(model) -> int:
    """Bytes of the matrices one decode step streams (the head once; the embedding row is
    negligible)."""
    return sum(v.nbytes if isinstance(v, quant.QuantizedTensor) else np.asarray(v).nbytes
               for k, v in model.weights.items() if len(getattr(v, "shape", ())) == 2)


def decode_seconds(model, n: int) -> float:
    ids = np.array([[1]])
    t = time.perf_counter()
    model.generate(ids, max_new_tokens=n, eos_token_id=None)
    return (time.perf_counter() - t) / n


def runq_seconds(exe: Path, ckpt: Path, tok: Path, n: int) -> float | None:
    env = dict(os.environ, OMP_NUM_THREADS=str(pw.kernels.get_num_threads()))
    out = subprocess.run([str(exe), str(ckpt), "-z", str(tok), "-t", "1.0", "-p", "1.0",
                          "-n", str(n + 1), "-i", "", "-s", "1"],
                         capture_output=True, text=True, env=env)
    hit = re.search(r"achieved tok/s: ([0-9.]+)", out.stderr + out.stdout)
    return 1.0 / float(hit.group(1)) if hit else None


def decode_logits(model, ids: np.ndarray) -> np.ndarray:
    """Logits of every position computed as decode computes them: one token per forward against
    the KV cache (so the quantized GEMVs run, with their int8 activations).  ids [1, T] -> [T, V]"""
    cache = model.new_cache(1, ids.shape[1])
    return np.concatenate([model.forward(ids[:, t:t + 1], cache, last_only=True)[0]
                           for t in range(ids.shape[1])])


def accuracy(models: dict, n: int) -> None:
    """Quantized logits against float32's, teacher-forced on the float model's greedy tokens,
    one decode step per position; and the quantized model's own greedy continuation."""
    ids = models["fp32"].generate(np.array([[1]]), max_new_tokens=n, eos_token_id=None)
    ref = decode_logits(models["fp32"], ids)                              # [T, V]
    for name, m in models.items():
        if name in ("fp32", "q4_k"):                      # q4_k holds other (random) weights
            continue
        got = decode_logits(m, ids)
        err = got - ref
        agree = (got.argmax(-1) == ref.argmax(-1)).mean()
        greedy = m.generate(np.array([[1]]), max_new_tokens=n, eos_token_id=None)
        differ = np.flatnonzero(greedy[0] != ids[0])
        same = f"all {n}" if not len(differ) else f"the first {differ[0] - 1}"
        print(f"  {name}: logits error rms {np.sqrt((err ** 2).mean()):.3g} "
              f"(float32 logits' std {ref.std():.3g}), max {np.abs(err).max():.3g}; "
              f"top-1 agreement {100 * agree:.1f} % of {len(ref)} positions; greedy tokens "
              f"identical for {same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--llama2c", help="llama2.c checkout with runq built and tokenizer.bin")
    ap.add_argument("--isa", help="cpp ISA level (default: the best this CPU runs)")
    args = ap.parse_args()
    if args.isa:
        pw.kernels.set_cpu_isa(args.isa)
    pw.kernels.set_backend("cpp")
    n = args.tokens
    big = np.ones(1 << 28, np.float32)                                    # 1 GB
    gb_s = big.nbytes / min(_kernels.stream_read(big)[0] for _ in range(5)) / 1e9
    del big
    print(f"llama2-110m (stories110M shape), greedy decode of {n} tokens, batch 1, "
          f"{pw.kernels.get_num_threads()} threads, cpp ISA {pw.kernels.get_cpu_isa()}; "
          f"streaming read {gb_s:.1f} GB/s")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        preset = pw.llama2.from_preset("llama2-110m")
        pw.io.save_safetensors(tmp / "model.safetensors",
                               {k: np.asarray(v) for k, v in preset.weights.items()})
        (tmp / "config.json").write_text(json.dumps(preset.config.to_hf()))
        models = {"fp32": pw.llama2.from_pretrained(tmp)}
        for q in ("q8_0", "q4_0"):
            models[q] = pw.llama2.from_pretrained(tmp, quantize=q)
        write_q4_k_m_gguf(preset, tmp / "q4_k_m.gguf")
        models["q4_k"] = pw.llama2.from_pretrained(tmp / "q4_k_m.gguf")
        runs = {}
        if args.llama2c:
            exe, tok = Path(args.llama2c) / "runq", Path(args.llama2c) / "tokenizer.bin"
            if exe.exists() and tok.exists():
                export_runq(models["fp32"], tmp / "runq.bin")
                runs["runq"] = lambda: runq_seconds(exe, tmp / "runq.bin", tok, n)
            else:
                print(f"  runq: skipped ({exe} or {tok} missing)")
        runs = {k: (lambda m=m: decode_seconds(m, n)) for k, m in models.items()} | runs
        for f in runs.values():
            f()                                                           # warm-up
        times = {k: [] for k in runs}
        for _ in range(args.rounds):
            for k, f in runs.items():
                times[k].append(f())
        print(f"  {'model':<6} {'tok/s':>8} {'ms/tok':>8} {'MB/tok':>8} {'GB/s':>7} "
              f"{'of read':>8} {'vs fp32':>8} {'vs runq':>8}")
        for k, ts in times.items():
            t = float(np.median(ts))
            mb = matrix_bytes(models[k]) / 1e6 if k in models else float("nan")
            vs = {b: float(np.median(np.array(times[b]) / np.array(ts))) if b in times else None
                  for b in ("fp32", "runq")}
            fmt = lambda v: f"{v:7.2f}x" if v is not None else f"{'-':>8}"  # noqa: E731
            print(f"  {k:<6} {1 / t:8.1f} {t * 1e3:8.2f} {mb:8.1f} {mb / 1e3 / t:7.1f} "
                  f"{100 * mb / 1e3 / t / gb_s:7.0f}% {fmt(vs['fp32'])} {fmt(vs['runq'])}")
        print("accuracy against float32 (random weights):")
        accuracy(models, n)


if __name__ == "__main__":
    main()
