"""CLIP's image input: load, convert to RGB, resize the shorter side, centre-crop, normalise --
the steps and arithmetic of transformers' ``CLIPImageProcessor`` (PIL backend).  Loading and the
conversion to 8-bit RGB are :func:`pyworkloads.image.load_image`'s, shared with SAM."""
from __future__ import annotations

import numpy as np

from ...image import load_image, rgb_statistics
from ..common import check_int

__all__ = ["CLIP_MEAN", "CLIP_STD", "MAX_RESIZED_PIXELS", "to_rgb_uint8", "resized_size",
           "preprocess"]

# The per-channel statistics of OpenAI's training images; OpenCLIP's LAION models reuse them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The most pixels the resized image (before the centre crop) may have: 2^26 (192 MiB as RGB).
# Resizing keeps the aspect ratio, so at size 224 this admits strips up to ~1300:1 (webtoon
# pages reach ~100:1) and refuses a 1 x 100000 image, which would become 224 x 22 400 000.
MAX_RESIZED_PIXELS = 2**26


def to_rgb_uint8(image) -> np.ndarray:
    """A path, PIL image or uint8 / uint16 array of h×w pixels ([h, w], or [h, w, 1 | 3 | 4]
    channels) -> uint8 [h, w, 3] (see :func:`pyworkloads.image.load_image`: transparency
    composited onto white as transformers' ``convert_to_rgb`` does, 16-bit pixels scaled)."""
    return load_image(image)


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) with the shorter side ``size`` and the longer one ``size`` x the aspect ratio,
    truncated to int (CLIPImageProcessor's ``shortest_edge``)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def preprocess(image, size: int = 224, crop_size: int | None = None, mean=CLIP_MEAN,
               std=CLIP_STD) -> np.ndarray:
    """One image -> CLIP's input: float32 [1, 3, crop, crop].

    RGB; resize so the shorter side is ``size`` (the longer one truncated to int) with PIL's
    bicubic filter, which antialiases when shrinking and works on the uint8 image; center crop
    (offsets floored); scale to [0, 1]; normalise per channel with ``mean``/``std`` (OpenAI's by
    default).  The image may have at most ``PIL.Image.MAX_IMAGE_PIXELS`` pixels and its resized
    size at most ``MAX_RESIZED_PIXELS`` (2^26); both are checked before anything is decoded or
    resized."""
    from PIL import Image
    crop = size if crop_size is None else crop_size
    check_int(size, "preprocess: size")
    check_int(crop, "preprocess: crop_size")
    if crop > size:
        raise ValueError(f"preprocess: crop_size ({crop}) must not exceed the resized shorter side "
                         f"({size})")
    mean32 = rgb_statistics(mean, "preprocess: mean")
    std32 = rgb_statistics(std, "preprocess: std", positive=True)

    def check_resize(h: int, w: int) -> None:
        new_h, new_w = resized_size(h, w, size)
        if new_h * new_w > MAX_RESIZED_PIXELS:
            raise ValueError(
                f"image: {w}x{h} pixels resized so that the shorter side is {size} would be "
                f"{new_w}x{new_h} = {new_w * new_h:,} pixels (aspect ratio "
                f"{max(h, w) / min(h, w):.0f}:1), more than the limit of {MAX_RESIZED_PIXELS:,} "
                f"(clip.preprocess.MAX_RESIZED_PIXELS); crop the image first")

    rgb = load_image(image, check_size=check_resize)                           # [h, w, 3]
    h, w = rgb.shape[:2]
    new_h, new_w = resized_size(h, w, size)
    resized = Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BICUBIC)
    rgb = np.asarray(resized)                                                  # [new_h, new_w, 3]
    top, left = (new_h - crop) // 2, (new_w - crop) // 2
    rgb = rgb[top:top + crop, left:left + crop]                                # [crop, crop, 3]
    x = (rgb.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - mean32) / std32                                                   # [crop, crop, 3]
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])                    # [1, 3, crop, crop]
