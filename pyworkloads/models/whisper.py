"""Whisper (Radford et al. 2022): log-mel audio -> transformer encoder -> text decoder with cross-attention.

The model in one picture (the lecture's, with Hugging Face module names)::

    log-mel [B, M, 3000]
      -> model.encoder.conv1 (k3, pad 1) + GELU -> model.encoder.conv2 (k3, stride 2, pad 1) + GELU
      -> + sinusoidal positions (model.encoder.embed_positions, 1500 x D)
      -> model.encoder.layers.{i}: x += self_attn(LN(x)); x += fc2(GELU(fc1(LN(x))))     (pre-LN)
      -> model.encoder.layer_norm                                     = audio features [B, 1500, D]
    tokens [B, T] -> model.decoder.embed_tokens + learned positions (model.decoder.embed_positions)
      -> model.decoder.layers.{i}: x += self_attn(LN(x), causal, KV cache)
                                   x += encoder_attn(LN(x), K/V from the audio features)
                                   x += fc2(GELU(fc1(LN(x))))
      -> model.decoder.layer_norm -> proj_out (tied to embed_tokens)  = logits [B, T, V]

Decoding follows the checkpoint's ``generation_config.json`` exactly as transformers'
``WhisperForConditionalGeneration.generate`` does (same init tokens, logit rules, stopping and
long-form segmentation), so the same arguments give the same tokens.

Glossary: B batch, M mel channels, F mel frames, S audio positions (F / 2), T tokens, D d_model,
H heads, Dh = D / H, V vocabulary, L layers.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from .. import io, kernels, ops
from . import check_fits
from ..audio import (HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE, load_audio,  # noqa: F401 (re-exported)
                     log_mel_spectrogram)

__all__ = ["Config", "GenerationConfig", "PRESETS", "LANGUAGES", "count_params", "from_pretrained", "from_preset",
           "Whisper", "Segment", "Transcription", "log_mel_spectrogram", "load_audio", "sinusoids",
           "make_generation_config", "random_weights", "encoder_forward", "decoder_forward", "cross_attention_kv",
           "demo", "add_run_arguments", "run_cli"]

LN_EPS = 1e-5                    # nn.LayerNorm's default; Whisper's config has no field for it
N_TIMESTAMPS = 1501              # <|0.00|> ... <|30.00|> in steps of 0.02 s
TIME_PRECISION = 0.02            # seconds per timestamp token
INPUT_STRIDE = 2                 # mel frames per encoder position (conv2's stride)

# Whisper's languages in token order (<|en|> is the first language token, <|yue|> the 100th,
# added by large-v3).  Names as in OpenAI's tokenizer.py; a few aliases follow.
LANGUAGES = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian", "ko": "korean",
    "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish", "pl": "polish", "ca": "catalan",
    "nl": "dutch", "ar": "arabic", "sv": "swedish", "it": "italian", "id": "indonesian", "hi": "hindi",
    "fi": "finnish", "vi": "vietnamese", "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay",
    "cs": "czech", "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian", "la": "latin",
    "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak", "te": "telugu", "fa": "persian",
    "lv": "latvian", "bn": "bengali", "sr": "serbian", "az": "azerbaijani", "sl": "slovenian", "kn": "kannada",
    "et": "estonian", "mk": "macedonian", "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian",
    "ne": "nepali", "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian", "sw": "swahili",
    "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala", "km": "khmer", "sn": "shona",
    "yo": "yoruba", "so": "somali", "af": "afrikaans", "oc": "occitan", "ka": "georgian", "be": "belarusian",
    "tg": "tajik", "sd": "sindhi", "gu": "gujarati", "am": "amharic", "yi": "yiddish", "lo": "lao",
    "uz": "uzbek", "fo": "faroese", "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk",
    "mt": "maltese", "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan", "tl": "tagalog",
    "mg": "malagasy", "as": "assamese", "tt": "tatar", "haw": "hawaiian", "ln": "lingala", "ha": "hausa",
    "ba": "bashkir", "jw": "javanese", "su": "sundanese", "yue": "cantonese",
}
TO_LANGUAGE_CODE = {
    **{name: code for code, name in LANGUAGES.items()},
    "burmese": "my", "valencian": "ca", "flemish": "nl", "haitian": "ht", "letzeburgesch": "lb", "pushto": "ps",
    "panjabi": "pa", "moldavian": "ro", "moldovan": "ro", "sinhalese": "si", "castilian": "es", "mandarin": "zh",
}
TASKS = ("transcribe", "translate")


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
        ints = ("vocab_size", "num_mel_bins", "d_model", "encoder_layers", "encoder_attention_heads",
                "encoder_ffn_dim", "decoder_layers", "decoder_attention_heads", "decoder_ffn_dim",
                "max_source_positions", "max_target_positions")
        for name in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Config.{name} must be a positive integer, got {v!r}")
        for heads in ("encoder_attention_heads", "decoder_attention_heads"):
            if self.d_model % getattr(self, heads):
                raise ValueError(f"Config: d_model ({self.d_model}) must be divisible by {heads} ({getattr(self, heads)})")
        if self.d_model % 2:
            raise ValueError(f"Config: d_model must be even for the sinusoidal positions, got {self.d_model}")
        if self.activation_function not in ops.ACTIVATIONS:
            raise ValueError(f"Config.activation_function {self.activation_function!r} is not one of {sorted(ops.ACTIVATIONS)}")

    @property
    def n_audio_frames(self) -> int:
        """Mel frames the encoder takes: max_source_positions x conv2's stride (3000 = 30 s)."""
        return self.max_source_positions * INPUT_STRIDE

    @classmethod
    def from_hf(cls, cfg: dict) -> "Config":
        """Parse a Hugging Face WhisperConfig dict (config.json); unknown keys are ignored."""
        if not isinstance(cfg, dict):
            raise TypeError(f"Config.from_hf expects a dict (config.json), got {type(cfg).__name__}")
        if cfg.get("model_type", "whisper") != "whisper":
            raise ValueError(f"config.json has model_type {cfg.get('model_type')!r}, expected 'whisper'")
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in cfg.items() if k in names and v is not None}
        if isinstance(kwargs.get("eos_token_id"), list):
            kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
        return cls(**kwargs)

    def to_hf(self) -> dict:
        """A config.json dict that ``transformers.WhisperConfig(**d)`` accepts."""
        d = asdict(self)
        d.update(model_type="whisper", architectures=["WhisperForConditionalGeneration"], scale_embedding=False)
        return d


def _preset(d, layers, heads, vocab=51865, mels=80, decoder_layers=None):
    return Config(vocab_size=vocab, num_mel_bins=mels, d_model=d, encoder_layers=layers, encoder_attention_heads=heads,
                  encoder_ffn_dim=4 * d, decoder_layers=decoder_layers or layers, decoder_attention_heads=heads,
                  decoder_ffn_dim=4 * d,
                  # the token ids depend on the vocabulary layout (English-only vocabularies are one shorter)
                  pad_token_id=50256 if vocab == 51864 else 50257, bos_token_id=50256 if vocab == 51864 else 50257,
                  eos_token_id=50256 if vocab == 51864 else 50257,
                  decoder_start_token_id=50257 if vocab == 51864 else 50258)


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
    "whisper-tiny-random": Config(vocab_size=256 + 2 + 100 + 6 + N_TIMESTAMPS, num_mel_bins=80, d_model=64,
                                  encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128, decoder_layers=2,
                                  decoder_attention_heads=4, decoder_ffn_dim=128, max_target_positions=64,
                                  pad_token_id=256, bos_token_id=256, eos_token_id=256, decoder_start_token_id=257),
}


def count_params(config: Config) -> int:
    """Exact parameter count, as ``sum(p.numel() for p in WhisperForConditionalGeneration.parameters())``.

    Counted explicitly: the encoder's sinusoidal position table (``model.encoder.embed_positions``,
    S x D) -- fixed, but stored in checkpoints and registered as a (frozen) parameter by HF; the
    decoder's learned positions (T x D).  Not counted twice: ``proj_out``, tied to ``embed_tokens``."""
    c = config
    D = c.d_model
    attn = 4 * D * D + 3 * D                      # q, k, v, out weights; biases on q, v, out (k has none)
    enc_layer = attn + 2 * 2 * D + (D * c.encoder_ffn_dim + c.encoder_ffn_dim) + (c.encoder_ffn_dim * D + D)
    dec_layer = 2 * attn + 3 * 2 * D + (D * c.decoder_ffn_dim + c.decoder_ffn_dim) + (c.decoder_ffn_dim * D + D)
    encoder = (c.num_mel_bins * D * 3 + D) + (D * D * 3 + D) + c.max_source_positions * D \
        + c.encoder_layers * enc_layer + 2 * D
    decoder = c.vocab_size * D + c.max_target_positions * D + c.decoder_layers * dec_layer + 2 * D
    proj_out = 0 if c.tie_word_embeddings else c.vocab_size * D
    return encoder + decoder + proj_out


# =============================================================================================
# generation settings (generation_config.json)
# =============================================================================================
# generation-config settings that change what transformers' Whisper generate decodes and that this
# implementation does not have (the OpenAI checkpoints leave them unset; temperature fallback is an
# argument of generate, not read from the config, and is not offered here either)
_UNSUPPORTED_DECODING = {"condition_on_prev_tokens": bool, "no_speech_threshold": lambda v: True,
                         "num_beams": lambda v: v > 1}


@dataclass
class GenerationConfig:
    """The decoding settings of a Whisper checkpoint (``generation_config.json``), field names as there."""
    decoder_start_token_id: int
    eos_token_id: int
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    no_timestamps_token_id: int | None = None
    lang_to_id: dict | None = None                  # {"<|en|>": 50259, ...}; absent on English-only models
    task_to_id: dict | None = None                  # {"transcribe": 50359, "translate": 50358}
    is_multilingual: bool | None = None
    suppress_tokens: list | None = None             # never generated
    begin_suppress_tokens: list | None = None       # not generated as the first token
    forced_decoder_ids: list | None = None          # legacy [[position, token], ...] after <|startoftranscript|>
    max_length: int | None = 20                     # transformers' GenerationConfig default
    max_new_tokens: int | None = None
    max_initial_timestamp_index: int | None = None
    prev_sot_token_id: int | None = None
    return_timestamps: bool | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "GenerationConfig":
        if not isinstance(d, dict):
            raise TypeError(f"generation config must be a dict, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for key in ("decoder_start_token_id", "eos_token_id"):
            if kw.get(key) is None:
                raise ValueError(f"generation config needs {key!r}")
        if isinstance(kw["eos_token_id"], list):
            kw["eos_token_id"] = kw["eos_token_id"][0]
        unsupported = {k: d[k] for k, is_set in _UNSUPPORTED_DECODING.items() if d.get(k) is not None and is_set(d[k])}
        if unsupported:
            warnings.warn(f"generation config sets {unsupported}: pyworkloads decodes greedily without beams, "
                          "no-speech skipping or conditioning on previous windows, so its tokens may differ "
                          "from transformers' for this configuration", stacklevel=2)
        return cls(**kw)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @property
    def timestamp_begin(self) -> int | None:
        return None if self.no_timestamps_token_id is None else self.no_timestamps_token_id + 1


def special_token_ids(n_text: int, n_languages: int = 100) -> dict:
    """Whisper's vocabulary layout: ``n_text`` byte-level BPE tokens, then <|endoftext|>,
    <|startoftranscript|>, the language tokens, <|translate|>, <|transcribe|>, <|startoflm|>,
    <|startofprev|>, <|nospeech|>, <|notimestamps|> and the 1501 timestamps."""
    eot = n_text
    sot = eot + 1
    translate = sot + 1 + n_languages
    return dict(eot=eot, sot=sot, languages=list(range(sot + 1, translate)), translate=translate,
                transcribe=translate + 1, startoflm=translate + 2, startofprev=translate + 3, nospeech=translate + 4,
                notimestamps=translate + 5, timestamp_begin=translate + 6,
                vocab_size=translate + 6 + N_TIMESTAMPS)


def make_generation_config(n_text: int, n_languages: int = 100, multilingual: bool = True,
                           suppress_text: tuple = (), begin_suppress_text: tuple = (), max_length: int = 448,
                           max_initial_timestamp_index: int | None = 50) -> dict:
    """A ``generation_config.json`` dict in the layout of OpenAI's checkpoints on the Hub
    (the format transformers' ``WhisperForConditionalGeneration.generate`` reads).

    suppress_text / begin_suppress_text: text-token ids to add to the suppressed lists (the real
    checkpoints suppress a set of symbols, and a leading space at the start)."""
    ids = special_token_ids(n_text, n_languages)
    langs = list(LANGUAGES)[:n_languages]
    cfg = {
        "decoder_start_token_id": ids["sot"], "eos_token_id": ids["eot"], "pad_token_id": ids["eot"],
        "bos_token_id": ids["eot"], "no_timestamps_token_id": ids["notimestamps"],
        "prev_sot_token_id": ids["startofprev"], "is_multilingual": multilingual, "max_length": max_length,
        "begin_suppress_tokens": [*begin_suppress_text, ids["eot"]],
        # the last two are <|startofprev|> and <|nospeech|>, as on the Hub (transformers reads
        # <|startofprev|> from suppress_tokens[-2] when prev_sot_token_id is missing)
        "suppress_tokens": sorted(set(suppress_text)) + [ids["sot"], ids["translate"], ids["transcribe"],
                                                         ids["startoflm"], ids["startofprev"], ids["nospeech"]],
        "return_timestamps": False,
    }
    if max_initial_timestamp_index is not None:
        cfg["max_initial_timestamp_index"] = max_initial_timestamp_index
    if multilingual:
        cfg["lang_to_id"] = {f"<|{c}|>": i for c, i in zip(langs, ids["languages"])}
        cfg["task_to_id"] = {"translate": ids["translate"], "transcribe": ids["transcribe"]}
        cfg["forced_decoder_ids"] = [[1, None], [2, ids["transcribe"]]]
    else:
        cfg["forced_decoder_ids"] = [[1, ids["notimestamps"]]]
    return cfg


def default_generation_config(config: Config) -> GenerationConfig:
    """Generation settings for a model without generation_config.json (presets): the standard
    layout inferred from the vocabulary size (51864 English-only, 51865 with 99 languages, 51866
    with 100; anything else: 100 languages after a smaller text vocabulary)."""
    n_lang = 99 if config.vocab_size in (51864, 51865) else 100
    n_text = config.vocab_size - 2 - n_lang - 6 - N_TIMESTAMPS
    if n_text < 1:
        raise ValueError(f"vocab_size {config.vocab_size} is too small for Whisper's special tokens "
                         f"(needs more than {2 + n_lang + 6 + N_TIMESTAMPS}); supply a generation_config.json")
    space = (220,) if n_text >= 50256 else ()
    return GenerationConfig.from_dict(make_generation_config(
        n_text, n_lang, multilingual=config.vocab_size != 51864, begin_suppress_text=space,
        max_length=config.max_target_positions))


# =============================================================================================
# weights
# =============================================================================================
def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's fixed encoder positions: [sin | cos] of pos · timescale^(-i / (C/2 - 1)),
    i < C/2 -> float32 [length, channels]."""
    inc = math.log(max_timescale) / (channels // 2 - 1)
    inv = np.exp(-inc * np.arange(channels // 2, dtype=np.float64))                 # [C/2]
    t = np.arange(length, dtype=np.float64)[:, None] * inv[None, :]                  # [length, C/2]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


def weight_shapes(config: Config) -> dict[str, tuple]:
    """Every tensor a WhisperForConditionalGeneration checkpoint holds (proj_out tied, so absent)."""
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

    def attn(p):
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            s[f"{p}.{proj}.weight"] = (D, D)
            if proj != "k_proj":
                s[f"{p}.{proj}.bias"] = (D,)

    def block(p, ffn, norms):
        for n in norms:
            s[f"{p}.{n}.weight"] = (D,)
            s[f"{p}.{n}.bias"] = (D,)
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
        block(p, c.decoder_ffn_dim, ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"))
    if not c.tie_word_embeddings:
        s["proj_out.weight"] = (c.vocab_size, D)
    return s


def random_weights(config: Config, seed: int = 0, std: float = 0.02) -> dict[str, np.ndarray]:
    """Random float32 weights with the checkpoint's names and shapes: N(0, std) matrices, layer
    norms at (1, 0), small biases, and the exact sinusoidal encoder positions."""
    rng = np.random.default_rng(seed)
    w = {}
    for name, shape in weight_shapes(config).items():
        if name == "model.encoder.embed_positions.weight":
            w[name] = sinusoids(*shape)
        elif "layer_norm" in name:
            w[name] = (np.ones(shape) if name.endswith("weight") else np.zeros(shape)).astype(np.float32)
        elif name.endswith("bias"):
            w[name] = (0.1 * std * rng.standard_normal(shape)).astype(np.float32)
        else:
            w[name] = (std * rng.standard_normal(shape)).astype(np.float32)
    return w


def _check_weights(weights, config: Config) -> None:
    """Every tensor present with the shape the config implies; errors name the tensor."""
    for name, shape in weight_shapes(config).items():
        if name not in weights:
            raise KeyError(f"Whisper weights: missing tensor {name!r}")
        got = weights.shape_of(name) if hasattr(weights, "shape_of") else np.shape(weights[name])
        if tuple(got) != tuple(shape):
            raise ValueError(f"Whisper weights: {name!r} has shape {tuple(got)}, config implies {shape}")


def _f32(w, name) -> np.ndarray:
    return np.asarray(w[name], dtype=np.float32)


# =============================================================================================
# the forward pass: pure functions over (weights, config, arrays)
# =============================================================================================
def _split_heads(x, H):
    B, T, D = x.shape
    return x.reshape(B, T, H, D // H).transpose(0, 2, 1, 3)                       # [B, H, T, Dh]


def _merge_heads(x):
    B, H, T, Dh = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * Dh)                           # [B, T, D]


def _layer_norm(w, name, x):
    with kernels.scope(name):
        return kernels.layer_norm(x, _f32(w, f"{name}.weight"), _f32(w, f"{name}.bias"), LN_EPS)


def _project_kv(w, p, x, H):
    """Keys and values of attention module p from x [B, T, D] -> two [B, H, T, Dh] (k_proj has no bias)."""
    k = ops.linear(x, _f32(w, f"{p}.k_proj.weight"))                                # [B, T, D]
    v = ops.linear(x, _f32(w, f"{p}.v_proj.weight"), _f32(w, f"{p}.v_proj.bias"))  # [B, T, D]
    return _split_heads(k, H), _split_heads(v, H)


def _attention(w, p, x, H, k, v, causal=False):
    """Query projection, attention over k/v [B, H, Tk, Dh] and output projection.  x [B, T, D] -> [B, T, D]."""
    q = _split_heads(ops.linear(x, _f32(w, f"{p}.q_proj.weight"), _f32(w, f"{p}.q_proj.bias")), H)   # [B, H, T, Dh]
    o = kernels.attention(q, k, v, causal=causal)                                    # [B, H, T, Dh], scale 1/√Dh
    return ops.linear(_merge_heads(o), _f32(w, f"{p}.out_proj.weight"), _f32(w, f"{p}.out_proj.bias"))


def _mlp(w, p, x, act):
    with kernels.scope(f"{p}.fc1"):
        h = act(ops.linear(x, _f32(w, f"{p}.fc1.weight"), _f32(w, f"{p}.fc1.bias")))   # [B, T, F]
    with kernels.scope(f"{p}.fc2"):
        return ops.linear(h, _f32(w, f"{p}.fc2.weight"), _f32(w, f"{p}.fc2.bias"))     # [B, T, D]


def encoder_forward(w, config: Config, input_features: np.ndarray) -> np.ndarray:
    """Audio encoder.  input_features float32 [B, M, F = 2·S] -> audio features [B, S, D]."""
    c, act = config, ops.ACTIVATIONS[config.activation_function]
    x = input_features
    with kernels.scope("model.encoder.conv1"):
        x = act(ops.conv1d(x, _f32(w, "model.encoder.conv1.weight"), _f32(w, "model.encoder.conv1.bias"),
                           padding=1))                                               # [B, D, F]
    with kernels.scope("model.encoder.conv2"):
        x = act(ops.conv1d(x, _f32(w, "model.encoder.conv2.weight"), _f32(w, "model.encoder.conv2.bias"),
                           stride=2, padding=1))                                     # [B, D, S]
    x = np.ascontiguousarray(x.transpose(0, 2, 1)) + _f32(w, "model.encoder.embed_positions.weight")   # [B, S, D]
    for i in range(c.encoder_layers):
        p = f"model.encoder.layers.{i}"
        h = _layer_norm(w, f"{p}.self_attn_layer_norm", x)
        with kernels.scope(f"{p}.self_attn"):
            k, v = _project_kv(w, f"{p}.self_attn", h, c.encoder_attention_heads)   # [B, H, S, Dh]
            x = x + _attention(w, f"{p}.self_attn", h, c.encoder_attention_heads, k, v)
        x = x + _mlp(w, p, _layer_norm(w, f"{p}.final_layer_norm", x), act)
    return _layer_norm(w, "model.encoder.layer_norm", x)                            # [B, S, D]


def cross_attention_kv(w, config: Config, audio_features: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every decoder layer's cross-attention keys and values, computed once per audio window and
    reused at every decoding step.  audio_features [B, S, D] -> L x ([B, H, S, Dh], [B, H, S, Dh])."""
    out = []
    for i in range(config.decoder_layers):
        p = f"model.decoder.layers.{i}.encoder_attn"
        with kernels.scope(p):
            out.append(_project_kv(w, p, audio_features, config.decoder_attention_heads))
    return out


class KVCache:
    """Self-attention keys/values of the tokens decoded so far: per layer [B, H, capacity, Dh],
    filled up to ``length`` (preallocated, so a decoding step writes one column, not a copy)."""

    def __init__(self, config: Config, batch: int, capacity: int | None = None):
        cap = capacity or config.max_target_positions
        H, Dh = config.decoder_attention_heads, config.d_model // config.decoder_attention_heads
        self.k = [np.zeros((batch, H, cap, Dh), np.float32) for _ in range(config.decoder_layers)]
        self.v = [np.zeros((batch, H, cap, Dh), np.float32) for _ in range(config.decoder_layers)]
        self.length = 0

    def append(self, layer: int, k: np.ndarray, v: np.ndarray):
        """Store k/v [B, H, t, Dh] after the cached tokens; -> the whole cache so far [B, H, length + t, Dh]."""
        t0, t1 = self.length, self.length + k.shape[2]
        if t1 > self.k[layer].shape[2]:
            raise ValueError(f"KV cache holds {self.k[layer].shape[2]} tokens; cannot append up to {t1}")
        self.k[layer][:, :, t0:t1] = k
        self.v[layer][:, :, t0:t1] = v
        return self.k[layer][:, :, :t1], self.v[layer][:, :, :t1]


def decoder_forward(w, config: Config, input_ids: np.ndarray, cross_kv, cache: KVCache | None = None) -> np.ndarray:
    """Text decoder.  input_ids int [B, T] (the tokens after those already in ``cache``),
    cross_kv from :func:`cross_attention_kv` -> logits float32 [B, T, V].  Advances ``cache``."""
    c, act = config, ops.ACTIVATIONS[config.activation_function]
    offset = cache.length if cache is not None else 0
    T = input_ids.shape[1]
    if offset + T > c.max_target_positions:
        raise ValueError(f"decoder input of {offset + T} tokens exceeds max_target_positions ({c.max_target_positions})")
    H = c.decoder_attention_heads
    x = ops.embedding(input_ids, _f32(w, "model.decoder.embed_tokens.weight"))      # [B, T, D]
    x = x + _f32(w, "model.decoder.embed_positions.weight")[offset:offset + T]     # [B, T, D]
    for i in range(c.decoder_layers):
        p = f"model.decoder.layers.{i}"
        h = _layer_norm(w, f"{p}.self_attn_layer_norm", x)
        with kernels.scope(f"{p}.self_attn"):
            k, v = _project_kv(w, f"{p}.self_attn", h, H)                          # [B, H, T, Dh]
            if cache is not None:
                k, v = cache.append(i, k, v)                                        # [B, H, offset + T, Dh]
            x = x + _attention(w, f"{p}.self_attn", h, H, k, v, causal=True)
        h = _layer_norm(w, f"{p}.encoder_attn_layer_norm", x)
        with kernels.scope(f"{p}.encoder_attn"):
            x = x + _attention(w, f"{p}.encoder_attn", h, H, *cross_kv[i])
        x = x + _mlp(w, p, _layer_norm(w, f"{p}.final_layer_norm", x), act)
    if cache is not None:
        cache.length += T
    x = _layer_norm(w, "model.decoder.layer_norm", x)
    with kernels.scope("proj_out"):
        out_w = "proj_out.weight" if "proj_out.weight" in w and not c.tie_word_embeddings else "model.decoder.embed_tokens.weight"
        return ops.linear(x, _f32(w, out_w))                                         # [B, T, V]


# =============================================================================================
# results of transcription
# =============================================================================================
@dataclass
class Segment:
    start: float                 # seconds
    end: float
    text: str
    tokens: list = field(default_factory=list)


@dataclass
class Transcription:
    text: str
    segments: list
    language: str | None
    tokens: np.ndarray | None = None

    def __str__(self):
        return self.text


# =============================================================================================
# the model
# =============================================================================================
class Whisper:
    """A Whisper checkpoint: weights (HF names), Config, GenerationConfig and optional tokenizer."""

    def __init__(self, config: Config, weights, generation_config: GenerationConfig | None = None, tokenizer=None):
        if not isinstance(config, Config):
            raise TypeError(f"config must be a whisper.Config, got {type(config).__name__}")
        _check_weights(weights, config)
        self.config = config
        self.weights = weights
        self.generation_config = generation_config or default_generation_config(config)
        self.tokenizer = tokenizer

    # ------------------------------------------------------------------ inputs
    def _features(self, input_features, exact_frames: bool = True) -> np.ndarray:
        x = np.asarray(input_features)
        if x.dtype.kind != "f":
            raise TypeError(f"input_features must be a float array (log-mel), got dtype {x.dtype}")
        if x.ndim == 2:
            x = x[None]                                                               # [M, F] -> [1, M, F]
        if x.ndim != 3 or x.shape[1] != self.config.num_mel_bins:
            raise ValueError(f"input_features must be [B, {self.config.num_mel_bins}, frames] (log-mel from "
                             f"log_mel_spectrogram(audio, n_mels={self.config.num_mel_bins})), got shape {x.shape}")
        if x.shape[0] == 0 or x.shape[2] == 0:
            raise ValueError(f"input_features is empty: shape {x.shape}")
        if exact_frames and x.shape[2] != self.config.n_audio_frames:
            raise ValueError(f"input_features must have {self.config.n_audio_frames} frames (30 s), got {x.shape[2]}; "
                             "pad with log_mel_spectrogram's default n_samples, or use generate()/transcribe() for long audio")
        if not np.all(np.isfinite(x)):
            raise ValueError("input_features contains NaN or Inf")
        return np.ascontiguousarray(x, dtype=np.float32)

    def _token_ids(self, ids, argname="decoder_input_ids") -> np.ndarray:
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"{argname} must be integers, got dtype {ids.dtype}")
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"{argname} must be [B, T] with T >= 1, got shape {ids.shape}")
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise ValueError(f"{argname} must lie in [0, {self.config.vocab_size}), got range [{ids.min()}, {ids.max()}]")
        if ids.shape[1] > self.config.max_target_positions:
            raise ValueError(f"{argname} has {ids.shape[1]} tokens; the decoder context is {self.config.max_target_positions}")
        return ids.astype(np.int64)

    # ------------------------------------------------------------------ forward
    def encode(self, input_features) -> np.ndarray:
        """log-mel [B, M, 3000] -> audio features [B, 1500, D]."""
        return encoder_forward(self.weights, self.config, self._features(input_features))

    def __call__(self, input_features, decoder_input_ids) -> np.ndarray:
        """Teacher-forced logits.  input_features [B, M, 3000], decoder_input_ids int [B, T] -> [B, T, V]."""
        feats = self._features(input_features)
        ids = self._token_ids(decoder_input_ids)
        if ids.shape[0] != feats.shape[0] and ids.shape[0] != 1:
            raise ValueError(f"batch sizes differ: input_features {feats.shape[0]}, decoder_input_ids {ids.shape[0]}")
        ids = np.broadcast_to(ids, (feats.shape[0], ids.shape[1]))
        audio = encoder_forward(self.weights, self.config, feats)
        return decoder_forward(self.weights, self.config, ids, cross_attention_kv(self.weights, self.config, audio))

    # ------------------------------------------------------------------ language and prompt
    def detect_language(self, input_features) -> np.ndarray:
        """Most likely language token per example from the first 30 s: the decoder's logits after
        <|startoftranscript|>, restricted to the language tokens.  -> int [B]."""
        gc = self.generation_config
        if not gc.lang_to_id:
            raise ValueError("this checkpoint has no language tokens (lang_to_id); it is English-only")
        feats = self._features(input_features, exact_frames=False)
        feats = _pad_frames(feats[:, :, :self.config.n_audio_frames], self.config.n_audio_frames)
        sot = np.full((feats.shape[0], 1), gc.decoder_start_token_id, np.int64)
        logits = self(feats, sot)[:, -1]                                             # [B, V]
        lang_ids = np.array(sorted(gc.lang_to_id.values()))
        masked = np.full_like(logits, -np.inf)
        masked[:, lang_ids] = logits[:, lang_ids]
        return masked.argmax(-1)

    def _language_id(self, language: str) -> int:
        """'en', 'english' or '<|en|>' -> the language token's id (as transformers accepts them)."""
        gc = self.generation_config
        if not gc.lang_to_id:
            raise ValueError("this checkpoint has no language tokens (generation_config.lang_to_id): it is English-only")
        if not isinstance(language, str):
            raise TypeError(f"language must be a string such as 'en' or 'english', got {type(language).__name__}")
        lang = language.lower()
        if lang in gc.lang_to_id:
            token = lang
        elif lang in TO_LANGUAGE_CODE:
            token = f"<|{TO_LANGUAGE_CODE[lang]}|>"
        elif lang in LANGUAGES:
            token = f"<|{lang}|>"
        else:
            raise ValueError(f"language {language!r} is unknown; use a code such as 'en' or a name such as 'english'")
        if token not in gc.lang_to_id:
            raise ValueError(f"language {token} is not among this checkpoint's languages (generation_config.lang_to_id)")
        return gc.lang_to_id[token]

    def init_tokens(self, input_features, language=None, task=None, return_timestamps=False) -> np.ndarray:
        """The decoder prompt per example, as transformers builds it: <|startoftranscript|>, the
        language (given, from legacy forced_decoder_ids, or detected), the task, and
        <|notimestamps|> unless timestamps are requested.  -> int [B, n_init]."""
        gc = self.generation_config
        if gc.is_multilingual is False and (task is not None or language is not None):
            raise ValueError("this is an English-only checkpoint: language and task cannot be set")
        if language is not None and not gc.lang_to_id:
            raise ValueError("language= needs generation_config.lang_to_id, which this checkpoint lacks")
        if task is not None:
            if not gc.task_to_id:
                raise ValueError("task= needs generation_config.task_to_id, which this checkpoint lacks")
            if task not in TASKS:
                raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        B = input_features.shape[0]
        if isinstance(language, (list, tuple)):                          # one language per example
            if len(language) != B or not all(isinstance(x, str) for x in language):
                raise ValueError(f"a list of languages needs one string per example ({B}), got {language!r}")
        elif language is not None and not isinstance(language, str):
            raise TypeError(f"language must be a string such as 'en' or 'english', got {type(language).__name__}")
        init = [gc.decoder_start_token_id]
        if task is None and language is None and gc.forced_decoder_ids:
            forced = [list(f) for f in gc.forced_decoder_ids]
            if forced[0][0] == 1:                                       # legacy: tokens at positions 1, 2, ...
                pos = 1
                while forced and forced[0][0] == pos:
                    init.append(forced.pop(0)[1])
                    pos += 1
                if forced:
                    raise ValueError(f"generation_config.forced_decoder_ids {gc.forced_decoder_ids} do not follow "
                                     "Whisper's prompt pattern (consecutive positions from 1)")
        lang_undefined = len(init) <= 1 or init[1] is None
        rows = [list(init) for _ in range(B)]
        lang_ids = None
        if language is not None:
            lang_ids = [self._language_id(x) for x in (language if isinstance(language, (list, tuple)) else [language] * B)]
        elif gc.lang_to_id is not None and lang_undefined:
            lang_ids = self.detect_language(input_features).tolist()
        for r in range(B):
            if lang_ids is not None:
                if len(rows[r]) > 1:
                    rows[r][1] = lang_ids[r]
                else:
                    rows[r].append(lang_ids[r])
            if task is not None:
                rows[r].append(gc.task_to_id[task])
            elif language is not None and gc.task_to_id:
                if not any(t in rows[r] for t in gc.task_to_id.values()):
                    rows[r].append(gc.task_to_id["transcribe"])
            if not return_timestamps and gc.no_timestamps_token_id is not None and rows[r][-1] != gc.no_timestamps_token_id:
                rows[r].append(gc.no_timestamps_token_id)
            elif return_timestamps and rows[r][-1] == gc.no_timestamps_token_id:
                rows[r] = rows[r][:-1]
            rows[r] = [t for t in rows[r] if t is not None]
        return np.array(rows, dtype=np.int64)

    # ------------------------------------------------------------------ decoding
    def _process_logits(self, scores, tokens, begin_index, timestamps: bool):
        """transformers' Whisper logit rules, in its order: begin-suppression, suppression,
        timestamp rules.  scores float [V] (modified in place), tokens: the row so far."""
        gc = self.generation_config
        first = len(tokens) == begin_index
        if first and gc.begin_suppress_tokens:
            scores[np.asarray(gc.begin_suppress_tokens)] = -np.inf
        if gc.suppress_tokens:
            scores[np.asarray(gc.suppress_tokens)] = -np.inf
        if timestamps:
            _timestamp_rules(scores, tokens[begin_index:], first, gc)
        return scores

    def _greedy(self, audio_features, prompt, max_length, timestamps: bool) -> list[int]:
        """Greedy decoding of one example: prompt int [n] -> the generated tokens (with the final
        <|endoftext|> if one was produced), stopping at end-of-text or ``max_length`` total tokens."""
        w, c, gc = self.weights, self.config, self.generation_config
        cross = cross_attention_kv(w, c, audio_features)
        cache = KVCache(c, 1, capacity=max(max_length, len(prompt)))
        tokens = list(int(t) for t in prompt)
        step_in = np.asarray(tokens, np.int64)[None]                                 # [1, n]
        out: list[int] = []
        while len(tokens) < max_length:
            logits = decoder_forward(w, c, step_in, cross, cache)[0, -1].astype(np.float32)   # [V]
            scores = self._process_logits(logits.copy(), tokens, len(prompt), timestamps)
            nxt = int(np.argmax(scores))
            tokens.append(nxt)
            out.append(nxt)
            if nxt == gc.eos_token_id:
                break
            step_in = np.array([[nxt]], np.int64)
        return out

    def generate(self, input_features, language: str | list | None = None, task: str | None = None,
                 return_timestamps: bool | None = None, max_new_tokens: int | None = None,
                 max_length: int | None = None, return_segments: bool = False, progress: bool = False):
        """Greedy decoding with transformers' semantics -> int64 [B, L] (right-padded with pad_token_id).

        Like ``WhisperForConditionalGeneration.generate`` the result holds the generated tokens
        only (no prompt, no final <|endoftext|>), with timestamp tokens when
        ``return_timestamps=True``.  More than 3000 frames (30 s) selects long-form decoding:
        timestamps on, windows of 30 s, each next window starting at the last complete segment.
        ``return_segments=True`` also returns, per example, the list of segments (dicts with
        start, end, tokens).  language=None on a multilingual checkpoint detects it; a list gives
        one language per example.  ``max_length`` (total tokens, prompt included; default from the
        generation config) or ``max_new_tokens`` bound each window's decoding."""
        feats = self._features(input_features, exact_frames=False)
        gc = self.generation_config
        B, _, total = feats.shape
        n_win = self.config.n_audio_frames
        shortform = total <= n_win
        if return_timestamps is None:
            return_timestamps = bool(gc.return_timestamps)
        if not shortform:
            if return_timestamps is False:
                raise ValueError(f"input_features has {total} frames (> {n_win}, more than 30 s): long-form decoding "
                                 "needs timestamps; pass return_timestamps=True or at most 30 s")
            if B > 1:
                raise ValueError("long-form generate() takes one audio at a time (batch size 1)")
            return_timestamps = True
        if return_timestamps and gc.no_timestamps_token_id is None:
            raise ValueError("return_timestamps=True needs generation_config.no_timestamps_token_id")
        if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer))
                                           or max_new_tokens < 1):
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer))
                                       or max_length < 1):
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
        init = self.init_tokens(feats, language, task, return_timestamps)            # [B, n_init]
        n_init = init.shape[1]
        max_pos = self.config.max_target_positions
        if max_new_tokens is not None and max_new_tokens + n_init > max_pos:
            raise ValueError(f"the prompt ({n_init} tokens) plus max_new_tokens ({max_new_tokens}) exceeds the "
                             f"decoder context of {max_pos} tokens")
        # segments are cut at timestamp tokens even without return_timestamps (as transformers does);
        # a checkpoint without timestamps gets a begin past the vocabulary, so nothing is cut
        timestamp_begin = gc.timestamp_begin if gc.timestamp_begin is not None else self.config.vocab_size + 1
        results, all_segments = [], []
        bar = _progress_bar(total if not shortform else None, progress)
        for b in range(B):
            seek, window_max, segments = 0, gc.max_length if max_length is None else max_length, []
            while seek < total:
                # transformers lengthens max_length by the prompt at every window (it is a running
                # value of the generation config), so the k-th window allows k prompts more
                if max_new_tokens is None:
                    window_max = min(window_max + min(max_pos // 2 - 1, n_init), max_pos)
                    limit = window_max
                else:
                    limit = max_new_tokens + n_init
                n_frames = min(total - seek, n_win)
                window = _pad_frames(feats[b:b + 1, :, seek:seek + n_frames], n_win)   # [1, M, 3000]
                audio = encoder_forward(self.weights, self.config, window)              # [1, S, D]
                seq = self._greedy(audio, init[b], limit, return_timestamps)
                if seq and seq[-1] == gc.eos_token_id:
                    seq = seq[:-1]
                new_segments, advance = _split_segments(seq, seek, n_frames, timestamp_begin)
                segments += new_segments
                seek += advance
                if bar is not None:
                    bar.update(min(advance, total - bar.n))
            all_segments.append(segments)
            results.append([t for s in segments for t in s["tokens"]])
        if bar is not None:
            bar.close()
        width = max((len(r) for r in results), default=0)
        pad = gc.pad_token_id if gc.pad_token_id is not None else gc.eos_token_id
        out = np.full((B, width), pad, dtype=np.int64)
        for b, r in enumerate(results):
            out[b, :len(r)] = r
        return (out, all_segments) if return_segments else out

    # ------------------------------------------------------------------ transcription
    def transcribe(self, path_or_array, language: str | None = None, task: str | None = None,
                   progress: bool = True) -> Transcription:
        """Speech -> text, any length.  path_or_array: an audio file or 16 kHz samples.

        Up to 30 s: one padded window.  Longer: the whole clip's log-mel is decoded window by
        window with timestamps (Whisper's sequential long-form algorithm, as transformers runs it).
        -> ``.text``, ``.segments`` (start, end in seconds, text) and ``.language`` (a code)."""
        audio = load_audio(path_or_array)
        n_mels = self.config.num_mel_bins
        window = self.config.n_audio_frames * HOP_LENGTH                              # 480 000 samples = 30 s
        if audio.size > window:
            feats = log_mel_spectrogram(audio, n_mels, n_samples=None)               # [M, N / 160]
        else:
            feats = log_mel_spectrogram(audio, n_mels, n_samples=window)             # [M, 3000]
        feats = feats[None]                                                           # [1, M, F]
        gc = self.generation_config
        if gc.lang_to_id:
            lang_id = self._language_id(language) if language is not None else int(self.detect_language(feats)[0])
            code = next(k for k, v in gc.lang_to_id.items() if v == lang_id)[2:-2]   # "<|en|>" -> "en"
            prompt_language = code
        else:                                                   # English-only: nothing to choose
            if language is not None and TO_LANGUAGE_CODE.get(language.lower(), language.lower()) != "en":
                raise ValueError(f"this is an English-only checkpoint; it cannot transcribe language {language!r}")
            code, prompt_language = "en", None
        tokens, segs = self.generate(feats, language=prompt_language, task=task,
                                     return_timestamps=True, return_segments=True, progress=progress)
        eot = gc.eos_token_id
        segments = [Segment(float(s["start"]), float(s["end"]), self.decode([t for t in s["tokens"] if t < eot]),
                            list(s["tokens"])) for s in segs[0]]
        text = self.decode([t for s in segs[0] for t in s["tokens"] if t < eot])
        return Transcription(text=text, segments=segments, language=code, tokens=tokens[0])

    def decode(self, ids) -> str:
        """Token ids -> text with the checkpoint's tokenizer (special tokens dropped)."""
        ids = [int(t) for t in ids]
        if self.tokenizer is None:
            return " ".join(map(str, ids))
        return self.tokenizer.decode(ids, skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------
# decoding helpers
# ---------------------------------------------------------------------------------------------
def _pad_frames(x: np.ndarray, n: int) -> np.ndarray:
    """Zero-pad (the value transformers pads features with) or cut the frame axis to n.  [B, M, F] -> [B, M, n]."""
    if x.shape[2] >= n:
        return np.ascontiguousarray(x[:, :, :n])
    return np.pad(x, ((0, 0), (0, 0), (0, n - x.shape[2])))


def _timestamp_rules(scores, seq, first: bool, gc: GenerationConfig):
    """Whisper's timestamp grammar (OpenAI's ApplyTimestampRules, as transformers'
    WhisperTimeStampLogitsProcessor): <|notimestamps|> never; timestamps come in pairs (after a
    pair text must follow, after a lone timestamp another timestamp or end-of-text); timestamps
    never decrease; the first token is a timestamp no later than max_initial_timestamp_index; and
    when the timestamps together are likelier than any single other token, a timestamp is taken.
    scores float [V] (modified in place); seq: the tokens generated so far in this window."""
    tb = gc.timestamp_begin
    eot = gc.eos_token_id if gc.eos_token_id is not None else gc.bos_token_id
    scores[gc.no_timestamps_token_id] = -np.inf
    last_ts = len(seq) >= 1 and seq[-1] >= tb
    penultimate_ts = len(seq) < 2 or seq[-2] >= tb
    if last_ts:
        if penultimate_ts:
            scores[tb:] = -np.inf                       # a pair just closed: text next
        else:
            scores[:eot] = -np.inf                      # a lone timestamp: close the pair or end
    stamps = [t for t in seq if t >= tb]
    lowest = tb
    if stamps:
        lowest = stamps[-1] if (last_ts and not penultimate_ts) else stamps[-1] + 1
    scores[tb:lowest] = -np.inf
    if first:
        scores[:tb] = -np.inf
        if gc.max_initial_timestamp_index is not None:
            scores[tb + gc.max_initial_timestamp_index + 1:] = -np.inf
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = scores.astype(np.float64)
        m = np.max(s)
        logprobs = s - (m + np.log(np.sum(np.exp(s - m))))
        ts = logprobs[tb:]
        ts_max = np.max(ts)
        ts_logprob = ts_max + np.log(np.sum(np.exp(ts - ts_max))) if np.isfinite(ts_max) else -np.inf
        if ts_logprob > np.max(logprobs[:tb]):
            scores[:tb] = -np.inf


def _split_segments(seq: list[int], seek: int, n_frames: int, tb: int):
    """One window's tokens -> (segments, frames to advance), transformers' ``_retrieve_segment``.

    Consecutive timestamp tokens close a segment.  If the window ends with a single timestamp,
    everything up to the window's end is final (advance a whole window); otherwise the tokens after
    the last closed segment were cut mid-speech: drop them and restart at that timestamp.  Times
    are seconds: window offset (seek · 10 ms) + timestamp index · 20 ms."""
    offset = seek * TIME_PRECISION / INPUT_STRIDE
    is_ts = [t >= tb for t in seq]
    single_ending = is_ts[-2:] == [False, True]
    cuts = [i + 1 for i in range(len(is_ts) - 1) if is_ts[i] and is_ts[i + 1]]
    if cuts:
        if single_ending:
            cuts.append(len(seq))
        else:
            cuts[-1] += 1                               # keep the closing timestamp in the last segment
        segments, last = [], 0
        for j, cut in enumerate(cuts):
            piece = seq[last:cut]
            end_idx = -1 if (j < len(cuts) - 1 or single_ending) else -2
            segments.append(dict(start=offset + (piece[0] - tb) * TIME_PRECISION,
                                 end=offset + (piece[end_idx] - tb) * TIME_PRECISION, tokens=list(piece)))
            last = cut
        if single_ending:
            return segments, n_frames
        return segments, (seq[last - 2] - tb) * INPUT_STRIDE
    stamps = [i for i, t in enumerate(is_ts) if t]
    end = int(n_frames * 0.01 / TIME_PRECISION)
    if stamps and seq[stamps[-1]] != tb:
        end = seq[stamps[-1]] - tb
    return [dict(start=offset, end=offset + end * TIME_PRECISION, tokens=list(seq))], n_frames


def _progress_bar(total, enabled):
    if not enabled or total is None:
        return None
    try:
        from tqdm import tqdm
    except ImportError:                                  # tqdm is a dependency, but stay usable without it
        return None
    return tqdm(total=total, unit="frames", desc="transcribing", leave=False)


# =============================================================================================
# loading
# =============================================================================================
def _load_tokenizer(path: Path):
    f = path / "tokenizer.json"
    if not f.is_file():
        return None
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(f))


def from_pretrained(path) -> Whisper:
    """A Hugging Face Whisper checkpoint directory: config.json, *.safetensors, and if present
    generation_config.json and tokenizer.json."""
    path = Path(path)
    raw = io.load_config(path)
    config = Config.from_hf(raw)
    weights = io.load_checkpoint(path)
    gfile = path / "generation_config.json"
    if gfile.is_file():
        try:
            gdict = json.loads(gfile.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{gfile}: not valid JSON ({exc})") from None
        gen = GenerationConfig.from_dict(gdict)
    elif "decoder_start_token_id" in raw and any(k in raw for k in ("suppress_tokens", "forced_decoder_ids")):
        gen = GenerationConfig.from_dict(raw)            # old checkpoints kept these in config.json
    else:
        gen = default_generation_config(config)
    return Whisper(config, weights, gen, _load_tokenizer(path))


def from_preset(name: str, seed: int = 0) -> Whisper:
    """Random float32 weights with a preset's real shapes (for shapes, timing and profiling)."""
    if name not in PRESETS:
        raise ValueError(f"unknown Whisper preset {name!r}; choose one of {', '.join(PRESETS)}")
    config = PRESETS[name]
    check_fits(4 * count_params(config), name)
    return Whisper(config, random_weights(config, seed))


# =============================================================================================
# command line hooks (pyworkloads demo | run whisper)
# =============================================================================================
def demo() -> str:
    """Log-mel of a synthetic chirp, the encoder and a few greedy decoding steps of the tiny random preset."""
    t0 = time.perf_counter()
    model = from_preset("whisper-tiny-random", seed=0)
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    audio = (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32)   # 2-s chirp
    feats = log_mel_spectrogram(audio, model.config.num_mel_bins)[None]           # [1, 80, 3000]
    audio_features = model.encode(feats)                                            # [1, 1500, 64]
    prompt = model.init_tokens(feats, language="en")[0]                             # sot, <|en|>, transcribe, notimestamps
    ids = model._greedy(audio_features, prompt, len(prompt) + 6, timestamps=False)
    dt = time.perf_counter() - t0
    return (f"whisper-tiny-random ({kernels.get_backend()}): log-mel {tuple(feats.shape)} -> encoder "
            f"{tuple(audio_features.shape)} -> prompt {prompt.tolist()} -> greedy ids {ids} in {dt:.2f} s")


def add_run_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="Hugging Face Whisper checkpoint directory (safetensors)")
    parser.add_argument("audio", help="audio file (WAV, FLAC, ... any rate and channel count)")
    parser.add_argument("--language", default=None, help="language code or name (default: detect)")
    parser.add_argument("--task", default=None, choices=TASKS, help="transcribe (default) or translate to English")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _clock(t: float) -> str:
    m, s = divmod(max(t, 0.0), 60.0)
    h, m = divmod(int(m), 60)
    return f"{h:02d}:{m:02d}:{s:06.3f}"


def run_cli(args) -> int:
    model = from_pretrained(args.model)
    res = model.transcribe(args.audio, language=args.language, task=getattr(args, "task", None),
                           progress=not getattr(args, "no_progress", False))
    for seg in res.segments:
        print(f"[{_clock(seg.start)} --> {_clock(seg.end)}] {seg.text.strip()}")
    print(f"language: {res.language}")
    print(res.text.strip())
    return 0
