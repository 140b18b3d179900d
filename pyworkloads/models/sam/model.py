"""Segment Anything (SAM): a ViT image encoder run once per image, a prompt encoder for points,
boxes and masks, and a light two-way-transformer mask decoder run once per prompt.

    pixel_values [B, 3, R, R]                  points [B, Pr, Pt, 2]  boxes [B, Pr, 4]
          |                                    labels [B, Pr, Pt]     masks [B, 1, 4G, 4G]
    image_encoder.py (once per image)                 |
      patch embedding, stride P    [B, G, G, D]       prompt_encoder.py
      + absolute positions                              points, box corners: random Fourier
      L x ViT block: LN, attention in ws x ws           features + a learned embedding per
          windows or over the whole grid (with          kind      -> sparse [B, Pr, Ns, C]
          decomposed relative positions), LN, MLP       mask: strided convs, or a learned
      neck: 1x1 conv, LN, 3x3 conv, LN                  "no mask" -> dense [B, C, G, G]
          |  image embeddings [B, C, G, G]              |
          +------------------------+--------------------+
                                   |
    mask_decoder.py (once per prompt: B·Pr sequences)
      tokens = [IoU token, Mt mask tokens, sparse]           [B·Pr, T, C]
      image  = image embeddings + dense, flattened           [B·Pr, G², C]
      2 x two-way block: tokens attend to themselves, tokens -> image, MLP on the tokens,
                         image -> tokens
      final attention tokens -> image
      upscale the image 4x with two transposed convs         [B·Pr, C/8, 4G, 4G]
      mask token j -> hypernetwork MLP -> w_j [C/8];  mask_j = w_j · upscaled image
      IoU token -> MLP -> one predicted IoU per mask
          |
    masks [B, Pr, Mo, 4G, 4G] (low-resolution logits), iou [B, Pr, Mo]; Mo = 3 (multimask) or 1

The forward pass follows Hugging Face ``transformers``' ``SamModel`` (itself a port of Meta's
``segment_anything``) so that a checkpoint saved by ``SamModel.save_pretrained`` gives the same
image embeddings, low-resolution mask logits and IoU scores.  Weights are looked up by their HF
names, e.g. ``vision_encoder.layers.3.attn.qkv.weight``; every module runs inside
``kernels.scope(<that module path>)`` so profiles and the cost model use the same names.

Glossary (shapes in comments use these):
    B   images                       Pr  prompts per image (HF's "point batch")
    R   input image side (1024)      P   patch side (16)
    G   embedding grid side, R / P   D   vision width (768 .. 1280)
    C   image embedding and prompt / decoder width (256); C/2 Fourier features per sin / cos
    Cm  mask prompt channels (mask_input_channels, 16)
    F   MLP width (mlp_dim)          L   ViT blocks (num_hidden_layers)
    H   heads                        Dh  head width
    ws  window side (14)             nW  windows per image (after padding the grid)
    Pt  points per prompt            Ns  sparse tokens per prompt (points, box corners)
    Mt  mask tokens (num_multimask_outputs + 1 = 4)
    T   decoder tokens: 1 IoU + Mt mask tokens + Ns
    Mo  masks returned per prompt (3, or 1 without multimask_output)
    The mask decoder runs B·Pr sequences, one per prompt.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ... import ops
from .. import common
from ..common import check_bool, check_choice, check_int, check_number
from ..common import count_params as count_layout
from .image_encoder import image_encoder
from .mask_decoder import mask_decoder
from .prompt_encoder import image_positional_embeddings, prompt_encoder

# The random-Fourier matrix [2, C/2]: a trained *buffer* in Meta's release, a parameter in
# transformers, tied between the model and its prompt encoder (saved under either name).
GAUSSIAN = "shared_image_embedding.positional_embedding"
GAUSSIAN_ALIAS = "prompt_encoder.shared_embedding.positional_embedding"
# Width divisor of the two-way blocks' cross-attentions.  transformers builds them with the
# default rate 2 whatever the config says; only the final token -> image attention reads
# mask_decoder_config.attention_downsample_rate.  Every released checkpoint uses 2 for both.
BLOCK_DOWNSAMPLE_RATE = 2


# =============================================================================================
# configuration
# =============================================================================================
def _check(cfg, what: str, ints=(), positive=(), bools=(), layers=()) -> None:
    """Replace each named field by its checked value (common.check_sizes), numbers > 0, bools."""
    common.check_sizes(cfg, what, widths=ints, layers=layers)
    for f in positive:
        setattr(cfg, f, check_number(getattr(cfg, f), f"{what}.{f}", 0, exclusive_minimum=True))
    for f in bools:
        setattr(cfg, f, check_bool(getattr(cfg, f), f"{what}.{f}"))


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
        w = "vision_config"
        _check(self, w, ints=("hidden_size", "output_channels", "num_attention_heads",
                              "num_channels", "image_size", "patch_size", "num_pos_feats"),
               positive=("layer_norm_eps", "mlp_ratio"), bools=("qkv_bias", "use_abs_pos",
                                                                 "use_rel_pos"),
               layers=("num_hidden_layers",))
        self.window_size = common.check_width(self.window_size, f"{w}.window_size", minimum=0)
        g, last = self.global_attn_indexes, self.num_hidden_layers - 1
        if not isinstance(g, (list, tuple)):
            raise ValueError(f"{w}.global_attn_indexes must be a list, got {common.describe(g)}")
        self.global_attn_indexes = tuple(check_int(i, f"{w}.global_attn_indexes", 0, last)
                                         for i in g)
        if self.mlp_dim is None:                        # HF: int(hidden_size * mlp_ratio)
            self.mlp_dim = common.check_width(int(self.hidden_size * self.mlp_ratio),
                                              f"{w}.mlp_dim (hidden_size * mlp_ratio)")
        self.mlp_dim = common.check_width(self.mlp_dim, f"{w}.mlp_dim")
        check_choice(self.hidden_act, f"{w}.hidden_act", tuple(ops.ACTIVATIONS))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"{w}: hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"{w}: image_size {self.image_size} is not a multiple of "
                             f"patch_size {self.patch_size}")

    @property
    def grid(self) -> int:
        """G: patches per side."""
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
        w = "prompt_encoder_config"
        _check(self, w, ints=("hidden_size", "image_size", "patch_size", "mask_input_channels",
                              "num_point_embeddings"), positive=("layer_norm_eps",))
        check_choice(self.hidden_act, f"{w}.hidden_act", tuple(ops.ACTIVATIONS))
        if self.mask_input_channels % 4:
            raise ValueError(f"{w}: mask_input_channels must be a multiple of 4, "
                             f"got {self.mask_input_channels}")
        if self.num_point_embeddings != 4:
            raise ValueError(f"{w}.num_point_embeddings must be 4 (background, foreground, box "
                             f"corner 1, box corner 2), got {self.num_point_embeddings}")

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
        w = "mask_decoder_config"
        _check(self, w, ints=("hidden_size", "mlp_dim", "num_attention_heads",
                              "attention_downsample_rate", "iou_head_hidden_dim"),
               positive=("layer_norm_eps",), layers=("num_hidden_layers",
                                                     "num_multimask_outputs"))
        self.iou_head_depth = common.check_layers(self.iou_head_depth, f"{w}.iou_head_depth", 2)
        check_choice(self.hidden_act, f"{w}.hidden_act", tuple(ops.ACTIVATIONS))
        C = self.hidden_size
        widths = (C, C // self.attention_downsample_rate, C // BLOCK_DOWNSAMPLE_RATE)
        if any(width % self.num_attention_heads or not width for width in widths):
            raise ValueError(f"{w}: num_attention_heads {self.num_attention_heads} must divide "
                             f"the attention widths {widths} (hidden_size, "
                             f"/ attention_downsample_rate, / {BLOCK_DOWNSAMPLE_RATE})")
        if C % 8:
            raise ValueError(f"{w}: hidden_size must be a multiple of 8 (upscaling to C/4 "
                             f"then C/8), got {C}")

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
            raise ValueError(
                "SAM needs vision_config.output_channels == prompt_encoder_config.hidden_size == "
                "mask_decoder_config.hidden_size == 2 * vision_config.num_pos_feats, got "
                f"{v.output_channels}, {p.hidden_size}, {m.hidden_size}, 2 * {v.num_pos_feats}")
        if p.image_embedding_size != v.grid or p.image_size != v.image_size:
            raise ValueError(f"prompt_encoder_config image_size/patch_size ({p.image_size}/"
                             f"{p.patch_size}) must match vision_config's ({v.image_size}/"
                             f"{v.patch_size})")

    @classmethod
    def from_hf(cls, d) -> Config:
        """Parse an HF ``config.json`` dict (``model_type`` "sam"); see :mod:`.hf`."""
        from .hf import config_from_hf
        return config_from_hf(d)

    def to_hf(self) -> dict:
        """The config.json dict that ``transformers.SamConfig(**d)`` accepts."""
        from .hf import config_to_hf
        return config_to_hf(self)


def _sam_config(hidden_size, layers, heads, global_attn_indexes) -> Config:
    return Config(VisionConfig(hidden_size=hidden_size, num_hidden_layers=layers,
                               num_attention_heads=heads, global_attn_indexes=global_attn_indexes))


PRESETS: dict[str, Config] = {
    # facebook/sam-vit-{base,large,huge}: only the image encoder differs
    "sam-vit-b": _sam_config(768, 12, 12, (2, 5, 8, 11)),
    "sam-vit-l": _sam_config(1024, 24, 16, (5, 11, 17, 23)),
    "sam-vit-h": _sam_config(1280, 32, 16, (7, 15, 23, 31)),
    # a toy for demos and tests: an 8x8 grid with window 3 (padded to 9x9) and one global block
    "sam-tiny": Config(
        VisionConfig(hidden_size=32, output_channels=32, num_hidden_layers=3,
                     num_attention_heads=4, image_size=128, patch_size=16, window_size=3,
                     global_attn_indexes=(1,), num_pos_feats=16, mlp_dim=64),
        PromptEncoderConfig(hidden_size=32, image_size=128, patch_size=16, mask_input_channels=8),
        MaskDecoderConfig(hidden_size=32, mlp_dim=64, num_attention_heads=2,
                          iou_head_hidden_dim=32)),
}


# =============================================================================================
# the weight layout
# =============================================================================================
def _linear(s: dict, name: str, dout: int, din: int, bias: bool = True) -> None:
    s[f"{name}.weight"] = (dout, din)
    if bias:
        s[f"{name}.bias"] = (dout,)


def _norm(s: dict, name: str, d: int) -> None:
    s[f"{name}.weight"] = (d,)
    s[f"{name}.bias"] = (d,)


def _conv(s: dict, name: str, cout: int, cin: int, k: int, bias: bool = True) -> None:
    s[f"{name}.weight"] = (cout, cin, k, k)
    if bias:
        s[f"{name}.bias"] = (cout,)


def _vision_encoder_shapes(s: dict, v: VisionConfig) -> None:
    D, G, ve = v.hidden_size, v.grid, "vision_encoder"
    _conv(s, f"{ve}.patch_embed.projection", D, v.num_channels, v.patch_size)
    if v.use_abs_pos:
        s[f"{ve}.pos_embed"] = (1, G, G, D)
    Dh = D // v.num_attention_heads
    for i in range(v.num_hidden_layers):
        layer = f"{ve}.layers.{i}"
        _norm(s, f"{layer}.layer_norm1", D)
        _linear(s, f"{layer}.attn.qkv", 3 * D, D, v.qkv_bias)
        _linear(s, f"{layer}.attn.proj", D, D)
        if v.use_rel_pos:                   # one row per offset -(side-1) .. side-1
            side = v.layer_window(i) or G
            s[f"{layer}.attn.rel_pos_h"] = (2 * side - 1, Dh)
            s[f"{layer}.attn.rel_pos_w"] = (2 * side - 1, Dh)
        _norm(s, f"{layer}.layer_norm2", D)
        _linear(s, f"{layer}.mlp.lin1", v.mlp_dim, D)
        _linear(s, f"{layer}.mlp.lin2", D, v.mlp_dim)
    C = v.output_channels
    _conv(s, f"{ve}.neck.conv1", C, D, 1, bias=False)
    _norm(s, f"{ve}.neck.layer_norm1", C)
    _conv(s, f"{ve}.neck.conv2", C, C, 3, bias=False)
    _norm(s, f"{ve}.neck.layer_norm2", C)


def _prompt_encoder_shapes(s: dict, p: PromptEncoderConfig) -> None:
    pe, Cm, C = "prompt_encoder", p.mask_input_channels, p.hidden_size
    _conv(s, f"{pe}.mask_embed.conv1", Cm // 4, 1, 2)
    _conv(s, f"{pe}.mask_embed.conv2", Cm, Cm // 4, 2)
    _conv(s, f"{pe}.mask_embed.conv3", C, Cm, 1)
    _norm(s, f"{pe}.mask_embed.layer_norm1", Cm // 4)
    _norm(s, f"{pe}.mask_embed.layer_norm2", Cm)
    s[f"{pe}.no_mask_embed.weight"] = (1, C)
    for j in range(p.num_point_embeddings):
        s[f"{pe}.point_embed.{j}.weight"] = (1, C)
    s[f"{pe}.not_a_point_embed.weight"] = (1, C)


def _attention_shapes(s: dict, name: str, C: int, downsample: int) -> None:
    for proj in ("q_proj", "k_proj", "v_proj"):
        _linear(s, f"{name}.{proj}", C // downsample, C)
    _linear(s, f"{name}.out_proj", C, C // downsample)


def _feed_forward_shapes(s: dict, name: str, din: int, hidden: int, dout: int, depth: int):
    _linear(s, f"{name}.proj_in", hidden, din)
    for j in range(depth - 2):
        _linear(s, f"{name}.layers.{j}", hidden, hidden)
    _linear(s, f"{name}.proj_out", dout, hidden)


def _mask_decoder_shapes(s: dict, m: MaskDecoderConfig) -> None:
    md, C, Mt = "mask_decoder", m.hidden_size, m.num_mask_tokens
    s[f"{md}.iou_token.weight"] = (1, C)
    s[f"{md}.mask_tokens.weight"] = (Mt, C)
    tr = f"{md}.transformer"
    for i in range(m.num_hidden_layers):
        layer = f"{tr}.layers.{i}"
        _attention_shapes(s, f"{layer}.self_attn", C, 1)
        _norm(s, f"{layer}.layer_norm1", C)
        _attention_shapes(s, f"{layer}.cross_attn_token_to_image", C, BLOCK_DOWNSAMPLE_RATE)
        _norm(s, f"{layer}.layer_norm2", C)
        _linear(s, f"{layer}.mlp.lin1", m.mlp_dim, C)
        _linear(s, f"{layer}.mlp.lin2", C, m.mlp_dim)
        _norm(s, f"{layer}.layer_norm3", C)
        _norm(s, f"{layer}.layer_norm4", C)
        _attention_shapes(s, f"{layer}.cross_attn_image_to_token", C, BLOCK_DOWNSAMPLE_RATE)
    _attention_shapes(s, f"{tr}.final_attn_token_to_image", C, m.attention_downsample_rate)
    _norm(s, f"{tr}.layer_norm_final_attn", C)
    # transposed convs: weight [Cin, Cout, 2, 2]
    s[f"{md}.upscale_conv1.weight"], s[f"{md}.upscale_conv1.bias"] = (C, C // 4, 2, 2), (C // 4,)
    s[f"{md}.upscale_conv2.weight"] = (C // 4, C // 8, 2, 2)
    s[f"{md}.upscale_conv2.bias"] = (C // 8,)
    _norm(s, f"{md}.upscale_layer_norm", C // 4)
    for j in range(Mt):
        _feed_forward_shapes(s, f"{md}.output_hypernetworks_mlps.{j}", C, C, C // 8, 3)
    _feed_forward_shapes(s, f"{md}.iou_prediction_head", C, m.iou_head_hidden_dim, Mt,
                         m.iou_head_depth)


def weight_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Every tensor of the model, by HF name -> shape (the tied Fourier matrix listed once)."""
    s: dict[str, tuple[int, ...]] = {GAUSSIAN: (2, config.vision_config.num_pos_feats)}
    _vision_encoder_shapes(s, config.vision_config)
    _prompt_encoder_shapes(s, config.prompt_encoder_config)
    _mask_decoder_shapes(s, config.mask_decoder_config)
    return s


def count_params(config: Config, include_positional_gaussian: bool = False) -> int:
    """Exact parameter count.

    Default: Meta's official convention (ViT-H 641,090,608), in which the 2 x num_pos_feats random
    Fourier matrix is a registered *buffer*, not a parameter.  ``include_positional_gaussian=True``
    counts it, which is what ``sum(p.numel() for p in transformers.SamModel(cfg).parameters())``
    gives (there it is a parameter, tied between the model and its prompt encoder, counted once)."""
    total = count_layout(weight_shapes(config))
    return total if include_positional_gaussian else total - 2 * config.vision_config.num_pos_feats


# =============================================================================================
# the forward pass: image_encoder.py, prompt_encoder.py, mask_decoder.py
# =============================================================================================
def decode_prompts(image_embeddings, points, labels, boxes, masks, weights, config: Config,
                   multimask_output: bool = True):
    """Masks for prompts on encoded images (run once per prompt set).

    image_embeddings [B, C, G, G]; points [B, Pr, Pt, 2] with labels [B, Pr, Pt], boxes
    [B, Pr, 4], masks [B, 1, 4G, 4G], each or None (coordinates in model-input pixels)
    -> masks [B, Pr, Mo, 4G, 4G] logits, iou [B, Pr, Mo]."""
    sparse, dense = prompt_encoder(points, labels, boxes, masks, weights, config)  # [B,Pr,Ns,C]
    image_pe = image_positional_embeddings(weights, config)                        # [C, G, G]
    return mask_decoder(image_embeddings, image_pe, sparse, dense, weights, config,
                        multimask_output)


def forward(pixel_values, points, labels, boxes, masks, weights, config: Config,
            multimask_output: bool = True):
    """The whole model.  pixel_values [B, 3, R, R] and prompts as in :func:`decode_prompts`
    -> masks [B, Pr, Mo, 4G, 4G], iou [B, Pr, Mo], image embeddings [B, C, G, G]."""
    image_embeddings = image_encoder(pixel_values, weights, config)                # [B, C, G, G]
    pred_masks, iou = decode_prompts(image_embeddings, points, labels, boxes, masks, weights,
                                     config, multimask_output)
    return pred_masks, iou, image_embeddings
