"""Generation with a LLaMA 2 model: picking the next token from the logits, the decoding loop
(one forward over the prompt, then one single-token forward per step against the KV cache), and
detokenisation that streams text as it is generated."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..common import check_int, check_number

__all__ = ["sample_next", "check_sampling", "generate_stream", "TextStream"]


def sample_next(logits: np.ndarray, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
    """Next token per row.  logits [B, V] -> int64 [B].

    temperature 0 is greedy (argmax, first index on ties, as torch.argmax).  Otherwise the logits
    are divided by the temperature, cut to the top_k largest (ties at the k-th value kept) and to
    the smallest set whose probability reaches top_p (nucleus; the most likely token is always
    kept), renormalised and sampled -- the order Hugging Face's logits warpers apply."""
    if temperature == 0:
        return np.argmax(logits, axis=-1).astype(np.int64)
    z = logits.astype(np.float64) / temperature                                  # [B, V]
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]                # [B, 1]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)                                            # [B, V]
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-p, axis=-1, kind="stable")                            # [B, V]
        sorted_p = np.take_along_axis(p, order, axis=-1)
        drop_sorted = np.cumsum(sorted_p, axis=-1) - sorted_p >= top_p            # mass before it
        drop = np.zeros_like(drop_sorted)                                         # already enough
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        p = np.where(drop, 0.0, p)
        p /= p.sum(axis=-1, keepdims=True)
    rng = rng if rng is not None else np.random.default_rng()
    u = rng.random((p.shape[0], 1))                                               # [B, 1]
    idx = (np.cumsum(p, axis=-1) < u).sum(axis=-1)                                # inverse CDF
    return np.minimum(idx, p.shape[-1] - 1).astype(np.int64)


def check_sampling(max_new_tokens, temperature, top_k, top_p) -> None:
    """Refuse sampling settings :func:`sample_next` and the loop cannot honour."""
    check_int(max_new_tokens, "max_new_tokens", minimum=0)
    check_number(temperature, "temperature (0 = greedy)", minimum=0)
    if top_k is not None:
        check_int(top_k, "top_k")
    if top_p is not None:
        check_number(top_p, "top_p", minimum=0, maximum=1, exclusive_minimum=True)


def generate_stream(model, ids: np.ndarray, max_new_tokens: int, temperature: float,
                    top_k: int | None, top_p: float | None, rng: np.random.Generator,
                    eos: tuple[int, ...]) -> Iterator[np.ndarray]:
    """Yield the next token of every row, int64 [B], one step at a time, for a
    :class:`~pyworkloads.models.llama2.Llama2` and checked ids [B, T].  Rows that produced an id
    of ``eos`` keep yielding eos[0]; the stream ends when all rows have, or after
    max_new_tokens."""
    if max_new_tokens == 0:
        return
    B, T = ids.shape
    cache = model.new_cache(B, T + max_new_tokens)
    done = np.zeros(B, dtype=bool)
    logits = model.forward(ids, cache, last_only=True)[:, -1]                     # [B, V]
    for step in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_k, top_p, rng)                 # [B]
        if eos:
            nxt = np.where(done, eos[0], nxt)
            done |= np.isin(nxt, eos)
        yield nxt
        if done.all() or step == max_new_tokens - 1:
            return
        logits = model.forward(nxt[:, None], cache, last_only=True)[:, -1]        # [B, V]


class TextStream:
    """Incremental detokenisation for streaming: ``push(id)`` returns the text the new token adds
    (maybe ""), ``flush()`` what is still held back.

    Decoding one token at a time is wrong for SentencePiece-style vocabularies: a leading "▁" is
    stripped from the first token of what is decoded, and a character spelled by several
    byte-fallback tokens is not valid UTF-8 until its last byte arrives (and an unfinished run
    turns every byte of it into U+FFFD).  So a short window is decoded with the token before it
    as context, and text ending in U+FFFD is held back.  For valid UTF-8 the pieces join to the
    decoding of the whole sequence."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.prefix, self.read = tokenizer, [], 0, 0

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return now[len(before):]
        return ""

    def flush(self) -> str:
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return now[len(before):]
