"""The cost model counts what the engine runs: on random configs of all four families, per
profiler scope and per kernel, the MACs and FLOPs of ``costmodel.analyze`` equal what
``pw.profile()`` counts while the NumPy forward pass of the same workload runs; and the reported
parameter count is the sum of the engine's weight shapes.

``analyze`` gets its layers from a shape-only trace of the engine's forward functions, so these
are two runs of one code path -- one on numbers, one on shapes.  What the test guards is that the
shapes the trace propagates, the kernels it records and the way ``costmodel.engine`` turns them
into layer records are faithful, on configs nobody tuned by hand: GQA ratios, explicit head
widths, tied and untied heads, biases, windows that need padding, non-default downsample rates,
80 and 128 mel bins."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import costmodel as cm
import pyworkloads as pw

KERNEL_OP = {"matmul": "matmul", "conv": "matmul", "attention": "attention", "rms_norm": "rms_norm",
             "layer_norm": "layer_norm", "gelu": "gelu"}
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def analyze(cfg, **kw):
    """What the engine runs: float32, the full (unfused) score matrix."""
    return cm.analyze(cfg, "h100-sxm", dtype="fp32", attention="unfused", **kw)


def assert_same_counts(layers, prof) -> None:
    """Per (scope, kernel): the cost model's MACs and FLOPs == the profiler's."""
    cm_m, cm_f, pr_m, pr_f = Counter(), Counter(), Counter(), Counter()
    for r in layers:
        if r.op in KERNEL_OP:
            key = (r.scope, KERNEL_OP[r.op])
            cm_m[key] += r.macs
            # a bias add is a GEMM's epilogue in the cost model, a separate NumPy add in the engine
            cm_f[key] += r.flops - (r.flops_vector if r.op in ("matmul", "conv") else 0)
    for r in prof.records:
        pr_m[(r.name, r.op)] += r.macs
        pr_f[(r.name, r.op)] += r.flops
    assert sum(pr_f.values()) > 0 and len(pr_f) >= 4, \
        "the profile recorded too little to be a check"
    assert dict(cm_m) == dict(pr_m), _diff(cm_m, pr_m)
    assert dict(cm_f) == dict(pr_f), _diff(cm_f, pr_f)


def _diff(a, b) -> str:
    keys = sorted(set(a) | set(b))
    return "differs (cost model, engine): " + str({k: (a.get(k), b.get(k)) for k in keys
                                                   if a.get(k) != b.get(k)})


def param_count(shapes) -> int:
    return sum(math.prod(s) for s in shapes.values())


# ---------------------------------------------------------------------------------------------
# LLaMA 2
# ---------------------------------------------------------------------------------------------
@st.composite
def llama_configs(draw):
    kvh = draw(st.sampled_from([1, 2, 3]))
    heads = kvh * draw(st.sampled_from([1, 2, 4]))                       # GQA ratios 1, 2, 4
    head_dim = draw(st.sampled_from([4, 6, 8]))
    hidden = draw(st.sampled_from([heads * head_dim, 24]))               # D = H·Dh, or not
    return pw.llama2.Config(
        hidden_size=hidden, intermediate_size=draw(st.integers(5, 40)),
        num_hidden_layers=draw(st.integers(1, 2)), num_attention_heads=heads,
        num_key_value_heads=kvh,
        head_dim=head_dim, vocab_size=draw(st.integers(16, 300)), max_position_embeddings=64,
        tie_word_embeddings=draw(st.booleans()), attention_bias=draw(st.booleans()),
        mlp_bias=draw(st.booleans()), hidden_act=draw(st.sampled_from(["silu", "gelu"])))


@SETTINGS
@given(cfg=llama_configs(), B=st.integers(1, 2), T=st.integers(1, 9), past=st.integers(1, 6))
def test_llama2_prefill_and_decode_step(cfg, B, T, past):
    m = pw.llama2.from_preset(cfg)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(B, T))
    with pw.profile() as prof:
        m(ids)                                                           # every position's logits
    assert_same_counts(analyze(cfg, phase="prefill", batch=B, seq_len=T, logits="all").layers, prof)

    cache = m.new_cache(B, past + 1)
    m.forward(ids[:, :1].repeat(past, axis=1), cache, last_only=True)
    # one step at KV length past + 1
    with pw.profile() as prof:
        m.forward(ids[:, :1], cache, last_only=True)
    rep = analyze(cfg, phase="decode", batch=B, seq_len=past + 1)
    assert_same_counts(rep.layers, prof)
    assert rep.params == pw.llama2.count_params(cfg) == param_count(pw.llama2.weight_shapes(cfg))


# ---------------------------------------------------------------------------------------------
# CLIP
# ---------------------------------------------------------------------------------------------
@st.composite
def clip_configs(draw):
    clip = pw.clip

    def tower(cls, **kw):
        heads = draw(st.sampled_from([1, 2, 4]))
        return cls(hidden_size=heads * draw(st.sampled_from([4, 8])), num_attention_heads=heads,
                   intermediate_size=draw(st.integers(4, 40)),
                   num_hidden_layers=draw(st.integers(1, 2)),
                   hidden_act=draw(st.sampled_from(["quick_gelu", "gelu"])), **kw)
    patch = draw(st.sampled_from([4, 8]))
    vision = tower(clip.VisionConfig, image_size=patch * draw(st.integers(1, 4)), patch_size=patch)
    vocab = draw(st.integers(20, 200))
    text = tower(clip.TextConfig, vocab_size=vocab,
                 max_position_embeddings=draw(st.integers(4, 16)),
                 bos_token_id=vocab - 2, eos_token_id=draw(st.sampled_from([vocab - 1, 2])))
    return clip.Config(text, vision, projection_dim=draw(st.integers(2, 24)))


@SETTINGS
@given(cfg=clip_configs(), Bi=st.integers(1, 3), Bt=st.integers(1, 3), data=st.data())
def test_clip_both_towers_and_similarity(cfg, Bi, Bt, data):
    t, v = cfg.text_config, cfg.vision_config
    T = data.draw(st.integers(2, t.max_position_embeddings))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, t.vocab_size - 2, size=(Bt, T))
    ids[:, -1] = t.vocab_size - 1                    # the end-of-text token (the largest id)
    pix = rng.standard_normal((Bi, v.num_channels, v.image_size, v.image_size)).astype(np.float32)
    model = pw.clip.CLIP(cfg, pw.clip.random_weights(cfg, 0))
    with pw.profile() as prof:
        model(input_ids=ids, pixel_values=pix)
    rep = analyze(cfg, phase="all", batch=Bi, text_batch=Bt, seq_len=T)
    assert_same_counts(rep.layers, prof)
    assert rep.params == pw.clip.count_params(cfg) == param_count(pw.clip.weight_shapes(cfg))


# ---------------------------------------------------------------------------------------------
# Segment Anything
# ---------------------------------------------------------------------------------------------
@st.composite
def sam_configs(draw):
    sam = pw.sam
    heads = draw(st.sampled_from([1, 2, 4]))
    D = heads * draw(st.sampled_from([4, 8]))
    patch = draw(st.sampled_from([4, 8]))
    grid = draw(st.integers(3, 9))
    layers = draw(st.integers(1, 3))
    # decoder width, a multiple of 8
    C = 8 * draw(st.integers(1, 3))
    dec_heads = draw(st.sampled_from([h for h in (1, 2, 4) if C % (2 * h) == 0]))
    rate = draw(st.sampled_from([r for r in (1, 2, 4) if C % (r * dec_heads) == 0]))
    vision = sam.VisionConfig(
        hidden_size=D, output_channels=C, num_hidden_layers=layers, num_attention_heads=heads,
        image_size=patch * grid, patch_size=patch, num_pos_feats=C // 2,
        mlp_dim=draw(st.integers(4, 40)),
        window_size=draw(st.integers(0, grid)),          # 0: global; most need padding
        global_attn_indexes=tuple(draw(st.sets(st.integers(0, layers - 1), max_size=layers))),
        use_rel_pos=draw(st.booleans()), use_abs_pos=draw(st.booleans()),
        qkv_bias=draw(st.booleans()))
    prompt = sam.PromptEncoderConfig(hidden_size=C, image_size=patch * grid, patch_size=patch,
                                     mask_input_channels=4 * draw(st.integers(1, 3)))
    decoder = sam.MaskDecoderConfig(
        hidden_size=C, mlp_dim=draw(st.integers(4, 40)), num_hidden_layers=draw(st.integers(1, 2)),
        num_attention_heads=dec_heads, attention_downsample_rate=rate,
        num_multimask_outputs=draw(st.integers(1, 3)), iou_head_depth=draw(st.integers(2, 4)),
        iou_head_hidden_dim=draw(st.integers(4, 24)))
    return sam.Config(vision, prompt, decoder)


@SETTINGS
@given(cfg=sam_configs(), B=st.integers(1, 2), P=st.integers(1, 3), N=st.integers(1, 3),
       boxes=st.booleans())
def test_sam_encoder_once_and_decoder_per_prompt(cfg, B, P, N, boxes):
    R = cfg.vision_config.image_size
    rng = np.random.default_rng(1)
    pix = rng.standard_normal((B, 3, R, R)).astype(np.float32)
    pts = rng.uniform(0, R, size=(B, P, N, 2))
    box = np.sort(rng.uniform(0, R, size=(B, P, 2, 2)), axis=2).reshape(B, P, 4) if boxes else None
    model = pw.sam.Sam(cfg, pw.sam.init_weights(cfg, 0))
    with pw.profile() as prof:
        model(pixel_values=pix, input_points=pts, input_labels=np.ones((B, P, N), np.int64),
              input_boxes=box)
    rep = analyze(cfg, phase="all", batch=B, prompts=P, points=N, boxes=boxes)
    assert_same_counts(rep.layers, prof)
    shapes = pw.sam.weight_shapes(cfg)      # the Fourier matrix is a buffer in Meta's count
    assert rep.params == pw.sam.count_params(cfg) == (param_count(shapes)
                                                      - math.prod(shapes[pw.sam.GAUSSIAN]))


# ---------------------------------------------------------------------------------------------
# Whisper
# ---------------------------------------------------------------------------------------------
@st.composite
def whisper_configs(draw):
    enc_heads = draw(st.sampled_from([1, 2, 4]))
    dec_heads = draw(st.sampled_from([1, 2, 4]))
    D = 4 * draw(st.integers(1, 4))                                      # divisible by 1, 2 and 4
    return pw.whisper.Config(
        vocab_size=draw(st.integers(16, 200)), num_mel_bins=draw(st.sampled_from([80, 128])),
        d_model=D,
        encoder_layers=draw(st.integers(1, 2)), encoder_attention_heads=enc_heads,
        encoder_ffn_dim=draw(st.integers(4, 40)), decoder_layers=draw(st.integers(1, 2)),
        decoder_attention_heads=dec_heads, decoder_ffn_dim=draw(st.integers(4, 40)),
        max_source_positions=draw(st.integers(2, 12)), max_target_positions=16,
        pad_token_id=0, bos_token_id=0, eos_token_id=0, decoder_start_token_id=1,
        tie_word_embeddings=draw(st.booleans()))


@SETTINGS
@given(cfg=whisper_configs(), B=st.integers(1, 2), T=st.integers(1, 6), past=st.integers(1, 6))
def test_whisper_prefill_and_decode_step(cfg, B, T, past):
    W = pw.whisper
    weights = W.random_weights(cfg, 0)
    rng = np.random.default_rng(2)
    feats = rng.standard_normal((B, cfg.num_mel_bins,
                                 2 * cfg.max_source_positions)).astype(np.float32)
    ids = rng.integers(0, cfg.vocab_size, size=(B, T))
    with pw.profile() as prof:                       # encoder, cross K/V, teacher-forced decoder
        cross = W.cross_attention_kv(W.encoder(feats, weights, cfg), weights, cfg)
        W.decoder(ids, cross, weights, cfg)
    rep = analyze(cfg, phase="prefill", batch=B, seq_len=T, logits="all")
    assert_same_counts(rep.layers, prof)

    cache = W.decoder_cache(cfg, B)
    W.decoder(ids[:, :1].repeat(past, axis=1), cross, weights, cfg, cache, last_only=True)
    with pw.profile() as prof:                       # one step at KV length past + 1
        W.decoder(ids[:, :1], cross, weights, cfg, cache, last_only=True)
    rep = analyze(cfg, phase="decode", batch=B, seq_len=past + 1)
    assert_same_counts(rep.layers, prof)
    assert rep.params == W.count_params(cfg) == param_count(W.weight_shapes(cfg))


def test_sam_attention_downsample_rate_one_follows_the_engine():
    """transformers builds the two-way blocks' cross-attentions at rate 2 whatever the config
    says; with attention_downsample_rate=1 (parity config "pad5") the cost model counts what the
    engine -- and transformers -- build: its parameters equal transformers' model on the meta
    device (minus the Fourier matrix, a buffer in Meta's count) and its MACs the profile's."""
    from conftest import require_transformers
    cfg = pw.sam.Config.from_hf({
        "vision_config": dict(hidden_size=24, output_channels=16, num_hidden_layers=4,
                              num_attention_heads=3, image_size=96, patch_size=8, window_size=5,
                              global_attn_indexes=[0, 3], num_pos_feats=8, mlp_ratio=2.0,
                              qkv_bias=False),
        "prompt_encoder_config": dict(hidden_size=16, image_size=96, patch_size=8,
                                      mask_input_channels=4),
        "mask_decoder_config": dict(hidden_size=16, mlp_dim=32, num_attention_heads=4,
                                    attention_downsample_rate=1, iou_head_hidden_dim=24,
                                    iou_head_depth=4)})
    rep = analyze(cfg, phase="all", batch=1, prompts=2, points=1)
    model = pw.sam.Sam(cfg, pw.sam.init_weights(cfg, 0))
    with pw.profile() as prof:
        model(pixel_values=np.zeros((1, 3, 96, 96), np.float32),
              input_points=np.full((1, 2, 1, 2), 40.0), input_labels=np.ones((1, 2, 1), np.int64))
    assert_same_counts(rep.layers, prof)
    torch, tf = require_transformers()
    with torch.device("meta"):
        hf = tf.SamModel(tf.SamConfig(**cfg.to_hf()))
    n = sum(p.numel() for p in hf.parameters()) - 2 * cfg.vision_config.num_pos_feats
    assert rep.params == n == 43_581
