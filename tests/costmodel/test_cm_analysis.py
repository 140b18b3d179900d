"""Phases, options and summaries of costmodel.analyze, checked against independent closed forms."""
from __future__ import annotations

import math

import pytest

import costmodel as cm
from costmodel.graph import SCHEMA


def t(rep, **sel):
    return sum(r.t_lower for r in rep.layers if all(getattr(r, k) == v for k, v in sel.items()))


def test_schema_is_design_5():
    want = ("name op shapes dtype macs flops flops_dense bytes_weights bytes_act_in bytes_act_out "
            "bytes_kv_read bytes_kv_write intensity bound t_compute t_memory t_lower t_upper phase "
            "step").split()
    assert list(SCHEMA[:len(want)]) == want


def test_roofline_times_follow_the_definitions():
    rep = cm.analyze("llama2-7b", "a100-sxm-80gb", phase="prefill", seq_len=256)
    dev = rep.device
    for r in rep.layers:
        # the definitions in float64, as costmodel/roofline.py evaluates them: equal up to the
        # rounding of the 2-3 operations (~1e-16 relative), far inside approx's default 1e-6
        tensor = (r.flops - r.flops_vector) / dev.peak(r.dtype) if r.flops - r.flops_vector else 0.0
        # softmax's exponentials on the special-function units: SMs x 16 per clock, i.e. the FP32
        # rate x 16 / (2 x 64 FMA lanes) on an A100 (CUDA guide, compute capability 8.0)
        assert dev.special_rate == pytest.approx(19.5e12 * 16 / 128)
        vector = (r.flops_vector - r.flops_special) / dev.vector_peak
        assert r.t_compute == pytest.approx(tensor + vector + r.flops_special / dev.special_rate)
        assert r.t_memory == pytest.approx(r.bytes / dev.bandwidth)
        assert r.t_lower == pytest.approx(max(r.t_compute, r.t_memory))
        assert r.t_upper == pytest.approx(r.t_compute + r.t_memory)
    norms = [r for r in rep.layers if r.op == "rms_norm"]
    assert norms and all(r.flops_vector == r.flops for r in norms)      # vector peak, not tensor


def test_llama_decode_is_weight_streaming_bound():
    """Batch-1 decode reads every weight once: time ~= bf16 weight bytes / bandwidth (closed
    form)."""
    for dev in ("a100-sxm-80gb", "h100-sxm"):
        rep = cm.analyze("llama2-7b", dev, phase="decode", batch=1, seq_len=1024)
        d = cm.get_device(dev)
        weights = 2 * rep.params
        # every weight but the embedding table (of which one row is read), 2 bytes each: the
        # per-layer byte counts are integers and their float64 sum stays below 2^53, so it is exact
        assert rep.total["bytes_weights"] == weights - 2 * (32000 - 1) * 4096
        # every kernel that moves bytes is memory-bound here; the only other time is the fused
        # elementwise work at the vector peak (no DRAM bytes), ~2e-5 of the total
        assert rep.summary["tpot_s"] == pytest.approx(rep.total["bytes"] / d.bandwidth, rel=0.01)
        kv = 2 * 32 * 1024 * 4096 * 2                   # K and V, 32 layers, 1024 keys, bf16
        assert rep.total["bytes_kv_read"] == kv


def test_generate_sums_decode_steps_one_by_one():
    kw = dict(batch=2, dtype="bf16")
    gen = cm.analyze("llama2-7b", "h100-sxm", phase="generate", seq_len=100, new_tokens=6, **kw)
    pre = cm.analyze("llama2-7b", "h100-sxm", phase="prefill", seq_len=100, **kw)
    steps = [cm.analyze("llama2-7b", "h100-sxm", phase="decode", seq_len=100 + j, **kw)
             for j in range(1, 6)]
    # float64 sums of the same positive per-layer times, possibly grouped differently: n terms
    # agree to γ_n(2^-53) ≈ n·1e-16 (n < 2000 here), far inside approx's default 1e-6
    assert gen.summary["ttft_s"] == pytest.approx(pre.summary["ttft_s"])
    assert t(gen, phase="decode") == pytest.approx(sum(s.summary["tpot_s"] for s in steps))
    kv_read = sum(r.bytes_kv_read for r in gen.layers if r.phase == "decode")
    assert kv_read == sum(s.total["bytes_kv_read"] for s in steps)
    # never the final length for every step
    assert kv_read != 5 * steps[-1].total["bytes_kv_read"]
    # one float64 division: ~1e-16 relative
    assert gen.summary["tokens_per_s"] == pytest.approx(2 * 6 / gen.summary["total_s"])


def test_long_generation_equals_explicit_step_loop():
    """The fast path (counts affine in the KV length, checked against the last step) gives what
    building and timing every step does."""
    gen = cm.analyze("whisper-large-v3", "l4", phase="generate", seq_len=4, new_tokens=41, batch=3)
    steps = [cm.analyze("whisper-large-v3", "l4", phase="decode", seq_len=4 + j, batch=3)
             for j in range(1, 41)]
    dec = [r for r in gen.layers if r.phase == "decode"]
    for i, r in enumerate(dec):
        # 40 positive float64 terms, summed in another order or from the affine counts: within
        # γ_40(2^-53) ≈ 4e-15 of each other up to a few roundings of the affine form
        assert r.t_lower == pytest.approx(sum(s.layers[i].t_lower for s in steps), rel=1e-12)
        assert r.bytes_kv_read == sum(s.layers[i].bytes_kv_read for s in steps)
        assert r.flops == sum(s.layers[i].flops for s in steps)


def test_flash_skips_causal_tiles_unfused_moves_scores():
    fl = cm.analyze("llama2-7b", "h100-sxm", phase="prefill", seq_len=512, attention="flash")
    un = cm.analyze("llama2-7b", "h100-sxm", phase="prefill", seq_len=512, attention="unfused")
    a_fl = [r for r in fl.layers if r.op == "attention"][0]
    a_un = [r for r in un.layers if r.op == "attention"][0]
    assert a_fl.flops_dense == a_un.flops_dense == 2 * 32 * 512 * 512 * 256
    assert a_fl.macs == 32 * (512 * 513 // 2) * 256                    # allowed (q, k) pairs only
    assert a_un.macs == 32 * 512 * 512 * 256
    # S and P written and read, bf16
    assert a_un.bytes - a_fl.bytes == 4 * 32 * 512 * 512 * 2


def test_int4_weights_carry_group_scales():
    rep = cm.analyze("llama2-7b", "h100-sxm", phase="decode", seq_len=128, dtype="int4")
    q = [r for r in rep.layers if r.name == "model.layers.0.self_attn.q_proj"][0]
    n = 4096 * 4096
    # 4-bit codes + one fp16 scale per 128
    assert q.bytes_weights == n / 2 + n / 128 * 2
    assert q.dtype == "bf16"                            # weight-only: bf16 tensor cores
    g = cm.analyze("llama2-7b", "h100-sxm", phase="decode", seq_len=128, dtype="int4",
                   group_size=64)
    assert [r for r in g.layers if r.name == q.name][0].bytes_weights == n / 2 + n / 64 * 2
    fp8 = cm.analyze("llama2-7b", "h100-sxm", phase="decode", seq_len=128, dtype="fp8")
    assert fp8.layers[2].dtype == "fp8"
    with pytest.raises(ValueError, match="no fp8 tensor rate"):
        cm.analyze("llama2-7b", "a100-sxm-80gb", dtype="fp8")


def test_tensor_parallel_splits_work_and_adds_ring_allreduce():
    one = cm.analyze("llama2-70b", "h100-sxm", phase="decode", seq_len=512)
    four = cm.analyze("llama2-70b", "h100-sxm", phase="decode", seq_len=512, tp=4)
    def mm(rep):
        return sum(r.macs for r in rep.layers if r.op == "matmul")
    assert mm(four) == mm(one) // 4
    # GQA: 8 KV heads -> cache reads use 8 heads, query-side products 64
    assert one.total["bytes_kv_read"] == 2 * 80 * 8 * 128 * 512 * 2
    att = [r for r in one.layers if r.op == "attention"][0]
    assert att.macs == 64 * 512 * 256
    ar = [r for r in four.layers if r.op == "allreduce"]
    assert len(ar) == 2 * 80                                           # after o_proj and down_proj
    d = cm.get_device("h100-sxm")
    # the ring all-reduce, α-β: 2(p-1) = 6 steps of 2 us each (NCCL's LL128 per-hop latency)
    # plus 2(p-1)/p of the 8192 bf16 values over the link; float64, a few roundings apart
    assert ar[0].t_comm == pytest.approx(6 * 2e-6 + 2 * 3 / 4 * 8192 * 2 / d.interconnect)
    tree = cm.analyze("llama2-70b", "h100-sxm", phase="decode", seq_len=512, tp=4,
                      collective="tree")
    ar_tree = [r for r in tree.layers if r.op == "allreduce"][0]
    # a tree: 2·log2(4) = 4 steps, the same volume
    assert ar_tree.t_comm == pytest.approx(4 * 2e-6 + 2 * 3 / 4 * 8192 * 2 / d.interconnect)
    assert one.summary["fits"] is False and four.summary["fits"] is True
    with pytest.raises(ValueError, match="tp=3 does not divide"):
        cm.analyze("llama2-7b", "h100-sxm", tp=3)


def test_whisper_cross_kv_once_then_reread():
    gen = cm.analyze("whisper-large-v3", "h100-sxm", phase="generate", seq_len=4, new_tokens=20)
    cross_proj = [r for r in gen.layers if r.name.endswith("encoder_attn.k_proj")]
    assert cross_proj and {r.phase for r in cross_proj} == {"prefill"}
    cross = [r for r in gen.layers if r.name.endswith(".encoder_attn") and r.phase == "decode"]
    # 19 steps re-read 1500 frames
    assert all(r.bytes_kv_read == 19 * 2 * 1500 * 1280 * 2 for r in cross)
    enc = [r for r in gen.layers if r.phase == "encoder"]
    # the same float64 sum of positive times, maybe in another order: ~n·1e-16 relative
    assert enc and gen.summary["encoder_s"] == pytest.approx(sum(r.t_lower for r in enc))
    with pytest.raises(ValueError, match="exceeds the model's context of 448"):
        cm.analyze("whisper-large-v3", "h100-sxm", phase="generate", seq_len=4, new_tokens=446)


def test_clip_batches_are_separate():
    a = cm.analyze("clip-vit-b-32", "a100-sxm-80gb", batch=8, text_batch=3)
    img = sum(r.macs for r in a.layers if r.phase == "image")
    txt = sum(r.macs for r in a.layers if r.phase == "text")
    b = cm.analyze("clip-vit-b-32", "a100-sxm-80gb", batch=16, text_batch=3)
    assert sum(r.macs for r in b.layers if r.phase == "image") == 2 * img
    assert sum(r.macs for r in b.layers if r.phase == "text") == txt
    sim = [r for r in a.layers if r.phase == "similarity" and r.op == "matmul"][0]
    assert sim.macs == 3 * 512 * 8
    assert a.summary["images_per_s"] == pytest.approx(8 / a.summary["image_s"])   # one division


# open_clip's published profile (docs/model_profile.csv, PyTorch FlopCounterMode, batch 1, 77 text
# tokens): image_gflops, text_gflops --
# https://github.com/mlfoundations/open_clip/blob/main/docs/model_profile.csv
OPEN_CLIP_GFLOPS = {"clip-vit-b-32": (8.82, 5.96), "clip-vit-b-16": (35.13, 5.96),
                    "clip-vit-l-14": (162.03, 13.3), "clip-vit-l-14-336": (381.92, 13.3),
                    "clip-vit-h-14": (334.59, 47.09), "clip-vit-g-14": (534.06, 47.09)}


@pytest.mark.parametrize("name", sorted(OPEN_CLIP_GFLOPS))
def test_clip_flops_dense_match_open_clip_profile(name):
    a = cm.analyze(name, "a100-sxm-80gb", batch=1, text_batch=1)
    image = sum(r.flops_dense for r in a.layers if r.phase == "image") / 1e9
    text = sum(r.flops_dense for r in a.layers if r.phase == "text") / 1e9
    assert (round(image, 2), round(text, 2)) == OPEN_CLIP_GFLOPS[name]


def test_sam_vit_h_encoder_macs_near_published():
    """EfficientViT-SAM (arXiv 2402.05008, §1) quotes 2973 GMACs for SAM-ViT-H's image encoder.
    Our count (window padding 64 -> 70 included, equal to FlopCounterMode on the twin) also has
    the decomposed relative-position products, 7.6 GMACs that the quoted figure leaves out;
    without them it is that figure to the unit."""
    a = cm.analyze("sam-vit-h", "a100-sxm-80gb", phase="encoder")
    gmacs = a.total["flops_dense"] / 2 / 1e9
    rel_pos = sum(r.flops_dense for r in a.layers if r.op == "matmul" and "rel_pos" in r.name)
    assert 7 < rel_pos / 2 / 1e9 < 8
    # the paper prints whole GMACs: within half a unit
    assert gmacs - rel_pos / 2 / 1e9 == pytest.approx(2973, abs=0.5)


def test_sam_amortises_the_encoder_over_prompts():
    one = cm.analyze("sam-vit-h", "a100-sxm-80gb", prompts=1)
    many = cm.analyze("sam-vit-h", "a100-sxm-80gb", prompts=64)
    # float64 sums of the same per-layer times (and one division): ~n·1e-16 relative apart
    assert many.summary["encoder_s"] == pytest.approx(one.summary["encoder_s"])
    assert many.summary["amortised_s_per_prompt"] == pytest.approx(
        (many.summary["encoder_s"] + many.summary["decoder_s"]) / 64)
    assert many.summary["amortised_s_per_prompt"] < one.summary["amortised_s_per_prompt"] / 10
    attn = [r for r in one.layers if r.name == "vision_encoder.layers.0.attn"][0]
    # 64 -> 70 padded: 25 windows of 14x14
    assert "q[25,16,196,80]" in attn.shapes


@pytest.mark.parametrize("kw,match", [
    (dict(model="gpt2"), "unknown model 'gpt2'"),
    (dict(device="a100"), "unknown device 'a100'"),
    (dict(phase="train"), "phase 'train' does not apply"),
    (dict(batch=0), "batch must be an integer >= 1"),
    (dict(seq_len=5000), "exceeds the model's context of 4096"),
    (dict(dtype="fp4"), "dtype must be one of"),
    (dict(attention="paged"), "attention must be 'flash' or 'unfused'"),
])
def test_bad_arguments_name_themselves(kw, match):
    args = dict(model="llama2-7b", device="h100-sxm", phase="decode") | kw
    with pytest.raises(ValueError, match=match):
        cm.analyze(args.pop("model"), args.pop("device"), **args)


def test_outputs_are_consistent():
    import csv
    import io
    import json
    rep = cm.analyze("sam-vit-b", "l4", prompts=4)
    doc = json.loads(rep.to_json())
    assert doc["params"] == rep.params and len(doc["layers"]) == len(rep.layers)
    assert doc["total"]["flops"] == sum(r.flops for r in rep.layers)
    rows = list(csv.reader(io.StringIO(rep.to_csv())))
    assert tuple(rows[0]) == SCHEMA and len(rows) == len(rep.layers) + 1
    md = rep.to_markdown()
    assert md.startswith("# sam-vit-b") and "| TOTAL |" in md
    assert "amortised_s_per_prompt" in rep.to_table()
    assert not math.isnan(rep.total["t_lower"])


def test_custom_config_and_its_label():
    import dataclasses

    import pyworkloads as pw
    cfg = dataclasses.replace(pw.llama2.PRESETS["llama2-7b"], num_hidden_layers=2)
    rep = cm.analyze(cfg, "h100-sxm", phase="prefill", seq_len=64)
    assert rep.model == "llama2 (custom config)"
    assert rep.params == pw.llama2.count_params(cfg)
    layer_ids = {r.name.split(".")[2] for r in rep.layers if r.name.startswith("model.layers.")}
    assert layer_ids == {"0", "1"}
    with pytest.raises(TypeError, match="preset name or a pyworkloads model Config"):
        cm.analyze(42, "h100-sxm")


def test_devices_from_the_environment(tmp_path, monkeypatch):
    import costmodel.hardware as hw
    f = tmp_path / "extra.toml"
    f.write_text('[device.lab-gpu]\nname = "Lab GPU"\nfp32_tflops = 20\n'
                 'bf16_tflops = 200\nmemory_gb = 48\nbandwidth_gbps = 1000\n')
    monkeypatch.setenv("COSTMODEL_DEVICES", str(f))
    monkeypatch.setattr(hw, "_db", None)
    rep = cm.analyze("llama2-7b", "lab-gpu", phase="decode", seq_len=64)
    # batch-1 decode is memory-bound in every kernel that moves bytes (see the A100/H100 test)
    assert rep.summary["tpot_s"] == pytest.approx(rep.total["bytes"] / 1000e9, rel=0.01)
    monkeypatch.setattr(hw, "_db", None)
