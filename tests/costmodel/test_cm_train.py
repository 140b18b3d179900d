"""cm.train(): FLOPs per step against PyTorch's FlopCounterMode over forward AND backward of the
transformers twins, recomputation, LoRA, the memory formulas (ZeRO, Korthikanti) and bad
arguments."""
from __future__ import annotations

import dataclasses
import math

import pytest
from conftest import require_transformers

import costmodel as cm
import pyworkloads as pw
from costmodel.cli import main


def step_flops(torch, model, loss, **inputs) -> int:
    """FlopCounterMode over model(**inputs) and loss(output).backward()."""
    from torch.utils.flop_counter import FlopCounterMode
    model.set_attn_implementation("eager")      # CPU SDPA has no FlopCounterMode formula
    model.train()
    with FlopCounterMode(display=False) as fc:
        loss(model(**inputs)).backward()
    return fc.get_total_flops()


def test_llama2_step_matches_flopcounter():
    torch, tf = require_transformers()
    cfg = pw.llama2.PRESETS["llama2-tiny"]
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**cfg.to_hf()))
    ids = torch.randint(0, cfg.vocab_size, (2, 11))
    got = step_flops(torch, model, lambda o: o.loss, input_ids=ids, labels=ids)
    t = cm.train(cfg, "h100-sxm", batch=2, seq_len=11, dtype="fp32")
    assert t.flops_per_step == got
    assert t.flops_per_step == 3 * t.flops_forward       # no layer reads raw data in LLaMA


def test_clip_contrastive_step_matches_flopcounter():
    torch, tf = require_transformers()
    cfg = pw.clip.PRESETS["clip-tiny"]
    model = tf.CLIPModel(tf.CLIPConfig(**cfg.to_hf()))
    N, T = 3, 7
    ids = torch.randint(0, cfg.text_config.vocab_size - 2, (N, T))
    ids[:, -1] = cfg.text_config.eos_token_id
    S = cfg.vision_config.image_size
    got = step_flops(torch, model, lambda o: o.loss, input_ids=ids,
                     pixel_values=torch.randn(N, 3, S, S), return_loss=True)
    t = cm.train(cfg, "h100-sxm", batch=N, seq_len=T, dtype="fp32")
    assert t.flops_per_step == got
    # the patch embedding reads pixels: its input gradient is never computed
    assert t.flops_per_step < 3 * t.flops_forward


def test_whisper_seq2seq_step_matches_flopcounter():
    torch, tf = require_transformers()
    cfg = pw.whisper.PRESETS["whisper-tiny-random"]
    model = tf.WhisperForConditionalGeneration(tf.WhisperConfig(**cfg.to_hf()))
    feats = torch.randn(1, cfg.num_mel_bins, 2 * cfg.max_source_positions)
    ids = torch.tensor([[cfg.decoder_start_token_id, 3, 4, 5, 6]])
    got = step_flops(torch, model, lambda o: o.loss, input_features=feats,
                     decoder_input_ids=ids, labels=ids)
    t = cm.train(cfg, "h100-sxm", batch=1, seq_len=5, dtype="fp32")
    assert t.flops_per_step == got


@pytest.mark.parametrize("freeze", [(), ("image_encoder",)])
def test_sam_mask_decoder_step_matches_flopcounter(freeze):
    torch, tf = require_transformers()
    cfg = pw.sam.PRESETS["sam-tiny"]
    conf = tf.SamConfig(**cfg.to_hf())
    conf.vision_config._attn_implementation = "eager"
    model = tf.SamModel(conf)
    # segment-anything keeps the random Fourier-feature matrix as a buffer (never trained);
    # transformers makes it a Parameter, so freeze it to train what the authors train
    model.shared_image_embedding.positional_embedding.requires_grad_(False)
    if freeze:
        model.vision_encoder.requires_grad_(False)
    S = cfg.vision_config.image_size
    P = 2
    got = step_flops(torch, model, lambda o: o.pred_masks.pow(2).mean() + o.iou_scores.mean(),
                     pixel_values=torch.randn(1, 3, S, S),
                     input_points=torch.rand(1, P, 1, 2) * S,
                     input_labels=torch.ones(1, P, 1, dtype=torch.long))
    t = cm.train(cfg, "h100-sxm", batch=1, dtype="fp32", prompts=P, points=1, freeze=freeze)
    assert t.flops_per_step == got
    if freeze:
        full = cm.train(cfg, "h100-sxm", batch=1, dtype="fp32", prompts=P, points=1)
        assert t.flops_per_step < full.flops_per_step
        assert t.memory["optimizer"] < full.memory["optimizer"]


def _attention_fwd(t) -> int:
    """Attention's forward FLOPs in a step: the records are one micro-batch on one GPU (dp = 1
    here), kept under the forward phase analyze() gave them."""
    micro = sum(r.flops_dense for r in t.layers
                if r.phase not in ("backward", "recompute") and r.op == "attention")
    return micro * t.options["microbatches"]


def test_activations_keep_a_tensor_several_gemms_read_once():
    """q/k/v read one normalised tensor, gate/up another: the activation memory counts each once
    (the engine marks the later readers' input as shared), o_proj and down_proj read their own."""
    cfg = pw.llama2.PRESETS["llama2-tiny"]
    rep = cm.analyze(cfg, device="h100-sxm", phase="prefill", seq_len=16, dtype="fp32")
    shared = {r.name.split(".", 3)[-1]: r.bytes_act_transient for r in rep.layers
              if r.name.startswith("model.layers.0.") and r.op == "matmul"}
    x = 16 * cfg.hidden_size * 4
    assert shared == {"self_attn.q_proj": 0, "self_attn.k_proj": x, "self_attn.v_proj": x,
                      "self_attn.o_proj": 0, "mlp.gate_proj": 0, "mlp.up_proj": x,
                      "mlp.down_proj": 0}
    t = cm.train(cfg, "h100-sxm", batch=1, seq_len=16, dtype="fp32")
    kept = cm.training.activation_bytes(rep.layers, [(True, True)] * len(rep.layers), "none")
    assert kept == sum(r.bytes_act_in - r.bytes_act_transient for r in rep.layers
                       if r.op != "allreduce")
    assert t.memory["activations"] > 0


def test_activation_memory_against_what_autograd_saves():
    """The activation bytes of a LLaMA step against the tensors PyTorch's autograd saves for the
    backward of the transformers twin (fp32, SDPA attention; unique storages, parameters
    excluded).  autograd also keeps the loss's logits and the attention kernel's log-sum-exp,
    which the estimate leaves out: within 15 % below, never above by more than 5 %."""
    torch, tf = require_transformers()
    cfg = dataclasses.replace(pw.llama2.PRESETS["llama2-tiny"], vocab_size=128)   # small logits
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**cfg.to_hf(), attn_implementation="sdpa"))
    s = 64
    ids = torch.randint(0, cfg.vocab_size, (1, s))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in params:
            saved[key] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    ours = cm.train(cfg, "h100-sxm", batch=1, seq_len=s, dtype="fp32").memory["activations"]
    assert 0.85 < ours / sum(saved.values()) < 1.05


def test_recompute_adds_exactly_the_forward_it_repeats():
    cfg = pw.llama2.PRESETS["llama2-tiny"]
    none = cm.train(cfg, "h100-sxm", batch=2, seq_len=16)
    sel = cm.train(cfg, "h100-sxm", batch=2, seq_len=16, recompute="selective")
    full = cm.train(cfg, "h100-sxm", batch=2, seq_len=16, recompute="full")
    assert _attention_fwd(none) > 0
    assert sel.flops_per_step - none.flops_per_step == _attention_fwd(none)
    # every forward record of LLaMA has a backward: the whole forward is repeated
    assert full.flops_per_step - none.flops_per_step == none.flops_forward
    assert none.model_flops_per_step == sel.model_flops_per_step == full.model_flops_per_step
    assert full.memory["activations"] < sel.memory["activations"] <= none.memory["activations"]


def test_selective_recompute_drops_the_score_matrices():
    """Korthikanti et al.: selective recomputation removes the a·s²·b score terms; here S and P
    of unfused attention, 2 matrices x 2 bytes x b·a·s² per layer."""
    cfg = pw.llama2.PRESETS["llama2-tiny"]
    b, s = 2, 16
    kw = dict(batch=b, seq_len=s, attention="unfused")
    none = cm.train(cfg, "h100-sxm", **kw)
    sel = cm.train(cfg, "h100-sxm", recompute="selective", **kw)
    a, L = cfg.num_attention_heads, cfg.num_hidden_layers
    # the default micro-batch is one sequence
    assert none.memory["activations"] - sel.memory["activations"] == L * 2 * 2 * 1 * a * s * s


def test_memory_follows_the_zero_paper():
    cfg = pw.llama2.PRESETS["llama2-tiny"]
    psi = pw.llama2.count_params(cfg)
    t = cm.train(cfg, "h100-sxm", batch=8, seq_len=16)
    # mixed-precision AdamW: 2 (bf16 weights) + 2 (bf16 grads) + 12 (fp32 master, m, v) bytes
    assert (t.memory["weights"], t.memory["gradients"], t.memory["optimizer"]) == \
        (2 * psi, 2 * psi, 12 * psi)
    for stage, divided in ((1, ("optimizer",)), (2, ("optimizer", "gradients")),
                           (3, ("optimizer", "gradients", "weights"))):
        z = cm.train(cfg, "h100-sxm", batch=8, seq_len=16, dp=4, zero_stage=stage)
        for k in ("weights", "gradients", "optimizer"):
            assert z.memory[k] == pytest.approx(t.memory[k] / (4 if k in divided else 1))
    tp = cm.train(cfg, "h100-sxm", batch=8, seq_len=16, tp=2)
    assert tp.memory["weights"] == t.memory["weights"] / 2
    fp32 = cm.train(cfg, "h100-sxm", batch=8, seq_len=16, dtype="fp32")
    assert fp32.memory["optimizer"] == 8 * psi                  # no master copy
    assert t.memory["total"] == sum(t.memory[k] for k in ("weights", "gradients", "optimizer",
                                                          "activations"))


def test_lora_flops_and_memory():
    cfg = pw.llama2.PRESETS["llama2-tiny"]
    b, s, r = 2, 16, 4
    base = cm.train(cfg, "h100-sxm", batch=b, seq_len=s)
    lora = cm.train(cfg, "h100-sxm", batch=b, seq_len=s, lora_rank=r)
    h, L = cfg.hidden_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * cfg.head_dim
    adapters = L * r * ((h + h) + (h + kv))                       # q: h -> h, v: h -> kv
    psi = pw.llama2.count_params(cfg)
    assert lora.trainable_params == adapters
    assert lora.memory["gradients"] == 2 * adapters
    assert lora.memory["optimizer"] == 12 * adapters
    assert lora.memory["weights"] == 2 * (psi + adapters)
    # adapters forward: 2·tokens·r·(d_in + d_out) per projection
    assert lora.flops_forward - base.flops_forward == 2 * b * s * adapters
    # frozen base: no weight gradients, so fewer FLOPs than full training
    assert lora.flops_per_step < base.flops_per_step


def test_mfu_uses_palm_model_flops_and_summary():
    cfg = pw.llama2.PRESETS["llama2-tiny"]
    b, s = 4, 32
    t = cm.train(cfg, "a100-sxm-80gb", batch=b, seq_len=s, dp=2)
    shapes = pw.llama2.weight_shapes(cfg)
    # N: the parameters in matrix products (every 2-D weight but the input embedding table)
    n = sum(math.prod(v) for k, v in shapes.items()
            if len(v) == 2 and "embed_tokens" not in k)
    L, H, Q = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim
    assert t.model_flops_per_step == (6 * n + 12 * L * H * Q * s) * b * s
    dev = cm.get_device("a100-sxm-80gb")
    assert t.mfu == pytest.approx(t.model_flops_per_step / (t.time_per_step * 2
                                                            * dev.peak("bf16")))
    run = t.summary(tokens=10 * b * s)
    assert run["steps"] == 10
    assert run["gpu_hours"] == pytest.approx(10 * t.time_per_step * 2 / 3600)
    assert run["energy_kwh"] == pytest.approx(400 * 2 * 10 * t.time_per_step / 3.6e6)


@pytest.mark.parametrize("kw, match", [
    (dict(batch=3, dp=2), "dp=2 must divide the global batch 3"),
    (dict(zero_stage=4), "zero_stage must be one of"),
    (dict(batch=-1), "batch must be an integer"),
    (dict(tp=0), "tp must be an integer"),
    (dict(recompute="some"), "recompute must be one of"),
    (dict(optimizer="lion"), "optimizer must be one of"),
    (dict(lora_rank=-8), "lora_rank must be an integer"),
    (dict(freeze=("vision",)), "freeze: no parameters under"),
    (dict(lora_rank=4, lora_targets=("nope",)), "match no projection"),
])
def test_bad_arguments(kw, match):
    args = dict(batch=2, seq_len=8) | kw
    with pytest.raises(ValueError, match=match):
        cm.train("llama2-tiny", "h100-sxm", **args)


def test_cli_train_prints_a_table(capsys):
    assert main(["train", "llama2-tiny", "--device", "h100-sxm", "--batch", "4", "--seq-len",
                 "16", "--dp", "2", "--zero", "1", "--tokens", "1e6"]) == 0
    out = capsys.readouterr().out
    assert "memory per GPU" in out and "MFU" in out and "GPU-hours" in out and "kWh" in out
    assert main(["train", "llama2-tiny", "--device", "h100-sxm", "--batch", "3", "--dp",
                 "2"]) == 2
