"""Image input of CLIP and SAM: a file, a PIL image or an array read as 8-bit RGB, its size
checked before it is decoded or resized.

Every image ends as uint8 [h, w, 3], as transformers' ``convert_to_rgb`` makes it, except where
PIL's ``convert`` would lose information or fail:

- transparency is composited onto white (PIL images with PIL's ``alpha_composite``, arrays with
  the rounded linear blend), including PIL's premultiplied ``La`` / ``RGBa`` modes;
- 16-bit pixels (PIL modes ``I;16*``, mode ``I`` holding 0 .. 65535, uint16 arrays) are scaled to
  8 bits as round(v / 257), where PIL's convert clips them at 255 (a 16-bit PNG would come out
  almost white);
- float images (mode ``F``) are refused: their pixels have no fixed range;
- every other mode (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` ...) goes through
  PIL's ``convert("RGB")``.

Size: an image may have at most :func:`max_pixels` pixels, PIL's ``Image.MAX_IMAGE_PIXELS``
(89,478,485 unless changed): the size above which PIL warns of a decompression bomb.  A file's
size is read from its header and checked before its pixels are decoded, so a few hundred bytes
declaring 30000 x 30000 pixels are refused without allocating them; raise PIL's limit to accept
larger images.  The models add their own checks of the resized size (``check_size``).
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["load_image", "max_pixels", "check_image_size", "rgb_statistics"]

# PIL modes with an alpha band (premultiplied or not); "transparency" in .info marks the others
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")

SizeCheck = Callable[[int, int], None]


def max_pixels() -> int | None:
    """The most pixels an image may have: ``PIL.Image.MAX_IMAGE_PIXELS`` as it is now (None if
    it was set to None, which switches the limit off here as in PIL)."""
    from PIL import Image
    return Image.MAX_IMAGE_PIXELS


def check_image_size(height: int, width: int, what: str = "image") -> None:
    """ValueError unless both sides are >= 1 and height x width <= :func:`max_pixels`."""
    if height < 1 or width < 1:
        raise ValueError(f"{what} is empty: {width}x{height} pixels (width x height)")
    limit = max_pixels()
    if limit is not None and height * width > limit:
        raise ValueError(f"{what} has {width}x{height} = {height * width:,} pixels, more than "
                         f"the limit of {limit:,} (PIL.Image.MAX_IMAGE_PIXELS, PIL's "
                         "decompression-bomb threshold); downscale it, or raise that limit if the "
                         "image is trusted")


def rgb_statistics(values, name: str, positive: bool = False) -> np.ndarray:
    """A per-channel mean or std: 3 finite numbers (positive ones with ``positive``) -> float32
    [3], else ValueError naming ``name``."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)) or (positive and not np.all(arr > 0)):
        kind = "positive finite" if positive else "finite"
        raise ValueError(f"{name} must be 3 {kind} numbers (one per RGB channel), got {values!r}")
    return arr.astype(np.float32)


def load_image(image, what: str = "image", check_size: SizeCheck | None = None) -> np.ndarray:
    """A path, PIL image or array -> uint8 [h, w, 3] (RGB).

    Arrays: uint8 or uint16 pixels, [h, w] or [h, w, C] with C in (1, 3, 4) (grey, RGB, RGBA).
    ``check_size(h, w)`` (a model's limit on its resized image) runs with the size check of
    :func:`check_image_size`, before anything is decoded or converted.  Unreadable, truncated or
    corrupt files raise ValueError naming the file; missing files FileNotFoundError,
    directories IsADirectoryError, unreadable ones PermissionError."""
    from PIL import Image
    if isinstance(image, (str, os.PathLike)):
        return _load_file(Path(image), what, check_size)
    if isinstance(image, Image.Image):
        _check(image.height, image.width, what, check_size)
        _load_pixels(image, what)              # an opened file decodes now
        return _pil_to_rgb(image, what)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, what, check_size)
    raise TypeError(f"{what} must be a file path, PIL.Image or numpy array, "
                    f"got {type(image).__name__}")


def _check(height: int, width: int, what: str, check_size: SizeCheck | None) -> None:
    check_image_size(height, width, what)
    if check_size is not None:
        check_size(height, width)


def _load_file(path: Path, what: str, check_size: SizeCheck | None) -> np.ndarray:
    from PIL import Image
    if not path.exists():
        raise FileNotFoundError(f"{what}: no such file {str(path)!r}")
    if path.is_dir():
        raise IsADirectoryError(f"{what}: {str(path)!r} is a directory, not an image file")
    what = f"{what} {str(path)!r}"
    with open(path, "rb") as fh:                               # PermissionError as it is
        try:
            with warnings.catch_warnings():
                # sizes between PIL's warning and error thresholds are refused below
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(fh)
        except Image.DecompressionBombError as exc:
            raise ValueError(f"{what}: {exc}") from exc
        except MemoryError:
            raise
        except Exception as exc:           # PIL's plugins raise many types on corrupt headers
            raise ValueError(f"{what}: cannot read it as an image ({type(exc).__name__}: "
                             f"{exc})") from exc
        with im:
            _check(im.height, im.width, what, check_size)     # from the header, not decoded
            _load_pixels(im, what)
            return _pil_to_rgb(im, what)


def _load_pixels(im, what: str) -> None:
    """Decode a PIL image's pixels; truncated or corrupt data -> ValueError naming it."""
    try:
        im.load()
    except MemoryError:
        raise
    except Exception as exc:               # PIL's decoders raise many types on corrupt data
        raise ValueError(f"{what}: truncated or corrupt image data "
                         f"({type(exc).__name__}: {exc})") from exc


def _scale16(a: np.ndarray) -> np.ndarray:
    """16-bit levels 0 .. 65535 -> uint8 round(v / 257) (65535 / 255 = 257 exactly; v / 257 is
    never a half, so (v + 128) // 257 is the rounding)."""
    return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _pil_to_rgb(im, what: str) -> np.ndarray:
    from PIL import Image
    mode = im.mode
    if mode == "F":
        raise TypeError(f"{what} has mode F (32-bit float pixels), which has no fixed range; "
                        "scale it to 8 bits first, e.g. Image.fromarray(uint8_array)")
    if mode == "I" or mode.startswith("I;16"):
        a = np.asarray(im)                                                    # [h, w] int
        if mode == "I" and a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
            raise ValueError(f"{what} has mode I with pixels in {int(a.min())} .. "
                             f"{int(a.max())}; 32-bit integer images are read as 16-bit "
                             "(0 .. 65535), so scale it first")
        rgb = np.repeat(_scale16(a)[:, :, None], 3, axis=2)                   # [h, w, 3]
        t = im.info.get("transparency")
        if isinstance(t, int):                        # the transparent level shows the white
            rgb[a == t] = 255
        return rgb
    if mode == "La":
        im = im.convert("LA")                         # PIL converts La to nothing else
    if im.mode in _ALPHA_MODES or im.info.get("transparency") is not None:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    try:
        return np.asarray(im.convert("RGB"))
    except ValueError as exc:                         # a mode PIL cannot convert
        raise ValueError(f"{what} has mode {mode}, which cannot be converted to RGB "
                         f"({exc})") from exc


def _array_to_rgb(image: np.ndarray, what: str, check_size: SizeCheck | None) -> np.ndarray:
    if image.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"{what}: arrays must be uint8 pixels in [0, 255] or uint16 in "
                        f"[0, 65535] (H×W or H×W×C), got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]                                              # [h, w, 1]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"{what} must be an H×W or H×W×C array with C in (1, 3, 4), "
                         f"got shape {image.shape}")
    _check(image.shape[0], image.shape[1], what, check_size)
    if image.dtype == np.uint16:
        image = _scale16(image)
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)                                     # [h, w, 3]
    if image.shape[2] == 4:
        alpha = image[..., 3:4] / 255.0                                        # [h, w, 1]
        return np.round(alpha * image[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return np.ascontiguousarray(image)
