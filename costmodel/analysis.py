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
import math
import warnings
from dataclasses import dataclass, field

from . import hardware as _devices
from .engine import add_trace
from .graph import COUNT_FIELDS, TIME_FIELDS, GraphBuilder, Layer, Precision
from .roofline import time_layers

__all__ = ["analyze", "Report", "Workload", "resolve_model", "MODELS", "PHASES", "presets"]

MODELS = ("llama2", "clip", "sam", "whisper")
MAX_BATCH = 1 << 16          # sequences, images, texts or SAM prompts in one analysed call
MAX_POINTS = 1024            # points per SAM prompt (SamPredictor's limit)


def _module(family: str):
    return importlib.import_module(f"pyworkloads.models.{family}")


def _graph(family: str):
    return importlib.import_module(f".graphs.{family}", __package__)


def _phases() -> dict[str, tuple]:
    return {fam: _graph(fam).PHASES for fam in MODELS}


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
    raise TypeError(f"model must be a preset name or a pyworkloads model Config, got "
                    f"{type(model).__name__}")


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

    def to_html(self) -> str:
        """The report as one self-contained HTML page (plotly: ``pip install
        "pyworkloads[html]"``)."""
        from .report import to_html
        return to_html(self)

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


# ---------------------------------------------------------------------------------------------
@dataclass
class Workload:
    """What :func:`analyze` was asked, as the family modules (``graphs/<model>.py``) see it: the
    config, the device, the precision and the attention/parallelism options; :meth:`layers`
    turns a trace of the engine into timed records."""
    family: str
    cfg: object
    device: _devices.Device
    precision: Precision
    attention: str
    tp: int
    fuse_elementwise: bool
    batch: int
    collective: str = "ring"
    flash_block: int | None = None

    def layers(self, trace, phase: str, step: str = "") -> list[Layer]:
        """The timed layer records of one traced forward pass."""
        gb = GraphBuilder(self.precision, attention=self.attention, tp=self.tp,
                          fuse_elementwise=self.fuse_elementwise, phase=phase, step=step,
                          collective=self.collective, flash_block=self.flash_block)
        add_trace(gb, trace, _graph(self.family).TP)
        return time_layers(gb.layers, self.device)


def seconds(layers, field: str = "t_lower") -> float:
    """The time of some records: their t_lower (the roofline) or another time field, summed."""
    return sum(getattr(r, field) for r in layers)


def positive(name: str, v, allow_zero: bool = False) -> int:
    lo = 0 if allow_zero else 1
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return v


def generation(w: Workload, phase: str, seq_len: int | None, new_tokens: int | None,
               logits: str, context: int, defaults: tuple[int, int], prefill, decode) -> tuple:
    """The phases of a decoder that generates token by token (LLaMA, Whisper's text decoder).

    prefill(seq_len) -> the records of the prompt's forward pass; decode(kv_len, step) -> the
    records of one step at self-attention KV length ``kv_len``.  seq_len and new_tokens default
    to ``defaults`` and must fit in ``context`` positions.  "generate" is the prefill of seq_len
    tokens then new_tokens - 1 decode steps, each at its own KV length, summed step by step.
    Returns (records, summary, final KV length, the options used)."""
    seq_len = defaults[0] if seq_len is None else positive("seq_len", seq_len)
    n_new = defaults[1] if new_tokens is None else positive("new_tokens", new_tokens)
    last = seq_len + (n_new - 1 if phase == "generate" else 0)
    if last > context:
        raise ValueError(f"seq_len {seq_len}"
                         + (f" + new_tokens {n_new} - 1" if phase == "generate" else "")
                         + f" = {last} exceeds the model's context of {context} positions")
    used = dict(seq_len=seq_len, logits=logits,
                **({"new_tokens": n_new} if phase == "generate" else {}))
    summary: dict = {}
    if phase == "prefill":
        layers = prefill(seq_len)
        ttft = seconds(layers)
        summary.update(ttft_s=ttft, prefill_tokens_per_s=w.batch * seq_len / ttft)
        return layers, summary, seq_len, used
    if phase == "decode":
        layers = decode(seq_len, str(seq_len))
        tpot = seconds(layers)
        summary.update(tpot_s=tpot, tokens_per_s=w.batch / tpot)
        return layers, summary, seq_len, used
    layers = prefill(seq_len)
    ttft = seconds(layers)
    steps = _sum_decode(decode, [seq_len + j + 1 for j in range(n_new - 1)], f"1..{n_new - 1}")
    t_dec = seconds(steps)
    total = ttft + t_dec
    b = w.batch
    summary.update(ttft_s=ttft, tpot_s=t_dec / (n_new - 1) if n_new > 1 else None,
                   total_s=total, tokens_per_s=b * n_new / total,
                   decode_tokens_per_s=b * (n_new - 1) / t_dec if t_dec else None)
    return layers + steps, summary, seq_len + n_new - 1, used


def analyze(model, device="h100-sxm", phase: str | None = None, batch: int = 1,
            seq_len: int | None = None, dtype: str | None = None, new_tokens: int | None = None, *,
            weights: str | None = None, activations: str | None = None, kv: str | None = None,
            embedding: str | None = None, weight_dtypes=None, group_size: int = 128,
            attention: str = "flash", tp: int = 1,
            fuse_elementwise: bool = True, tf32: bool = False, logits: str = "last",
            text_batch: int | None = None, prompts: int | None = None, points: int | None = None,
            boxes: bool | None = None, collective: str = "ring",
            flash_block: int | None = None) -> Report:
    """Per-layer FLOPs, bytes and roofline times of ``model`` on ``device`` (see the module doc
    for the phases).  ``dtype`` sets weights/activations/KV at once (int4/int8 and llama.cpp's
    block formats q8_0, q4_0, q4_1, q4_k, q6_k and its q4_k_m recipe: weight-only);
    ``weights``/``activations``/``kv`` override each, ``embedding`` the token-embedding tables'
    and the output head's dtype, ``weight_dtypes`` ({module name: dtype}) single matrices' (a
    GGUF file's formats; see :class:`~costmodel.graph.Precision`).  ``tp``:
    tensor-parallel degree (counts are per device, plus all-reduce time over the interconnect:
    ``collective`` "ring" or "tree", α-β).  ``logits``: "last" (serving) or "all" (every
    position, as ``model(ids)`` returns).
    ``flash_block``: charge flash attention's K/V re-reads per block of that many queries.
    An option the model or phase does not use is an error; a workload that does not fit the
    device, or is absurd, gets a warning.

    The layer records come from a shape-only trace of the pyworkloads forward pass of this
    workload (``costmodel.engine``); the family module (``graphs/<model>.py``) says which forward
    functions a phase runs."""
    family, label, cfg = resolve_model(model)
    dev = _devices.get_device(device)
    fam = _graph(family)
    phase = phase or fam.DEFAULT_PHASE
    if phase not in fam.PHASES:
        raise ValueError(f"phase {phase!r} does not apply to {family}; choose one of "
                         f"{', '.join(fam.PHASES)}")
    positive("batch", batch)
    # beyond these a workload is a typo, and its trace would allocate per sequence or prompt
    for name, v, cap in (("batch", batch, MAX_BATCH), ("text_batch", text_batch, MAX_BATCH),
                         ("prompts", prompts, MAX_BATCH), ("points", points, MAX_POINTS)):
        if v is not None and not isinstance(v, bool) and isinstance(v, int) and v > cap:
            raise ValueError(f"{name} {v:,} is beyond what the cost model analyses (at most "
                             f"{cap:,})")
    if logits not in ("last", "all"):
        raise ValueError(f"logits must be 'last' or 'all', got {logits!r}")
    if attention not in ("flash", "unfused"):
        raise ValueError(f"attention must be 'flash' or 'unfused', got {attention!r}")
    positive("tp", tp)
    # the engine on a CPU computes in float32 (a quantized weight is decoded to float32 too);
    # an accelerator serves in bf16 unless told otherwise
    floats = "fp32" if dev.segment == "cpu" else "bf16"
    dtype = dtype or floats
    prec = Precision.parse(dtype, weights=weights, activations=activations, kv=kv,
                           embedding=embedding, group_size=group_size, tf32=tf32,
                           default_activations=floats,
                           overrides=tuple(sorted((weight_dtypes or {}).items()))).resolve(cfg)
    for dt in {prec.matmul_dtype, prec.attention_dtype}:
        if not dev.supports(dt):
            raise ValueError(f"device {dev.key!r} ({dev.name}) has no {dt} tensor rate; choose "
                             f"another dtype (it supports {', '.join(d for d in dev.peaks)})")
    _refuse_unused(family, phase, new_tokens=new_tokens, text_batch=text_batch, prompts=prompts,
                   points=points, boxes=boxes, logits=None if logits == "last" else logits,
                   seq_len=seq_len, flash_block=flash_block, attention=attention)
    prompts = 1 if prompts is None else prompts
    points = 1 if points is None else points
    boxes = bool(boxes)
    w = Workload(family, cfg, dev, prec, attention, tp, fuse_elementwise, batch, collective,
                 flash_block)
    opts = dict(batch=batch, dtype=dtype, precision=prec.describe(), attention=attention, tp=tp,
                fuse_elementwise=fuse_elementwise,
                **({"collective": collective} if tp > 1 else {}),
                **({"flash_block": flash_block} if flash_block else {}))
    layers, summary, kv_bytes, used = fam.analyze(w, phase, batch=batch, seq_len=seq_len,
                                                  new_tokens=new_tokens, logits=logits,
                                                  text_batch=text_batch, prompts=prompts,
                                                  points=points, boxes=boxes)
    opts.update(used)
    params = _module(family).count_params(cfg)
    w_bytes = _weight_bytes(params, prec, _module(family).weight_shapes(cfg)) / tp
    act_bytes = max((r.bytes_act_in + r.bytes_act_out for r in layers), default=0.0)
    mem = {"weights": w_bytes, "kv_cache": kv_bytes, "activations": act_bytes}
    mem["total"] = sum(mem.values())
    summary.update(memory_bytes=mem, fits=mem["total"] <= dev.memory,
                   device_memory_bytes=dev.memory, time_s=seconds(layers))
    if dev.profile is not None:
        summary.update(_predicted(layers, phase, opts))
    if mem["total"] > 100 * dev.memory:
        warnings.warn(f"{label} on {dev.key}: an absurd workload (batch {batch}, "
                      f"{mem['total'] / 1e9:,.0f} GB for a {dev.memory / 1e9:,.0f} GB device)",
                      stacklevel=2)
    elif not summary["fits"]:
        warnings.warn(f"{label} does not fit on {dev.key}: it needs {mem['total'] / 1e9:,.1f} GB "
                      f"(weights, KV cache, the largest activation) of {dev.memory / 1e9:,.1f} GB",
                      stacklevel=2)
    return Report(model=label, family=family, config=cfg, device=dev, phase=phase, options=opts,
                  layers=layers, params=params, summary=summary)


# the analyze() options each family (and phase) uses; any other one given is an error
_USES = {"llama2": {"new_tokens", "logits", "seq_len", "flash_block"},
         "whisper": {"new_tokens", "logits", "seq_len", "flash_block"},
         "clip": {"text_batch", "seq_len", "flash_block"},
         "sam": {"prompts", "points", "boxes", "flash_block"}}


def _refuse_unused(family: str, phase: str, **given) -> None:
    used = set(_USES[family])
    if phase != "generate":
        used.discard("new_tokens")
    if family == "clip" and phase == "image":
        used -= {"text_batch", "seq_len"}
    if family == "sam" and phase == "encoder":
        used -= {"prompts", "points", "boxes"}
    if given.pop("attention") != "flash":
        used.discard("flash_block")
    for name, value in given.items():
        if value is not None and value is not False and name not in used:
            raise ValueError(f"{name} does not apply to {family} phase {phase!r} "
                             f"(it uses {', '.join(sorted(used)) or 'none of the options'})")


def _predicted(layers, phase: str, opts: dict) -> dict:
    """The summary's predicted times (from t_pred): the whole run, each phase of records, and
    for a generating decoder the time to the first token and per later token."""
    out = {"time_pred_s": seconds(layers, "t_pred")}
    for ph in dict.fromkeys(r.phase for r in layers):
        out[f"{ph}_pred_s"] = seconds((r for r in layers if r.phase == ph), "t_pred")
    if "prefill_pred_s" in out:
        out["ttft_pred_s"] = out["prefill_pred_s"] + out.get("encoder_pred_s", 0.0)
    if "decode_pred_s" in out:
        steps = opts.get("new_tokens", 2) - 1 if phase == "generate" else 1
        out["tpot_pred_s"] = out["decode_pred_s"] / steps if steps else None
    return out


def _weight_bytes(params: int, prec: Precision, shapes: dict) -> float:
    """All parameters at the weight dtype, quantisation scales included (norms and embeddings are
    a rounding error at these sizes).  Under llama.cpp's block formats, tensor by tensor, as the
    file stores them: each matrix (rows of ``shape[1:]`` weights) at its own format, the
    embedding table and head included, a matrix whose rows are not whole blocks and every vector
    (norms, biases) as a float at the activation dtype."""
    if not prec.block_formats:
        return prec.weight_bytes(params, 0)
    total = 0.0
    for tensor, shape in shapes.items():
        n = math.prod(shape)
        if len(shape) < 2:
            total += n * prec.act_bytes
            continue
        module = tensor.removesuffix(".weight")
        dt = prec.weight_dtype(module, math.prod(shape[1:]), tensor)
        total += prec.weight_bytes(n, shape[0], dt)
    return total


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
    for a, b, c in zip(first, second, last):
        acc = dataclasses.replace(a, step=label)
        t_pred = n * (a.t_pred + c.t_pred) / 2            # a prediction is smooth in the length
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
        acc.t_pred = max(t_pred, acc.t_lower) if t_pred else 0.0
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


PHASES = _phases()
