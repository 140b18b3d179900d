"""The cost model's bounds next to published measurements (listed below with their sources).

Run:  python examples/costmodel_published.py   (PYTHONPATH=. from a source checkout)
Published measurements used:
  Llama-2-7B, batch 1, 128 in / 20 out, TP 1: 234.0 ms (A100 80GB SXM4), 153.8 ms (H100 80GB HBM3)
      https://docs.nvidia.com/nemo-framework/user-guide/latest/performance/llama.html
  SAM image encoder "~0.15 seconds on an NVIDIA A100 GPU" (segment-anything.com FAQ, as quoted at
      https://ips99.com/show/4/287950.html)
  Whisper large-v3-turbo, 120 s of speech in 0.201 s on one H100 SXM
      https://inferencebench.io/blog/whisper-large-v3-turbo-597x-realtime-asr-benchmark/
Each line is a roofline *bound* (perfect overlap of compute and memory at datasheet peaks), so a
measured time should be longer; the ratio bound / measured is the efficiency the software reached.
"""
import costmodel as cm


def line(label, seconds, measured=None):
    extra = (f"   published {measured * 1e3:8.1f} ms -> bound / measured = "
             f"{seconds / measured:4.0%}" if measured else "")
    print(f"{label:<68} {seconds * 1e3:8.2f} ms{extra}")


print("Llama-2-7B, bf16, batch 1, one decode step (time per output token):")
for dev in ("a100-sxm-80gb", "h100-sxm"):
    for kv in (128, 2048):
        r = cm.analyze("llama2-7b", dev, phase="decode", batch=1, seq_len=kv, dtype="bf16")
        line(f"  {dev:<14} KV length {kv:>5}: {r.summary['tokens_per_s']:6.1f} tokens/s",
             r.summary["tpot_s"])

print("\nLlama-2-7B, bf16, batch 1, 128 prompt tokens + 20 generated (NeMo Framework's published "
      "setup):")
for dev, measured in (("a100-sxm-80gb", 0.2340), ("h100-sxm", 0.1538)):
    r = cm.analyze("llama2-7b", dev, phase="generate", batch=1, seq_len=128, new_tokens=20,
                   dtype="bf16")
    line(f"  {dev:<14} end-to-end", r.summary["total_s"], measured)

print("\nSAM ViT-H image encoder, one 1024x1024 image:")
for dt in ("fp32", "bf16"):
    r = cm.analyze("sam-vit-h", "a100-sxm-80gb", phase="encoder", batch=1, dtype=dt)
    line(f"  a100-sxm-80gb  {dt}", r.summary["encoder_s"], 0.15)
r = cm.analyze("sam-vit-h", "a100-sxm-80gb", phase="encoder", batch=1, dtype="fp32", tf32=True)
line("  a100-sxm-80gb  fp32 weights/activations on TF32 tensor cores", r.summary["encoder_s"], 0.15)

print("\nWhisper, one 30-s window, greedy, 4 prompt tokens + 100 generated tokens, fp16:")
for model in ("whisper-large-v3", "whisper-large-v3-turbo"):
    r = cm.analyze(model, "h100-sxm", phase="generate", batch=1, seq_len=4, new_tokens=100,
                   dtype="fp16")
    s = r.summary
    line(f"  {model:<23} h100-sxm  (encoder {s['encoder_s'] * 1e3:.2f} ms, "
         f"{s['tpot_s'] * 1e6:.0f} us/token)", s["total_s"])
r = cm.analyze("whisper-large-v3-turbo", "h100-sxm", phase="generate", batch=4, seq_len=4,
               new_tokens=100, dtype="fp16")
line("  whisper-large-v3-turbo h100-sxm, 4 windows batched (120 s of audio)", r.summary["total_s"],
     0.201)

# Predicted times (t_pred) need a calibrated profile of the device.  The repository keeps one GPU
# run of benchmarks/bench_cuda.py (an H200): its profile predicts for our CUDA kernels and for
# the vendor libraries (cuBLAS, SDPA) it was measured against.  The run covers few shapes (large
# GEMMs, long-sequence attention, norms), and kernel launch costs are not in it: treat these as
# the kernels' time at those efficiencies, not a serving system's.
import pathlib  # noqa: E402

bench = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "results"
runs = sorted(bench.glob("h200-*.json"))
if runs:
    prof = cm.profile_from_bench(runs[-1])
    print(f"\nPredicted on the H200 from {runs[-1].name} (t_pred: ours / vendor libraries):")
    for label, model, kw in (
            ("Llama-2-7B bf16 decode step, KV 2048", "llama2-7b",
             dict(phase="decode", seq_len=2048)),
            ("Llama-2-7B bf16, 128 in + 20 out", "llama2-7b",
             dict(phase="generate", seq_len=128, new_tokens=20)),
            ("SAM ViT-H encoder, bf16", "sam-vit-h", dict(phase="encoder")),
            ("Whisper large-v3, fp16, 4 + 100 tokens", "whisper-large-v3",
             dict(phase="generate", seq_len=4, new_tokens=100, dtype="fp16"))):
        ours = cm.analyze(model, cm.with_profile("h200", prof), **kw).summary
        vendor = cm.analyze(model, cm.with_profile("h200", prof, "vendor"), **kw).summary
        print(f"  {label:<44} bound {ours['time_s'] * 1e3:8.2f} ms   predicted "
              f"{ours['time_pred_s'] * 1e3:8.2f} ms / {vendor['time_pred_s'] * 1e3:8.2f} ms")
