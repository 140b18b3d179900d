"""Whisper as a layer graph: the audio encoder (once per 30-s window: two convolutions over the
log-mel frames, then a transformer over ``max_source_positions`` = 1500 frames) and the text
decoder (causal self-attention whose KV cache grows per step; cross-attention whose K/V are
projected from the encoder output once and re-read at every step).  Dimensions come from
``pyworkloads.models.whisper.Config`` (HF WhisperConfig field names)."""
from __future__ import annotations

from ..graph import GraphBuilder


def frames(cfg) -> int:
    """Encoder output length (1500 for every released checkpoint: 3000 mel frames, stride 2)."""
    return cfg.max_source_positions


def encoder(gb: GraphBuilder, cfg, batch: int) -> None:
    """``encoder(input_features[B, n_mels, 2·S])`` -> [B, S, D] with S = max_source_positions."""
    D, F, H = cfg.d_model, cfg.encoder_ffn_dim, cfg.encoder_attention_heads
    S = frames(cfg)
    n = batch * S
    act = cfg.activation_function
    e = "model.encoder"
    gb.conv1d(f"{e}.conv1", batch, cfg.num_mel_bins, D, 3, 2 * S, 2 * S, bias=True)
    gb.activation(f"{e}.conv1.act", act, batch * D * 2 * S)
    gb.conv1d(f"{e}.conv2", batch, D, D, 3, 2 * S, S, bias=True)
    gb.activation(f"{e}.conv2.act", act, n * D)
    gb.elementwise(f"{e}.embed_positions", n * D, 1, inputs=2, what="position add")
    for i in range(cfg.encoder_layers):
        p = f"{e}.layers.{i}"
        gb.norm(f"{p}.self_attn_layer_norm", "layer_norm", n, D)
        gb.linear(f"{p}.self_attn.q_proj", n, D, D, True, parallel="col")
        gb.linear(f"{p}.self_attn.k_proj", n, D, D, False, parallel="col")
        gb.linear(f"{p}.self_attn.v_proj", n, D, D, True, parallel="col")
        gb.attention(f"{p}.self_attn", batch, H, H, S, S, D // H)
        gb.linear(f"{p}.self_attn.out_proj", n, D, D, True, parallel="row")
        gb.elementwise(f"{p}.residual_attn", n * D, 1, inputs=2, what="residual add")
        gb.norm(f"{p}.final_layer_norm", "layer_norm", n, D)
        gb.linear(f"{p}.fc1", n, D, F, True, parallel="col")
        gb.activation(f"{p}.activation_fn", act, n * F // gb.tp)
        gb.linear(f"{p}.fc2", n, F, D, True, parallel="row")
        gb.elementwise(f"{p}.residual_mlp", n * D, 1, inputs=2, what="residual add")
    gb.norm(f"{e}.layer_norm", "layer_norm", n, D)


def decoder(gb: GraphBuilder, cfg, batch: int, tokens: int, past: int = 0, cross: str = "compute",
            logits: str = "last") -> None:
    """``decoder(ids[B, T], encoder_out)`` continuing ``past`` cached tokens.

    cross: "compute" projects the encoder output to cross-attention K/V (and writes them to the
    cross cache) -- the first decoder call of a window; "cached" re-reads them (every later step).
    logits: "all" positions or only the "last"."""
    D, F, H = cfg.d_model, cfg.decoder_ffn_dim, cfg.decoder_attention_heads
    S, V = frames(cfg), cfg.vocab_size
    n = batch * tokens
    act = cfg.activation_function
    d = "model.decoder"
    gb.embedding(f"{d}.embed_tokens", n, D)
    gb.elementwise(f"{d}.embed_positions", n * D, 1, inputs=2, what="position add")
    for i in range(cfg.decoder_layers):
        p = f"{d}.layers.{i}"
        gb.norm(f"{p}.self_attn_layer_norm", "layer_norm", n, D)
        gb.linear(f"{p}.self_attn.q_proj", n, D, D, True, parallel="col")
        gb.linear(f"{p}.self_attn.k_proj", n, D, D, False, parallel="col")
        gb.linear(f"{p}.self_attn.v_proj", n, D, D, True, parallel="col")
        gb.attention(f"{p}.self_attn", batch, H, H, tokens, past + tokens, D // H, causal=True,
                     kv_cache="cache", new_kv=tokens)
        gb.linear(f"{p}.self_attn.out_proj", n, D, D, True, parallel="row")
        gb.elementwise(f"{p}.residual_attn", n * D, 1, inputs=2, what="residual add")
        gb.norm(f"{p}.encoder_attn_layer_norm", "layer_norm", n, D)
        gb.linear(f"{p}.encoder_attn.q_proj", n, D, D, True, parallel="col")
        if cross == "compute":
            gb.linear(f"{p}.encoder_attn.k_proj", batch * S, D, D, False, parallel="col")
            gb.linear(f"{p}.encoder_attn.v_proj", batch * S, D, D, True, parallel="col")
        elif cross != "cached":
            raise ValueError(f"cross must be 'compute' or 'cached', got {cross!r}")
        gb.attention(f"{p}.encoder_attn", batch, H, H, tokens, S, D // H, kv_cache="cross",
                     new_kv=S if cross == "compute" else 0)
        gb.linear(f"{p}.encoder_attn.out_proj", n, D, D, True, parallel="row")
        gb.elementwise(f"{p}.residual_cross", n * D, 1, inputs=2, what="residual add")
        gb.norm(f"{p}.final_layer_norm", "layer_norm", n, D)
        gb.linear(f"{p}.fc1", n, D, F, True, parallel="col")
        gb.activation(f"{p}.activation_fn", act, n * F // gb.tp)
        gb.linear(f"{p}.fc2", n, F, D, True, parallel="row")
        gb.elementwise(f"{p}.residual_mlp", n * D, 1, inputs=2, what="residual add")
    rows = n if logits == "all" else batch
    gb.norm(f"{d}.layer_norm", "layer_norm", rows, D)
    gb.linear("proj_out", rows, D, V, False, parallel="col")


def kv_cache_bytes(cfg, batch: int, length: int, kv_bytes: float, tp: int = 1) -> float:
    """Self-attention cache for ``length`` tokens plus the cross-attention K/V of the window."""
    per_tok = 2 * cfg.decoder_layers * batch * cfg.d_model // tp * kv_bytes
    return per_tok * (length + frames(cfg))


def count_params(cfg) -> int:
    """Parameter count from the config (proj_out tied to embed_tokens; positional tables counted,
    as ``WhisperForConditionalGeneration.parameters()`` does)."""
    D, M = cfg.d_model, cfg.num_mel_bins
    def attn():
        return 4 * D * D + 3 * D
    def ffn(f):
        return 2 * D * f + f + D
    enc = M * D * 3 + D + D * D * 3 + D + cfg.max_source_positions * D
    enc += cfg.encoder_layers * (attn() + ffn(cfg.encoder_ffn_dim) + 4 * D) + 2 * D
    dec = cfg.vocab_size * D + cfg.max_target_positions * D
    dec += cfg.decoder_layers * (2 * attn() + ffn(cfg.decoder_ffn_dim) + 6 * D) + 2 * D
    return enc + dec
