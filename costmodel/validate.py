"""Predicted against measured: run the engine on a workload under ``pw.profile()`` and put each
kernel call's measured time next to the cost model's ``t_pred`` and ``t_lower`` for the same
layer, and the wall-clock time of the whole call next to the predicted total.

    v = cm.validate("llama2-110m", backend="cpp", phase="decode", seq_len=200)
    print(v.to_table()); v.median_error, v.e2e_error

The layer records and the profiled calls come from one code path (the records are a shape-only
trace of the same forward functions), so they line up one to one in execution order; a
mismatch is an error, never a silent skip.  The predictions need a calibrated profile of the
backend (``costmodel calibrate --backend cpp``).

``quantize="q8_0" | "q4_0" | "q4_1"`` validates LLaMA with block-quantized weights
(``pw.llama2.from_preset(..., quantize=...)``): the engine runs ``qmatmul`` where the cost model
has a GEMM whose ``weights_dtype`` is that block format, and the profile's qmatmul points of
that format predict it.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["validate", "validate_bench", "Validation", "LayerCheck", "KERNEL_OP", "kernel_op"]

KERNEL_OP = {"matmul": "matmul", "conv": "matmul", "attention": "attention",
             "rms_norm": "rms_norm", "layer_norm": "layer_norm", "gelu": "gelu"}


def kernel_op(layer) -> str:
    """The kernel ``pw.profile()`` records for a layer record: a GEMM whose weights are stored
    in a block format runs ``qmatmul``."""
    from .gguf import FORMATS
    if layer.op in ("matmul", "conv") and layer.weights_dtype in FORMATS:
        return "qmatmul"
    return KERNEL_OP[layer.op]
SHARE = 0.01            # layers carrying at least this share of the measured time are summarised


@dataclass
class LayerCheck:
    name: str
    op: str
    scope: str
    shapes: str
    measured: float          # seconds, the median of the repeats (pw.profile())
    t_pred: float
    t_lower: float

    @property
    def error(self) -> float:
        """(predicted - measured) / measured."""
        return self.t_pred / self.measured - 1.0 if self.measured > 0 else math.inf

    @property
    def tightness(self) -> float:
        """t_lower / measured: how close the bound comes (it must stay <= 1)."""
        return self.t_lower / self.measured if self.measured > 0 else math.inf


@dataclass
class Validation:
    """The outcome of :func:`validate`."""
    model: str
    backend: str
    phase: str
    options: dict
    device: str
    layers: list[LayerCheck]
    wall_s: float                 # the whole call, measured (the median of the repeats)
    pred_s: float                 # the whole call, predicted: every record + Python per call
    between_pred_s: float         # the predicted work outside the kernels (elementwise, lookups)
    repeats: int
    profile: dict = field(default_factory=dict)

    @property
    def kernel_s(self) -> float:
        return sum(c.measured for c in self.layers)

    @property
    def main(self) -> list[LayerCheck]:
        """The layers that carry at least 1 % of the measured kernel time."""
        total = self.kernel_s
        return [c for c in self.layers if c.measured >= SHARE * total]

    @property
    def median_error(self) -> float:
        return float(np.median([abs(c.error) for c in self.main])) if self.main else math.nan

    @property
    def worst_error(self) -> float:
        return max((abs(c.error) for c in self.main), default=math.nan)

    @property
    def e2e_error(self) -> float:
        return self.pred_s / self.wall_s - 1.0

    @property
    def tightness(self) -> float:
        """The median t_lower / measured over the main layers: how close the bound comes."""
        return float(np.median([c.tightness for c in self.main])) if self.main else math.nan

    @property
    def bound_violations(self) -> list[LayerCheck]:
        """Layers measured faster than their lower bound (a bug in the roofs if any)."""
        return [c for c in self.layers if c.measured < c.t_lower]

    def as_dict(self) -> dict:
        return {"model": self.model, "backend": self.backend, "phase": self.phase,
                "options": self.options, "device": self.device, "repeats": self.repeats,
                "wall_s": self.wall_s, "pred_s": self.pred_s, "e2e_error": self.e2e_error,
                "kernel_s": self.kernel_s, "between_pred_s": self.between_pred_s,
                "median_error": self.median_error, "worst_error": self.worst_error,
                "bound_violations": len(self.bound_violations), "tightness": self.tightness,
                "profile": self.profile,
                "layers": [{**asdict(c), "error": c.error, "tightness": c.tightness}
                           for c in self.layers]}

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.as_dict(), indent=indent)

    def to_table(self, per_layer: bool = True) -> str:
        from .report import fmt_time
        lines = [f"{self.model}: phase {self.phase}, backend {self.backend}, "
                 + ", ".join(f"{k}={v}" for k, v in self.options.items()),
                 f"device {self.device}; profile measured {self.profile.get('measured_at', '?')}; "
                 f"median of {self.repeats} runs", ""]
        if per_layer:
            head = f"{'layer':<46} {'op':<10} {'measured':>10} {'t_pred':>10} {'error':>8} " \
                   f"{'t_lower':>10} {'lower/meas':>10}"
            lines += [head, "-" * len(head)]
            for c in self.layers:
                lines.append(f"{c.name[-46:]:<46} {c.op:<10} {fmt_time(c.measured):>10} "
                             f"{fmt_time(c.t_pred):>10} {100 * c.error:>+7.1f}% "
                             f"{fmt_time(c.t_lower):>10} {c.tightness:>10.2f}")
            lines.append("")
        lines += [
            f"kernels: {len(self.layers)} calls, measured {fmt_time(self.kernel_s)}, "
            f"predicted {fmt_time(sum(c.t_pred for c in self.layers))}",
            f"per layer (the {len(self.main)} with >= {100 * SHARE:.0f} % of the kernel time): "
            f"median |error| {100 * self.median_error:.1f} %, worst {100 * self.worst_error:.1f} %",
            f"end to end: measured {fmt_time(self.wall_s)}, predicted {fmt_time(self.pred_s)} "
            f"({fmt_time(self.between_pred_s)} of it outside the kernels): "
            f"error {100 * self.e2e_error:+.1f} %",
            f"lower bound: {len(self.bound_violations)} layer(s) measured below t_lower; "
            f"median tightness t_lower/measured {self.tightness:.2f}"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_table()

    def to_html(self) -> str:
        """A self-contained, offline page: predicted vs measured per kernel call on log-log
        axes, the summary and the calls' table (``costmodel.html``; needs plotly)."""
        from .html import validation_html
        return validation_html(self)


# ---------------------------------------------------------------------------------------------
# the engine side: the same functions the family modules trace, on real arrays
# ---------------------------------------------------------------------------------------------
def _load(model, quantize: str | None = None):
    """A preset name, a Config or a checkpoint directory -> (family, label, engine model);
    ``quantize``: LLaMA's weights block-quantized by the engine (refused for other models)."""
    import pyworkloads as pw

    from .analysis import resolve_model

    def refuse_quantize(family):
        if quantize is not None and family != "llama2":
            raise ValueError(f"quantize applies to llama2 models (the engine block-quantizes "
                             f"LLaMA's weights), not to {family}; got quantize={quantize!r}")
    if isinstance(model, (str, Path)) and Path(model).suffix.lower() == ".gguf":
        if quantize is not None:
            raise ValueError(f"quantize: a GGUF file's tensors are stored in their own formats; "
                             f"got quantize={quantize!r} for {model}")
        return "llama2", str(model), pw.llama2.from_pretrained(model)
    if isinstance(model, (str, Path)) and Path(model).is_dir():
        from pyworkloads import io
        kind = io.load_config(Path(model)).get("model_type", "llama")
        family = {"llama": "llama2", "clip": "clip", "sam": "sam", "whisper": "whisper"}.get(kind)
        if family is None:
            raise ValueError(f"{model}: model_type {kind!r} is none of llama, clip, sam, whisper")
        refuse_quantize(family)
        load = getattr(pw, family).from_pretrained
        if quantize is None:
            return family, str(model), load(model)
        return family, str(model), load(model, quantize=quantize)
    family, label, cfg = resolve_model(model)
    refuse_quantize(family)
    mod = getattr(pw, family)
    if family == "llama2":
        return family, label, mod.from_preset(cfg, quantize=quantize)
    from pyworkloads.models.common import check_fits
    check_fits(4 * mod.count_params(cfg), label)           # refuse before allocating
    init = {"clip": "random_weights", "sam": "init_weights", "whisper": "random_weights"}[family]
    weights = getattr(mod, init)(cfg, 0)
    cls = {"clip": "CLIP", "sam": "Sam", "whisper": "Whisper"}[family]
    return family, label, getattr(mod, cls)(cfg, weights)


def stored_dtypes(weights, cfg) -> dict[str, str] | None:
    """{module: dtype} of every matrix of a LLaMA's weights when some are block-quantized (a
    GGUF file), None when none is; a float matrix is "fp32", the dtype the engine converts it
    to and its kernel reads."""
    from pyworkloads import quant
    from pyworkloads.models import llama2

    from .gguf import FORMATS
    out = {}
    for name, shape in llama2.weight_shapes(cfg).items():
        if len(shape) != 2 or name not in weights:
            continue
        if hasattr(weights, "dtype_of"):
            dt = weights.dtype_of(name)
        else:
            w = weights[name]
            dt = w.qtype if isinstance(w, quant.QuantizedTensor) else "F32"
        out[name.removesuffix(".weight")] = dt.lower() if dt.lower() in FORMATS else "fp32"
    return out if any(dt in FORMATS for dt in out.values()) else None


def _runs(family: str, m, phase: str, batch: int, seq_len: int | None, opts: dict):
    """(setup, run) for a workload: run() is the call timed and profiled; setup() restores any
    state it consumed (a KV cache's length)."""
    import pyworkloads as pw
    rng = np.random.default_rng(0)
    cfg = m.config
    if family == "llama2":
        vocab = cfg.vocab_size
        if phase == "prefill":
            ids = rng.integers(0, vocab, size=(batch, seq_len))
            cache = m.new_cache(batch, seq_len)
            return (lambda: setattr(cache, "length", 0),
                    lambda: pw.llama2.forward(ids, m.weights, cfg, cache, last_only=True))
        cache = m.new_cache(batch, seq_len)
        pw.llama2.forward(rng.integers(0, vocab, size=(batch, seq_len - 1)), m.weights, cfg, cache)
        nxt = rng.integers(0, vocab, size=(batch, 1))
        return (lambda: setattr(cache, "length", seq_len - 1),
                lambda: pw.llama2.forward(nxt, m.weights, cfg, cache, last_only=True))
    if family == "whisper":
        W = pw.whisper
        feats = rng.standard_normal((batch, cfg.num_mel_bins, 2 * cfg.max_source_positions),
                                    dtype=np.float32)
        ids = rng.integers(0, cfg.vocab_size, size=(batch, seq_len))
        cache = W.decoder_cache(cfg, batch, seq_len)
        if phase == "prefill":
            def prefill():
                audio = W.encoder(feats, m.weights, cfg)
                W.decoder(ids, W.cross_attention_kv(audio, m.weights, cfg), m.weights, cfg, cache,
                          last_only=True)
            return lambda: setattr(cache, "length", 0), prefill
        cross = W.cross_attention_kv(W.encoder(feats, m.weights, cfg), m.weights, cfg)
        W.decoder(ids[:, :-1], cross, m.weights, cfg, cache, last_only=True)
        return (lambda: setattr(cache, "length", seq_len - 1),
                lambda: W.decoder(ids[:, -1:], cross, m.weights, cfg, cache, last_only=True))
    if family == "clip":
        C, t, v = pw.clip, cfg.text_config, cfg.vision_config
        tb = opts["text_batch"]
        pix = rng.standard_normal((batch, v.num_channels, v.image_size, v.image_size),
                                  dtype=np.float32)
        ids = rng.integers(0, t.vocab_size - 2, size=(tb, opts["seq_len"]))
        ids[:, -1] = t.eos_token_id if t.eos_token_id != 2 else t.vocab_size - 1

        def run():
            img = C.image_features(pix, m.weights, v) if phase in ("image", "all") else None
            txt = C.text_features(ids, m.weights, t) if phase in ("text", "all") else None
            if phase == "all":
                C.similarity(img, txt, m.weights["logit_scale"])
        return (lambda: None), run
    S = pw.sam
    R = cfg.vision_config.image_size
    pix = rng.standard_normal((batch, 3, R, R), dtype=np.float32)
    P, N = opts["prompts"], opts["points"]
    pts = np.full((batch, P, N, 2), R / 2) if N else None
    labels = np.ones((batch, P, N), np.int64) if N else None
    box = np.tile([0.0, 0.0, R - 1.0, R - 1.0], (batch, P, 1)) if opts["boxes"] else None
    emb = S.image_encoder(pix, m.weights, cfg) if phase == "decoder" else None

    def run():
        e = S.image_encoder(pix, m.weights, cfg) if phase in ("encoder", "all") else emb
        if phase in ("decoder", "all"):
            S.decode_prompts(e, pts, labels, box, None, m.weights, cfg)
    return (lambda: None), run


def validate(model, backend: str = "cpp", phase: str | None = None, batch: int = 1,
             seq_len: int | None = None, *, text_batch: int | None = None,
             prompts: int | None = None, points: int | None = None, boxes: bool | None = None,
             quantize: str | None = None, repeats: int = 5,
             min_seconds: float = 3.0) -> Validation:
    """Measure a workload on ``backend`` and compare it with the cost model's prediction for the
    same workload (see the module docstring).  ``model``: a preset name, a pyworkloads Config or
    a Hugging Face checkpoint directory (or a LLaMA ``.gguf`` file, whose tensors the cost model
    takes in their stored formats).  Phases: llama2 / whisper "prefill" or "decode" (one
    step at KV length ``seq_len``); clip "image", "text" or "all"; sam "encoder", "decoder" or
    "all".  ``quantize``: "q8_0", "q4_0" or "q4_1" runs LLaMA with its weights block-quantized
    as ``pw.llama2.quantize_weights`` does (the cost model's weights in that format, the
    embedding table and head as that policy stores them)."""
    import pyworkloads as pw

    from . import hardware
    from .analysis import analyze, positive
    if backend not in ("cpp", "numpy"):
        raise ValueError(f"backend must be 'cpp' or 'numpy' (the cuda backend is validated from "
                         f"a bench_cuda run), got {backend!r}")
    positive("repeats", repeats)
    if not (isinstance(min_seconds, (int, float)) and 0 <= min_seconds <= 3600):
        raise ValueError(f"min_seconds must be a number of seconds in [0, 3600], "
                         f"got {min_seconds!r}")
    if quantize is not None and quantize not in pw.llama2.QUANTIZE:
        raise ValueError(f"quantize must be None or one of {', '.join(pw.llama2.QUANTIZE)}, got "
                         f"{quantize!r}")
    dev = hardware.cpu_device(backend=backend)
    family, label, m = _load(model, quantize)
    defaults = {"llama2": ("decode", 128), "whisper": ("decode", 32), "clip": ("all", None),
                "sam": ("all", None)}[family]
    phase = phase or defaults[0]
    allowed = {"llama2": ("prefill", "decode"), "whisper": ("prefill", "decode"),
               "clip": ("image", "text", "all"), "sam": ("encoder", "decoder", "all")}[family]
    if phase not in allowed:
        raise ValueError(f"validate runs phase {' / '.join(allowed)} of {family}, got {phase!r} "
                         "(a generation is its prefill plus one decode step per token)")
    if family in ("llama2", "whisper"):
        seq_len = defaults[1] if seq_len is None else seq_len
    # the engine's weights: float32; or (quantize) the policy's block formats, which the cost
    # model's default embedding rule reproduces (q8_0 table and head under q4_0 / q4_1); or a
    # GGUF file's formats, tensor by tensor
    stored = stored_dtypes(m.weights, m.config) if family == "llama2" and not quantize else None
    rep = analyze(m.config, dev, phase=phase, batch=batch, seq_len=seq_len, dtype="fp32",
                  weights=quantize, weight_dtypes=stored, attention=dev.profile.attention_impl,
                  text_batch=text_batch, prompts=prompts, points=points, boxes=boxes,
                  logits="last")
    opts = {k: v for k, v in rep.options.items() if k in ("batch", "seq_len", "text_batch",
                                                           "prompts", "points", "boxes")}
    kernels = [r for r in rep.layers if r.op in KERNEL_OP]
    if quantize is not None:
        opts["quantize"] = quantize
    if quantize is not None or stored:
        _check_qmatmul_profile(dev.profile, kernels, backend)
    setup, run = _runs(family, m, phase, batch, rep.options.get("seq_len"),
                       {"text_batch": text_batch or batch, "prompts": prompts or 1,
                        "points": 1 if points is None else points, "boxes": bool(boxes), **opts})
    walls, calls = [], []
    with pw.use_backend(backend):
        setup()
        run()                                             # warm-up: page faults, caches, threads
        t_end = time.perf_counter() + min_seconds
        # at least `repeats` runs of each kind, spread over at least `min_seconds`: a slow spell
        # of a shared machine lasts seconds, and each call keeps its median.  Profiled runs
        # (per kernel call) alternate with plain ones (the wall clock a user sees: recording a
        # call costs the profiler microseconds that are no part of the model)
        while len(walls) < repeats or (time.perf_counter() < t_end and len(walls) < 50):
            setup()
            with pw.profile() as prof:
                run()
            calls.append(prof.records)
            setup()
            t0 = time.perf_counter()
            run()
            walls.append(time.perf_counter() - t0)
    for recs in calls:
        _check_alignment(kernels, recs)
    # the median of the repeats, per call and for the whole, as the calibration measures: the
    # time a run typically takes on this machine, neither its luckiest nor its slowest
    measured = np.median([[r.seconds for r in recs] for recs in calls], axis=0)
    # per call, the kernel alone (what the profiler times); end to end, every record whole: the
    # kernels with the Python that dispatches them, and the NumPy work between them
    checks = [LayerCheck(k.name, "qmatmul" if kernel_op(k) == "qmatmul" else k.op, k.scope,
                         k.shapes, float(t),
                         max(dev.profile.predict(k, part="kernel") or 0.0, k.t_lower), k.t_lower)
              for k, t in zip(kernels, measured)]
    between = sum(r.t_pred for r in rep.layers if r.op not in KERNEL_OP)
    pred = sum(r.t_pred for r in rep.layers)
    return Validation(model=label, backend=backend, phase=phase, options=opts, device=dev.name,
                      layers=checks, wall_s=float(np.median(walls)), pred_s=pred,
                      between_pred_s=between, repeats=len(walls),
                      profile={"measured_at": dev.profile.measured_at,
                               "machine": dev.profile.machine})


def _check_qmatmul_profile(prof, kernels, backend: str) -> None:
    """A quantized workload needs the profile's qmatmul points of every block format it reads,
    measured with the code that runs qmatmul now (the backend's kernel, or the reference's)."""
    from .calibration import qmatmul_backend, qmatmul_key
    fmts = sorted({k.weights_dtype for k in kernels if kernel_op(k) == "qmatmul"})
    missing = [f for f in fmts if not prof.points.get(qmatmul_key(f))]
    now = qmatmul_backend(backend)
    if missing or (fmts and prof.qmatmul_backend != now):
        why = (f"has no qmatmul points of {', '.join(missing)}" if missing else
               f"measured qmatmul on {prof.qmatmul_backend!r} code, but {now!r} runs it now")
        raise ValueError(f"the {backend} profile (measured {prof.measured_at}) {why}: calibrate "
                         f"again (costmodel calibrate --backend {backend})")


def _check_alignment(kernels, records) -> None:
    """The profiled calls are the traced kernel records, one to one, in order."""
    if len(kernels) != len(records):
        raise AssertionError(f"validate: the engine made {len(records)} kernel calls but the cost "
                             f"model has {len(kernels)} kernel records for the workload")
    for i, (k, r) in enumerate(zip(kernels, records)):
        if kernel_op(k) != r.op or k.scope != r.name:
            raise AssertionError(f"validate: call {i} is {r.op} in {r.name!r} but record {i} is "
                                 f"{k.op} in {k.scope!r} ({k.name})")


def validate_bench(path, dtype: str = "bf16", table: str = "ours") -> list[dict]:
    """The GPU kernels checked from a ``benchmarks/bench_cuda.py`` run, each row predicted from a
    profile built of the *other* rows (leave one out: a row never predicts itself).  ``table``:
    "ours" (the project's CUDA kernels) or "vendor" (cuBLAS, SDPA, PyTorch's norms).  Returns one
    dict per row: op, case, measured and predicted seconds, error; ``predicted`` is None where no
    other row of the op is left to predict from."""
    from .calibration import _bench_layer, profile_from_bench
    from .graph import GraphBuilder, Precision
    if table not in ("ours", "vendor"):
        raise ValueError(f"table must be 'ours' or 'vendor', got {table!r}")
    data = json.loads(Path(path).read_text())
    gb = GraphBuilder(Precision.parse(dtype), attention="flash")
    key = "ours_ms" if table == "ours" else "baseline_ms"
    roofs = profile_from_bench(data, dtype)                 # the datasheet roofs: t_lower
    out = []
    for row in data.get("results", []):
        if (row.get("algo") != "auto" or row.get("dtype") != dtype or row.get("status") != "ok"
                or not row.get(key)):
            continue
        layer = _bench_layer(row, gb)
        if layer is None:
            continue
        try:
            prof = profile_from_bench(data, dtype, exclude=(row["op"], row["case"]))
        except ValueError:                      # the row was the only one of this dtype
            prof = None
        pred = prof.predict(layer, table) if prof is not None else None
        measured = row[key] / 1e3
        out.append({"op": row["op"], "case": row["case"], "measured": measured,
                    "predicted": pred, "t_lower": roofs.roof(layer),
                    "error": None if pred is None else pred / measured - 1.0})
    if not out:
        raise ValueError(f"{path}: no {dtype} rows with algo 'auto' and a {key} time")
    return out
