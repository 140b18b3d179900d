"""Long-form transcription: audio of any length decoded window by window, as transformers'
``WhisperForConditionalGeneration.generate`` runs Whisper's sequential algorithm.

Each 30-s window (3000 mel frames) is encoded, then decoded with the fallback loop: greedy or beam
search first; if the result looks wrong -- too repetitive (zlib compression ratio above
``compression_ratio_threshold``) or too unlikely (average log-probability below
``logprob_threshold``) -- it is decoded again by sampling at the next temperature of the
schedule, and the last try is kept.  A window whose <|nospeech|> probability is above
``no_speech_threshold`` while its log-probability is low is skipped as silence.  Pairs of
timestamp tokens close segments, and the next window starts at the last complete segment (or at
the window's end when the window closed with a single timestamp).  With
``condition_on_prev_tokens`` each window's prompt starts with <|startofprev|> and the text of the
previous segments; ``prompt_ids`` (a text prompt) go before the windows' start tokens too.
Times are seconds: 20 ms per timestamp token, 10 ms per mel frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...audio import HOP_LENGTH, load_audio, log_mel_spectrogram
from .decoding import (
    TASKS,
    TO_LANGUAGE_CODE,
    DecodingOptions,
    beam_search,
    language_id,
    needs_fallback,
    no_speech_probability,
    sample,
)
from .model import INPUT_STRIDE, cross_attention_kv, encoder

TIME_PRECISION = 0.02            # seconds per timestamp token


@dataclass
class Segment:
    start: float                 # seconds
    end: float
    text: str
    tokens: list = field(default_factory=list)
    words: list | None = None    # with word_timestamps: dicts of word, start, end, probability


@dataclass
class Transcription:
    text: str
    segments: list
    language: str | None
    tokens: np.ndarray | None = None

    def __str__(self):
        return self.text


def pad_frames(x: np.ndarray, n: int) -> np.ndarray:
    """Zero-pad (the value transformers pads features with) or cut the frame axis to n.
    [B, Mel, frames] -> [B, Mel, n]."""
    if x.shape[2] >= n:
        return np.ascontiguousarray(x[:, :, :n])
    return np.pad(x, ((0, 0), (0, 0), (0, n - x.shape[2])))


def split_segments(seq: list[int], seek: int, n_frames: int, tb: int):
    """One window's tokens -> (segments, frames to advance), transformers' ``_retrieve_segment``.

    Consecutive timestamp tokens close a segment.  If the window ends with a single timestamp,
    everything up to the window's end is final (advance a whole window); otherwise the tokens after
    the last closed segment were cut mid-speech: drop them and restart at that timestamp.  Times
    are seconds: window offset (seek · 10 ms) + timestamp index · 20 ms."""
    offset = seek * TIME_PRECISION / INPUT_STRIDE
    is_ts = [t >= tb for t in seq]
    single_ending = is_ts[-2:] == [False, True]
    cuts = [i + 1 for i in range(len(is_ts) - 1) if is_ts[i] and is_ts[i + 1]]
    if cuts:
        if single_ending:
            cuts.append(len(seq))
        else:
            cuts[-1] += 1                       # keep the closing timestamp in the last segment
        segments, last = [], 0
        for j, cut in enumerate(cuts):
            piece = seq[last:cut]
            end_idx = -1 if (j < len(cuts) - 1 or single_ending) else -2
            segments.append(dict(start=offset + (piece[0] - tb) * TIME_PRECISION,
                                 end=offset + (piece[end_idx] - tb) * TIME_PRECISION,
                                 tokens=list(piece)))
            last = cut
        if single_ending:
            return segments, n_frames
        return segments, (seq[last - 2] - tb) * INPUT_STRIDE
    stamps = [i for i, t in enumerate(is_ts) if t]
    end = int(n_frames * 0.01 / TIME_PRECISION)
    if stamps and seq[stamps[-1]] != tb:
        end = seq[stamps[-1]] - tb
    return [dict(start=offset, end=offset + end * TIME_PRECISION, tokens=list(seq))], n_frames


def progress_bar(total, enabled):
    """A tqdm bar over ``total`` mel frames, or None (disabled, or tqdm missing)."""
    if not enabled or total is None:
        return None
    try:
        from tqdm import tqdm
    except ImportError:                          # tqdm is a dependency, but stay usable without it
        return None
    return tqdm(total=total, unit="frames", desc="transcribing", leave=False)


def window_prompt(init, history: list, conditioned: bool, opts: DecodingOptions, gc,
                  max_target_positions: int, tb: int) -> list[int]:
    """The decoder input of the next window, transformers' ``_prepare_decoder_input_ids`` for one
    example: when conditioning, <|startofprev|> (or, for prompt_condition_type 'all-segments', the
    prompt) and the last max_target_positions // 2 - 1 tokens of the segments so far (a segment
    closed by a pair of timestamps without its last one), then the start tokens ``init``;
    otherwise prompt_ids (if any) and ``init``."""
    if conditioned and history:
        if opts.prompt_ids is not None and opts.prompt_condition_type == "all-segments":
            bos = list(opts.prompt_ids)
        else:
            prev = gc.prev_sot_token_id
            if prev is None and gc.suppress_tokens and len(gc.suppress_tokens) >= 2:
                prev = gc.suppress_tokens[-2]          # where the Hub checkpoints keep it
            bos = [] if prev is None else [prev]
        past = [t for s in history
                for t in (s["tokens"][:-1] if len(s["tokens"]) > 2 and s["tokens"][-2] >= tb
                          else s["tokens"])]
        return bos + past[-(max_target_positions // 2 - 1):] + list(init)
    return list(opts.prompt_ids or []) + list(init)


def window_limit(n_prompt: int, window_max: int, opts: DecodingOptions, max_pos: int):
    """-> (this window's max total length, the running max_length).  Like transformers, the
    running max_length grows by the prompt at every window (capped by the context)."""
    if (opts.max_new_tokens or 0) + n_prompt > max_pos:
        raise ValueError(f"the decoder prompt ({n_prompt} tokens: prompt_ids, previous text and "
                         f"start tokens) plus max_new_tokens ({opts.max_new_tokens or 0}) exceeds "
                         f"the decoder context of {max_pos} tokens")
    if opts.max_new_tokens is not None:
        return opts.max_new_tokens + n_prompt, window_max
    window_max = min(window_max + min(max_pos // 2 - 1, n_prompt), max_pos)
    return window_max, window_max


def decode_with_fallback(model, cross_kv, prompt, sot_index: int, limit: int, beams: int,
                         opts: DecodingOptions):
    """One window's temperature fallback (transformers' ``generate_with_fallback``, one example):
    decode at each temperature of the schedule until a candidate passes the thresholds (the last
    one is kept regardless) -> (candidate, skip as silence?, its temperature, beams for the next
    windows: transformers turns beam search off for the rest of the call once it has sampled)."""
    gc, c, w = model.generation_config, model.config, model.weights
    no_speech = None
    if opts.no_speech_threshold is not None:
        no_speech = no_speech_probability(cross_kv, prompt, sot_index, w, c, gc)
    for i, temperature in enumerate(opts.temperatures):
        if temperature > 0:
            beams = 1
            cand = sample(cross_kv, prompt, w, c, gc, limit, opts.timestamps, temperature,
                          opts.top_k, opts.rng)
        elif beams > 1:
            cand = beam_search(cross_kv, prompt, w, c, gc, limit, opts.timestamps, beams,
                               opts.length_penalty, opts.early_stopping)
        else:
            cand = sample(cross_kv, prompt, w, c, gc, limit, opts.timestamps)
        fallback, skip = needs_fallback(cand, no_speech, opts, c.vocab_size)
        if not fallback or i == len(opts.temperatures) - 1:
            return cand, skip, temperature, beams


def decode_windows(model, features, init, opts: DecodingOptions, bar=None) -> list[dict]:
    """One example's log-mel features [1, Mel, frames], any number of frames, decoded window after
    window from the start tokens ``init`` -> its segments (dicts with start, end, tokens, and
    words with ``opts.word_timestamps``)."""
    gc, c = model.generation_config, model.config
    n_win, total, max_pos = c.n_audio_frames, features.shape[2], c.max_target_positions
    # segments are cut at timestamp tokens even without timestamps (as transformers does); a
    # checkpoint without timestamps gets a begin past the vocabulary, so nothing is cut
    tb = gc.timestamp_begin if gc.timestamp_begin is not None else c.vocab_size + 1
    start = []                    # 'first-segment': the prompt is the history's first segment
    if opts.prompt_ids is not None and opts.prompt_condition_type == "first-segment":
        p = opts.prompt_ids
        start = [dict(tokens=p[1:] if p[0] == gc.prev_sot_token_id else list(p))]
    segments, seek, beams, last_speech = [], 0, opts.num_beams, 0.0
    conditioned = opts.condition_first_window
    window_max = gc.max_length if opts.max_length is None else opts.max_length
    while seek < total:
        prompt = window_prompt(init, start + segments, conditioned, opts, gc, max_pos, tb)
        limit, window_max = window_limit(len(prompt), window_max, opts, max_pos)
        n_frames = min(total - seek, n_win)
        window = pad_frames(features[:, :, seek:seek + n_frames], n_win)        # [1, Mel, 3000]
        audio = encoder(window, model.weights, c)                                  # [1, S, D]
        cross = cross_attention_kv(audio, model.weights, c)                  # L x [1, H, S, Dh]
        cand, skip, temperature, beams = decode_with_fallback(
            model, cross, prompt, len(prompt) - len(init), limit, beams, opts)
        conditioned = opts.condition_on_prev_tokens and temperature < 0.5
        advance = n_frames
        if not skip:
            seq = cand.tokens
            if seq and seq[-1] == gc.eos_token_id:
                seq = seq[:-1]
            new_segments, advance = split_segments(seq, seek, n_frames, tb)
            if opts.word_timestamps:
                from .timing import add_word_timestamps
                add_word_timestamps(model, new_segments, window, prompt, n_frames,
                                    time_offset=seek * TIME_PRECISION / INPUT_STRIDE,
                                    last_speech_timestamp=last_speech)
                words = [w for s in new_segments for w in s["words"]]
                last_speech = words[-1]["end"] if words else last_speech
            segments += new_segments
        seek += advance
        if bar is not None:
            bar.update(min(advance, total - bar.n))
    return segments


def prompt_ids_from_text(model, text: str) -> list[int]:
    """A text prompt as decoder tokens: <|startofprev|> and the tokens of " " + the stripped text,
    as transformers' ``WhisperProcessor.get_prompt_ids`` makes them."""
    if not isinstance(text, str):
        raise TypeError(f"initial_prompt must be a string, got {type(text).__name__}")
    gc = model.generation_config
    if model.tokenizer is None:
        raise ValueError("initial_prompt needs the checkpoint's tokenizer (tokenizer.json); pass "
                         "prompt_ids to generate() instead")
    if gc.prev_sot_token_id is None:
        raise ValueError("initial_prompt needs generation_config.prev_sot_token_id "
                         "(<|startofprev|>)")
    ids = model.tokenizer.encode(" " + text.strip(), add_special_tokens=False).ids
    special = [t for t in ids if t >= gc.eos_token_id]
    if special:
        raise ValueError(f"initial_prompt contains the special token "
                         f"{model.tokenizer.id_to_token(special[0])}; prompts are plain text")
    return [gc.prev_sot_token_id] + ids


def _alias(value, name: str, other, other_name: str):
    """openai-whisper's and transformers' names for one setting: either, or both if equal."""
    if value is not None and other is not None and value != other:
        raise ValueError(f"{name}={value!r} and {other_name}={other!r} name the same setting; "
                         "give one")
    return value if value is not None else other


def transcribe(model, path_or_array, language: str | None = None, task: str | None = None,
               progress: bool = True, *, num_beams=None, beam_size=None, length_penalty=None,
               temperature=None, compression_ratio_threshold=None, logprob_threshold=None,
               no_speech_threshold=None, condition_on_prev_tokens=None,
               condition_on_previous_text=None, initial_prompt=None, prompt_condition_type=None,
               word_timestamps=False, seed=None) -> Transcription:
    """Speech -> text, any length (see :meth:`Whisper.transcribe`)."""
    if language is not None and not isinstance(language, str):
        raise TypeError(f"language must be a string such as 'en' or 'english', or None to "
                        f"detect it; got {type(language).__name__}")
    if task is not None and (not isinstance(task, str) or task not in TASKS):
        raise ValueError(f"task must be one of {TASKS} or None, got {task!r}")
    options = dict(
        num_beams=_alias(num_beams, "num_beams", beam_size, "beam_size"),
        condition_on_prev_tokens=_alias(condition_on_prev_tokens, "condition_on_prev_tokens",
                                        condition_on_previous_text,
                                        "condition_on_previous_text"),
        prompt_ids=None if initial_prompt is None else prompt_ids_from_text(model, initial_prompt),
        length_penalty=length_penalty, temperature=temperature,
        compression_ratio_threshold=compression_ratio_threshold,
        logprob_threshold=logprob_threshold, no_speech_threshold=no_speech_threshold,
        prompt_condition_type=prompt_condition_type, word_timestamps=word_timestamps, seed=seed)
    audio = load_audio(path_or_array)
    n_mels = model.config.num_mel_bins
    window = model.config.n_audio_frames * HOP_LENGTH                   # 480 000 samples = 30 s
    if audio.size > window:
        feats = log_mel_spectrogram(audio, n_mels, n_samples=None)     # [Mel, samples / 160]
    else:
        feats = log_mel_spectrogram(audio, n_mels, n_samples=window)   # [Mel, 3000]
    feats = feats[None]                                                 # [1, Mel, frames]
    gc = model.generation_config
    if gc.lang_to_id:
        lang_id = (language_id(language, gc) if language is not None
                   else int(model.detect_language(feats)[0]))
        code = next(k for k, v in gc.lang_to_id.items() if v == lang_id)[2:-2]   # <|en|> -> en
        prompt_language = code
    else:                                                   # English-only: nothing to choose
        if language is not None and TO_LANGUAGE_CODE.get(language.lower(),
                                                         language.lower()) != "en":
            raise ValueError(f"this is an English-only checkpoint; it cannot transcribe "
                             f"language {language!r}")
        code, prompt_language = "en", None
    tokens, segs = model.generate(feats, language=prompt_language, task=task,
                                  return_timestamps=True, return_segments=True,
                                  progress=progress, **options)
    eot = gc.eos_token_id
    segments = [Segment(float(s["start"]), float(s["end"]),
                        model.decode([t for t in s["tokens"] if t < eot]), list(s["tokens"]),
                        s.get("words"))
                for s in segs[0]]
    text = model.decode([t for s in segs[0] for t in s["tokens"] if t < eot])
    return Transcription(text=text, segments=segments, language=code, tokens=tokens[0])
