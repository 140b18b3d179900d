"""The user-facing LLaMA 2 model: :class:`Llama2` (a config, weights and an optional tokenizer;
it checks what users pass before the forward pass of :mod:`.model` runs, and generates), with
:func:`from_preset` and :func:`random_weights`.  :func:`.hf.from_pretrained` loads checkpoints."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np

from ... import quant
from .. import common
from ..common import KVCache, check_choice, check_fits, check_int
from . import generate
from .chat import chat_prompt
from .model import PRESETS, ROPE_LAYOUTS, Config, count_params, forward, weight_shapes

__all__ = ["Llama2", "check_input_ids", "random_weights", "from_preset", "quantize_weights",
           "QUANTIZE"]


def check_input_ids(input_ids, config: Config, max_length: int | None = None,
                    name: str = "input_ids") -> np.ndarray:
    """Token ids as int64 [B, T] (a 1-D sequence becomes [1, T]), each in [0, vocab_size), at
    most ``max_length`` per row (see :func:`pyworkloads.models.common.check_token_ids`)."""
    return common.check_token_ids(input_ids, name, config.vocab_size, max_length)


def check_weights(weights: Mapping, config: Config) -> None:
    """Every tensor of :func:`weight_shapes` present, of that shape and a float dtype."""
    if not config.tie_word_embeddings and "lm_head.weight" not in weights:
        raise ValueError("LLaMA 2 weights lack 'lm_head.weight', which the config needs: its "
                         "head is untied (tie_word_embeddings is false)")
    common.check_weights(weights, weight_shapes(config), "LLaMA 2")


def random_weights(config: Config, seed: int = 0, std: float = 0.02) -> dict[str, np.ndarray]:
    """Gaussian float32 weights (std 0.02, as the HF initialiser), norms at 1, biases at 0."""
    return common.random_weights(weight_shapes(config), seed, std)


class Llama2:
    """A config, a weights Mapping (HF names; memory-mapped checkpoints stay on disk) and an
    optional ``tokenizers.Tokenizer``.  ``model(ids)`` -> logits; ``generate``;
    ``generate_text``; ``chat``.  ``rope_layout`` is "half" for Hugging Face checkpoints and
    "interleaved" for Meta's original q/k layout (see :func:`.model.apply_rope`)."""

    def __init__(self, config: Config, weights: Mapping, tokenizer=None,
                 rope_layout: str = "half"):
        check_choice(rope_layout, "rope_layout", ROPE_LAYOUTS)
        check_weights(weights, config)
        self.config, self.weights, self.tokenizer = config, weights, tokenizer
        self.rope_layout = rope_layout

    @property
    def num_parameters(self) -> int:
        return count_params(self.config)

    def forward(self, input_ids, cache: KVCache | None = None,
                last_only: bool = False) -> np.ndarray:
        """input_ids int [B, T] -> float32 logits [B, T, V] ([B, 1, V] with ``last_only``).  With
        a cache (:meth:`new_cache`) the tokens continue the cached ones."""
        start = 0 if cache is None else cache.length
        ids = check_input_ids(input_ids, self.config, self.config.max_position_embeddings - start)
        return forward(ids, self.weights, self.config, cache, last_only, self.rope_layout)

    def __call__(self, input_ids) -> np.ndarray:
        """input_ids int [B, T] -> float32 logits [B, T, V]."""
        return self.forward(input_ids)

    def new_cache(self, batch: int, max_length: int) -> KVCache:
        """An empty KV cache for ``batch`` sequences of up to ``max_length`` tokens."""
        c = self.config
        check_int(max_length, "KV cache max_length", maximum=c.max_position_embeddings)
        return KVCache(c.num_hidden_layers, batch, c.num_key_value_heads, c.head_dim, max_length)

    def generate_stream(self, input_ids, max_new_tokens: int = 32, temperature: float = 0.0,
                        top_k: int | None = None, top_p: float | None = None,
                        seed: int | None = None, eos_token_id=...) -> Iterator[np.ndarray]:
        """Yield the next token of every row, int64 [B], one step at a time: one prefill forward
        over the prompt, then one single-token forward per step against the KV cache.  Rows that
        produced eos keep yielding eos; the stream ends when all rows have, or after
        max_new_tokens.  eos_token_id: ... = the config's, None = never stop."""
        generate.check_sampling(max_new_tokens, temperature, top_k, top_p)
        n_ctx = self.config.max_position_embeddings
        ids = check_input_ids(input_ids, self.config, n_ctx)
        T = ids.shape[1]
        if T + max_new_tokens > n_ctx:
            raise ValueError(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                             f"the context max_position_embeddings={n_ctx}")
        eos = self.config.eos_ids if eos_token_id is ... else (
            () if eos_token_id is None else tuple(np.atleast_1d(eos_token_id).tolist()))
        return generate.generate_stream(self, ids, max_new_tokens, temperature, top_k, top_p,
                                        np.random.default_rng(seed), eos)

    def generate(self, input_ids, max_new_tokens: int = 32, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 eos_token_id=...) -> np.ndarray:
        """Prompt plus generated tokens, int64 [B, T + n] (n <= max_new_tokens; finished rows are
        padded with eos).  temperature 0 is greedy."""
        ids = check_input_ids(input_ids, self.config)
        steps = list(self.generate_stream(ids, max_new_tokens, temperature, top_k, top_p, seed,
                                          eos_token_id))
        return np.concatenate([ids, np.stack(steps, axis=1)], axis=1) if steps else ids

    # ---- text ----------------------------------------------------------------------------
    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer (from_pretrained loads the "
                             "checkpoint's tokenizer.json)")
        return self.tokenizer

    def encode(self, text: str, add_special_tokens: bool = True) -> np.ndarray:
        """text -> int64 [1, T] (with BOS when the tokenizer's post-processor adds it)."""
        if not isinstance(text, str):
            raise TypeError(f"prompt must be a str, got {type(text).__name__}")
        ids = self._need_tokenizer().encode(text, add_special_tokens=add_special_tokens).ids
        return np.asarray([ids], dtype=np.int64)

    def decode(self, ids) -> str:
        return self._need_tokenizer().decode([int(i) for i in np.ravel(ids)],
                                             skip_special_tokens=True)

    def generate_text(self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0,
                      top_k: int | None = None, top_p: float | None = None,
                      seed: int | None = None, stream: Callable[[str], object] | None = None,
                      add_special_tokens: bool = True) -> str:
        """The completion of a text prompt (decoded as a whole).  ``stream(piece)`` is called with
        each new piece of text as soon as it is complete (see :class:`.generate.TextStream`)."""
        ids = self.encode(prompt, add_special_tokens)
        if ids.shape[1] == 0:
            raise ValueError("prompt is empty: it encodes to no tokens")
        detok, new = generate.TextStream(self._need_tokenizer()), []
        for tok in self.generate_stream(ids, max_new_tokens, temperature, top_k, top_p, seed):
            if int(tok[0]) in self.config.eos_ids:
                break
            new.append(int(tok[0]))
            piece = detok.push(new[-1])
            if stream is not None and piece:
                stream(piece)
        piece = detok.flush()
        if stream is not None and piece:
            stream(piece)
        return self.decode(new)

    def chat(self, messages: list[dict], **kwargs) -> str:
        """Answer the last user message of a conversation (see :func:`.chat.chat_prompt`)."""
        return self.generate_text(chat_prompt(messages), add_special_tokens=False, **kwargs)


QUANTIZE = ("q8_0", "q4_0", "q4_1")


def quantize_weights(weights: Mapping, config: Config, quantize: str) -> dict:
    """The weights with every matrix block-quantized (see :mod:`pyworkloads.quant`), the norms
    kept as they are.  ``quantize`` is "q8_0", "q4_0" or "q4_1" for the decoder layers' matrices;
    the token embedding and an untied ``lm_head`` are Q8_0 under the 4-bit formats, because the
    logits are the most sensitive to their error (llama.cpp's quantizer likewise keeps the
    output matrix at 6 bits).  A matrix whose rows are not a whole number of 32-weight blocks
    stays as stored, as llama.cpp falls back for such tensors.  One matrix at a time is
    converted to float32 and encoded, so a memory-mapped bf16 checkpoint never exists in float32
    as a whole.  Matrices that are block-quantized already (from a GGUF file) are kept."""
    qtype = check_choice(quantize, "quantize", QUANTIZE).upper()
    out = {}
    for name, shape in weight_shapes(config).items():
        stored = common.weight(weights, name)
        if (len(shape) != 2 or shape[1] % quant.BLOCKS[qtype][0]
                or isinstance(stored, quant.QuantizedTensor)):
            out[name] = stored
            continue
        outer = name in ("model.embed_tokens.weight", "lm_head.weight")
        out[name] = quant.quantize(stored, "Q8_0" if outer else qtype)
    return out


def from_preset(name, seed: int = 0, quantize: str | None = None) -> Llama2:
    """Random float32 weights (std 0.02) in the shapes of a preset (or of a Config), optionally
    quantized (see :func:`quantize_weights`).  Refuses, with MemoryError, a model whose float32
    weights would not fit in the available memory."""
    if isinstance(name, Config):
        config, label = name, "config"
    elif name in PRESETS:
        config, label = PRESETS[name], name
    else:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    check_fits(4 * count_params(config), label)
    weights = random_weights(config, seed)
    if quantize is not None:
        weights = quantize_weights(weights, config, quantize)
    return Llama2(config, weights)
