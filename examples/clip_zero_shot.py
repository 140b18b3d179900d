"""Zero-shot image classification with CLIP: embed one image and one caption per label, and
read the caption similarities as label probabilities.

    python examples/clip_zero_shot.py                                    # tiny committed checkpoint
    python examples/clip_zero_shot.py --model ~/models/clip-vit-base-patch32 --image cat.jpg \\
        --labels "cat,dog,car" --template "a photo of a {}."

The default image is matplotlib's sample photo of Grace Hopper (a synthetic picture when
matplotlib is missing).  With no --model the script loads tests/fixtures/clip/: random weights
and a tiny tokenizer, so the probabilities are meaningless, but every step is the real one.  A
--model directory is a Hugging Face CLIPModel checkpoint: config.json, *.safetensors,
tokenizer.json (+ preprocessor_config.json for the resize/crop sizes).
(From a source checkout without ``pip install .``, run with PYTHONPATH=. )
"""
import argparse
import sys
from pathlib import Path

import numpy as np

import pyworkloads as pw

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "clip"


def sample_image():
    """matplotlib's Grace Hopper photo (a path), else a synthetic uint8 [H, W, 3] picture."""
    try:
        from matplotlib import cbook
        return cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    except (ImportError, OSError, ValueError):
        print("matplotlib (or its sample photo) is missing: using a synthetic image instead")
        y, x = np.mgrid[0:240, 0:320]                                        # [H, W] pixel grids
        disk = (x - 160) ** 2 + (y - 120) ** 2 < 70 ** 2
        channels = [np.where(disk, 220, x * 255 // 320), np.where(disk, 40, 90), y * 255 // 240]
        return np.stack(channels, axis=-1).astype(np.uint8)                 # [240, 320, 3]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", metavar="DIR", help="Hugging Face CLIPModel checkpoint directory")
    ap.add_argument("--image", help="an image file (default: matplotlib's sample photo)")
    ap.add_argument("--labels", default="woman in uniform,cat,dog,diagram",
                    help="comma-separated labels")
    ap.add_argument("--template", default="a photo of a {}.",
                    help="caption around each label (the paper's)")
    ap.add_argument("--backend", default="numpy", choices=pw.available(), help="kernel backend")
    args = ap.parse_args()
    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    if not labels:
        raise ValueError(f"--labels needs at least one label, got {args.labels!r}")

    model_dir = args.model or FIXTURE
    c = pw.clip.from_pretrained(model_dir)
    v = c.config.vision_config
    note = "" if args.model else " (tiny committed checkpoint, random weights)"
    print(f"model: {model_dir}{note}: ViT {v.image_size}px / patch {v.patch_size}, "
          f"embeddings of width {c.config.projection_dim}")

    image = args.image or sample_image()
    # resize the shorter side, centre-crop, normalise with CLIP's channel statistics
    pixel_values = c.preprocess(image)                                       # [1, 3, S, S]
    print(f"image: {image if isinstance(image, (str, Path)) else 'synthetic'} -> pixel_values "
          f"{list(pixel_values.shape)}")

    with pw.use_backend(args.backend):
        # the two towers separately: unit-length embeddings compared by a dot product ...
        img = c.get_image_features(pixel_values)                             # [1, E]
        captions = [args.template.format(lb) for lb in labels]
        txt = c.get_text_features(c.tokenize(captions))                      # [L, E]
        cos = unit(img) @ unit(txt).T                                        # [1, L]
        # ... and zero_shot(), which scales those cosines by exp(logit_scale) and softmaxes over
        # the labels
        probs = c.zero_shot(pixel_values, labels, template=args.template)[0]   # [L]
    print(f"captions like {args.template.format(labels[0])!r}; cosine similarity and probability:")
    for j in np.argsort(-probs, kind="stable"):
        print(f"  {probs[j]:7.2%}  cos {cos[0, j]:+.3f}  {labels[j]}")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, TypeError, FileNotFoundError) as exc:
        sys.exit(f"error: {exc}")
