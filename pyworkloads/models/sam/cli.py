"""The hooks ``pyworkloads demo`` and ``pyworkloads run sam`` call."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ... import kernels
from .api import from_preset
from .hf import from_pretrained
from .model import PRESETS
from .predictor import SamPredictor
from .preprocess import to_rgb_array


def demo() -> str:
    """Random-weight sam-tiny on a random image with one point and one box prompt."""
    model = from_preset("sam-tiny", seed=0)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(96, 160, 3), dtype=np.uint8)
    predictor = SamPredictor(model)
    predictor.set_image(image)
    masks, scores, low_res = predictor.predict(points=[[80, 40]], labels=[1])
    box_masks, box_scores, _ = predictor.predict(box=[20, 10, 120, 70], multimask_output=False)
    return (f"sam-tiny (random weights, backend {kernels.get_backend()}): image "
            f"{image.shape[1]}x{image.shape[0]} -> embeddings {predictor.image_embeddings.shape}; "
            f"point (80,40) -> {masks.shape[0]} masks {masks.shape[1:]} "
            f"iou [{', '.join(f'{x:.2e}' for x in scores)}]; box -> 1 mask of "
            f"{int(box_masks[0].sum())} px, iou {box_scores[0]:.2e}")


def _numbers(text: str, n: int, what: str) -> list[float]:
    try:
        vals = [float(t) for t in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) != n:
        raise ValueError(f"{what} must be {n} comma-separated numbers, got {text!r}")
    return vals


def add_run_arguments(parser) -> None:
    """``pyworkloads run sam --model DIR --image x.jpg --point 120,200 [--box x0,y0,x1,y1]
    --out mask.png``"""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="Hugging Face SAM checkpoint directory "
                                     "(config.json + *.safetensors)")
    src.add_argument("--preset", choices=sorted(PRESETS),
                     help="random weights of a preset (for trying the pipeline)")
    parser.add_argument("--image", required=True, help="input image (any format Pillow reads)")
    parser.add_argument("--point", action="append", default=[], metavar="X,Y",
                        help="a prompt point in image pixels (repeatable)")
    parser.add_argument("--label", action="append", type=int, default=None, metavar="L",
                        help="label of each --point, in order: 1 foreground (default), "
                             "0 background")
    parser.add_argument("--box", metavar="X0,Y0,X1,Y1", help="a prompt box in image pixels")
    parser.add_argument("--single-mask", action="store_true",
                        help="ask for one mask instead of three candidates")
    parser.add_argument("--out", default="mask.png",
                        help="where to write the best mask as a PNG overlay")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (0..1)")


def overlay(rgb: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    """rgb [h, w, 3] uint8 with the pixels of mask [h, w] blended towards the SAM demo's blue."""
    colour = np.array([30, 144, 255], np.float32)
    out = rgb.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * colour
    return out.round().clip(0, 255).astype(np.uint8)


def run_cli(args) -> int:
    """Segment the object at --point / in --box and write the best mask as an overlay PNG.
    Bad arguments raise ValueError (the ``pyworkloads`` command prints them as one line)."""
    from PIL import Image

    if not args.point and not args.box:
        raise ValueError("give at least one --point X,Y or a --box X0,Y0,X1,Y1")
    points = [_numbers(p, 2, "--point") for p in args.point] or None
    box = _numbers(args.box, 4, "--box") if args.box else None
    labels = args.label
    if labels is not None and (points is None or len(labels) != len(points)):
        raise ValueError(f"give one --label per --point ({len(points or [])} points, "
                         f"{len(labels)} labels)")
    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must lie in [0, 1], got {args.alpha}")
    out = Path(args.out)
    if out.is_dir():
        raise IsADirectoryError(f"--out {args.out!r} is a directory; give a file name for the "
                                "PNG")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {args.out!r}: no directory {str(out.parent)!r} to "
                                "write it in")
    model = from_pretrained(args.model) if args.model else from_preset(args.preset)
    rgb = to_rgb_array(args.image)
    predictor = SamPredictor(model)
    predictor.set_image(rgb)
    masks, scores, _ = predictor.predict(points=points, labels=labels, box=box,
                                         multimask_output=not args.single_mask)
    best = int(np.argmax(scores))
    Image.fromarray(overlay(rgb, masks[best], args.alpha)).save(args.out, format="PNG")
    print(f"{len(scores)} mask(s), predicted IoU {np.round(scores, 4).tolist()}; best #{best}: "
          f"{int(masks[best].sum())} of {masks[best].size} pixels -> {args.out}")
    return 0
