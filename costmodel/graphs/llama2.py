"""LLaMA 2 as a layer graph: the kernels of one forward pass over ``T`` new tokens with ``past``
tokens already in the KV cache (prefill: past = 0; one decode step: T = 1, past = KV length).

Dimensions come from ``pyworkloads.models.llama2.Config`` (HF field names); names are the HF
module paths, so a record lines up with the checkpoint tensors it reads.
"""
from __future__ import annotations

from ..graph import GraphBuilder


def forward(gb: GraphBuilder, cfg, batch: int, tokens: int, past: int = 0, logits: str = "last") -> None:
    """Emit the records of ``model(ids[B, T])`` continuing a cache of ``past`` tokens.

    logits: "all" computes the vocabulary projection for every position (what ``model(ids)``
    returns), "last" only for the last one (what generation needs, and HF's ``logits_to_keep=1``)."""
    D, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    H, KVH = cfg.num_attention_heads, cfg.num_key_value_heads
    Dh = cfg.head_dim or D // H
    N = batch * tokens                                                  # rows of every GEMM
    ab, mb = cfg.attention_bias, cfg.mlp_bias
    gb.embedding("model.embed_tokens", N, D)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}"
        gb.norm(f"{p}.input_layernorm", "rms_norm", N, D)
        gb.linear(f"{p}.self_attn.q_proj", N, D, H * Dh, ab, parallel="col")
        gb.linear(f"{p}.self_attn.k_proj", N, D, KVH * Dh, ab, parallel="col")
        gb.linear(f"{p}.self_attn.v_proj", N, D, KVH * Dh, ab, parallel="col")
        # RoPE on q and k: 2 multiplies + 1 add per output element
        gb.elementwise(f"{p}.self_attn.rotary_emb", N * (H + KVH) * Dh // gb.tp, 3, what="rope q,k")
        gb.attention(f"{p}.self_attn", batch, H, KVH, tokens, past + tokens, Dh, causal=True,
                     kv_cache="cache", new_kv=tokens)
        gb.linear(f"{p}.self_attn.o_proj", N, H * Dh, D, ab, parallel="row")
        gb.elementwise(f"{p}.residual_attn", N * D, 1, inputs=2, what="residual add")
        gb.norm(f"{p}.post_attention_layernorm", "rms_norm", N, D)
        gb.linear(f"{p}.mlp.gate_proj", N, D, F, mb, parallel="col")
        gb.linear(f"{p}.mlp.up_proj", N, D, F, mb, parallel="col")
        gb.activation(f"{p}.mlp.act_fn", cfg.hidden_act, N * F // gb.tp, gated=True)
        gb.linear(f"{p}.mlp.down_proj", N, F, D, mb, parallel="row")
        gb.elementwise(f"{p}.residual_mlp", N * D, 1, inputs=2, what="residual add")
    rows = N if logits == "all" else batch
    gb.norm("model.norm", "rms_norm", rows, D)
    gb.linear("lm_head", rows, D, V, False, parallel="col")


def kv_cache_bytes(cfg, batch: int, length: int, kv_bytes: float, tp: int = 1) -> float:
    """Keys and values of every layer for ``length`` positions (per device under tensor parallelism)."""
    Dh = cfg.head_dim or cfg.hidden_size // cfg.num_attention_heads
    kvh = max(cfg.num_key_value_heads // tp, 1)
    return 2 * cfg.num_hidden_layers * batch * kvh * length * Dh * kv_bytes


def count_params(cfg) -> int:
    """An independent derivation of the parameter count from the config (no weight table)."""
    D, F, V, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    Dh = cfg.head_dim or D // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * Dh, cfg.num_key_value_heads * Dh
    attn = D * q + 2 * D * kv + q * D + (q + 2 * kv + D if cfg.attention_bias else 0)
    mlp = 3 * D * F + (2 * F + D if cfg.mlp_bias else 0)
    head = 0 if cfg.tie_word_embeddings else V * D
    return V * D + L * (attn + mlp + 2 * D) + D + head
