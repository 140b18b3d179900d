"""SAM's image encoder: a ViT over 16x16 patches whose blocks attend inside ws x ws windows (a
few attend globally), with decomposed relative positions, and a convolutional neck down to the
decoder's width.  pixel_values [B, 3, R, R] -> image embeddings [B, C, G, G].

HF modules: ``vision_encoder.patch_embed``, ``vision_encoder.layers.{i}`` (``layer_norm1``,
``attn``, ``layer_norm2``, ``mlp``), ``vision_encoder.neck``.  Glossary in :mod:`.model`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ... import kernels, ops
from ..common import layer_norm, linear, weight

if TYPE_CHECKING:
    from .model import Config, VisionConfig


def channel_layer_norm(x, weights, name: str, eps: float = 1e-6):
    """LayerNorm over the channel axis of x [B, C, h, w] -> [B, C, h, w]: transformers'
    ``SamLayerNorm(data_format="channels_first")``, whose eps is the class default 1e-6 in the
    neck and the mask decoder and the config's layer_norm_eps in the prompt encoder."""
    y = layer_norm(ops.contiguous(x.transpose(0, 2, 3, 1)), weights, name, eps)   # [B, h, w, C]
    return y.transpose(0, 3, 1, 2)                                                 # [B, C, h, w]


# ---------------------------------------------------------------------------------------------
# patch embedding
# ---------------------------------------------------------------------------------------------
def patch_embed(pixel_values, weights, name: str, config: VisionConfig):
    """Cut the image into P x P patches and project each to D channels (a stride-P conv).
    pixel_values [B, 3, R, R] -> [B, G, G, D] (channels last, as the blocks use them)."""
    with kernels.scope(name):
        x = ops.conv2d(pixel_values, weight(weights, f"{name}.projection.weight"),
                       weight(weights, f"{name}.projection.bias"),
                       stride=config.patch_size)                              # [B, D, G, G]
    return ops.contiguous(x.transpose(0, 2, 3, 1))                            # [B, G, G, D]


# ---------------------------------------------------------------------------------------------
# relative positions
# ---------------------------------------------------------------------------------------------
def get_rel_pos(q_size: int, k_size: int, rel_pos):
    """Relative-position embeddings for every (query, key) pair along one axis.

    Args:
        q_size, k_size: query and key positions along the axis.
        rel_pos [rows, Dh]: one row per offset -(rows-1)/2 .. +(rows-1)/2.  When
            rows != 2·max(q, k) - 1 it is first resized along its rows by linear interpolation
            (PyTorch's ``interpolate(mode="linear")``); when q_size != k_size the shorter
            side's coordinates are stretched to the longer one's.
    Returns:
        [q_size, k_size, Dh]; with q_size == k_size, row q - k + (k_size - 1) of the table for
        the pair (q, k)."""
    span = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != span:
        rel_pos = ops.interpolate_bilinear(rel_pos.T[:, None, :], (1, span))[:, 0, :].T  # [span,Dh]
    q_coords = np.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = np.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)  # [q, k], >= 0
    return rel_pos[relative.astype(np.int64)]                                    # [q, k, Dh]


def decomposed_rel_pos(q, rel_pos_h, rel_pos_w, size: tuple[int, int]):
    """MViTv2's decomposed relative-position term of the attention logits: two small tables
    that ``kernels.attention`` adds to q·kᵀ/√Dh before its softmax (``rel_pos=``).

    For a query at (y, x) and a key at (ky, kx):
        bias[(y, x), (ky, kx)] = q(y, x) · Rh[y, ky] + q(y, x) · Rw[x, kx]
    i.e., with r_q = q as [b, h, w, Dh] (b = n·H), segment-anything's
        rel_h = einsum("bhwc,hkc->bhwk", r_q, Rh)
        rel_w = einsum("bhwc,wkc->bhwk", r_q, Rw)
        bias  = rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
    Each einsum is computed as one batched matmul (per query row y, per query column x) so the
    kernels dispatch and profile it.  The sum itself, [n, H, h·w, h·w] (805 MB for a 64 x 64
    grid of 12 heads), is left to the attention kernel, which adds rel_h + rel_w tile by tile
    (:func:`pyworkloads.kernels.reference.rel_pos_bias` forms it, for reading and testing).

    Args:
        q [n, H, h·w, Dh]: the *unscaled* queries (the reference scales q only inside q·k).
        rel_pos_h, rel_pos_w [2·side - 1, Dh]: the block's tables.
        size: (h, w), the grid the queries lie on.
    Returns:
        rel_h [n, H, h·w, kh], rel_w [n, H, h·w, kw] (kh = h, kw = w)."""
    h, w = size
    n, H, _, Dh = q.shape
    Rh = get_rel_pos(h, h, rel_pos_h)                                         # [h, kh, Dh]
    Rw = get_rel_pos(w, w, rel_pos_w)                                         # [w, kw, Dh]
    q5 = q.reshape(n, H, h, w, Dh)                                            # [n, H, h, w, Dh]
    qy = q5.transpose(2, 0, 1, 3, 4).reshape(h, n * H * w, Dh)                # [h, n·H·w, Dh]
    rel_h = kernels.matmul(qy, ops.contiguous(Rh.transpose(0, 2, 1)))         # [h, n·H·w, kh]
    rel_h = rel_h.reshape(h, n, H, w, h).transpose(1, 2, 0, 3, 4)             # [n, H, h, w, kh]
    qx = q5.transpose(3, 0, 1, 2, 4).reshape(w, n * H * h, Dh)                # [w, n·H·h, Dh]
    rel_w = kernels.matmul(qx, ops.contiguous(Rw.transpose(0, 2, 1)))         # [w, n·H·h, kw]
    rel_w = rel_w.reshape(w, n, H, h, w).transpose(1, 2, 3, 0, 4)             # [n, H, h, w, kw]
    return rel_h.reshape(n, H, h * w, h), rel_w.reshape(n, H, h * w, w)       # [n, H, h·w, k*]


# ---------------------------------------------------------------------------------------------
# attention in windows
# ---------------------------------------------------------------------------------------------
def vision_attention(x, weights, name: str, config: VisionConfig):
    """Multi-head self-attention over each grid of x (a window, or the whole image), with
    decomposed relative positions.  x [n, h, w, D] -> [n, h, w, D]; n = B·nW windows of side
    h = w = ws, or B images of side G."""
    n, h, w, D = x.shape
    H = config.num_attention_heads
    Dh = D // H
    with kernels.scope(name):
        qkv = linear(x, weights, f"{name}.qkv")                               # [n, h, w, 3D]
        qkv = qkv.reshape(n, h * w, 3, H, Dh).transpose(2, 0, 3, 1, 4)        # [3,n,H,h·w,Dh]
        q, k, v = (ops.contiguous(t) for t in qkv)                            # [n, H, h·w, Dh]
        rel_pos = None
        if config.use_rel_pos:
            rel_pos = decomposed_rel_pos(q, weight(weights, f"{name}.rel_pos_h"),
                                         weight(weights, f"{name}.rel_pos_w"), (h, w))
        out = kernels.attention(q, k, v, scale=Dh ** -0.5, rel_pos=rel_pos)   # [n, H, h·w, Dh]
        out = out.reshape(n, H, h, w, Dh).transpose(0, 2, 3, 1, 4)            # [n, h, w, H, Dh]
        return linear(out.reshape(n, h, w, D), weights, f"{name}.proj")       # [n, h, w, D]


def window_partition(x, ws: int):
    """Cut the grid into non-overlapping ws x ws windows, zero-padding it to a multiple of ws
    first (the padded tokens take part in attention unmasked, as in the reference).

    Args:
        x [B, h, w, D]: the token grid.
        ws: the window side.
    Returns:
        windows [B·nW, ws, ws, D], batch-major: nW = nh·nw windows per image, nh = Hp / ws
            down and nw = Wp / ws across;
        (Hp, Wp): the padded grid's sides, for :func:`window_unpartition`."""
    B, h, w, D = x.shape
    ph, pw = -h % ws, -w % ws
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))                     # [B, Hp, Wp, D]
    Hp, Wp = h + ph, w + pw
    x = x.reshape(B, Hp // ws, ws, Wp // ws, ws, D)                           # [B,nh,ws,nw,ws,D]
    x = x.transpose(0, 1, 3, 2, 4, 5)                                         # [B,nh,nw,ws,ws,D]
    return x.reshape(-1, ws, ws, D), (Hp, Wp)                                 # [B·nW, ws, ws, D]


def window_unpartition(windows, ws: int, padded: tuple[int, int], size: tuple[int, int]):
    """Inverse of :func:`window_partition`: put the windows back in place, drop the padding.

    Args:
        windows [B·nW, ws, ws, D]: as :func:`window_partition` cut them.
        ws: the window side.
        padded: (Hp, Wp), the padded grid's sides.
        size: (h, w), the grid's sides before padding.
    Returns:
        [B, h, w, D]."""
    (Hp, Wp), (h, w) = padded, size
    B = windows.shape[0] // ((Hp // ws) * (Wp // ws))
    x = windows.reshape(B, Hp // ws, Wp // ws, ws, ws, -1)                    # [B,nh,nw,ws,ws,D]
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)                  # [B, Hp, Wp, D]
    return ops.contiguous(x[:, :h, :w, :])                                    # [B, h, w, D]


# ---------------------------------------------------------------------------------------------
# the ViT block
# ---------------------------------------------------------------------------------------------
def vision_layer(x, weights, name: str, config: VisionConfig, window: int):
    """Pre-norm ViT block: attention inside windows of side ``window`` (over the whole grid when
    it is 0), then an MLP, each with a residual.  x [B, G, G, D] -> [B, G, G, D]."""
    eps = config.layer_norm_eps
    with kernels.scope(name):
        y = layer_norm(x, weights, f"{name}.layer_norm1", eps)                # [B, G, G, D]
        if window > 0:
            windows, padded = window_partition(y, window)                     # [B·nW,ws,ws,D]
            y = vision_attention(windows, weights, f"{name}.attn", config)
            y = window_unpartition(y, window, padded, x.shape[1:3])           # [B, G, G, D]
        else:
            y = vision_attention(y, weights, f"{name}.attn", config)          # [B, G, G, D]
        x = x + y

        y = layer_norm(x, weights, f"{name}.layer_norm2", eps)
        with kernels.scope(f"{name}.mlp"):
            y = linear(y, weights, f"{name}.mlp.lin1")                        # [B, G, G, F]
            y = ops.ACTIVATIONS[config.hidden_act](y)
            y = linear(y, weights, f"{name}.mlp.lin2")                        # [B, G, G, D]
        return x + y


# ---------------------------------------------------------------------------------------------
# neck and the whole encoder
# ---------------------------------------------------------------------------------------------
def neck(x, weights, name: str):
    """1x1 conv to C channels, channel LayerNorm, 3x3 conv, channel LayerNorm (no biases).
    x [B, G, G, D] -> [B, C, G, G]."""
    with kernels.scope(name):
        x = ops.contiguous(x.transpose(0, 3, 1, 2))                           # [B, D, G, G]
        x = ops.conv2d(x, weight(weights, f"{name}.conv1.weight"))            # [B, C, G, G]
        x = channel_layer_norm(x, weights, f"{name}.layer_norm1")
        x = ops.conv2d(x, weight(weights, f"{name}.conv2.weight"), padding=1)  # [B, C, G, G]
        return channel_layer_norm(x, weights, f"{name}.layer_norm2")


def image_encoder(pixel_values, weights, config: Config):
    """ViT image encoder + neck.  pixel_values [B, 3, R, R] -> image embeddings [B, C, G, G]."""
    v, ve = config.vision_config, "vision_encoder"
    with kernels.scope(ve):
        x = patch_embed(pixel_values, weights, f"{ve}.patch_embed", v)        # [B, G, G, D]
        if v.use_abs_pos:
            x = x + weight(weights, f"{ve}.pos_embed")                        # + [1, G, G, D]
        for i in range(v.num_hidden_layers):
            x = vision_layer(x, weights, f"{ve}.layers.{i}", v, v.layer_window(i))
        x = neck(x, weights, f"{ve}.neck")                                    # [B, C, G, G]
    return ops.contiguous(x)
