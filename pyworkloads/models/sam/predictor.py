"""``SamPredictor``: encode an image once, then answer prompts in the original image's pixels."""
from __future__ import annotations

import numpy as np

from .api import Sam
from .preprocess import postprocess_masks, preprocess, transform_coords

# Points in one prompt: a handful in interactive use; the automatic mask generator's 32 x 32 grid
# (1024) is the most in use, and it sends each point as a prompt of its own.  The mask decoder's
# attention grows with the square of the prompt's tokens.
MAX_POINTS = 1024


class SamPredictor:
    """Encode an image once (:meth:`set_image`), then answer many prompts (:meth:`predict`, or
    :meth:`predict_batch` for many at once) given in original-image pixel coordinates, like
    ``segment_anything.SamPredictor``."""

    def __init__(self, model: Sam):
        self.model = model
        self.image_embeddings = None
        self.original_size = self.reshaped_size = None

    def set_image(self, image) -> None:
        """image: a path, PIL image or array (see :func:`preprocess`)."""
        S = self.model.config.vision_config.image_size
        pixel_values, self.original_size, self.reshaped_size = preprocess(image, S)
        self.image_embeddings = self.model.get_image_embeddings(pixel_values)

    def _points(self, points, labels, S: int):
        """points [..., Pt, 2], labels [..., Pt] or None -> model-input coordinates (float32) and
        int64 labels of the same shapes (``predict`` passes one prompt, ``predict_batch``
        many)."""
        try:
            pts = np.asarray(points, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"point_coords must be numbers [points, 2] (x, y): {exc}") from None
        if pts.ndim < 2 or pts.shape[-1] != 2:
            raise ValueError(f"point_coords must be [points, 2] (x, y), "
                             f"got shape {tuple(pts.shape)}")
        if pts.shape[-2] > MAX_POINTS:
            raise ValueError(f"a prompt takes at most {MAX_POINTS} points, got {pts.shape[-2]} "
                             "(send more as separate prompts)")
        lab = np.ones(pts.shape[:-1], np.int64) if labels is None else np.asarray(labels)
        if lab.shape != pts.shape[:-1]:
            raise ValueError(f"point_labels must give one label per point: point_coords "
                             f"{tuple(pts.shape)} needs labels of shape {tuple(pts.shape[:-1])}, "
                             f"got {tuple(lab.shape)}")
        return transform_coords(pts, self.original_size, S), lab

    def _box(self, box, S: int):
        """box [4] -> model input [1, 1, 4]."""
        try:
            b = np.asarray(box, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"box must be 4 numbers (x0, y0, x1, y1): {exc}") from None
        if b.shape != (4,):
            raise ValueError(f"box must have 4 coordinates (x0, y0, x1, y1), "
                             f"got shape {tuple(b.shape)}")
        return transform_coords(b, self.original_size, S)[None, None]

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output: bool = True, return_logits: bool = False, *,
                points=None, labels=None):
        """point_coords [Pt, 2] (x, y), point_labels [Pt] (1 foreground, 0 background; default
        all 1), box [4] (x0, y0, x1, y1), all in the original image's pixels; mask_input
        [1, 4G, 4G] low-res logits of an earlier call.  point_coords and point_labels are
        segment-anything's names; ``points`` and ``labels``, this predictor's earlier names,
        are accepted as aliases (one spelling per argument).

        -> masks [Mo, height, width] (the original image's; bool, or float logits with
        return_logits), scores [Mo], low_res [Mo, 4G, 4G]."""
        point_coords = _alias(point_coords, points, "point_coords", "points")
        point_labels = _alias(point_labels, labels, "point_labels", "labels")
        self._check_ready()
        if point_coords is None and box is None and mask_input is None:
            raise ValueError("predict needs at least one prompt: point_coords, box or mask_input")
        if point_coords is None and point_labels is not None:
            raise ValueError("point_labels were given without point_coords")
        S = self.model.config.vision_config.image_size
        in_points = in_labels = in_box = in_mask = None
        if point_coords is not None:
            in_points, in_labels = self._points(point_coords, point_labels, S)   # [Pt, 2]
            if in_points.ndim != 2:
                raise ValueError("point_coords must be [points, 2] (x, y) for one prompt, got "
                                 f"shape {tuple(np.shape(point_coords))} (predict_batch takes "
                                 "many prompts)")
            in_points, in_labels = in_points[None, None], in_labels[None, None]  # [1, 1, Pt, 2]
        if box is not None:
            in_box = self._box(box, S)                                        # [1, 1, 4]
        if mask_input is not None:
            in_mask = np.asarray(mask_input, dtype=np.float32)[None]          # [1, 1, 4G, 4G]
        out = self.model(image_embeddings=self.image_embeddings, input_points=in_points,
                         input_labels=in_labels, input_boxes=in_box, input_masks=in_mask,
                         multimask_output=multimask_output)
        low_res = out.pred_masks[0, 0]                                        # [Mo, 4G, 4G]
        masks = postprocess_masks(low_res, self.original_size, self.reshaped_size, S,
                                  threshold=None if return_logits else 0.0)
        return masks, out.iou_scores[0, 0], low_res

    def predict_batch(self, point_coords, point_labels=None, multimask_output: bool = True,
                      return_logits: bool = False):
        """Many point prompts at once on the encoded image, one pass of the prompt encoder and
        mask decoder (segment-anything's ``predict_torch``, but in original-image pixels).

        point_coords [Pr, Pt, 2] (x, y), point_labels [Pr, Pt] (default all 1)
        -> masks [Pr, Mo, height, width] (bool, or float logits with return_logits),
        scores [Pr, Mo], low_res [Pr, Mo, 4G, 4G]."""
        self._check_ready()
        S = self.model.config.vision_config.image_size
        in_points, in_labels = self._points(point_coords, point_labels, S)     # [Pr, Pt, 2]
        if in_points.ndim != 3:
            raise ValueError("point_coords must be [prompts, points, 2] (x, y), got shape "
                             f"{tuple(np.shape(point_coords))}")
        out = self.model(image_embeddings=self.image_embeddings,
                         input_points=in_points[None], input_labels=in_labels[None],
                         multimask_output=multimask_output)
        low_res = out.pred_masks[0]                                           # [Pr, Mo, 4G, 4G]
        masks = postprocess_masks(low_res, self.original_size, self.reshaped_size, S,
                                  threshold=None if return_logits else 0.0)
        return masks, out.iou_scores[0], low_res

    def _check_ready(self) -> None:
        if self.image_embeddings is None:
            raise RuntimeError("call set_image(image) before predict() or predict_batch()")


def _alias(value, old, name: str, old_name: str):
    """``value``, or the same argument given under its older name ``old_name``."""
    if old is None:
        return value
    if value is not None:
        raise ValueError(f"give {name} or its older name {old_name}, not both")
    return old
