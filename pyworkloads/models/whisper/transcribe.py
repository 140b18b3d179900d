"""Long-form transcription: audio of any length decoded window by window, as transformers'
``WhisperForConditionalGeneration.generate`` runs Whisper's sequential algorithm.

Each 30-s window (3000 mel frames) is encoded and decoded greedily with timestamps; pairs of
timestamp tokens close segments, and the next window starts at the last complete segment (or at
the window's end when the window closed with a single timestamp).  Times are seconds: 20 ms per
timestamp token, 10 ms per mel frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...audio import HOP_LENGTH, load_audio, log_mel_spectrogram
from .decoding import TASKS, TO_LANGUAGE_CODE, greedy, language_id
from .model import INPUT_STRIDE, encoder

TIME_PRECISION = 0.02            # seconds per timestamp token


@dataclass
class Segment:
    start: float                 # seconds
    end: float
    text: str
    tokens: list = field(default_factory=list)


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


def decode_windows(model, features, prompt, timestamps: bool, max_new_tokens=None,
                   max_length=None, bar=None) -> list[dict]:
    """Greedy decoding of one example's log-mel features [1, Mel, frames], any number of frames,
    window after window -> its segments (dicts with start, end, tokens).  ``max_new_tokens`` or
    ``max_length`` (total tokens, prompt included; default from the generation config) bound each
    window."""
    gc, c = model.generation_config, model.config
    n_win, total, n_init = c.n_audio_frames, features.shape[2], len(prompt)
    max_pos = c.max_target_positions
    # segments are cut at timestamp tokens even without timestamps (as transformers does); a
    # checkpoint without timestamps gets a begin past the vocabulary, so nothing is cut
    tb = gc.timestamp_begin if gc.timestamp_begin is not None else c.vocab_size + 1
    seek, window_max, segments = 0, gc.max_length if max_length is None else max_length, []
    while seek < total:
        # transformers lengthens max_length by the prompt at every window (it is a running
        # value of the generation config), so the k-th window allows k prompts more
        if max_new_tokens is None:
            window_max = min(window_max + min(max_pos // 2 - 1, n_init), max_pos)
            limit = window_max
        else:
            limit = max_new_tokens + n_init
        n_frames = min(total - seek, n_win)
        window = pad_frames(features[:, :, seek:seek + n_frames], n_win)        # [1, Mel, 3000]
        audio = encoder(window, model.weights, c)                                  # [1, S, D]
        seq = greedy(audio, prompt, model.weights, c, gc, limit, timestamps)
        if seq and seq[-1] == gc.eos_token_id:
            seq = seq[:-1]
        new_segments, advance = split_segments(seq, seek, n_frames, tb)
        segments += new_segments
        seek += advance
        if bar is not None:
            bar.update(min(advance, total - bar.n))
    return segments


def transcribe(model, path_or_array, language: str | None = None, task: str | None = None,
               progress: bool = True) -> Transcription:
    """Speech -> text, any length (see :meth:`Whisper.transcribe`)."""
    if language is not None and not isinstance(language, str):
        raise TypeError(f"language must be a string such as 'en' or 'english', or None to "
                        f"detect it; got {type(language).__name__}")
    if task is not None and (not isinstance(task, str) or task not in TASKS):
        raise ValueError(f"task must be one of {TASKS} or None, got {task!r}")
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
                                  progress=progress)
    eot = gc.eos_token_id
    segments = [Segment(float(s["start"]), float(s["end"]),
                        model.decode([t for t in s["tokens"] if t < eot]), list(s["tokens"]))
                for s in segs[0]]
    text = model.decode([t for s in segs[0] for t in s["tokens"] if t < eot])
    return Transcription(text=text, segments=segments, language=code, tokens=tokens[0])
