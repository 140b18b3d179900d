"""The hooks ``pyworkloads demo`` and ``pyworkloads run sam`` call."""
from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np

from ... import kernels
from .api import from_preset
from .automatic import SamAutomaticMaskGenerator, coco_rle, pycocotools_mask
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
    masks, scores, low_res = predictor.predict(point_coords=[[80, 40]], point_labels=[1])
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


# --everything's options: (flag, type, SamAutomaticMaskGenerator's default, help)
EVERYTHING_OPTIONS = [
    ("--points-per-side", int, 32, "grid points per image side (their square are prompts)"),
    ("--points-per-batch", int, 64, "prompts decoded at once"),
    ("--pred-iou-thresh", float, 0.88, "keep masks whose predicted IoU is above this"),
    ("--stability-score-thresh", float, 0.95, "keep masks at least this stable"),
    ("--stability-score-offset", float, 1.0, "logit shift of the stability score's cuts"),
    ("--box-nms-thresh", float, 0.7, "box IoU above which NMS drops duplicate masks"),
    ("--crop-n-layers", int, 0, "run again on 2^i x 2^i crops for i = 1 .. this"),
    ("--crop-nms-thresh", float, 0.7, "box IoU for the NMS between crops"),
    ("--min-mask-region-area", int, 0, "fill holes and remove islands smaller than this"),
]


def add_run_arguments(parser) -> None:
    """``pyworkloads run sam --model DIR --image x.jpg --point 120,200 [--box x0,y0,x1,y1]
    --out mask.png``, or ``--everything [--json masks.json]`` for automatic masks"""
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
                        help="where to write the best mask (every mask with --everything) as a "
                             "PNG overlay")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (0..1)")
    parser.add_argument("--everything", action="store_true",
                        help="segment everything: automatic masks from a grid of point "
                             "prompts (segment-anything's SamAutomaticMaskGenerator)")
    parser.add_argument("--json", metavar="PATH",
                        help="with --everything: write the mask records as JSON, masks in "
                             "COCO run-length encoding (needs pycocotools)")
    for flag, kind, default, text in EVERYTHING_OPTIONS:
        parser.add_argument(flag, type=kind, default=None,
                            help=f"with --everything: {text} (default {default:g})")


# the SAM demo's blue
BLUE = (30, 144, 255)


def overlay(rgb: np.ndarray, mask: np.ndarray, alpha: float, colour=BLUE) -> np.ndarray:
    """rgb [h, w, 3] uint8 with the pixels of mask [h, w] blended towards ``colour``."""
    colour = np.array(colour, np.float32)
    out = rgb.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * colour
    return out.round().clip(0, 255).astype(np.uint8)


def mask_colours(n: int) -> list[tuple[int, int, int]]:
    """n distinct bright colours: hues a golden angle apart."""
    hues = (np.arange(n) * 0.618033988749895) % 1.0
    return [tuple(round(255 * c) for c in colorsys.hsv_to_rgb(h, 0.75, 1.0)) for h in hues]


def overlay_all(rgb: np.ndarray, masks: list[np.ndarray], alpha: float) -> np.ndarray:
    """Every mask [h, w] in its own colour, the largest first so smaller ones stay visible."""
    out = rgb
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    for i, colour in zip(order, mask_colours(len(masks))):
        out = overlay(out, masks[i], alpha, colour)
    return out


def _check_out(path: str, flag: str, what: str) -> None:
    out = Path(path)
    if out.is_dir():
        raise IsADirectoryError(f"{flag} {path!r} is a directory; give a file name for the "
                                f"{what}")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{flag} {path!r}: no directory {str(out.parent)!r} to "
                                "write it in")


def run_cli(args) -> int:
    """Segment the object at --point / in --box and write the best mask as an overlay PNG, or
    with --everything every mask of the image (and --json the records).
    Bad arguments raise ValueError (the ``pyworkloads`` command prints them as one line)."""
    from PIL import Image

    everything_flags = [flag for flag, *_ in EVERYTHING_OPTIONS
                        if getattr(args, flag[2:].replace("-", "_")) is not None]
    if args.json is not None:
        everything_flags.append("--json")
    if args.everything:
        if args.point or args.box or args.label is not None or args.single_mask:
            raise ValueError("--everything prompts with a grid of points: it takes no --point, "
                             "--label, --box or --single-mask")
    elif everything_flags:
        raise ValueError(f"{', '.join(everything_flags)} only apply with --everything")
    elif not args.point and not args.box:
        raise ValueError("give at least one --point X,Y or a --box X0,Y0,X1,Y1 "
                         "(or --everything)")
    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must lie in [0, 1], got {args.alpha}")
    _check_out(args.out, "--out", "PNG")
    if args.json is not None:
        _check_out(args.json, "--json", "JSON")
    if args.everything:
        return _run_everything(args)
    points = [_numbers(p, 2, "--point") for p in args.point] or None
    box = _numbers(args.box, 4, "--box") if args.box else None
    labels = args.label
    if labels is not None and (points is None or len(labels) != len(points)):
        raise ValueError(f"give one --label per --point ({len(points or [])} points, "
                         f"{len(labels)} labels)")
    model = from_pretrained(args.model) if args.model else from_preset(args.preset)
    rgb = to_rgb_array(args.image)
    predictor = SamPredictor(model)
    predictor.set_image(rgb)
    masks, scores, _ = predictor.predict(point_coords=points, point_labels=labels, box=box,
                                         multimask_output=not args.single_mask)
    best = int(np.argmax(scores))
    Image.fromarray(overlay(rgb, masks[best], args.alpha)).save(args.out, format="PNG")
    print(f"{len(scores)} mask(s), predicted IoU {np.round(scores, 4).tolist()}; best #{best}: "
          f"{int(masks[best].sum())} of {masks[best].size} pixels -> {args.out}")
    return 0


def _run_everything(args) -> int:
    """Automatic masks, a progress bar over the point batches, the overlay and the JSON."""
    from PIL import Image

    options = {flag[2:].replace("-", "_"): default for flag, _, default, _ in EVERYTHING_OPTIONS}
    options.update({k: v for k, v in vars(args).items() if k in options and v is not None})
    if args.json is not None:
        try:
            pycocotools_mask()                  # missing: say so now, not after the work
        except ImportError as exc:              # the command reports it as a user error
            raise RuntimeError(f"--json: {exc}") from None
    generator = SamAutomaticMaskGenerator(
        from_pretrained(args.model) if args.model else from_preset(args.preset),
        progress=True, **options)
    rgb = to_rgb_array(args.image)
    records = generator.generate(rgb)
    masks = [r["segmentation"] for r in records]
    Image.fromarray(overlay_all(rgb, masks, args.alpha)).save(args.out, format="PNG")
    written = [args.out]
    if args.json is not None:
        coded = [dict(r, segmentation=coco_rle(r["segmentation"])) for r in records]
        with open(args.json, "w") as f:
            json.dump(coded, f)
        written.append(args.json)
    print(f"{len(records)} mask(s) from a {options['points_per_side']}x"
          f"{options['points_per_side']} point grid -> {', '.join(written)}")
    return 0
