"""SAM's prompt encoder: points and box corners become sparse tokens (a random-Fourier encoding
of their position plus a learned embedding of their kind), a mask prompt becomes a dense map
the size of the image embeddings (or a learned "no mask" vector is spread over the grid).

HF modules: ``shared_image_embedding`` (the Fourier matrix, shared with the decoder's key
positions), ``prompt_encoder`` (``point_embed.{0..3}``, ``not_a_point_embed``,
``no_mask_embed``, ``mask_embed``).  Glossary in :mod:`.model`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ... import kernels, ops
from ..common import weight
from .image_encoder import channel_layer_norm

if TYPE_CHECKING:
    from .model import Config, PromptEncoderConfig

# transformers' SamProcessor pads ragged point lists with this label; such points embed to zero
PAD_LABEL = -10
# the module holding the random-Fourier matrix (weight_shapes' GAUSSIAN)
SHARED = "shared_image_embedding"


# ---------------------------------------------------------------------------------------------
# the random-Fourier positional encoding
# ---------------------------------------------------------------------------------------------
def fourier_encode(coords01, gaussian):
    """Random-Fourier positional encoding of points c in [0, 1]².  coords01 [..., 2] (x, y),
    gaussian [2, C/2] -> [..., C] = [sin(2π (2c-1) · gaussian), cos(2π (2c-1) · gaussian)].

    The float32 operations follow the reference's order: with a large Fourier scale the sine's
    argument reaches the hundreds, where a reordered product already moves the 5th decimal."""
    lead = coords01.shape[:-1]
    c = (2 * coords01.astype(np.float32) - 1).reshape(-1, 2)                  # [n, 2]
    proj = kernels.matmul(c, gaussian).reshape(*lead, gaussian.shape[1])      # [..., C/2]
    proj = np.float32(2 * np.pi) * proj
    return np.concatenate([np.sin(proj), np.cos(proj)], axis=-1)              # [..., C]


def positional_encoding(coords01, weights, name: str):
    """:func:`fourier_encode` with the Fourier matrix of the module ``name`` (transformers'
    ``SamPositionalEmbedding``).  coords01 [..., 2] -> [..., C]."""
    return fourier_encode(coords01, weight(weights, f"{name}.positional_embedding"))


def image_positional_embeddings(weights, config: Config):
    """The encoding of every embedding-grid cell centre, the decoder's key positions
    -> [C, G, G]."""
    G = config.prompt_encoder_config.image_embedding_size
    centres = (np.arange(G, dtype=np.float32) + np.float32(0.5)) / np.float32(G)  # [G]
    grid = np.stack(np.broadcast_arrays(centres[None, :], centres[:, None]), axis=-1)  # [G,G,2]
    with kernels.scope(SHARED):
        pe = positional_encoding(grid, weights, SHARED)                       # [G, G, C]
    return ops.contiguous(pe.transpose(2, 0, 1))                              # [C, G, G]


# ---------------------------------------------------------------------------------------------
# sparse prompts: points and boxes
# ---------------------------------------------------------------------------------------------
def embed_points(points, labels, weights, name: str, config: PromptEncoderConfig, pad: bool):
    """points [B, Pr, Pt, 2] (model-input pixels), labels [B, Pr, Pt] -> point tokens
    [B, Pr, Pt + 1, C] with ``pad`` (all Ns sparse tokens: there is no box), else [B, Pr, Pt, C].

    Labels: 1 foreground, 0 background, -1 "not a point" (its encoding is replaced by a learned
    embedding), -10 transformers' padding (embeds to zero).  With ``pad`` (no box prompt) one
    -1 point is appended, as the reference does, so the decoder always sees a "no box" token."""
    points = points.astype(np.float32) + np.float32(0.5)                      # pixel centres
    if pad:
        B, Pr = points.shape[:2]
        points = np.concatenate([points, np.zeros_like(points, shape=(B, Pr, 1, 2))],
                                axis=2)                                       # [B, Pr, Pt+1, 2]
        labels = np.concatenate([labels, np.full_like(labels, -1, shape=(B, Pr, 1))],
                                axis=2)                                       # [B, Pr, Pt+1]
    emb = positional_encoding(points / np.float32(config.image_size), weights, SHARED)
    lab = labels[..., None]                                                   # [B, Pr, Pt(+1), 1]
    emb = np.where(lab == -1, weight(weights, f"{name}.not_a_point_embed.weight"), emb)
    emb = np.where(lab == PAD_LABEL, np.float32(0), emb)
    emb = np.where(lab == 0, emb + weight(weights, f"{name}.point_embed.0.weight"), emb)
    emb = np.where(lab == 1, emb + weight(weights, f"{name}.point_embed.1.weight"), emb)
    return emb.astype(np.float32)                                             # [B, Pr, Pt(+1), C]


def embed_boxes(boxes, weights, name: str, config: PromptEncoderConfig):
    """boxes [B, Pr, 4] (x0, y0, x1, y1) -> two corner tokens [B, Pr, 2, C], each the encoding of
    its corner plus the learned embedding of "top-left" / "bottom-right"."""
    corners = boxes.astype(np.float32) + np.float32(0.5)                      # pixel centres
    corners = corners.reshape(*boxes.shape[:2], 2, 2)                         # [B, Pr, 2, 2]
    emb = positional_encoding(corners / np.float32(config.image_size), weights, SHARED)
    emb[:, :, 0] += weight(weights, f"{name}.point_embed.2.weight")[0]
    emb[:, :, 1] += weight(weights, f"{name}.point_embed.3.weight")[0]
    return emb                                                                # [B, Pr, 2, C]


# ---------------------------------------------------------------------------------------------
# dense prompt: a mask
# ---------------------------------------------------------------------------------------------
def embed_mask(masks, weights, name: str, config: PromptEncoderConfig):
    """Two stride-2 2x2 convs (to Cm/4, then Cm channels) with channel LayerNorm + activation,
    then a 1x1 conv to C.  masks [B, 1, 4G, 4G] -> [B, C, G, G]."""
    act, eps = ops.ACTIVATIONS[config.hidden_act], config.layer_norm_eps
    with kernels.scope(name):
        x = ops.conv2d(masks, weight(weights, f"{name}.conv1.weight"),
                       weight(weights, f"{name}.conv1.bias"), stride=2)       # [B, Cm/4, 2G, 2G]
        x = act(channel_layer_norm(x, weights, f"{name}.layer_norm1", eps))
        x = ops.conv2d(x, weight(weights, f"{name}.conv2.weight"),
                       weight(weights, f"{name}.conv2.bias"), stride=2)       # [B, Cm, G, G]
        x = act(channel_layer_norm(x, weights, f"{name}.layer_norm2", eps))
        return ops.conv2d(x, weight(weights, f"{name}.conv3.weight"),
                          weight(weights, f"{name}.conv3.bias"))              # [B, C, G, G]


# ---------------------------------------------------------------------------------------------
# the prompt encoder
# ---------------------------------------------------------------------------------------------
def prompt_encoder(points, labels, boxes, masks, weights, config: Config):
    """Embed the prompts; each of points (with labels), boxes and masks may be None.

    points [B, Pr, Pt, 2], labels [B, Pr, Pt], boxes [B, Pr, 4], masks [B, 1, 4G, 4G]
    -> sparse tokens [B, Pr, Ns, C] (None without points and boxes),
       dense embeddings [B or 1, C, G, G]."""
    pc, pe = config.prompt_encoder_config, "prompt_encoder"
    with kernels.scope(pe):
        sparse, B = None, 1
        if points is not None:
            B = points.shape[0]
            sparse = embed_points(points, labels, weights, pe, pc, pad=boxes is None)
        if boxes is not None:
            B = boxes.shape[0]
            corners = embed_boxes(boxes, weights, pe, pc)                     # [B, Pr, 2, C]
            sparse = corners if sparse is None else np.concatenate([sparse, corners], axis=2)
        if masks is not None:
            dense = embed_mask(masks.astype(np.float32), weights, f"{pe}.mask_embed", pc)
        else:
            G = pc.image_embedding_size
            no_mask = weight(weights, f"{pe}.no_mask_embed.weight").reshape(1, -1, 1, 1)
            dense = np.broadcast_to(no_mask, (B, pc.hidden_size, G, G))       # [B, C, G, G]
    return sparse, dense
