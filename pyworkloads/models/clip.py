"""CLIP (Radford et al., 2021): an image encoder and a text encoder mapped into one embedding space.

Both towers are pre-norm transformers over Hugging Face's ``CLIPModel`` weight names:

    image [B, 3, S, S] -> patches (conv, stride P) -> [class] + patches + positions -> pre-LN
        -> L blocks -> post-LN of the class token -> visual_projection -> image embedding [B, E]
    ids [B, T] -> token + position embeddings -> L causal blocks -> final LN
        -> hidden state at the end-of-text token -> text_projection -> text embedding [B, E]

    logits_per_image = exp(logit_scale) · normalise(image) · normalise(text)ᵀ      [Bi, Bt]

Glossary: B batch, T tokens, D width of a tower, H heads, Dh head width, I MLP width, E projection
width (``projection_dim``), S image side, P patch side, G = S // P patches per side, N = G² patches.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from .. import io, kernels, ops
from . import check_fits

__all__ = [
    "TextConfig", "VisionConfig", "Config", "PRESETS", "count_params", "weight_shapes", "CLIP", "CLIPOutput",
    "from_pretrained", "from_preset", "text_forward", "vision_forward", "preprocess", "Tokenizer", "load_tokenizer",
    "tokenize", "contrastive_loss", "CLIP_MEAN", "CLIP_STD", "demo", "add_run_arguments", "run_cli",
]

# The per-channel statistics of OpenAI's training images; OpenCLIP's LAION models reuse them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
def _from_dict(cls, d: dict, what: str):
    """Build a config dataclass from the keys of an HF config dict it knows (the rest are HF
    bookkeeping: id2label, architectures, ...)."""
    if not isinstance(d, dict):
        raise TypeError(f"{what} must be a dict (a section of config.json), got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    cfg = cls(**{k: v for k, v in d.items() if k in known})
    cfg.validate()
    return cfg


def _check_tower(cfg, what: str):
    for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{what}.{name} must be a positive integer, got {v!r}")
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError(f"{what}.hidden_size ({cfg.hidden_size}) must be divisible by "
                         f"num_attention_heads ({cfg.num_attention_heads})")
    if cfg.hidden_act not in ops.ACTIVATIONS:
        raise ValueError(f"{what}.hidden_act must be one of {sorted(ops.ACTIVATIONS)}, got {cfg.hidden_act!r}")


@dataclass
class TextConfig:
    """HF ``CLIPTextConfig`` (defaults: OpenAI ViT-B/32's text tower)."""
    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77          # the context length
    hidden_act: str = "quick_gelu"             # OpenAI's weights were trained with x·σ(1.702x)
    layer_norm_eps: float = 1e-5
    bos_token_id: int = 49406
    # Which token's state is pooled.  OpenAI's hub configs still say 2, a leftover that transformers
    # keeps as a legacy switch: with 2 it pools at argmax(ids) (the end-of-text id is the largest in
    # CLIP's vocabulary), otherwise at the first position holding eos_token_id.
    eos_token_id: int = 49407
    pad_token_id: int = 1

    def validate(self):
        _check_tower(self, "text_config")
        for name in ("vocab_size", "max_position_embeddings"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"text_config.{name} must be a positive integer, got {v!r}")


@dataclass
class VisionConfig:
    """HF ``CLIPVisionConfig`` (defaults: OpenAI ViT-B/32's image tower)."""
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def validate(self):
        _check_tower(self, "vision_config")
        for name in ("num_channels", "image_size", "patch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"vision_config.{name} must be a positive integer, got {v!r}")
        if self.patch_size > self.image_size:
            raise ValueError(f"vision_config.patch_size ({self.patch_size}) exceeds image_size ({self.image_size})")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class Config:
    """HF ``CLIPConfig``: the two towers, the shared embedding width and the initial temperature."""
    text_config: TextConfig = field(default_factory=TextConfig)
    vision_config: VisionConfig = field(default_factory=VisionConfig)
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592     # log(1 / 0.07), the paper's initial temperature

    @classmethod
    def from_hf(cls, d: dict) -> "Config":
        """Parse a ``config.json`` dict of a ``CLIPModel`` checkpoint."""
        if not isinstance(d, dict):
            raise TypeError(f"config must be a dict, got {type(d).__name__}")
        if "text_config" not in d or "vision_config" not in d:
            raise ValueError("config is not a CLIPConfig: it needs 'text_config' and 'vision_config' sections "
                             f"(model_type={d.get('model_type')!r})")
        cfg = cls(text_config=_from_dict(TextConfig, d["text_config"], "text_config"),
                  vision_config=_from_dict(VisionConfig, d["vision_config"], "vision_config"),
                  **{k: d[k] for k in ("projection_dim", "logit_scale_init_value") if k in d})
        if isinstance(cfg.projection_dim, bool) or not isinstance(cfg.projection_dim, int) or cfg.projection_dim < 1:
            raise ValueError(f"projection_dim must be a positive integer, got {cfg.projection_dim!r}")
        return cfg

    def to_hf(self) -> dict:
        """The dict ``transformers.CLIPConfig(**d)`` accepts (and config.json stores)."""
        return {"model_type": "clip", "architectures": ["CLIPModel"], **asdict(self)}


def _preset(text: tuple, vision: tuple, projection_dim: int, act: str = "quick_gelu", image_size: int = 224) -> Config:
    """text = (D, layers, heads), vision = (D, layers, heads, MLP width, patch)."""
    (td, tl, th), (vd, vl, vh, vi, p) = text, vision
    return Config(TextConfig(hidden_size=td, intermediate_size=4 * td, num_hidden_layers=tl, num_attention_heads=th,
                             hidden_act=act),
                  VisionConfig(hidden_size=vd, intermediate_size=vi, num_hidden_layers=vl, num_attention_heads=vh,
                               image_size=image_size, patch_size=p, hidden_act=act),
                  projection_dim=projection_dim)


# OpenAI's four released ViTs (QuickGELU) and OpenCLIP's LAION-2B ViT-H/14 and ViT-g/14 (exact GELU;
# open_clip's ViT-g-14 config: width 1408, head width 88, mlp_ratio 4.3637 -> 6144).  "clip-tiny" is
# for demos and tests.
PRESETS: dict[str, Config] = {
    "clip-vit-b-32": _preset((512, 12, 8), (768, 12, 12, 3072, 32), 512),
    "clip-vit-b-16": _preset((512, 12, 8), (768, 12, 12, 3072, 16), 512),
    "clip-vit-l-14": _preset((768, 12, 12), (1024, 24, 16, 4096, 14), 768),
    "clip-vit-l-14-336": _preset((768, 12, 12), (1024, 24, 16, 4096, 14), 768, image_size=336),
    "clip-vit-h-14": _preset((1024, 24, 16), (1280, 32, 16, 5120, 14), 1024, act="gelu"),
    "clip-vit-g-14": _preset((1024, 24, 16), (1408, 40, 16, 6144, 14), 1024, act="gelu"),
    "clip-tiny": Config(TextConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, max_position_embeddings=16, bos_token_id=510,
                                   eos_token_id=511),
                        VisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                     image_size=32, patch_size=8),
                        projection_dim=24),
}


def _tower_shapes(prefix: str, cfg) -> dict[str, tuple]:
    D, I = cfg.hidden_size, cfg.intermediate_size
    shapes = {}
    for i in range(cfg.num_hidden_layers):
        p = f"{prefix}.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{p}.self_attn.{proj}.weight"] = (D, D)
            shapes[f"{p}.self_attn.{proj}.bias"] = (D,)
        for ln in ("layer_norm1", "layer_norm2"):
            shapes[f"{p}.{ln}.weight"] = (D,)
            shapes[f"{p}.{ln}.bias"] = (D,)
        shapes[f"{p}.mlp.fc1.weight"], shapes[f"{p}.mlp.fc1.bias"] = (I, D), (I,)
        shapes[f"{p}.mlp.fc2.weight"], shapes[f"{p}.mlp.fc2.bias"] = (D, I), (D,)
    return shapes


def weight_shapes(config: Config) -> dict[str, tuple]:
    """Every tensor of a ``CLIPModel`` checkpoint with its shape (HF names)."""
    t, v, E = config.text_config, config.vision_config, config.projection_dim
    shapes = {
        "text_model.embeddings.token_embedding.weight": (t.vocab_size, t.hidden_size),
        "text_model.embeddings.position_embedding.weight": (t.max_position_embeddings, t.hidden_size),
        **_tower_shapes("text_model", t),
        "text_model.final_layer_norm.weight": (t.hidden_size,),
        "text_model.final_layer_norm.bias": (t.hidden_size,),
        "vision_model.embeddings.class_embedding": (v.hidden_size,),
        "vision_model.embeddings.patch_embedding.weight": (v.hidden_size, v.num_channels, v.patch_size, v.patch_size),
        "vision_model.embeddings.position_embedding.weight": (v.num_patches + 1, v.hidden_size),
        "vision_model.pre_layrnorm.weight": (v.hidden_size,),      # sic: HF's spelling
        "vision_model.pre_layrnorm.bias": (v.hidden_size,),
        **_tower_shapes("vision_model", v),
        "vision_model.post_layernorm.weight": (v.hidden_size,),
        "vision_model.post_layernorm.bias": (v.hidden_size,),
        "visual_projection.weight": (E, v.hidden_size),
        "text_projection.weight": (E, t.hidden_size),
        "logit_scale": (),
    }
    return shapes


def count_params(config: Config) -> int:
    """Exact parameter count (what ``sum(p.numel() for p in CLIPModel(cfg).parameters())`` gives)."""
    return sum(math.prod(s) for s in weight_shapes(config).values())


# ---------------------------------------------------------------------------------------------
# forward pass: pure functions over a weights mapping keyed by HF names
# ---------------------------------------------------------------------------------------------
def _w(weights, name: str) -> np.ndarray:
    try:
        return np.asarray(weights[name], dtype=np.float32)
    except KeyError:
        raise KeyError(f"CLIP weights have no tensor named {name!r}") from None


def _layer_norm(x, weights, prefix: str, eps: float):
    with kernels.scope(prefix):
        return kernels.layer_norm(x, _w(weights, f"{prefix}.weight"), _w(weights, f"{prefix}.bias"), eps)


def self_attention(x, weights, prefix: str, n_heads: int, causal: bool, mask=None):
    """Multi-head self-attention.  x [B, T, D]; mask bool broadcastable to [B, H, T, T] -> [B, T, D]."""
    B, T, D = x.shape
    Dh = D // n_heads

    def heads(name):                                                           # [B, H, T, Dh]
        y = ops.linear(x, _w(weights, f"{prefix}.{name}.weight"), _w(weights, f"{prefix}.{name}.bias"))
        return y.reshape(B, T, n_heads, Dh).transpose(0, 2, 1, 3)

    with kernels.scope(prefix):
        o = kernels.attention(heads("q_proj"), heads("k_proj"), heads("v_proj"), causal=causal, mask=mask)
        o = o.transpose(0, 2, 1, 3).reshape(B, T, D)                           # [B, T, D]
        return ops.linear(o, _w(weights, f"{prefix}.out_proj.weight"), _w(weights, f"{prefix}.out_proj.bias"))


def mlp(x, weights, prefix: str, act: str):
    """fc1 -> activation -> fc2.  x [B, T, D] -> [B, T, D] (via [B, T, I])."""
    with kernels.scope(prefix):
        h = ops.linear(x, _w(weights, f"{prefix}.fc1.weight"), _w(weights, f"{prefix}.fc1.bias"))   # [B, T, I]
        h = ops.ACTIVATIONS[act](h)
        return ops.linear(h, _w(weights, f"{prefix}.fc2.weight"), _w(weights, f"{prefix}.fc2.bias"))


def encoder(x, weights, prefix: str, cfg, causal: bool = False, mask=None):
    """The pre-norm blocks of one tower: x += attn(LN1(x)); x += mlp(LN2(x)).  x [B, T, D] -> [B, T, D]."""
    for i in range(cfg.num_hidden_layers):
        p = f"{prefix}.encoder.layers.{i}"
        x = x + self_attention(_layer_norm(x, weights, f"{p}.layer_norm1", cfg.layer_norm_eps), weights,
                               f"{p}.self_attn", cfg.num_attention_heads, causal, mask)
        x = x + mlp(_layer_norm(x, weights, f"{p}.layer_norm2", cfg.layer_norm_eps), weights, f"{p}.mlp",
                    cfg.hidden_act)
    return x


def vision_forward(pixel_values, weights, cfg: VisionConfig) -> np.ndarray:
    """Image tower up to the pooled class token.  pixel_values [B, C, S, S] -> [B, D] (post-LN)."""
    x = np.asarray(pixel_values, dtype=np.float32)
    B = x.shape[0]
    with kernels.scope("vision_model.embeddings"):
        patches = ops.conv2d(x, _w(weights, "vision_model.embeddings.patch_embedding.weight"),
                             stride=cfg.patch_size)                            # [B, D, G, G]
    patches = patches.reshape(B, cfg.hidden_size, -1).transpose(0, 2, 1)       # [B, N, D]
    cls = np.broadcast_to(_w(weights, "vision_model.embeddings.class_embedding"), (B, 1, cfg.hidden_size))
    x = np.concatenate([cls, patches], axis=1)                                 # [B, N+1, D]
    x = x + _w(weights, "vision_model.embeddings.position_embedding.weight")   # [B, N+1, D]
    x = _layer_norm(x, weights, "vision_model.pre_layrnorm", cfg.layer_norm_eps)
    x = encoder(x, weights, "vision_model", cfg)                               # [B, N+1, D]
    return _layer_norm(x[:, 0], weights, "vision_model.post_layernorm", cfg.layer_norm_eps)   # [B, D]


def pool_positions(input_ids: np.ndarray, eos_token_id: int) -> np.ndarray:
    """Index of the token whose state represents each text, transformers' rule: the first
    ``eos_token_id`` -- or, for legacy configs with eos_token_id == 2, argmax(ids), since
    CLIP's end-of-text token has the largest id.  input_ids [B, T] -> [B]."""
    if eos_token_id == 2:
        return input_ids.argmax(axis=-1)
    is_eos = input_ids == eos_token_id                                         # [B, T]
    missing = np.flatnonzero(~is_eos.any(axis=-1))
    if missing.size:
        raise ValueError(f"input_ids: row {missing[0]} has no end-of-text token (id {eos_token_id}); the text "
                         "tower pools at that token -- tokenize() appends it")
    return is_eos.argmax(axis=-1)


def text_forward(input_ids, weights, cfg: TextConfig, attention_mask=None) -> np.ndarray:
    """Text tower up to the pooled end-of-text state.  input_ids int [B, T] -> [B, D] (final LN).

    Attention is causal, so padding after the end-of-text token never reaches the pooled state;
    attention_mask [B, T] (1 = token, 0 = padding) additionally hides padded keys, as transformers does."""
    B, T = input_ids.shape
    pooled_at = pool_positions(input_ids, cfg.eos_token_id)                                    # [B]
    x = ops.embedding(input_ids, _w(weights, "text_model.embeddings.token_embedding.weight"))   # [B, T, D]
    x = x + _w(weights, "text_model.embeddings.position_embedding.weight")[:T]                 # [B, T, D]
    mask = None if attention_mask is None else attention_mask.astype(bool)[:, None, None, :]   # [B, 1, 1, T]
    x = encoder(x, weights, "text_model", cfg, causal=True, mask=mask)
    x = _layer_norm(x, weights, "text_model.final_layer_norm", cfg.layer_norm_eps)             # [B, T, D]
    return x[np.arange(B), pooled_at]                                                          # [B, D]


def _normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, [N, E] -> [N, E].  Dividing by the largest entry first keeps the
    squares finite for huge embeddings (float32 squares overflow past ~1.8e19)."""
    big = np.max(np.abs(x), axis=-1, keepdims=True)
    if not np.all(big > 0):
        raise ValueError("embeddings: a row is all zeros (or NaN) and has no direction to normalise")
    x = x / big
    return x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True))


@dataclass
class CLIPOutput:
    """What ``CLIP.__call__`` returns (names as in transformers' ``CLIPOutput``)."""
    logits_per_image: np.ndarray   # [Bi, Bt] exp(logit_scale) · cosine similarity
    logits_per_text: np.ndarray    # [Bt, Bi] its transpose
    image_embeds: np.ndarray       # [Bi, E] unit norm
    text_embeds: np.ndarray        # [Bt, E] unit norm


def contrastive_loss(image_embeds, text_embeds, logit_scale) -> float:
    """CLIP's symmetric InfoNCE loss, as in the paper's pseudo-code: pair i of the batch is the positive
    for row i and column i of the similarity matrix.

        logits = exp(logit_scale) · normalise(image) · normalise(text)ᵀ      [N, N]
        loss   = (CE(logits, rows -> i) + CE(logitsᵀ, rows -> i)) / 2

    image_embeds [N, E], text_embeds [N, E]; ``logit_scale`` is the log of the inverse temperature,
    as CLIP stores it (exp is taken here).  Computed in float64 with log-sum-exp, so huge logits stay finite.
    """
    img = np.asarray(image_embeds, dtype=np.float64)
    txt = np.asarray(text_embeds, dtype=np.float64)
    if img.ndim != 2 or txt.ndim != 2 or img.shape != txt.shape or img.shape[0] == 0:
        raise ValueError(f"contrastive_loss: image_embeds and text_embeds must both be [N, E] with N >= 1 and "
                         f"the same shape, got {img.shape} and {txt.shape}")
    for name, a in (("image_embeds", img), ("text_embeds", txt)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"contrastive_loss: {name} contains NaN or infinity")
    s = np.asarray(logit_scale, dtype=np.float64)
    if s.size != 1 or not np.isfinite(s) or s.item() >= np.log(np.finfo(np.float64).max):
        raise ValueError(f"contrastive_loss: logit_scale must be a finite scalar (log space) whose exp is finite, "
                         f"got {logit_scale!r}")
    logits = np.exp(s.item()) * (_normalize(img) @ _normalize(txt).T)           # [N, N]

    def cross_entropy(z):                                                      # mean over rows, target = diagonal
        m = z.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.sum(np.exp(z - m), axis=1))
        return float(np.mean(lse - np.diag(z)))

    return 0.5 * (cross_entropy(logits) + cross_entropy(logits.T))


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------
def _to_rgb_uint8(image) -> np.ndarray:
    """A path, PIL image or uint8 array (H×W, H×W×1, H×W×3, H×W×4) -> uint8 [H, W, 3].

    Transparency is composited onto white, as transformers' ``convert_to_rgb`` does (PIL images via
    PIL's alpha_composite, arrays with the rounded linear blend)."""
    from PIL import Image
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image: no such file {str(path)!r}")
        with Image.open(path) as im:
            im.load()
            image = im.copy()
    if isinstance(image, Image.Image):
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a file path, PIL.Image or numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"image: arrays must be uint8 pixels in [0, 255] (H×W or H×W×C), got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]                                              # [H, W, 1]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"image: array must be H×W or H×W×C with C in (1, 3, 4), got shape {image.shape}")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)                                     # [H, W, 3]
    if image.shape[2] == 4:
        alpha = image[..., 3:4] / 255.0
        return np.round(alpha * image[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return image


def preprocess(image, size: int = 224, crop_size: int | None = None, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """One image -> CLIP's input: float32 [1, 3, crop, crop].

    The steps and arithmetic of transformers' ``CLIPImageProcessor`` (PIL backend): RGB; resize so the
    shorter side is ``size`` (the longer one truncated to int) with PIL's bicubic filter, which
    antialiases when shrinking and works on the uint8 image; center crop (offsets floored); scale to
    [0, 1]; normalise per channel with ``mean``/``std`` (OpenAI's by default)."""
    from PIL import Image
    crop = size if crop_size is None else crop_size
    for name, v in (("size", size), ("crop_size", crop)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"preprocess: {name} must be a positive integer, got {v!r}")
    if crop > size:
        raise ValueError(f"preprocess: crop_size ({crop}) must not exceed the resized shorter side ({size})")
    rgb = _to_rgb_uint8(image)                                                 # [h, w, 3]
    h, w = rgb.shape[:2]
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_h, new_w = size, int(size * w / h)
    rgb = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BICUBIC))   # [size.., size.., 3]
    top, left = (new_h - crop) // 2, (new_w - crop) // 2
    rgb = rgb[top:top + crop, left:left + crop]                                # [crop, crop, 3]
    x = (rgb.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)       # [crop, crop, 3]
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])                    # [1, 3, crop, crop]


# ---------------------------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------------------------
BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"


@dataclass
class Tokenizer:
    """A checkpoint's ``tokenizers.Tokenizer`` plus the two ids tokenize() needs beyond it."""
    backend: object = field(repr=False)   # tokenizers.Tokenizer
    eos_token_id: int
    pad_token_id: int


def load_tokenizer(path) -> Tokenizer:
    """The tokenizer of a checkpoint: a ``tokenizer.json`` file, or a directory with one.

    CLIP's tokenizer lowercases, splits words, applies byte-level BPE with an end-of-word suffix and
    wraps the ids in <|startoftext|> ... <|endoftext|>; all of it lives in tokenizer.json.  The pad
    token (``<|endoftext|>`` for OpenAI's checkpoints, ``!`` for LAION's) comes from
    tokenizer_config.json next to it when present, else it is <|endoftext|>."""
    from tokenizers import Tokenizer as Backend
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no tokenizer.json (save one with the checkpoint's tokenizer.save_pretrained)")
    backend = Backend.from_file(str(file))
    eos = backend.token_to_id(EOS_TOKEN)
    if eos is None:
        raise ValueError(f"{file}: not a CLIP tokenizer (no {EOS_TOKEN} token)")
    pad = eos
    cfg_file = file.parent / "tokenizer_config.json"
    if cfg_file.is_file():
        pad_tok = json.loads(cfg_file.read_text()).get("pad_token")
        if isinstance(pad_tok, dict):
            pad_tok = pad_tok.get("content")
        if isinstance(pad_tok, str) and backend.token_to_id(pad_tok) is not None:
            pad = backend.token_to_id(pad_tok)
    return Tokenizer(backend, eos, pad)


def tokenize(texts, tokenizer: Tokenizer, context_length: int = 77, truncate: bool = False, padding: str = "max_length"):
    """Texts -> int64 ids [N, T] with start and end tokens, padded with the tokenizer's pad id.

    padding="max_length" pads to ``context_length`` (OpenAI's ``clip.tokenize``), "longest" to the longest
    text.  A text longer than ``context_length`` raises ValueError unless ``truncate=True``, which keeps the
    first tokens and ends the row with <|endoftext|> (as both OpenAI's and transformers' tokenizers do)."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a string or a non-empty list of strings")
    if padding not in ("max_length", "longest"):
        raise ValueError(f"padding must be 'max_length' or 'longest', got {padding!r}")
    if isinstance(context_length, bool) or not isinstance(context_length, (int, np.integer)) or context_length < 2:
        raise ValueError(f"context_length must be an integer >= 2, got {context_length!r}")
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    if not isinstance(tokenizer, Tokenizer):
        raise TypeError(f"tokenizer must be a clip.Tokenizer (load_tokenizer()) or a path, got {type(tokenizer).__name__}")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = [enc.ids for enc in tokenizer.backend.encode_batch(texts)]
    for i, row in enumerate(rows):
        if len(row) > context_length:
            if not truncate:
                raise ValueError(f"texts[{i}] is {len(row)} tokens long (with start/end tokens), more than the "
                                 f"context length {context_length}; shorten it or pass truncate=True")
            rows[i] = row[:context_length - 1] + [eos]
    T = context_length if padding == "max_length" else max(map(len, rows))
    ids = np.full((len(rows), T), pad, dtype=np.int64)                         # [N, T]
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
    return ids


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
class CLIP:
    """A CLIP checkpoint: config + weights (+ tokenizer and preprocessing settings when known)."""

    def __init__(self, config: Config, weights, tokenizer=None, image_size: int | None = None,
                 crop_size: int | None = None, image_mean=CLIP_MEAN, image_std=CLIP_STD):
        self.config = config
        self.weights = weights
        self.tokenizer = tokenizer
        self.image_size = image_size or config.vision_config.image_size    # shorter side after resize
        self.crop_size = crop_size or config.vision_config.image_size
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        check_weights(config, weights)

    # -- inputs ---------------------------------------------------------------------------------
    def _check_pixels(self, pixel_values) -> np.ndarray:
        v = self.config.vision_config
        x = np.asarray(pixel_values)
        if x.dtype.kind != "f":
            raise TypeError(f"pixel_values must be a float array (see preprocess()), got dtype {x.dtype}")
        if x.ndim == 3:
            x = x[None]                                                        # [1, C, S, S]
        want = (v.num_channels, v.image_size, v.image_size)
        if x.ndim != 4 or x.shape[1:] != want or x.shape[0] == 0:
            raise ValueError(f"pixel_values must be [B, {want[0]}, {want[1]}, {want[2]}] for this model "
                             f"(image_size={v.image_size}), got shape {x.shape}; preprocess() resizes and crops")
        return x.astype(np.float32, copy=False)

    def _check_ids(self, input_ids, attention_mask):
        t = self.config.text_config
        ids = np.asarray(input_ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"input_ids must be integers, got dtype {ids.dtype}")
        if ids.ndim == 1:
            ids = ids[None]                                                    # [1, T]
        if ids.ndim != 2 or 0 in ids.shape:
            raise ValueError(f"input_ids must be [B, T] with B, T >= 1, got shape {ids.shape}")
        if ids.shape[1] > t.max_position_embeddings:
            raise ValueError(f"input_ids has {ids.shape[1]} tokens, more than the context length "
                             f"{t.max_position_embeddings} (max_position_embeddings)")
        if ids.min() < 0 or ids.max() >= t.vocab_size:
            raise ValueError(f"input_ids must lie in [0, {t.vocab_size}) (vocab_size), got range "
                             f"[{ids.min()}, {ids.max()}]")
        if attention_mask is not None:
            attention_mask = np.asarray(attention_mask)
            if attention_mask.ndim == 1:
                attention_mask = attention_mask[None]
            if attention_mask.shape != ids.shape:
                raise ValueError(f"attention_mask must have input_ids' shape {ids.shape}, got {attention_mask.shape}")
            if not np.isin(attention_mask, (0, 1)).all():
                raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
        return ids.astype(np.int64, copy=False), attention_mask

    # -- features -------------------------------------------------------------------------------
    def get_image_features(self, pixel_values) -> np.ndarray:
        """pixel_values [B, 3, S, S] -> projected (unnormalised) image embeddings [B, E]."""
        pooled = vision_forward(self._check_pixels(pixel_values), self.weights, self.config.vision_config)
        with kernels.scope("visual_projection"):
            return ops.linear(pooled, _w(self.weights, "visual_projection.weight"))

    def get_text_features(self, input_ids, attention_mask=None) -> np.ndarray:
        """input_ids int [B, T] -> projected (unnormalised) text embeddings [B, E]."""
        ids, attention_mask = self._check_ids(input_ids, attention_mask)
        pooled = text_forward(ids, self.weights, self.config.text_config, attention_mask)
        with kernels.scope("text_projection"):
            return ops.linear(pooled, _w(self.weights, "text_projection.weight"))

    def __call__(self, input_ids=None, pixel_values=None, attention_mask=None) -> CLIPOutput:
        """Scaled cosine similarities between every image and every text."""
        if input_ids is None or pixel_values is None:
            raise ValueError("CLIP needs both input_ids and pixel_values (use get_text_features / "
                             "get_image_features for one tower)")
        image_embeds = _normalize(self.get_image_features(pixel_values))        # [Bi, E]
        text_embeds = _normalize(self.get_text_features(input_ids, attention_mask))   # [Bt, E]
        scale = np.exp(_w(self.weights, "logit_scale"))
        logits_per_text = scale * ops.matmul(text_embeds, np.ascontiguousarray(image_embeds.T))   # [Bt, Bi]
        return CLIPOutput(logits_per_image=np.ascontiguousarray(logits_per_text.T), logits_per_text=logits_per_text,
                          image_embeds=image_embeds, text_embeds=text_embeds)

    # -- convenience ----------------------------------------------------------------------------
    def preprocess(self, images) -> np.ndarray:
        """One image or a list of them (paths, PIL images, uint8 arrays) -> float32 [B, 3, S, S]."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        return np.concatenate([preprocess(im, self.image_size, self.crop_size, self.image_mean, self.image_std)
                               for im in images])

    def tokenize(self, texts, truncate: bool = False) -> np.ndarray:
        """Texts -> ids [N, context_length] with this checkpoint's tokenizer."""
        if self.tokenizer is None:
            raise ValueError("this CLIP has no tokenizer (from_pretrained loads the checkpoint's tokenizer.json; "
                             "set .tokenizer = load_tokenizer(path))")
        return tokenize(texts, self.tokenizer, self.config.text_config.max_position_embeddings, truncate)

    def zero_shot(self, images, labels, template: str = "a photo of a {}.") -> np.ndarray:
        """Probability of each label for each image, by softmax over the scaled similarities to the
        texts ``template.format(label)`` (the paper's prompt).  images: as for preprocess(), or
        pixel_values [B, 3, S, S]; labels: list of str -> float32 [B, len(labels)], rows sum to 1."""
        if isinstance(labels, str) or not labels or not all(isinstance(lb, str) for lb in labels):
            raise TypeError("labels must be a non-empty list of strings")
        if "{}" not in template:
            raise ValueError(f"template must contain '{{}}' where the label goes, got {template!r}")
        is_pixels = isinstance(images, np.ndarray) and images.dtype.kind == "f" and images.ndim == 4
        pixels = images if is_pixels else self.preprocess(images)
        out = self(input_ids=self.tokenize([template.format(lb) for lb in labels]), pixel_values=pixels)
        return ops.softmax(out.logits_per_image, axis=-1)


def check_weights(config: Config, weights) -> None:
    """Every tensor the config needs is present with its shape (extra tensors, e.g. old checkpoints'
    position_ids buffers, are ignored)."""
    for name, shape in weight_shapes(config).items():
        if name not in weights:
            raise ValueError(f"CLIP weights are missing {name!r} (expected shape {shape})")
        got = tuple(weights.shape_of(name)) if hasattr(weights, "shape_of") else np.shape(weights[name])
        if tuple(got) != shape:
            raise ValueError(f"CLIP weight {name!r} has shape {tuple(got)}, the config needs {shape}")


def from_pretrained(path) -> CLIP:
    """A Hugging Face ``CLIPModel`` directory: config.json + *.safetensors (+ tokenizer.json,
    tokenizer_config.json and preprocessor_config.json when present)."""
    path = Path(path)
    config = Config.from_hf(io.load_config(path))
    weights = io.load_checkpoint(path)
    tokenizer = load_tokenizer(path) if (path / "tokenizer.json").is_file() else None
    kw = {}
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        p = json.loads(pre.read_text())
        size, crop = p.get("size"), p.get("crop_size")
        kw["image_size"] = size.get("shortest_edge") if isinstance(size, dict) else size
        kw["crop_size"] = (crop.get("height") if isinstance(crop, dict) else crop) or None
        kw["image_mean"], kw["image_std"] = p.get("image_mean", CLIP_MEAN), p.get("image_std", CLIP_STD)
    return CLIP(config, weights, tokenizer, **kw)


def random_weights(config: Config, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights of the config's shapes: N(0, 0.02) matrices and embeddings, unit/zero LayerNorms,
    zero biases, logit_scale at its initial value."""
    rng = np.random.default_rng(seed)
    w = {}
    for name, shape in weight_shapes(config).items():
        if name == "logit_scale":
            w[name] = np.asarray(config.logit_scale_init_value, np.float32)
        elif "layer_norm" in name or "layrnorm" in name:
            w[name] = (np.ones if name.endswith("weight") else np.zeros)(shape, np.float32)
        elif name.endswith("bias"):
            w[name] = np.zeros(shape, np.float32)
        else:
            w[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
    return w


def from_preset(name: str, seed: int = 0) -> CLIP:
    """A preset's shapes with random weights (no tokenizer): for shapes, timing and profiling."""
    if name not in PRESETS:
        raise ValueError(f"unknown CLIP preset {name!r}; known: {', '.join(PRESETS)}")
    config = PRESETS[name]
    check_fits(4 * count_params(config), name)
    return CLIP(config, random_weights(config, seed))


# ---------------------------------------------------------------------------------------------
# command line hooks (pyworkloads demo | run clip)
# ---------------------------------------------------------------------------------------------
def demo() -> str:
    """Tiny random CLIP on two random images and three random texts, on the current backend."""
    m = from_preset("clip-tiny", seed=0)
    t, v = m.config.text_config, m.config.vision_config
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((2, v.num_channels, v.image_size, v.image_size), dtype=np.float32)
    ids = rng.integers(0, t.eos_token_id, size=(3, 8))
    ids[:, 0], ids[:, -1] = t.bos_token_id, t.eos_token_id
    out = m(input_ids=ids, pixel_values=pixels)
    probs = ops.softmax(out.logits_per_image, axis=-1)
    return (f"clip-tiny ({count_params(m.config):,} params, backend {kernels.get_backend()}): 2 images x 3 texts "
            f"-> logits_per_image {out.logits_per_image.shape}, probs {np.round(probs.astype(np.float64), 3).tolist()}")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Hugging Face CLIPModel directory (config.json, "
                        "*.safetensors, tokenizer.json)")
    parser.add_argument("--image", required=True, nargs="+", help="image file(s)")
    parser.add_argument("--labels", required=True, help='comma-separated labels, e.g. "a cat,a dog"')
    parser.add_argument("--template", default="{}", help='prompt around each label, e.g. "a photo of {}." '
                        '(default: the label as given)')


def run_cli(args) -> int:
    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    if not labels:
        print("error: --labels needs at least one label")
        return 2
    m = from_pretrained(args.model)
    probs = m.zero_shot(list(args.image), labels, template=args.template)        # [n_images, n_labels]
    for path, row in zip(args.image, probs):
        print(path)
        for j in np.argsort(-row, kind="stable"):
            print(f"  {row[j]:7.2%}  {labels[j]}")
    return 0
