"""The user-facing model: :class:`Sam` checks its weights and every user input, then runs the
pure forward functions of :mod:`.model`; :func:`from_preset` builds one with random weights."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..common import check_fits, check_weights, random_weights
from .hf import tie_gaussian
from .image_encoder import image_encoder
from .model import GAUSSIAN, PRESETS, Config, count_params, decode_prompts, weight_shapes
from .prompt_encoder import PAD_LABEL, image_positional_embeddings

VALID_LABELS = (PAD_LABEL, -1, 0, 1)


# ---------------------------------------------------------------------------------------------
# input validation
# ---------------------------------------------------------------------------------------------
def _as_float(x, name: str, ndim: int, layout: str) -> np.ndarray:
    """A finite float32 array of ``ndim`` dimensions (``layout`` names them in the error)."""
    x = np.asarray(x)
    if x.dtype.kind not in "fiu" or x.dtype == np.bool_:
        raise TypeError(f"{name} must be a numeric array, got dtype {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(x.shape)}")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _check_labels(labels, points: np.ndarray) -> np.ndarray:
    """One integer label per point, each 1, 0, -1 or PAD_LABEL -> int64 [B, Pr, Pt]."""
    if labels is None:
        return np.ones(points.shape[:3], np.int64)
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        if not np.all(labels == np.round(labels)):
            raise ValueError("input_labels must be integers "
                             "(1 foreground, 0 background, -1 not a point)")
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"input_labels must be integers, got dtype {labels.dtype}")
    if labels.shape != points.shape[:3]:
        raise ValueError(f"input_labels must give one label per point: expected shape "
                         f"{tuple(points.shape[:3])} for input_points {tuple(points.shape)}, "
                         f"got {tuple(labels.shape)} (labels count != points count)")
    bad = ~np.isin(labels, VALID_LABELS)
    if bad.any():
        raise ValueError("input_labels values must be 1 (foreground), 0 (background) or -1 "
                         f"(not a point) (or {PAD_LABEL}, transformers' padding); "
                         f"got {sorted(set(labels[bad].tolist()))}")
    return labels.astype(np.int64)


def _check_points(points):
    points = np.asarray(points)
    if points.ndim != 4 or points.shape[-1] != 2:
        raise ValueError("input_points must have shape [batch, prompts, points, 2] with (x, y) "
                         f"coordinates, got {tuple(points.shape)}")
    return _as_float(points, "input_points", 4, "[batch, prompts, points, 2]")


def _check_boxes(boxes, points):
    boxes = np.asarray(boxes)
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError("input_boxes must have shape [batch, boxes, 4] with 4 coordinates "
                         f"(x0, y0, x1, y1) per box, got {tuple(boxes.shape)}")
    boxes = _as_float(boxes, "input_boxes", 3, "[batch, boxes, 4]")
    if points is not None and boxes.shape[:2] != points.shape[:2]:
        raise ValueError(f"input_boxes {tuple(boxes.shape)} must pair one box with each prompt "
                         f"of input_points {tuple(points.shape)}: the first two dimensions "
                         "must match")
    return boxes


def _check_masks(masks, config: Config):
    side = 4 * config.prompt_encoder_config.image_embedding_size
    masks = np.asarray(masks)
    if masks.ndim != 4 or masks.shape[1:] != (1, side, side):
        raise ValueError(f"input_masks must have shape [batch, 1, {side}, {side}] "
                         f"(low-resolution logits), got {tuple(masks.shape)}")
    return _as_float(masks, "input_masks", 4, f"[batch, 1, {side}, {side}]")


def check_prompts(points, labels, boxes, masks, config: Config):
    """Validate prompt arrays (transformers' shapes) and return them as arrays: float32 points
    [B, Pr, Pt, 2], int64 labels [B, Pr, Pt], float32 boxes [B, Pr, 4] and masks
    [B, 1, 4G, 4G]."""
    if points is not None:
        points = _check_points(points)
        labels = _check_labels(labels, points)
    elif labels is not None:
        raise ValueError("input_labels were given without input_points")
    if boxes is not None:
        boxes = _check_boxes(boxes, points)
    if masks is not None:
        masks = _check_masks(masks, config)
    return points, labels, boxes, masks


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
@dataclass
class SamOutput:
    """pred_masks [B, Pr, Mo, 4G, 4G] low-resolution logits (Mo = 3 or 1), iou_scores
    [B, Pr, Mo], image_embeddings [B, C, G, G] (reuse them for further prompts on the same
    images)."""
    pred_masks: np.ndarray
    iou_scores: np.ndarray
    image_embeddings: np.ndarray


class Sam:
    """Segment Anything over a weights mapping keyed by HF names."""

    def __init__(self, config: Config, weights):
        self.config = config
        self.weights = tie_gaussian(weights)
        check_weights(self.weights, weight_shapes(config), "SAM")

    def get_image_embeddings(self, pixel_values) -> np.ndarray:
        """pixel_values [B, 3, R, R] (preprocessed, see :func:`preprocess`) -> [B, C, G, G]."""
        v = self.config.vision_config
        layout = f"[batch, {v.num_channels}, {v.image_size}, {v.image_size}]"
        x = _as_float(pixel_values, "pixel_values", 4, layout)
        if x.shape[1:] != (v.num_channels, v.image_size, v.image_size):
            raise ValueError(f"pixel_values must be {layout} (wrong image size: resize and pad "
                             f"with sam.preprocess), got {tuple(x.shape)}")
        return image_encoder(x, self.weights, self.config)

    def get_image_wide_positional_embeddings(self) -> np.ndarray:
        """[C, G, G]: the Fourier encoding of every embedding cell (the decoder's key positions)."""
        return image_positional_embeddings(self.weights, self.config)

    def _check_embeddings(self, image_embeddings) -> np.ndarray:
        C = self.config.mask_decoder_config.hidden_size
        G = self.config.prompt_encoder_config.image_embedding_size
        x = _as_float(image_embeddings, "image_embeddings", 4, f"[batch, {C}, {G}, {G}]")
        if x.shape[1:] != (C, G, G):
            raise ValueError(f"image_embeddings must be [batch, {C}, {G}, {G}], "
                             f"got {tuple(x.shape)}")
        return x

    def __call__(self, pixel_values=None, input_points=None, input_labels=None, input_boxes=None,
                 input_masks=None, multimask_output: bool = True,
                 image_embeddings=None) -> SamOutput:
        """Masks for prompts, in transformers' shapes and model-input pixel coordinates.

        input_points [B, Pr, Pt, 2] (x, y), input_labels [B, Pr, Pt] (default: all foreground),
        input_boxes [B, Pr, 4] (x0, y0, x1, y1; with points, box i joins prompt i),
        input_masks [B, 1, 4G, 4G] (previous low-res logits).  Pass either pixel_values
        [B, 3, R, R] or image_embeddings [B, C, G, G] from :meth:`get_image_embeddings`."""
        if (pixel_values is None) == (image_embeddings is None):
            raise ValueError("pass exactly one of pixel_values and image_embeddings")
        points, labels, boxes, masks = check_prompts(input_points, input_labels, input_boxes,
                                                     input_masks, self.config)
        if image_embeddings is None:
            image_embeddings = self.get_image_embeddings(pixel_values)
        else:
            image_embeddings = self._check_embeddings(image_embeddings)
        B = image_embeddings.shape[0]
        for name, arr in (("input_points", points), ("input_boxes", boxes), ("input_masks", masks)):
            if arr is not None and arr.shape[0] != B:
                raise ValueError(f"{name} has batch size {arr.shape[0]} but there are {B} images")
        pred_masks, iou = decode_prompts(image_embeddings, points, labels, boxes, masks,
                                         self.weights, self.config, bool(multimask_output))
        return SamOutput(pred_masks=pred_masks, iou_scores=iou, image_embeddings=image_embeddings)


# ---------------------------------------------------------------------------------------------
# random weights
# ---------------------------------------------------------------------------------------------
def _init_gaussian(name: str, shape: tuple, rng: np.random.Generator):
    """The Fourier matrix at N(0, 1), Meta's PositionEmbeddingRandom scale (None: the default)."""
    return rng.standard_normal(shape, dtype=np.float32) if name == GAUSSIAN else None


def init_weights(config: Config, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights with the real shapes: N(0, 0.02) matrices, zero biases, unit
    norms, and a N(0, 1) Fourier matrix."""
    return random_weights(weight_shapes(config), seed, 0.02, init=_init_gaussian)


def from_preset(name: str, seed: int = 0) -> Sam:
    """A preset's real shapes with random weights (refused if they would not fit in memory)."""
    if name not in PRESETS:
        raise ValueError(f"unknown SAM preset {name!r}; known: {', '.join(PRESETS)}")
    config = PRESETS[name]
    check_fits(4 * count_params(config, include_positional_gaussian=True), name)
    return Sam(config, init_weights(config, seed))
