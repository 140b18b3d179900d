"""The command-line hooks: ``pyworkloads demo`` (:func:`demo`) and ``pyworkloads run whisper``
(:func:`add_run_arguments`, :func:`run_cli`)."""
from __future__ import annotations

import time

import numpy as np

from ... import kernels
from ...audio import SAMPLE_RATE, log_mel_spectrogram
from .api import from_preset
from .decoding import TASKS, greedy
from .hf import from_pretrained


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


def add_run_arguments(parser) -> None:
    parser.add_argument("--model", required=True,
                        help="Hugging Face Whisper checkpoint directory (safetensors)")
    parser.add_argument("audio", help="audio file (WAV, FLAC, ... any rate and channel count)")
    parser.add_argument("--language", default=None, help="language code or name (default: detect)")
    parser.add_argument("--task", default=None, choices=TASKS,
                        help="transcribe (default) or translate to English")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _clock(t: float) -> str:
    m, s = divmod(max(t, 0.0), 60.0)
    h, m = divmod(int(m), 60)
    return f"{h:02d}:{m:02d}:{s:06.3f}"


def run_cli(args) -> int:
    model = from_pretrained(args.model)
    res = model.transcribe(args.audio, language=args.language, task=getattr(args, "task", None),
                           progress=not getattr(args, "no_progress", False))
    for seg in res.segments:
        print(f"[{_clock(seg.start)} --> {_clock(seg.end)}] {seg.text.strip()}")
    print(f"language: {res.language}")
    print(res.text.strip())
    return 0
