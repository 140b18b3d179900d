"""Transcribe speech with Whisper: audio -> log-mel spectrogram -> encoder -> greedy decoding with
timestamps.

    python examples/whisper_transcribe.py                                # tiny committed checkpoint
    python examples/whisper_transcribe.py --model ~/models/whisper-small --audio talk.flac

The default audio is tests/fixtures/whisper/speech.wav, "The quick brown fox jumps over the lazy
dog." spoken by espeak-ng.  With no --model the script loads tests/fixtures/whisper/tiny/: random
weights and a tiny tokenizer, so the transcript is noise -- but the tokens are the ones
transformers' ``generate(language="en", return_timestamps=True)`` gives for the same files
(tests/test_examples.py checks it).  A --model directory is a Hugging Face Whisper checkpoint:
config.json, *.safetensors, generation_config.json, tokenizer.json.
(From a source checkout without ``pip install .``, run with PYTHONPATH=. )
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

import pyworkloads as pw

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "whisper"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", metavar="DIR", help="Hugging Face Whisper checkpoint directory")
    ap.add_argument("--audio",
                    help="an audio file, any rate and channel count (default: the committed clip)")
    ap.add_argument("--language",
                    help="language code or name (default: detect; 'en' for the committed clip)")
    ap.add_argument("--backend", default="numpy", choices=pw.available(), help="kernel backend")
    args = ap.parse_args()

    model_dir = args.model or FIXTURES / "tiny"
    w = pw.whisper.from_pretrained(model_dir)
    c = w.config
    print(f"model: {model_dir}"
          f"{'' if args.model else ' (tiny committed checkpoint, random weights)'}: "
          f"{c.encoder_layers} encoder + {c.decoder_layers} decoder layers, d_model {c.d_model}, "
          f"{c.num_mel_bins} mels")

    audio_path = args.audio or FIXTURES / "speech.wav"
    language = args.language or (None if args.audio else "en")      # the committed clip is English
    audio = pw.whisper.load_audio(audio_path)                       # float32 [N], mono, 16 kHz
    print(f"audio: {audio_path}: {audio.size / 16000:.2f} s")

    # the front end: 25 ms windows every 10 ms, 80 (or 128) mel bands, log10, clamped 8 below the
    # maximum, padded to the 30 s the encoder always takes
    feats = pw.whisper.log_mel_spectrogram(audio, n_mels=c.num_mel_bins)   # [M, 3000]
    print(f"log-mel {list(feats.shape)}, values in [{feats.min():.2f}, {feats.max():.2f}]")

    with pw.use_backend(args.backend):
        if language is None and w.generation_config.lang_to_id:
            # the decoder's likeliest language token after <|startoftranscript|>
            lang_id = int(w.detect_language(feats[None])[0])
            token = {i: t for t, i in w.generation_config.lang_to_id.items()}[lang_id]
            print(f"detected language: {token} (token {lang_id})")
            language = token[2:-2]                                    # "<|en|>" -> "en"
        # transcribe = features + decoding windows of 30 s with Whisper's timestamp rules
        t0 = time.perf_counter()
        res = w.transcribe(audio_path, language=language)
        dt = time.perf_counter() - t0
    for seg in res.segments:
        print(f"  [{seg.start:6.2f} s -> {seg.end:6.2f} s] {seg.text.strip()!r}")
    print(f"language: {res.language}")
    print(f"tokens: {np.asarray(res.tokens).tolist()}")
    print(f"text: {res.text.strip()!r}")
    print(f"transcribed {audio.size / 16000:.2f} s of audio in {dt:.2f} s (backend {args.backend})")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, TypeError, FileNotFoundError, MemoryError) as exc:
        sys.exit(f"error: {exc}")
