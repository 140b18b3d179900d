"""flops_dense summed over a model equals PyTorch's FlopCounterMode on the transformers twin.

FlopCounterMode counts 2·MACs of matrix products and convolutions at full extent (attention's
score and value products included, masks ignored) -- the flops_dense convention.  The twins are
built from the same pyworkloads configs (``Config.to_hf()``) with random weights; the cost model's
records come from its trace of the pyworkloads forward pass of the same workload."""
from __future__ import annotations

from conftest import require_transformers

import costmodel as cm


def dense(cfg, **workload) -> int:
    """Σ flops_dense of the cost model's records for a workload (the attention implementation
    does not change flops_dense)."""
    rep = cm.analyze(cfg, "h100-sxm", dtype="fp32", **workload)
    return sum(r.flops_dense for r in rep.layers)


def counted(torch, model, **inputs) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    # eager attention: PyTorch's CPU SDPA kernel is not one FlopCounterMode has a formula for
    model.set_attn_implementation("eager")
    # SAM returns parameters as module outputs; no autograd hooks
    model.eval().requires_grad_(False)
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
    assert dense(cfg, phase="prefill", batch=2, seq_len=11, logits="all") == got


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
    assert dense(cfg, phase="all", batch=Bi, text_batch=Bt, seq_len=T) == got


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
    assert dense(cfg, phase="all", batch=B, prompts=P, points=1) == got


def test_whisper_matches_flopcounter():
    torch, tf = require_transformers()
    import pyworkloads as pw
    cfg = pw.whisper.PRESETS["whisper-tiny-random"]
    model = tf.WhisperForConditionalGeneration(tf.WhisperConfig(**cfg.to_hf()))
    feats = torch.randn(1, cfg.num_mel_bins, 2 * cfg.max_source_positions)
    ids = torch.tensor([[cfg.decoder_start_token_id, 3, 4, 5, 6]])
    got = counted(torch, model, input_features=feats, decoder_input_ids=ids)
    assert dense(cfg, phase="prefill", batch=1, seq_len=5, logits="all") == got
