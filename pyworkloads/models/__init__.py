"""One package per model (``llama2``, ``clip``, ``sam``, ``whisper``).  In each, ``model.py`` is the
file to read: the architecture docstring with its glossary, the Config and presets, the weight
layout and the forward pass as short pure functions.  Its siblings hold what users need around it
(generation and decoding, tokenization, pre- and post-processing, Hugging Face config parsing,
the command-line hooks); the package's ``__init__`` exports the public API.

Every package offers the hooks ``pyworkloads demo|run|profile`` use: ``demo() -> str`` (a tiny
random-weight run, returning a one-line result), ``add_run_arguments(parser)`` and
``run_cli(args)``.  ``common`` holds what the four share.
"""
from __future__ import annotations

from .common import available_memory, check_fits

__all__ = ["available_memory", "check_fits"]
