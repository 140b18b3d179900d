"""Segment Anything (SAM): a ViT image encoder run once per image, a prompt encoder for points,
boxes and masks, and a light two-way-transformer mask decoder run once per prompt.

The forward pass follows Hugging Face ``transformers``' ``SamModel`` (itself a port of Meta's
``segment_anything``) so that a checkpoint saved by ``SamModel.save_pretrained`` gives the same
image embeddings, low-resolution mask logits and IoU scores.  Weights are looked up by their HF
names, e.g. ``vision_encoder.layers.3.attn.qkv.weight``; every block runs inside
``kernels.scope(<that module path>)`` so profiles and the cost model use the same names.

Glossary (shapes in comments use these):
    B   images                       P   prompts per image (HF's "point batch")
    S   input image side (1024)      E   embedding grid side, S / patch (64)
    D   vision width (768..1280)     C   prompt / decoder width (256)
    H   heads                        Dh  head width
    ws  window side (14)             nW  windows per image
    N   points per prompt            T   decoder tokens: 1 IoU + M mask tokens + sparse prompts
    M   mask tokens (num_multimask_outputs + 1 = 4)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from .. import io, kernels, ops
from . import check_fits

__all__ = [
    "VisionConfig", "PromptEncoderConfig", "MaskDecoderConfig", "Config", "PRESETS", "count_params",
    "weight_shapes", "init_weights", "from_pretrained", "from_preset", "Sam", "SamOutput", "SamPredictor",
    "get_rel_pos", "preprocess", "transform_coords", "postprocess_masks", "demo", "add_run_arguments",
    "run_cli", "IMAGE_MEAN", "IMAGE_STD",
]

# ImageNet statistics in 0..1 units, as SAM's image processor uses them
IMAGE_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGE_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# transformers' SamProcessor pads ragged point lists with this label; such points embed to zero
PAD_LABEL = -10
VALID_LABELS = (-10, -1, 0, 1)


# =============================================================================================
# configuration
# =============================================================================================
def _from_dict(cls, d: dict, what: str):
    """Build a config dataclass from the matching keys of an HF config dict (extra keys ignored)."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise TypeError(f"{what} must be a dict (a section of config.json), got {type(d).__name__}")
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


def _side(v, what: str) -> int:
    """HF allows image_size / patch_size as an int or a square pair; SAM only uses squares."""
    if isinstance(v, (list, tuple)):
        if len(v) != 2 or v[0] != v[1]:
            raise ValueError(f"{what} must be an int or a square pair, got {v!r}")
        v = v[0]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{what} must be a positive integer, got {v!r}")
    return int(v)


@dataclass
class VisionConfig:
    """``vision_config`` of an HF SamConfig (defaults as transformers': the ViT-B image encoder)."""
    hidden_size: int = 768
    output_channels: int = 256
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 1024
    patch_size: int = 16
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    mlp_ratio: float = 4.0
    use_abs_pos: bool = True
    use_rel_pos: bool = True
    window_size: int = 14
    global_attn_indexes: tuple = (2, 5, 8, 11)
    num_pos_feats: int = 128
    mlp_dim: int | None = None

    def __post_init__(self):
        self.image_size = _side(self.image_size, "vision_config.image_size")
        self.patch_size = _side(self.patch_size, "vision_config.patch_size")
        self.global_attn_indexes = tuple(int(i) for i in self.global_attn_indexes)
        if self.mlp_dim is None:                       # HF: int(hidden_size * mlp_ratio)
            self.mlp_dim = int(self.hidden_size * self.mlp_ratio)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"vision_config: hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"vision_config: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.window_size < 0:
            raise ValueError(f"vision_config: window_size must be >= 0, got {self.window_size}")
        if self.hidden_act not in ops.ACTIVATIONS:
            raise ValueError(f"vision_config: unknown hidden_act {self.hidden_act!r}; known: {', '.join(ops.ACTIVATIONS)}")

    @property
    def grid(self) -> int:
        """E: patches per side."""
        return self.image_size // self.patch_size

    def layer_window(self, i: int) -> int:
        """Window side of block i; 0 means global attention over the whole grid."""
        return 0 if i in self.global_attn_indexes else self.window_size


@dataclass
class PromptEncoderConfig:
    """``prompt_encoder_config`` of an HF SamConfig."""
    hidden_size: int = 256
    image_size: int = 1024
    patch_size: int = 16
    mask_input_channels: int = 16
    num_point_embeddings: int = 4
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6

    def __post_init__(self):
        self.image_size = _side(self.image_size, "prompt_encoder_config.image_size")
        self.patch_size = _side(self.patch_size, "prompt_encoder_config.patch_size")
        if self.mask_input_channels % 4:
            raise ValueError(f"prompt_encoder_config: mask_input_channels must be a multiple of 4, got {self.mask_input_channels}")
        if self.num_point_embeddings != 4:
            raise ValueError("prompt_encoder_config: SAM uses exactly 4 point embeddings "
                             f"(background, foreground, box corner 1, box corner 2), got {self.num_point_embeddings}")

    @property
    def image_embedding_size(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class MaskDecoderConfig:
    """``mask_decoder_config`` of an HF SamConfig."""
    hidden_size: int = 256
    hidden_act: str = "relu"
    mlp_dim: int = 2048
    num_hidden_layers: int = 2
    num_attention_heads: int = 8
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    layer_norm_eps: float = 1e-6

    def __post_init__(self):
        widths = (self.hidden_size, self.hidden_size // self.attention_downsample_rate, self.hidden_size // 2)
        if any(w % self.num_attention_heads for w in widths):
            raise ValueError(f"mask_decoder_config: num_attention_heads {self.num_attention_heads} must divide the "
                             f"attention widths {widths} (hidden_size, / attention_downsample_rate, / 2)")
        if self.hidden_size % 8:
            raise ValueError(f"mask_decoder_config: hidden_size must be a multiple of 8 (upscaling to C/4 then C/8), got {self.hidden_size}")
        if self.iou_head_depth < 2:
            raise ValueError(f"mask_decoder_config: iou_head_depth must be >= 2, got {self.iou_head_depth}")
        if self.hidden_act not in ops.ACTIVATIONS:
            raise ValueError(f"mask_decoder_config: unknown hidden_act {self.hidden_act!r}")

    @property
    def num_mask_tokens(self) -> int:
        return self.num_multimask_outputs + 1


@dataclass
class Config:
    """An HF ``SamConfig``: three sub-configs, field names as in config.json."""
    vision_config: VisionConfig = field(default_factory=VisionConfig)
    prompt_encoder_config: PromptEncoderConfig = field(default_factory=PromptEncoderConfig)
    mask_decoder_config: MaskDecoderConfig = field(default_factory=MaskDecoderConfig)

    def __post_init__(self):
        v, p, m = self.vision_config, self.prompt_encoder_config, self.mask_decoder_config
        if not (v.output_channels == p.hidden_size == m.hidden_size == 2 * v.num_pos_feats):
            raise ValueError("SAM needs vision_config.output_channels == prompt_encoder_config.hidden_size == "
                             "mask_decoder_config.hidden_size == 2 * vision_config.num_pos_feats, got "
                             f"{v.output_channels}, {p.hidden_size}, {m.hidden_size}, 2 * {v.num_pos_feats}")
        if p.image_embedding_size != v.grid or p.image_size != v.image_size:
            raise ValueError(f"prompt_encoder_config image_size/patch_size ({p.image_size}/{p.patch_size}) must match "
                             f"vision_config's ({v.image_size}/{v.patch_size})")

    @classmethod
    def from_hf(cls, d: dict) -> "Config":
        """Parse an HF ``config.json`` dict (``model_type`` "sam")."""
        if not isinstance(d, dict):
            raise TypeError(f"config must be a dict, got {type(d).__name__}")
        if d.get("model_type", "sam") != "sam":
            raise ValueError(f"config.json describes model_type {d.get('model_type')!r}, not 'sam'")
        return cls(_from_dict(VisionConfig, d.get("vision_config"), "vision_config"),
                   _from_dict(PromptEncoderConfig, d.get("prompt_encoder_config"), "prompt_encoder_config"),
                   _from_dict(MaskDecoderConfig, d.get("mask_decoder_config"), "mask_decoder_config"))

    def to_hf(self) -> dict:
        """The config.json dict that ``transformers.SamConfig(**d)`` accepts."""
        v = asdict(self.vision_config)
        v["global_attn_indexes"] = list(v["global_attn_indexes"])
        return {"model_type": "sam", "vision_config": v,
                "prompt_encoder_config": asdict(self.prompt_encoder_config),
                "mask_decoder_config": asdict(self.mask_decoder_config)}


def _sam_config(hidden_size, layers, heads, global_attn_indexes) -> Config:
    return Config(VisionConfig(hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=heads,
                               global_attn_indexes=tuple(global_attn_indexes)))


PRESETS: dict[str, Config] = {
    # facebook/sam-vit-{base,large,huge}: only the image encoder differs
    "sam-vit-b": _sam_config(768, 12, 12, (2, 5, 8, 11)),
    "sam-vit-l": _sam_config(1024, 24, 16, (5, 11, 17, 23)),
    "sam-vit-h": _sam_config(1280, 32, 16, (7, 15, 23, 31)),
    # a toy for demos and tests: an 8x8 grid with window 3 (padded to 9x9) and one global block
    "sam-tiny": Config(
        VisionConfig(hidden_size=32, output_channels=32, num_hidden_layers=3, num_attention_heads=4, image_size=128,
                     patch_size=16, window_size=3, global_attn_indexes=(1,), num_pos_feats=16, mlp_dim=64),
        PromptEncoderConfig(hidden_size=32, image_size=128, patch_size=16, mask_input_channels=8),
        MaskDecoderConfig(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32)),
}

# the random-Fourier matrix: a trained *buffer* in Meta's release, a (tied) parameter in transformers
GAUSSIAN = "shared_image_embedding.positional_embedding"
GAUSSIAN_ALIAS = "prompt_encoder.shared_embedding.positional_embedding"
# width divisor of the two-way blocks' cross-attentions (see weight_shapes)
BLOCK_DOWNSAMPLE_RATE = 2


def weight_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Every tensor of the model, by HF name -> shape (the tied gaussian matrix listed once)."""
    v, p, m = config.vision_config, config.prompt_encoder_config, config.mask_decoder_config
    D, E, C = v.hidden_size, v.grid, m.hidden_size
    s: dict[str, tuple[int, ...]] = {GAUSSIAN: (2, v.num_pos_feats)}

    def linear(name, dout, din, bias=True):
        s[f"{name}.weight"] = (dout, din)
        if bias:
            s[f"{name}.bias"] = (dout,)

    def norm(name, d):
        s[f"{name}.weight"] = (d,)
        s[f"{name}.bias"] = (d,)

    # image encoder
    ve = "vision_encoder"
    s[f"{ve}.patch_embed.projection.weight"] = (D, v.num_channels, v.patch_size, v.patch_size)
    s[f"{ve}.patch_embed.projection.bias"] = (D,)
    if v.use_abs_pos:
        s[f"{ve}.pos_embed"] = (1, E, E, D)
    Dh = D // v.num_attention_heads
    for i in range(v.num_hidden_layers):
        L = f"{ve}.layers.{i}"
        norm(f"{L}.layer_norm1", D)
        linear(f"{L}.attn.qkv", 3 * D, D, v.qkv_bias)
        linear(f"{L}.attn.proj", D, D)
        if v.use_rel_pos:
            side = v.layer_window(i) or E
            s[f"{L}.attn.rel_pos_h"] = (2 * side - 1, Dh)
            s[f"{L}.attn.rel_pos_w"] = (2 * side - 1, Dh)
        norm(f"{L}.layer_norm2", D)
        linear(f"{L}.mlp.lin1", v.mlp_dim, D)
        linear(f"{L}.mlp.lin2", D, v.mlp_dim)
    s[f"{ve}.neck.conv1.weight"] = (v.output_channels, D, 1, 1)
    norm(f"{ve}.neck.layer_norm1", v.output_channels)
    s[f"{ve}.neck.conv2.weight"] = (v.output_channels, v.output_channels, 3, 3)
    norm(f"{ve}.neck.layer_norm2", v.output_channels)

    # prompt encoder
    pe, mc = "prompt_encoder", p.mask_input_channels
    s[f"{pe}.mask_embed.conv1.weight"] = (mc // 4, 1, 2, 2)
    s[f"{pe}.mask_embed.conv1.bias"] = (mc // 4,)
    s[f"{pe}.mask_embed.conv2.weight"] = (mc, mc // 4, 2, 2)
    s[f"{pe}.mask_embed.conv2.bias"] = (mc,)
    s[f"{pe}.mask_embed.conv3.weight"] = (p.hidden_size, mc, 1, 1)
    s[f"{pe}.mask_embed.conv3.bias"] = (p.hidden_size,)
    norm(f"{pe}.mask_embed.layer_norm1", mc // 4)
    norm(f"{pe}.mask_embed.layer_norm2", mc)
    s[f"{pe}.no_mask_embed.weight"] = (1, p.hidden_size)
    for j in range(p.num_point_embeddings):
        s[f"{pe}.point_embed.{j}.weight"] = (1, p.hidden_size)
    s[f"{pe}.not_a_point_embed.weight"] = (1, p.hidden_size)

    # mask decoder
    md, Mt = "mask_decoder", m.num_mask_tokens
    s[f"{md}.iou_token.weight"] = (1, C)
    s[f"{md}.mask_tokens.weight"] = (Mt, C)

    def attention(name, downsample):
        inner = C // downsample
        for proj in ("q_proj", "k_proj", "v_proj"):
            linear(f"{name}.{proj}", inner, C)
        linear(f"{name}.out_proj", C, inner)

    tr = f"{md}.transformer"
    for i in range(m.num_hidden_layers):
        L = f"{tr}.layers.{i}"
        attention(f"{L}.self_attn", 1)
        norm(f"{L}.layer_norm1", C)
        # transformers builds the blocks' cross-attentions with the default rate 2 whatever the config
        # says (only the final attention reads attention_downsample_rate); every released checkpoint uses 2
        attention(f"{L}.cross_attn_token_to_image", BLOCK_DOWNSAMPLE_RATE)
        norm(f"{L}.layer_norm2", C)
        linear(f"{L}.mlp.lin1", m.mlp_dim, C)
        linear(f"{L}.mlp.lin2", C, m.mlp_dim)
        norm(f"{L}.layer_norm3", C)
        norm(f"{L}.layer_norm4", C)
        attention(f"{L}.cross_attn_image_to_token", BLOCK_DOWNSAMPLE_RATE)
    attention(f"{tr}.final_attn_token_to_image", m.attention_downsample_rate)
    norm(f"{tr}.layer_norm_final_attn", C)
    s[f"{md}.upscale_conv1.weight"] = (C, C // 4, 2, 2)
    s[f"{md}.upscale_conv1.bias"] = (C // 4,)
    s[f"{md}.upscale_conv2.weight"] = (C // 4, C // 8, 2, 2)
    s[f"{md}.upscale_conv2.bias"] = (C // 8,)
    norm(f"{md}.upscale_layer_norm", C // 4)

    def feed_forward(name, din, dhidden, dout, depth):
        linear(f"{name}.proj_in", dhidden, din)
        for j in range(depth - 2):
            linear(f"{name}.layers.{j}", dhidden, dhidden)
        linear(f"{name}.proj_out", dout, dhidden)

    for j in range(Mt):
        feed_forward(f"{md}.output_hypernetworks_mlps.{j}", C, C, C // 8, 3)
    feed_forward(f"{md}.iou_prediction_head", C, m.iou_head_hidden_dim, Mt, m.iou_head_depth)
    return s


def count_params(config: Config, include_positional_gaussian: bool = False) -> int:
    """Exact parameter count.

    Default: Meta's official convention (ViT-H 641,090,608), in which the 2 x num_pos_feats random
    Fourier matrix is a registered *buffer*, not a parameter.  ``include_positional_gaussian=True``
    counts it, which is what ``sum(p.numel() for p in transformers.SamModel(cfg).parameters())``
    gives (there it is a parameter, tied between the model and its prompt encoder, counted once)."""
    total = sum(math.prod(shape) for shape in weight_shapes(config).values())
    return total if include_positional_gaussian else total - 2 * config.vision_config.num_pos_feats


def init_weights(config: Config, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights with the real shapes: N(0, 0.02) matrices, zero biases, unit norms,
    and a N(0, 1) Fourier matrix (Meta's PositionEmbeddingRandom scale)."""
    rng = np.random.default_rng(seed)
    w = {}
    for name, shape in weight_shapes(config).items():
        leaf = name.rsplit(".", 1)[-1]
        is_norm = "layer_norm" in name
        if name == GAUSSIAN:
            w[name] = rng.standard_normal(shape, dtype=np.float32)
        elif is_norm and leaf == "weight":
            w[name] = np.ones(shape, np.float32)
        elif leaf == "bias":
            w[name] = np.zeros(shape, np.float32)
        else:
            w[name] = np.float32(0.02) * rng.standard_normal(shape, dtype=np.float32)
    return w


# =============================================================================================
# small helpers
# =============================================================================================
def _w(weights, name: str) -> np.ndarray:
    try:
        return np.asarray(weights[name], dtype=np.float32)
    except KeyError:
        raise KeyError(f"SAM weights have no tensor named {name!r}") from None


def _linear(x, weights, name, bias=True):
    return ops.linear(x, _w(weights, f"{name}.weight"), _w(weights, f"{name}.bias") if bias else None)


def _layer_norm(x, weights, name, eps):
    return kernels.layer_norm(x, _w(weights, f"{name}.weight"), _w(weights, f"{name}.bias"), eps)


def _channel_norm(x, weights, name, eps=1e-6):
    """SamLayerNorm(data_format="channels_first"); its eps is always the class default 1e-6."""
    return ops.channel_layer_norm(x, _w(weights, f"{name}.weight"), _w(weights, f"{name}.bias"), eps)


def _feed_forward(x, weights, name, depth):
    """SamFeedForward: proj_in, (depth - 2) hidden layers, proj_out, ReLU between.  x [..., Din]."""
    x = ops.relu(_linear(x, weights, f"{name}.proj_in"))
    for j in range(depth - 2):
        x = ops.relu(_linear(x, weights, f"{name}.layers.{j}"))
    return _linear(x, weights, f"{name}.proj_out")


# =============================================================================================
# image encoder
# =============================================================================================
def get_rel_pos(q_size: int, k_size: int, rel_pos: np.ndarray) -> np.ndarray:
    """Relative-position embeddings for every (query, key) pair along one axis -> [q_size, k_size, Dh].

    rel_pos [L, Dh] holds one row per offset -(L-1)/2 .. +(L-1)/2; when L != 2·max(q, k) - 1 it is
    first resized along L by linear interpolation (PyTorch's ``interpolate(mode="linear")``), and
    when q_size != k_size the shorter side's coordinates are stretched to the longer one's."""
    span = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != span:
        rel_pos = ops.interpolate_bilinear(rel_pos.T[:, None, :], (1, span))[:, 0, :].T   # [span, Dh]
    q_coords = np.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = np.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)        # [q, k], >= 0
    return rel_pos[relative.astype(np.int64)]                                             # [q, k, Dh]


def _decomposed_rel_pos(q, rel_pos_h, rel_pos_w, size: tuple[int, int]) -> np.ndarray:
    """MViTv2's decomposed relative-position bias -> [N, H, h·w, h·w].

    bias[(y, x), (ky, kx)] = q(y, x) · Rh[y, ky] + q(y, x) · Rw[x, kx].  q [N, H, h·w, Dh] is the
    *unscaled* query (the reference scales q only inside the q·k product)."""
    h, w = size
    N, H, _, Dh = q.shape
    Rh = get_rel_pos(h, h, rel_pos_h)                                                    # [h, h, Dh]
    Rw = get_rel_pos(w, w, rel_pos_w)                                                    # [w, w, Dh]
    q5 = q.reshape(N, H, h, w, Dh)                                                       # [N, H, h, w, Dh]
    # one batched product per query row / column, so the kernels dispatch (and profile) them
    qy = q5.transpose(2, 0, 1, 3, 4).reshape(h, N * H * w, Dh)                           # [h, N·H·w, Dh]
    rel_h = kernels.matmul(qy, np.ascontiguousarray(Rh.transpose(0, 2, 1)))              # [h, N·H·w, h]
    rel_h = rel_h.reshape(h, N, H, w, h).transpose(1, 2, 0, 3, 4)                        # [N, H, h, w, kh]
    qx = q5.transpose(3, 0, 1, 2, 4).reshape(w, N * H * h, Dh)                           # [w, N·H·h, Dh]
    rel_w = kernels.matmul(qx, np.ascontiguousarray(Rw.transpose(0, 2, 1)))              # [w, N·H·h, w]
    rel_w = rel_w.reshape(w, N, H, h, w).transpose(1, 2, 3, 0, 4)                        # [N, H, h, w, kw]
    bias = rel_h[..., :, None] + rel_w[..., None, :]                                     # [N, H, h, w, kh, kw]
    return bias.reshape(N, H, h * w, h * w)                                              # [N, H, h·w, h·w]


def _vision_attention(x, weights, name, config: VisionConfig):
    """Self-attention over a grid (a window or the whole image).  x [N, h, w, D] -> [N, h, w, D]."""
    N, h, w, D = x.shape
    H = config.num_attention_heads
    Dh = D // H
    qkv = _linear(x, weights, f"{name}.qkv", config.qkv_bias)                             # [N, h, w, 3D]
    qkv = qkv.reshape(N, h * w, 3, H, Dh).transpose(2, 0, 3, 1, 4)                       # [3, N, H, h·w, Dh]
    q, k, v = (np.ascontiguousarray(t) for t in qkv)
    bias = None
    if config.use_rel_pos:
        bias = _decomposed_rel_pos(q, _w(weights, f"{name}.rel_pos_h"), _w(weights, f"{name}.rel_pos_w"), (h, w))
    out = kernels.attention(q, k, v, scale=Dh ** -0.5, bias=bias)                        # [N, H, h·w, Dh]
    out = out.reshape(N, H, h, w, Dh).transpose(0, 2, 3, 1, 4).reshape(N, h, w, D)     # [N, h, w, D]
    return _linear(out, weights, f"{name}.proj")


def window_partition(x, ws: int):
    """Cut x [B, E, E, D] into ws×ws windows, zero-padding the grid to a multiple of ws first (the
    padded tokens take part in attention unmasked, as in the reference).
    -> windows [B·nW, ws, ws, D], padded side (Ep_h, Ep_w)."""
    B, h, w, D = x.shape
    ph, pw = -h % ws, -w % ws
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))                                 # [B, Ep, Ep, D]
    Hp, Wp = h + ph, w + pw
    x = x.reshape(B, Hp // ws, ws, Wp // ws, ws, D).transpose(0, 1, 3, 2, 4, 5)        # [B, Hp/ws, Wp/ws, ws, ws, D]
    return x.reshape(-1, ws, ws, D), (Hp, Wp)                                            # [B·nW, ws, ws, D]


def window_unpartition(windows, ws: int, padded: tuple[int, int], size: tuple[int, int]):
    """Inverse of :func:`window_partition`: windows [B·nW, ws, ws, D] -> [B, h, w, D], padding dropped."""
    (Hp, Wp), (h, w) = padded, size
    B = windows.shape[0] // ((Hp // ws) * (Wp // ws))
    x = windows.reshape(B, Hp // ws, Wp // ws, ws, ws, -1).transpose(0, 1, 3, 2, 4, 5)  # [B, Hp/ws, ws, Wp/ws, ws, D]
    return np.ascontiguousarray(x.reshape(B, Hp, Wp, -1)[:, :h, :w, :])                  # [B, h, w, D]


def _vision_layer(x, weights, i: int, config: VisionConfig):
    """Pre-norm ViT block with windowed or global attention.  x [B, E, E, D] -> [B, E, E, D]."""
    name, ws = f"vision_encoder.layers.{i}", config.layer_window(i)
    with kernels.scope(f"{name}.layer_norm1"):
        h = _layer_norm(x, weights, f"{name}.layer_norm1", config.layer_norm_eps)
    with kernels.scope(f"{name}.attn"):
        if ws > 0:
            windows, padded = window_partition(h, ws)                                     # [B·nW, ws, ws, D]
            h = window_unpartition(_vision_attention(windows, weights, f"{name}.attn", config), ws, padded, x.shape[1:3])
        else:
            h = _vision_attention(h, weights, f"{name}.attn", config)
    x = x + h
    with kernels.scope(f"{name}.layer_norm2"):
        h = _layer_norm(x, weights, f"{name}.layer_norm2", config.layer_norm_eps)
    with kernels.scope(f"{name}.mlp"):
        h = _linear(ops.ACTIVATIONS[config.hidden_act](_linear(h, weights, f"{name}.mlp.lin1")), weights, f"{name}.mlp.lin2")
    return x + h


def image_encoder(pixel_values, weights, config: VisionConfig) -> np.ndarray:
    """ViT image encoder + neck.  pixel_values [B, 3, S, S] -> image embeddings [B, C, E, E]."""
    ve = "vision_encoder"
    with kernels.scope(f"{ve}.patch_embed"):
        x = ops.conv2d(pixel_values, _w(weights, f"{ve}.patch_embed.projection.weight"),
                       _w(weights, f"{ve}.patch_embed.projection.bias"), stride=config.patch_size)   # [B, D, E, E]
    x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))                                    # [B, E, E, D]
    if config.use_abs_pos:
        x = x + _w(weights, f"{ve}.pos_embed")
    for i in range(config.num_hidden_layers):
        x = _vision_layer(x, weights, i, config)
    with kernels.scope(f"{ve}.neck"):
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))                                # [B, D, E, E]
        x = ops.conv2d(x, _w(weights, f"{ve}.neck.conv1.weight"))                       # [B, C, E, E]
        x = _channel_norm(x, weights, f"{ve}.neck.layer_norm1")
        x = ops.conv2d(x, _w(weights, f"{ve}.neck.conv2.weight"), padding=1)            # [B, C, E, E]
        x = _channel_norm(x, weights, f"{ve}.neck.layer_norm2")
    return np.ascontiguousarray(x, dtype=np.float32)


# =============================================================================================
# prompt encoder
# =============================================================================================
def fourier_encode(coords01, gaussian) -> np.ndarray:
    """Random-Fourier positional encoding of points in [0, 1]².  coords01 [..., 2] (x, y),
    gaussian [2, F] -> [..., 2F] = [sin(2π (2c-1) G), cos(2π (2c-1) G)].

    The float32 operations follow the reference's order: with a large Fourier scale the sine's
    argument reaches the hundreds, where a reordered product already moves the 5th decimal."""
    lead = coords01.shape[:-1]
    c = (2 * coords01.astype(np.float32) - 1).reshape(-1, 2)                             # [n, 2]
    proj = kernels.matmul(c, gaussian).reshape(*lead, gaussian.shape[1])                 # [..., F]
    proj = np.float32(2 * np.pi) * proj
    return np.concatenate([np.sin(proj), np.cos(proj)], axis=-1)                         # [..., 2F]


def image_positional_embeddings(weights, config: Config) -> np.ndarray:
    """Encoding of every embedding-grid cell centre -> [C, E, E]."""
    E = config.prompt_encoder_config.image_embedding_size
    centres = (np.arange(E, dtype=np.float32) + np.float32(0.5)) / np.float32(E)         # [E]
    grid = np.stack(np.broadcast_arrays(centres[None, :], centres[:, None]), axis=-1)   # [E, E, 2] (x, y)
    with kernels.scope("shared_image_embedding"):
        pe = fourier_encode(grid, _w(weights, GAUSSIAN))                                 # [E, E, C]
    return np.ascontiguousarray(pe.transpose(2, 0, 1))                                   # [C, E, E]


def _embed_points(points, labels, pad: bool, weights, config: Config):
    """points [B, P, N, 2] (model-input pixels), labels [B, P, N] -> [B, P, N(+1), C].

    Labels: 1 foreground, 0 background, -1 "not a point" (its encoding is replaced by a learned
    embedding), -10 transformers' padding (embeds to zero).  Without a box prompt one -1 point is
    appended, as the reference does, so the decoder always sees a "no box" token."""
    pe = "prompt_encoder"
    S = config.prompt_encoder_config.image_size
    points = points.astype(np.float32) + np.float32(0.5)                                 # pixel centres
    if pad:
        B, P = points.shape[:2]
        points = np.concatenate([points, np.zeros((B, P, 1, 2), np.float32)], axis=2)   # [B, P, N+1, 2]
        labels = np.concatenate([labels, -np.ones((B, P, 1), labels.dtype)], axis=2)    # [B, P, N+1]
    emb = fourier_encode(points / np.float32(S), _w(weights, GAUSSIAN))                  # [B, P, N', C]
    lab = labels[..., None]
    emb = np.where(lab == -1, _w(weights, f"{pe}.not_a_point_embed.weight"), emb)
    emb = np.where(lab == PAD_LABEL, np.float32(0), emb)
    emb = np.where(lab == 0, emb + _w(weights, f"{pe}.point_embed.0.weight"), emb)
    emb = np.where(lab == 1, emb + _w(weights, f"{pe}.point_embed.1.weight"), emb)
    return emb.astype(np.float32)


def _embed_boxes(boxes, weights, config: Config):
    """boxes [B, P, 4] (x0, y0, x1, y1) -> two corner tokens [B, P, 2, C]."""
    pe = "prompt_encoder"
    S = config.prompt_encoder_config.image_size
    corners = (boxes.astype(np.float32) + np.float32(0.5)).reshape(*boxes.shape[:2], 2, 2)   # [B, P, 2, 2]
    emb = fourier_encode(corners / np.float32(S), _w(weights, GAUSSIAN))                  # [B, P, 2, C]
    emb[:, :, 0] += _w(weights, f"{pe}.point_embed.2.weight")[0]
    emb[:, :, 1] += _w(weights, f"{pe}.point_embed.3.weight")[0]
    return emb


def _embed_mask(masks, weights, config: PromptEncoderConfig):
    """Dense mask prompt: two stride-2 2×2 convs with channel LN + GELU, then a 1×1 conv.
    masks [B, 1, 4E, 4E] -> [B, C, E, E]."""
    me = "prompt_encoder.mask_embed"
    act = ops.ACTIVATIONS[config.hidden_act]
    x = ops.conv2d(masks, _w(weights, f"{me}.conv1.weight"), _w(weights, f"{me}.conv1.bias"), stride=2)   # [B, c/4, 2E, 2E]
    x = act(_channel_norm(x, weights, f"{me}.layer_norm1", config.layer_norm_eps))
    x = ops.conv2d(x, _w(weights, f"{me}.conv2.weight"), _w(weights, f"{me}.conv2.bias"), stride=2)       # [B, c, E, E]
    x = act(_channel_norm(x, weights, f"{me}.layer_norm2", config.layer_norm_eps))
    return ops.conv2d(x, _w(weights, f"{me}.conv3.weight"), _w(weights, f"{me}.conv3.bias"))             # [B, C, E, E]


def prompt_encoder(points, labels, boxes, masks, weights, config: Config):
    """Sparse tokens [B, P, N', C] (or None) and dense embeddings [B or 1, C, E, E]."""
    pc = config.prompt_encoder_config
    with kernels.scope("prompt_encoder"):
        sparse, B = None, 1
        if points is not None:
            B = points.shape[0]
            sparse = _embed_points(points, labels, boxes is None, weights, config)
        if boxes is not None:
            B = boxes.shape[0]
            box_tokens = _embed_boxes(boxes, weights, config)
            sparse = box_tokens if sparse is None else np.concatenate([sparse, box_tokens], axis=2)   # [B, P, N'+2, C]
        if masks is not None:
            with kernels.scope("mask_embed"):
                dense = _embed_mask(masks.astype(np.float32), weights, pc)
        else:
            E = pc.image_embedding_size
            no_mask = _w(weights, "prompt_encoder.no_mask_embed.weight").reshape(1, -1, 1, 1)   # [1, C, 1, 1]
            dense = np.broadcast_to(no_mask, (B, pc.hidden_size, E, E))                   # [B, C, E, E]
    return sparse, dense


# =============================================================================================
# mask decoder
# =============================================================================================
def _decoder_attention(q, k, v, weights, name, config: MaskDecoderConfig):
    """SamAttention: project (optionally to a narrower width), attend, project back.
    q [N, Tq, C], k/v [N, Tk, C] -> [N, Tq, C]."""
    H = config.num_attention_heads
    with kernels.scope(name):
        q = _linear(q, weights, f"{name}.q_proj")                                        # [N, Tq, Ci]
        k = _linear(k, weights, f"{name}.k_proj")                                        # [N, Tk, Ci]
        v = _linear(v, weights, f"{name}.v_proj")
        N, Tq, Ci = q.shape
        Tk = k.shape[1]
        heads = lambda t, T: np.ascontiguousarray(t.reshape(N, T, H, Ci // H).transpose(0, 2, 1, 3))   # [N, H, T, Dh]
        out = kernels.attention(heads(q, Tq), heads(k, Tk), heads(v, Tk))               # [N, H, Tq, Dh]
        out = out.transpose(0, 2, 1, 3).reshape(N, Tq, Ci)                               # [N, Tq, Ci]
        return _linear(out, weights, f"{name}.out_proj")                                 # [N, Tq, C]


def _two_way_block(queries, keys, query_pe, key_pe, weights, i: int, config: MaskDecoderConfig):
    """One two-way block (post-norm): token self-attention, tokens -> image, token MLP, image -> tokens.

    The positional encodings are added to queries and keys only, never to values.  Block 0's
    self-attention takes the tokens as they are and *replaces* them (no residual): at that point
    the tokens are their own positional encoding.  queries [N, T, C], keys [N, E², C]."""
    L = f"mask_decoder.transformer.layers.{i}"
    eps = config.layer_norm_eps
    if i == 0:
        queries = _decoder_attention(queries, queries, queries, weights, f"{L}.self_attn", config)
    else:
        q = queries + query_pe
        queries = queries + _decoder_attention(q, q, queries, weights, f"{L}.self_attn", config)
    with kernels.scope(f"{L}.layer_norm1"):
        queries = _layer_norm(queries, weights, f"{L}.layer_norm1", eps)

    q, k = queries + query_pe, keys + key_pe
    queries = queries + _decoder_attention(q, k, keys, weights, f"{L}.cross_attn_token_to_image", config)
    with kernels.scope(f"{L}.layer_norm2"):
        queries = _layer_norm(queries, weights, f"{L}.layer_norm2", eps)

    with kernels.scope(f"{L}.mlp"):
        act = ops.ACTIVATIONS[config.hidden_act]
        queries = queries + _linear(act(_linear(queries, weights, f"{L}.mlp.lin1")), weights, f"{L}.mlp.lin2")
    with kernels.scope(f"{L}.layer_norm3"):
        queries = _layer_norm(queries, weights, f"{L}.layer_norm3", eps)

    q, k = queries + query_pe, keys + key_pe
    keys = keys + _decoder_attention(k, q, queries, weights, f"{L}.cross_attn_image_to_token", config)
    with kernels.scope(f"{L}.layer_norm4"):
        keys = _layer_norm(keys, weights, f"{L}.layer_norm4", eps)
    return queries, keys


def mask_decoder(image_embeddings, image_pe, sparse, dense, weights, config: MaskDecoderConfig,
                 multimask_output: bool = True):
    """Predict low-resolution mask logits and IoU scores.

    image_embeddings [B, C, E, E], image_pe [C, E, E], sparse [B, P, N', C] or None,
    dense [B or 1, C, E, E] -> masks [B, P, K, 4E, 4E], iou [B, P, K] with K = 3 (multimask) or 1."""
    md = "mask_decoder"
    B, C, E, _ = image_embeddings.shape
    P = sparse.shape[1] if sparse is not None else 1
    Mt = config.num_mask_tokens
    output_tokens = np.concatenate([_w(weights, f"{md}.iou_token.weight"), _w(weights, f"{md}.mask_tokens.weight")])  # [1+M, C]
    tokens = np.broadcast_to(output_tokens, (B, P, 1 + Mt, C))                           # [B, P, 1+M, C]
    if sparse is not None:
        tokens = np.concatenate([tokens, sparse], axis=2)                                # [B, P, T, C]
    tokens = np.ascontiguousarray(tokens, dtype=np.float32).reshape(B * P, -1, C)        # [N, T, C], N = B·P

    # every prompt of an image shares the image's embedding
    src = np.repeat(image_embeddings + dense, P, axis=0)                                 # [N, C, E, E]
    keys = np.ascontiguousarray(src.reshape(B * P, C, E * E).transpose(0, 2, 1))         # [N, E², C]
    key_pe = np.ascontiguousarray(image_pe.reshape(C, E * E).T)[None]                    # [1, E², C]

    queries = tokens
    for i in range(config.num_hidden_layers):
        queries, keys = _two_way_block(queries, keys, tokens, key_pe, weights, i, config)
    tr = f"{md}.transformer"
    queries = queries + _decoder_attention(queries + tokens, keys + key_pe, keys, weights,
                                           f"{tr}.final_attn_token_to_image", config)
    with kernels.scope(f"{tr}.layer_norm_final_attn"):
        # a plain nn.LayerNorm in the reference: PyTorch's default eps, not the config's
        queries = _layer_norm(queries, weights, f"{tr}.layer_norm_final_attn", 1e-5)
    iou_token, mask_tokens = queries[:, 0], queries[:, 1:1 + Mt]                        # [N, C], [N, M, C]

    x = np.ascontiguousarray(keys.transpose(0, 2, 1)).reshape(B * P, C, E, E)             # [N, C, E, E]
    with kernels.scope(f"{md}.upscale_conv1"):
        x = ops.conv_transpose2d(x, _w(weights, f"{md}.upscale_conv1.weight"), _w(weights, f"{md}.upscale_conv1.bias"),
                                 stride=2)                                               # [N, C/4, 2E, 2E]
    with kernels.scope(f"{md}.upscale_layer_norm"):
        x = ops.gelu(_channel_norm(x, weights, f"{md}.upscale_layer_norm"))             # [N, C/4, 2E, 2E]
    with kernels.scope(f"{md}.upscale_conv2"):
        x = ops.conv_transpose2d(x, _w(weights, f"{md}.upscale_conv2.weight"), _w(weights, f"{md}.upscale_conv2.bias"),
                                 stride=2)                                               # [N, C/8, 4E, 4E]
    with kernels.scope(f"{md}.activation"):
        x = ops.gelu(x)                                                                  # [N, C/8, 4E, 4E]
    hyper = []
    for j in range(Mt):
        with kernels.scope(f"{md}.output_hypernetworks_mlps.{j}"):
            hyper.append(_feed_forward(mask_tokens[:, j], weights, f"{md}.output_hypernetworks_mlps.{j}", 3))
    hyper = np.stack(hyper, axis=1)                                                      # [N, M, C/8]
    side = 4 * E
    with kernels.scope(md):                      # each mask token's hyper-weights dotted with every pixel
        masks = kernels.matmul(hyper, x.reshape(B * P, C // 8, side * side))             # [N, M, 16E²]
    masks = masks.reshape(B, P, Mt, side, side)                                          # [B, P, M, 4E, 4E]
    with kernels.scope(f"{md}.iou_prediction_head"):
        iou = _feed_forward(iou_token, weights, f"{md}.iou_prediction_head", config.iou_head_depth).reshape(B, P, Mt)   # [B, P, M]
    keep = slice(1, None) if multimask_output else slice(0, 1)
    return np.ascontiguousarray(masks[:, :, keep]), np.ascontiguousarray(iou[:, :, keep])


# =============================================================================================
# input validation
# =============================================================================================
def _as_float(x, name: str, ndim: int, layout: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "fiu" or x.dtype == np.bool_:
        raise TypeError(f"{name} must be a numeric array, got dtype {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(x.shape)}")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _check_prompts(points, labels, boxes, masks, config: Config):
    """Validate prompt arrays (transformers' shapes) and return them as arrays."""
    if points is not None:
        points = np.asarray(points)
        if points.ndim != 4 or points.shape[-1] != 2:
            raise ValueError("input_points must have shape [batch, prompts, points, 2] with (x, y) coordinates, "
                             f"got {tuple(points.shape)}")
        points = _as_float(points, "input_points", 4, "[batch, prompts, points, 2]")
        if labels is None:
            labels = np.ones(points.shape[:3], np.int64)
        labels = np.asarray(labels)
        if labels.dtype.kind == "f":
            if not np.all(labels == np.round(labels)):
                raise ValueError("input_labels must be integers (1 foreground, 0 background, -1 not a point)")
            labels = labels.astype(np.int64)
        if labels.dtype.kind not in "iu":
            raise TypeError(f"input_labels must be integers, got dtype {labels.dtype}")
        if labels.shape != points.shape[:3]:
            raise ValueError(f"input_labels must give one label per point: expected shape {tuple(points.shape[:3])} "
                             f"for input_points {tuple(points.shape)}, got {tuple(labels.shape)} "
                             "(labels count != points count)")
        bad = ~np.isin(labels, VALID_LABELS)
        if bad.any():
            raise ValueError(f"input_labels values must be 1 (foreground), 0 (background) or -1 (not a point) "
                             f"(or {PAD_LABEL}, transformers' padding); got {sorted(set(labels[bad].tolist()))}")
        labels = labels.astype(np.int64)
    elif labels is not None:
        raise ValueError("input_labels were given without input_points")
    if boxes is not None:
        boxes = np.asarray(boxes)
        if boxes.ndim != 3 or boxes.shape[-1] != 4:
            raise ValueError("input_boxes must have shape [batch, boxes, 4] with 4 coordinates (x0, y0, x1, y1) per box, "
                             f"got {tuple(boxes.shape)}")
        boxes = _as_float(boxes, "input_boxes", 3, "[batch, boxes, 4]")
        if points is not None and (boxes.shape[0] != points.shape[0] or boxes.shape[1] != points.shape[1]):
            raise ValueError(f"input_boxes {tuple(boxes.shape)} must pair one box with each prompt of input_points "
                             f"{tuple(points.shape)}: the first two dimensions must match")
    if masks is not None:
        side = 4 * config.prompt_encoder_config.image_embedding_size
        masks = np.asarray(masks)
        if masks.ndim != 4 or masks.shape[1:] != (1, side, side):
            raise ValueError(f"input_masks must have shape [batch, 1, {side}, {side}] (low-resolution logits), "
                             f"got {tuple(masks.shape)}")
        masks = _as_float(masks, "input_masks", 4, f"[batch, 1, {side}, {side}]")
    return points, labels, boxes, masks


# =============================================================================================
# the model
# =============================================================================================
@dataclass
class SamOutput:
    """pred_masks [B, P, K, 4E, 4E] low-resolution logits (K = 3 or 1), iou_scores [B, P, K],
    image_embeddings [B, C, E, E] (reuse them for further prompts on the same images)."""
    pred_masks: np.ndarray
    iou_scores: np.ndarray
    image_embeddings: np.ndarray


class Sam:
    """Segment Anything over a weights mapping keyed by HF names."""

    def __init__(self, config: Config, weights):
        self.config = config
        self.weights = weights
        self._check_weights()

    def _check_weights(self):
        w = self.weights
        if GAUSSIAN not in w and GAUSSIAN_ALIAS in w:       # tied copy saved under the prompt encoder's name
            w = self.weights = _Aliased(w, {GAUSSIAN: GAUSSIAN_ALIAS})
        for name, shape in weight_shapes(self.config).items():
            if name not in w:
                raise KeyError(f"SAM weights are missing {name!r} (expected shape {shape})")
            got = tuple(w.shape_of(name)) if hasattr(w, "shape_of") else tuple(np.shape(w[name]))
            if got != shape:
                raise ValueError(f"SAM weight {name!r} has shape {got}, the config expects {shape}")

    # -- image encoder --------------------------------------------------------------------------
    def get_image_embeddings(self, pixel_values) -> np.ndarray:
        """pixel_values [B, 3, S, S] (preprocessed, see :func:`preprocess`) -> [B, C, E, E]."""
        v = self.config.vision_config
        x = _as_float(pixel_values, "pixel_values", 4, f"[batch, {v.num_channels}, {v.image_size}, {v.image_size}]")
        if x.shape[1:] != (v.num_channels, v.image_size, v.image_size):
            raise ValueError(f"pixel_values must be [batch, {v.num_channels}, {v.image_size}, {v.image_size}] (wrong image "
                             f"size: resize and pad with sam.preprocess), got {tuple(x.shape)}")
        return image_encoder(x, self.weights, v)

    def get_image_wide_positional_embeddings(self) -> np.ndarray:
        """[C, E, E]: the Fourier encoding of every embedding cell (the decoder's key positions)."""
        return image_positional_embeddings(self.weights, self.config)

    # -- prompts + decoder ----------------------------------------------------------------------
    def __call__(self, pixel_values=None, input_points=None, input_labels=None, input_boxes=None,
                 input_masks=None, multimask_output: bool = True, image_embeddings=None) -> SamOutput:
        """Masks for prompts, in transformers' shapes and model-input pixel coordinates.

        input_points [B, P, N, 2] (x, y), input_labels [B, P, N] (default: all foreground),
        input_boxes [B, P, 4] (x0, y0, x1, y1; with points, box p joins prompt p),
        input_masks [B, 1, 4E, 4E] (previous low-res logits).  Pass either pixel_values [B, 3, S, S]
        or image_embeddings [B, C, E, E] from :meth:`get_image_embeddings`."""
        cfg = self.config
        if (pixel_values is None) == (image_embeddings is None):
            raise ValueError("pass exactly one of pixel_values and image_embeddings")
        points, labels, boxes, masks = _check_prompts(input_points, input_labels, input_boxes, input_masks, cfg)
        if image_embeddings is None:
            image_embeddings = self.get_image_embeddings(pixel_values)
        else:
            C, E = cfg.mask_decoder_config.hidden_size, cfg.prompt_encoder_config.image_embedding_size
            image_embeddings = _as_float(image_embeddings, "image_embeddings", 4, f"[batch, {C}, {E}, {E}]")
            if image_embeddings.shape[1:] != (C, E, E):
                raise ValueError(f"image_embeddings must be [batch, {C}, {E}, {E}], got {tuple(image_embeddings.shape)}")
        B = image_embeddings.shape[0]
        for name, arr in (("input_points", points), ("input_boxes", boxes), ("input_masks", masks)):
            if arr is not None and arr.shape[0] != B:
                raise ValueError(f"{name} has batch size {arr.shape[0]} but there are {B} images")
        sparse, dense = prompt_encoder(points, labels, boxes, masks, self.weights, cfg)
        pe = self.get_image_wide_positional_embeddings()
        pred_masks, iou = mask_decoder(image_embeddings, pe, sparse, dense, self.weights, cfg.mask_decoder_config,
                                       multimask_output=bool(multimask_output))
        return SamOutput(pred_masks=pred_masks, iou_scores=iou, image_embeddings=image_embeddings)


class _Aliased:
    """A read-only view of a weights mapping that also answers to alternative names."""

    def __init__(self, base, alias: dict[str, str]):
        self.base, self.alias = base, alias

    def __getitem__(self, name):
        return self.base[self.alias.get(name, name)]

    def __contains__(self, name):
        return self.alias.get(name, name) in self.base

    def shape_of(self, name):
        name = self.alias.get(name, name)
        return self.base.shape_of(name) if hasattr(self.base, "shape_of") else np.shape(self.base[name])


def from_pretrained(path) -> Sam:
    """Load an HF SAM checkpoint directory (config.json + *.safetensors)."""
    return Sam(Config.from_hf(io.load_config(path)), io.load_checkpoint(path))


def from_preset(name: str, seed: int = 0) -> Sam:
    """A preset's real shapes with random weights (refused if they would not fit in memory)."""
    if name not in PRESETS:
        raise ValueError(f"unknown SAM preset {name!r}; known: {', '.join(PRESETS)}")
    config = PRESETS[name]
    check_fits(4 * count_params(config, include_positional_gaussian=True), name)
    return Sam(config, init_weights(config, seed))


# =============================================================================================
# pre- and post-processing, predictor
# =============================================================================================
def _to_rgb_array(image) -> np.ndarray:
    """A path, PIL image or [H, W, 3] / [H, W] uint8 array -> [H, W, 3] uint8."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            return np.asarray(im.convert("RGB"))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)                                       # [H, W, 3]
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"image must be [H, W, 3] (RGB), [H, W, 4] or [H, W], got shape {tuple(arr.shape)}")
    if arr.dtype != np.uint8:
        raise TypeError(f"image arrays must be uint8 (0..255), got dtype {arr.dtype}")
    if min(arr.shape[:2]) < 1:
        raise ValueError(f"image is empty: shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr[..., :3])


def resized_shape(size: tuple[int, int], longest_side: int) -> tuple[int, int]:
    """(h, w) scaled so the longer side is ``longest_side``, rounded half up (SamImageProcessor)."""
    h, w = size
    scale = longest_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def preprocess(image, image_size: int = 1024, mean=IMAGE_MEAN, std=IMAGE_STD):
    """Resize the longer side to ``image_size`` (Pillow bilinear on uint8, as transformers' PIL
    image processor), scale to 0..1, normalise with ImageNet statistics, zero-pad bottom/right.

    -> pixel_values [1, 3, S, S] float32, original_size (H, W), reshaped_size (h, w)."""
    from PIL import Image

    rgb = _to_rgb_array(image)
    original = rgb.shape[:2]
    h, w = resized_shape(original, image_size)
    resized = np.asarray(Image.fromarray(rgb).resize((w, h), resample=Image.BILINEAR))    # [h, w, 3] uint8
    x = (resized.astype(np.float32) * np.float32(1 / 255) - mean) / std                  # [h, w, 3]
    pixel_values = np.zeros((1, 3, image_size, image_size), np.float32)
    pixel_values[0, :, :h, :w] = x.transpose(2, 0, 1)                                    # [3, h, w] into [3, S, S]
    return pixel_values, tuple(original), (h, w)


def transform_coords(coords, original_size: tuple[int, int], image_size: int = 1024) -> np.ndarray:
    """Points [..., 2] (x, y) or boxes [..., 4] in original-image pixels -> model-input pixels."""
    coords = np.asarray(coords, dtype=np.float64)
    if coords.shape[-1] not in (2, 4):
        raise ValueError(f"coordinates must end in 2 (x, y) or 4 (x0, y0, x1, y1) values, got shape {tuple(coords.shape)}")
    h, w = original_size
    nh, nw = resized_shape(original_size, image_size)
    scale = np.tile([nw / w, nh / h], coords.shape[-1] // 2)
    return (coords * scale).astype(np.float32)


def postprocess_masks(masks, original_size, reshaped_size, image_size: int = 1024, threshold: float | None = 0.0):
    """Low-res logits [..., 4E, 4E] -> full-resolution masks [..., H, W] as transformers'
    ``SamProcessor.post_process_masks``: bilinear up to the padded input size, crop the padding,
    bilinear to the original size, then ``> threshold`` (``threshold=None`` keeps the logits)."""
    masks = np.asarray(masks, dtype=np.float32)
    if masks.ndim < 2:
        raise ValueError(f"masks must be [..., h, w], got shape {tuple(masks.shape)}")
    (H, W), (h, w) = original_size, reshaped_size
    if not (0 < h <= image_size and 0 < w <= image_size):
        raise ValueError(f"reshaped_size {reshaped_size} must fit in the {image_size}x{image_size} input")
    x = ops.interpolate_bilinear(masks, (image_size, image_size))[..., :h, :w]
    x = ops.interpolate_bilinear(np.ascontiguousarray(x), (H, W))
    return x if threshold is None else x > threshold


class SamPredictor:
    """Encode an image once (:meth:`set_image`), then answer many prompts (:meth:`predict`)
    given in original-image pixel coordinates, like ``segment_anything.SamPredictor``."""

    def __init__(self, model: Sam):
        self.model = model
        self.image_embeddings = None
        self.original_size = self.reshaped_size = None

    def set_image(self, image) -> None:
        """image: a path, PIL image or [H, W, 3] uint8 array."""
        S = self.model.config.vision_config.image_size
        pixel_values, self.original_size, self.reshaped_size = preprocess(image, S)
        self.image_embeddings = self.model.get_image_embeddings(pixel_values)

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask_output: bool = True,
                return_logits: bool = False):
        """points [N, 2] (x, y), labels [N] (default: all 1), box [4] (x0, y0, x1, y1), all in the
        original image's pixels; mask_input [1, 4E, 4E] low-res logits of an earlier call.

        -> masks [K, H, W] (bool, or float logits with return_logits), scores [K], low_res [K, 4E, 4E]."""
        if self.image_embeddings is None:
            raise RuntimeError("call set_image(image) before predict()")
        if points is None and box is None and mask_input is None:
            raise ValueError("predict needs at least one prompt: points, box or mask_input")
        S = self.model.config.vision_config.image_size
        in_points = in_labels = in_box = in_mask = None
        if points is not None:
            pts = np.asarray(points, dtype=np.float64)
            if pts.ndim != 2 or pts.shape[1] != 2:
                raise ValueError(f"points must be [N, 2] (x, y), got shape {tuple(pts.shape)}")
            in_points = transform_coords(pts, self.original_size, S)[None, None]          # [1, 1, N, 2]
            lab = np.ones(len(pts), np.int64) if labels is None else np.asarray(labels)
            if lab.ndim != 1 or len(lab) != len(pts):
                raise ValueError(f"labels must be [N] with one label per point: {len(pts)} points, "
                                 f"got labels of shape {tuple(lab.shape)}")
            in_labels = lab[None, None]                                                   # [1, 1, N]
        elif labels is not None:
            raise ValueError("labels were given without points")
        if box is not None:
            b = np.asarray(box, dtype=np.float64)
            if b.shape != (4,):
                raise ValueError(f"box must have 4 coordinates (x0, y0, x1, y1), got shape {tuple(b.shape)}")
            in_box = transform_coords(b, self.original_size, S)[None, None]                # [1, 1, 4]
        if mask_input is not None:
            in_mask = np.asarray(mask_input, dtype=np.float32)[None]                       # [1, 1, 4E, 4E]
        out = self.model(image_embeddings=self.image_embeddings, input_points=in_points, input_labels=in_labels,
                         input_boxes=in_box, input_masks=in_mask, multimask_output=multimask_output)
        low_res = out.pred_masks[0, 0]                                                    # [K, 4E, 4E]
        masks = postprocess_masks(low_res, self.original_size, self.reshaped_size, S,
                                  threshold=None if return_logits else 0.0)
        return masks, out.iou_scores[0, 0], low_res


# =============================================================================================
# command line hooks
# =============================================================================================
def demo() -> str:
    """Random-weight sam-tiny on a random image with one point and one box prompt."""
    model = from_preset("sam-tiny", seed=0)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(96, 160, 3), dtype=np.uint8)
    predictor = SamPredictor(model)
    predictor.set_image(image)
    masks, scores, low_res = predictor.predict(points=[[80, 40]], labels=[1])
    box_masks, box_scores, _ = predictor.predict(box=[20, 10, 120, 70], multimask_output=False)
    return (f"sam-tiny (random weights, backend {kernels.get_backend()}): image {image.shape[1]}x{image.shape[0]} -> "
            f"embeddings {predictor.image_embeddings.shape}; point (80,40) -> {masks.shape[0]} masks {masks.shape[1:]} "
            f"iou [{', '.join(f'{x:.2e}' for x in scores)}]; box -> 1 mask of {int(box_masks[0].sum())} px, "
            f"iou {box_scores[0]:.2e}")


def _pair_of_numbers(text: str, n: int, what: str):
    try:
        vals = [float(t) for t in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) != n:
        raise ValueError(f"{what} must be {n} comma-separated numbers, got {text!r}")
    return vals


def add_run_arguments(parser) -> None:
    """``pyworkloads run sam --model DIR --image x.jpg --point 120,200 [--box x0,y0,x1,y1] --out mask.png``"""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="Hugging Face SAM checkpoint directory (config.json + *.safetensors)")
    src.add_argument("--preset", choices=sorted(PRESETS), help="random weights of a preset (for trying the pipeline)")
    parser.add_argument("--image", required=True, help="input image (any format Pillow reads)")
    parser.add_argument("--point", action="append", default=[], metavar="X,Y",
                        help="a prompt point in image pixels (repeatable)")
    parser.add_argument("--label", action="append", type=int, default=None, metavar="L",
                        help="label of each --point, in order: 1 foreground (default), 0 background")
    parser.add_argument("--box", metavar="X0,Y0,X1,Y1", help="a prompt box in image pixels")
    parser.add_argument("--single-mask", action="store_true", help="ask for one mask instead of three candidates")
    parser.add_argument("--out", default="mask.png", help="where to write the best mask as a PNG overlay")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (0..1)")


def _overlay(rgb: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    colour = np.array([30, 144, 255], np.float32)                                        # the SAM demo's blue
    out = rgb.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * colour
    return out.round().clip(0, 255).astype(np.uint8)


def run_cli(args) -> int:
    """Segment the object at --point / in --box and write the best mask as an overlay PNG.
    Bad arguments raise ValueError (the ``pyworkloads`` command prints them as one line)."""
    from PIL import Image

    if not args.point and not args.box:
        raise ValueError("give at least one --point X,Y or a --box X0,Y0,X1,Y1")
    points = [_pair_of_numbers(p, 2, "--point") for p in args.point] or None
    box = _pair_of_numbers(args.box, 4, "--box") if args.box else None
    labels = args.label
    if labels is not None and (points is None or len(labels) != len(points)):
        raise ValueError(f"give one --label per --point ({len(points or [])} points, {len(labels)} labels)")
    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must lie in [0, 1], got {args.alpha}")
    model = from_pretrained(args.model) if args.model else from_preset(args.preset)
    rgb = _to_rgb_array(args.image)
    predictor = SamPredictor(model)
    predictor.set_image(rgb)
    masks, scores, _ = predictor.predict(points=points, labels=labels, box=box, multimask_output=not args.single_mask)
    best = int(np.argmax(scores))
    Image.fromarray(_overlay(rgb, masks[best], args.alpha)).save(args.out, format="PNG")
    print(f"{len(scores)} mask(s), predicted IoU {np.round(scores, 4).tolist()}; best #{best}: "
          f"{int(masks[best].sum())} of {masks[best].size} pixels -> {args.out}")
    return 0
