"""CLIP (Radford et al., 2021, "Learning Transferable Visual Models From Natural Language
Supervision"): an image encoder and a text encoder that map matching pictures and captions to the
same direction of one embedding space.

Both towers are pre-norm transformers over Hugging Face's ``CLIPModel`` weight names:

    image [B, 3, R, R] -> patches (conv, stride P) -> [class] + patches + positions -> pre-LN
        -> L blocks -> post-LN of the class token -> visual_projection -> image embedding [B, E]
    ids [B, T] -> token + position embeddings -> L causal blocks -> final LN
        -> hidden state at the end-of-text token -> text_projection -> text embedding [B, E]

    block:  x = x + self_attn(layer_norm1(x));   x = x + mlp(layer_norm2(x))
            mlp(x) = fc2(act(fc1(x)))            act: QuickGELU (OpenAI) or GELU (OpenCLIP)

    logits_per_image = exp(logit_scale) · normalise(image) · normalise(text)ᵀ      [Bi, Bt]

Training raises the diagonal of that matrix (pair i is image i with caption i) against its rows
and columns: :func:`contrastive_loss`.  Zero-shot classification reads one row as the scores of
captions "a photo of a {label}." (``api.CLIP.zero_shot``).

Glossary (shapes in comments use these):
    B   batch (Bi images, Bt texts)          T   tokens (at most 77);  V  vocabulary
    D   width of a tower                     H   heads;  Dh = D / H head width
    F   MLP width (intermediate_size)        L   blocks per tower
    E   shared embedding width               C   image channels (3);  R  image side (224)
    P   patch side (14, 16, 32)              G   patches per side, R / P;  Np = G² patches

The forward functions take (activations, weights, then the tower's config: ``VisionConfig`` or
``TextConfig``); layers take (x, weights, the full HF module path, hyper-parameters).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ... import kernels, ops
from ..common import check_choice, check_number, check_sizes, embedding, layer_norm, linear, weight
from ..common import count_params as _count

__all__ = [
    "QUICK_GELU", "TextConfig", "VisionConfig", "Config", "PRESETS", "weight_shapes",
    "count_params", "self_attention", "mlp", "encoder_layer", "encoder", "vision_embeddings",
    "vision_model", "image_features", "text_embeddings", "pool_positions", "text_model",
    "text_features", "l2_normalize", "similarity", "cross_entropy_to_diagonal", "contrastive_loss",
]

QUICK_GELU = "quick_gelu"
"""``hidden_act`` of OpenAI's checkpoints: x · σ(1.702 x), the sigmoid approximation of GELU
(Hendrycks & Gimpel, 2016, "Gaussian Error Linear Units", §2) that OpenAI trained CLIP with
(openai/CLIP ``clip/model.py``, class ``QuickGELU``).  OpenCLIP's LAION models use exact GELU,
``"gelu"``; the two differ by up to ~0.02 per activation, so a checkpoint needs its own."""


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
def _check_tower(config, what: str) -> None:
    check_sizes(config, what, widths=("hidden_size", "intermediate_size", "num_attention_heads"),
                layers=("num_hidden_layers",))
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(f"{what}.hidden_size ({config.hidden_size}) must be divisible by "
                         f"num_attention_heads ({config.num_attention_heads})")
    check_choice(config.hidden_act, f"{what}.hidden_act", tuple(ops.ACTIVATIONS))
    config.layer_norm_eps = check_number(config.layer_norm_eps, f"{what}.layer_norm_eps", 0)


@dataclass
class TextConfig:
    """HF ``CLIPTextConfig`` (defaults: OpenAI ViT-B/32's text tower)."""
    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77          # the context length
    hidden_act: str = QUICK_GELU
    layer_norm_eps: float = 1e-5
    bos_token_id: int = 49406
    # Which token's state is pooled.  OpenAI's hub configs still say 2, a leftover transformers
    # keeps as a legacy switch: with 2 it pools at argmax(ids) (the end-of-text id is the largest
    # in CLIP's vocabulary), otherwise at the first position holding eos_token_id.
    eos_token_id: int = 49407
    pad_token_id: int = 1

    def __post_init__(self):
        _check_tower(self, "text_config")
        check_sizes(self, "text_config", widths=("vocab_size",),
                    positions=("max_position_embeddings",),
                    token_ids=("bos_token_id", "eos_token_id", "pad_token_id"))


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
    hidden_act: str = QUICK_GELU
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        _check_tower(self, "vision_config")
        check_sizes(self, "vision_config", widths=("num_channels", "image_size", "patch_size"))
        if self.patch_size > self.image_size:
            raise ValueError(f"vision_config.patch_size ({self.patch_size}) exceeds image_size "
                             f"({self.image_size})")

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

    def __post_init__(self):
        check_sizes(self, "Config", widths=("projection_dim",))
        check_number(self.logit_scale_init_value, "logit_scale_init_value")

    @classmethod
    def from_hf(cls, d) -> Config:
        """Parse a ``config.json`` dict of a ``CLIPModel`` checkpoint (see :mod:`.hf`)."""
        from .hf import config_from_hf
        return config_from_hf(d)

    def to_hf(self) -> dict:
        """The dict ``transformers.CLIPConfig(**d)`` accepts (and config.json stores)."""
        from .hf import config_to_hf
        return config_to_hf(self)


def _preset(text: tuple, vision: tuple, projection_dim: int, act: str = QUICK_GELU,
            image_size: int = 224) -> Config:
    """text = (D, layers, heads), vision = (D, layers, heads, MLP width, patch)."""
    (td, tl, th), (vd, vl, vh, vi, p) = text, vision
    return Config(TextConfig(hidden_size=td, intermediate_size=4 * td, num_hidden_layers=tl,
                             num_attention_heads=th, hidden_act=act),
                  VisionConfig(hidden_size=vd, intermediate_size=vi, num_hidden_layers=vl,
                               num_attention_heads=vh, image_size=image_size, patch_size=p,
                               hidden_act=act),
                  projection_dim=projection_dim)


# OpenAI's four released ViTs (QuickGELU) and OpenCLIP's LAION-2B ViT-H/14 and ViT-g/14 (exact
# GELU; open_clip's ViT-g-14 config: width 1408, head width 88, mlp_ratio 4.3637 -> 6144).
# "clip-tiny" is for demos and tests.
PRESETS: dict[str, Config] = {
    "clip-vit-b-32": _preset((512, 12, 8), (768, 12, 12, 3072, 32), 512),
    "clip-vit-b-16": _preset((512, 12, 8), (768, 12, 12, 3072, 16), 512),
    "clip-vit-l-14": _preset((768, 12, 12), (1024, 24, 16, 4096, 14), 768),
    "clip-vit-l-14-336": _preset((768, 12, 12), (1024, 24, 16, 4096, 14), 768, image_size=336),
    "clip-vit-h-14": _preset((1024, 24, 16), (1280, 32, 16, 5120, 14), 1024, act="gelu"),
    "clip-vit-g-14": _preset((1024, 24, 16), (1408, 40, 16, 6144, 14), 1024, act="gelu"),
    "clip-tiny": Config(TextConfig(vocab_size=512, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   max_position_embeddings=16, bos_token_id=510, eos_token_id=511),
                        VisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                     num_attention_heads=4, image_size=32, patch_size=8),
                        projection_dim=24),
}


# ---------------------------------------------------------------------------------------------
# weight layout
# ---------------------------------------------------------------------------------------------
def _encoder_shapes(name: str, config) -> dict[str, tuple]:
    D, F = config.hidden_size, config.intermediate_size
    shapes = {}
    for i in range(config.num_hidden_layers):
        p = f"{name}.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{p}.self_attn.{proj}.weight"] = (D, D)
            shapes[f"{p}.self_attn.{proj}.bias"] = (D,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[f"{p}.{norm}.weight"] = (D,)
            shapes[f"{p}.{norm}.bias"] = (D,)
        shapes[f"{p}.mlp.fc1.weight"], shapes[f"{p}.mlp.fc1.bias"] = (F, D), (F,)
        shapes[f"{p}.mlp.fc2.weight"], shapes[f"{p}.mlp.fc2.bias"] = (D, F), (D,)
    return shapes


def weight_shapes(config: Config) -> dict[str, tuple]:
    """Every tensor of a ``CLIPModel`` checkpoint with its shape (HF names)."""
    t, v, E = config.text_config, config.vision_config, config.projection_dim
    Dt, Dv, P = t.hidden_size, v.hidden_size, v.patch_size
    return {
        "text_model.embeddings.token_embedding.weight": (t.vocab_size, Dt),
        "text_model.embeddings.position_embedding.weight": (t.max_position_embeddings, Dt),
        **_encoder_shapes("text_model.encoder", t),
        "text_model.final_layer_norm.weight": (Dt,),
        "text_model.final_layer_norm.bias": (Dt,),
        "vision_model.embeddings.class_embedding": (Dv,),
        "vision_model.embeddings.patch_embedding.weight": (Dv, v.num_channels, P, P),
        "vision_model.embeddings.position_embedding.weight": (v.num_patches + 1, Dv),
        "vision_model.pre_layrnorm.weight": (Dv,),                 # sic: HF's spelling
        "vision_model.pre_layrnorm.bias": (Dv,),
        **_encoder_shapes("vision_model.encoder", v),
        "vision_model.post_layernorm.weight": (Dv,),
        "vision_model.post_layernorm.bias": (Dv,),
        "visual_projection.weight": (E, Dv),                       # no bias
        "text_projection.weight": (E, Dt),
        "logit_scale": (),                                         # log of the inverse temperature
    }


def count_params(config: Config) -> int:
    """Exact parameter count (``sum(p.numel() for p in CLIPModel(cfg).parameters())``)."""
    return _count(weight_shapes(config))


# ---------------------------------------------------------------------------------------------
# the pre-norm encoder block (both towers)
# ---------------------------------------------------------------------------------------------
def self_attention(x, weights, name: str, config, causal: bool = False, mask=None):
    """Multi-head self-attention.  x [B, T, D] -> [B, T, D]; ``causal`` lets token t see tokens
    <= t only (the text tower); mask bool [B, 1, 1, T] (True = attend) hides padded keys."""
    B, T, D = x.shape
    H = config.num_attention_heads

    def heads(proj):
        y = linear(x, weights, f"{name}.{proj}")                               # [B, T, D]
        return y.reshape(B, T, H, D // H).transpose(0, 2, 1, 3)                # [B, H, T, Dh]

    with kernels.scope(name):
        q, k, v = heads("q_proj"), heads("k_proj"), heads("v_proj")            # [B, H, T, Dh]
        o = kernels.attention(q, k, v, causal=causal, mask=mask)               # [B, H, T, Dh]
        o = o.transpose(0, 2, 1, 3).reshape(B, T, D)                           # [B, T, D]
        return linear(o, weights, f"{name}.out_proj")


def mlp(x, weights, name: str, act: str):
    """fc1 -> activation ``act`` (the config's hidden_act: QUICK_GELU or "gelu") -> fc2.
    x [B, T, D] -> [B, T, D]."""
    with kernels.scope(name):
        h = linear(x, weights, f"{name}.fc1")                                  # [B, T, F]
        h = ops.ACTIVATIONS[act](h)
        return linear(h, weights, f"{name}.fc2")                               # [B, T, D]


def encoder_layer(x, weights, name: str, config, causal: bool = False, mask=None):
    """One pre-norm block: x + self_attn(LN1(x)), then + mlp(LN2(x)).  x [B, T, D] -> [B, T, D]."""
    eps = config.layer_norm_eps
    with kernels.scope(name):
        h = layer_norm(x, weights, f"{name}.layer_norm1", eps)
        x = x + self_attention(h, weights, f"{name}.self_attn", config, causal, mask)
        h = layer_norm(x, weights, f"{name}.layer_norm2", eps)
        return x + mlp(h, weights, f"{name}.mlp", config.hidden_act)


def encoder(x, weights, name: str, config, causal: bool = False, mask=None):
    """The L blocks of one tower.  x [B, T, D] -> [B, T, D]."""
    for i in range(config.num_hidden_layers):
        x = encoder_layer(x, weights, f"{name}.layers.{i}", config, causal, mask)
    return x


# ---------------------------------------------------------------------------------------------
# the image tower
# ---------------------------------------------------------------------------------------------
def vision_embeddings(pixel_values, weights, name: str, config: VisionConfig):
    """ViT's input: each P×P patch linearly embedded (a conv of stride P), a learned class token
    in front, learned positions added.  pixel_values [B, C, R, R] -> [B, Np+1, D]."""
    B, D = pixel_values.shape[0], config.hidden_size
    with kernels.scope(name):
        w = weight(weights, f"{name}.patch_embedding.weight")                 # [D, C, P, P]
        x = ops.conv2d(pixel_values, w, stride=config.patch_size)              # [B, D, G, G]
        x = x.reshape(B, D, -1).transpose(0, 2, 1)                             # [B, Np, D]
        cls = np.broadcast_to(weight(weights, f"{name}.class_embedding"), (B, 1, D))   # [B, 1, D]
        x = np.concatenate([cls, x], axis=1)                                   # [B, Np+1, D]
        return x + weight(weights, f"{name}.position_embedding.weight")        # [B, Np+1, D]


def vision_model(pixel_values, weights, config: VisionConfig):
    """The image tower up to its pooled state: the class token after the post-LN.
    pixel_values [B, C, R, R] -> [B, D]."""
    eps = config.layer_norm_eps
    x = vision_embeddings(pixel_values, weights, "vision_model.embeddings", config)   # [B, Np+1, D]
    x = layer_norm(x, weights, "vision_model.pre_layrnorm", eps)
    x = encoder(x, weights, "vision_model.encoder", config)                   # [B, Np+1, D]
    return layer_norm(x[:, 0], weights, "vision_model.post_layernorm", eps)   # [B, D]


def image_features(pixel_values, weights, config: VisionConfig):
    """Image tower + projection into the shared space (not yet normalised).
    pixel_values [B, C, R, R] -> [B, E]."""
    pooled = vision_model(pixel_values, weights, config)                       # [B, D]
    with kernels.scope("visual_projection"):
        return linear(pooled, weights, "visual_projection")                    # [B, E]


# ---------------------------------------------------------------------------------------------
# the text tower
# ---------------------------------------------------------------------------------------------
def text_embeddings(input_ids, weights, name: str):
    """Token embeddings plus learned positions.  input_ids int [B, T] -> [B, T, D]."""
    T = input_ids.shape[1]
    with kernels.scope(name):
        x = embedding(input_ids, weights, f"{name}.token_embedding.weight")   # [B, T, D]
        return x + weight(weights, f"{name}.position_embedding.weight")[:T]   # [B, T, D]


def pool_positions(input_ids, eos_token_id: int):
    """End-of-text pooling: the index of the token whose state represents each text, by
    transformers' rule -- the first ``eos_token_id``, or, for legacy configs with
    eos_token_id == 2, argmax(ids), since CLIP's end-of-text token has the largest id.
    input_ids int [B, T] -> int [B]."""
    if eos_token_id == 2:
        return input_ids.argmax(axis=-1)                                       # [B]
    is_eos = input_ids == eos_token_id                                         # [B, T]
    missing = np.flatnonzero(~is_eos.any(axis=-1))
    if missing.size:
        raise ValueError(f"input_ids: row {missing[0]} has no end-of-text token (id "
                         f"{eos_token_id}); the text tower pools at that token -- tokenize() "
                         "appends it")
    return is_eos.argmax(axis=-1)                                              # [B]


def text_model(input_ids, weights, config: TextConfig, attention_mask=None):
    """The text tower up to its pooled state: the final-LN state at the end-of-text token.
    input_ids int [B, T] -> [B, D].

    Attention is causal, so padding after the end-of-text token never reaches the pooled state;
    attention_mask int [B, T] (1 = token, 0 = padding) also hides padded keys, as transformers
    does."""
    B = input_ids.shape[0]
    pooled_at = pool_positions(input_ids, config.eos_token_id)                 # [B]
    mask = None
    if attention_mask is not None:
        mask = attention_mask.astype(bool)[:, None, None, :]                   # [B, 1, 1, T]
    x = text_embeddings(input_ids, weights, "text_model.embeddings")          # [B, T, D]
    x = encoder(x, weights, "text_model.encoder", config, causal=True, mask=mask)
    x = layer_norm(x, weights, "text_model.final_layer_norm", config.layer_norm_eps)
    return x[np.arange(B), pooled_at]                                          # [B, D]


def text_features(input_ids, weights, config: TextConfig, attention_mask=None):
    """Text tower + projection into the shared space (not yet normalised).
    input_ids int [B, T] -> [B, E]."""
    pooled = text_model(input_ids, weights, config, attention_mask)            # [B, D]
    with kernels.scope("text_projection"):
        return linear(pooled, weights, "text_projection")                      # [B, E]


# ---------------------------------------------------------------------------------------------
# the shared space: similarity and the contrastive loss
# ---------------------------------------------------------------------------------------------
def l2_normalize(x):
    """Rows scaled to unit length.  x [B, E] -> [B, E].  Dividing by the row's largest |entry|
    first keeps the squares finite for huge embeddings (float32 squares overflow past ~1.8e19)."""
    x = x / np.abs(x).max(axis=-1, keepdims=True)                              # [B, E]
    return x / np.sqrt((x * x).sum(axis=-1, keepdims=True))                    # [B, E]


def similarity(image_embeds, text_embeds, logit_scale):
    """Scaled cosine similarity of every image with every text.  image_embeds [Bi, E],
    text_embeds [Bt, E] (the projected features, normalised here); ``logit_scale`` is stored in
    log space (exp(logit_scale) = 1 / the temperature, clipped at 100 in training).
    -> logits_per_image [Bi, Bt], logits_per_text [Bt, Bi] (its transpose)."""
    with kernels.scope("logit_scale"):
        img = l2_normalize(image_embeds)                                       # [Bi, E]
        txt = l2_normalize(text_embeds)                                        # [Bt, E]
        cosine = kernels.matmul(txt, ops.contiguous(img.T))                    # [Bt, Bi]
        logits_per_text = np.exp(logit_scale) * cosine                         # [Bt, Bi]
        return ops.contiguous(logits_per_text.T), logits_per_text


def cross_entropy_to_diagonal(logits):
    """Mean cross-entropy of each row against the class on the diagonal (row i's target is i),
    with log-sum-exp so huge logits stay finite.  logits [B, B] -> scalar."""
    n = np.arange(logits.shape[0])
    top = logits.max(axis=1, keepdims=True)                                    # [B, 1]
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))                 # [B]
    return (lse - logits[n, n]).mean()


def contrastive_loss(image_embeds, text_embeds, logit_scale):
    """CLIP's symmetric cross-entropy (the paper's Figure 3): pair i of the batch is the positive
    for row i and for column i of the similarity matrix.

        logits = exp(logit_scale) · normalise(image) · normalise(text)ᵀ      [B, B]
        loss   = (CE(logits, rows -> i) + CE(logitsᵀ, rows -> i)) / 2

    image_embeds [B, E], text_embeds [B, E]; ``logit_scale`` is the log of the inverse
    temperature, as CLIP stores it (exp is taken here).  Runs in the inputs' dtype: the public
    ``clip.contrastive_loss`` checks its inputs and calls this in float64."""
    img = l2_normalize(image_embeds)                                           # [B, E]
    txt = l2_normalize(text_embeds)                                            # [B, E]
    logits = np.exp(logit_scale) * (img @ txt.T)                               # [B, B]
    return 0.5 * (cross_entropy_to_diagonal(logits) + cross_entropy_to_diagonal(logits.T))
