"""``train()``: the cost of one training step -- FLOPs, memory per GPU, time, MFU -- and of a run.

The forward pass is :func:`costmodel.analyze` of the training workload (LLaMA and Whisper:
"prefill" with the logits of every position; CLIP: both towers and the N x N similarity of the
contrastive loss; SAM: image encoder, prompt encoder and mask decoder).  Backward and
recomputation are derived from those forward records, one record per kernel:

  FLOPs (FlopCounterMode's convention, ``flops_dense``: matrix products, convolutions, attention)
    forward          F
    backward         a product X·W costs F again for dL/dX ("dgrad") and F for dL/dW ("wgrad");
                     dgrad only when something trainable lies upstream of X (a layer reading
                     pixels, mel features or point coordinates has none), wgrad only when W is
                     trained (frozen weights, LoRA's base weights skip it).  A product of two
                     activations (attention, CLIP's similarity) costs 2F when it needs grads.
    recompute        "selective": the attention core softmax(QKᵀ)V once more (Korthikanti et al.
                     2022); "full": every forward record that has a backward once more.

  Memory per GPU (bytes; Rajbhandari et al. 2020, "ZeRO", §3.1: mixed-precision Adam keeps
  2Ψ + 2Ψ + KΨ bytes for Ψ parameters, K = 12: fp32 master copy, momentum and variance)
    weights      Ψ · 2 (bf16/fp16) or Ψ · 4 (fp32)            / (tp · pp)  [/ dp: ZeRO-3]
    gradients    Ψ_trained · the same bytes                     / (tp · pp)  [/ dp: ZeRO-2, 3]
    optimizer    Ψ_trained · K: AdamW 12 under mixed precision (8 in fp32: no master copy),
                 SGD with momentum 8 (4)                        / (tp · pp)  [/ dp: ZeRO-1, 2, 3]
    activations  what the backward needs, derived from the records of one GPU's micro-batch
                 (see :func:`activation_bytes`), for the layers of one pipeline stage.

  Time per step (per GPU; the roofline of costmodel.roofline per record, t_pred with a calibrated
  device): Σ forward + backward + recompute records over the GPU's share of the model, each
  backward record timed as its forward record with its counts scaled; times the pipeline bubble
  (pp + m - 1) / m for m micro-batches; plus data-parallel communication (a ring all-reduce of the
  gradients: 2(dp-1)/dp of their bytes per GPU; ZeRO-1/2 the same volume as reduce-scatter +
  all-gather, ZeRO-3 1.5x: all-gather in forward and backward, reduce-scatter of gradients), not
  overlapped with compute (an upper bound on the step; frameworks hide part of it).

  MFU (Chowdhery et al. 2022, "PaLM", appendix B): model FLOPs per step / (time x GPUs x dense
  peak), model FLOPs = forward + backward without recomputation -- for a causal LM trained in full
  exactly 6N + 12·L·H·Q·T per token (N the parameters in matrix products, L layers, H heads, Q head
  width, T sequence length).  Like PaLM's formula (and FlopCounterMode) it counts causal attention
  in full, while the step's time prices what a causal flash kernel computes, about half of it; so
  against this roofline bound the MFU of a long-sequence run can come out slightly above 100 %.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field

from . import hardware as _devices
from .analysis import _module, positive, resolve_model
from .analysis import analyze as _analyze
from .graph import COUNT_FIELDS, DTYPE_BYTES, Layer
from .roofline import time_layer

__all__ = ["train", "TrainReport", "OPTIMIZERS", "RECOMPUTE"]

OPTIMIZERS = ("adamw", "adam", "sgd")
RECOMPUTE = ("none", "selective", "full")
TRAIN_DTYPES = ("bf16", "fp16", "fp32")

# forward workload per family: the analyze() phase that is one training forward pass
_PHASE = {"llama2": "prefill", "whisper": "prefill", "clip": "all", "sam": "all"}
# which parts of a model feed which: (name prefix, prefixes it reads); a record matching none
# reads every part (CLIP's similarity).  Forward order inside a part decides what lies upstream.
_PARTS = {"llama2": (("", ()),),
          "whisper": (("model.encoder", ()), ("model.decoder", ("model.encoder",)),
                      ("proj_out", ("model.encoder", "model.decoder"))),
          "clip": (("vision_model", ()), ("visual_projection", ("vision_model",)),
                   ("text_model", ()), ("text_projection", ("text_model",))),
          "sam": (("vision_encoder", ()), ("prompt_encoder", ()), ("shared_image_embedding", ()),
                  ("mask_decoder", ("vision_encoder", "prompt_encoder",
                                    "shared_image_embedding")))}
# layers whose input is the data itself (pixels, mel features, point coordinates): no dgrad
_DATA_INPUT = {"vision_model.embeddings.patch_embedding", "vision_encoder.patch_embed.projection",
               "model.encoder.conv1", "prompt_encoder",
               "shared_image_embedding.positional_embedding"}
# GEMMs reading a fixed buffer, never trained: SAM's random Fourier-feature matrix
# (segment-anything's ``positional_encoding_gaussian_matrix``, a registered buffer; transformers
# stores it as a Parameter), read by the image's positional encoding and by the prompt encoder
# (whose record is named after its scope: the matrix is shared)
_BUFFER_GEMMS = {"prompt_encoder", "shared_image_embedding.positional_embedding"}
# the segment-anything / OpenAI names of the parts, for freeze=
_ALIASES = {"image_encoder": "vision_encoder", "text_encoder": "text_model",
            "vision_tower": "vision_model", "encoder": "model.encoder",
            "decoder": "model.decoder"}


@dataclass
class TrainReport:
    """The result of :func:`train`.  ``layers``: per-GPU records of one step (phase "forward",
    "backward", "recompute"); ``flops_per_step``: the whole step over all GPUs (dense convention);
    ``memory``: bytes per GPU; ``time_per_step``: seconds; ``mfu``: model FLOPs utilisation."""
    model: str
    family: str
    device: _devices.Device
    options: dict
    layers: list[Layer]
    params: int
    trainable_params: int
    flops_per_step: int
    flops_forward: int
    model_flops_per_step: int
    memory: dict
    time_per_step: float
    time_parts: dict
    samples_per_step: int
    tokens_per_step: int
    mfu: float
    extra: dict = field(default_factory=dict)

    @property
    def gpus(self) -> int:
        o = self.options
        return o["dp"] * o["tp"] * o["pp"]

    @property
    def fits(self) -> bool:
        return self.memory["total"] <= self.device.memory

    def summary(self, tokens: float | None = None, samples: float | None = None) -> dict:
        """A run of ``tokens`` tokens (LLaMA, Whisper) or ``samples`` sequences / pairs / images:
        steps, wall time on this report's GPUs, GPU-hours and energy at the device's board power
        (``tdp_w`` x GPUs x time: an upper bound, boards rarely sit at their limit)."""
        if (tokens is None) == (samples is None):
            raise ValueError("summary() needs exactly one of tokens= or samples=")
        if tokens is not None:
            if not tokens > 0:
                raise ValueError(f"tokens must be positive, got {tokens!r}")
            steps = math.ceil(tokens / self.tokens_per_step)
        else:
            if not samples > 0:
                raise ValueError(f"samples must be positive, got {samples!r}")
            steps = math.ceil(samples / self.samples_per_step)
        wall = steps * self.time_per_step
        out = {"steps": steps, "wall_s": wall, "wall_days": wall / 86400,
               "gpu_hours": wall * self.gpus / 3600, "gpus": self.gpus, "mfu": self.mfu}
        tdp = getattr(self.device, "tdp", None)
        out["energy_kwh"] = tdp * self.gpus * wall / 3.6e6 if tdp else None
        return out

    def to_table(self) -> str:
        o, m, dev = self.options, self.memory, self.device
        gb = 1e9
        lines = [f"{self.model} training on {o['dp'] * o['tp'] * o['pp']} x {dev.name} "
                 f"(dp {o['dp']}, tp {o['tp']}, pp {o['pp']}, ZeRO-{o['zero_stage']}, "
                 f"{o['dtype']}, {o['optimizer']}, recompute {o['recompute']}"
                 + (f", LoRA r={o['lora_rank']}" if o["lora_rank"] else "")
                 + (f", frozen {', '.join(o['freeze'])}" if o["freeze"] else "") + ")",
                 f"  batch {o['batch']} per step ({o['batch'] // o['dp']} per replica)"
                 + (f", seq_len {o['seq_len']}" if o.get("seq_len") else ""),
                 f"  parameters      {self.params:>16,}   trained {self.trainable_params:,}",
                 f"  FLOPs per step  {self.flops_per_step:>16.4g}   (forward "
                 f"{self.flops_forward:.4g}; model FLOPs {self.model_flops_per_step:.4g})",
                 "  memory per GPU  " + "  ".join(f"{k} {m[k] / gb:.2f}" for k in
                                                  ("weights", "gradients", "optimizer",
                                                   "activations", "total"))
                 + f" GB of {dev.memory / gb:.0f} GB: " + ("fits" if self.fits else "DOES NOT FIT"),
                 f"  time per step   {self.time_per_step:>16.4g} s   "
                 + "  ".join(f"{k} {v:.4g}" for k, v in self.time_parts.items()),
                 f"  MFU             {self.mfu:>16.1%}"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_table()

    def to_html(self, tokens: float | None = None, samples: float | None = None) -> str:
        """A self-contained, offline page: summary (a run's totals with ``tokens`` or
        ``samples``), memory and step time, FLOPs and time per layer type and pass, the records
        (``costmodel.html``; needs plotly)."""
        from .html import train_html
        return train_html(self, tokens=tokens, samples=samples)


# ---------------------------------------------------------------------------------------------
def _check(name, v, allowed):
    if v not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}, got {v!r}")


def _part(family: str, name: str) -> tuple[str, tuple]:
    for prefix, reads in _PARTS[family]:
        if name.startswith(prefix):
            return prefix, reads
    return "*", tuple(p for p, _ in _PARTS[family])


def _has_weights(r: Layer) -> bool:
    """The record reads parameters (a GEMM's weight, a norm's scale, an embedding table ...)."""
    return r.bytes_weights > 0 and r.op != "allreduce"


def _is_product(r: Layer) -> bool:
    return r.op in ("matmul", "conv", "attention")


def grad_plan(family: str, layers: list[Layer], frozen, lora: set) -> list[tuple[bool, bool]]:
    """(dgrad, wgrad) per forward record: whether the backward computes the gradient with
    respect to the record's input, and with respect to its own weights.

    Walks the records in forward order, per part of the model (:data:`_PARTS`): a record needs
    its input's gradient once a trained parameter was read earlier in its part or in a part it
    reads.  ``frozen(name)`` says whether a record's weights are frozen; ``lora``: the records
    carrying a trained LoRA adapter (their output needs gradients, their base weight does not).
    Within one transformer layer the order is an approximation for parallel branches (LoRA on
    layer 0's q_proj makes its k_proj count as needing an input gradient)."""
    seen: dict[str, bool] = {}
    plan = []
    for r in layers:
        part, reads = _part(family, r.name)
        upstream = seen.get(part, False) or any(seen.get(p, False) for p in reads)
        dgrad = upstream and r.name not in _DATA_INPUT
        trained = _has_weights(r) and not frozen(r.name) and r.name not in _BUFFER_GEMMS
        if not r.weights_dtype and _is_product(r):
            plan.append((dgrad, False))                # a product of activations (or attention)
        else:
            plan.append((dgrad, trained and r.weights_dtype != ""))
        if trained or r.name in lora:
            seen[part] = True
    return plan


def _scaled(r: Layer, k: float, phase: str, suffix: str = "") -> Layer:
    """A copy of forward record ``r`` with every count scaled by ``k`` (backward work of the
    same shapes), renamed and re-phased; its times are set by time_layer afterwards."""
    out = dataclasses.replace(r, name=r.name + suffix, phase=phase)
    for f in COUNT_FIELDS:
        if f == "calls":
            continue
        v = getattr(r, f) * k
        setattr(out, f, int(round(v)) if isinstance(getattr(r, f), int) else v)
    return out


def _lora_records(r: Layer, rank: int, d_in: int, d_out: int, act_bytes: float) -> Layer:
    """The adapter of a GEMM: x [rows, d_in] · A [d_in, r] · B [r, d_out], added to the output."""
    rows = r.macs // (d_in * d_out) if d_in * d_out else 0
    macs = rows * rank * (d_in + d_out)
    return dataclasses.replace(
        r, name=r.name + ".lora", op="matmul", shapes=f"[{rows},{d_in}]x[{d_in},{rank}]x[{rank},"
        f"{d_out}]", macs=macs, flops=2 * macs + rows * d_out, flops_dense=2 * macs,
        flops_vector=rows * d_out, flops_special=0, bytes_weights=rank * (d_in + d_out) * act_bytes,
        bytes_act_in=0, bytes_act_out=rows * rank * act_bytes, bytes_comm=0, hops=0, work="",
        bytes_unfused=0)


def activation_bytes(layers: list[Layer], plan, recompute: str, unfused: bool = False) -> float:
    """Bytes the backward keeps from one micro-batch's forward (Korthikanti et al. 2022, "Reducing
    Activation Recomputation in Large Transformer Models", §4), derived from the records.

    Their count for a GPT layer of s tokens, micro-batch b, width h, a heads (16-bit, dropout):
    s·b·h·(34 + 5·a·s/h) bytes without recomputation, s·b·h·34 with selective recomputation (the
    5·a·s²·b of QKᵀ, softmax and dropout mask gone), 2·s·b·h with full recomputation (the layer's
    input only).  Here every record with a backward keeps the inputs it read that autograd would
    keep (``bytes_act_in − bytes_act_transient`` of the unfused records: a GEMM's X for its
    wgrad, once when several GEMMs read it, a norm's input, attention's Q, K, V and -- unfused
    attention -- its score and probability matrices S and P, 2·2·a·s²·b bytes (flash attention
    keeps none, it recomputes them), the operands of products of two activations, nothing of
    additions, copies and products with a constant), which gives each family's own coefficient
    in place of the 34 (SwiGLU keeps gate and up outputs: LLaMA's is larger).  "selective" drops
    S and P; "full" keeps the input of each transformer layer (the first record of
    ``…layers.<i>``) plus, during the backward, one layer's full set while it is recomputed."""
    blocks: dict[str, float] = {}
    first: dict[str, float] = {}
    outside = 0.0
    for r, (dgrad, wgrad) in zip(layers, plan):
        if not (dgrad or wgrad) or r.op == "allreduce":
            continue
        kept = r.bytes_act_in - r.bytes_act_transient   # less what autograd would not keep
        if r.op == "attention" and unfused and recompute != "none":
            # unfused attention reads S and P, one element per score (flops_special) each
            kept -= 2 * r.flops_special * DTYPE_BYTES[r.dtype]
        block = _block(r.name)
        if block is None:
            outside += kept
            continue
        blocks[block] = blocks.get(block, 0.0) + kept
        first.setdefault(block, r.bytes_act_in)
    if recompute == "full":
        return outside + sum(first.values()) + max(blocks.values(), default=0.0)
    return outside + sum(blocks.values())


def _block(name: str) -> str | None:
    """``model.layers.3.mlp.up_proj`` -> ``model.layers.3``; None outside numbered layers."""
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.isdigit() and i and parts[i - 1] == "layers":
            return ".".join(parts[: i + 1])
    return None


def _optimizer_bytes(optimizer: str, dtype: str) -> float:
    """K of the ZeRO paper: optimizer-state bytes per trained parameter."""
    mixed = dtype != "fp32"
    states = 8 if optimizer in ("adamw", "adam") else 4      # m and v / momentum, fp32
    return states + (4 if mixed else 0)                      # + the fp32 master weights


# ---------------------------------------------------------------------------------------------
def train(model, device="h100-sxm", batch: int = 1, seq_len: int | None = None,
          dtype: str = "bf16", optimizer: str = "adamw", zero_stage: int = 0, dp: int = 1,
          tp: int = 1, pp: int = 1, recompute: str = "none", lora_rank: int | None = None,
          lora_targets=("q_proj", "v_proj"), freeze=(), microbatches: int | None = None,
          attention: str = "flash", collective: str = "ring", **workload) -> TrainReport:
    """The cost of one training step of ``model`` (a preset name or Config) on ``dp·tp·pp``
    devices (see the module docstring for every formula).

    ``batch``: the global batch -- sequences (LLaMA, Whisper), image-text pairs (CLIP: the
    contrastive loss compares all ``batch`` x ``batch`` pairs), images (SAM) -- split over ``dp``
    replicas; ``seq_len``: tokens per sequence (LLaMA, Whisper's decoder, CLIP's text).
    ``freeze``: module-name prefixes whose weights are not trained (SAM: ``"image_encoder"``);
    ``lora_rank`` with ``lora_targets``: LoRA adapters on those projections, everything else
    frozen.  ``microbatches`` (pipeline): the per-replica batch split into that many (default:
    one sequence each).  ``workload``: further analyze() options (SAM ``prompts``, ``points``)."""
    family, label, cfg = resolve_model(model)
    dev = _devices.get_device(device)
    positive("batch", batch)
    for name, v in (("dp", dp), ("tp", tp), ("pp", pp)):
        positive(name, v)
    _check("dtype", dtype, TRAIN_DTYPES)
    _check("optimizer", optimizer, OPTIMIZERS)
    _check("zero_stage", zero_stage, (0, 1, 2, 3))
    _check("recompute", recompute, RECOMPUTE)
    if batch % dp:
        raise ValueError(f"dp={dp} must divide the global batch {batch} (each replica trains "
                         f"batch / dp samples)")
    local = batch // dp
    m = local if microbatches is None else positive("microbatches", microbatches)
    if local % m:
        raise ValueError(f"microbatches={m} must divide the per-replica batch {local}")
    if lora_rank is not None:
        positive("lora_rank", lora_rank)
        if isinstance(lora_targets, str) or not lora_targets:
            raise ValueError(f"lora_targets must be a non-empty tuple of module names, got "
                             f"{lora_targets!r}")
    if isinstance(freeze, str):
        freeze = (freeze,)
    freeze = tuple(_ALIASES.get(f, f) for f in freeze)
    layers_n = _num_layers(cfg, family)
    if layers_n % pp:
        raise ValueError(f"pp={pp} must divide the model's {layers_n} transformer layers")

    kw = dict(dtype=dtype, attention=attention, phase=_PHASE[family], **workload)
    if family in ("llama2", "whisper"):
        kw.update(seq_len=seq_len, logits="all")
    elif family == "clip":
        kw.update(seq_len=seq_len, text_batch=None)
    elif seq_len is not None:
        raise ValueError("seq_len does not apply to sam (its workload is images and prompts)")

    def fwd(b, tp_, fuse=True):
        if family == "clip":
            kw["text_batch"] = b
        with warnings.catch_warnings():        # analyze()'s inference fit; train() has its own
            warnings.simplefilter("ignore")
            return _analyze(cfg, dev, batch=b, tp=tp_, fuse_elementwise=fuse,
                            collective=collective, **kw)

    glob = fwd(batch, 1)                                # the whole step: FLOPs over all GPUs
    one = fwd(local // m, tp)                     # one micro-batch on one GPU of a replica
    mem_recs = fwd(local // m, tp, fuse=False).layers   # the same, every elementwise input
    shapes = _module(family).weight_shapes(cfg)

    def frozen(name: str) -> bool:
        return lora_rank is not None or any(name.startswith(f) for f in freeze)

    for f in freeze:
        if not any(k.startswith(f) for k in shapes):
            raise ValueError(f"freeze: no parameters under {f!r} in {family} (its parts: "
                             f"{', '.join(p for p, _ in _PARTS[family] if p)})")
    lora = _lora_targets(glob.layers, shapes, lora_targets) if lora_rank else {}
    if lora_rank and not lora:
        raise ValueError(f"lora_targets {lora_targets!r} match no projection of {family}")

    def step(layers):
        plan = grad_plan(family, layers, frozen, set(lora))
        recs, bwd, rec_ = [], [], []
        prev = (False, False)
        for r, (dg, wg) in zip(layers, plan):
            recs.append(r)
            k = (dg + wg) if r.weights_dtype else (2 * dg if _is_product(r) else dg)
            if r.op == "allreduce":
                # Megatron: the backward all-reduces the input gradient of the column-parallel
                # layer that pairs with each forward all-reduce: one of the same size
                k, (dg, wg) = int(any(prev)), (False, False)
            if k:
                bwd.append(_scaled(r, k, "backward", ".grad"))
            prev = (dg, wg)
            if (dg or wg) and (recompute == "full" or (recompute == "selective"
                                                       and r.op == "attention")):
                rec_.append(_scaled(r, 1, "recompute", ".recompute"))
            if r.name in lora:
                d_in, d_out = lora[r.name]
                a = _lora_records(r, lora_rank, d_in, d_out, DTYPE_BYTES[dtype])
                recs.append(a)
                # B's two gradients, A's weight gradient, A's input gradient when upstream
                a_b = a.macs * d_out / (d_in + d_out)
                kb = (2 * a_b + (a.macs - a_b) * (1 + dg)) / a.macs
                bwd.append(_scaled(a, kb, "backward", ".grad"))
        return recs, bwd, rec_, plan

    g_f, g_b, g_r, _ = step(glob.layers)
    flops_fwd = sum(r.flops_dense for r in g_f)
    flops_step = flops_fwd + sum(r.flops_dense for r in g_b + g_r)
    model_flops = flops_fwd + sum(r.flops_dense for r in g_b)

    f, b, rc, plan = step(one.layers)
    for r in b + rc + [x for x in f if x.name.endswith(".lora")]:
        time_layer(r, dev)
    per_gpu = f + b + rc
    t_micro = sum(r.t_pred if dev.profile is not None else r.t_lower for r in per_gpu) / pp
    bubble = (m + pp - 1) / m
    t_compute = t_micro * m * bubble

    params = _module(family).count_params(cfg)
    frozen_params = sum(math.prod(s) for k, s in shapes.items()
                        if frozen(k.removesuffix(".weight").removesuffix(".bias")))
    lora_params = sum(lora_rank * (di + do) for di, do in lora.values()) if lora_rank else 0
    trained = params - frozen_params + lora_params
    wb = DTYPE_BYTES[dtype]
    shard = tp * pp
    mem = {"weights": (params + lora_params) * wb / shard / (dp if zero_stage >= 3 else 1),
           "gradients": trained * wb / shard / (dp if zero_stage >= 2 else 1),
           "optimizer": trained * _optimizer_bytes(optimizer, dtype) / shard
           / (dp if zero_stage >= 1 else 1)}
    mem_plan = grad_plan(family, mem_recs, frozen, set(lora))
    # 1F1B keeps the activations of up to pp micro-batches in flight on the first stage
    act = activation_bytes(mem_recs, mem_plan, recompute, attention == "unfused")
    mem["activations"] = act / pp * min(pp, m)
    mem["total"] = sum(mem.values())

    grad_bytes = trained * wb / shard
    volume = {0: 2, 1: 2, 2: 2, 3: 3}[zero_stage] * (dp - 1) / dp * grad_bytes
    t_dp = 0.0
    if dp > 1:
        if not dev.interconnect:
            raise ValueError(f"device {dev.key!r} has no interconnect bandwidth; data "
                             f"parallelism cannot be timed on it")
        hops = 2 * (dp - 1) if collective == "ring" else 2 * math.ceil(math.log2(dp))
        t_dp = volume / dev.interconnect + hops * (dev.link_latency or 0.0)
    t_step = t_compute + t_dp
    gpus = dp * tp * pp
    peak = dev.peak(one.layers[0].dtype if dtype == "fp32" else dtype)
    mfu = model_flops / (t_step * gpus * peak) if t_step else 0.0
    tokens = batch * (seq_len or one.options.get("seq_len") or 0) if family in (
        "llama2", "whisper") else batch
    opts = dict(batch=batch, seq_len=one.options.get("seq_len"), dtype=dtype,
                optimizer=optimizer, zero_stage=zero_stage, dp=dp, tp=tp, pp=pp,
                recompute=recompute, lora_rank=lora_rank,
                lora_targets=tuple(lora_targets) if lora_rank else (), freeze=freeze,
                microbatches=m, attention=attention, **workload)
    return TrainReport(model=label, family=family, device=dev, options=opts, layers=per_gpu,
                       params=params, trainable_params=trained, flops_per_step=flops_step,
                       flops_forward=flops_fwd, model_flops_per_step=model_flops, memory=mem,
                       time_per_step=t_step,
                       time_parts={"compute_s": t_micro * m, "bubble_s": t_compute - t_micro * m,
                                   "dp_comm_s": t_dp},
                       samples_per_step=batch, tokens_per_step=tokens, mfu=mfu,
                       extra={"dp_comm_bytes": volume if dp > 1 else 0.0,
                              "bubble_fraction": (pp - 1) / (m + pp - 1)})


def _num_layers(cfg, family: str) -> int:
    """Transformer layers a pipeline splits (the decoder's for LLaMA, the deepest stack else)."""
    if family == "llama2":
        return cfg.num_hidden_layers
    return 1          # pipeline stages over the multi-tower models: any pp, an even split assumed


def _lora_targets(layers, shapes, targets) -> dict[str, tuple[int, int]]:
    """Weight GEMM records whose module name ends in a target -> (d_in, d_out) of the weight."""
    out = {}
    for r in layers:
        last = r.name.rsplit(".", 1)[-1]
        w = shapes.get(r.name + ".weight")
        if r.weights_dtype and last in targets and w is not None and len(w) == 2:
            out[r.name] = (w[1], w[0])
    return out
