"""Hugging Face compatibility: ``config.json`` of a ``CLIPModel`` to :class:`.model.Config` and
back, ``preprocessor_config.json`` to the image settings, and ``from_pretrained``."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from ... import io
from ..common import config_from_dict, describe
from .api import CLIP
from .model import Config, TextConfig, VisionConfig
from .preprocess import CLIP_MEAN, CLIP_STD
from .tokenizer import load_tokenizer

__all__ = ["config_from_hf", "config_to_hf", "image_settings_from_hf", "from_pretrained"]


def config_from_hf(d) -> Config:
    """Parse a ``config.json`` dict of a ``CLIPModel`` checkpoint (unknown keys are ignored)."""
    if not isinstance(d, Mapping):
        raise TypeError(f"config must be a dict, got {type(d).__name__}")
    if d.get("model_type", "clip") not in ("clip", None):
        raise ValueError(f"config.json has model_type {describe(d['model_type'])}, "
                         "expected 'clip'")
    if "text_config" not in d or "vision_config" not in d:
        raise ValueError("config is not a CLIPConfig: it needs 'text_config' and 'vision_config' "
                         f"sections (model_type={d.get('model_type')!r})")
    top = {k: d[k] for k in ("projection_dim", "logit_scale_init_value") if k in d}
    return Config(text_config=config_from_dict(TextConfig, d["text_config"], "text_config"),
                  vision_config=config_from_dict(VisionConfig, d["vision_config"], "vision_config"),
                  **top)


def config_to_hf(config: Config) -> dict:
    """The dict ``transformers.CLIPConfig(**d)`` accepts (and config.json stores)."""
    return {"model_type": "clip", "architectures": ["CLIPModel"], **asdict(config)}


def image_settings_from_hf(p: Mapping) -> dict:
    """``preprocessor_config.json`` -> CLIP's keyword arguments image_size (the shorter side after
    resizing), crop_size, image_mean and image_std.  Sizes are ints or transformers' dicts."""
    size, crop = p.get("size"), p.get("crop_size")
    return {"image_size": size.get("shortest_edge") if isinstance(size, dict) else size,
            "crop_size": (crop.get("height") if isinstance(crop, dict) else crop) or None,
            "image_mean": p.get("image_mean", CLIP_MEAN), "image_std": p.get("image_std", CLIP_STD)}


def from_pretrained(path, in_memory: bool | None = None) -> CLIP:
    """A Hugging Face ``CLIPModel`` directory: config.json + *.safetensors (+ tokenizer.json,
    tokenizer_config.json and preprocessor_config.json when present).  ``in_memory``: see
    :mod:`pyworkloads.io`."""
    path = Path(path)
    config = config_from_hf(io.load_config(path))
    weights = io.load_checkpoint(path, in_memory)
    tokenizer = load_tokenizer(path) if (path / "tokenizer.json").is_file() else None
    pre = path / "preprocessor_config.json"
    kw = image_settings_from_hf(json.loads(pre.read_text())) if pre.is_file() else {}
    return CLIP(config, weights, tokenizer, **kw)
