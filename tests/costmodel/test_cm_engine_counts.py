"""The cost model's per-layer FLOPs equal what pw.profile() counts while the NumPy forward runs.

Two independent derivations: the graphs in costmodel/graphs/ count from the config; the profiler
counts the arrays each dispatched kernel actually receives.  Records are matched per profiler
scope (the HF module path the model wraps around its kernel calls; a cost-model record belongs to
the longest scope that is a dotted prefix of its name, "" otherwise) and per kernel op."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

import pyworkloads as pw
from costmodel.graph import GraphBuilder, Precision
from costmodel.graphs import clip as g_clip, llama2 as g_llama, sam as g_sam, whisper as g_whisper

KERNEL_OP = {"matmul": "matmul", "conv": "matmul", "attention": "attention", "rms_norm": "rms_norm",
             "layer_norm": "layer_norm"}


def engine_builder(phase=""):
    """The engine runs float32 and unfused attention (the full score matrix, masked)."""
    return GraphBuilder(Precision.parse("fp32"), attention="unfused", phase=phase)


def _scope_of(name: str, scopes: list[str]) -> str:
    """The longest profiler scope containing a cost-model record.  "_" also separates: the SAM
    engine wraps the HF modules upscale_conv1, upscale_layer_norm and upscale_conv2 in one scope
    "mask_decoder.upscale"."""
    best = ""
    for s in scopes:
        if s and (name == s or name.startswith(s + ".") or name.startswith(s + "_")) and len(s) > len(best):
            best = s
    return best


def per_scope(layers, prof):
    """-> (cost model, profiler): Counters of (scope, op) -> flops and -> macs."""
    scopes = sorted({r.name for r in prof.records})
    cm_f, cm_m, pr_f, pr_m = Counter(), Counter(), Counter(), Counter()
    for r in layers:
        if r.op not in KERNEL_OP:
            continue
        key = (_scope_of(r.name, scopes), KERNEL_OP[r.op])
        # a bias add is an epilogue in the model (flops_vector), a separate NumPy add in the engine
        cm_f[key] += r.flops - (r.flops_vector if KERNEL_OP[r.op] == "matmul" else 0)
        cm_m[key] += r.macs
    for r in prof.records:
        if r.op not in KERNEL_OP.values():        # activations (gelu) are elementwise records in the model
            continue
        pr_f[(r.name, r.op)] += r.flops
        pr_m[(r.name, r.op)] += r.macs
    return (cm_f, cm_m), (pr_f, pr_m)


def assert_same(layers, prof):
    (cm_f, cm_m), (pr_f, pr_m) = per_scope(layers, prof)
    assert len(pr_f) > 5, "the profile recorded too little to be a real check"
    assert dict(cm_m) == dict(pr_m)
    diff = {k: (cm_f.get(k), pr_f.get(k)) for k in set(cm_f) | set(pr_f) if cm_f.get(k) != pr_f.get(k)}
    assert not diff, f"per-layer FLOPs differ (cost model, engine): {diff}"


def test_llama2_prefill_and_decode_step():
    m = pw.llama2.from_preset("llama2-tiny", seed=0)
    cfg = m.config
    ids = np.array([[1, 5, 9, 200, 7, 3, 11], [1, 8, 8, 8, 40, 41, 42]])
    with pw.profile() as prof:
        m(ids)
    gb = engine_builder()
    g_llama.forward(gb, cfg, 2, 7, 0, logits="all")
    assert_same(gb.layers, prof)

    cache = m.new_cache(2, 16)
    m.forward(ids, cache, last_only=True)
    with pw.profile() as prof:                       # one decode step at KV length 8
        m.forward(np.array([[5], [6]]), cache, last_only=True)
    gb = engine_builder()
    g_llama.forward(gb, cfg, 2, 1, 7, logits="last")
    assert_same(gb.layers, prof)


def test_clip_both_towers_and_similarity():
    m = pw.clip.from_preset("clip-tiny", seed=0)
    cfg = m.config
    t = cfg.text_config
    rng = np.random.default_rng(0)
    T, Bt, Bi = 9, 3, 2
    ids = rng.integers(0, t.eos_token_id - 2, size=(Bt, T))
    ids[:, -1] = t.eos_token_id
    pix = rng.standard_normal((Bi, 3, cfg.vision_config.image_size, cfg.vision_config.image_size)).astype(np.float32)
    with pw.profile() as prof:
        m(input_ids=ids, pixel_values=pix)
    gb = engine_builder()
    g_clip.image_tower(gb, cfg, Bi)
    g_clip.text_tower(gb, cfg, Bt, T)
    g_clip.similarity(gb, cfg, Bi, Bt)
    assert_same(gb.layers, prof)


@pytest.mark.parametrize("points,boxes", [(1, False), (2, True)])
def test_sam_encoder_once_and_decoder_per_prompt(points, boxes):
    m = pw.sam.from_preset("sam-tiny", seed=0)
    cfg = m.config
    S = cfg.vision_config.image_size
    rng = np.random.default_rng(1)
    B, P = 1, 3
    pix = rng.standard_normal((B, 3, S, S)).astype(np.float32)
    pts = rng.uniform(0, S, size=(B, P, points, 2))
    box = np.sort(rng.uniform(0, S, size=(B, P, 2, 2)), axis=2).reshape(B, P, 4) if boxes else None
    with pw.profile() as prof:
        m(pixel_values=pix, input_points=pts, input_boxes=box)
    gb = engine_builder()
    g_sam.image_encoder(gb, cfg, B)
    g_sam.image_positional_embeddings(gb, cfg)
    g_sam.prompt_decoder(gb, cfg, B, P, points, boxes)
    assert_same(gb.layers, prof)
    # the toy's 8x8 grid in windows of 3 is padded to 9x9: padded tokens are computed
    attn = [r for r in gb.layers if r.op == "attention" and r.name.startswith("vision_encoder.layers.0.")]
    assert "q[9,4,9,8]" in attn[0].shapes


def test_whisper_encoder_and_decoder():
    w = pw.whisper.from_preset("whisper-tiny-random", seed=0)
    cfg = w.config
    rng = np.random.default_rng(2)
    feats = rng.standard_normal((1, cfg.num_mel_bins, 2 * cfg.max_source_positions)).astype(np.float32)
    ids = np.array([[cfg.decoder_start_token_id, 3, 4, 5, 6]])
    with pw.profile() as prof:
        w(feats, ids)
    gb = engine_builder()
    g_whisper.encoder(gb, cfg, 1)
    g_whisper.decoder(gb, cfg, 1, 5, 0, cross="compute", logits="all")
    assert_same(gb.layers, prof)


def test_whisper_decode_step_rereads_cross_kv():
    wmod = pw.whisper
    w = wmod.from_preset("whisper-tiny-random", seed=0)
    cfg = w.config
    rng = np.random.default_rng(3)
    feats = rng.standard_normal((2, cfg.num_mel_bins, 2 * cfg.max_source_positions)).astype(np.float32)
    audio = wmod.encoder_forward(w.weights, cfg, feats)
    cross = wmod.cross_attention_kv(w.weights, cfg, audio)
    cache = wmod.KVCache(cfg, 2)
    wmod.decoder_forward(w.weights, cfg, np.full((2, 5), cfg.decoder_start_token_id), cross, cache)
    with pw.profile() as prof:                        # one step at self-attention KV length 6
        wmod.decoder_forward(w.weights, cfg, np.array([[7], [9]]), cross, cache)
    gb = engine_builder()
    g_whisper.decoder(gb, cfg, 2, 1, 5, cross="cached", logits="last")
    assert_same(gb.layers, prof)
