"""Images in, masks out: the resizing, normalisation and padding of transformers'
``SamImageProcessor``, the matching transform of prompt coordinates, and the upscaling of the
decoder's low-resolution logits back to the original image.  Loading and the conversion to
8-bit RGB are :func:`pyworkloads.image.load_image`'s, shared with CLIP."""
from __future__ import annotations

import numpy as np

from ... import ops
from ...image import check_image_size, load_image, rgb_statistics
from ..common import check_int

# ImageNet statistics in 0..1 units, as SAM's image processor uses them
IMAGE_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGE_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# The largest model input side preprocess() makes: SAM and its variants use 1024; 4096 keeps
# pixel_values [1, 3, R, R] under 200 MB.
MAX_IMAGE_SIZE = 4096
# Elements of the full-size masks upscaled at a time (a block of rows): with at most
# PIL.Image.MAX_IMAGE_PIXELS pixels per image, one float32 copy of all masks is never made.
BLOCK_ELEMENTS = 2**22


def to_rgb_array(image) -> np.ndarray:
    """A path, PIL image or [h, w] / [h, w, 1 | 3 | 4] uint8 or uint16 array -> [h, w, 3] uint8
    (see :func:`pyworkloads.image.load_image`: transparency composited onto white, as
    SamImageProcessor's convert_to_rgb does, and 16-bit pixels scaled)."""
    return load_image(image)


def resized_shape(size: tuple[int, int], longest_side: int) -> tuple[int, int]:
    """(h, w) scaled so the longer side is ``longest_side``, rounded half up (SamImageProcessor),
    and at least 1: a 1 x 3000 image keeps its one row (transformers' arithmetic gives 0 rows,
    which PIL cannot resize to)."""
    h, w = size
    scale = longest_side * 1.0 / max(h, w)
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


def preprocess(image, image_size: int = 1024, mean=IMAGE_MEAN, std=IMAGE_STD):
    """Resize the longer side to ``image_size`` (Pillow bilinear on uint8, as transformers' PIL
    image processor), scale to 0..1, normalise with ImageNet statistics, zero-pad bottom/right.

    image: a path, PIL image or uint8 / uint16 array (see :func:`pyworkloads.image.load_image`;
    at most ``PIL.Image.MAX_IMAGE_PIXELS`` pixels, checked before decoding).
    -> pixel_values [1, 3, R, R] float32 (R = image_size), original_size (height, width),
    reshaped_size (h, w)."""
    from PIL import Image

    check_int(image_size, "preprocess: image_size", maximum=MAX_IMAGE_SIZE)
    mean = rgb_statistics(mean, "preprocess: mean")
    std = rgb_statistics(std, "preprocess: std", positive=True)
    rgb = load_image(image)                                                       # [H, W, 3]
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
    check_image_size(check_int(height, "original_size height"),
                     check_int(width, "original_size width"), "original_size")
    if not (0 < h <= image_size and 0 < w <= image_size):
        raise ValueError(f"reshaped_size {reshaped_size} must fit in the "
                         f"{image_size}x{image_size} input")
    x = ops.interpolate_bilinear(masks, (image_size, image_size))[..., :h, :w]   # [..., h, w]
    # the second interpolation, ops.interpolate_bilinear's arithmetic a block of rows at a time
    i0, i1, a0, a1 = ops._linear_taps(h, height)
    j0, j1, b0, b1 = ops._linear_taps(w, width)
    dt = x.dtype
    a0, a1, b0, b1 = a0[:, None].astype(dt), a1[:, None].astype(dt), b0.astype(dt), b1.astype(dt)
    out = np.empty(x.shape[:-2] + (height, width), np.float32 if threshold is None else bool)
    rows = max(1, BLOCK_ELEMENTS // max(1, width * int(np.prod(x.shape[:-2]))))
    for r in range(0, height, rows):
        blk = slice(r, r + rows)
        part = x[..., i0[blk], :] * a0[blk] + x[..., i1[blk], :] * a1[blk]        # [..., rows, w]
        part = part[..., j0] * b0 + part[..., j1] * b1                          # [..., rows, W]
        out[..., blk, :] = part if threshold is None else part > threshold
    return out
