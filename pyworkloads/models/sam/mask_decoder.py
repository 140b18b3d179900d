"""SAM's mask decoder: output tokens (one for the IoU, Mt for the masks) and the prompt tokens
attend to each other and, both ways, to the image embedding in a two-way transformer; the
image is then upscaled 4x and each mask token, through its own MLP, gives the weights of a
linear map from an upscaled pixel's channels to that mask's logit.

HF modules: ``mask_decoder.transformer.layers.{i}`` (``self_attn``, ``layer_norm1``,
``cross_attn_token_to_image``, ``layer_norm2``, ``mlp``, ``layer_norm3``,
``cross_attn_image_to_token``, ``layer_norm4``), ``mask_decoder.transformer.
final_attn_token_to_image``, ``...layer_norm_final_attn``, ``mask_decoder.upscale_conv1``,
``upscale_layer_norm``, ``upscale_conv2``, ``activation``, ``output_hypernetworks_mlps.{j}``,
``iou_prediction_head``.  Glossary in :mod:`.model`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ... import kernels, ops
from ..common import layer_norm, linear, weight
from .image_encoder import channel_layer_norm

if TYPE_CHECKING:
    from .model import Config, MaskDecoderConfig


# ---------------------------------------------------------------------------------------------
# attention with a downsampled width
# ---------------------------------------------------------------------------------------------
def split_heads(x, heads: int):
    """[n, T, Ci] -> [n, H, T, Ci / H]."""
    n, T, Ci = x.shape
    return ops.contiguous(x.reshape(n, T, heads, Ci // heads).transpose(0, 2, 1, 3))


def attention(q, k, v, weights, name: str, config: MaskDecoderConfig):
    """transformers' ``SamAttention``: project q, k, v to the inner width Ci = C / downsample
    (the projections' shapes say which: see BLOCK_DOWNSAMPLE_RATE in :mod:`.model`), attend
    with H heads, project back to C.  q [n, Tq, C], k and v [n, Tk, C] -> [n, Tq, C]
    (n = B·Pr, one sequence per prompt; Tq and Tk are T tokens or G² image positions)."""
    H = config.num_attention_heads
    with kernels.scope(name):
        q = linear(q, weights, f"{name}.q_proj")                              # [n, Tq, Ci]
        k = linear(k, weights, f"{name}.k_proj")                              # [n, Tk, Ci]
        v = linear(v, weights, f"{name}.v_proj")                              # [n, Tk, Ci]
        n, Tq, Ci = q.shape
        out = kernels.attention(split_heads(q, H), split_heads(k, H),
                                split_heads(v, H))                            # [n, H, Tq, Dh]
        out = out.transpose(0, 2, 1, 3).reshape(n, Tq, Ci)                    # [n, Tq, Ci]
        return linear(out, weights, f"{name}.out_proj")                       # [n, Tq, C]


# ---------------------------------------------------------------------------------------------
# the two-way transformer
# ---------------------------------------------------------------------------------------------
def two_way_block(queries, keys, query_pe, key_pe, weights, name: str,
                  config: MaskDecoderConfig, skip_first_layer_pe: bool):
    """One two-way block (post-norm).  queries [B·Pr, T, C] (the tokens), keys [B·Pr, G², C]
    (the image) -> both updated.  The positional encodings are added to queries and keys only,
    never to values."""
    eps = config.layer_norm_eps
    with kernels.scope(name):
        # 1. self-attention of the tokens.  In block 0 the tokens are their own positional
        #    encoding: they attend as they are and the output *replaces* them (no residual).
        if skip_first_layer_pe:
            queries = attention(queries, queries, queries, weights, f"{name}.self_attn", config)
        else:
            q = queries + query_pe
            queries = queries + attention(q, q, queries, weights, f"{name}.self_attn", config)
        queries = layer_norm(queries, weights, f"{name}.layer_norm1", eps)    # [B·Pr, T, C]

        # 2. cross-attention, tokens -> image: each token gathers from the image
        q, k = queries + query_pe, keys + key_pe
        queries = queries + attention(q, k, keys, weights, f"{name}.cross_attn_token_to_image",
                                      config)
        queries = layer_norm(queries, weights, f"{name}.layer_norm2", eps)    # [B·Pr, T, C]

        # 3. MLP on the tokens
        with kernels.scope(f"{name}.mlp"):
            y = linear(queries, weights, f"{name}.mlp.lin1")                  # [B·Pr, T, F]
            y = linear(ops.ACTIVATIONS[config.hidden_act](y), weights, f"{name}.mlp.lin2")
            queries = queries + y                                             # [B·Pr, T, C]
        queries = layer_norm(queries, weights, f"{name}.layer_norm3", eps)

        # 4. cross-attention, image -> tokens: each image position gathers from the tokens
        q, k = queries + query_pe, keys + key_pe
        keys = keys + attention(k, q, queries, weights, f"{name}.cross_attn_image_to_token",
                                config)
        keys = layer_norm(keys, weights, f"{name}.layer_norm4", eps)          # [B·Pr, G², C]
    return queries, keys


def two_way_transformer(tokens, image, image_pe, weights, name: str, config: MaskDecoderConfig):
    """The blocks, then a final attention of the tokens to the image.  tokens [B·Pr, T, C]
    (also their own positional encoding), image [B·Pr, G², C], image_pe [1, G², C]
    -> queries [B·Pr, T, C], keys [B·Pr, G², C]."""
    with kernels.scope(name):
        queries, keys = tokens, image
        for i in range(config.num_hidden_layers):
            queries, keys = two_way_block(queries, keys, tokens, image_pe, weights,
                                          f"{name}.layers.{i}", config, skip_first_layer_pe=i == 0)
        q, k = queries + tokens, keys + image_pe
        queries = queries + attention(q, k, keys, weights, f"{name}.final_attn_token_to_image",
                                      config)                                 # [B·Pr, T, C]
        # a plain nn.LayerNorm in the reference: PyTorch's default eps, not the config's
        queries = layer_norm(queries, weights, f"{name}.layer_norm_final_attn", 1e-5)
    return queries, keys


# ---------------------------------------------------------------------------------------------
# masks and IoU scores from the output tokens
# ---------------------------------------------------------------------------------------------
def upscale(x, weights, name: str):
    """Two stride-2 2x2 transposed convs, channel LayerNorm and GELU between, GELU after.
    x [B·Pr, C, G, G] -> [B·Pr, C/8, 4G, 4G]."""
    with kernels.scope(f"{name}.upscale_conv1"):
        x = ops.conv_transpose2d(x, weight(weights, f"{name}.upscale_conv1.weight"),
                                 weight(weights, f"{name}.upscale_conv1.bias"),
                                 stride=2)                                    # [B·Pr, C/4, 2G, 2G]
    x = channel_layer_norm(x, weights, f"{name}.upscale_layer_norm")
    with kernels.scope(f"{name}.activation"):
        x = ops.gelu(x)
    with kernels.scope(f"{name}.upscale_conv2"):
        x = ops.conv_transpose2d(x, weight(weights, f"{name}.upscale_conv2.weight"),
                                 weight(weights, f"{name}.upscale_conv2.bias"),
                                 stride=2)                                    # [B·Pr, C/8, 4G, 4G]
    with kernels.scope(f"{name}.activation"):
        return ops.gelu(x)


def feed_forward(x, weights, name: str, depth: int):
    """transformers' ``SamFeedForward``: proj_in, (depth - 2) hidden layers, proj_out, ReLU
    between.  x [..., Din] -> [..., Dout]."""
    with kernels.scope(name):
        x = ops.relu(linear(x, weights, f"{name}.proj_in"))
        for j in range(depth - 2):
            x = ops.relu(linear(x, weights, f"{name}.layers.{j}"))
        return linear(x, weights, f"{name}.proj_out")


def hypernetworks(mask_tokens, weights, name: str):
    """Mask token j through its own 3-layer MLP: the weights of mask j over the upscaled
    image's channels.  mask_tokens [B·Pr, Mt, C] -> [B·Pr, Mt, C/8]."""
    hyper = [feed_forward(mask_tokens[:, j], weights, f"{name}.output_hypernetworks_mlps.{j}", 3)
             for j in range(mask_tokens.shape[1])]                            # Mt x [B·Pr, C/8]
    return np.stack(hyper, axis=1)                                            # [B·Pr, Mt, C/8]


# ---------------------------------------------------------------------------------------------
# the mask decoder
# ---------------------------------------------------------------------------------------------
def mask_decoder(image_embeddings, image_pe, sparse, dense, weights, config: Config,
                 multimask_output: bool = True):
    """Predict low-resolution mask logits and IoU scores, once per prompt.

    image_embeddings [B, C, G, G], image_pe [C, G, G], sparse [B, Pr, Ns, C] or None,
    dense [B or 1, C, G, G] -> masks [B, Pr, Mo, 4G, 4G], iou [B, Pr, Mo]; Mo = 3 (multimask:
    masks 1..3, for an ambiguous prompt) or 1 (mask 0)."""
    m, md = config.mask_decoder_config, "mask_decoder"
    B, C, G, _ = image_embeddings.shape
    Pr = sparse.shape[1] if sparse is not None else 1
    Mt = m.num_mask_tokens
    with kernels.scope(md):
        output_tokens = np.concatenate([weight(weights, f"{md}.iou_token.weight"),
                                        weight(weights, f"{md}.mask_tokens.weight")])  # [1+Mt,C]
        tokens = np.broadcast_to(output_tokens, (B, Pr, 1 + Mt, C))           # [B, Pr, 1+Mt, C]
        if sparse is not None:
            tokens = np.concatenate([tokens, sparse], axis=2)                 # [B, Pr, T, C]
        tokens = ops.contiguous(tokens).reshape(B * Pr, -1, C)                # [B·Pr, T, C]
        # every prompt of an image shares the image's embedding
        src = np.repeat(image_embeddings + dense, Pr, axis=0)                 # [B·Pr, C, G, G]
        image = ops.contiguous(src.reshape(B * Pr, C, G * G).transpose(0, 2, 1))  # [B·Pr, G², C]
        key_pe = ops.contiguous(image_pe.reshape(C, G * G).T)[None]           # [1, G², C]

        queries, image = two_way_transformer(tokens, image, key_pe, weights,
                                             f"{md}.transformer", m)
        iou_token, mask_tokens = queries[:, 0], queries[:, 1:1 + Mt]  # [B·Pr, C], [B·Pr, Mt, C]

        x = ops.contiguous(image.transpose(0, 2, 1)).reshape(B * Pr, C, G, G)  # [B·Pr, C, G, G]
        x = upscale(x, weights, md)                                           # [B·Pr, C/8, 4G, 4G]
        hyper = hypernetworks(mask_tokens, weights, md)                       # [B·Pr, Mt, C/8]
        side = 4 * G
        # each mask token's weights dotted with every upscaled pixel
        masks = kernels.matmul(hyper, x.reshape(B * Pr, C // 8, side * side))  # [B·Pr, Mt, 16G²]
        masks = masks.reshape(B, Pr, Mt, side, side)                          # [B, Pr, Mt, 4G, 4G]
        iou = feed_forward(iou_token, weights, f"{md}.iou_prediction_head",
                           m.iou_head_depth).reshape(B, Pr, Mt)               # [B, Pr, Mt]
    keep = slice(1, None) if multimask_output else slice(0, 1)
    return ops.contiguous(masks[:, :, keep]), ops.contiguous(iou[:, :, keep])
