"""The hooks of ``pyworkloads demo`` and ``pyworkloads run llama2``."""
from __future__ import annotations

import re
import sys
import time

import numpy as np

from ... import kernels
from .api import QUANTIZE, check_input_ids, from_preset
from .chat import chat_prompt
from .generate import TextStream
from .hf import from_pretrained
from .model import PRESETS, ROPE_LAYOUTS, Config

__all__ = ["demo", "add_run_arguments", "run_cli", "preset_prompt_ids"]

BYTE_OFFSET = 3     # LLaMA's sentencepiece vocabulary: <unk> <s> </s>, then <0x00> .. <0xFF>


def preset_prompt_ids(prompt: str, config: Config) -> np.ndarray:
    """A prompt for a random-weight preset, which has no tokenizer: "1 450 4996" (ids, spaces or
    commas) is taken as ids; any other text becomes BOS + its UTF-8 bytes as LLaMA's
    byte-fallback tokens (id 3 + byte).  -> int64 [1, T]."""
    if re.fullmatch(r"\s*\d+(?:[\s,]+\d+)*\s*", prompt):
        ids = [int(t) for t in re.split(r"[\s,]+", prompt.strip())]
    else:
        ids = [config.bos_token_id or 1] + [BYTE_OFFSET + b for b in prompt.encode("utf-8")]
    return check_input_ids(np.asarray([ids]), config, config.max_position_embeddings)


def demo() -> str:
    """Greedy-generate 8 tokens with the random-weight llama2-tiny preset on the current backend."""
    m = from_preset("llama2-tiny", seed=0)
    ids = preset_prompt_ids("Hello", m.config)
    t0 = time.perf_counter()
    logits = m(ids)
    out = m.generate(ids, max_new_tokens=8, eos_token_id=None)
    dt = time.perf_counter() - t0
    return (f"llama2-tiny ({m.num_parameters / 1e6:.2f}M params, random weights, backend "
            f"{kernels.get_backend()}): input_ids {list(ids.shape)} -> logits "
            f"{list(logits.shape)}; greedy ids {out[0, ids.shape[1]:].tolist()} ({dt:.2f} s)")


def add_run_arguments(parser) -> None:
    """Arguments of ``pyworkloads run llama2``."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="PATH", help="Hugging Face checkpoint directory "
                     "(config.json, *.safetensors, tokenizer.json) or a llama.cpp .gguf file")
    src.add_argument("--preset", choices=list(PRESETS), help="random weights in a preset's "
                     "shapes; --prompt is then token ids ('1 450 4996') or text taken as UTF-8 "
                     "byte tokens, and ids are printed")
    parser.add_argument("--prompt", default="Once upon a time", help="the text to continue")
    parser.add_argument("--chat", action="store_true",
                        help="wrap the prompt in the LLaMA-2-chat format ([INST] ... [/INST])")
    parser.add_argument("--system", default=None, help="system prompt for --chat")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quantize", choices=QUANTIZE, default=None,
                        help="block-quantize the float weight matrices on load (llama.cpp's "
                        "formats; the cpp backend decodes them in its kernels)")
    parser.add_argument("--rope-layout", choices=ROPE_LAYOUTS, default=None,
                        help="'interleaved' for weights in Meta's original q/k layout (default: "
                        "the checkpoint's own -- 'half' for Hugging Face, 'interleaved' for GGUF)")


def _model_and_prompt(args):
    """The model and the prompt ids [1, T] that ``args`` ask for."""
    if args.model:
        m = from_pretrained(args.model, rope_layout=args.rope_layout, quantize=args.quantize)
    else:
        m = from_preset(args.preset, seed=args.seed, quantize=args.quantize)
        m.rope_layout = args.rope_layout or "half"
    prompt = args.prompt
    if args.chat:
        system = [{"role": "system", "content": args.system}] if args.system else []
        prompt = chat_prompt(system + [{"role": "user", "content": prompt}])
    if m.tokenizer is not None:
        return m, m.encode(prompt, add_special_tokens=not args.chat)
    if args.model:
        where = ("no tokenizer in its metadata" if str(args.model).lower().endswith(".gguf")
                 else "no tokenizer.json")
        raise ValueError(f"{args.model} has {where} to encode the prompt with")
    return m, preset_prompt_ids(prompt, m.config)


def run_cli(args) -> int:
    """Stream the completion to stdout as it is generated, then the prefill / decode rates."""
    out = sys.stdout
    try:
        m, ids = _model_and_prompt(args)
        stream = m.generate_stream(ids, args.max_new_tokens, args.temperature, args.top_k,
                                   args.top_p, args.seed)
        detok = TextStream(m.tokenizer) if m.tokenizer is not None else None
        t0 = time.perf_counter()
        first, new = None, []
        for tok in stream:
            tok = int(tok[0])
            if first is None:
                first = time.perf_counter()
            if tok in m.config.eos_ids:
                break
            new.append(tok)
            print(detok.push(tok) if detok else f"{tok} ", end="", file=out, flush=True)
        end = time.perf_counter()
        if detok:
            print(detok.flush(), end="", file=out)
    except Exception as exc:             # one line on stderr (PYWORKLOADS_DEBUG=1: the traceback)
        from ...cli import report_error
        return report_error(exc)
    T = ids.shape[1]
    prefill = (first - t0) if first else float("nan")
    n_dec = max(len(new) - 1, 0)
    decode_rate = n_dec / (end - first) if first and n_dec else float("nan")
    print(f"\n[{T} prompt tokens, {len(new)} generated | prefill {T / prefill:.1f} tokens/s, "
          f"decode {decode_rate:.1f} tokens/s, backend {kernels.get_backend()}]", file=out)
    return 0
