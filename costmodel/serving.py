"""Serving simulation: continuous batching over a paged KV cache, priced by the roofline.

``serve()`` answers "what latency and throughput does LLaMA-2-7B give on one H100 at 5 requests/s
of 512-token prompts and 128-token answers?" for the two generating decoders (LLaMA 2, Whisper's
text decoder), with a small discrete-event simulation of a vLLM-like scheduler:

* **Paged KV cache.**  The memory left for the cache is ``memory_fraction`` x device memory, minus
  the weights, minus a workspace (the largest activation of one iteration's prefill).  It is cut
  into blocks of ``block_size`` tokens; one token of one sequence costs the bytes its decode step
  writes to the cache (2 x layers x KV heads x head dim x KV bytes, read from the engine trace).
  A Whisper request also holds its cross-attention K/V (the 1500 audio positions of every decoder
  layer) for its whole life, as whole blocks.
* **Scheduler** (one iteration at a time, first come first served):
  1. every running sequence that has finished its prefill decodes one token; one whose last block
     is full gets a new block first.  When no block is free the most recently admitted sequence is
     *preempted*: its blocks are freed and it goes back to the head of the queue, to recompute
     its prompt and the tokens it has generated (vLLM's recompute policy);
  2. waiting requests are admitted while their prompt's blocks fit (keeping 1 % of the blocks free,
     vLLM's watermark), the batch is below ``max_batch``, and the iteration's token budget lasts:
     ``chunked_prefill`` tokens per iteration (decode tokens first), or, without chunking, whole
     prompts up to ``max_batched_tokens`` prompt tokens per iteration;
  3. admitted prompts prefill (whole, or a chunk of the budget); the iteration that completes a
     prefill emits that request's first token.
  A request whose prompt and answer can never fit in the whole cache is *refused* when it arrives.
* **Iteration time** (:class:`Pricer`): ``analyze()``'s per-layer roofline, in closed form.  Every
  layer record's compute time, memory time and collective time are affine in six counts of the
  iteration: ``b`` decoding sequences, their KV lengths summed ``S``, ``k`` prompts starting their
  prefill, ``N`` prefill tokens, ``Q`` = sum of (p + n)^2 - p^2 over the prefill chunks (n tokens
  after p already cached: the causal pairs, times two) and ``P`` = sum of p (the cached K/V a chunk
  re-reads).  Seven ``analyze()`` calls fix the coefficients (decode at three (batch, length)
  points, prefill at three lengths, one point of each checked), and an iteration costs
  ``sum over records of max(compute, memory) + collective`` -- what ``analyze()`` returns for the
  same decode step or prefill, in microseconds instead of 50 ms.  Weights are read once per
  iteration however many sequences share it.  The fitted :class:`Pricer` is cached per (model,
  device, dtype, tp), so a sweep fits once.
* **Runs of plain decode steps** (``_Simulation.decode_run``): between two events (an arrival, a
  finish, a preemption) the batch does not change, so those iterations are simulated in one go,
  their times priced by the same floating-point operations as one at a time; the result is the
  same bit for bit (``serve(..., _fast=False)`` steps one iteration per loop, for tests).
* **Closed form** (:func:`zero_load`): one request alone; TTFT = its prefill, TPOT = the mean of
  its single-sequence decode steps (``analyze(phase="generate")``'s ttft_s and tpot_s).

Lengths (``prompt_len``, ``output_len``) are an int, or a spec (:func:`length_sampler`):
``("uniform", lo, hi)`` integers lo..hi inclusive, ``("lognormal", median, sigma)`` rounded and
clipped to the context, or a list of samples drawn uniformly with replacement.
"""
from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import analysis

__all__ = ["serve", "sweep", "zero_load", "Pricer", "ServeResult", "length_sampler",
           "parse_length", "plot_curve", "curve_csv", "curve_table"]

FAMILIES = ("llama2", "whisper")
WATERMARK = 0.01            # share of the KV blocks admission leaves free (vLLM's default)
COLS = ("1", "b", "S", "k", "N", "Q", "P")     # the iteration's counts, in Pricer order


# ---------------------------------------------------------------------------------------------
class Pricer:
    """Iteration time of a mixed decode/prefill batch, from ``analyze()``'s layer records.

    For a record r and each of its times f (compute, memory, collective):
        decode step of b sequences, KV lengths summing to S:  f = kappa + d1 b + d2 S
        prefill of one prompt of n tokens:                    f = A + B n + G n^2
    (the counts behind them are exactly affine / quadratic: matmuls per token, flash attention
    per causal pair, K/V reads per cached position).  An iteration then costs, per record,
        kappa + d1 b + d2 S + (A - kappa) k + B N + G Q (+ d2 P on the memory side)
    with kappa (the weights) charged once, and t = sum_r max(compute_r, memory_r) + comm_r."""

    def __init__(self, model, device="h100-sxm", dtype=None, tp: int = 1):
        self.model, self.device, self.dtype, self.tp = model, device, dtype, tp
        self._workspace: dict = {}                  # prefill length -> activation bytes
        family, label, _ = analysis.resolve_model(model)
        if family not in FAMILIES:
            raise ValueError(f"serve() simulates the generating decoders ({', '.join(FAMILIES)}); "
                             f"{label} is a {family} model")
        dec = self._an("decode", 1, 32)
        self.family, self.label, self.cfg = dec.family, dec.model, dec.config
        self.device_obj = dec.device
        self.context = (self.cfg.max_position_embeddings if self.family == "llama2"
                        else self.cfg.max_target_positions)
        self.weights = dec.summary["memory_bytes"]["weights"]
        # one token of one sequence: what its decode step writes to the KV cache
        self.kv_token = float(sum(r.bytes_kv_write for r in dec.layers))
        # Whisper: the cross-attention K/V a request holds (the cache minus its 32 self tokens)
        self.kv_request = dec.summary["memory_bytes"]["kv_cache"] - 32 * self.kv_token
        d = [self._times(x) for x in (dec, self._an("decode", 2, 32), self._an("decode", 1, 160))]
        keys = list(d[0])
        pre = {n: self._times(self._an("prefill", 1, n)) for n in (16, 48, 112)}
        keys += [k for k in pre[16] if k not in d[0]]
        zero = np.zeros(3)
        # decode coefficients per record: kappa, d1 (per sequence), d2 (per cached position)
        d0, d_b, d_c = ([t.get(k, zero) for k in keys] for t in d)
        d2 = (np.array(d_c) - np.array(d0)) / 128              # [R, 3] (compute, memory, comm)
        d1 = np.array(d_b) - np.array(d0) - 32 * d2
        kappa = np.array(d0) - d1 - 32 * d2
        # prefill: a quadratic through n = 16, 48, 112 per record and time
        ns = np.array([16.0, 48.0, 112.0])
        ys = np.stack([np.array([pre[n].get(k, zero) for k in keys]) for n in (16, 48, 112)])
        vander = np.stack([np.ones(3), ns, ns ** 2], axis=1)               # [3, 3]
        a_, b_, g_ = np.einsum("ij,jrf->irf", np.linalg.inv(vander), ys)   # each [R, 3]
        coef = np.zeros((len(keys), 3, len(COLS)))                         # [R, time, column]
        coef[:, :, 0], coef[:, :, 1], coef[:, :, 2] = kappa, d1, d2
        coef[:, :, 3], coef[:, :, 4], coef[:, :, 5] = a_ - kappa, b_, g_
        coef[:, 1, 6] = d2[:, 1]                      # a chunk re-reads its cached K/V
        # records with identical coefficients (the same layer in every block) priced once
        flat, counts = np.unique(coef.reshape(len(keys), -1), axis=0, return_counts=True)
        self._coef = flat.reshape(-1, 3, len(COLS))                        # [U, 3, 7]
        self._counts = counts.astype(float)                                # [U]
        # how well the closed form reproduces analyze() at two points not used to fit it
        chk_d = self._an("decode", 3, 96)
        chk_p = self._an("prefill", 1, 80)
        self.fit_error = max(
            abs(self.time(b=3, S=3 * 96) / analysis.seconds(chk_d.layers) - 1),
            abs(self.time(k=1, N=80, Q=80 * 80) / analysis.seconds(chk_p.layers) - 1))

    def _an(self, phase, batch, n):
        with warnings.catch_warnings():       # serve() says itself whether the model fits
            warnings.simplefilter("ignore", UserWarning)
            return analysis.analyze(self.model, self.device, phase=phase, batch=batch,
                                    seq_len=n, dtype=self.dtype, tp=self.tp)

    @staticmethod
    def _times(rep) -> dict:
        return {(r.name, r.op): np.array([r.t_compute, r.t_memory, r.t_comm]) for r in rep.layers}

    def time(self, b=0, S=0, k=0, N=0, Q=0, P=0) -> float:
        """Seconds of one iteration (see the class doc for the counts)."""
        x = np.array([1.0, b, S, k, N, Q, P])                              # [7]
        t = self._coef @ x                                                  # [U, 3]
        return float(self._counts @ (np.maximum(t[:, 0], t[:, 1]) + t[:, 2]))

    def decode_run(self, b: int, S0: int, m: int) -> np.ndarray:
        """Seconds of m consecutive decode steps of b sequences, the KV lengths summing to
        S0, S0 + b, ..., S0 + (m - 1) b: ``[time(b=b, S=S0 + j b) for j in range(m)]`` in one
        call, bit for bit.  The same BLAS calls as :meth:`time` run per step (a stack of the
        [3, 7] matrix-vector products and of the dot products, broadcast over the m steps), so
        every float is rounded as in :meth:`time`; one [m, 7] matrix product instead would sum
        in another order."""
        x = np.zeros((m, len(COLS)))                                        # [m, 7]
        x[:, 0], x[:, 1], x[:, 2] = 1.0, b, S0 + b * np.arange(m)
        t = np.matmul(self._coef, x[:, None, :, None])[..., 0]             # [m, U, 3]
        v = np.maximum(t[..., 0], t[..., 1]) + t[..., 2]                    # [m, U]
        return np.matmul(self._counts, v[..., None])[:, 0]                  # [m]

    def workspace(self, n: int) -> float:
        """Bytes of activations of one n-token prefill (the serving workspace), cached."""
        if n not in self._workspace:
            self._workspace[n] = self._an("prefill", 1, n).summary["memory_bytes"]["activations"]
        return self._workspace[n]

    def prefill(self, n: int) -> float:
        """One prompt of n tokens alone (Whisper: the encoder and cross K/V included)."""
        return self.time(k=1, N=n, Q=n * n)

    def decode(self, b: int, kv_len: int) -> float:
        """A decode step of b sequences, each at KV length kv_len (the new token included)."""
        return self.time(b=b, S=b * kv_len)


_PRICERS: dict = {}


def pricer(model, device="h100-sxm", dtype=None, tp: int = 1) -> Pricer:
    """A cached :class:`Pricer` (preset names and device names are the key)."""
    dev = device if isinstance(device, str) else device.key
    key = (model, dev, dtype, tp) if isinstance(model, str) and isinstance(device, str) else None
    if key is not None and key in _PRICERS:
        return _PRICERS[key]
    p = Pricer(model, device, dtype, tp)
    if key is not None:
        _PRICERS[key] = p
    return p


# ---------------------------------------------------------------------------------------------
def length_sampler(spec, name: str, context: int):
    """A length spec -> ``draw(rng, n) -> int array [n]``; every length in 1..context.

    int                          every request the same
    ("uniform", lo, hi)          integers lo..hi inclusive
    ("lognormal", median, sigma) exp(N(log median, sigma)), rounded, clipped to 1..context
    list / array of ints         samples drawn uniformly with replacement (a trace's lengths)"""
    def check(v, what):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= context:
            raise ValueError(f"{name}: {what} must be an integer in 1..{context} (the model's "
                             f"context), got {v!r}")
        return int(v)
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        v = check(spec, "the length")
        return lambda rng, n: np.full(n, v, dtype=np.int64)
    if isinstance(spec, tuple) and spec and isinstance(spec[0], str):
        kind = spec[0]
        if kind == "uniform" and len(spec) == 3:
            lo, hi = check(spec[1], "lo"), check(spec[2], "hi")
            if lo > hi:
                raise ValueError(f"{name}: uniform needs lo <= hi, got {lo} > {hi}")
            return lambda rng, n: rng.integers(lo, hi + 1, size=n)
        if kind == "lognormal" and len(spec) == 3:
            med, sigma = float(spec[1]), float(spec[2])
            if not (med >= 1 and sigma >= 0 and math.isfinite(med) and math.isfinite(sigma)):
                raise ValueError(f"{name}: lognormal needs median >= 1 and sigma >= 0, got "
                                 f"{spec[1:]!r}")
            return lambda rng, n: np.clip(np.rint(rng.lognormal(math.log(med), sigma, size=n)),
                                          1, context).astype(np.int64)
        raise ValueError(f"{name}: unknown distribution {spec!r}; use an int, ('uniform', lo, hi), "
                         f"('lognormal', median, sigma) or a list of samples")
    if isinstance(spec, (list, np.ndarray)) and len(spec) > 0:
        vals = np.array([check(v, "every sample") for v in spec], dtype=np.int64)
        return lambda rng, n: vals[rng.integers(0, len(vals), size=n)]
    raise ValueError(f"{name}: unknown distribution {spec!r}; use an int, ('uniform', lo, hi), "
                     f"('lognormal', median, sigma) or a list of samples")


def parse_length(text: str):
    """The CLI's spelling of a length spec: ``512``, ``uniform:LO:HI``, ``lognormal:MEDIAN:SIGMA``
    or ``samples:A,B,C``."""
    head, _, rest = text.partition(":")
    try:
        if not rest:
            return int(head)
        if head == "uniform":
            lo, hi = rest.split(":")
            return ("uniform", int(lo), int(hi))
        if head == "lognormal":
            med, sigma = rest.split(":")
            return ("lognormal", float(med), float(sigma))
        if head == "samples":
            return [int(v) for v in rest.split(",")]
    except ValueError:
        pass
    raise ValueError(f"a length must be N, uniform:LO:HI, lognormal:MEDIAN:SIGMA or "
                     f"samples:A,B,C, got {text!r}")


# ---------------------------------------------------------------------------------------------
@dataclass
class ServeResult:
    """What :func:`serve` returns: the summary, one record per request, the settings, and (with
    ``debug=True``) the per-iteration trace.

    ``records``: a structured array, one row per arrived request: id, arrival, first_token,
    finish (seconds; NaN when it did not happen), prompt_len, output_len, status (0 finished,
    1 unfinished at the end of the run, 2 refused: it can never fit in the KV cache), preemptions.
    ``trace`` columns: t_start, t_end, decoding, prefill_tokens, in_system, blocks_used."""
    summary: dict
    records: np.ndarray
    settings: dict
    trace: np.ndarray | None = None
    zero_load: dict = field(default_factory=dict)

    # the headline figures as attributes (seconds; throughput in requests/s)
    ttft_p50 = property(lambda self: self.summary["ttft_p50"])
    ttft_p99 = property(lambda self: self.summary["ttft_p99"])
    tpot_p50 = property(lambda self: self.summary["tpot_p50"])
    tpot_p99 = property(lambda self: self.summary["tpot_p99"])
    throughput = property(lambda self: self.summary["throughput_rps"])

    def summary_rows(self) -> list[tuple[str, str]]:
        """(label, value) rows of the summary, as the table and the HTML page show them."""
        s, z = self.summary, self.zero_load
        rows = [("requests arrived / finished / unfinished / refused",
                 f"{s['arrived']} / {s['finished']} / {s['unfinished']} / {s['refused']}"),
                ("TTFT p50 / p99", f"{ms_text(s['ttft_p50'])} / {ms_text(s['ttft_p99'])}"),
                ("TPOT p50 / p99", f"{ms_text(s['tpot_p50'])} / {ms_text(s['tpot_p99'])}"),
                ("throughput", f"{s['throughput_rps']:.3f} req/s, {s['throughput_tps']:,.1f} "
                               f"output tok/s, {s['total_tps']:,.1f} tok/s incl. prompts"),
                ("batch: mean / max decoding", f"{s['mean_batch']:.1f} / {s['max_batch']}"),
                ("KV cache", f"{s['kv_blocks']} blocks of {self.settings['block_size']} tokens "
                             f"({s['kv_bytes'] / 1e9:.1f} GB), peak use {s['peak_blocks']}"),
                ("preemptions", str(s["preemptions"])),
                ("simulated / makespan", f"{s['iterations']} iterations, {s['makespan']:.2f} s")]
        if z:
            rows.append(("zero load (closed form)",
                         f"TTFT {ms_text(z['ttft'])}, TPOT {ms_text(z['tpot'])}"))
        return rows

    def to_table(self) -> str:
        rows = self.summary_rows()
        st = self.settings
        head = (f"{st['model']} on {st['device']} ({st['dtype'] or 'default dtype'}, tp "
                f"{st['tp']}): {st['arrival_rate']} req/s for {st['duration']} s, prompt "
                f"{st['prompt_len']}, output {st['output_len']}, "
                + (f"chunked prefill {st['chunked_prefill']}" if st["chunked_prefill"]
                   else "whole prefill"))
        w = max(len(k) for k, _ in rows)
        return head + "\n" + "\n".join(f"  {k:<{w}}  {v}" for k, v in rows)

    def __str__(self) -> str:
        return self.to_table()

    def to_html(self) -> str:
        """A self-contained, offline page: summary, TTFT / TPOT per request, the batch over
        time (with ``debug=True``'s trace) and the requests (``costmodel.html``; needs plotly).
        A sweep's curve: ``costmodel.html.curve_html(results)``."""
        from .html import serve_html
        return serve_html(self)


def ms_text(v) -> str:
    """Seconds as milliseconds for a table ("-" for a missing or non-finite value)."""
    return "-" if v is None or not np.isfinite(v) else f"{v * 1e3:.2f} ms"


def zero_load(model, device="h100-sxm", prompt_len: int = 512, output_len: int = 128,
              dtype=None, tp: int = 1) -> dict:
    """Closed form for one request alone: TTFT = its prefill; TPOT = the mean of its decode
    steps, step j (1 .. output_len - 1) at KV length prompt_len + j."""
    p = pricer(model, device, dtype, tp)
    steps = [p.decode(1, prompt_len + j) for j in range(1, output_len)]
    return {"ttft": p.prefill(prompt_len),
            "tpot": float(np.mean(steps)) if steps else float("nan")}


def _positive_number(name, v, allow_inf=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v <= 0 \
            or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be a positive number, got {v!r}")
    return float(v)


def serve(model, device="h100-sxm", arrival_rate: float = 1.0, prompt_len=512, output_len=128,
          duration: float = 60.0, seed: int = 0, dtype: str | None = None,
          max_batch: int | None = None, block_size: int = 16, chunked_prefill: int | None = None,
          tp: int = 1, memory_fraction: float = 0.9, max_batched_tokens: int | None = None,
          num_requests: int | None = None, drain: bool = True, debug: bool = False,
          _fast: bool = True) -> ServeResult:
    """Simulate serving ``model`` on ``device`` (see the module doc for the scheduler and the
    pricing).  Requests arrive as a Poisson process of ``arrival_rate`` per second during
    ``duration`` seconds (``arrival_rate=math.inf``: ``num_requests`` all at t = 0, the offline
    throughput benchmark); ``num_requests`` caps the count.  ``drain``: run until every
    admitted request finishes (else stop at ``duration``; the rest are unfinished).  Seeded:
    the same arguments give the same result.  ``_fast=False`` (for tests) simulates one
    iteration per loop, without skipping over runs of plain decode steps; the result is the
    same, bit for bit."""
    rate = _positive_number("arrival_rate", arrival_rate, allow_inf=True)
    duration = _positive_number("duration", duration)
    memory_fraction = _positive_number("memory_fraction", memory_fraction)
    if memory_fraction > 1:
        raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
    for name, v in (("block_size", block_size), ("max_batch", max_batch),
                    ("chunked_prefill", chunked_prefill), ("num_requests", num_requests),
                    ("max_batched_tokens", max_batched_tokens)):
        if v is not None:
            analysis.positive(name, v)
    if math.isinf(rate) and num_requests is None:
        raise ValueError("arrival_rate=inf (all requests at t = 0) needs num_requests")
    pr = pricer(model, device, dtype, tp)
    draw_p = length_sampler(prompt_len, "prompt_len", pr.context)
    draw_o = length_sampler(output_len, "output_len", pr.context)
    rng = np.random.default_rng(seed)
    if math.isinf(rate):
        arrival = np.zeros(num_requests)
    else:
        n_max = num_requests or int(rate * duration + 10 * math.sqrt(rate * duration) + 10)
        arrival = np.cumsum(rng.exponential(1 / rate, size=n_max))        # [n]
        arrival = arrival[arrival < duration]
    n = len(arrival)
    plen, olen = draw_p(rng, n), draw_o(rng, n)                             # [n] each
    chunk = chunked_prefill
    max_tokens = max_batched_tokens or max(pr.context, int(plen.max(initial=1)))
    # the memory the cache gets: weights and the workspace of the largest prefill come first
    work_tokens = min(chunk or max_tokens, pr.context)
    workspace = pr.workspace(work_tokens)
    budget = memory_fraction * pr.device_obj.memory - pr.weights - workspace
    block_bytes = block_size * pr.kv_token
    total = int(budget // block_bytes) if budget > 0 else 0
    extra = math.ceil(pr.kv_request / block_bytes) if pr.kv_request > 0 else 0   # Whisper cross K/V
    longest = math.ceil(pr.context / block_size) + extra
    if total < longest:
        raise ValueError(
            f"{pr.label} does not fit on {pr.device_obj.key} for serving: "
            f"{pr.weights / 1e9:.1f} GB of weights and {workspace / 1e9:.2f} GB of workspace leave "
            f"{max(budget, 0) / 1e9:.2f} GB of the {memory_fraction:.0%} of "
            f"{pr.device_obj.memory / 1e9:.0f} GB for the KV cache, less than one sequence of "
            f"the model's context ({pr.context} tokens, {longest * block_bytes / 1e9:.2f} GB)")
    sim = _Simulation(pr, arrival, plen, olen, total, extra, block_size, chunk, max_tokens,
                      max_batch, duration, drain, debug, _fast)
    sim.run()
    settings = dict(model=pr.label, device=pr.device_obj.key, dtype=dtype, tp=tp,
                    arrival_rate=arrival_rate, duration=duration, prompt_len=prompt_len,
                    output_len=output_len, seed=seed, max_batch=max_batch, block_size=block_size,
                    chunked_prefill=chunk, max_batched_tokens=max_tokens,
                    memory_fraction=memory_fraction, pricing_fit_error=pr.fit_error)
    res = ServeResult(sim.summary(total * block_bytes), sim.records, settings,
                      sim.trace_array() if debug else None)
    if isinstance(prompt_len, (int, np.integer)) and isinstance(output_len, (int, np.integer)):
        res.zero_load = zero_load(model, device, int(prompt_len), int(output_len), dtype, tp)
    return res


class _Simulation:
    """The scheduler of the module doc, one iteration per loop.  Running sequences live in
    slots (parallel arrays); the waiting queue holds request ids, FCFS."""

    def __init__(self, pr, arrival, plen, olen, total, extra, bs, chunk, max_tokens, max_batch,
                 duration, drain, debug, fast=True):
        self.pr, self.arrival, self.plen, self.olen = pr, arrival, plen, olen
        self.total, self.extra, self.bs, self.chunk = total, extra, bs, chunk
        self.max_tokens, self.duration, self.drain, self.debug = max_tokens, duration, drain, debug
        self.fast = fast
        n = len(arrival)
        # no more sequences run at once than the blocks of the shortest prompts allow
        fit = total // self.blocks_for(int(plen.min(initial=1))) if n else 1
        self.cap = max(1, min(max_batch or total, fit))
        cap = self.cap
        self.rid = np.full(cap, -1)                 # request in the slot, -1 free
        self.cache = np.zeros(cap, np.int64)        # tokens in its KV cache
        self.pre_left = np.zeros(cap, np.int64)     # prompt (+ recomputed) tokens still to prefill
        self.out_left = np.zeros(cap, np.int64)     # tokens still to generate
        self.blocks = np.zeros(cap, np.int64)       # KV blocks it holds
        self.order = np.zeros(cap, np.int64)        # admission counter (preemption picks the max)
        self.first = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.status = np.ones(n, np.int8)           # 1 until finished (0) or refused (2)
        self.preempted = np.zeros(n, np.int32)
        self.generated = np.zeros(n, np.int64)
        self.free = total
        self.trace: list = []
        self.iterations = 0
        self.decoded = 0                            # sum over iterations of the decoding batch
        self.max_dec = 0
        self.peak = 0
        self.t = 0.0
        # refused at arrival: prompt + answer never fit in the whole cache, or past the context
        need = plen + olen                                                  # [n]
        self.refuse = (-(-need // bs) + extra > total) | (need > pr.context)  # [n]

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.bs) + self.extra

    def run(self):
        pr, bs = self.pr, self.bs
        n, nxt, counter = len(self.arrival), 0, 0
        waiting: deque = deque()
        free_slots = list(range(self.cap - 1, -1, -1))
        keep = int(WATERMARK * self.total)
        while True:
            while nxt < n and self.arrival[nxt] <= self.t:        # arrivals so far join the queue
                if self.refuse[nxt]:
                    self.status[nxt] = 2
                else:
                    waiting.append(nxt)
                nxt += 1
            active = self.rid >= 0
            if not self.drain and self.t >= self.duration:
                break
            if not active.any() and not waiting:
                if nxt >= n:
                    break
                self.t = float(self.arrival[nxt])                  # idle until the next arrival
                continue
            if self.fast and self.decode_run(active, waiting, free_slots, keep, nxt):
                continue                # a run of plain decode steps, done in one go
            # 1. decoders whose last block is full get a new one, preempting the latest admitted
            dec = active & (self.pre_left == 0)
            while True:
                need = int((dec & (self.cache % bs == 0)).sum())
                if need <= self.free:
                    break
                s = int(np.argmax(np.where(active, self.order, -1)))
                r = int(self.rid[s])
                self.free += int(self.blocks[s])
                self.rid[s], self.blocks[s] = -1, 0
                active[s] = dec[s] = False
                free_slots.append(s)
                self.preempted[r] += 1
                waiting.appendleft(r)
            grow = dec & (self.cache % bs == 0)
            self.blocks[grow] += 1
            self.free -= int(grow.sum())
            b = int(dec.sum())
            # 2. admission, FCFS, while blocks, slots and the token budget last
            budget = (self.chunk - b) if self.chunk else self.max_tokens
            prefilling = active & (self.pre_left > 0)
            queued = int(self.pre_left[prefilling].sum())
            while waiting and free_slots and queued < budget:
                r = waiting[0]
                todo = int(self.plen[r] + self.generated[r])      # prompt + tokens to recompute
                nb = self.blocks_for(todo)
                if nb > self.free - keep and (active.any() or nb > self.free):
                    break
                if not self.chunk and queued and queued + todo > budget:
                    break
                waiting.popleft()
                s = free_slots.pop()
                self.rid[s], self.cache[s], self.pre_left[s] = r, 0, todo
                self.out_left[s] = self.olen[r] - self.generated[r]
                self.blocks[s], self.order[s] = nb, counter
                counter += 1
                self.free -= nb
                active[s] = True
                queued += todo
            # 3. prefill: whole prompts, or chunks from the budget in admission order
            pre = np.flatnonzero(active & (self.pre_left > 0))
            pre = pre[np.argsort(self.order[pre])]
            left = budget if self.chunk else math.inf
            chunks = []
            for s in pre:
                if left <= 0:
                    break
                take = int(min(self.pre_left[s], left))
                chunks.append((s, int(self.cache[s]), take))
                left -= take
            k = sum(1 for _, p, _ in chunks if p == 0)
            N = sum(c for _, _, c in chunks)
            Q = sum((p + c) ** 2 - p ** 2 for _, p, c in chunks)
            P = sum(p for _, p, _ in chunks)
            S = int((self.cache[dec] + 1).sum())
            dt = pr.time(b=b, S=S, k=k, N=N, Q=Q, P=P)
            t_end = self.t + dt
            used = self.total - self.free
            self.peak = max(self.peak, used)
            if self.debug:
                in_sys = int(active.sum()) + len(waiting)
                self.trace.append((self.t, t_end, b, N, in_sys, used,
                                   int(np.ceil(self.cache[active] / bs).sum()
                                       + self.extra * active.sum()
                                       + sum(-(-c // bs) for _, _, c in chunks))))
            self.iterations += 1
            self.decoded += b
            self.max_dec = max(self.max_dec, b)
            # the iteration's tokens: every decoder one, every completed prefill one
            self.cache[dec] += 1
            self.out_left[dec] -= 1
            self.generated[self.rid[dec]] += 1
            for s, _, c in chunks:
                self.cache[s] += c
                self.pre_left[s] -= c
                if self.pre_left[s] == 0:
                    r = int(self.rid[s])
                    self.out_left[s] -= 1
                    self.generated[r] += 1
                    if np.isnan(self.first[r]):
                        self.first[r] = t_end
            done = np.flatnonzero(active & (self.pre_left == 0) & (self.out_left == 0))
            self._retire(done, t_end, free_slots)
            self.t = t_end
        self.records = np.zeros(n, dtype=[("id", "i8"), ("arrival", "f8"), ("first_token", "f8"),
                                          ("finish", "f8"), ("prompt_len", "i8"),
                                          ("output_len", "i8"), ("status", "i1"),
                                          ("preemptions", "i4")])
        rec = self.records
        rec["id"], rec["arrival"], rec["first_token"] = np.arange(n), self.arrival, self.first
        rec["finish"], rec["prompt_len"], rec["output_len"] = self.finish, self.plen, self.olen
        rec["status"], rec["preemptions"] = self.status, self.preempted

    def decode_run(self, active, waiting, free_slots, keep, nxt) -> bool:
        """Simulate the next m iterations at once when each of them is a plain decode step that
        leaves the batch as it is; False (nothing done) when the next iteration is not one.

        Between two events the loop above only decodes: every running sequence has finished
        its prefill, nobody is admitted and nobody finishes.  The run ends at the first event:
        the step in which the first sequence finishes (the last step of the run), the first
        step whose block growth would need a preemption, the first step that starts after the
        next arrival (when the queue is empty; a queue whose head cannot be admitted now can
        not be admitted later in the run either, as free blocks only shrink), or, with
        ``drain=False``, the first step that starts after ``duration``.  Within the run the
        batch b is fixed and the KV lengths sum grows by b a step, so the step times come from
        one :meth:`Pricer.decode_run` and the start times from a cumulative sum, the same
        floating-point additions as one step at a time."""
        act = np.flatnonzero(active)                                        # [b] slots
        if len(act) == 0 or self.pre_left[act].any():
            return False
        bs, b = self.bs, len(act)
        c0 = self.cache[act]                                                # [b]
        m = int(self.out_left[act].min())          # the first to finish ends the run
        # sequence s takes a new block at the steps j with (c0_s + j) % bs == 0
        first = -c0 % bs                                                    # [b]
        grows = np.bincount(first, minlength=bs)[np.arange(m) % bs]         # [m] blocks at j
        taken = np.cumsum(grows)                                            # [m] up to step j
        m = min(m, int(np.searchsorted(taken, self.free, side="right")))  # no preemption
        if m == 0:
            return False
        if waiting:                                # its head must stay out for the whole run
            head = waiting[0]
            budget = (self.chunk - b) if self.chunk else self.max_tokens
            nb = self.blocks_for(int(self.plen[head] + self.generated[head]))
            if free_slots and budget > 0 and nb <= self.free - int(taken[0]) - keep:
                return False
        limit = math.inf                           # no step may start at or after this time
        if not waiting and nxt < len(self.arrival):
            limit = float(self.arrival[nxt])
        if not self.drain:
            limit = min(limit, self.duration)
        S0 = int((c0 + 1).sum())
        if limit < math.inf:                       # step times only grow: bound m first
            m = min(m, int((limit - self.t) / self.pr.time(b=b, S=S0)) + 2)
        dt = self.pr.decode_run(b, S0, m)                                   # [m]
        t = np.cumsum(np.r_[self.t, dt])           # [m + 1] start of step j; t[m] the end
        m = 1 + int(np.searchsorted(t[1:m], limit, side="left"))
        t = t[:m + 1]
        used = self.total - self.free + taken[:m]                           # [m]
        if self.debug:
            steps = np.arange(m)                                            # [m]
            queued = len(waiting) + np.zeros(m, np.int64)                   # [m]
            if waiting:                            # arrivals join the (blocked) queue meanwhile
                came = np.searchsorted(self.arrival, t[:m], side="right")   # [m]
                ok = np.r_[0, np.cumsum(~self.refuse[nxt:])]                # [n - nxt + 1]
                queued += ok[np.maximum(came - nxt, 0)]
            cache = c0[None, :] + steps[:, None]                            # [m, b]
            needed = (-(-cache // bs)).sum(axis=1) + self.extra * b         # [m]
            self.trace.extend(zip(t[:m].tolist(), t[1:].tolist(), [b] * m, [0] * m,
                                  (b + queued).tolist(), used.tolist(), needed.tolist()))
        self.peak = max(self.peak, int(used[-1]))
        self.free -= int(taken[m - 1])
        self.blocks[act] += np.where(first < m, (m - 1 - first) // bs + 1, 0)
        self.iterations += m
        self.decoded += b * m
        self.max_dec = max(self.max_dec, b)
        self.cache[act] += m
        self.out_left[act] -= m
        self.generated[self.rid[act]] += m
        t_end = float(t[m])
        self._retire(act[self.out_left[act] == 0], t_end, free_slots)
        self.t = t_end
        return True

    def _retire(self, slots, t_end: float, free_slots: list) -> None:
        """The requests in these slots finish at t_end: their slots and KV blocks are freed."""
        for s in slots:
            r = int(self.rid[s])
            self.finish[r], self.status[r] = t_end, 0
            self.free += int(self.blocks[s])
            self.rid[s], self.blocks[s] = -1, 0
            free_slots.append(int(s))

    def trace_array(self) -> np.ndarray:
        return np.array(self.trace, dtype=[("t_start", "f8"), ("t_end", "f8"), ("decoding", "i8"),
                                           ("prefill_tokens", "i8"), ("in_system", "i8"),
                                           ("blocks_used", "i8"), ("blocks_needed", "i8")])

    def summary(self, kv_bytes: float) -> dict:
        rec = self.records
        ok = rec["status"] == 0
        ttft = rec["first_token"][ok] - rec["arrival"][ok]
        multi = ok & (rec["output_len"] > 1)
        tpot = ((rec["finish"][multi] - rec["first_token"][multi])
                / (rec["output_len"][multi] - 1))
        end = float(np.nanmax(rec["finish"], initial=0.0)) if ok.any() else self.t
        span = end if end > 0 else float("nan")

        def pct(x, q):
            return float(np.percentile(x, q)) if len(x) else float("nan")
        return {"ttft_p50": pct(ttft, 50), "ttft_p99": pct(ttft, 99),
                "tpot_p50": pct(tpot, 50), "tpot_p99": pct(tpot, 99),
                "ttft_mean": float(ttft.mean()) if len(ttft) else float("nan"),
                "tpot_mean": float(tpot.mean()) if len(tpot) else float("nan"),
                "throughput_rps": int(ok.sum()) / span,
                "throughput_tps": float(rec["output_len"][ok].sum()) / span,
                "total_tps": float((rec["output_len"][ok] + rec["prompt_len"][ok]).sum()) / span,
                "arrived": len(rec), "finished": int(ok.sum()),
                "unfinished": int((rec["status"] == 1).sum()),
                "refused": int((rec["status"] == 2).sum()),
                "preemptions": int(rec["preemptions"].sum()), "makespan": end,
                "iterations": self.iterations,
                "mean_batch": self.decoded / self.iterations if self.iterations else 0.0,
                "max_batch": self.max_dec, "kv_blocks": self.total, "kv_bytes": kv_bytes,
                "peak_blocks": self.peak}


# ---------------------------------------------------------------------------------------------
CURVE_FIELDS = ("arrival_rate", "throughput_rps", "throughput_tps", "ttft_p50", "ttft_p99",
                "tpot_p50", "tpot_p99", "mean_batch", "preemptions", "finished", "unfinished",
                "refused")


def sweep(model, rates, device="h100-sxm", **kw) -> list[ServeResult]:
    """:func:`serve` at each arrival rate (same seed and workload): a throughput-latency curve."""
    rates = list(rates)
    if not rates:
        raise ValueError("rates must name at least one arrival rate")
    return [serve(model, device, arrival_rate=r, **kw) for r in rates]


def curve_rows(results) -> list[dict]:
    return [{"arrival_rate": r.settings["arrival_rate"],
             **{f: r.summary[f] for f in CURVE_FIELDS[1:]}} for r in results]


def curve_csv(results) -> str:
    """One CSV row per arrival rate (seconds, requests/s, output tokens/s)."""
    lines = [",".join(CURVE_FIELDS)]
    for row in curve_rows(results):
        lines.append(",".join(f"{row[f]:.6g}" if isinstance(row[f], float) else str(row[f])
                              for f in CURVE_FIELDS))
    return "\n".join(lines) + "\n"


def curve_table(results) -> str:
    """The curve as a Markdown table (latencies in ms)."""
    out = ["| rate (req/s) | throughput (req/s) | output tok/s | TTFT p50 | TTFT p99 | TPOT p50 | "
           "TPOT p99 | mean batch | preempted |", "|" + "---:|" * 9]
    for r in curve_rows(results):
        out.append(f"| {r['arrival_rate']:g} | {r['throughput_rps']:.2f} | "
                   f"{r['throughput_tps']:,.0f} | {ms_text(r['ttft_p50'])} | "
                   f"{ms_text(r['ttft_p99'])} | {ms_text(r['tpot_p50'])} | "
                   f"{ms_text(r['tpot_p99'])} | {r['mean_batch']:.1f} | {r['preemptions']} |")
    return "\n".join(out)


def plot_curve(results, path) -> Path:
    """PNG of the curve: output tokens/s against p50/p99 TPOT (left) and TTFT (right)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    rows = curve_rows(results)
    x = [r["throughput_tps"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    for ax, key, what in ((axes[0], "tpot", "time per output token"),
                          (axes[1], "ttft", "time to first token")):
        for q, style in (("p50", "o-"), ("p99", "s--")):
            ax.plot(x, [r[f"{key}_{q}"] * 1e3 for r in rows], style, label=f"{key.upper()} {q}")
        for xi, r in zip(x, rows):
            ax.annotate(f"{r['arrival_rate']:g}/s", (xi, r[f"{key}_p99"] * 1e3), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("throughput (output tokens/s)")
        ax.set_ylabel(f"{what} (ms)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    st = results[0].settings
    fig.suptitle(f"{st['model']} on {st['device']}: prompt {st['prompt_len']}, output "
                 f"{st['output_len']} (labels: arrival rate)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
