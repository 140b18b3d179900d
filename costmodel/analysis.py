"""``analyze()``: a model, a device and a workload -> per-layer roofline records and a summary.

Phases (``phase=``):
  llama2   "prefill" (B x seq_len prompt tokens), "decode" (one token against a KV cache of
           seq_len keys, the new one included), "generate" (prefill of seq_len tokens, then
           new_tokens - 1 decode steps, each at its own KV length, summed step by step)
  whisper  "prefill" (encoder once + decoder over seq_len prompt tokens, cross K/V projected once),
           "decode" (one decoder step at self-attention KV length seq_len, cross K/V re-read),
           "generate" (prefill + new_tokens - 1 decode steps)
  clip     "image" (batch images), "text" (text_batch texts of seq_len tokens), "all" (both towers
           and the text_batch x batch similarity matrix)
  sam      "encoder" (batch images), "decoder" (prompt encoder + mask decoder for `prompts`
           prompts per image), "all" (both; the summary amortises the encoder over the prompts)
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field

from . import hardware as _devices
from .graph import COUNT_FIELDS, TIME_FIELDS, GraphBuilder, Layer, Precision
from .roofline import time_layers

__all__ = ["analyze", "Report", "resolve_model", "MODELS", "PHASES", "presets"]

MODELS = ("llama2", "clip", "sam", "whisper")
PHASES = {"llama2": ("prefill", "decode", "generate"), "whisper": ("prefill", "decode", "generate"),
          "clip": ("all", "image", "text"), "sam": ("all", "encoder", "decoder")}
DEFAULT_PHASE = {"llama2": "decode", "whisper": "generate", "clip": "all", "sam": "all"}


def _module(family: str):
    return importlib.import_module(f"pyworkloads.models.{family}")


def _graph(family: str):
    return importlib.import_module(f".graphs.{family}", __package__)


def presets() -> dict[str, str]:
    """Every preset name of the four model modules -> its model family."""
    out = {}
    for fam in MODELS:
        try:
            mod = _module(fam)
        except ImportError:
            continue
        out.update({name: fam for name in mod.PRESETS})
    return out


def resolve_model(model) -> tuple[str, str, object]:
    """A preset name or a pyworkloads Config -> (family, label, config)."""
    if isinstance(model, str):
        table = presets()
        if model not in table:
            close = [p for p in table if model.lower() in p]
            hint = f" (did you mean {', '.join(close[:6])}?)" if close else ""
            raise ValueError(f"unknown model {model!r}{hint}; known presets: {', '.join(table)}")
        fam = table[model]
        return fam, model, _module(fam).PRESETS[model]
    for fam in MODELS:
        try:
            mod = _module(fam)
        except ImportError:
            continue
        if isinstance(model, mod.Config):
            return fam, f"{fam} (custom config)", model
    raise TypeError(f"model must be a preset name or a pyworkloads model Config, got {type(model).__name__}")


def _positive(name: str, v, allow_zero: bool = False) -> int:
    lo = 0 if allow_zero else 1
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return v


# ---------------------------------------------------------------------------------------------
@dataclass
class Report:
    """The result of :func:`analyze`: records, totals, summary, and the settings that made them."""
    model: str
    family: str
    config: object
    device: _devices.Device
    phase: str
    options: dict
    layers: list[Layer]
    params: int
    summary: dict = field(default_factory=dict)

    @property
    def total(self) -> dict:
        """Every count and time summed over all records."""
        return totals(self.layers)

    def by_phase(self) -> dict[str, dict]:
        out: dict[str, list] = {}
        for r in self.layers:
            out.setdefault(r.phase, []).append(r)
        return {ph: totals(rs) for ph, rs in out.items()}

    def to_json(self, indent: int | None = 1) -> str:
        from .report import to_json
        return to_json(self, indent)

    def to_csv(self) -> str:
        from .report import to_csv
        return to_csv(self)

    def to_markdown(self, per_layer: bool = False) -> str:
        from .report import to_markdown
        return to_markdown(self, per_layer)

    def to_table(self, per_layer: bool = False, width: int = 132) -> str:
        from .report import to_table
        return to_table(self, per_layer, width)

    def __str__(self) -> str:
        return self.to_table()


def totals(layers) -> dict:
    t = {f: 0 for f in COUNT_FIELDS + TIME_FIELDS}
    for r in layers:
        for f in t:
            t[f] += getattr(r, f)
    t["bytes"] = sum(r.bytes for r in layers)
    t["intensity"] = t["flops"] / t["bytes"] if t["bytes"] else 0.0
    return t


def _t(layers) -> float:
    return sum(r.t_lower for r in layers)


# ---------------------------------------------------------------------------------------------
def analyze(model, device="h100-sxm", phase: str | None = None, batch: int = 1, seq_len: int | None = None,
            dtype: str = "bf16", new_tokens: int | None = None, *, weights: str | None = None,
            activations: str | None = None, kv: str | None = None, group_size: int = 128,
            attention: str = "flash", tp: int = 1, fuse_elementwise: bool = True, tf32: bool = False,
            logits: str = "last", text_batch: int | None = None, prompts: int = 1, points: int = 1,
            boxes: bool = False) -> Report:
    """Per-layer FLOPs, bytes and roofline times of ``model`` on ``device`` (see the module doc
    for the phases).  ``dtype`` sets weights/activations/KV at once (int4/int8: weight-only);
    ``weights``/``activations``/``kv`` override each.  ``tp``: tensor-parallel degree (counts are
    per device, plus ring all-reduce time over the interconnect).  ``logits``: "last" (serving)
    or "all" (every position, as ``model(ids)`` returns)."""
    family, label, cfg = resolve_model(model)
    dev = _devices.get_device(device)
    phase = phase or DEFAULT_PHASE[family]
    if phase not in PHASES[family]:
        raise ValueError(f"phase {phase!r} does not apply to {family}; choose one of {', '.join(PHASES[family])}")
    _positive("batch", batch)
    _positive("prompts", prompts)
    _positive("points", points, allow_zero=True)
    if logits not in ("last", "all"):
        raise ValueError(f"logits must be 'last' or 'all', got {logits!r}")
    prec = Precision.parse(dtype, weights=weights, activations=activations, kv=kv, group_size=group_size, tf32=tf32)
    for dt in {prec.matmul_dtype, prec.attention_dtype}:
        if not dev.supports(dt):
            raise ValueError(f"device {dev.key!r} ({dev.name}) has no {dt} tensor rate; choose another dtype "
                             f"(it supports {', '.join(d for d in dev.peaks)})")
    opts = dict(batch=batch, dtype=dtype, precision=prec.describe(), attention=attention, tp=tp,
                fuse_elementwise=fuse_elementwise)

    def builder(ph: str, step: str = "") -> GraphBuilder:
        return GraphBuilder(prec, attention=attention, tp=tp, fuse_elementwise=fuse_elementwise, phase=ph, step=step)

    g = _graph(family)
    summary: dict = {}
    layers: list[Layer] = []
    kv_bytes = 0.0
    if family in ("llama2", "whisper"):
        if family == "llama2":
            ctx = cfg.max_position_embeddings
            seq_len = 512 if seq_len is None else seq_len
        else:
            ctx = cfg.max_target_positions
            seq_len = 4 if seq_len is None else seq_len     # <|startoftranscript|><|lang|><|task|><|notimestamps|>
        _positive("seq_len", seq_len)
        # defaults: 128 generated tokens for LLaMA; ~100 for 30 s of speech (about 75 words) in Whisper
        n_new = (128 if family == "llama2" else 100) if new_tokens is None else _positive("new_tokens", new_tokens)
        last = seq_len + (n_new - 1 if phase == "generate" else 0)
        if last > ctx:
            raise ValueError(f"seq_len {seq_len}" + (f" + new_tokens {n_new} - 1" if phase == "generate" else "")
                             + f" = {last} exceeds the model's context of {ctx} positions")
        opts.update(seq_len=seq_len, logits=logits, **({"new_tokens": n_new} if phase == "generate" else {}))

        def prefill_graph() -> list[Layer]:
            gb = builder("prefill")
            if family == "llama2":
                g.forward(gb, cfg, batch, seq_len, 0, logits)
            else:
                enc = builder("encoder")
                g.encoder(enc, cfg, batch)
                g.decoder(gb, cfg, batch, seq_len, 0, "compute", logits)
                return time_layers(enc.layers, dev) + time_layers(gb.layers, dev)
            return time_layers(gb.layers, dev)

        def decode_graph(kv_len: int, step: str) -> list[Layer]:
            gb = builder("decode", step)
            if family == "llama2":
                g.forward(gb, cfg, batch, 1, kv_len - 1, "last")
            else:
                g.decoder(gb, cfg, batch, 1, kv_len - 1, "cached", "last")
            return time_layers(gb.layers, dev)

        if phase == "prefill":
            layers = prefill_graph()
            ttft = _t(layers)
            summary.update(ttft_s=ttft, prefill_tokens_per_s=batch * seq_len / ttft)
            if family == "whisper":
                summary["encoder_s"] = _t([r for r in layers if r.phase == "encoder"])
            kv_len = seq_len
        elif phase == "decode":
            layers = decode_graph(seq_len, str(seq_len))
            tpot = _t(layers)
            summary.update(tpot_s=tpot, tokens_per_s=batch / tpot)
            kv_len = seq_len
        else:
            layers = prefill_graph()
            ttft = _t(layers)
            decode = _sum_decode(decode_graph, [seq_len + j + 1 for j in range(n_new - 1)], f"1..{n_new - 1}")
            layers = layers + decode
            t_dec = _t(decode)
            total = ttft + t_dec
            summary.update(ttft_s=ttft, tpot_s=t_dec / (n_new - 1) if n_new > 1 else None,
                           total_s=total, tokens_per_s=batch * n_new / total,
                           decode_tokens_per_s=batch * (n_new - 1) / t_dec if t_dec else None)
            if family == "whisper":
                summary["encoder_s"] = _t([r for r in layers if r.phase == "encoder"])
            kv_len = seq_len + n_new - 1
        kv_bytes = g.kv_cache_bytes(cfg, batch, kv_len, prec.kv_bytes, tp)
    elif family == "clip":
        tb = batch if text_batch is None else _positive("text_batch", text_batch)
        T = cfg.text_config.max_position_embeddings if seq_len is None else _positive("seq_len", seq_len)
        if T > cfg.text_config.max_position_embeddings:
            raise ValueError(f"seq_len {T} exceeds CLIP's text context of {cfg.text_config.max_position_embeddings}")
        opts.update(text_batch=tb, seq_len=T)
        if phase in ("image", "all"):
            gb = builder("image")
            g.image_tower(gb, cfg, batch)
            img = time_layers(gb.layers, dev)
            layers += img
            summary.update(image_s=_t(img), images_per_s=batch / _t(img))
        if phase in ("text", "all"):
            gb = builder("text")
            g.text_tower(gb, cfg, tb, T)
            txt = time_layers(gb.layers, dev)
            layers += txt
            summary.update(text_s=_t(txt), texts_per_s=tb / _t(txt))
        if phase == "all":
            gb = builder("similarity")
            g.similarity(gb, cfg, batch, tb)
            layers += time_layers(gb.layers, dev)
            summary["total_s"] = _t(layers)
    else:                                                       # sam
        opts.update(prompts=prompts, points=points, boxes=boxes)
        t_enc = t_dec = None
        if phase in ("encoder", "all"):
            gb = builder("encoder")
            g.image_encoder(gb, cfg, batch)
            enc = time_layers(gb.layers, dev)
            layers += enc
            t_enc = _t(enc)
            summary.update(encoder_s=t_enc, images_per_s=batch / t_enc)
        if phase in ("decoder", "all"):
            gb = builder("decoder")
            g.image_positional_embeddings(gb, cfg)
            g.prompt_decoder(gb, cfg, batch, prompts, points, boxes)
            dec = time_layers(gb.layers, dev)
            layers += dec
            t_dec = _t(dec)
            summary.update(decoder_s=t_dec, decoder_s_per_prompt=t_dec / (batch * prompts))
        if phase == "all":
            summary.update(images_per_s=batch / (t_enc + t_dec),
                           amortised_s_per_prompt=(t_enc + t_dec) / (batch * prompts),
                           total_s=t_enc + t_dec)
    params = _module(family).count_params(cfg)
    w_bytes = _weight_bytes(params, prec) / tp
    act_bytes = max((r.bytes_act_in + r.bytes_act_out for r in layers), default=0.0)
    mem = {"weights": w_bytes, "kv_cache": kv_bytes, "activations": act_bytes}
    mem["total"] = sum(mem.values())
    summary.update(memory_bytes=mem, fits=mem["total"] <= dev.memory, device_memory_bytes=dev.memory,
                   time_s=_t(layers))
    return Report(model=label, family=family, config=cfg, device=dev, phase=phase, options=opts, layers=layers,
                  params=params, summary=summary)


def _weight_bytes(params: int, prec: Precision) -> float:
    """All parameters at the weight dtype, quantisation scales included (norms and embeddings are
    a rounding error at these sizes)."""
    return prec.weight_bytes(params, 0)


def _sum_decode(make, kv_lens: list[int], label: str) -> list[Layer]:
    """Sum the decode steps at KV lengths ``kv_lens`` (consecutive) record by record, each step
    timed at its own length (t_lower = max(compute, memory) per step, then summed).

    The counts of a decode step are affine in the KV length (only attention and the cache depend
    on it), so steps 1 and 2 give every record's per-step increment; the last step, built
    explicitly, must match the extrapolation exactly, else every step is built one by one."""
    n = len(kv_lens)
    if n == 0:
        return []
    if n <= 3:
        return _sum_steps([make(k, str(k)) for k in kv_lens], label)
    first, second, last = make(kv_lens[0], ""), make(kv_lens[1], ""), make(kv_lens[-1], "")
    fields = COUNT_FIELDS + ("t_compute", "t_memory", "t_comm")
    affine = len(first) == len(second) == len(last) and all(
        getattr(c, f) == getattr(a, f) + (n - 1) * (getattr(b, f) - getattr(a, f))
        for a, b, c in zip(first, second, last) for f in COUNT_FIELDS)
    if not affine:
        return _sum_steps((make(k, str(k)) for k in kv_lens), label)
    out = []
    for a, b in zip(first, second):
        acc = dataclasses.replace(a, step=label)
        d = {f: getattr(b, f) - getattr(a, f) for f in fields}
        for f in fields:                               # sum over j of (a + j d), j = 0 .. n-1
            setattr(acc, f, n * getattr(a, f) + d[f] * (n * (n - 1) // 2))
        if any(d[f] for f in ("t_compute", "t_memory")):
            tl = tu = 0.0
            for j in range(n):
                tc, tm = a.t_compute + j * d["t_compute"], a.t_memory + j * d["t_memory"]
                tl += max(tc, tm)
                tu += tc + tm
            acc.t_lower, acc.t_upper = tl + acc.t_comm, tu + acc.t_comm
        else:
            acc.t_lower, acc.t_upper = n * a.t_lower, n * a.t_upper
        out.append(acc)
    return _finish_sum(out, label)


def _sum_steps(steps, label: str) -> list[Layer]:
    """Add decode steps record by record (the graphs of two steps differ only in their lengths),
    times included: each step's roofline is applied to that step, then summed."""
    out: list[Layer] = []
    for k, step in enumerate(steps):
        if k == 0:
            out = [dataclasses.replace(r, step=label) for r in step]
            continue
        for acc, r in zip(out, step):
            for f in COUNT_FIELDS + TIME_FIELDS:
                setattr(acc, f, getattr(acc, f) + getattr(r, f))
    return _finish_sum(out, label)


def _finish_sum(out: list[Layer], label: str) -> list[Layer]:
    for acc in out:
        acc.intensity = acc.flops / acc.bytes if acc.bytes else 0.0
        if acc.op != "allreduce" and (acc.t_compute or acc.t_memory):
            acc.bound = "compute" if acc.t_compute >= acc.t_memory else "memory"
        if " kv[" in acc.shapes:
            acc.shapes = acc.shapes.split(" kv[")[0] + f" kv[... summed over steps {label}]"
    return out
