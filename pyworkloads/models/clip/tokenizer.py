"""CLIP's text input: a checkpoint's ``tokenizer.json`` (through the ``tokenizers`` library) and
``tokenize()``, which pads or truncates to the context length like OpenAI's ``clip.tokenize``."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..common import check_choice, check_int, tokenizer_from_file

__all__ = ["BOS_TOKEN", "EOS_TOKEN", "Tokenizer", "load_tokenizer", "tokenize"]

BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"
# The longest context tokenize() pads to: CLIP's is 77 and long-text variants reach a few hundred;
# 65536 bounds the padded ids at 512 KB per text.
MAX_CONTEXT_LENGTH = 65536


@dataclass
class Tokenizer:
    """A checkpoint's ``tokenizers.Tokenizer`` plus the two ids tokenize() needs beyond it."""
    backend: object = field(repr=False)   # tokenizers.Tokenizer
    eos_token_id: int
    pad_token_id: int


def load_tokenizer(path) -> Tokenizer:
    """The tokenizer of a checkpoint: a ``tokenizer.json`` file, or a directory with one.

    CLIP's tokenizer lowercases, splits words, applies byte-level BPE with an end-of-word suffix
    and wraps the ids in <|startoftext|> ... <|endoftext|>; all of it lives in tokenizer.json.
    The pad token (``<|endoftext|>`` for OpenAI's checkpoints, ``!`` for LAION's) comes from
    tokenizer_config.json next to it when present, else it is <|endoftext|>.  A file that is not
    a valid tokenizer (or config) raises ValueError naming it."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load_tokenizer: path must be a file or directory path, "
                        f"got {type(path).__name__}")
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if file.is_dir():
        raise IsADirectoryError(f"{file}: is a directory, not a tokenizer.json file")
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no tokenizer.json (save one with the checkpoint's "
                                "tokenizer.save_pretrained)")
    backend = tokenizer_from_file(file)
    eos = backend.token_to_id(EOS_TOKEN)
    if eos is None:
        raise ValueError(f"{file}: not a CLIP tokenizer (no {EOS_TOKEN} token)")
    pad = eos
    cfg_file = file.parent / "tokenizer_config.json"
    if cfg_file.is_file():
        pad_tok = _read_json_object(cfg_file).get("pad_token")
        if isinstance(pad_tok, dict):
            pad_tok = pad_tok.get("content")
        if isinstance(pad_tok, str) and backend.token_to_id(pad_tok) is not None:
            pad = backend.token_to_id(pad_tok)
    return Tokenizer(backend, eos, pad)


def _read_json_object(file: Path) -> dict:
    """A JSON file holding an object, or ValueError naming the file."""
    try:
        cfg = json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{file}: not UTF-8 text ({exc})") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{file}: expected a JSON object, got a {type(cfg).__name__}")
    return cfg


def tokenize(texts, tokenizer: Tokenizer, context_length: int = 77, truncate: bool = False,
             padding: str = "max_length") -> np.ndarray:
    """Texts -> int64 ids [B, T] with start and end tokens, padded with the tokenizer's pad id.

    padding="max_length" pads to ``context_length`` (OpenAI's ``clip.tokenize``), "longest" to
    the longest text.  A text longer than ``context_length`` raises ValueError unless
    ``truncate=True``, which keeps the first tokens and ends the row with <|endoftext|> (as both
    OpenAI's and transformers' tokenizers do)."""
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, (bytes, bytearray)) or not hasattr(texts, "__iter__"):
        raise TypeError("texts must be a string or a non-empty list of strings, "
                        f"got {type(texts).__name__}")
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a string or a non-empty list of strings")
    check_choice(padding, "padding", ("max_length", "longest"))
    check_int(context_length, "context_length", minimum=2, maximum=MAX_CONTEXT_LENGTH)
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    if not isinstance(tokenizer, Tokenizer):
        raise TypeError("tokenizer must be a clip.Tokenizer (load_tokenizer()) or a path, "
                        f"got {type(tokenizer).__name__}")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = [enc.ids for enc in tokenizer.backend.encode_batch(texts)]
    for i, row in enumerate(rows):
        if len(row) > context_length:
            if not truncate:
                raise ValueError(f"texts[{i}] is {len(row)} tokens long (with start/end tokens), "
                                 f"more than the context length {context_length}; shorten it or "
                                 "pass truncate=True")
            rows[i] = row[:context_length - 1] + [eos]
    T = context_length if padding == "max_length" else max(map(len, rows))
    ids = np.full((len(rows), T), pad, dtype=np.int64)                         # [B, T]
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
    return ids
