"""flops_dense summed over a model equals PyTorch's FlopCounterMode on the transformers twin.

FlopCounterMode counts 2·MACs of matrix products and convolutions at full extent (attention's
score and value products included, masks ignored) -- the flops_dense convention.  The twins are
built from the same pyworkloads configs (``Config.to_hf()``) with random weights."""
from __future__ import annotations

from conftest import require_transformers
from costmodel.graph import GraphBuilder, Precision
from costmodel.graphs import clip as g_clip, llama2 as g_llama, sam as g_sam, whisper as g_whisper


def dense(build) -> int:
    gb = GraphBuilder(Precision.parse("fp32"), attention="flash")     # flops_dense ignores the choice
    build(gb)
    return sum(r.flops_dense for r in gb.layers)


def counted(torch, model, **inputs) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    # eager attention: PyTorch's CPU SDPA kernel is not one FlopCounterMode has a formula for
    model.set_attn_implementation("eager")
    model.eval().requires_grad_(False)     # SAM returns parameters as module outputs; no autograd hooks
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(**inputs)
    return fc.get_total_flops()


def test_llama2_matches_flopcounter():
    torch, tf = require_transformers()
    import pyworkloads as pw
    cfg = pw.llama2.PRESETS["llama2-tiny"]
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**cfg.to_hf()))
    ids = torch.randint(0, cfg.vocab_size, (2, 11))
    got = counted(torch, model, input_ids=ids)
    assert dense(lambda gb: g_llama.forward(gb, cfg, 2, 11, 0, logits="all")) == got


def test_clip_matches_flopcounter():
    torch, tf = require_transformers()
    import pyworkloads as pw
    cfg = pw.clip.PRESETS["clip-tiny"]
    model = tf.CLIPModel(tf.CLIPConfig(**cfg.to_hf()))
    Bt, Bi, T = 3, 2, 7
    ids = torch.randint(0, cfg.text_config.vocab_size - 2, (Bt, T))
    ids[:, -1] = cfg.text_config.eos_token_id
    S = cfg.vision_config.image_size
    got = counted(torch, model, input_ids=ids, pixel_values=torch.randn(Bi, 3, S, S))

    def build(gb):
        g_clip.image_tower(gb, cfg, Bi)
        g_clip.text_tower(gb, cfg, Bt, T)
        g_clip.similarity(gb, cfg, Bi, Bt)
    assert dense(build) == got


def test_sam_matches_flopcounter():
    torch, tf = require_transformers()
    import pyworkloads as pw
    cfg = pw.sam.PRESETS["sam-tiny"]
    conf = tf.SamConfig(**cfg.to_hf())
    # the vision attention class is picked at construction; its SDPA variant runs a CPU kernel
    # FlopCounterMode has no formula for, so build the eager one
    conf.vision_config._attn_implementation = "eager"
    model = tf.SamModel(conf)
    S = cfg.vision_config.image_size
    B, P = 1, 2
    pts = torch.rand(B, P, 1, 2) * S
    got = counted(torch, model, pixel_values=torch.randn(B, 3, S, S), input_points=pts,
                  input_labels=torch.ones(B, P, 1, dtype=torch.long))

    def build(gb):
        g_sam.image_encoder(gb, cfg, B)
        g_sam.image_positional_embeddings(gb, cfg)
        g_sam.prompt_decoder(gb, cfg, B, P, 1, False)
    assert dense(build) == got


def test_whisper_matches_flopcounter():
    torch, tf = require_transformers()
    import pyworkloads as pw
    cfg = pw.whisper.PRESETS["whisper-tiny-random"]
    model = tf.WhisperForConditionalGeneration(tf.WhisperConfig(**cfg.to_hf()))
    feats = torch.randn(1, cfg.num_mel_bins, 2 * cfg.max_source_positions)
    ids = torch.tensor([[cfg.decoder_start_token_id, 3, 4, 5, 6]])
    got = counted(torch, model, input_features=feats, decoder_input_ids=ids)

    def build(gb):
        g_whisper.encoder(gb, cfg, 1)
        g_whisper.decoder(gb, cfg, 1, 5, 0, cross="compute", logits="all")
    assert dense(build) == got
