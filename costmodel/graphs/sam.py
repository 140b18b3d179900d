"""Segment Anything workloads: the engine's ViT image encoder (once per image; windowed blocks pad
the grid to a multiple of the window, and the padded tokens are computed), the dense positional
grid, and the prompt encoder + two-way mask decoder (once per prompt), traced shape-only.

Phases: "encoder" (batch images), "decoder" (prompt encoder + mask decoder for ``prompts``
prompts per image, each of ``points`` points and a box when ``boxes``), "all" (both; the summary
amortises the encoder over the prompts)."""
from __future__ import annotations

import numpy as np

from pyworkloads.kernels import trace
from pyworkloads.kernels.tracing import Traced, traced_weights
from pyworkloads.models import sam

from ..analysis import positive, seconds
from ..engine import TensorParallel

PHASES = ("all", "encoder", "decoder")
DEFAULT_PHASE = "all"
TP = TensorParallel(col=("qkv", "lin1", "q_proj", "k_proj", "v_proj"),
                    row=("proj", "lin2", "out_proj"), sharded=("attn", "mlp"))


def encoder_trace(cfg, batch: int):
    """``image_encoder(pixel_values[B, 3, R, R])`` -> image embeddings [B, C, G, G]."""
    v = cfg.vision_config
    with trace() as tr:
        sam.image_encoder(Traced((batch, v.num_channels, v.image_size, v.image_size)),
                          traced_weights(sam.weight_shapes(cfg)), cfg)
    return tr


def decoder_trace(cfg, batch: int, prompts: int, points: int = 1, boxes: bool = False,
                  multimask: bool = True):
    """``decode_prompts``: the prompt encoder, the grid's positional encoding and the mask
    decoder for ``prompts`` prompts per image, each of ``points`` foreground points (and a box)."""
    R, C = cfg.vision_config.image_size, cfg.mask_decoder_config.hidden_size
    G = cfg.vision_config.image_size // cfg.vision_config.patch_size
    pts = np.full((batch, prompts, points, 2), R / 2) if points else None
    labels = np.ones((batch, prompts, points), np.int64) if points else None
    box = np.tile([0.0, 0.0, R - 1.0, R - 1.0], (batch, prompts, 1)) if boxes else None
    with trace() as tr:
        sam.decode_prompts(Traced((batch, C, G, G)), pts, labels, box, None,
                           traced_weights(sam.weight_shapes(cfg)), cfg, multimask_output=multimask)
    return tr


def analyze(w, phase: str, *, batch: int, prompts: int, points: int, boxes: bool, **_):
    cfg = w.cfg
    positive("prompts", prompts)
    positive("points", points, allow_zero=True)
    if not points and not boxes:
        raise ValueError("a SAM prompt needs points (points >= 1) or a box (boxes=True)")
    layers, summary = [], {}
    t_enc = t_dec = None
    if phase in ("encoder", "all"):
        enc = w.layers(encoder_trace(cfg, batch), "encoder")
        layers += enc
        t_enc = seconds(enc)
        summary.update(encoder_s=t_enc, images_per_s=batch / t_enc)
    if phase in ("decoder", "all"):
        dec = w.layers(decoder_trace(cfg, batch, prompts, points, boxes), "decoder")
        layers += dec
        t_dec = seconds(dec)
        summary.update(decoder_s=t_dec, decoder_s_per_prompt=t_dec / (batch * prompts))
    if phase == "all":
        summary.update(images_per_s=batch / (t_enc + t_dec),
                       amortised_s_per_prompt=(t_enc + t_dec) / (batch * prompts),
                       total_s=t_enc + t_dec)
    used = {} if phase == "encoder" else dict(prompts=prompts, points=points, boxes=boxes)
    return layers, summary, 0.0, used
