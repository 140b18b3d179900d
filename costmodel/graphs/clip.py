"""CLIP as a layer graph: the image tower, the text tower and the similarity matrix, each with
its own batch size.  Dimensions come from ``pyworkloads.models.clip.Config`` (HF CLIPConfig with
``text_config`` / ``vision_config``)."""
from __future__ import annotations

from ..graph import GraphBuilder


def _encoder(gb: GraphBuilder, prefix: str, cfg, batch: int, tokens: int, causal: bool) -> None:
    D, I, H = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads
    N = batch * tokens
    for i in range(cfg.num_hidden_layers):
        p = f"{prefix}.encoder.layers.{i}"
        gb.norm(f"{p}.layer_norm1", "layer_norm", N, D)
        for proj in ("q_proj", "k_proj", "v_proj"):
            gb.linear(f"{p}.self_attn.{proj}", N, D, D, True, parallel="col")
        gb.attention(f"{p}.self_attn", batch, H, H, tokens, tokens, D // H, causal=causal)
        gb.linear(f"{p}.self_attn.out_proj", N, D, D, True, parallel="row")
        gb.elementwise(f"{p}.residual_attn", N * D, 1, inputs=2, what="residual add")
        gb.norm(f"{p}.layer_norm2", "layer_norm", N, D)
        gb.linear(f"{p}.mlp.fc1", N, D, I, True, parallel="col")
        gb.activation(f"{p}.mlp.activation_fn", cfg.hidden_act, N * I // gb.tp)
        gb.linear(f"{p}.mlp.fc2", N, I, D, True, parallel="row")
        gb.elementwise(f"{p}.residual_mlp", N * D, 1, inputs=2, what="residual add")


def image_tower(gb: GraphBuilder, cfg, batch: int) -> None:
    """``get_image_features(pixel_values[B, 3, S, S])``: patch conv, class token, ViT, post-LN on
    the class token, projection."""
    v = cfg.vision_config
    D, G = v.hidden_size, v.image_size // v.patch_size
    T = G * G + 1
    gb.conv2d("vision_model.embeddings.patch_embedding", batch, v.num_channels, D, (v.patch_size, v.patch_size),
              (v.image_size, v.image_size), (G, G), bias=False)
    gb.elementwise("vision_model.embeddings.position_embedding", batch * T * D, 1, inputs=2, what="position add")
    gb.norm("vision_model.pre_layrnorm", "layer_norm", batch * T, D)
    _encoder(gb, "vision_model", v, batch, T, causal=False)
    gb.norm("vision_model.post_layernorm", "layer_norm", batch, D)
    gb.linear("visual_projection", batch, D, cfg.projection_dim, False)


def text_tower(gb: GraphBuilder, cfg, batch: int, tokens: int | None = None) -> None:
    """``get_text_features(input_ids[B, T])``: causal transformer, final LN over all tokens, pool
    the end-of-text state, projection.  T defaults to the context length (77)."""
    t = cfg.text_config
    T = tokens or t.max_position_embeddings
    D = t.hidden_size
    gb.embedding("text_model.embeddings.token_embedding", batch * T, D)
    gb.elementwise("text_model.embeddings.position_embedding", batch * T * D, 1, inputs=2, what="position add")
    _encoder(gb, "text_model", t, batch, T, causal=True)
    gb.norm("text_model.final_layer_norm", "layer_norm", batch * T, D)
    gb.linear("text_projection", batch, D, cfg.projection_dim, False)


def similarity(gb: GraphBuilder, cfg, image_batch: int, text_batch: int) -> None:
    """L2-normalise both embeddings, then logit_scale · text @ imageᵀ -> [Bt, Bi]."""
    E = cfg.projection_dim
    gb.elementwise("normalize", (image_batch + text_batch) * E, 3, what="L2 normalise")
    gb.matmul("logits_per_text", 1, text_batch, E, image_batch)
    gb.elementwise("logit_scale", image_batch * text_batch, 1, what="scale")


def image_tokens(cfg) -> int:
    v = cfg.vision_config
    return (v.image_size // v.patch_size) ** 2 + 1


def count_params(cfg) -> int:
    """Parameter count derived from the config alone."""
    def tower(c):
        D, I = c.hidden_size, c.intermediate_size
        return c.num_hidden_layers * (4 * (D * D + D) + 2 * D * I + I + D + 4 * D)
    t, v, E = cfg.text_config, cfg.vision_config, cfg.projection_dim
    text = t.vocab_size * t.hidden_size + t.max_position_embeddings * t.hidden_size + tower(t) + 2 * t.hidden_size
    G = v.image_size // v.patch_size
    vision = (v.hidden_size + v.num_channels * v.patch_size ** 2 * v.hidden_size + (G * G + 1) * v.hidden_size
              + 4 * v.hidden_size + tower(v))
    return text + vision + E * (t.hidden_size + v.hidden_size) + 1
