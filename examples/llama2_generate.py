"""Generate text with LLaMA 2: tokenize a prompt, look at the next-token distribution, then
greedy-decode with the KV cache.

    python examples/llama2_generate.py                                  # tiny committed checkpoint
    python examples/llama2_generate.py --model ~/models/Llama-2-7b-hf \\
        --prompt "The capital of France is"
    python examples/llama2_generate.py --preset llama2-110m --backend cpp   # random weights,
                                                                            # real shapes

With no --model the script loads tests/fixtures/llama2/: two layers, random weights and a
320-token tokenizer, so the text it writes is noise -- but the token ids are the ones
transformers' greedy ``generate()`` gives for the same files (tests/test_examples.py checks it).
A --model directory is a Hugging Face checkpoint: config.json, *.safetensors, tokenizer.json.
(From a source checkout without ``pip install .``, run with PYTHONPATH=. )
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

import pyworkloads as pw

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "llama2"
BYTE_OFFSET = 3      # LLaMA's vocabulary: <unk> <s> </s>, then the byte tokens <0x00>..<0xFF>


def prompt_ids(m, prompt: str) -> np.ndarray:
    """The prompt as int64 [1, T].  A checkpoint's tokenizer adds <s>; a random-weight preset has
    no tokenizer, so it gets <s> + the prompt's UTF-8 bytes as LLaMA's byte-fallback tokens."""
    if m.tokenizer is not None:
        return m.encode(prompt)
    return np.array([[m.config.bos_token_id] + [BYTE_OFFSET + b for b in prompt.encode("utf-8")]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="DIR", help="Hugging Face LLaMA checkpoint directory")
    src.add_argument("--preset", choices=list(pw.llama2.PRESETS),
                     help="random weights in a preset's shapes")
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--backend", default="numpy", choices=pw.available(), help="kernel backend")
    args = ap.parse_args()

    if args.preset:
        m = pw.llama2.from_preset(args.preset, seed=0)
        source = f"preset {args.preset} (random weights)"
    else:
        model_dir = args.model or FIXTURE
        m = pw.llama2.from_pretrained(model_dir)
        source = str(model_dir) + ("" if args.model
                                   else " (tiny committed checkpoint, random weights)")
    c = m.config
    print(f"model: {source}: {m.num_parameters / 1e6:.2f}M parameters, "
          f"{c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} query / "
          f"{c.num_key_value_heads} key-value heads")

    ids = prompt_ids(m, args.prompt)                                   # [1, T]
    print(f"prompt: {args.prompt!r} -> input_ids {ids[0].tolist()}")

    with pw.use_backend(args.backend):
        # one forward pass: a score for every vocabulary entry at every position
        logits = m(ids)                                                # [1, T, V]
        top = np.argsort(-logits[0, -1])[:5]
        names = [m.decode([t]) if m.tokenizer else str(t) for t in top]
        print(f"logits {list(logits.shape)}; most likely next tokens: "
              + ", ".join(f"{n!r} ({t})" for n, t in zip(names, top.tolist())))

        # generate = one prefill pass over the prompt, then one single-token pass per new token,
        # each reading the keys and values of all earlier tokens from the KV cache
        t0 = time.perf_counter()
        out = m.generate(ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                         seed=0)
        dt = time.perf_counter() - t0
    new = out[0, ids.shape[1]:]                                        # [n]
    print(f"generated ids: {new.tolist()}")
    if m.tokenizer is not None:
        print(f"text: {args.prompt + m.decode(new)!r}")
    print(f"{len(new)} tokens in {dt:.2f} s ({len(new) / dt:.1f} tokens/s, backend {args.backend})")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, TypeError, FileNotFoundError, MemoryError) as exc:
        sys.exit(f"error: {exc}")
