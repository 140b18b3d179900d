"""The user-facing model: :class:`Whisper` (checks its inputs, then calls the forward functions of
``model.py`` and the decoding of ``decoding.py`` / ``transcribe.py``), :func:`random_weights` and
:func:`from_preset`."""
from __future__ import annotations

import numpy as np

from .. import common
from . import decoding
from .decoding import GenerationConfig, default_generation_config
from .model import (
    PRESETS,
    Config,
    count_params,
    cross_attention_kv,
    decoder,
    encoder,
    sinusoids,
    weight_shapes,
)
from .transcribe import Transcription, decode_windows, pad_frames, progress_bar, transcribe


class Whisper:
    """A Whisper checkpoint: weights (HF names), Config, GenerationConfig and optional tokenizer."""

    def __init__(self, config: Config, weights, generation_config: GenerationConfig | None = None,
                 tokenizer=None):
        if not isinstance(config, Config):
            raise TypeError(f"config must be a whisper.Config, got {type(config).__name__}")
        common.check_weights(weights, weight_shapes(config), "Whisper")
        self.config = config
        self.weights = weights
        self.generation_config = generation_config or default_generation_config(config)
        self.tokenizer = tokenizer

    # ------------------------------------------------------------------ inputs
    def _features(self, input_features, exact_frames: bool = True) -> np.ndarray:
        """Check a log-mel batch: float [B, Mel, frames] (or [Mel, frames]), finite; frames =
        2S = 3000 unless ``exact_frames`` is off (long-form input) -> float32 [B, Mel, frames]."""
        c = self.config
        x = np.asarray(input_features)
        if x.dtype.kind != "f":
            raise TypeError(f"input_features must be a float array (log-mel), got dtype {x.dtype}")
        if x.ndim == 2:
            x = x[None]                                          # [Mel, frames] -> [1, Mel, frames]
        if x.ndim != 3 or x.shape[1] != c.num_mel_bins:
            raise ValueError(f"input_features must be [B, {c.num_mel_bins}, frames] (log-mel from "
                             f"log_mel_spectrogram(audio, n_mels={c.num_mel_bins})), "
                             f"got shape {x.shape}")
        if x.shape[0] == 0 or x.shape[2] == 0:
            raise ValueError(f"input_features is empty: shape {x.shape}")
        if exact_frames and x.shape[2] != c.n_audio_frames:
            raise ValueError(f"input_features must have {c.n_audio_frames} frames (30 s), got "
                             f"{x.shape[2]}; pad with log_mel_spectrogram's default n_samples, "
                             "or use generate()/transcribe() for long audio")
        if not np.all(np.isfinite(x)):
            raise ValueError("input_features contains NaN or Inf")
        return np.ascontiguousarray(x, dtype=np.float32)

    # ------------------------------------------------------------------ forward
    def encode(self, input_features) -> np.ndarray:
        """log-mel [B, Mel, 3000] -> audio features [B, 1500, D]."""
        return encoder(self._features(input_features), self.weights, self.config)

    def __call__(self, input_features, decoder_input_ids) -> np.ndarray:
        """Teacher-forced logits.  input_features [B, Mel, 3000], decoder_input_ids int [B, T]
        -> [B, T, V]."""
        w, c = self.weights, self.config
        feats = self._features(input_features)
        ids = common.check_token_ids(decoder_input_ids, "decoder_input_ids", c.vocab_size,
                                     c.max_target_positions)
        if ids.shape[0] != feats.shape[0] and ids.shape[0] != 1:
            raise ValueError(f"batch sizes differ: input_features {feats.shape[0]}, "
                             f"decoder_input_ids {ids.shape[0]}")
        ids = np.broadcast_to(ids, (feats.shape[0], ids.shape[1]))                    # [B, T]
        audio = encoder(feats, w, c)                                                  # [B, S, D]
        return decoder(ids, cross_attention_kv(audio, w, c), w, c)                    # [B, T, V]

    # ------------------------------------------------------------------ language and prompt
    def detect_language(self, input_features) -> np.ndarray:
        """Most likely language token per example from the first 30 s: the decoder's logits after
        <|startoftranscript|>, restricted to the language tokens.  -> int [B]."""
        if not self.generation_config.lang_to_id:
            raise ValueError("this checkpoint has no language tokens (lang_to_id); "
                             "it is English-only")
        n = self.config.n_audio_frames
        feats = self._features(input_features, exact_frames=False)
        feats = pad_frames(feats[:, :, :n], n)                                      # [B, Mel, 3000]
        return decoding.detect_language(feats, self.weights, self.config,
                                        self.generation_config)

    def init_tokens(self, input_features, language=None, task=None,
                    return_timestamps=False) -> np.ndarray:
        """The decoder prompt per example, as transformers builds it: <|startoftranscript|>, the
        language (given, from legacy forced_decoder_ids, or detected), the task, and
        <|notimestamps|> unless timestamps are requested.  -> int [B, n_init]."""
        return decoding.init_tokens(input_features.shape[0], self.generation_config, language,
                                    task, return_timestamps,
                                    detect=lambda: self.detect_language(input_features))

    # ------------------------------------------------------------------ decoding
    def _check_generate(self, B, total, return_timestamps) -> bool:
        """Refuse settings generate() cannot honour; -> return_timestamps, resolved."""
        gc, n_win = self.generation_config, self.config.n_audio_frames
        if return_timestamps is None:
            return_timestamps = bool(gc.return_timestamps)
        if total > n_win:
            if return_timestamps is False:
                raise ValueError(f"input_features has {total} frames (> {n_win}, more than 30 s): "
                                 "long-form decoding needs timestamps; pass "
                                 "return_timestamps=True or at most 30 s")
            if B > 1:
                raise ValueError("long-form generate() takes one audio at a time (batch size 1)")
            return_timestamps = True
        if return_timestamps and gc.no_timestamps_token_id is None:
            raise ValueError("return_timestamps=True needs "
                             "generation_config.no_timestamps_token_id")
        return return_timestamps

    def generate(self, input_features, language: str | list | None = None,
                 task: str | None = None, return_timestamps: bool | None = None,
                 max_new_tokens: int | None = None, max_length: int | None = None,
                 return_segments: bool = False, progress: bool = False, *,
                 num_beams: int | None = None, length_penalty: float | None = None,
                 early_stopping: bool | str | None = None,
                 temperature: float | tuple | list | None = None,
                 compression_ratio_threshold: float | None = None,
                 logprob_threshold: float | None = None, no_speech_threshold: float | None = None,
                 condition_on_prev_tokens: bool | None = None, prompt_ids=None,
                 prompt_condition_type: str | None = None, seed: int | None = None,
                 generator: np.random.Generator | None = None, word_timestamps: bool = False):
        """Decoding with the semantics and argument names of transformers'
        ``WhisperForConditionalGeneration.generate`` -> int64 [B, n]: each row's tokens,
        right-padded with pad_token_id to the longest row's n.

        The result holds the generated tokens only (no prompt, no final <|endoftext|>), with
        timestamp tokens when ``return_timestamps=True``.  More than 3000 frames (30 s) selects
        long-form decoding: timestamps on, windows of 30 s, each next window starting at the last
        complete segment.  ``return_segments=True`` also returns, per example, the list of
        segments (dicts with start, end, tokens, and words with ``word_timestamps=True``).
        language=None on a multilingual checkpoint detects it; a list gives one language per
        example.  ``max_length`` (total tokens, prompt included; default from the generation
        config) or ``max_new_tokens`` bound each window's decoding.

        Decoding (arguments left None come from generation_config.json, then transformers'
        defaults): greedy, or beam search with ``num_beams`` > 1 (``length_penalty``,
        ``early_stopping``).  ``temperature``: one value or a fallback schedule such as
        (0.0, 0.2, 0.4, 0.6, 0.8, 1.0); a window is decoded again at the next temperature when
        its zlib compression ratio exceeds ``compression_ratio_threshold`` or its average
        log-probability is below ``logprob_threshold``, and skipped as silence when also
        P(<|nospeech|>) > ``no_speech_threshold``.  Temperatures > 0 sample (top_k 50 unless the
        config says otherwise) with NumPy's generator: ``seed`` or ``generator``.
        ``condition_on_prev_tokens`` prompts each window with the previous windows' text.
        ``prompt_ids`` (<|startofprev|> and text tokens) go before every window's start tokens;
        with conditioning, as the oldest part of that text (``prompt_condition_type``
        'first-segment', the default) or before it in every window ('all-segments')."""
        feats = self._features(input_features, exact_frames=False)                # [B, Mel, frames]
        gc, B, total = self.generation_config, feats.shape[0], feats.shape[2]
        timestamps = self._check_generate(B, total, return_timestamps)
        opts = decoding.decoding_options(
            gc, self.config, timestamps, num_beams=num_beams, length_penalty=length_penalty,
            early_stopping=early_stopping, temperature=temperature,
            compression_ratio_threshold=compression_ratio_threshold,
            logprob_threshold=logprob_threshold, no_speech_threshold=no_speech_threshold,
            condition_on_prev_tokens=condition_on_prev_tokens, prompt_ids=prompt_ids,
            prompt_condition_type=prompt_condition_type, seed=seed, generator=generator,
            max_new_tokens=max_new_tokens, max_length=max_length, word_timestamps=word_timestamps)
        init = self.init_tokens(feats, language, task, timestamps)                   # [B, n_init]
        bar = progress_bar(total if total > self.config.n_audio_frames else None, progress)
        segments = [decode_windows(self, feats[b:b + 1], init[b], opts, bar) for b in range(B)]
        if bar is not None:
            bar.close()
        rows = [[t for s in segs for t in s["tokens"]] for segs in segments]
        pad = gc.pad_token_id if gc.pad_token_id is not None else gc.eos_token_id
        out = np.full((B, max((len(r) for r in rows), default=0)), pad, dtype=np.int64)
        for b, r in enumerate(rows):
            out[b, :len(r)] = r
        return (out, segments) if return_segments else out

    # ------------------------------------------------------------------ transcription
    def transcribe(self, path_or_array, language: str | None = None, task: str | None = None,
                   progress: bool = True, **options) -> Transcription:
        """Speech -> text, any length.  path_or_array: an audio file or 16 kHz samples.

        Up to 30 s: one padded window.  Longer: the whole clip's log-mel is decoded window by
        window with timestamps (Whisper's sequential long-form algorithm, as transformers runs it).
        -> ``.text``, ``.segments`` (start, end in seconds, text, tokens, words) and ``.language``
        (a code).

        ``options`` are :meth:`generate`'s decoding arguments, under their transformers names
        or openai-whisper's: ``num_beams`` / ``beam_size``, ``length_penalty``, ``temperature``,
        ``compression_ratio_threshold``, ``logprob_threshold``, ``no_speech_threshold``,
        ``condition_on_prev_tokens`` / ``condition_on_previous_text``, ``initial_prompt`` (text,
        tokenized with the checkpoint's tokenizer into prompt_ids), ``prompt_condition_type``,
        ``word_timestamps`` (each segment's ``words``: word, start, end, probability) and
        ``seed``.  Unset, they follow generation_config.json and transformers' defaults
        (greedy, no fallback); openai-whisper's command line uses temperature
        (0.0, 0.2, 0.4, 0.6, 0.8, 1.0), compression_ratio_threshold 2.4, logprob_threshold -1.0,
        no_speech_threshold 0.6 and condition_on_previous_text True."""
        return transcribe(self, path_or_array, language, task, progress, **options)

    def decode(self, ids) -> str:
        """Token ids -> text with the checkpoint's tokenizer (special tokens dropped)."""
        ids = [int(t) for t in ids]
        if self.tokenizer is None:
            return " ".join(map(str, ids))
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def random_weights(config: Config, seed: int = 0, std: float = 0.02) -> dict[str, np.ndarray]:
    """Random float32 weights with the checkpoint's names and shapes: N(0, std) matrices, layer
    norms at (1, 0), the exact sinusoidal encoder positions, and small random biases (N(0,
    std / 10), not zeros, so that a bias applied where it does not belong, or left out, changes
    the output)."""
    def init(name, shape, rng):
        if name == "model.encoder.embed_positions.weight":
            return sinusoids(*shape)
        if name.endswith(".bias") and "layer_norm" not in name:
            return 0.1 * std * rng.standard_normal(shape)
        return None
    return common.random_weights(weight_shapes(config), seed, std, init=init)


def from_preset(name: str, seed: int = 0) -> Whisper:
    """Random float32 weights with a preset's real shapes (for shapes, timing and profiling)."""
    if name not in PRESETS:
        raise ValueError(f"unknown Whisper preset {name!r}; choose one of {', '.join(PRESETS)}")
    config = PRESETS[name]
    common.check_fits(4 * count_params(config), name)
    return Whisper(config, random_weights(config, seed))
