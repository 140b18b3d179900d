"""The hooks of ``pyworkloads demo`` and ``pyworkloads run clip``."""
from __future__ import annotations

import argparse

import numpy as np

from ... import kernels, ops
from .api import from_preset
from .hf import from_pretrained
from .model import count_params

__all__ = ["demo", "add_run_arguments", "run_cli"]


def demo() -> str:
    """Tiny random CLIP on two random images and three random texts, on the current backend."""
    m = from_preset("clip-tiny", seed=0)
    t, v = m.config.text_config, m.config.vision_config
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((2, v.num_channels, v.image_size, v.image_size), dtype=np.float32)
    ids = rng.integers(0, t.eos_token_id, size=(3, 8))
    ids[:, 0], ids[:, -1] = t.bos_token_id, t.eos_token_id
    out = m(input_ids=ids, pixel_values=pixels)
    probs = ops.softmax(out.logits_per_image, axis=-1)
    return (f"clip-tiny ({count_params(m.config):,} params, backend {kernels.get_backend()}): "
            f"2 images x 3 texts -> logits_per_image {out.logits_per_image.shape}, "
            f"probs {np.round(probs.astype(np.float64), 3).tolist()}")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Hugging Face CLIPModel directory "
                        "(config.json, *.safetensors, tokenizer.json)")
    parser.add_argument("--image", required=True, nargs="+", help="image file(s)")
    parser.add_argument("--labels", required=True,
                        help='comma-separated labels, e.g. "a cat,a dog"')
    parser.add_argument("--template", default="{}", help='prompt around each label, e.g. '
                        '"a photo of {}." (default: the label as given)')


def _check_template(template: str) -> None:
    """--template must put the label somewhere, once: "a photo of {}." """
    try:
        a, b = template.format("a"), template.format("b")
    except (IndexError, KeyError, ValueError) as exc:
        raise ValueError(f"--template must contain one {{}} where the label goes, got "
                         f"{template!r} ({type(exc).__name__}: {exc})") from None
    if a == b:
        raise ValueError(f"--template must contain {{}} where the label goes, got {template!r} "
                         "(every label would give the same text)")


def run_cli(args) -> int:
    """Zero-shot classification of --image files over --labels; bad arguments raise ValueError
    (the ``pyworkloads`` command prints them as one line)."""
    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    if not labels:
        raise ValueError(f"--labels needs at least one label (comma-separated), "
                         f"got {args.labels!r}")
    _check_template(args.template)
    m = from_pretrained(args.model)
    probs = m.zero_shot(list(args.image), labels, template=args.template)    # [images, labels]
    for path, row in zip(args.image, probs):
        print(path)
        for j in np.argsort(-row, kind="stable"):
            print(f"  {row[j]:7.2%}  {labels[j]}")
    return 0
