"""CLIP: contrastive image-text pre-training (Radford et al., 2021).

Open ``model.py`` to read the model: the architecture, the dimension glossary, the configs and
presets, the weight layout and the forward pass as short functions (patch embedding, the
pre-norm block, the two towers, the projections, the similarity logits, the contrastive loss).
Around it: ``api.py`` (the ``CLIP`` class and its input checks), ``hf.py`` (``config.json`` and
``from_pretrained``), ``preprocess.py`` (images), ``tokenizer.py`` (texts), ``probe.py`` (linear
probes on frozen image features), ``cli.py`` (the ``pyworkloads`` command's hooks).

    m = pw.clip.from_pretrained("path/to/clip-vit-base-patch32")
    probs = m.zero_shot("cat.jpg", ["cat", "dog"])
    probe = pw.clip.LinearProbe().fit(pw.clip.embed_images(m, train_paths), train_labels)
"""
from __future__ import annotations

from .api import CLIP, CLIPOutput, contrastive_loss, from_preset, random_weights
from .cli import add_run_arguments, demo, run_cli
from .hf import from_pretrained
from .model import (
    PRESETS,
    QUICK_GELU,
    Config,
    TextConfig,
    VisionConfig,
    count_params,
    image_features,
    l2_normalize,
    pool_positions,
    similarity,
    text_features,
    text_model,
    vision_model,
    weight_shapes,
)
from .preprocess import CLIP_MEAN, CLIP_STD, preprocess
from .probe import LinearProbe, embed_images
from .tokenizer import Tokenizer, load_tokenizer, tokenize

# the towers under their other public names (the same functions)
text_forward = text_model
vision_forward = vision_model

__all__ = [
    "TextConfig", "VisionConfig", "Config", "PRESETS", "QUICK_GELU", "count_params",
    "weight_shapes", "CLIP", "CLIPOutput", "from_pretrained", "from_preset", "random_weights",
    "vision_model", "text_model", "image_features", "text_features", "similarity",
    "l2_normalize", "pool_positions", "text_forward", "vision_forward", "preprocess", "Tokenizer",
    "load_tokenizer", "tokenize", "contrastive_loss", "CLIP_MEAN", "CLIP_STD", "demo",
    "add_run_arguments", "run_cli", "LinearProbe", "embed_images",
]
