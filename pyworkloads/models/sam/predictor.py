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
    """Encode an image once (:meth:`set_image`), then answer many prompts (:meth:`predict`)
    given in original-image pixel coordinates, like ``segment_anything.SamPredictor``."""

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
        """points [Pt, 2], labels [Pt] or None -> model inputs [1, 1, Pt, 2], [1, 1, Pt]."""
        try:
            pts = np.asarray(points, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"points must be numbers [points, 2] (x, y): {exc}") from None
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"points must be [points, 2] (x, y), got shape {tuple(pts.shape)}")
        if len(pts) > MAX_POINTS:
            raise ValueError(f"a prompt takes at most {MAX_POINTS} points, got {len(pts)} "
                             "(send more as separate prompts)")
        lab = np.ones(len(pts), np.int64) if labels is None else np.asarray(labels)
        if lab.ndim != 1 or len(lab) != len(pts):
            raise ValueError(f"labels must be [points], one label per point: {len(pts)} points, "
                             f"got labels of shape {tuple(lab.shape)}")
        return transform_coords(pts, self.original_size, S)[None, None], lab[None, None]

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

    def predict(self, points=None, labels=None, box=None, mask_input=None,
                multimask_output: bool = True, return_logits: bool = False):
        """points [Pt, 2] (x, y), labels [Pt] (default: all 1), box [4] (x0, y0, x1, y1), all in
        the original image's pixels; mask_input [1, 4G, 4G] low-res logits of an earlier call.

        -> masks [Mo, height, width] (the original image's; bool, or float logits with
        return_logits), scores [Mo], low_res [Mo, 4G, 4G]."""
        if self.image_embeddings is None:
            raise RuntimeError("call set_image(image) before predict()")
        if points is None and box is None and mask_input is None:
            raise ValueError("predict needs at least one prompt: points, box or mask_input")
        if points is None and labels is not None:
            raise ValueError("labels were given without points")
        S = self.model.config.vision_config.image_size
        in_points = in_labels = in_box = in_mask = None
        if points is not None:
            in_points, in_labels = self._points(points, labels, S)            # [1, 1, Pt, 2]
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
