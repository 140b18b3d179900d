"""Whisper (Radford et al. 2022): log-mel audio -> transformer encoder -> text decoder with
cross-attention to the audio.

The model in one picture (the lecture's, with Hugging Face module names)::

    log-mel [B, Mel, 2S = 3000]                             (pyworkloads/audio.py: 30 s, 100 / s)
      -> model.encoder.conv1 (k3, pad 1) + GELU            [B, 2S, D]   time-major
      -> model.encoder.conv2 (k3, stride 2, pad 1) + GELU  [B, S = 1500, D]
      -> + sinusoidal positions (model.encoder.embed_positions, S x D, fixed)
      -> model.encoder.layers.{i}, pre-LN:  x += self_attn(LN(x))
                                            x += fc2(GELU(fc1(LN(x))))
      -> model.encoder.layer_norm                          = audio features [B, S, D]
      -> per decoder layer: encoder_attn.k_proj / v_proj   = cross K, V [B, H, S, Dh], once
    tokens [B, T] -> model.decoder.embed_tokens + learned positions (model.decoder.embed_positions)
      -> model.decoder.layers.{i}:  x += self_attn(LN(x))       causal; K, V appended to the cache
                                    x += encoder_attn(LN(x))    queries from x; K, V of the audio
                                    x += fc2(GELU(fc1(LN(x))))
      -> model.decoder.layer_norm -> proj_out (tied to embed_tokens) = logits [B, T, V]

The encoder runs once per 30-s window; so do the cross-attention projections of the audio
(:func:`cross_attention_kv`).  Generation then calls :func:`decoder` once for the prompt and once
per new token: each step projects only its own token, appends its keys and values to the
:class:`~pyworkloads.models.common.KVCache`, and (``last_only``) multiplies only the last position
by the vocabulary matrix.  Decoding rules live in ``decoding.py``, long-form audio in
``transcribe.py``.

Glossary
    B    batch                          Mel  mel bins (80; 128 for large-v3)
    S    audio positions (max_source_positions, 1500): the encoder reads 2S mel frames (30 s)
    D    d_model                        H    attention heads;  Dh = D / H per head
    F    MLP inner width (4 D)          T    tokens in this decoder call
    Tc   tokens already in the cache    V    vocabulary (text + specials + 1501 timestamps)
    L    layers (encoder_layers, decoder_layers)
    C    channels: a convolution's input (Mel, then D), the sinusoid table's width (D)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ... import kernels, ops
from ...audio import log_mel_spectrogram  # noqa: F401  (front end: audio -> log-mel [Mel, frames])
from .. import common
from ..common import KVCache

LN_EPS = 1e-5                    # nn.LayerNorm's default; Whisper's config has no field for it
N_TIMESTAMPS = 1501              # <|0.00|> ... <|30.00|> in steps of 0.02 s
INPUT_STRIDE = 2                 # mel frames per encoder position (conv2's stride)


# =============================================================================================
# configuration
# =============================================================================================
@dataclass
class Config:
    """Architecture hyper-parameters, named as in Hugging Face's ``WhisperConfig`` / config.json."""
    vocab_size: int = 51865
    num_mel_bins: int = 80
    d_model: int = 384
    encoder_layers: int = 4
    encoder_attention_heads: int = 6
    encoder_ffn_dim: int = 1536
    decoder_layers: int = 4
    decoder_attention_heads: int = 6
    decoder_ffn_dim: int = 1536
    max_source_positions: int = 1500           # audio positions after the stride-2 conv: 30 s
    max_target_positions: int = 448            # decoder context
    activation_function: str = "gelu"
    pad_token_id: int = 50257
    bos_token_id: int = 50257
    eos_token_id: int = 50257
    decoder_start_token_id: int = 50258
    tie_word_embeddings: bool = True

    def __post_init__(self):
        common.check_sizes(
            self, "Config", widths=("vocab_size", "num_mel_bins", "d_model",
                                    "encoder_attention_heads", "encoder_ffn_dim",
                                    "decoder_attention_heads", "decoder_ffn_dim"),
            layers=("encoder_layers", "decoder_layers"),
            positions=("max_source_positions", "max_target_positions"),
            token_ids=("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"))
        for heads in ("encoder_attention_heads", "decoder_attention_heads"):
            if self.d_model % getattr(self, heads):
                raise ValueError(f"Config: d_model ({self.d_model}) must be divisible by {heads} "
                                 f"({getattr(self, heads)})")
        if self.d_model % 2 or self.d_model < 4:      # sinusoids() divides by d_model / 2 - 1
            raise ValueError(f"Config: d_model must be even and >= 4 for the sinusoidal "
                             f"positions, got {self.d_model}")
        common.check_choice(self.activation_function, "Config.activation_function",
                            sorted(ops.ACTIVATIONS))
        self.tie_word_embeddings = common.check_bool(self.tie_word_embeddings,
                                                     "Config.tie_word_embeddings")

    @property
    def n_audio_frames(self) -> int:
        """Mel frames the encoder takes: max_source_positions x conv2's stride (3000 = 30 s)."""
        return self.max_source_positions * INPUT_STRIDE

    @classmethod
    def from_hf(cls, d: dict) -> Config:
        """Parse a Hugging Face WhisperConfig dict (config.json); unknown keys are ignored."""
        from .hf import config_from_hf
        return config_from_hf(d)

    def to_hf(self) -> dict:
        """A config.json dict that ``transformers.WhisperConfig(**d)`` accepts."""
        from .hf import config_to_hf
        return config_to_hf(self)


def _preset(d, layers, heads, vocab=51865, mels=80, decoder_layers=None):
    eot = 50256 if vocab == 51864 else 50257    # English-only vocabularies are one token shorter
    return Config(vocab_size=vocab, num_mel_bins=mels, d_model=d, encoder_layers=layers,
                  encoder_attention_heads=heads, encoder_ffn_dim=4 * d,
                  decoder_layers=decoder_layers or layers, decoder_attention_heads=heads,
                  decoder_ffn_dim=4 * d, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
                  decoder_start_token_id=eot + 1)


PRESETS: dict[str, Config] = {
    "whisper-tiny": _preset(384, 4, 6),
    "whisper-tiny.en": _preset(384, 4, 6, vocab=51864),
    "whisper-base": _preset(512, 6, 8),
    "whisper-base.en": _preset(512, 6, 8, vocab=51864),
    "whisper-small": _preset(768, 12, 12),
    "whisper-small.en": _preset(768, 12, 12, vocab=51864),
    "whisper-medium": _preset(1024, 24, 16),
    "whisper-medium.en": _preset(1024, 24, 16, vocab=51864),
    "whisper-large-v2": _preset(1280, 32, 20),
    "whisper-large-v3": _preset(1280, 32, 20, vocab=51866, mels=128),
    "whisper-large-v3-turbo": _preset(1280, 32, 20, vocab=51866, mels=128, decoder_layers=4),
    # a tiny random model for demos and tests: a 256-token byte vocabulary, then the full Whisper
    # special-token layout (100 languages, 1501 timestamps)
    "whisper-tiny-random": Config(
        vocab_size=256 + 2 + 100 + 6 + N_TIMESTAMPS, num_mel_bins=80, d_model=64,
        encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128, decoder_layers=2,
        decoder_attention_heads=4, decoder_ffn_dim=128, max_target_positions=64,
        pad_token_id=256, bos_token_id=256, eos_token_id=256, decoder_start_token_id=257),
}


# =============================================================================================
# weights
# =============================================================================================
def weight_shapes(config: Config) -> dict[str, tuple]:
    """Every tensor of a WhisperForConditionalGeneration checkpoint, HF name -> shape (proj_out
    is tied to embed_tokens, so absent)."""
    c, D = config, config.d_model
    s: dict[str, tuple] = {
        "model.encoder.conv1.weight": (D, c.num_mel_bins, 3), "model.encoder.conv1.bias": (D,),
        "model.encoder.conv2.weight": (D, D, 3), "model.encoder.conv2.bias": (D,),
        "model.encoder.embed_positions.weight": (c.max_source_positions, D),
        "model.encoder.layer_norm.weight": (D,), "model.encoder.layer_norm.bias": (D,),
        "model.decoder.embed_tokens.weight": (c.vocab_size, D),
        "model.decoder.embed_positions.weight": (c.max_target_positions, D),
        "model.decoder.layer_norm.weight": (D,), "model.decoder.layer_norm.bias": (D,),
    }

    def attn(p):                                # k_proj alone has no bias
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            s[f"{p}.{proj}.weight"] = (D, D)
            if proj != "k_proj":
                s[f"{p}.{proj}.bias"] = (D,)

    def block(p, ffn, norms):
        for n in norms:
            s[f"{p}.{n}.weight"], s[f"{p}.{n}.bias"] = (D,), (D,)
        s[f"{p}.fc1.weight"], s[f"{p}.fc1.bias"] = (ffn, D), (ffn,)
        s[f"{p}.fc2.weight"], s[f"{p}.fc2.bias"] = (D, ffn), (D,)

    for i in range(c.encoder_layers):
        p = f"model.encoder.layers.{i}"
        attn(f"{p}.self_attn")
        block(p, c.encoder_ffn_dim, ("self_attn_layer_norm", "final_layer_norm"))
    for i in range(c.decoder_layers):
        p = f"model.decoder.layers.{i}"
        attn(f"{p}.self_attn")
        attn(f"{p}.encoder_attn")
        block(p, c.decoder_ffn_dim,
              ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"))
    if not c.tie_word_embeddings:
        s["proj_out.weight"] = (c.vocab_size, D)
    return s


def count_params(config: Config) -> int:
    """Parameters as ``WhisperForConditionalGeneration.parameters()`` counts them: the fixed
    sinusoidal table (model.encoder.embed_positions, S x D) included, as HF registers it as a
    frozen parameter; the tied proj_out once."""
    return common.count_params(weight_shapes(config))


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's fixed encoder positions: [sin | cos] of pos · timescale^(-i / (C/2 - 1)),
    i < C/2 -> float32 [length, C], C = channels (the encoder's table: [S, D])."""
    inc = math.log(max_timescale) / (channels // 2 - 1)
    inv = np.exp(-inc * np.arange(channels // 2, dtype=np.float64))                 # [C/2]
    t = np.arange(length, dtype=np.float64)[:, None] * inv[None, :]                 # [length, C/2]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)        # [length, C]


# =============================================================================================
# attention: heads, projections, the KV cache
# =============================================================================================
def split_heads(x, heads: int):
    """[B, T, D] -> [B, H, T, Dh], laid out head by head: the attention kernels read each head's
    rows contiguously (a strided view would be copied inside every call -- for the cross-attention
    keys and values, at every decoding step instead of once per audio window)."""
    B, T, D = x.shape
    return ops.contiguous(x.reshape(B, T, heads, D // heads).transpose(0, 2, 1, 3))  # [B, H, T, Dh]


def merge_heads(x):
    B, H, T, Dh = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * Dh)                            # [B, T, D]


def attention_kv(x, weights, name: str, heads: int):
    """Keys and values of the attention module ``name`` over x [B, T, D] -> two [B, H, T, Dh]
    (k_proj has no bias)."""
    k = split_heads(common.linear(x, weights, f"{name}.k_proj"), heads)             # [B, H, T, Dh]
    v = split_heads(common.linear(x, weights, f"{name}.v_proj"), heads)             # [B, H, T, Dh]
    return k, v


def attention(x, k, v, weights, name: str, heads: int, causal: bool = False):
    """Query projection, softmax(q kᵀ / √Dh) v over k, v [B, H, Tc + T, Dh] (self-attention) or
    [B, H, S, Dh] (cross-attention), output projection.  x [B, T, D] -> [B, T, D]."""
    q = split_heads(common.linear(x, weights, f"{name}.q_proj"), heads)             # [B, H, T, Dh]
    o = kernels.attention(q, k, v, causal=causal)                                   # [B, H, T, Dh]
    return common.linear(merge_heads(o), weights, f"{name}.out_proj")               # [B, T, D]


def self_attention(x, weights, name: str, heads: int, causal: bool = False,
                   cache: KVCache | None = None, layer: int = 0):
    """x attends to itself (and, with a cache, to the Tc positions before it).  x [B, T, D] ->
    [B, T, D]; with ``cache``, this step's keys and values are written to its ``layer``."""
    with kernels.scope(name):
        k, v = attention_kv(x, weights, name, heads)                                # [B, H, T, Dh]
        if cache is not None:
            k, v = cache.append(layer, k, v)                                      # [B, H, Tc+T, Dh]
        return attention(x, k, v, weights, name, heads, causal=causal)              # [B, T, D]


def decoder_cache(config: Config, batch: int, capacity: int | None = None,
                  zeros=np.zeros) -> KVCache:
    """An empty self-attention KV cache for the decoder: per layer [B, H, capacity, Dh]."""
    H = config.decoder_attention_heads
    return KVCache(config.decoder_layers, batch, H, config.d_model // H,
                   capacity or config.max_target_positions, zeros=zeros)


def mlp(x, weights, name: str, act):
    """fc1 -> activation -> fc2 of the block ``name``.  x [B, T, D] -> [B, T, D]."""
    with kernels.scope(f"{name}.fc1"):
        h = act(common.linear(x, weights, f"{name}.fc1"))                           # [B, T, F]
    with kernels.scope(f"{name}.fc2"):
        return common.linear(h, weights, f"{name}.fc2")                             # [B, T, D]


# =============================================================================================
# the encoder
# =============================================================================================
def conv(x, weights, name: str, act, stride: int = 1):
    """A kernel-3 convolution over time (zero padding 1) and its activation, time-major.
    x [B, n, C] -> [B, m, D], m = n / stride: n = 2S frames of C = Mel channels into conv1,
    2S frames of D into conv2 (m = S)."""
    with kernels.scope(name):
        w, b = common.weight(weights, f"{name}.weight"), common.weight(weights, f"{name}.bias")
        return act(ops.conv1d(x, w, b, stride=stride, padding=1, channels_last=True))  # [B, m, D]


def conv_stem(input_features, weights, config: Config):
    """Two convolutions (the second halves the frame rate) and the fixed sinusoidal positions.
    log-mel [B, Mel, 2S] -> [B, S, D].  The convolutions run time-major (frames by channels):
    each is one GEMM over frames, and the transformer continues in that layout."""
    act = ops.ACTIVATIONS[config.activation_function]
    x = input_features.transpose(0, 2, 1)                                           # [B, 2S, Mel]
    x = conv(x, weights, "model.encoder.conv1", act)                                # [B, 2S, D]
    x = conv(x, weights, "model.encoder.conv2", act, stride=INPUT_STRIDE)           # [B, S, D]
    with kernels.scope("model.encoder.embed_positions"):
        return x + common.weight(weights, "model.encoder.embed_positions.weight")   # [B, S, D]


def encoder_block(x, weights, name: str, config: Config):
    """Pre-LN transformer block: x += self_attn(LN(x)); x += fc2(GELU(fc1(LN(x)))).
    x [B, S, D] -> [B, S, D]."""
    H, act = config.encoder_attention_heads, ops.ACTIVATIONS[config.activation_function]
    with kernels.scope(name):
        h = common.layer_norm(x, weights, f"{name}.self_attn_layer_norm", LN_EPS)   # [B, S, D]
        x = x + self_attention(h, weights, f"{name}.self_attn", H)                  # [B, S, D]
        h = common.layer_norm(x, weights, f"{name}.final_layer_norm", LN_EPS)       # [B, S, D]
        return x + mlp(h, weights, name, act)                                       # [B, S, D]


def encoder(input_features, weights, config: Config):
    """The audio encoder.  log-mel input_features float32 [B, Mel, 2S] -> audio features
    [B, S, D]."""
    x = conv_stem(input_features, weights, config)                                  # [B, S, D]
    for i in range(config.encoder_layers):
        x = encoder_block(x, weights, f"model.encoder.layers.{i}", config)          # [B, S, D]
    return common.layer_norm(x, weights, "model.encoder.layer_norm", LN_EPS)        # [B, S, D]


def cross_attention_kv(audio_features, weights, config: Config) -> list[tuple]:
    """Every decoder layer's cross-attention keys and values, computed once per audio window and
    reused at every decoding step.  audio_features [B, S, D] -> L x (k, v), each [B, H, S, Dh]."""
    out = []
    for i in range(config.decoder_layers):
        name = f"model.decoder.layers.{i}.encoder_attn"
        with kernels.scope(name):
            k, v = attention_kv(audio_features, weights, name,
                                config.decoder_attention_heads)                     # [B, H, S, Dh]
        out.append((k, v))
    return out


# =============================================================================================
# the decoder
# =============================================================================================
def decoder_embed(input_ids, weights, offset: int):
    """Token embeddings plus the learned positions offset .. offset + T - 1 (rows of a
    [max_target_positions, D] table).  input_ids int [B, T] -> [B, T, D]."""
    T = input_ids.shape[1]
    with kernels.scope("model.decoder.embed_tokens"):
        x = common.embedding(input_ids, weights, "model.decoder.embed_tokens.weight")  # [B, T, D]
    with kernels.scope("model.decoder.embed_positions"):
        pos = common.weight(weights, "model.decoder.embed_positions.weight")
        return x + pos[offset:offset + T]                                           # [B, T, D]


def cross_attention(x, k, v, weights, name: str, heads: int):
    """Queries from the text, keys and values from the audio (k, v [B, H, S, Dh]).
    x [B, T, D] -> [B, T, D]."""
    with kernels.scope(name):
        return attention(x, k, v, weights, name, heads)                             # [B, T, D]


def cross_attention_map(x, k, weights, name: str, heads: int, select: list[int]):
    """Where the text looks in the audio (word timestamps follow it): softmax(q kᵀ / √Dh) of
    heads ``select`` of cross-attention ``name``.  x [B, T, D], k [B, H, S, Dh] -> [B, n, T, S]."""
    q = split_heads(common.linear(x, weights, f"{name}.q_proj"), heads)[:, select]  # [B, n, T, Dh]
    scores = kernels.matmul(q, k[:, select].transpose(0, 1, 3, 2))                 # [B, n, T, S]
    return ops.softmax(scores / np.float32(math.sqrt(q.shape[-1])), axis=-1)        # [B, n, T, S]


def decoder_block(x, cross_kv, weights, name: str, config: Config, cache: KVCache | None = None,
                  layer: int = 0, maps: list | None = None, map_heads: list[int] = ()):
    """Pre-LN decoder block: causal self-attention (through the KV cache), cross-attention to
    the audio, MLP, each added to the residual.  x [B, T, D] -> [B, T, D]; the cross-attention
    maps of heads ``map_heads`` [B, n, T, S] are appended to ``maps``."""
    H, act = config.decoder_attention_heads, ops.ACTIVATIONS[config.activation_function]
    with kernels.scope(name):
        h = common.layer_norm(x, weights, f"{name}.self_attn_layer_norm", LN_EPS)   # [B, T, D]
        x = x + self_attention(h, weights, f"{name}.self_attn", H, causal=True,
                               cache=cache, layer=layer)                            # [B, T, D]
        h = common.layer_norm(x, weights, f"{name}.encoder_attn_layer_norm", LN_EPS)
        if map_heads:
            maps.append(cross_attention_map(h, cross_kv[0], weights, f"{name}.encoder_attn",
                                            H, list(map_heads)))                    # [B, n, T, S]
        x = x + cross_attention(h, *cross_kv, weights, f"{name}.encoder_attn", H)   # [B, T, D]
        h = common.layer_norm(x, weights, f"{name}.final_layer_norm", LN_EPS)       # [B, T, D]
        return x + mlp(h, weights, name, act)                                       # [B, T, D]


def decoder(input_ids, cross_kv, weights, config: Config, cache: KVCache | None = None,
            last_only: bool = False, attention_heads: list | None = None):
    """The text decoder.  input_ids int [B, T] (the tokens after the Tc already in ``cache``),
    cross_kv from :func:`cross_attention_kv` -> logits float32 [B, T, V], or [B, 1, V] for the
    last position with ``last_only`` (all that greedy decoding needs).  Advances ``cache`` by T.
    ``attention_heads``, (layer, head) pairs: also their cross-attention maps, pairs sorted ->
    (logits, maps [B, n, T, S])."""
    B, T = input_ids.shape
    Tc = 0 if cache is None else cache.length
    if cache is not None:
        cache.check_room(B, T)
    if Tc + T > config.max_target_positions:
        raise ValueError(f"decoder input of {Tc + T} tokens exceeds max_target_positions "
                         f"({config.max_target_positions})")
    x = decoder_embed(input_ids, weights, Tc)                                       # [B, T, D]
    pairs, maps = sorted(tuple(p) for p in attention_heads or ()), []     # (layer, head)
    L, H = config.decoder_layers, config.decoder_attention_heads
    ok = bool(pairs) and all(0 <= i < L and 0 <= h < H for i, h in pairs)
    if attention_heads is not None and not ok:
        raise ValueError(f"attention_heads: (layer < {L}, head < {H}) pairs, not {attention_heads}")
    for i in range(L):
        x = decoder_block(x, cross_kv[i], weights, f"model.decoder.layers.{i}", config,
                          cache, i, maps, [h for layer, h in pairs if layer == i])  # [B, T, D]
    if cache is not None:
        cache.advance(T)
    if last_only:
        x = x[:, -1:]                                                               # [B, 1, D]
    x = common.layer_norm(x, weights, "model.decoder.layer_norm", LN_EPS)           # [B, T|1, D]
    out = "model.decoder.embed_tokens" if config.tie_word_embeddings else "proj_out"
    with kernels.scope("proj_out"):
        logits = common.linear(x, weights, out)                                     # [B, T|1, V]
    return logits if attention_heads is None else (logits, np.concatenate(maps, axis=1))
