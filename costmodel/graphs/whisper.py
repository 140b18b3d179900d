"""Whisper workloads: the engine's ``whisper.encoder`` (once per 30-s window), its
``cross_attention_kv`` (the decoder layers' keys and values of the audio, projected once per
window) and ``whisper.decoder`` (causal self-attention over a growing KV cache, cross-attention
re-reading the stored audio K/V at every step), traced shape-only.

Phases: "prefill" (the encoder, then the cross-attention K/V and the decoder over seq_len prompt
tokens), "decode" (one decoder step at self-attention KV length seq_len, re-reading the stored
cross-attention K/V), "generate" (prefill + new_tokens - 1 decode steps)."""
from __future__ import annotations

import numpy as np

from pyworkloads.kernels import trace
from pyworkloads.kernels.tracing import Source, Traced, kv_zeros, traced_weights
from pyworkloads.models import whisper

from ..analysis import generation, seconds
from ..engine import TensorParallel

PHASES = ("prefill", "decode", "generate")
DEFAULT_PHASE = "generate"
TP = TensorParallel(col=("q_proj", "k_proj", "v_proj", "fc1", "proj_out"),
                    row=("out_proj", "fc2"), sharded=("self_attn", "encoder_attn", "fc1"))


def _head_dim(cfg) -> int:
    return cfg.d_model // cfg.decoder_attention_heads


def _cache(cfg, batch: int, capacity: int):
    return whisper.decoder_cache(cfg, batch, capacity, zeros=kv_zeros())


def encoder_trace(cfg, batch: int):
    """``encoder(input_features[B, Mel, 2S])`` -> audio features [B, S, D], once per window."""
    with trace() as tr:
        whisper.encoder(Traced((batch, cfg.num_mel_bins, 2 * cfg.max_source_positions)),
                        traced_weights(whisper.weight_shapes(cfg)), cfg)
    return tr


def _stored_cross_kv(cfg, batch: int) -> list:
    shape = (batch, cfg.decoder_attention_heads, cfg.max_source_positions, _head_dim(cfg))
    return [tuple(Traced(shape,
                         source=Source("cross", f"model.decoder.layers.{i}.encoder_attn", shape))
                  for _ in "kv") for i in range(cfg.decoder_layers)]


def decoder_trace(cfg, batch: int, tokens: int, past: int = 0, logits: str = "last",
                  first: bool = True):
    """``decoder(ids[B, T])`` after ``past`` cached tokens.  The ``first`` call of a window
    projects the audio features to every layer's cross-attention K/V (``cross_attention_kv``);
    later steps re-read them from where they are stored."""
    weights = traced_weights(whisper.weight_shapes(cfg))
    cache = _cache(cfg, batch, past + tokens)
    cache.advance(past)
    ids = np.broadcast_to(np.int64(0), (batch, tokens))     # token ids: no memory per token
    with trace() as tr:
        if first:
            audio = Traced((batch, cfg.max_source_positions, cfg.d_model))
            cross = whisper.cross_attention_kv(audio, weights, cfg)
        else:
            cross = _stored_cross_kv(cfg, batch)
        whisper.decoder(ids, cross, weights, cfg, cache=cache, last_only=logits == "last")
    return tr


def kv_cache_bytes(cfg, batch: int, length: int, kv_bytes: float, tp: int = 1) -> float:
    """The self-attention cache at ``length`` tokens plus the stored cross-attention K/V."""
    cache = _cache(cfg, batch, length)
    self_attn = sum(t.size for t in cache.k + cache.v)
    cross = 2 * cfg.decoder_layers * batch * cfg.max_source_positions * cfg.d_model
    return (self_attn + cross) / tp * kv_bytes


def analyze(w, phase: str, *, batch: int, seq_len, new_tokens, logits: str, **_):
    cfg = w.cfg

    def prefill(T):
        return (w.layers(encoder_trace(cfg, batch), "encoder")
                + w.layers(decoder_trace(cfg, batch, T, 0, logits), "prefill"))

    # defaults: the prompt <|startoftranscript|><|lang|><|task|><|notimestamps|>, then about
    # 100 tokens for 30 s of speech
    layers, summary, kv_len, used = generation(
        w, phase, seq_len, new_tokens, logits, cfg.max_target_positions, (4, 100), prefill,
        decode=lambda kv, step: w.layers(decoder_trace(cfg, batch, 1, kv - 1, "last", first=False),
                                         "decode", step))
    if phase != "decode":
        summary["encoder_s"] = seconds(r for r in layers if r.phase == "encoder")
    return layers, summary, kv_cache_bytes(cfg, batch, kv_len, w.precision.kv_bytes, w.tp), used
