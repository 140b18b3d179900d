"""llama.cpp's block formats as cost-model weight dtypes, and its Q4_K_M recipe.

A GGUF matrix stores each row of K weights as K / Bk blocks of a fixed size
(:mod:`pyworkloads.quant` describes them; its ``BLOCKS`` table is the one description of their
sizes, read here, never re-typed).  A weight GEMM streams the blocks, scales included, so an
n-weight matrix costs exactly ``n / Bk · bytes per block``: a 4096 x 4096 Q4_K matrix is
4096 · 4096 / 256 · 144 bytes.  A row that is not a whole number of blocks cannot be stored in a
format; the engine then keeps the matrix as a float (``pyworkloads.llama2.quantize_weights``),
and so does the cost model (at the activation dtype).

"q4_k_m" is not a format but llama.cpp's per-tensor recipe of the Q4_K_M file type, resolved for
a model's config by :func:`q4_k_m`.
"""
from __future__ import annotations

from pyworkloads.quant import BLOCKS as _BLOCKS

__all__ = ["FORMATS", "MIXES", "block_bytes", "q4_k_m", "resolve_mix"]

# cost-model name ("q4_k") -> (weights per block, bytes per block), from pyworkloads.quant
FORMATS: dict[str, tuple[int, int]] = {name.lower(): blk for name, blk in _BLOCKS.items()}
MIXES = ("q4_k_m",)


def block_bytes(dtype: str, n: int) -> int:
    """Exact bytes of ``n`` weights stored in format ``dtype`` (whole blocks only)."""
    block, size = FORMATS[dtype]
    if n % block:
        raise ValueError(f"{n} weights are not a whole number of {dtype} blocks of {block}")
    return n // block * size


# ---------------------------------------------------------------------------------------------
# Q4_K_M on LLaMA
# ---------------------------------------------------------------------------------------------
# llama.cpp, src/llama-quant.cpp (ggml-org/llama.cpp, read at commit 007dbbf3), for file type
# LLAMA_FTYPE_MOSTLY_Q4_K_M, whose default tensor type is Q4_K (llama_ftype_get_default_type):
#   * llama_tensor_get_type_impl, category OUTPUT (or TOKEN_EMBD when the model has no
#     output.weight -- tied embeddings): Q8_0 when ne[0] (K) % Q4_K's block != 0, else Q6_K.
#   * ATTENTION_V: Q6_K if use_more_bits(i_attention_wv, n_attention_wv); then, for
#     qs.model.type == LLM_TYPE_70B, Q3_K/Q4_K become Q5_K.
#   * FFN_DOWN (not Falcon): Q6_K if use_more_bits(i_layer, n_layer).
#   * use_more_bits(i, n) = i < n/8 || i >= 7*n/8 || (i - n/8) % 3 == 2 (C integer division):
#     the first and last eighth of the layers and every third one between -- half of them.
#   * every other matrix (token_embd when untied, attn_q/k/output, ffn_gate/up) keeps Q4_K; the
#     MoE (n_expert == 8) and ATTENTION_QKV rules do not apply to LLaMA 2.
#   * tensor_type_fallback: a row whose ncols is not a multiple of the type's block falls back,
#     Q4_K -> Q5_0 and Q6_K -> Q8_0, and to F16 when even that block does not divide it.
# The counters i_attention_wv / i_ffn_down count tensors in the loader's order, which sorts
# weights by layer number (llama_model_loader's weight_name_comparer): they are the layer index.
# LLM_TYPE_70B is LLaMA's 80-layer model with fewer KV heads than heads (llama-model.cpp:
# `case 80: type = n_head() == n_head_kv() ? LLM_TYPE_65B : LLM_TYPE_70B`).
_FALLBACK = {"q4_k": "q5_0", "q6_k": "q8_0"}


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _fallback(dtype: str, k: int, name: str) -> str:
    """tensor_type_fallback: the type a row of ``k`` weights can be stored in."""
    if k % FORMATS[dtype][0] == 0:
        return dtype
    alt = _FALLBACK.get(dtype)
    if alt is None:                                      # llama.cpp throws here too
        raise ValueError(f"q4_k_m: {name} has rows of {k} weights, not a whole number of "
                         f"{dtype.upper()} blocks, and llama.cpp defines no fallback for it")
    if alt not in FORMATS:
        raise ValueError(f"q4_k_m: {name} has rows of {k} weights, which llama.cpp stores as "
                         f"{alt.upper()} (its fallback for {dtype.upper()}), a format the cost "
                         f"model does not describe (it knows {', '.join(FORMATS)})")
    return alt if k % FORMATS[alt][0] == 0 else "fp16"


def q4_k_m(cfg) -> tuple[tuple[str, str], ...]:
    """llama.cpp's Q4_K_M storage type of every matrix of a LLaMA 2 config, as (module name,
    dtype) pairs -- the modules the cost model's records are named after.  Refuses what it
    cannot describe exactly: a tensor llama.cpp would store in a format outside
    :data:`FORMATS` (Q5_K under the 70B rule, Q5_0 as the fallback of a row that is not a whole
    number of 256-weight blocks)."""
    from pyworkloads.models import llama2
    if not isinstance(cfg, llama2.Config):
        family = type(cfg).__module__.split(".")[2:3] or [type(cfg).__name__]
        raise ValueError(f"weights 'q4_k_m' is llama.cpp's recipe for LLaMA; it does not apply "
                         f"to a {family[0]} model")
    n = cfg.num_hidden_layers
    is_70b = n == 80 and cfg.num_attention_heads != cfg.num_key_value_heads
    out: dict[str, str] = {}
    for tensor, shape in llama2.weight_shapes(cfg).items():
        if len(shape) != 2:
            continue                                     # norms stay float
        module, k = tensor.removesuffix(".weight"), shape[1]
        parts = module.split(".")
        if module == "lm_head" or (module == "model.embed_tokens" and cfg.tie_word_embeddings):
            # the output rule (token_embd takes it when there is no output.weight)
            dt = "q8_0" if k % FORMATS["q4_k"][0] else "q6_k"
        elif parts[-1] == "v_proj" and _use_more_bits(int(parts[2]), n):
            dt = "q6_k"
        elif parts[-1] == "v_proj" and is_70b:
            raise ValueError("q4_k_m: llama.cpp stores a 70B LLaMA's attn_v at Q5_K (its 70B "
                             "rule), a format the cost model does not describe (it knows "
                             f"{', '.join(FORMATS)})")
        elif parts[-1] == "down_proj" and _use_more_bits(int(parts[2]), n):
            dt = "q6_k"
        else:
            dt = "q4_k"
        out[module] = _fallback(dt, k, module)
    return tuple(out.items())        # a tied head reads the table: its entry is the table's


def resolve_mix(mix: str, cfg) -> tuple[tuple[str, str], ...]:
    """The per-module dtypes of recipe ``mix`` for a model config."""
    if mix == "q4_k_m":
        return q4_k_m(cfg)
    raise ValueError(f"unknown weight recipe {mix!r}; known: {', '.join(MIXES)}")
