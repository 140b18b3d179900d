"""Segment Anything as a layer graph: the ViT image encoder (run once per image, windowed blocks
padded to a multiple of the window: 64 -> 70 tokens per side for a 14-window, and the padded
tokens are computed), the dense positional grid, and the prompt encoder + two-way mask decoder
(run once per prompt).  Dimensions come from ``pyworkloads.models.sam.Config`` (HF SamConfig with
``vision_config`` / ``prompt_encoder_config`` / ``mask_decoder_config``)."""
from __future__ import annotations

from ..graph import GraphBuilder


def _window(v, i: int) -> int:
    return 0 if i in tuple(v.global_attn_indexes) else v.window_size


def image_encoder(gb: GraphBuilder, cfg, batch: int) -> None:
    """``get_image_embeddings(pixel_values[B, 3, S, S])`` -> [B, C, E, E]."""
    v = cfg.vision_config
    D, H, S, P = v.hidden_size, v.num_attention_heads, v.image_size, v.patch_size
    E, C, Dh = S // P, v.output_channels, v.hidden_size // v.num_attention_heads
    mlp_dim = v.mlp_dim or int(D * v.mlp_ratio)
    n = batch * E * E
    ve = "vision_encoder"
    gb.conv2d(f"{ve}.patch_embed.projection", batch, v.num_channels, D, (P, P), (S, S), (E, E), bias=True)
    if v.use_abs_pos:
        gb.elementwise(f"{ve}.pos_embed", n * D, 1, inputs=2, what="position add")
    Hl = gb.split(H, "vision heads")
    for i in range(v.num_hidden_layers):
        L = f"{ve}.layers.{i}"
        ws = _window(v, i)
        if ws:
            side = -(-E // ws) * ws                                       # padded grid side (70 for 64, 14)
            groups, h = batch * (side // ws) ** 2, ws                     # windows, window side
        else:
            groups, h = batch, E
        tok = h * h
        gb.norm(f"{L}.layer_norm1", "layer_norm", n, D)
        gb.linear(f"{L}.attn.qkv", groups * tok, D, 3 * D, v.qkv_bias, parallel="col")
        if v.use_rel_pos:
            # decomposed relative position: q·Rh over each row, q·Rw over each column
            gb.matmul(f"{L}.attn.rel_pos_h", h, groups * Hl * h, Dh, h)
            gb.matmul(f"{L}.attn.rel_pos_w", h, groups * Hl * h, Dh, h)
            gb.elementwise(f"{L}.attn.rel_pos_bias", groups * Hl * tok * tok, 1, inputs=2, what="rel_h + rel_w")
        gb.attention(f"{L}.attn", groups, H, H, tok, tok, Dh, bias=v.use_rel_pos,
                     bias_elems=groups * Hl * tok * tok if v.use_rel_pos else 0)
        gb.linear(f"{L}.attn.proj", groups * tok, D, D, True, parallel="row")
        gb.elementwise(f"{L}.residual_attn", n * D, 1, inputs=2, what="residual add")
        gb.norm(f"{L}.layer_norm2", "layer_norm", n, D)
        gb.linear(f"{L}.mlp.lin1", n, D, mlp_dim, True, parallel="col")
        gb.activation(f"{L}.mlp.act", v.hidden_act, n * mlp_dim // gb.tp)
        gb.linear(f"{L}.mlp.lin2", n, mlp_dim, D, True, parallel="row")
        gb.elementwise(f"{L}.residual_mlp", n * D, 1, inputs=2, what="residual add")
    gb.conv2d(f"{ve}.neck.conv1", batch, D, C, (1, 1), (E, E), (E, E), bias=False)
    gb.norm(f"{ve}.neck.layer_norm1", "layer_norm", n, C)
    gb.conv2d(f"{ve}.neck.conv2", batch, C, C, (3, 3), (E, E), (E, E), bias=False)
    gb.norm(f"{ve}.neck.layer_norm2", "layer_norm", n, C)


def image_positional_embeddings(gb: GraphBuilder, cfg) -> None:
    """The random-Fourier encoding of the E×E grid of key positions (once per forward)."""
    v = cfg.vision_config
    E, F = v.image_size // v.patch_size, v.num_pos_feats
    gb.matmul("shared_image_embedding", 1, E * E, 2, F)
    gb.elementwise("shared_image_embedding.sincos", E * E * 2 * F, 2, what="sin, cos")


def _attention(gb, name, n, tq, tk, cfg_md, downsample):
    """SamAttention: q from tq tokens, k/v from tk tokens (each of the n prompts), width C/downsample."""
    C, H = cfg_md.hidden_size, cfg_md.num_attention_heads
    Ci = C // downsample
    gb.linear(f"{name}.q_proj", n * tq, C, Ci, True, parallel="col")
    gb.linear(f"{name}.k_proj", n * tk, C, Ci, True, parallel="col")
    gb.linear(f"{name}.v_proj", n * tk, C, Ci, True, parallel="col")
    gb.attention(name, n, H, H, tq, tk, Ci // H)
    gb.linear(f"{name}.out_proj", n * tq, Ci, C, True, parallel="row")


def prompt_decoder(gb: GraphBuilder, cfg, batch: int, prompts: int, points: int = 1, boxes: bool = False,
                   multimask: bool = True) -> None:
    """Prompt encoder + mask decoder for ``prompts`` prompts per image, each of ``points`` points
    (and a box when ``boxes``); without a box the reference appends one padding point."""
    md_cfg = cfg.mask_decoder_config
    C, E = md_cfg.hidden_size, cfg.vision_config.image_size // cfg.vision_config.patch_size
    F = cfg.vision_config.num_pos_feats
    Mt = md_cfg.num_multimask_outputs + 1
    n = batch * prompts                                                   # decoder batch: one per prompt
    sparse = 0
    if points:
        sparse = points + (0 if boxes else 1)
        gb.matmul("prompt_encoder.point_embed", 1, n * sparse, 2, F)
    if boxes:
        gb.matmul("prompt_encoder.box_embed", 1, n * 2, 2, F)
        sparse += 2
    T, K = 1 + Mt + sparse, E * E                                         # decoder tokens, image tokens
    gb.elementwise("mask_decoder.image_plus_dense", n * C * K, 1, inputs=2, what="embeddings + dense prompt")
    tr = "mask_decoder.transformer"
    dr = md_cfg.attention_downsample_rate
    for i in range(md_cfg.num_hidden_layers):
        L = f"{tr}.layers.{i}"
        _attention(gb, f"{L}.self_attn", n, T, T, md_cfg, 1)
        gb.norm(f"{L}.layer_norm1", "layer_norm", n * T, C)
        _attention(gb, f"{L}.cross_attn_token_to_image", n, T, K, md_cfg, dr)
        gb.norm(f"{L}.layer_norm2", "layer_norm", n * T, C)
        gb.linear(f"{L}.mlp.lin1", n * T, C, md_cfg.mlp_dim, True, parallel="col")
        gb.activation(f"{L}.mlp.act", md_cfg.hidden_act, n * T * md_cfg.mlp_dim // gb.tp)
        gb.linear(f"{L}.mlp.lin2", n * T, md_cfg.mlp_dim, C, True, parallel="row")
        gb.norm(f"{L}.layer_norm3", "layer_norm", n * T, C)
        _attention(gb, f"{L}.cross_attn_image_to_token", n, K, T, md_cfg, dr)
        gb.norm(f"{L}.layer_norm4", "layer_norm", n * K, C)
    _attention(gb, f"{tr}.final_attn_token_to_image", n, T, K, md_cfg, dr)
    gb.norm(f"{tr}.layer_norm_final_attn", "layer_norm", n * T, C)
    md = "mask_decoder"
    gb.conv2d(f"{md}.upscale_conv1", n, C, C // 4, (2, 2), (E, E), (2 * E, 2 * E), bias=True, transposed=True)
    gb.norm(f"{md}.upscale_layer_norm", "layer_norm", n * 4 * K, C // 4)
    gb.activation(f"{md}.upscale_act1", "gelu", n * C // 4 * 4 * K)
    gb.conv2d(f"{md}.upscale_conv2", n, C // 4, C // 8, (2, 2), (2 * E, 2 * E), (4 * E, 4 * E), bias=True,
              transposed=True)
    gb.activation(f"{md}.upscale_act2", "gelu", n * C // 8 * 16 * K)
    for j in range(Mt):
        h = f"{md}.output_hypernetworks_mlps.{j}"
        gb.linear(f"{h}.proj_in", n, C, C, True)
        gb.linear(f"{h}.layers.0", n, C, C, True)
        gb.linear(f"{h}.proj_out", n, C, C // 8, True)
    gb.matmul(f"{md}.masks", n, Mt, C // 8, 16 * K)
    hid = md_cfg.iou_head_hidden_dim
    gb.linear(f"{md}.iou_prediction_head.proj_in", n, C, hid, True)
    for j in range(md_cfg.iou_head_depth - 2):
        gb.linear(f"{md}.iou_prediction_head.layers.{j}", n, hid, hid, True)
    gb.linear(f"{md}.iou_prediction_head.proj_out", n, hid, Mt, True)


def count_params(cfg) -> int:
    """Parameter count from the config alone, Meta's convention (the Fourier matrix is a buffer)."""
    v, p, m = cfg.vision_config, cfg.prompt_encoder_config, cfg.mask_decoder_config
    D, E, C = v.hidden_size, v.image_size // v.patch_size, m.hidden_size
    Dh = D // v.num_attention_heads
    mlp_dim = v.mlp_dim or int(D * v.mlp_ratio)
    enc = D * v.num_channels * v.patch_size ** 2 + D + (E * E * D if v.use_abs_pos else 0)
    for i in range(v.num_hidden_layers):
        side = _window(v, i) or E
        enc += 4 * D + (3 * D * D + (3 * D if v.qkv_bias else 0)) + D * D + D
        enc += 2 * (2 * side - 1) * Dh if v.use_rel_pos else 0
        enc += 2 * D * mlp_dim + mlp_dim + D
    oc = v.output_channels
    enc += D * oc + 2 * oc + 9 * oc * oc + 2 * oc
    mc = p.mask_input_channels
    prompt = (4 * mc // 4 + mc // 4) + (mc // 4 * mc * 4 + mc) + (mc * p.hidden_size + p.hidden_size) \
        + 2 * (mc // 4) + 2 * mc + p.hidden_size * (1 + p.num_point_embeddings + 1)
    def attn(down):
        ci = C // down
        return 3 * (C * ci + ci) + ci * C + C
    Mt = m.num_multimask_outputs + 1
    dec = C + Mt * C
    dec += m.num_hidden_layers * (attn(1) + 2 * attn(m.attention_downsample_rate) + 2 * C * m.mlp_dim
                                  + m.mlp_dim + C + 4 * 2 * C)
    dec += attn(m.attention_downsample_rate) + 2 * C
    dec += C * (C // 4) * 4 + C // 4 + (C // 4) * (C // 8) * 4 + C // 8 + 2 * (C // 4)
    dec += Mt * (2 * (C * C + C) + C * (C // 8) + C // 8)
    hid = m.iou_head_hidden_dim
    dec += C * hid + hid + (m.iou_head_depth - 2) * (hid * hid + hid) + hid * Mt + Mt
    return enc + prompt + dec
