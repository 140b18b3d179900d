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


def run_cli(args) -> int:
    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    if not labels:
        print("error: --labels needs at least one label")
        return 2
    m = from_pretrained(args.model)
    probs = m.zero_shot(list(args.image), labels, template=args.template)    # [images, labels]
    for path, row in zip(args.image, probs):
        print(path)
        for j in np.argsort(-row, kind="stable"):
            print(f"  {row[j]:7.2%}  {labels[j]}")
    return 0
