"""LLaMA 2: a decoder-only transformer, written as pure NumPy functions over a weights Mapping.

The architecture, one layer (pre-norm, two residual branches)::

    h = x + o_proj( attention( rope(q_proj(n)), rope(k_proj(n)), v_proj(n) ) ),  n = RMSNorm(x)
    y = h + down_proj( silu(gate_proj(m)) * up_proj(m) ),                        m = RMSNorm(h)

then a final RMSNorm and the vocabulary projection ``lm_head`` (tied to the embedding table in
small checkpoints).  Grouped-query attention (LLaMA 2 70B) gives K/V fewer heads than Q; the
attention kernel shares each K/V head across its group of query heads, so K/V are never repeated.

Weights are looked up by their Hugging Face names (``model.layers.3.mlp.up_proj.weight``) and
converted to float32 at the moment of use, so a memory-mapped fp16/bf16 checkpoint is never held
in float32 as a whole: peak extra memory is about one weight matrix.

Glossary: B batch, T new tokens, S keys (cached + new), D hidden_size, F intermediate_size,
H query heads, KVH key/value heads, Dh head width, V vocabulary size, L layers.
"""
from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .. import io, kernels, ops
from . import check_fits

__all__ = [
    "Config", "PRESETS", "count_params", "weight_shapes", "random_weights", "from_pretrained",
    "from_preset", "Llama2", "KVCache", "forward", "decoder_layer", "self_attention", "mlp",
    "sample_next", "chat_prompt", "TextStream", "check_input_ids", "demo", "add_run_arguments", "run_cli",
]

_ROPE_TYPES = ("default", "linear")


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
@dataclass
class Config:
    """Hyper-parameters, named as in a Hugging Face LLaMA ``config.json``.

    ``num_key_value_heads`` None means H (multi-head attention); ``head_dim`` None means D / H.
    ``rope_scaling`` is None (plain RoPE) or ``{"rope_type": "linear", "factor": f}`` (positions
    divided by f); other scaling schemes are refused by :meth:`from_hf`."""
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    vocab_size: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and isinstance(self.num_attention_heads, int) and self.num_attention_heads > 0:
            self.head_dim = self.hidden_size // self.num_attention_heads
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Config.{name} must be a positive integer, got {v!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"Config: num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ValueError(f"Config.head_dim must be even (RoPE rotates channel pairs), got {self.head_dim}")
        if not (self.rms_norm_eps >= 0 and math.isfinite(self.rms_norm_eps)):
            raise ValueError(f"Config.rms_norm_eps must be a finite number >= 0, got {self.rms_norm_eps!r}")
        if not (self.rope_theta > 0 and math.isfinite(self.rope_theta)):
            raise ValueError(f"Config.rope_theta must be a positive number, got {self.rope_theta!r}")
        if self.hidden_act not in ops.ACTIVATIONS:
            raise ValueError(f"Config.hidden_act {self.hidden_act!r} is not supported; known: {', '.join(ops.ACTIVATIONS)}")
        if self.rope_scaling is not None:
            kind, factor = self.rope_scaling.get("rope_type"), self.rope_scaling.get("factor")
            if kind != "linear" or not (isinstance(factor, (int, float)) and factor > 0):
                raise ValueError(f"Config.rope_scaling must be None or {{'rope_type': 'linear', 'factor': f > 0}}, "
                                 f"got {self.rope_scaling!r}")

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """The end-of-sequence ids as a tuple (configs store one id or a list)."""
        e = self.eos_token_id
        return () if e is None else tuple(e) if isinstance(e, (list, tuple)) else (e,)

    @classmethod
    def from_hf(cls, cfg: Mapping) -> "Config":
        """Parse a Hugging Face ``config.json`` dict (transformers 4.x or 5.x).

        RoPE's base is read from ``rope_parameters["rope_theta"]`` (5.x), else top-level
        ``rope_theta`` (4.x), else 10000; scaling from ``rope_parameters["rope_type"]`` (5.x) or
        ``rope_scaling`` (4.x: "type" or "rope_type").  Only "default" and "linear" are
        implemented; dynamic-NTK, YaRN, LongRoPE and llama3 scaling are refused, because running
        such a checkpoint with plain RoPE would quietly give wrong logits at long contexts."""
        if not isinstance(cfg, Mapping):
            raise TypeError(f"config must be a dict parsed from config.json, got {type(cfg).__name__}")
        model_type = cfg.get("model_type", "llama")
        if model_type != "llama":
            raise ValueError(f"config.json has model_type {model_type!r}; this module implements 'llama' only")
        required = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        missing = [k for k in required if k not in cfg]
        if missing:
            raise ValueError(f"config.json lacks {', '.join(missing)} (needed to build a LLaMA model)")
        rope_params = cfg.get("rope_parameters") or {}
        scaling = cfg.get("rope_scaling") or {}
        if not isinstance(rope_params, Mapping) or not isinstance(scaling, Mapping):
            raise ValueError("config.json: rope_parameters / rope_scaling must be objects "
                             "(per-layer-type RoPE parameters are not used by LLaMA)")
        theta = rope_params.get("rope_theta", cfg.get("rope_theta", 10000.0))
        rope_type = (rope_params.get("rope_type") or rope_params.get("type")
                     or scaling.get("rope_type") or scaling.get("type") or "default")
        factor = rope_params.get("factor", scaling.get("factor"))
        if rope_type not in _ROPE_TYPES:
            raise ValueError(f"config.json asks for RoPE scaling type {rope_type!r}, which is not implemented "
                             f"(supported: {', '.join(_ROPE_TYPES)})")
        # absent keys take transformers' LlamaConfig defaults, which differ from LLaMA 2's for these two
        kw = {"max_position_embeddings": 2048, "rms_norm_eps": 1e-6}
        kw.update({k: cfg[k] for k in ("num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
                                   "tie_word_embeddings", "hidden_act",
                                   "attention_bias", "mlp_bias") if cfg.get(k) is not None})
        kw.update({k: cfg[k] for k in ("bos_token_id", "eos_token_id") if k in cfg})     # null = none
        return cls(**{k: cfg[k] for k in required}, **kw, rope_theta=float(theta),
                   rope_scaling=None if rope_type == "default" else {"rope_type": rope_type, "factor": factor})

    def to_hf(self) -> dict:
        """The config as a transformers-5 style ``config.json`` dict."""
        d = asdict(self)
        theta, scaling = d.pop("rope_theta"), d.pop("rope_scaling")
        d["rope_parameters"] = {"rope_theta": theta, **(scaling or {"rope_type": "default"})}
        return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], **d}


_LLAMA2 = dict(vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
               tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
_BASE = {
    # published shapes (Touvron et al. 2023, Table 1; the meta-llama/Llama-2-*-hf config.json files)
    "llama2-7b": Config(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                        num_key_value_heads=32, **_LLAMA2),
    "llama2-13b": Config(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                         num_key_value_heads=40, **_LLAMA2),
    "llama2-70b": Config(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                         num_key_value_heads=8, **_LLAMA2),
}
PRESETS: dict[str, Config] = {
    **_BASE,
    **{f"{k}-chat": replace(v) for k, v in _BASE.items()},       # chat fine-tunes share the shapes
    # the "stories110M" shape (llama2.c): the benchmark size, fp32 weights fit in 0.5 GB
    "llama2-110m": Config(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                          vocab_size=32000, max_position_embeddings=1024, tie_word_embeddings=True),
    # a few-MB model for demos and tests: the real vocabulary (so byte ids 3..258 mean bytes), GQA
    "llama2-tiny": Config(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=32000, max_position_embeddings=512),
}


def weight_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Every tensor the model reads, by Hugging Face name -> shape (no ``lm_head`` when tied)."""
    D, F, V = config.hidden_size, config.intermediate_size, config.vocab_size
    Q, KV = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    shapes = {"model.embed_tokens.weight": (V, D)}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}"
        for proj, (dout, din) in (("q_proj", (Q, D)), ("k_proj", (KV, D)), ("v_proj", (KV, D)), ("o_proj", (D, Q))):
            shapes[f"{p}.self_attn.{proj}.weight"] = (dout, din)
            if config.attention_bias:
                shapes[f"{p}.self_attn.{proj}.bias"] = (dout,)
        for proj, (dout, din) in (("gate_proj", (F, D)), ("up_proj", (F, D)), ("down_proj", (D, F))):
            shapes[f"{p}.mlp.{proj}.weight"] = (dout, din)
            if config.mlp_bias:
                shapes[f"{p}.mlp.{proj}.bias"] = (dout,)
        shapes[f"{p}.input_layernorm.weight"] = (D,)
        shapes[f"{p}.post_attention_layernorm.weight"] = (D,)
    shapes["model.norm.weight"] = (D,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, D)
    return shapes


def count_params(config: Config) -> int:
    """Number of parameters (a tied head counted once), e.g. 6,738,415,616 for llama2-7b."""
    return sum(math.prod(s) for s in weight_shapes(config).values())


# ---------------------------------------------------------------------------------------------
# the forward pass: pure functions over (activations, weights)
# ---------------------------------------------------------------------------------------------
def _f32(weights: Mapping, name: str) -> np.ndarray:
    """One weight as float32, converted now (a view when it is stored as float32 already)."""
    return np.asarray(weights[name], dtype=np.float32)


def _linear(x, weights, name, bias: bool = False):
    """x [..., Din] -> [..., Dout] with the weight (and bias) called ``name``; the float32 copy
    of an fp16/bf16 weight lives only for this call."""
    return ops.linear(x, _f32(weights, name + ".weight"), _f32(weights, name + ".bias") if bias else None)


def _rms_norm(x, weights, name, eps):
    """x [..., D] -> [..., D], RMSNorm with the weight of module ``name``."""
    with kernels.scope(name):
        return kernels.rms_norm(x, _f32(weights, name + ".weight"), eps)


def _embed(ids, weights):
    """ids [B, T] -> [B, T, D]: only the looked-up rows are converted to float32, not the table."""
    name = "model.embed_tokens.weight"
    if hasattr(weights, "raw") and hasattr(weights, "dtype_of"):          # a checkpoint on disk
        rows = ops.embedding(ids, weights.raw(name))                        # [B, T, D], stored dtype
        return io.bf16_to_f32(rows) if weights.dtype_of(name) == "BF16" else rows.astype(np.float32)
    return ops.embedding(ids, _f32(weights, name))


def rope_tables(config: Config, start: int, T: int):
    """cos, sin [T, Dh/2] for positions start .. start+T-1 (linear scaling divides positions)."""
    positions = np.arange(start, start + T, dtype=np.float64)
    if config.rope_scaling is not None:
        positions = positions / config.rope_scaling["factor"]
    return ops.rope_cos_sin(config.head_dim, positions, config.rope_theta, np.float32)


def self_attention(x, weights, prefix, config: Config, cos, sin, cache: tuple | None = None, start: int = 0,
                   rope_layout: str = "half"):
    """Causal grouped-query self-attention.  x [B, T, D] -> [B, T, D].

    cos/sin [T, Dh/2] are the rotations of these T positions.  With a cache (k, v), each
    [B, KVH, S_max, Dh], the new keys/values are written at start .. start+T-1 and the queries
    attend to everything up to there; the kernel's bottom-right causal alignment lets the last
    query see the whole cache.  ``rope_layout``: "half" for Hugging Face checkpoints (whose q/k
    rows the conversion script permuted), "interleaved" for Meta's original layout."""
    B, T, _ = x.shape
    H, KVH, Dh, bias = config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.attention_bias
    with kernels.scope(prefix):
        q = _linear(x, weights, prefix + ".q_proj", bias).reshape(B, T, H, Dh).transpose(0, 2, 1, 3)    # [B, H, T, Dh]
        k = _linear(x, weights, prefix + ".k_proj", bias).reshape(B, T, KVH, Dh).transpose(0, 2, 1, 3)  # [B, KVH, T, Dh]
        v = _linear(x, weights, prefix + ".v_proj", bias).reshape(B, T, KVH, Dh).transpose(0, 2, 1, 3)  # [B, KVH, T, Dh]
        q = ops.apply_rope(q, cos, sin, rope_layout)                                                      # [B, H, T, Dh]
        k = ops.apply_rope(k, cos, sin, rope_layout)                                                      # [B, KVH, T, Dh]
        if cache is not None:
            cache_k, cache_v = cache
            cache_k[:, :, start:start + T] = k
            cache_v[:, :, start:start + T] = v
            k, v = cache_k[:, :, :start + T], cache_v[:, :, :start + T]                                   # [B, KVH, S, Dh]
        o = kernels.attention(q, k, v, causal=True)                                                       # [B, H, T, Dh]
        o = o.transpose(0, 2, 1, 3).reshape(B, T, H * Dh)                                                 # [B, T, H·Dh]
        return _linear(o, weights, prefix + ".o_proj", bias)                                              # [B, T, D]


def mlp(x, weights, prefix, config: Config):
    """SwiGLU feed-forward: down(act(gate(x)) * up(x)).  x [B, T, D] -> [B, T, D]."""
    act, bias = ops.ACTIVATIONS[config.hidden_act], config.mlp_bias
    with kernels.scope(prefix):
        gate = _linear(x, weights, prefix + ".gate_proj", bias)              # [B, T, F]
        up = _linear(x, weights, prefix + ".up_proj", bias)                  # [B, T, F]
        return _linear(act(gate) * up, weights, prefix + ".down_proj", bias)  # [B, T, D]


def decoder_layer(x, weights, i: int, config: Config, cos, sin, cache=None, start: int = 0, rope_layout="half"):
    """One pre-norm block.  x [B, T, D] -> [B, T, D]."""
    p, eps = f"model.layers.{i}", config.rms_norm_eps
    h = x + self_attention(_rms_norm(x, weights, p + ".input_layernorm", eps), weights, p + ".self_attn",
                           config, cos, sin, cache, start, rope_layout)                                 # [B, T, D]
    return h + mlp(_rms_norm(h, weights, p + ".post_attention_layernorm", eps), weights, p + ".mlp", config)


def lm_head(x, weights, config: Config):
    """x [B, T, D] -> logits [B, T, V] (the embedding table when the head is tied)."""
    name = "model.embed_tokens" if config.tie_word_embeddings else "lm_head"
    with kernels.scope("lm_head"):
        return _linear(x, weights, name)


def forward(input_ids, weights: Mapping, config: Config, cache: "KVCache | None" = None,
            rope_layout: str = "half", last_only: bool = False) -> np.ndarray:
    """Logits of every position.  input_ids int [B, T] -> float32 [B, T, V] ([B, 1, V] if last_only).

    With a :class:`KVCache` the tokens continue the cached sequence (positions cache.length ..),
    and their keys/values are appended to it."""
    start = 0 if cache is None else cache.length
    ids = check_input_ids(input_ids, config, max_length=config.max_position_embeddings - start)
    B, T = ids.shape
    if cache is not None:
        cache.check_room(B, T)
    with kernels.scope("model.embed_tokens"):
        x = _embed(ids, weights)                                                 # [B, T, D]
    cos, sin = rope_tables(config, start, T)                                     # [T, Dh/2] each
    for i in range(config.num_hidden_layers):
        layer_cache = None if cache is None else (cache.k[i], cache.v[i])
        x = decoder_layer(x, weights, i, config, cos, sin, layer_cache, start, rope_layout)   # [B, T, D]
    if cache is not None:
        cache.length += T
    if last_only:
        x = x[:, -1:]                                                            # [B, 1, D]
    x = _rms_norm(x, weights, "model.norm", config.rms_norm_eps)
    return lm_head(x, weights, config)                                           # [B, T, V]


def check_input_ids(input_ids, config: Config, max_length: int | None = None, name: str = "input_ids") -> np.ndarray:
    """Validate token ids and return them as int64 [B, T] (a 1-D sequence becomes [1, T])."""
    if isinstance(input_ids, (str, bytes)):
        raise TypeError(f"{name} must be integer token ids, got {type(input_ids).__name__}; "
                        "encode text first (model.encode) or call generate_text")
    try:
        ids = np.asarray(input_ids)
    except ValueError:
        raise ValueError(f"{name} must be a rectangular [batch, tokens] array (sequences of equal length)") from None
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype, got {ids.dtype}")
    if ids.ndim == 1:
        ids = ids[None, :]                                                       # [1, T]
    if ids.ndim != 2:
        raise ValueError(f"{name} must be [batch, tokens] (or a 1-D sequence), got shape {ids.shape}")
    if ids.size == 0:
        raise ValueError(f"{name} is empty (shape {ids.shape}); give at least one token per sequence")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0:
        raise ValueError(f"{name} contains the negative id {lo}; ids must lie in [0, vocab_size={config.vocab_size})")
    if hi >= config.vocab_size:
        raise ValueError(f"{name} contains id {hi}, outside the vocabulary [0, vocab_size={config.vocab_size})")
    if max_length is not None and ids.shape[1] > max_length:
        raise ValueError(f"{name} has {ids.shape[1]} tokens, beyond the context: only {max_length} more positions "
                         f"fit in max_position_embeddings={config.max_position_embeddings}")
    return ids.astype(np.int64, copy=False)


class KVCache:
    """Preallocated keys and values of every layer: k[i], v[i] are [B, KVH, max_length, Dh];
    ``length`` positions are filled."""

    def __init__(self, config: Config, batch: int, max_length: int):
        if max_length > config.max_position_embeddings:
            raise ValueError(f"KVCache: max_length {max_length} exceeds max_position_embeddings "
                             f"{config.max_position_embeddings}")
        shape = (batch, config.num_key_value_heads, max_length, config.head_dim)
        self.k = [np.zeros(shape, np.float32) for _ in range(config.num_hidden_layers)]
        self.v = [np.zeros(shape, np.float32) for _ in range(config.num_hidden_layers)]
        self.batch, self.max_length, self.length = batch, max_length, 0

    def check_room(self, batch: int, T: int) -> None:
        if batch != self.batch:
            raise ValueError(f"input_ids has batch {batch} but the KV cache was made for batch {self.batch}")
        if self.length + T > self.max_length:
            raise ValueError(f"KV cache full: {self.length} cached + {T} new tokens > its max_length {self.max_length}")


# ---------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------
def sample_next(logits: np.ndarray, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
    """Next token per row.  logits [B, V] -> int64 [B].

    temperature 0 is greedy (argmax, first index on ties, as torch.argmax).  Otherwise the logits
    are divided by the temperature, cut to the top_k largest (ties at the k-th value kept) and to
    the smallest set whose probability reaches top_p (nucleus; the most likely token is always
    kept), renormalised and sampled -- the order Hugging Face's logits warpers apply."""
    if temperature == 0:
        return np.argmax(logits, axis=-1).astype(np.int64)
    z = logits.astype(np.float64) / temperature                                    # [B, V]
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]                  # [B, 1]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)                                              # [B, V]
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-p, axis=-1, kind="stable")                              # [B, V]
        sorted_p = np.take_along_axis(p, order, axis=-1)
        drop_sorted = np.cumsum(sorted_p, axis=-1) - sorted_p >= top_p              # mass before it already enough
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        p = np.where(drop, 0.0, p)
        p /= p.sum(axis=-1, keepdims=True)
    rng = rng if rng is not None else np.random.default_rng()
    u = rng.random((p.shape[0], 1))                                                 # [B, 1]
    idx = (np.cumsum(p, axis=-1) < u).sum(axis=-1)                                  # inverse CDF
    return np.minimum(idx, p.shape[-1] - 1).astype(np.int64)


def _check_sampling(max_new_tokens, temperature, top_k, top_p):
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)) \
            or not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float, np.floating))
                              or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")


# ---------------------------------------------------------------------------------------------
# chat format
# ---------------------------------------------------------------------------------------------
def chat_prompt(messages: list[dict], bos: str = "<s>", eos: str = "</s>") -> str:
    """The LLaMA-2-chat prompt of a conversation, as text with the special tokens written out.

    messages: [{"role": "system"|"user"|"assistant", "content": str}, ...], an optional system
    message first, then user/assistant alternating and ending with a user turn.  Format (Meta's
    ``chat_completion``, also the HF chat template): the system prompt is folded into the first
    user turn as ``<<SYS>>\\n...\\n<</SYS>>\\n\\n``; every user turn is ``<s>[INST] ... [/INST]`` and
    every answer `` ... </s>``.  Encode the result without adding special tokens again."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    for m in messages:
        if not isinstance(m, Mapping) or not isinstance(m.get("content"), str) or m.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"each message must be {{'role': 'system'|'user'|'assistant', 'content': str}}, got {m!r}")
    system, turns = None, list(messages)
    if turns[0]["role"] == "system":
        system, turns = turns[0]["content"], turns[1:]
    if not turns or turns[-1]["role"] != "user":
        raise ValueError("the conversation must end with a user message (the model answers it)")
    out = []
    for i, m in enumerate(turns):
        if m["role"] != ("user" if i % 2 == 0 else "assistant"):
            raise ValueError(f"message {i} has role {m['role']!r}: after the system prompt, roles must alternate "
                             "user/assistant/user/...")
        content = m["content"].strip()
        if i == 0 and system is not None:
            content = f"<<SYS>>\n{system.strip()}\n<</SYS>>\n\n{content}"
        out.append(f"{bos}[INST] {content} [/INST]" if m["role"] == "user" else f" {content} {eos}")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
class TextStream:
    """Incremental detokenisation for streaming: ``push(id)`` returns the text the new token adds
    (maybe ""), ``flush()`` what is still held back.

    Decoding one token at a time is wrong for SentencePiece-style vocabularies: a leading "▁" is
    stripped from the first token of what is decoded, and a character spelled by several
    byte-fallback tokens is not valid UTF-8 until its last byte arrives (and an unfinished run
    turns every byte of it into U+FFFD).  So a short window is decoded with the token before it
    as context, and text ending in U+FFFD is held back.  For valid UTF-8 the pieces join to the
    decoding of the whole sequence."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.prefix, self.read = tokenizer, [], 0, 0

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return now[len(before):]
        return ""

    def flush(self) -> str:
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return now[len(before):]


class Llama2:
    """A config, a weights Mapping (HF names; memory-mapped checkpoints stay on disk) and an
    optional ``tokenizers.Tokenizer``.  ``model(ids)`` -> logits; ``generate``; ``generate_text``."""

    def __init__(self, config: Config, weights: Mapping, tokenizer=None, rope_layout: str = "half"):
        if rope_layout not in ("half", "interleaved"):
            raise ValueError(f"rope_layout must be 'half' (HF checkpoints) or 'interleaved' (Meta layout), got {rope_layout!r}")
        self.config, self.weights, self.tokenizer, self.rope_layout = config, weights, tokenizer, rope_layout
        self._check_weights()

    def _check_weights(self):
        shape_of = getattr(self.weights, "shape_of", None)
        dtype_of = getattr(self.weights, "dtype_of", None)
        missing = []
        for name, shape in weight_shapes(self.config).items():
            if name not in self.weights:
                missing.append(name)
                continue
            got = tuple(shape_of(name)) if shape_of else tuple(np.shape(self.weights[name]))
            if got != shape:
                raise ValueError(f"weight {name!r} has shape {got}, but the config needs {shape}")
            if dtype_of and dtype_of(name) not in ("F32", "F16", "BF16", "F64"):
                raise TypeError(f"weight {name!r} is stored as {dtype_of(name)}; expected F32, F16 or BF16")
        if missing:
            hint = " (the head is untied: tie_word_embeddings is false)" if "lm_head.weight" in missing else ""
            raise ValueError(f"weights lack {len(missing)} tensors the config needs, e.g. {missing[0]!r}{hint}")

    @property
    def num_parameters(self) -> int:
        return count_params(self.config)

    def forward(self, input_ids, cache: KVCache | None = None, last_only: bool = False) -> np.ndarray:
        return forward(input_ids, self.weights, self.config, cache, self.rope_layout, last_only)

    def __call__(self, input_ids) -> np.ndarray:
        """input_ids int [B, T] -> float32 logits [B, T, V]."""
        return self.forward(input_ids)

    def new_cache(self, batch: int, max_length: int) -> KVCache:
        return KVCache(self.config, batch, max_length)

    def generate_stream(self, input_ids, max_new_tokens: int = 32, temperature: float = 0.0,
                        top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                        eos_token_id=...) -> Iterator[np.ndarray]:
        """Yield the next token of every row, int64 [B], one step at a time: one prefill forward
        over the prompt, then one single-token forward per step against the KV cache.  Rows that
        produced eos keep yielding eos; the stream ends when all rows have, or after
        max_new_tokens.  eos_token_id: ... = the config's, None = never stop."""
        _check_sampling(max_new_tokens, temperature, top_k, top_p)
        ids = check_input_ids(input_ids, self.config, self.config.max_position_embeddings)
        B, T = ids.shape
        if T + max_new_tokens > self.config.max_position_embeddings:
            raise ValueError(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds the context "
                             f"max_position_embeddings={self.config.max_position_embeddings}")
        eos = self.config.eos_ids if eos_token_id is ... else (
            () if eos_token_id is None else tuple(np.atleast_1d(eos_token_id).tolist()))
        return self._steps(ids, max_new_tokens, temperature, top_k, top_p, np.random.default_rng(seed), eos)

    def _steps(self, ids, max_new_tokens, temperature, top_k, top_p, rng, eos) -> Iterator[np.ndarray]:
        if max_new_tokens == 0:
            return
        B, T = ids.shape
        cache = self.new_cache(B, T + max_new_tokens)
        done = np.zeros(B, dtype=bool)
        logits = self.forward(ids, cache, last_only=True)[:, -1]                 # [B, V]
        for step in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, top_p, rng)            # [B]
            if eos:
                nxt = np.where(done, eos[0], nxt)
                done |= np.isin(nxt, eos)
            yield nxt
            if done.all() or step == max_new_tokens - 1:
                return
            logits = self.forward(nxt[:, None], cache, last_only=True)[:, -1]    # [B, V]

    def generate(self, input_ids, max_new_tokens: int = 32, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, eos_token_id=...) -> np.ndarray:
        """Prompt plus generated tokens, int64 [B, T + n] (n <= max_new_tokens; finished rows are
        padded with eos).  temperature 0 is greedy."""
        ids = check_input_ids(input_ids, self.config)
        steps = list(self.generate_stream(ids, max_new_tokens, temperature, top_k, top_p, seed, eos_token_id))
        return np.concatenate([ids, np.stack(steps, axis=1)], axis=1) if steps else ids

    # ---- text ----------------------------------------------------------------------------
    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer (from_pretrained loads the checkpoint's tokenizer.json)")
        return self.tokenizer

    def encode(self, text: str, add_special_tokens: bool = True) -> np.ndarray:
        """text -> int64 [1, T] (with BOS when the tokenizer's post-processor adds it)."""
        if not isinstance(text, str):
            raise TypeError(f"prompt must be a str, got {type(text).__name__}")
        ids = self._need_tokenizer().encode(text, add_special_tokens=add_special_tokens).ids
        return np.asarray([ids], dtype=np.int64)

    def decode(self, ids) -> str:
        return self._need_tokenizer().decode([int(i) for i in np.ravel(ids)], skip_special_tokens=True)

    def generate_text(self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0,
                      top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                      stream: Callable[[str], object] | None = None, add_special_tokens: bool = True) -> str:
        """The completion of a text prompt (decoded as a whole).  ``stream(piece)`` is called with
        each new piece of text as soon as it is complete (see :class:`TextStream`)."""
        ids = self.encode(prompt, add_special_tokens)
        if ids.shape[1] == 0:
            raise ValueError("prompt is empty: it encodes to no tokens")
        detok, new = TextStream(self._need_tokenizer()), []
        for tok in self.generate_stream(ids, max_new_tokens, temperature, top_k, top_p, seed):
            if int(tok[0]) in self.config.eos_ids:
                break
            new.append(int(tok[0]))
            piece = detok.push(new[-1])
            if stream is not None and piece:
                stream(piece)
        piece = detok.flush()
        if stream is not None and piece:
            stream(piece)
        return self.decode(new)

    def chat(self, messages: list[dict], **kwargs) -> str:
        """Answer the last user message of a conversation (see :func:`chat_prompt`)."""
        return self.generate_text(chat_prompt(messages), add_special_tokens=False, **kwargs)


# ---------------------------------------------------------------------------------------------
# construction
# ---------------------------------------------------------------------------------------------
def from_pretrained(path, rope_layout: str = "half") -> Llama2:
    """A Hugging Face LLaMA checkpoint directory: ``config.json``, ``model.safetensors`` or
    sharded ``model-0000x-of-0000y.safetensors`` + index (F32, F16 or BF16, memory-mapped and
    converted per use), and ``tokenizer.json`` when present."""
    path = Path(path)
    config = Config.from_hf(io.load_config(path))
    weights = io.load_checkpoint(path)
    tokenizer = None
    tok_file = (path if path.is_dir() else path.parent) / "tokenizer.json"
    if tok_file.is_file():
        from tokenizers import Tokenizer
        tokenizer = Tokenizer.from_file(str(tok_file))
    return Llama2(config, weights, tokenizer, rope_layout)


def random_weights(config: Config, seed: int = 0, std: float = 0.02) -> dict[str, np.ndarray]:
    """Gaussian float32 weights (std 0.02, as the HF initialiser), norms at 1, biases at 0."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in weight_shapes(config).items():
        if name.endswith("norm.weight"):
            out[name] = np.ones(shape, np.float32)
        elif name.endswith(".bias"):
            out[name] = np.zeros(shape, np.float32)
        else:
            w = rng.standard_normal(shape, dtype=np.float32)
            w *= np.float32(std)
            out[name] = w
    return out


def from_preset(name, seed: int = 0) -> Llama2:
    """Random float32 weights (std 0.02) in the shapes of a preset (or of a Config).  Refuses,
    with MemoryError, a model whose float32 weights would not fit in the available memory."""
    if isinstance(name, Config):
        config, label = name, "config"
    elif name in PRESETS:
        config, label = PRESETS[name], name
    else:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    check_fits(4 * count_params(config), label)
    return Llama2(config, random_weights(config, seed))


# ---------------------------------------------------------------------------------------------
# command line (pyworkloads demo / run llama2)
# ---------------------------------------------------------------------------------------------
_BYTE_OFFSET = 3     # LLaMA's sentencepiece vocabulary: <unk> <s> </s>, then <0x00> .. <0xFF>


def _preset_prompt_ids(prompt: str, config: Config) -> np.ndarray:
    """A prompt for a random-weight preset: "1 450 4996" (ids, spaces or commas) is taken as
    ids; any other text becomes BOS + its UTF-8 bytes as LLaMA's byte-fallback tokens (id 3 + byte)."""
    if re.fullmatch(r"\s*\d+(?:[\s,]+\d+)*\s*", prompt):
        ids = [int(t) for t in re.split(r"[\s,]+", prompt.strip())]
    else:
        ids = [config.bos_token_id or 1] + [_BYTE_OFFSET + b for b in prompt.encode("utf-8")]
    return check_input_ids(np.asarray([ids]), config, config.max_position_embeddings)


def demo() -> str:
    """Greedy-generate 8 tokens with the random-weight llama2-tiny preset on the current backend."""
    m = from_preset("llama2-tiny", seed=0)
    ids = _preset_prompt_ids("Hello", m.config)
    t0 = time.perf_counter()
    logits = m(ids)
    out = m.generate(ids, max_new_tokens=8, eos_token_id=None)
    dt = time.perf_counter() - t0
    return (f"llama2-tiny ({m.num_parameters / 1e6:.2f}M params, random weights, backend {kernels.get_backend()}): "
            f"input_ids {list(ids.shape)} -> logits {list(logits.shape)}; greedy ids {out[0, ids.shape[1]:].tolist()} "
            f"({dt:.2f} s)")


def add_run_arguments(parser) -> None:
    """Arguments of ``pyworkloads run llama2``."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="DIR", help="Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json)")
    src.add_argument("--preset", choices=list(PRESETS), help="random weights in a preset's shapes; --prompt is then "
                     "token ids ('1 450 4996') or text taken as UTF-8 byte tokens, and ids are printed")
    parser.add_argument("--prompt", default="Once upon a time", help="the text to continue")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the LLaMA-2-chat format ([INST] ... [/INST])")
    parser.add_argument("--system", default=None, help="system prompt for --chat")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rope-layout", choices=("half", "interleaved"), default="half",
                        help="'interleaved' for weights in Meta's original q/k layout")


def run_cli(args) -> int:
    """Stream the completion to stdout as it is generated, then the prefill / decode rates."""
    out = sys.stdout
    try:
        if args.model:
            m = from_pretrained(args.model, rope_layout=args.rope_layout)
        else:
            m = from_preset(args.preset, seed=args.seed)
            m.rope_layout = args.rope_layout
        prompt = args.prompt
        if args.chat:
            msgs = ([{"role": "system", "content": args.system}] if args.system else []) + [{"role": "user", "content": prompt}]
            prompt = chat_prompt(msgs)
        if m.tokenizer is not None:
            ids = m.encode(prompt, add_special_tokens=not args.chat)
        elif args.model:
            raise ValueError(f"{args.model} has no tokenizer.json to encode the prompt with")
        else:
            ids = _preset_prompt_ids(prompt, m.config)
        stream = m.generate_stream(ids, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
        detok = TextStream(m.tokenizer) if m.tokenizer is not None else None
        t0 = time.perf_counter()
        first, new = None, []
        for tok in stream:
            tok = int(tok[0])
            if first is None:
                first = time.perf_counter()
            if tok in m.config.eos_ids:
                break
            new.append(tok)
            print(detok.push(tok) if detok else f"{tok} ", end="", file=out, flush=True)
        end = time.perf_counter()
        if detok:
            print(detok.flush(), end="", file=out)
    except (ValueError, TypeError, MemoryError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    T = ids.shape[1]
    prefill = (first - t0) if first else float("nan")
    n_dec = max(len(new) - 1, 0)
    decode_rate = n_dec / (end - first) if first and n_dec else float("nan")
    print(f"\n[{T} prompt tokens, {len(new)} generated | prefill {T / prefill:.1f} tokens/s, "
          f"decode {decode_rate:.1f} tokens/s, backend {kernels.get_backend()}]", file=out)
    return 0
