"""LLaMA 2 (Touvron et al. 2023): a decoder-only transformer, written as pure NumPy functions of
(activations, weights).  This is the file to read next to the lecture; the package's other
modules hold what is built around it (generation, chat format, Hugging Face loading, the
user-facing class, the command line).

The architecture::

    input_ids [B, T]
      -> embed_tokens                                                 x [B, T, D]
      -> L x decoder_layer, pre-norm with two residual branches:
             n = RMSNorm(x)
             h = x + o_proj( attention( RoPE(q_proj(n)), RoPE(k_proj(n)), v_proj(n) ) )
             m = RMSNorm(h)
             x = h + down_proj( silu(gate_proj(m)) * up_proj(m) )     (SwiGLU)
      -> RMSNorm -> lm_head                                           logits [B, T, V]

Attention is causal and grouped-query (LLaMA 2 70B): K and V have KVH < H heads, each shared by a
group of H/KVH query heads.  The attention kernel lets the query heads of a group read the same
K/V head, with no copy; :func:`grouped_query_attention` spells the sharing out.  ``lm_head`` is
tied to the embedding table in small checkpoints.  Generation keeps the keys and values of past
tokens in a :class:`~pyworkloads.models.common.KVCache`, so each new token costs one forward
with T = 1.

Weights are looked up by their Hugging Face names (``model.layers.3.mlp.up_proj.weight``) and
converted to float32 at the moment of use, so a memory-mapped fp16/bf16 checkpoint is never held
in float32 as a whole: peak extra memory is about one weight matrix.

Dimensions, as the shape comments name them:

    B    batch                               H    query heads
    T    new tokens in this forward          KVH  key/value heads (H, or 8 for 70B)
    Tc   tokens already in the KV cache      Dh   head width (D / H)
    S    keys: Tc + T (cached + new)         V    vocabulary size
    D    hidden_size                         L    layers (num_hidden_layers)
    F    intermediate_size (MLP width)
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from ... import kernels, ops
from .. import common
from ..common import (
    KVCache,
    check_bool,
    check_choice,
    check_number,
    check_sizes,
    check_token_id,
    check_width,
    describe,
    linear,
    linears,
)

__all__ = [
    "Config", "PRESETS", "ROPE_LAYOUTS", "weight_shapes", "count_params", "embed_tokens",
    "rms_norm", "rope_tables", "apply_rope", "grouped_query_attention", "self_attention", "mlp",
    "decoder_layer", "lm_head", "forward",
]

ROPE_LAYOUTS = ("half", "interleaved")


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
@dataclass
class Config:
    """Hyper-parameters, named as in a Hugging Face LLaMA ``config.json``.

    ``num_key_value_heads`` None means H (multi-head attention); ``head_dim`` None means D / H.
    ``rope_scaling`` is None (plain RoPE) or ``{"rope_type": "linear", "factor": f}`` (positions
    divided by f); :meth:`from_hf` refuses other scaling schemes."""
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
        """Check every field before anything is built from it: types, ranges, and the limits
        of :mod:`..common` (``MAX_LAYERS``, ``MAX_WIDTH``, ``MAX_POSITIONS``)."""
        check_sizes(self, "Config", widths=("hidden_size", "intermediate_size",
                                            "num_attention_heads", "vocab_size"),
                    layers=("num_hidden_layers",), positions=("max_position_embeddings",))
        H, KVH = self.num_attention_heads, self.num_key_value_heads
        KVH = check_width(H if KVH is None else KVH, "Config.num_key_value_heads")
        self.num_key_value_heads = KVH
        Dh = self.hidden_size // H if self.head_dim is None else self.head_dim
        self.head_dim = check_width(Dh, "Config.head_dim")
        if H % KVH:
            raise ValueError(f"Config: num_attention_heads ({H}) must be a multiple of "
                             f"num_key_value_heads ({KVH})")
        if self.head_dim % 2:
            raise ValueError("Config.head_dim must be even (RoPE rotates channel pairs), "
                             f"got {self.head_dim}")
        self.rms_norm_eps = check_number(self.rms_norm_eps, "Config.rms_norm_eps", minimum=0)
        self.rope_theta = check_number(self.rope_theta, "Config.rope_theta", minimum=0,
                                       exclusive_minimum=True)
        check_choice(self.hidden_act, "Config.hidden_act", tuple(ops.ACTIVATIONS))
        for f in ("tie_word_embeddings", "attention_bias", "mlp_bias"):
            setattr(self, f, check_bool(getattr(self, f), f"Config.{f}"))
        V = self.vocab_size
        self.bos_token_id = check_token_id(self.bos_token_id, "Config.bos_token_id", V, True)
        e = self.eos_token_id
        if isinstance(e, (list, tuple)):
            if not e:
                raise ValueError("Config.eos_token_id must be an id or a non-empty list of ids, "
                                 "got []")
            self.eos_token_id = [check_token_id(i, "Config.eos_token_id", V) for i in e]
        else:
            self.eos_token_id = check_token_id(e, "Config.eos_token_id", V, True)
        s = self.rope_scaling
        if s is not None:
            if not (isinstance(s, Mapping) and s.get("rope_type") == "linear" and "factor" in s):
                raise ValueError("Config.rope_scaling must be None or "
                                 f"{{'rope_type': 'linear', 'factor': f > 0}}, got {describe(s)}")
            factor = check_number(s["factor"], "Config.rope_scaling factor", minimum=0,
                                  exclusive_minimum=True)
            self.rope_scaling = {"rope_type": "linear", "factor": factor}

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """The end-of-sequence ids as a tuple (configs store one id or a list)."""
        e = self.eos_token_id
        return () if e is None else tuple(e) if isinstance(e, (list, tuple)) else (e,)

    @classmethod
    def from_hf(cls, cfg: Mapping) -> Config:
        """Parse a Hugging Face ``config.json`` dict (transformers 4.x or 5.x): see
        :func:`pyworkloads.models.llama2.hf.config_from_hf`."""
        from .hf import config_from_hf
        return config_from_hf(cfg, cls)

    def to_hf(self) -> dict:
        """The config as a transformers-5 style ``config.json`` dict."""
        from .hf import config_to_hf
        return config_to_hf(self)


_LLAMA2 = dict(vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
               rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
_BASE = {
    # published shapes (Touvron et al. 2023, Table 1; the meta-llama/Llama-2-*-hf config.json)
    "llama2-7b": Config(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=32, **_LLAMA2),
    "llama2-13b": Config(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                         num_attention_heads=40, num_key_value_heads=40, **_LLAMA2),
    "llama2-70b": Config(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                         num_attention_heads=64, num_key_value_heads=8, **_LLAMA2),
}
PRESETS: dict[str, Config] = {
    **_BASE,
    **{f"{k}-chat": replace(v) for k, v in _BASE.items()},     # chat fine-tunes share the shapes
    # the "stories110M" shape (llama2.c): the benchmark size, fp32 weights fit in 0.5 GB
    "llama2-110m": Config(hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                          num_attention_heads=12, vocab_size=32000, max_position_embeddings=1024,
                          tie_word_embeddings=True),
    # a few-MB model for demos and tests: the real vocabulary (so byte ids 3..258 mean bytes), GQA
    "llama2-tiny": Config(hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, vocab_size=32000,
                          max_position_embeddings=512),
}


# ---------------------------------------------------------------------------------------------
# the weight layout
# ---------------------------------------------------------------------------------------------
def weight_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Every tensor the model reads, by Hugging Face name -> shape (no ``lm_head`` when tied)."""
    D, F, V = config.hidden_size, config.intermediate_size, config.vocab_size
    Q = config.num_attention_heads * config.head_dim                            # H·Dh
    KV = config.num_key_value_heads * config.head_dim                           # KVH·Dh
    shapes = {"model.embed_tokens.weight": (V, D)}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}"
        for proj, shape in (("q_proj", (Q, D)), ("k_proj", (KV, D)), ("v_proj", (KV, D)),
                            ("o_proj", (D, Q))):
            shapes[f"{p}.self_attn.{proj}.weight"] = shape
            if config.attention_bias:
                shapes[f"{p}.self_attn.{proj}.bias"] = shape[:1]
        for proj, shape in (("gate_proj", (F, D)), ("up_proj", (F, D)), ("down_proj", (D, F))):
            shapes[f"{p}.mlp.{proj}.weight"] = shape
            if config.mlp_bias:
                shapes[f"{p}.mlp.{proj}.bias"] = shape[:1]
        shapes[f"{p}.input_layernorm.weight"] = (D,)
        shapes[f"{p}.post_attention_layernorm.weight"] = (D,)
    shapes["model.norm.weight"] = (D,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, D)
    return shapes


def count_params(config: Config) -> int:
    """Number of parameters (a tied head counted once), e.g. 6,738,415,616 for llama2-7b."""
    return common.count_params(weight_shapes(config))


# ---------------------------------------------------------------------------------------------
# the forward pass: pure functions of (activations, weights, module name, config)
# ---------------------------------------------------------------------------------------------
def embed_tokens(input_ids, weights: Mapping):
    """One row of the embedding table per token.  input_ids int [B, T] -> [B, T, D]."""
    with kernels.scope("model.embed_tokens"):
        return common.embedding(input_ids, weights, "model.embed_tokens.weight")  # [B, T, D]


def rms_norm(x, weights: Mapping, name: str, config: Config):
    """RMSNorm (Zhang & Sennrich 2019) over the last axis, with the module's weight g [D]:

        y = x / sqrt(mean(x²) + ε) · g,    ε = rms_norm_eps

    LayerNorm without the mean subtraction and the bias.  x [B, T, D] -> [B, T, D]."""
    return common.rms_norm(x, weights, name, config.rms_norm_eps)


def rope_tables(config: Config, start: int, T: int):
    """RoPE's rotations (Su et al. 2021) for positions p = start .. start+T-1: channel pair
    i < Dh/2 turns by the angle p · θ^(-2i/Dh), θ = rope_theta, so pairs turn at geometrically
    slower rates.  Linear scaling divides p by its factor.  -> cos, sin float32 [T, Dh/2]."""
    Dh = config.head_dim
    positions = np.arange(start, start + T, dtype=np.float64)                   # [T]
    if config.rope_scaling is not None:
        positions = positions / config.rope_scaling["factor"]
    inv_freq = 1.0 / config.rope_theta ** (np.arange(0, Dh, 2, dtype=np.float64) / Dh)  # [Dh/2]
    angles = positions[:, None] * inv_freq[None, :]                             # [T, Dh/2]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(x, cos, sin, layout: str = "half"):
    """Rotate every channel pair (a, b) of each head by its position's angle:
    (a, b) -> (a·cos - b·sin, b·cos + a·sin).  x [B, heads, T, Dh], cos/sin [T, Dh/2] -> x's shape.

    Which channels pair up is a convention of the checkpoint:
      "half" (the default) pairs x[i] with x[i + Dh/2]: Hugging Face checkpoints (transformers'
        ``rotate_half``), whose conversion script permuted Meta's q/k projection rows into it;
      "interleaved" pairs x[2i] with x[2i+1]: Meta's original checkpoints, the RoFormer paper.
    Each gives the same attention scores on its own checkpoints."""
    if layout == "half":
        a, b = x[..., :x.shape[-1] // 2], x[..., x.shape[-1] // 2:]             # [..., Dh/2]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)  # [..., Dh]
    if layout == "interleaved":
        a, b = x[..., 0::2], x[..., 1::2]                                       # [..., Dh/2]
        pairs = np.stack([a * cos - b * sin, b * cos + a * sin], axis=-1)       # [..., Dh/2, 2]
        return pairs.reshape(x.shape)                                           # [..., Dh]
    raise ValueError(f"rope_layout must be 'half' or 'interleaved', got {layout!r}")


def grouped_query_attention(q, k, v):
    """Causal grouped-query attention written out: what ``kernels.attention(q, k, v,
    causal=True)`` computes, which shares the K/V heads without copying them.  For reading and
    tests.  q [B, H, T, Dh], k, v [B, KVH, S, Dh] -> [B, H, T, Dh].

    Query head h uses K/V head h // (H/KVH).  The T queries are the last T of the S positions
    (the cache holds the first Tc = S - T), and query t sees the keys s <= Tc + t."""
    group = q.shape[1] // k.shape[1]                                            # H / KVH
    k = np.repeat(k, group, axis=1)                                             # [B, H, S, Dh]
    v = np.repeat(v, group, axis=1)                                             # [B, H, S, Dh]
    T, S, Dh = q.shape[2], k.shape[2], q.shape[3]
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(Dh)                             # [B, H, T, S]
    visible = np.arange(S)[None, :] <= np.arange(T)[:, None] + (S - T)          # [T, S]
    scores = np.where(visible, scores, -np.inf)                                 # [B, H, T, S]
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))                     # [B, H, T, S]
    p = p / p.sum(axis=-1, keepdims=True)                                       # softmax
    return p @ v                                                                # [B, H, T, Dh]


def self_attention(x, weights: Mapping, name: str, config: Config, cos, sin,
                   cache: KVCache | None = None, layer: int = 0, rope_layout: str = "half"):
    """Causal grouped-query self-attention with RoPE.  x [B, T, D] -> [B, T, D].

    cos, sin [T, Dh/2] rotate these T positions.  With a ``cache``, the new keys and values are
    appended to its layer ``layer`` and the queries attend to all S = Tc + T of them (the
    kernel's causal mask is bottom-right aligned: the last query sees the whole cache)."""
    B, T, _ = x.shape
    H, KVH, Dh = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    with kernels.scope(name):
        # the three projections read the same x: one kernel call (common.linears) runs them
        q, k, v = linears(x, weights, [f"{name}.q_proj", f"{name}.k_proj", f"{name}.v_proj"])
        q = q.reshape(B, T, H, Dh)                                              # [B, T, H, Dh]
        k = k.reshape(B, T, KVH, Dh)                                            # [B, T, KVH, Dh]
        v = v.reshape(B, T, KVH, Dh)                                            # [B, T, KVH, Dh]
        q = apply_rope(q.transpose(0, 2, 1, 3), cos, sin, rope_layout)          # [B, H, T, Dh]
        k = apply_rope(k.transpose(0, 2, 1, 3), cos, sin, rope_layout)          # [B, KVH, T, Dh]
        v = v.transpose(0, 2, 1, 3)                                             # [B, KVH, T, Dh]
        if cache is not None:
            k, v = cache.append(layer, k, v)                                    # [B, KVH, S, Dh]
        o = kernels.attention(q, k, v, causal=True)                             # [B, H, T, Dh]
        o = o.transpose(0, 2, 1, 3).reshape(B, T, H * Dh)                       # [B, T, H·Dh]
        return linear(o, weights, f"{name}.o_proj")                             # [B, T, D]


def mlp(x, weights: Mapping, name: str, config: Config):
    """SwiGLU feed-forward (Shazeer 2020): the gate, through SiLU (x·σ(x)), scales the up
    projection element by element, and down_proj brings the product back to D:

        y = down_proj( silu(gate_proj(x)) ⊙ up_proj(x) )      x [B, T, D] -> [B, T, D]"""
    act = ops.ACTIVATIONS[config.hidden_act]                                    # silu
    with kernels.scope(name):
        gate, up = linears(x, weights, [f"{name}.gate_proj", f"{name}.up_proj"])  # [B, T, F] x2
        return linear(act(gate) * up, weights, f"{name}.down_proj")             # [B, T, D]


def decoder_layer(x, weights: Mapping, name: str, config: Config, cos, sin,
                  cache: KVCache | None = None, layer: int = 0, rope_layout: str = "half"):
    """One pre-norm block ``name`` = "model.layers.{layer}": attention, then the SwiGLU MLP, each
    reading a normalised copy of the residual stream and adding its output back to it.
    x [B, T, D] -> [B, T, D]."""
    with kernels.scope(name):
        n = rms_norm(x, weights, f"{name}.input_layernorm", config)             # [B, T, D]
        h = x + self_attention(n, weights, f"{name}.self_attn", config, cos, sin,
                               cache, layer, rope_layout)                       # [B, T, D]
        m = rms_norm(h, weights, f"{name}.post_attention_layernorm", config)    # [B, T, D]
        return h + mlp(m, weights, f"{name}.mlp", config)                       # [B, T, D]


def lm_head(x, weights: Mapping, config: Config):
    """Scores of every vocabulary entry.  x [B, T, D] -> logits [B, T, V]; a tied head reuses
    the embedding table as its weight."""
    name = "model.embed_tokens" if config.tie_word_embeddings else "lm_head"
    with kernels.scope("lm_head"):
        return linear(x, weights, name)                                         # [B, T, V]


def forward(input_ids, weights: Mapping, config: Config, cache: KVCache | None = None,
            last_only: bool = False, rope_layout: str = "half"):
    """Logits of every position.  input_ids int [B, T] -> float32 [B, T, V] ([B, 1, V] with
    ``last_only``: all a generation step needs).

    The ids must be valid (``Llama2`` checks them with ``check_input_ids``).  With a ``cache``
    the tokens continue the cached sequence at positions cache.length ..: each layer appends its
    keys and values, and the cache advances by T at the end."""
    B, T = input_ids.shape
    start = 0 if cache is None else cache.length
    if cache is not None:
        cache.check_room(B, T)
    x = embed_tokens(input_ids, weights)                                        # [B, T, D]
    cos, sin = rope_tables(config, start, T)                                    # [T, Dh/2]
    for i in range(config.num_hidden_layers):
        x = decoder_layer(x, weights, f"model.layers.{i}", config, cos, sin,
                          cache, i, rope_layout)                                # [B, T, D]
    if cache is not None:
        cache.advance(T)
    if last_only:
        x = x[:, -1:]                                                           # [B, 1, D]
    x = rms_norm(x, weights, "model.norm", config)                              # [B, T, D]
    return lm_head(x, weights, config)                                          # [B, T, V]
