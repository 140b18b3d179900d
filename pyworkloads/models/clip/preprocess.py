"""CLIP's image input: load, convert to RGB, resize the shorter side, centre-crop, normalise --
the steps and arithmetic of transformers' ``CLIPImageProcessor`` (PIL backend)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..common import check_int

__all__ = ["CLIP_MEAN", "CLIP_STD", "to_rgb_uint8", "preprocess"]

# The per-channel statistics of OpenAI's training images; OpenCLIP's LAION models reuse them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_rgb_uint8(image) -> np.ndarray:
    """A path, PIL image or uint8 array of h×w pixels ([h, w], or [h, w, 1 | 3 | 4] channels)
    -> uint8 [h, w, 3].

    Transparency is composited onto white, as transformers' ``convert_to_rgb`` does (PIL images
    via PIL's alpha_composite, arrays with the rounded linear blend)."""
    from PIL import Image
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image: no such file {str(path)!r}")
        with Image.open(path) as im:
            im.load()
            image = im.copy()
    if isinstance(image, Image.Image):
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise TypeError("image must be a file path, PIL.Image or numpy array, "
                        f"got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError("image: arrays must be uint8 pixels in [0, 255] (H×W or H×W×C), "
                        f"got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]                                              # [h, w, 1]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise ValueError("image: array must be H×W or H×W×C with C in (1, 3, 4), "
                         f"got shape {image.shape}")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)                                     # [h, w, 3]
    if image.shape[2] == 4:
        alpha = image[..., 3:4] / 255.0                                        # [h, w, 1]
        return np.round(alpha * image[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return image


def preprocess(image, size: int = 224, crop_size: int | None = None, mean=CLIP_MEAN,
               std=CLIP_STD) -> np.ndarray:
    """One image -> CLIP's input: float32 [1, 3, crop, crop].

    RGB; resize so the shorter side is ``size`` (the longer one truncated to int) with PIL's
    bicubic filter, which antialiases when shrinking and works on the uint8 image; center crop
    (offsets floored); scale to [0, 1]; normalise per channel with ``mean``/``std`` (OpenAI's by
    default)."""
    from PIL import Image
    crop = size if crop_size is None else crop_size
    check_int(size, "preprocess: size")
    check_int(crop, "preprocess: crop_size")
    if crop > size:
        raise ValueError(f"preprocess: crop_size ({crop}) must not exceed the resized shorter side "
                         f"({size})")
    rgb = to_rgb_uint8(image)                                                  # [h, w, 3]
    h, w = rgb.shape[:2]
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_h, new_w = size, int(size * w / h)
    resized = Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BICUBIC)
    rgb = np.asarray(resized)                                                  # [new_h, new_w, 3]
    top, left = (new_h - crop) // 2, (new_w - crop) // 2
    rgb = rgb[top:top + crop, left:left + crop]                                # [crop, crop, 3]
    x = (rgb.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)       # [crop, crop, 3]
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])                    # [1, 3, crop, crop]
