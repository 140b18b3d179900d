"""Images in, masks out: the resizing, normalisation and padding of transformers'
``SamImageProcessor``, the matching transform of prompt coordinates, and the upscaling of the
decoder's low-resolution logits back to the original image."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ... import ops

# ImageNet statistics in 0..1 units, as SAM's image processor uses them
IMAGE_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGE_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def to_rgb_array(image) -> np.ndarray:
    """A path, PIL image or [h, w, 3] / [h, w, 4] / [h, w] uint8 array -> [h, w, 3] uint8."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            return np.asarray(im.convert("RGB"))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)                            # [h, w, 3]
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError("image must be [h, w, 3] (RGB), [h, w, 4] or [h, w], "
                         f"got shape {tuple(arr.shape)}")
    if arr.dtype != np.uint8:
        raise TypeError(f"image arrays must be uint8 (0..255), got dtype {arr.dtype}")
    if min(arr.shape[:2]) < 1:
        raise ValueError(f"image is empty: shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr[..., :3])


def resized_shape(size: tuple[int, int], longest_side: int) -> tuple[int, int]:
    """(h, w) scaled so the longer side is ``longest_side``, rounded half up (SamImageProcessor)."""
    h, w = size
    scale = longest_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def preprocess(image, image_size: int = 1024, mean=IMAGE_MEAN, std=IMAGE_STD):
    """Resize the longer side to ``image_size`` (Pillow bilinear on uint8, as transformers' PIL
    image processor), scale to 0..1, normalise with ImageNet statistics, zero-pad bottom/right.

    -> pixel_values [1, 3, R, R] float32 (R = image_size), original_size (height, width),
    reshaped_size (h, w)."""
    from PIL import Image

    rgb = to_rgb_array(image)
    original = rgb.shape[:2]
    h, w = resized_shape(original, image_size)
    resized = np.asarray(Image.fromarray(rgb).resize((w, h), resample=Image.BILINEAR))  # [h,w,3]
    x = (resized.astype(np.float32) * np.float32(1 / 255) - mean) / std           # [h, w, 3]
    pixel_values = np.zeros((1, 3, image_size, image_size), np.float32)
    pixel_values[0, :, :h, :w] = x.transpose(2, 0, 1)                             # [3, h, w]
    return pixel_values, tuple(original), (h, w)


def transform_coords(coords, original_size: tuple[int, int], image_size: int = 1024) -> np.ndarray:
    """Points [..., 2] (x, y) or boxes [..., 4] in original-image pixels -> model-input pixels."""
    coords = np.asarray(coords, dtype=np.float64)
    if coords.shape[-1] not in (2, 4):
        raise ValueError("coordinates must end in 2 (x, y) or 4 (x0, y0, x1, y1) values, "
                         f"got shape {tuple(coords.shape)}")
    h, w = original_size
    nh, nw = resized_shape(original_size, image_size)
    scale = np.tile([nw / w, nh / h], coords.shape[-1] // 2)
    return (coords * scale).astype(np.float32)


def postprocess_masks(masks, original_size, reshaped_size, image_size: int = 1024,
                      threshold: float | None = 0.0):
    """Low-res logits [..., 4G, 4G] -> full-resolution masks [..., height, width] (the original
    image's size) as transformers' ``SamProcessor.post_process_masks``: bilinear up to the
    padded input size, crop the padding, bilinear to the original size, then ``> threshold``
    (``threshold=None`` keeps the logits)."""
    masks = np.asarray(masks, dtype=np.float32)
    if masks.ndim < 2:
        raise ValueError(f"masks must be [..., h, w], got shape {tuple(masks.shape)}")
    (height, width), (h, w) = original_size, reshaped_size
    if not (0 < h <= image_size and 0 < w <= image_size):
        raise ValueError(f"reshaped_size {reshaped_size} must fit in the "
                         f"{image_size}x{image_size} input")
    x = ops.interpolate_bilinear(masks, (image_size, image_size))[..., :h, :w]
    x = ops.interpolate_bilinear(np.ascontiguousarray(x), (height, width))
    return x if threshold is None else x > threshold
