"""The user-facing CLIP: a checkpoint's config and weights with its tokenizer and image settings,
the checks on what users pass in, and the calls that run :mod:`.model`'s forward functions."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ... import ops
from ..common import check_fits, check_token_ids, check_weights, weight
from ..common import random_weights as _random
from .model import (
    PRESETS,
    Config,
    count_params,
    image_features,
    l2_normalize,
    similarity,
    text_features,
    weight_shapes,
)
from .model import contrastive_loss as _contrastive_loss
from .preprocess import CLIP_MEAN, CLIP_STD, preprocess
from .tokenizer import tokenize

__all__ = ["CLIP", "CLIPOutput", "contrastive_loss", "random_weights", "from_preset"]


@dataclass
class CLIPOutput:
    """What ``CLIP.__call__`` returns (names as in transformers' ``CLIPOutput``)."""
    logits_per_image: np.ndarray   # [Bi, Bt] exp(logit_scale) · cosine similarity
    logits_per_text: np.ndarray    # [Bt, Bi] its transpose
    image_embeds: np.ndarray       # [Bi, E] unit norm
    text_embeds: np.ndarray        # [Bt, E] unit norm


def _check_directions(x: np.ndarray, what: str) -> None:
    """Refuse rows that l2_normalize cannot scale to unit length (all zeros, or NaN)."""
    if not np.all(np.abs(x).max(axis=-1) > 0):
        raise ValueError(f"{what}: a row is all zeros (or NaN) and has no direction to normalise")


class CLIP:
    """A CLIP checkpoint: config + weights (+ tokenizer and preprocessing settings when known)."""

    def __init__(self, config: Config, weights, tokenizer=None, image_size: int | None = None,
                 crop_size: int | None = None, image_mean=CLIP_MEAN, image_std=CLIP_STD):
        self.config = config
        self.weights = weights
        self.tokenizer = tokenizer
        self.image_size = image_size or config.vision_config.image_size   # shorter side, resized
        self.crop_size = crop_size or config.vision_config.image_size
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        check_weights(weights, weight_shapes(config), "CLIP")

    # -- inputs ---------------------------------------------------------------------------------
    def _check_pixels(self, pixel_values) -> np.ndarray:
        v = self.config.vision_config
        x = np.asarray(pixel_values)
        if x.dtype.kind != "f":
            raise TypeError("pixel_values must be a float array (see preprocess()), "
                            f"got dtype {x.dtype}")
        if x.ndim == 3:
            x = x[None]                                                        # [1, C, R, R]
        want = (v.num_channels, v.image_size, v.image_size)
        if x.ndim != 4 or x.shape[1:] != want or x.shape[0] == 0:
            raise ValueError(f"pixel_values must be [B, {want[0]}, {want[1]}, {want[2]}] for this "
                             f"model (image_size={v.image_size}), got shape {x.shape}; "
                             "preprocess() resizes and crops")
        return x.astype(np.float32, copy=False)

    def _check_ids(self, input_ids, attention_mask):
        t = self.config.text_config
        ids = check_token_ids(input_ids, "input_ids", t.vocab_size)            # int64 [B, T]
        if ids.shape[1] > t.max_position_embeddings:
            raise ValueError(f"input_ids has {ids.shape[1]} tokens, more than the context length "
                             f"{t.max_position_embeddings} (max_position_embeddings)")
        if attention_mask is not None:
            attention_mask = np.asarray(attention_mask)
            if attention_mask.ndim == 1:
                attention_mask = attention_mask[None]                          # [1, T]
            if attention_mask.shape != ids.shape:
                raise ValueError(f"attention_mask must have input_ids' shape {ids.shape}, "
                                 f"got {attention_mask.shape}")
            if not np.isin(attention_mask, (0, 1)).all():
                raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
        return ids, attention_mask

    # -- features -------------------------------------------------------------------------------
    def get_image_features(self, pixel_values) -> np.ndarray:
        """pixel_values [B, 3, R, R] -> projected (unnormalised) image embeddings [B, E]."""
        pixels = self._check_pixels(pixel_values)
        return image_features(pixels, self.weights, self.config.vision_config)

    def get_text_features(self, input_ids, attention_mask=None) -> np.ndarray:
        """input_ids int [B, T] -> projected (unnormalised) text embeddings [B, E]."""
        ids, attention_mask = self._check_ids(input_ids, attention_mask)
        return text_features(ids, self.weights, self.config.text_config, attention_mask)

    def __call__(self, input_ids=None, pixel_values=None, attention_mask=None) -> CLIPOutput:
        """Scaled cosine similarities between every image and every text."""
        if input_ids is None or pixel_values is None:
            raise ValueError("CLIP needs both input_ids and pixel_values (use get_text_features / "
                             "get_image_features for one tower)")
        image = self.get_image_features(pixel_values)                          # [Bi, E]
        text = self.get_text_features(input_ids, attention_mask)               # [Bt, E]
        _check_directions(image, "image embeddings")
        _check_directions(text, "text embeddings")
        per_image, per_text = similarity(image, text, weight(self.weights, "logit_scale"))
        return CLIPOutput(logits_per_image=per_image, logits_per_text=per_text,
                          image_embeds=l2_normalize(image), text_embeds=l2_normalize(text))

    # -- convenience ----------------------------------------------------------------------------
    def preprocess(self, images) -> np.ndarray:
        """One image or a list of them (paths, PIL images, uint8 arrays) -> float32 [B, 3, R, R]."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        return np.concatenate([preprocess(im, self.image_size, self.crop_size, self.image_mean,
                                          self.image_std) for im in images])

    def tokenize(self, texts, truncate: bool = False) -> np.ndarray:
        """Texts -> ids [B, context_length] with this checkpoint's tokenizer."""
        if self.tokenizer is None:
            raise ValueError("this CLIP has no tokenizer (from_pretrained loads the checkpoint's "
                             "tokenizer.json; set .tokenizer = load_tokenizer(path))")
        return tokenize(texts, self.tokenizer, self.config.text_config.max_position_embeddings,
                        truncate)

    def zero_shot(self, images, labels, template: str = "a photo of a {}.") -> np.ndarray:
        """Probability of each label for each image, by softmax over the scaled similarities to
        the texts ``template.format(label)`` (the paper's prompt).  images: as for preprocess(),
        or pixel_values [B, 3, R, R]; labels: list of str -> float32 [B, len(labels)], rows sum
        to 1."""
        if isinstance(labels, str) or not labels or not all(isinstance(lb, str) for lb in labels):
            raise TypeError("labels must be a non-empty list of strings")
        if "{}" not in template:
            raise ValueError(f"template must contain '{{}}' where the label goes, got {template!r}")
        is_pixels = isinstance(images, np.ndarray) and images.dtype.kind == "f" and images.ndim == 4
        pixels = images if is_pixels else self.preprocess(images)
        ids = self.tokenize([template.format(lb) for lb in labels])
        out = self(input_ids=ids, pixel_values=pixels)
        return ops.softmax(out.logits_per_image, axis=-1)


def contrastive_loss(image_embeds, text_embeds, logit_scale) -> float:
    """CLIP's symmetric contrastive loss (:func:`.model.contrastive_loss`) of a batch of B matched
    pairs, computed in float64.  image_embeds [B, E], text_embeds [B, E]; ``logit_scale`` is the
    log of the inverse temperature, as CLIP stores it."""
    img = np.asarray(image_embeds, dtype=np.float64)
    txt = np.asarray(text_embeds, dtype=np.float64)
    if img.ndim != 2 or txt.ndim != 2 or img.shape != txt.shape or img.shape[0] == 0:
        raise ValueError("contrastive_loss: image_embeds and text_embeds must both be [B, E] with "
                         f"B >= 1 and the same shape, got {img.shape} and {txt.shape}")
    for name, a in (("image_embeds", img), ("text_embeds", txt)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"contrastive_loss: {name} contains NaN or infinity")
        _check_directions(a, f"contrastive_loss: {name}")
    s = np.asarray(logit_scale, dtype=np.float64)
    if s.size != 1 or not np.isfinite(s) or s.item() >= np.log(np.finfo(np.float64).max):
        raise ValueError("contrastive_loss: logit_scale must be a finite scalar (log space) whose "
                         f"exp is finite, got {logit_scale!r}")
    return float(_contrastive_loss(img, txt, s.item()))


def random_weights(config: Config, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights of the config's shapes: N(0, 0.02) matrices and embeddings, unit/zero LayerNorms,
    zero biases, logit_scale at its initial value."""
    def init(name, shape, rng):
        if name == "logit_scale":
            return np.asarray(config.logit_scale_init_value, np.float32)
        return None
    return _random(weight_shapes(config), seed, std=0.02, init=init)


def from_preset(name: str, seed: int = 0) -> CLIP:
    """A preset's shapes with random weights (no tokenizer): for shapes, timing and profiling."""
    if name not in PRESETS:
        raise ValueError(f"unknown CLIP preset {name!r}; known: {', '.join(PRESETS)}")
    config = PRESETS[name]
    check_fits(4 * count_params(config), name)
    return CLIP(config, random_weights(config, seed))
