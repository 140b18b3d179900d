"""LLaMA 2 workloads: the engine's ``llama2.forward`` traced over ``T`` new tokens with ``past``
tokens already in the KV cache (prefill: past = 0; one decode step: T = 1, past = KV length - 1).

Phases: "prefill" (batch x seq_len prompt tokens), "decode" (one token against a KV cache of
seq_len keys, the new one included), "generate" (prefill of seq_len tokens, then new_tokens - 1
decode steps, each at its own KV length)."""
from __future__ import annotations

import numpy as np

from pyworkloads.kernels import trace
from pyworkloads.kernels.tracing import kv_zeros, traced_weights
from pyworkloads.models import llama2
from pyworkloads.models.common import KVCache

from ..analysis import generation
from ..engine import TensorParallel

PHASES = ("prefill", "decode", "generate")
DEFAULT_PHASE = "decode"
# Megatron: q/k/v, gate/up and the vocabulary projection split their outputs, o/down their inputs
TP = TensorParallel(col=("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "lm_head"),
                    row=("o_proj", "down_proj"), sharded=("self_attn", "mlp"))


def _cache(cfg, batch: int, capacity: int) -> KVCache:
    return KVCache(cfg.num_hidden_layers, batch, cfg.num_key_value_heads, cfg.head_dim, capacity,
                   zeros=kv_zeros())


def forward_trace(cfg, batch: int, tokens: int, past: int = 0, logits: str = "last"):
    """The trace of ``forward(ids[B, T])`` continuing a KV cache that holds ``past`` tokens.

    logits: "all" computes the vocabulary projection for every position (what ``model(ids)``
    returns), "last" only for the last one (what generation needs)."""
    cache = _cache(cfg, batch, past + tokens)
    cache.advance(past)
    ids = np.broadcast_to(np.int64(0), (batch, tokens))     # token ids: no memory per token
    with trace() as tr:
        llama2.forward(ids, traced_weights(llama2.weight_shapes(cfg)), cfg, cache=cache,
                       last_only=logits == "last")
    return tr


def kv_cache_bytes(cfg, batch: int, length: int, kv_bytes: float, tp: int = 1) -> float:
    """Keys and values of every layer for ``length`` positions (per device under tensor
    parallelism: KV heads split, or replicated when there are fewer than devices)."""
    cache = _cache(cfg, batch, length)
    elems = sum(t.size for t in cache.k + cache.v)
    kvh = cfg.num_key_value_heads
    return elems * max(kvh // tp, 1) / kvh * kv_bytes


def analyze(w, phase: str, *, batch: int, seq_len, new_tokens, logits: str, **_):
    cfg = w.cfg
    layers, summary, kv_len, used = generation(
        w, phase, seq_len, new_tokens, logits, cfg.max_position_embeddings, defaults=(512, 128),
        prefill=lambda T: w.layers(forward_trace(cfg, batch, T, 0, logits), "prefill"),
        decode=lambda kv, step: w.layers(forward_trace(cfg, batch, 1, kv - 1, "last"), "decode",
                                         step))
    return layers, summary, kv_cache_bytes(cfg, batch, kv_len, w.precision.kv_bytes, w.tp), used
