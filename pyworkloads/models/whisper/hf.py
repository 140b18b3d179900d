"""Hugging Face compatibility: ``config.json`` <-> :class:`Config`, and loading a checkpoint
directory (weights, ``generation_config.json``, ``tokenizer.json``) with :func:`from_pretrained`."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from ... import io
from .. import common
from .api import Whisper
from .decoding import GenerationConfig, default_generation_config
from .model import Config


def config_from_hf(d: Mapping) -> Config:
    """A WhisperConfig dict (config.json) -> Config; unknown keys and nulls are ignored."""
    if not isinstance(d, Mapping):
        raise TypeError(f"Config.from_hf expects a dict (config.json), got {type(d).__name__}")
    if d.get("model_type", "whisper") != "whisper":
        raise ValueError(f"config.json has model_type {d.get('model_type')!r}, "
                         "expected 'whisper'")
    kept = {k: v for k, v in d.items() if v is not None}
    eos = kept.get("eos_token_id")
    if isinstance(eos, list):
        if not eos:
            raise ValueError("config.json: eos_token_id must be an id or a non-empty list of "
                             "ids, got []")
        kept["eos_token_id"] = eos[0]
    # transformers multiplies the token embeddings by sqrt(d_model) when this is true; no
    # Whisper checkpoint does, and the engine does not, so a true value is refused
    if common.check_bool(kept.get("scale_embedding", False), "config.json: scale_embedding"):
        raise ValueError("config.json: scale_embedding true (token embeddings times "
                         "sqrt(d_model)) is not implemented; Whisper checkpoints have false")
    return common.config_from_dict(Config, kept, "config.json")


def config_to_hf(config: Config) -> dict:
    """A config.json dict that ``transformers.WhisperConfig(**d)`` accepts."""
    return {**asdict(config), "model_type": "whisper", "scale_embedding": False,
            "architectures": ["WhisperForConditionalGeneration"]}


def load_tokenizer(path: Path):
    """The checkpoint's ``tokenizer.json`` as a ``tokenizers.Tokenizer``, or None."""
    f = path / "tokenizer.json"
    if not f.is_file():
        return None
    return common.tokenizer_from_file(f)


def load_generation_config(path: Path, raw: dict, config: Config) -> GenerationConfig:
    """``generation_config.json``; older checkpoints kept its keys in config.json; presets and
    bare checkpoints get the standard layout for their vocabulary."""
    gfile = path / "generation_config.json"
    if gfile.is_file():
        try:
            gdict = json.loads(gfile.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{gfile}: not valid JSON ({exc})") from None
        return GenerationConfig.from_dict(gdict)
    if "decoder_start_token_id" in raw and any(k in raw for k in ("suppress_tokens",
                                                                   "forced_decoder_ids")):
        return GenerationConfig.from_dict(raw)
    return default_generation_config(config)


def from_pretrained(path, in_memory: bool | None = None) -> Whisper:
    """A Hugging Face Whisper checkpoint directory: config.json, *.safetensors, and if present
    generation_config.json and tokenizer.json.  ``in_memory``: see :mod:`pyworkloads.io`."""
    path = Path(path)
    raw = io.load_config(path)
    config = Config.from_hf(raw)
    weights = io.load_checkpoint(path, in_memory)
    return Whisper(config, weights, load_generation_config(path, raw, config),
                   load_tokenizer(path))
