"""Hugging Face compatibility: ``config.json`` (``SamConfig``) in and out, the tied Fourier
matrix's second name, and :func:`from_pretrained`."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict

import numpy as np

from ... import io
from ..common import config_from_dict
from .model import (
    GAUSSIAN,
    GAUSSIAN_ALIAS,
    Config,
    MaskDecoderConfig,
    PromptEncoderConfig,
    VisionConfig,
)


def _square_sides(d, what: str):
    """HF allows image_size / patch_size as an int or a square pair; SAM only uses squares."""
    if not isinstance(d, Mapping):
        return d                                  # config_from_dict says what is wrong
    d = dict(d)
    for key in ("image_size", "patch_size"):
        v = d.get(key)
        if isinstance(v, (list, tuple)):
            if len(v) != 2 or v[0] != v[1]:
                raise ValueError(f"{what}.{key} must be an int or a square pair, got {v!r}")
            d[key] = v[0]
    return d


def _section(cls, d, what: str):
    return config_from_dict(cls, _square_sides(d, what), what)


def config_from_hf(d) -> Config:
    """Parse an HF ``config.json`` dict (``model_type`` "sam"); unknown keys are ignored."""
    if not isinstance(d, Mapping):
        raise TypeError(f"config must be a dict, got {type(d).__name__}")
    if d.get("model_type", "sam") != "sam":
        raise ValueError(f"config.json describes model_type {d.get('model_type')!r}, not 'sam'")
    return Config(_section(VisionConfig, d.get("vision_config"), "vision_config"),
                  _section(PromptEncoderConfig, d.get("prompt_encoder_config"),
                           "prompt_encoder_config"),
                  _section(MaskDecoderConfig, d.get("mask_decoder_config"), "mask_decoder_config"))


def config_to_hf(config: Config) -> dict:
    """The config.json dict that ``transformers.SamConfig(**d)`` accepts."""
    v = asdict(config.vision_config)
    v["global_attn_indexes"] = list(v["global_attn_indexes"])
    return {"model_type": "sam", "vision_config": v,
            "prompt_encoder_config": asdict(config.prompt_encoder_config),
            "mask_decoder_config": asdict(config.mask_decoder_config)}


class AliasedWeights(Mapping):
    """A read-only view of a weights mapping that also answers to other names: ``alias`` maps
    the name the model reads to the name the checkpoint stores."""

    def __init__(self, base: Mapping, alias: dict[str, str]):
        self.base, self.alias = base, alias
        self._stored = {v: k for k, v in alias.items()}

    def _name(self, name: str) -> str:
        return self.alias.get(name, name)

    def __getitem__(self, name):
        return self.base[self._name(name)]

    def __contains__(self, name):
        return self._name(name) in self.base

    def __iter__(self):
        return (self._stored.get(n, n) for n in self.base)

    def __len__(self):
        return len(self.base)

    def shape_of(self, name):
        name = self._name(name)
        if hasattr(self.base, "shape_of"):
            return self.base.shape_of(name)
        return np.shape(self.base[name])

    def __getattr__(self, attr):
        """``dtype_of`` and ``raw`` of a checkpoint on disk, by the model's names."""
        if attr not in ("dtype_of", "raw") or not hasattr(self.base, attr):
            raise AttributeError(attr)
        method = getattr(self.base, attr)
        return lambda name: method(self._name(name))


def tie_gaussian(weights: Mapping) -> Mapping:
    """The weights with the Fourier matrix readable as ``GAUSSIAN`` also when the checkpoint
    stores the tied copy only, under the prompt encoder's name ``GAUSSIAN_ALIAS``."""
    if GAUSSIAN not in weights and GAUSSIAN_ALIAS in weights:
        return AliasedWeights(weights, {GAUSSIAN: GAUSSIAN_ALIAS})
    return weights


def from_pretrained(path, in_memory: bool | None = None):
    """Load an HF SAM checkpoint directory (config.json + *.safetensors) -> :class:`Sam`.
    ``in_memory``: see :mod:`pyworkloads.io`."""
    from .api import Sam
    return Sam(Config.from_hf(io.load_config(path)), io.load_checkpoint(path, in_memory))
