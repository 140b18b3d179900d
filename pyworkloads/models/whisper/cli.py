"""The command-line hooks: ``pyworkloads demo`` (:func:`demo`) and ``pyworkloads run whisper``
(:func:`add_run_arguments`, :func:`run_cli`).

``pyworkloads run whisper --model DIR AUDIO`` prints the segments, the language and the text.
``--output-format`` (txt, srt, vtt, json, tsv or all) and/or ``--output-dir`` also write files
named after the audio (``--output-dir`` alone writes every format, as openai-whisper does by
default; ``--output-format`` alone writes to the current folder).  The decoding options are
openai-whisper's, with its underscore spellings accepted too (``--beam_size 5``,
``--word_timestamps True``); options left out keep ``transcribe()``'s defaults.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from ... import kernels
from ...audio import SAMPLE_RATE, log_mel_spectrogram
from .api import from_preset
from .decoding import TASKS, greedy
from .hf import from_pretrained
from .output import FORMATS, write_result


def demo() -> str:
    """Log-mel of a synthetic chirp, the encoder and a few greedy decoding steps of the tiny
    random preset."""
    t0 = time.perf_counter()
    model = from_preset("whisper-tiny-random", seed=0)
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    audio = (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32)   # 2-s chirp
    feats = log_mel_spectrogram(audio, model.config.num_mel_bins)[None]           # [1, 80, 3000]
    audio_features = model.encode(feats)                                           # [1, 1500, 64]
    prompt = model.init_tokens(feats, language="en")[0]     # sot, <|en|>, transcribe, notimestamps
    ids = greedy(audio_features, prompt, model.weights, model.config, model.generation_config,
                 len(prompt) + 6, timestamps=False)
    dt = time.perf_counter() - t0
    return (f"whisper-tiny-random ({kernels.get_backend()}): log-mel {tuple(feats.shape)} -> "
            f"encoder {tuple(audio_features.shape)} -> prompt {prompt.tolist()} -> greedy ids "
            f"{ids} in {dt:.2f} s")


def _bool(text: str) -> bool:
    """openai-whisper's True/False option values (any case, or 1/0, yes/no)."""
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if text.lower() not in value:
        raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")
    return value[text.lower()]


def _optional(kind):
    """A number, or None for the text "None" (openai-whisper's way to switch a threshold off)."""
    def parse(text: str):
        return None if text == "None" else kind(text)
    parse.__name__ = kind.__name__              # argparse names the type in its messages
    return parse


def _switch(group, name: str, help: str) -> None:
    """--name / --no-name, and openai-whisper's --name_with_underscores True|False."""
    group.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None,
                       help=f"{help} (also --{name.replace('-', '_')} True|False)")
    group.add_argument(f"--{name.replace('-', '_')}", type=_bool, metavar="True|False",
                       dest=name.replace("-", "_"), default=None, help=argparse.SUPPRESS)


def add_run_arguments(parser) -> None:
    parser.add_argument("--model", required=True,
                        help="Hugging Face Whisper checkpoint directory (safetensors)")
    parser.add_argument("audio", help="audio file (WAV, FLAC, ... any rate and channel count)")
    parser.add_argument("--language", default=None, help="language code or name (default: detect)")
    parser.add_argument("--task", default=None, choices=TASKS,
                        help="transcribe (default) or translate to English")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    out = parser.add_argument_group("output files")
    out.add_argument("--output-format", "--output_format", "-f", choices=(*FORMATS, "all"),
                     metavar="FORMAT", help="also write the transcript as "
                     f"{', '.join(FORMATS)} or all of them")
    out.add_argument("--output-dir", "--output_dir", "-o", metavar="DIR",
                     help="folder for the files (default: .; given alone: every format)")
    out.add_argument("--max-line-width", "--max_line_width", type=_optional(int), metavar="N",
                     help="with --word-timestamps: break subtitle lines after this many "
                          "characters")
    dec = parser.add_argument_group("decoding (left out: transcribe()'s defaults)")
    dec.add_argument("--beam-size", "--beam_size", type=_optional(int), metavar="N",
                     help="beams of beam search at temperature 0")
    dec.add_argument("--temperature", type=float, metavar="T",
                     help="sampling temperature (0: greedy)")
    dec.add_argument("--temperature-increment-on-fallback", "--temperature_increment_on_fallback",
                     type=_optional(float), metavar="DT",
                     help="retry a failed window at temperature + this, + 2 x this, ... up to 1")
    dec.add_argument("--compression-ratio-threshold", "--compression_ratio_threshold",
                     type=_optional(float), metavar="X",
                     help="a window whose text gzips better than this has failed")
    dec.add_argument("--logprob-threshold", "--logprob_threshold", type=_optional(float),
                     metavar="X",
                     help="a window whose mean token log-probability is below this has failed")
    dec.add_argument("--no-speech-threshold", "--no_speech_threshold", type=_optional(float),
                     metavar="P",
                     help="a failed window whose <|nospeech|> probability exceeds this is "
                          "silence")
    _switch(dec, "condition-on-previous-text",
            "prompt each window with the text of the previous ones")
    dec.add_argument("--initial-prompt", "--initial_prompt", metavar="TEXT",
                     help="text to prompt the first window with")
    _switch(dec, "word-timestamps", "add word-level timestamps to the segments")


def transcribe_options(args) -> dict:
    """The decoding keyword arguments of ``transcribe()`` that the command line set.  A
    temperature increment makes the fallback ladder (t, t + inc, ... <= 1), as openai-whisper."""
    names = ("beam_size", "compression_ratio_threshold", "logprob_threshold",
             "no_speech_threshold", "condition_on_previous_text", "initial_prompt",
             "word_timestamps")
    options = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    temperature = getattr(args, "temperature", None)
    increment = getattr(args, "temperature_increment_on_fallback", None)
    if increment is not None:
        if not increment > 0:
            raise ValueError(f"--temperature-increment-on-fallback must be > 0, got {increment}")
        start = temperature or 0.0
        temperature = tuple(round(float(t), 6) for t in np.arange(start, 1.0 + 1e-6, increment))
    if temperature is not None:
        options["temperature"] = temperature
    width = getattr(args, "max_line_width", None)
    if width is not None and not options.get("word_timestamps"):
        raise ValueError("--max-line-width needs --word-timestamps")
    if width is not None and width < 1:
        raise ValueError(f"--max-line-width must be a positive number of characters, got {width}")
    return options


def _clock(t: float) -> str:
    m, s = divmod(max(t, 0.0), 60.0)
    h, m = divmod(int(m), 60)
    return f"{h:02d}:{m:02d}:{s:06.3f}"


def run_cli(args) -> int:
    options = transcribe_options(args)
    model = from_pretrained(args.model)
    res = model.transcribe(args.audio, language=args.language, task=getattr(args, "task", None),
                           progress=not getattr(args, "no_progress", False), **options)
    for seg in res.segments:
        print(f"[{_clock(seg.start)} --> {_clock(seg.end)}] {seg.text.strip()}")
    print(f"language: {res.language}")
    print(res.text.strip())
    fmt, folder = getattr(args, "output_format", None), getattr(args, "output_dir", None)
    if fmt is not None or folder is not None:
        for path in write_result(res, args.audio, fmt or "all", folder or ".",
                                 getattr(args, "max_line_width", None)):
            print(f"wrote {path}", file=sys.stderr)
    return 0
