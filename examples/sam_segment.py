"""Segment Anything: encode an image once, then ask for masks with a point and with a box.

    python examples/sam_segment.py                                       # tiny committed checkpoint
    python examples/sam_segment.py --model ~/models/sam-vit-base --image dog.jpg \\
        --point 420,310 --out mask.png

The default image is matplotlib's sample photo of Grace Hopper (a synthetic picture when
matplotlib is missing); the default prompts are a point at the image centre and a box around the
middle half.  With no --model the script loads tests/fixtures/sam/: a 64-pixel model with random
weights, so the masks are arbitrary, but every step is the real one.  A --model directory is a
Hugging Face SamModel checkpoint: config.json + *.safetensors.
(From a source checkout without ``pip install .``, run with PYTHONPATH=. )
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

import pyworkloads as pw

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "sam"


def sample_image() -> np.ndarray:
    """matplotlib's Grace Hopper photo, else a synthetic picture: uint8 [H, W, 3]."""
    from PIL import Image
    try:
        from matplotlib import cbook
        with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
            return np.asarray(im.convert("RGB"))
    except (ImportError, OSError, ValueError):
        print("matplotlib (or its sample photo) is missing: using a synthetic image instead")
        y, x = np.mgrid[0:240, 0:320]                                        # [H, W] pixel grids
        disk = (x - 160) ** 2 + (y - 120) ** 2 < 70 ** 2
        return np.stack([np.where(disk, 220, x * 255 // 320), np.where(disk, 40, 90),
                         y * 255 // 240], axis=-1).astype(np.uint8)         # [240, 320, 3]


def numbers(text: str, n: int, what: str) -> list[float]:
    try:
        vals = [float(t) for t in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) != n:
        raise ValueError(f"{what} takes {n} comma-separated numbers, got {text!r}")
    return vals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", metavar="DIR", help="Hugging Face SamModel checkpoint directory")
    ap.add_argument("--image", help="an image file (default: matplotlib's sample photo)")
    ap.add_argument("--point", metavar="X,Y",
                    help="foreground point in image pixels (default: the centre)")
    ap.add_argument("--box", metavar="X0,Y0,X1,Y1",
                    help="box in image pixels (default: the middle half)")
    ap.add_argument("--out", metavar="PNG", help="write the best point mask over the image here")
    ap.add_argument("--backend", default="numpy", choices=pw.available(), help="kernel backend")
    args = ap.parse_args()
    point = numbers(args.point, 2, "--point") if args.point else None
    box = numbers(args.box, 4, "--box") if args.box else None

    model_dir = args.model or FIXTURE
    predictor = pw.sam.SamPredictor(pw.sam.from_pretrained(model_dir))
    S = predictor.model.config.vision_config.image_size
    print(f"model: {model_dir}"
          f"{'' if args.model else ' (tiny committed checkpoint, random weights)'}: "
          f"input {S}x{S} pixels")

    if args.image:
        from PIL import Image
        with Image.open(args.image) as im:
            rgb = np.asarray(im.convert("RGB"))                             # [H, W, 3]
    else:
        rgb = sample_image()
    H, W = rgb.shape[:2]
    point = point or [W / 2, H / 2]
    box = box or [W / 4, H / 4, 3 * W / 4, 3 * H / 4]

    with pw.use_backend(args.backend):
        # the heavy part, once per image: resize the long side to S, pad, run the ViT encoder
        t0 = time.perf_counter()
        predictor.set_image(rgb)
        t_enc = time.perf_counter() - t0
        print(f"image {W}x{H} -> image embeddings {list(predictor.image_embeddings.shape)} in "
              f"{t_enc * 1e3:.0f} ms")

        # then each prompt costs only the small prompt encoder and mask decoder; an ambiguous
        # single point gets three candidate masks (whole, part, subpart), each with a predicted IoU
        t0 = time.perf_counter()
        # [3, H, W], [3], [3, 4E, 4E]
        masks, scores, low_res = predictor.predict(points=[point], labels=[1])
        t_dec = time.perf_counter() - t0
        print(f"point ({point[0]:.0f}, {point[1]:.0f}): {len(scores)} masks "
              f"{list(masks.shape[1:])} from low-res logits {list(low_res.shape[1:])} in "
              f"{t_dec * 1e3:.0f} ms")
        for k in range(len(scores)):
            print(f"  mask {k}: predicted IoU {scores[k]:.3f}, {masks[k].mean():6.1%} of the image")

        # [1, H, W], [1]
        box_masks, box_scores, _ = predictor.predict(box=box, multimask_output=False)
    print(f"box ({', '.join(f'{b:.0f}' for b in box)}): 1 mask, predicted IoU {box_scores[0]:.3f}, "
          f"{box_masks[0].mean():6.1%} of the image")

    if args.out:
        from PIL import Image
        best = masks[int(np.argmax(scores))]                                # [H, W] bool
        over = rgb.astype(np.float32)
        over[best] = 0.5 * over[best] + 0.5 * np.array([30, 144, 255])      # tint the mask blue
        Image.fromarray(over.astype(np.uint8)).save(args.out)
        print(f"best point mask drawn over the image -> {args.out}")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, TypeError, FileNotFoundError) as exc:
        sys.exit(f"error: {exc}")
