"""Whisper: speech recognition with an audio encoder and a text decoder.

Open ``model.py`` to read the model: the architecture with its dimension glossary, the Config and
presets, the weight layout and the forward pass (:func:`encoder`, :func:`cross_attention_kv`,
:func:`decoder`) as short pure functions.  The log-mel front end is ``pyworkloads/audio.py``.
Around them: ``decoding.py`` (generation settings, the prompt, language detection, the logit
rules, greedy decoding, sampling and beam search, the fallback statistics), ``transcribe.py``
(long audio, window by window, the temperature-fallback loop, and segments), ``timing.py`` (word
timestamps: dynamic time warping over the alignment heads' cross-attention), ``output.py`` (txt,
srt, vtt, json and tsv files), ``hf.py`` (Hugging Face config and checkpoints), ``api.py`` (the
:class:`Whisper` class) and ``cli.py`` (the ``pyworkloads demo`` / ``run whisper`` hooks).
"""
from __future__ import annotations

from ...audio import (
    HOP_LENGTH,
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    load_audio,
    log_mel_spectrogram,
    pad_or_trim,
)
from .api import Whisper, from_preset, random_weights
from .cli import add_run_arguments, demo, run_cli
from .decoding import (
    LANGUAGES,
    TASKS,
    TO_LANGUAGE_CODE,
    GenerationConfig,
    default_generation_config,
    make_generation_config,
    special_token_ids,
)
from .hf import from_pretrained
from .model import (
    N_TIMESTAMPS,
    PRESETS,
    Config,
    count_params,
    cross_attention_kv,
    decoder,
    decoder_cache,
    encoder,
    sinusoids,
    weight_shapes,
)
from .output import write_all, write_result
from .timing import add_word_timestamps, token_timestamps
from .transcribe import Segment, Transcription

__all__ = [
    "Config", "PRESETS", "count_params", "weight_shapes", "sinusoids", "encoder",
    "cross_attention_kv", "decoder", "decoder_cache", "N_TIMESTAMPS", "random_weights",
    "from_pretrained", "from_preset", "Whisper", "GenerationConfig", "LANGUAGES",
    "TO_LANGUAGE_CODE", "TASKS", "special_token_ids", "make_generation_config",
    "default_generation_config", "Segment", "Transcription", "log_mel_spectrogram", "load_audio",
    "pad_or_trim", "SAMPLE_RATE", "HOP_LENGTH", "N_FRAMES", "N_SAMPLES", "demo",
    "add_run_arguments", "run_cli", "add_word_timestamps", "token_timestamps", "write_result",
    "write_all",
]
