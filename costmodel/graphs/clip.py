"""CLIP workloads: the engine's image tower (patch convolution, ViT, pooled class token,
projection), text tower (causal transformer, pooled end-of-text state, projection) and the
similarity matrix, each traced shape-only with its own batch size.

Phases: "image" (batch images), "text" (text_batch texts of seq_len tokens), "all" (both towers
and the text_batch x batch similarity matrix)."""
from __future__ import annotations

import numpy as np

from pyworkloads.kernels import trace
from pyworkloads.kernels.tracing import Traced, traced_weights
from pyworkloads.models import clip

from ..analysis import positive, seconds
from ..engine import TensorParallel

PHASES = ("all", "image", "text")
DEFAULT_PHASE = "all"
TP = TensorParallel(col=("q_proj", "k_proj", "v_proj", "fc1"), row=("out_proj", "fc2"),
                    sharded=("self_attn", "mlp"))


def image_trace(cfg, batch: int):
    """``image_features(pixel_values[B, 3, R, R])``: the image tower and its projection."""
    v = cfg.vision_config
    with trace() as tr:
        clip.image_features(Traced((batch, v.num_channels, v.image_size, v.image_size)),
                            traced_weights(clip.weight_shapes(cfg)), v)
    return tr


def text_trace(cfg, batch: int, tokens: int):
    """``text_features(input_ids[B, T])``, each text ending in its end-of-text token."""
    t = cfg.text_config
    ids = np.zeros((batch, tokens), np.int64)
    ids[:, -1] = t.eos_token_id if t.eos_token_id != 2 else t.vocab_size - 1
    with trace() as tr:
        clip.text_features(ids, traced_weights(clip.weight_shapes(cfg)), t)
    return tr


def similarity_trace(cfg, image_batch: int, text_batch: int):
    """The logits of every (image, text) pair from the two sets of embeddings."""
    E = cfg.projection_dim
    weights = traced_weights(clip.weight_shapes(cfg))
    with trace() as tr:
        clip.similarity(Traced((image_batch, E)), Traced((text_batch, E)), weights["logit_scale"])
    return tr


def analyze(w, phase: str, *, batch: int, seq_len, text_batch, **_):
    cfg = w.cfg
    ctx = cfg.text_config.max_position_embeddings
    tb = batch if text_batch is None else positive("text_batch", text_batch)
    T = ctx if seq_len is None else positive("seq_len", seq_len)
    if T > ctx:
        raise ValueError(f"seq_len {T} exceeds CLIP's text context of {ctx}")
    layers, summary = [], {}
    if phase in ("image", "all"):
        img = w.layers(image_trace(cfg, batch), "image")
        layers += img
        summary.update(image_s=seconds(img), images_per_s=batch / seconds(img))
    if phase in ("text", "all"):
        txt = w.layers(text_trace(cfg, tb, T), "text")
        layers += txt
        summary.update(text_s=seconds(txt), texts_per_s=tb / seconds(txt))
    if phase == "all":
        layers += w.layers(similarity_trace(cfg, batch, tb), "similarity")
        summary["total_s"] = seconds(layers)
    return layers, summary, 0.0, dict(text_batch=tb, seq_len=T)
