"""LLaMA 2.  Open ``model.py``: the architecture with its dimension glossary, the Config and
presets, the weight layout and the forward pass as short pure functions.

The other modules hold what is built around it: ``api`` (the :class:`Llama2` class users call,
:func:`from_preset`, :func:`random_weights`), ``generate`` (sampling, the decoding loop,
streaming detokenisation), ``chat`` (the LLaMA-2-chat prompt), ``hf`` (``config.json`` and
:func:`from_pretrained`) and ``cli`` (the ``pyworkloads`` command's hooks).

    m = pw.llama2.from_pretrained("path/to/Llama-2-7b-hf")
    print(m.generate_text("The capital of France is", max_new_tokens=16))
"""
from __future__ import annotations

from ..common import KVCache
from .api import QUANTIZE, Llama2, check_input_ids, from_preset, quantize_weights, random_weights
from .chat import chat_prompt
from .cli import add_run_arguments, demo, preset_prompt_ids, run_cli
from .generate import TextStream, sample_next
from .hf import from_pretrained
from .model import (
    PRESETS,
    ROPE_LAYOUTS,
    Config,
    apply_rope,
    count_params,
    decoder_layer,
    embed_tokens,
    forward,
    grouped_query_attention,
    lm_head,
    mlp,
    rms_norm,
    rope_tables,
    self_attention,
    weight_shapes,
)

__all__ = [
    "Config", "PRESETS", "ROPE_LAYOUTS", "count_params", "weight_shapes", "random_weights",
    "from_pretrained", "from_preset", "Llama2", "KVCache", "forward", "embed_tokens", "rms_norm",
    "rope_tables", "apply_rope", "grouped_query_attention", "self_attention", "mlp",
    "decoder_layer", "lm_head", "sample_next", "chat_prompt", "TextStream", "check_input_ids",
    "demo", "add_run_arguments", "run_cli", "preset_prompt_ids", "quantize_weights", "QUANTIZE",
]
