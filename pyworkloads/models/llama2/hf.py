"""Hugging Face compatibility: LLaMA's ``config.json`` (transformers 4.x and 5.x) and checkpoint
directories (safetensors, sharded or not, and ``tokenizer.json``); :func:`from_pretrained` also
takes a ``.gguf`` file (see :mod:`.gguf`)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from ... import io
from ..common import config_from_dict, describe, tokenizer_from_file
from .api import Llama2, quantize_weights
from .model import Config

__all__ = ["config_from_hf", "config_to_hf", "load_tokenizer", "from_pretrained"]

ROPE_TYPES = ("default", "linear")
REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "vocab_size")


def _rope(cfg: Mapping) -> tuple[object, dict | None]:
    """RoPE's base and scaling from a config dict: ``rope_parameters`` (5.x) or the top-level
    ``rope_theta`` and ``rope_scaling`` (4.x, "type" or "rope_type").  Values are checked by
    :class:`Config`; here only which scheme is asked for."""
    rope_params, scaling = cfg.get("rope_parameters"), cfg.get("rope_scaling")
    for key, section in (("rope_parameters", rope_params), ("rope_scaling", scaling)):
        if section is not None and not isinstance(section, Mapping):
            raise ValueError(f"config.json: {key} must be an object or null, got "
                             f"{describe(section)} (per-layer-type RoPE parameters are not used "
                             "by LLaMA)")
    rope_params, scaling = rope_params or {}, scaling or {}
    theta = rope_params.get("rope_theta", cfg.get("rope_theta"))
    theta = 10000.0 if theta is None else theta
    asked = [d[k] for d in (rope_params, scaling) for k in ("rope_type", "type")
             if d.get(k) is not None]
    rope_type = asked[0] if asked else "default"
    if not isinstance(rope_type, str) or rope_type not in ROPE_TYPES:
        raise ValueError(f"config.json asks for rope_type {describe(rope_type)}, which is not "
                         f"implemented (supported: {', '.join(ROPE_TYPES)})")
    factor = rope_params.get("factor", scaling.get("factor"))
    if rope_type == "linear" and factor is None:
        raise ValueError("config.json: rope_type 'linear' needs a factor")
    return theta, (None if rope_type == "default"
                   else {"rope_type": rope_type, "factor": factor})


def config_from_hf(cfg: Mapping, cls=Config) -> Config:
    """Parse a Hugging Face ``config.json`` dict (transformers 4.x or 5.x).

    RoPE's base is read from ``rope_parameters["rope_theta"]`` (5.x), else top-level
    ``rope_theta`` (4.x), else 10000; scaling from ``rope_parameters["rope_type"]`` (5.x) or
    ``rope_scaling`` (4.x: "type" or "rope_type").  Only "default" and "linear" are
    implemented; dynamic-NTK, YaRN, LongRoPE and llama3 scaling are refused, because running
    such a checkpoint with plain RoPE would quietly give wrong logits at long contexts."""
    if not isinstance(cfg, Mapping):
        raise TypeError(f"config must be a dict parsed from config.json, got {type(cfg).__name__}")
    model_type = cfg.get("model_type", "llama")
    if model_type != "llama":
        raise ValueError(f"config.json has model_type {describe(model_type)}; this module "
                         "implements 'llama' only")
    missing = [k for k in REQUIRED if cfg.get(k) is None]
    if missing:
        raise ValueError(f"config.json lacks {', '.join(missing)} (needed to build a LLaMA model)")
    # absent keys take transformers' LlamaConfig defaults, which differ from LLaMA 2's for these
    d = {"max_position_embeddings": 2048, "rms_norm_eps": 1e-6}
    d.update({k: v for k, v in cfg.items() if v is not None})
    d.update({k: cfg[k] for k in ("bos_token_id", "eos_token_id") if k in cfg})   # null = none
    d["rope_theta"], d["rope_scaling"] = _rope(cfg)
    return config_from_dict(cls, d, "config.json")


def config_to_hf(config: Config) -> dict:
    """The config as a transformers-5 style ``config.json`` dict."""
    d = asdict(config)
    theta, scaling = d.pop("rope_theta"), d.pop("rope_scaling")
    d["rope_parameters"] = {"rope_theta": theta, **(scaling or {"rope_type": "default"})}
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], **d}


def load_tokenizer(path):
    """The ``tokenizers.Tokenizer`` of ``tokenizer.json`` next to the checkpoint, or None."""
    path = Path(path)
    tok_file = (path if path.is_dir() else path.parent) / "tokenizer.json"
    if not tok_file.is_file():
        return None
    return tokenizer_from_file(tok_file)


def from_pretrained(path, rope_layout: str | None = None, quantize: str | None = None,
                    in_memory: bool | None = None) -> Llama2:
    """A Hugging Face LLaMA checkpoint directory: ``config.json``, ``model.safetensors`` or
    sharded ``model-0000x-of-0000y.safetensors`` + index (F32, F16 or BF16, converted per use;
    read into huge-page memory or memory-mapped, see ``in_memory`` in :mod:`pyworkloads.io`),
    and ``tokenizer.json`` when present.  A ``.gguf`` file (llama.cpp's format, quantized or
    not) is loaded by :func:`.gguf.from_gguf`.

    ``rope_layout`` None means the checkpoint's own: "half" for Hugging Face checkpoints,
    "interleaved" for GGUF files (see :func:`.model.apply_rope`).  ``quantize`` ("q8_0",
    "q4_0", "q4_1") block-quantizes the float matrices as they load (see
    :func:`.api.quantize_weights`); a GGUF file's quantized tensors stay as they are."""
    path = Path(path)
    if path.suffix.lower() == ".gguf":
        from .gguf import from_gguf
        m = from_gguf(path, rope_layout or "interleaved", in_memory)
    else:
        config = Config.from_hf(io.load_config(path))
        m = Llama2(config, io.load_checkpoint(path, in_memory), load_tokenizer(path),
                   rope_layout or "half")
    if quantize is not None:
        m = Llama2(m.config, quantize_weights(m.weights, m.config, quantize), m.tokenizer,
                   m.rope_layout)
    return m
