"""Word-level timestamps: the stretch of audio each token and word came from, read off the
decoder's cross-attention with dynamic time warping (DTW), as openai-whisper's ``timing.py``
(:func:`add_word_timestamps`) and transformers' ``_extract_token_timestamps``
(:func:`token_timestamps`) compute them.

A few cross-attention heads of a trained Whisper follow the speech: while the decoder reads one
token, they look at the audio where the next token is spoken.  A checkpoint lists them in
generation_config.json as ``alignment_heads`` ([[layer, head], ...]).  The recipe:

1. a teacher-forced pass of the window's tokens keeps those heads' attention maps [n, T, S]
   (``decoder(..., attention_heads=...)`` in ``model.py``);
2. only the S' = n_frames // 2 encoder positions that hold audio are kept (the rest is padding);
3. every map is standardised position by position (mean 0, std 1 over the tokens, so a position
   that all tokens look at does not dominate), median-filtered along time (width 7, against
   spikes) and the heads are averaged -> a similarity [T, S'];
4. DTW finds the cheapest monotone path through -similarity from (first row, first position) to
   (last row, last position), each step moving one position, one row, or both (:func:`dtw`);
5. a row starts at the position where the path enters it (a "jump"); positions are 20 ms apart.

Words: tokens are grouped at spaces (or, for languages written without spaces, after every
complete character), punctuation joins the neighbouring word (:func:`merge_punctuations`), and a
word runs from the start of the row that predicts its first token to the start of the row that
predicts the token after it.

Glossary: T tokens (rows), S audio positions (encoder outputs, 20 ms each), n alignment heads.
"""
from __future__ import annotations

import string

import numpy as np
from scipy import ndimage

from ... import ops
from ...audio import HOP_LENGTH, SAMPLE_RATE
from .. import common
from .decoding import TO_LANGUAGE_CODE
from .model import INPUT_STRIDE, cross_attention_kv, decoder, encoder

SECONDS_PER_POSITION = INPUT_STRIDE * HOP_LENGTH / SAMPLE_RATE      # 0.02 s per encoder output
MEDIAN_FILTER_WIDTH = 7                  # WhisperConfig.median_filter_width, openai's medfilt_width
PREPEND_PUNCTUATIONS = "\"'“¿([{-"                  # openai-whisper's defaults (transformers'
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"      # prepend set also has "¡")
NO_SPACE_LANGUAGES = {"zh", "ja", "th", "lo", "my", "yue"}     # words split at characters
SENTENCE_END_MARKS = ".。!！?？"


# =============================================================================================
# dynamic time warping
# =============================================================================================
def dtw_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest monotone path through a cost matrix x [N, M], as a plain dynamic program
    (the definition; :func:`dtw` computes the same, a diagonal at a time).

    cost[i, j] = x[i-1, j-1] + min(cost[i-1, j-1], cost[i-1, j], cost[i, j-1]), cost[0, 0] = 0,
    the rest of row 0 and column 0 infinite.  trace[i, j] remembers which neighbour won (0
    diagonal, 1 from above, 2 from the left; ties go to the left, as in both references).  The
    cost table is float32, as in both references, so near-ties break the same way.
    -> (row index, column index) of every cell on the path, first to last."""
    x = _check_matrix(x)
    N, M = x.shape
    cost = np.full((N + 1, M + 1), np.inf, np.float32)
    cost[0, 0] = 0.0
    trace = np.full((N + 1, M + 1), -1, np.int8)
    for j in range(1, M + 1):
        for i in range(1, N + 1):
            c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            cost[i, j] = x[i - 1, j - 1] + c
            trace[i, j] = t
    return backtrace(trace)


def dtw(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`dtw_reference`, vectorised: the cells of one anti-diagonal i + j = d depend only on
    the two diagonals before it, so each diagonal is one set of array operations (N + M steps
    instead of N · M).  x [N, M] -> (row indices, column indices) of the path."""
    x = _check_matrix(x)
    N, M = x.shape
    cost = np.full((N + 1, M + 1), np.inf, np.float32)
    cost[0, 0] = 0.0
    trace = np.full((N + 1, M + 1), -1, np.int8)
    for d in range(2, N + M + 1):
        i = np.arange(max(1, d - M), min(N, d - 1) + 1)            # rows on the diagonal
        j = d - i
        c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
        t = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        cost[i, j] = x[i - 1, j - 1] + np.choose(t, [c0, c1, c2])
        trace[i, j] = t
    return backtrace(trace)


def backtrace(trace: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walk the DTW trace [N + 1, M + 1] back from the bottom-right corner to (0, 0) ->
    (row indices, column indices) of the path, in order, in the coordinates of x [N, M]."""
    trace = trace.copy()
    trace[0, :] = 2                              # on the borders only one way leads home
    trace[:, 0] = 1
    i, j = trace.shape[0] - 1, trace.shape[1] - 1
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        step = trace[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    rows, cols = np.array(path[::-1]).T
    return rows, cols


def _check_matrix(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or 0 in x.shape:
        raise ValueError(f"dtw needs a non-empty 2-D cost matrix [tokens, positions], "
                         f"got shape {x.shape}")
    return x


def jump_times(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Seconds at which the DTW path enters each row: the column of each row's first cell."""
    jumps = np.pad(np.diff(rows), (1, 0), constant_values=1).astype(bool)
    return cols[jumps] * SECONDS_PER_POSITION                                       # [rows]


# =============================================================================================
# from attention maps to a similarity matrix
# =============================================================================================
def median_filter(x: np.ndarray, width: int = MEDIAN_FILTER_WIDTH) -> np.ndarray:
    """Running median of ``width`` samples along the last axis, the edges mirrored
    (d c b | a b c d | c b a, torch's "reflect" padding that both references use); an axis of at
    most width // 2 samples is returned unchanged, as there."""
    if not isinstance(width, int) or width <= 0 or width % 2 != 1:
        raise ValueError(f"median filter width must be a positive odd integer, got {width!r}")
    if x.shape[-1] <= width // 2:
        return x
    return ndimage.median_filter(x, size=(1,) * (x.ndim - 1) + (width,), mode="mirror")


def similarity(maps: np.ndarray, width: int = MEDIAN_FILTER_WIDTH) -> np.ndarray:
    """Alignment heads' attention maps [n, T, S'] -> token-audio similarity [T, S']: each map
    standardised per audio position over the tokens, median-filtered along time, heads averaged.
    A position every token attends to equally (std 0) scores 0 (the references divide by 0)."""
    maps = maps.astype(np.float64)
    mean = maps.mean(axis=-2, keepdims=True)                                        # [n, 1, S']
    std = maps.std(axis=-2, keepdims=True)                                          # [n, 1, S']
    z = (maps - mean) / np.where(std > 0, std, 1.0)                                 # [n, T, S']
    return median_filter(z, width).mean(axis=0)                                     # [T, S']


# =============================================================================================
# the teacher-forced pass and the alignment heads
# =============================================================================================
def get_alignment_heads(model, heads=None, fallback: bool = False) -> list[tuple[int, int]]:
    """The (layer, head) pairs to align with: ``heads`` if given, else the checkpoint's
    ``generation_config.alignment_heads``.  Without either, transformers refuses (a ValueError
    here too, unless ``fallback``); openai-whisper uses every head of the second half of the
    decoder layers (``fallback=True``, what :func:`add_word_timestamps` does)."""
    c = model.config
    if heads is None:
        heads = getattr(model.generation_config, "alignment_heads", None)
    if heads is None:
        if not fallback:
            raise ValueError("this checkpoint's generation_config has no alignment_heads "
                             "([[layer, head], ...]), so token timestamps are not available; "
                             "pass alignment_heads=")
        return [(layer, h) for layer in range(c.decoder_layers // 2, c.decoder_layers)
                for h in range(c.decoder_attention_heads)]
    try:
        pairs = [(int(layer), int(h)) for layer, h in heads]
    except (TypeError, ValueError):
        pairs = []
    L, H = c.decoder_layers, c.decoder_attention_heads
    if not pairs or not all(0 <= i < L and 0 <= h < H for i, h in pairs):
        raise ValueError(f"alignment_heads must be a non-empty list of [layer, head] pairs with "
                         f"layer < {L} and head < {H}, got {heads!r}")
    return pairs


def _window(model, features) -> np.ndarray:
    c = model.config
    x = np.asarray(features)
    if x.ndim == 2:
        x = x[None]                                                     # [Mel, 2S] -> [1, Mel, 2S]
    if x.dtype.kind != "f" or x.shape != (1, c.num_mel_bins, c.n_audio_frames):
        raise ValueError(f"window features must be one float log-mel window [1, "
                         f"{c.num_mel_bins}, {c.n_audio_frames}], got {x.dtype} {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def attention_maps(model, features, tokens, heads) -> tuple[np.ndarray, np.ndarray]:
    """The teacher-forced pass: one audio window [1, Mel, 2S] and its tokens [T] -> logits [T, V]
    and the cross-attention maps of ``heads`` [n, T, S]."""
    c = model.config
    ids = common.check_token_ids(np.asarray(tokens)[None], "tokens", c.vocab_size,
                                 c.max_target_positions)                            # [1, T]
    audio = encoder(_window(model, features), model.weights, c)                     # [1, S, D]
    cross = cross_attention_kv(audio, model.weights, c)
    logits, maps = decoder(ids, cross, model.weights, c, attention_heads=heads)
    return logits[0], maps[0]                                                # [T, V], [n, T, S]


# =============================================================================================
# token timestamps (transformers)
# =============================================================================================
def token_timestamps(model, input_features, tokens, num_input_ids: int, num_frames=None, *,
                     alignment_heads=None, median_filter_width: int = MEDIAN_FILTER_WIDTH):
    """Start time (seconds) of every token, as transformers' ``generate(...,
    return_token_timestamps=True)`` computes it for a 30-s window.

    tokens: the decoder prompt (``num_input_ids`` tokens) then the generated ones, the final
    <|endoftext|> included when one was generated.  generate feeds every token but the last back
    in, so row k of the maps is the query of token k; the prompt's rows are dropped.  Token k of
    the generated part gets the time its own row starts; the prompt gets 0 and the last token the
    time of the one before.  ``num_frames``: mel frames holding audio (transformers takes it
    from attention_mask; None keeps all 2S).  -> float32 [len(tokens)]; generate's
    "token_timestamps" are the entries after the prompt."""
    heads = get_alignment_heads(model, alignment_heads)
    seq = _token_list(model, tokens, "tokens", extra=1)
    common.check_int(num_input_ids, "num_input_ids", maximum=len(seq))
    times = np.zeros(len(seq), np.float32)
    if len(seq) - 1 <= num_input_ids:            # nothing generated was fed back in
        return times
    _, maps = attention_maps(model, input_features, seq[:-1], heads)                # [n, T-1, S]
    if num_frames is not None:
        maps = maps[..., :_positions(num_frames, model, "num_frames")]              # [n, T-1, S']
    maps = maps[:, num_input_ids:]                                                  # [n, G, S']
    starts = jump_times(*dtw(-similarity(maps, median_filter_width)))               # [G]
    times[num_input_ids:-1] = starts
    times[-1] = starts[-1]
    return times


def _token_list(model, tokens, name: str, extra: int = 0) -> list[int]:
    """A 1-D sequence of token ids within the vocabulary and the context (+ ``extra``)."""
    if np.ndim(tokens) != 1:
        raise ValueError(f"{name} must be a 1-D sequence of token ids, got shape "
                         f"{np.shape(tokens)}")
    c = model.config
    ids = common.check_token_ids(tokens, name, c.vocab_size, c.max_target_positions + extra)
    return ids[0].tolist()


def _positions(n_frames, model, name: str = "n_frames") -> int:
    """Encoder positions holding audio: n_frames mel frames // 2."""
    common.check_int(n_frames, name, minimum=INPUT_STRIDE,
                     maximum=model.config.n_audio_frames)
    return n_frames // INPUT_STRIDE


# =============================================================================================
# words
# =============================================================================================
def _decoder(model):
    if model.tokenizer is None:
        raise ValueError("word timestamps need the checkpoint's tokenizer (tokenizer.json)")
    return lambda ids: model.tokenizer.decode(list(ids), skip_special_tokens=False)


def _language_code(language) -> str:
    if language is None:
        return "en"
    lang = str(language).lower().strip("<|>")
    return TO_LANGUAGE_CODE.get(lang, lang)


def split_on_unicode(decode, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
    """Cut the tokens after every run that decodes to complete characters (a byte-level token
    can hold part of a UTF-8 character, decoded as U+FFFD until the rest follows)."""
    full = decode(tokens)
    words, groups, current, offset = [], [], [], 0
    for token in tokens:
        current.append(token)
        text = decode(current)
        bad = text.find("\ufffd")
        if bad < 0 or offset + bad >= len(full) or full[offset + bad] == "\ufffd":
            words.append(text)
            groups.append(current)
            current, offset = [], offset + len(text)
    return words, groups


def split_to_word_tokens(decode, tokens: list[int], eot: int,
                         language: str | None = "en") -> tuple[list[str], list[list[int]]]:
    """Group tokens into words: at complete characters for languages written without spaces,
    otherwise a new word starts at a leading space, a punctuation mark or a special token (id >=
    <|endoftext|>).  decode: token ids -> text.  -> (words, their tokens)."""
    subwords, groups = split_on_unicode(decode, tokens)
    if _language_code(language) in NO_SPACE_LANGUAGES:
        return subwords, groups
    words, word_tokens = [], []
    for sub, group in zip(subwords, groups):
        starts_word = (group[0] >= eot or sub.startswith(" ")
                       or sub.strip() in string.punctuation)
        if starts_word or not words:
            words.append(sub)
            word_tokens.append(list(group))
        else:
            words[-1] += sub
            word_tokens[-1] += group
    return words, word_tokens


def _move(src: dict, dst: dict, before: bool) -> None:
    """Move src's text and tokens (and token indices) into dst, before or after its own."""
    for key in ("word", "tokens", "indices"):
        if key in src:
            dst[key] = src[key] + dst[key] if before else dst[key] + src[key]
            src[key] = src[key][:0]


def merge_punctuations(words: list[dict], prepended: str = PREPEND_PUNCTUATIONS,
                       appended: str = APPEND_PUNCTUATIONS) -> None:
    """Join punctuation to its word, in place: an opening mark (a word " (" whose text is in
    ``prepended``) to the word after it, a closing mark ("," in ``appended``, not after a
    space) to the word before it.  Each word is a dict with "word" and "tokens"; emptied
    entries stay, with word "" (openai-whisper counts their tokens).  The receiving word keeps
    its own times."""
    i, j = len(words) - 2, len(words) - 1
    while i >= 0:
        if words[i]["word"].startswith(" ") and words[i]["word"].strip() in prepended:
            _move(words[i], words[j], before=True)
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(words):
        if not words[i]["word"].endswith(" ") and words[j]["word"] in appended:
            _move(words[j], words[i], before=False)
        else:
            i = j
        j += 1


def group_words(model, tokens: list[int], language: str | None = "en",
                prepend_punctuations: str = PREPEND_PUNCTUATIONS,
                append_punctuations: str = APPEND_PUNCTUATIONS) -> list[dict]:
    """Tokens -> words as transformers' tokenizer groups them (``_combine_tokens_into_words``):
    :func:`split_to_word_tokens`, then :func:`merge_punctuations`.  -> [dict(word, tokens,
    indices)], indices: the positions of the word's tokens in ``tokens``."""
    tokens, eot = [int(t) for t in tokens], model.generation_config.eos_token_id
    words, groups = split_to_word_tokens(_decoder(model), tokens, eot, language)
    ends = np.cumsum([len(g) for g in groups])
    entries = [dict(word=w, tokens=g, indices=list(range(e - len(g), e)))
               for w, g, e in zip(words, groups, ends)]
    merge_punctuations(entries, prepend_punctuations, append_punctuations)
    return [e for e in entries if e["word"]]


def words_from_token_timestamps(model, tokens, times, language: str | None = "en",
                                prepend_punctuations: str = PREPEND_PUNCTUATIONS,
                                append_punctuations: str = APPEND_PUNCTUATIONS) -> list[dict]:
    """Words with times from generated tokens and their :func:`token_timestamps`, as
    transformers' pipeline does with ``return_timestamps="word"`` (one 30-s window): a text
    token spans from the time of the token before it to its own; the text between timestamp
    tokens is grouped into words (:func:`group_words`); a word spans from its first token's
    start to its last token's end (so a merged punctuation mark widens it).
    -> [dict(word, start, end)], times rounded to 10 ms."""
    gc = model.generation_config
    eot, tb = gc.eos_token_id, gc.timestamp_begin or model.config.vocab_size
    tokens = [int(t) for t in tokens]
    times = np.asarray(times, dtype=np.float64)
    if times.shape != (len(tokens),):
        raise ValueError(f"times must hold one time per token ({len(tokens)}), got shape "
                         f"{times.shape}")
    token_start = np.concatenate([[0.0], times[:-1]])           # [len(tokens)]: previous time
    out, run = [], []                        # run: positions of the text tokens since a timestamp
    for k, token in enumerate([*tokens, tb]):
        if token < eot:
            run.append(k)
        elif token >= tb and run:            # other special tokens neither count nor cut
            for w in group_words(model, [tokens[i] for i in run], language,
                                 prepend_punctuations, append_punctuations):
                first, last = run[w["indices"][0]], run[w["indices"][-1]]
                out.append(dict(word=w["word"], start=round(float(token_start[first]), 2),
                                end=round(float(times[last]), 2)))
            run = []
    return out


# =============================================================================================
# openai-whisper's word timestamps
# =============================================================================================
def find_alignment(model, text_tokens: list[int], features, n_frames: int, sot_sequence,
                   language: str | None = "en", heads=None,
                   median_filter_width: int = MEDIAN_FILTER_WIDTH) -> list[dict]:
    """openai-whisper's ``find_alignment``: the text tokens of one window -> their words, each a
    dict(word, tokens, start, end, probability) with times in seconds from the window's start.

    The pass reads [*sot_sequence, <|notimestamps|>, *text_tokens, <|endoftext|>]; the rows that
    predict the text tokens and <|endoftext|> are aligned (softmax over the S' positions with
    audio only).  A word's probability is the mean of its tokens' probabilities (softmax over
    the text vocabulary)."""
    gc = model.generation_config
    eot, n_sot = gc.eos_token_id, len(sot_sequence)
    if not text_tokens:
        return []
    decode, heads = _decoder(model), get_alignment_heads(model, heads, fallback=True)
    tokens = [*sot_sequence, gc.no_timestamps_token_id, *text_tokens, eot]
    logits, maps = attention_maps(model, features, tokens, heads)           # [T, V], [n, T, S]
    probs = ops.softmax(logits[n_sot:, :eot].astype(np.float64), axis=-1)   # [len(text) + 2, eot]
    text_probs = probs[np.arange(len(text_tokens)), text_tokens]             # [len(text)]
    maps = maps[..., :_positions(n_frames, model)].astype(np.float64)       # [n, T, S']
    maps /= maps.sum(axis=-1, keepdims=True)                 # softmax over the kept positions
    matrix = similarity(maps, median_filter_width)[n_sot:-1]                 # [len(text) + 1, S']
    starts = jump_times(*dtw(-matrix))                                       # [len(text) + 1]
    words, word_tokens = split_to_word_tokens(decode, [*text_tokens, eot], eot, language)
    bounds = np.cumsum([0] + [len(t) for t in word_tokens[:-1]])  # first row of each word, and end
    return [dict(word=w, tokens=t, start=float(starts[a]), end=float(starts[b]),
                 probability=float(np.mean(text_probs[a:b])))
            for w, t, a, b in zip(words, word_tokens, bounds[:-1], bounds[1:])]


def _prompt_parts(prompt, gc) -> tuple[list[int], str]:
    """The window's decoder prompt -> (the sequence from <|startoftranscript|> on, without
    <|notimestamps|>, which openai-whisper aligns with; the language code it names)."""
    prompt = [int(t) for t in np.asarray(prompt).reshape(-1)]
    if gc.decoder_start_token_id not in prompt:
        raise ValueError(f"prompt must contain <|startoftranscript|> "
                         f"({gc.decoder_start_token_id}), got {prompt}")
    sot = prompt[prompt.index(gc.decoder_start_token_id):]
    sot = [t for t in sot if t != gc.no_timestamps_token_id]
    codes = {i: name[2:-2] for name, i in (gc.lang_to_id or {}).items()}   # <|en|> -> en
    return sot, next((codes[t] for t in sot if t in codes), "en")


def _window_offset(segments, tb: int) -> float:
    """Seconds from the audio's start to the window's: the first segment's start minus its
    opening timestamp token (a segment without one starts at the window)."""
    first = segments[0]
    tokens = first["tokens"]
    if len(tokens) and tokens[0] >= tb:
        return float(first["start"]) - (int(tokens[0]) - tb) * SECONDS_PER_POSITION
    return float(first["start"])


def _check_segments(segments) -> None:
    if not isinstance(segments, list) or not all(
            isinstance(s, dict) and {"start", "end", "tokens"} <= set(s) for s in segments):
        raise TypeError("segments must be a list of dicts with start, end and tokens (one "
                        "window's segments)")


def add_word_timestamps(model, segments: list[dict], window_features, prompt, n_frames: int, *,
                        time_offset: float | None = None, last_speech_timestamp: float = 0.0,
                        alignment_heads=None, prepend_punctuations: str = PREPEND_PUNCTUATIONS,
                        append_punctuations: str = APPEND_PUNCTUATIONS,
                        median_filter_width: int = MEDIAN_FILTER_WIDTH) -> None:
    """Add "words" to every segment of one window, as openai-whisper's ``add_word_timestamps``:
    a list of dict(word, start, end, probability), times in seconds from the audio's start,
    rounded to 10 ms.

    segments: the window's segment dicts (start, end in seconds with the window's offset,
    tokens with the timestamp tokens); window_features: its log-mel [1, Mel, 3000]; prompt: the
    decoder prompt it was decoded with (a <|startofprev|> text prompt before
    <|startoftranscript|> is ignored; the language token picks how words split); n_frames: mel
    frames of the window holding audio.  time_offset: the window's start in seconds (default:
    from the first segment's opening timestamp); last_speech_timestamp: the end of the last word
    of earlier windows.  alignment_heads: default the checkpoint's, else every head of the
    second half of the decoder layers (openai-whisper's default).

    Then openai-whisper's corrections: a word longer than twice the median word duration (at
    most 0.7 s) is cut at a sentence end, and at a segment's start after a pause; the segment's
    start and end move to its first and last word unless those look too long."""
    _check_segments(segments)
    if not segments:
        return
    gc = model.generation_config
    heads = get_alignment_heads(model, alignment_heads, fallback=True)
    sot, language = _prompt_parts(prompt, gc)
    per_segment = [[int(t) for t in s["tokens"] if t < gc.eos_token_id] for s in segments]
    text = [t for tokens in per_segment for t in tokens]
    alignment = find_alignment(model, text, window_features, n_frames, sot, language, heads,
                               median_filter_width)
    durations = np.array([w["end"] - w["start"] for w in alignment])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    longest = 2 * median
    if len(durations):                 # cut long words at sentence boundaries
        for prev, w in zip(alignment, alignment[1:]):
            if w["end"] - w["start"] > longest:
                if w["word"] in SENTENCE_END_MARKS:
                    w["end"] = w["start"] + longest
                elif prev["word"] in SENTENCE_END_MARKS:
                    w["start"] = w["end"] - longest
    merge_punctuations(alignment, prepend_punctuations, append_punctuations)
    if time_offset is None:
        time_offset = _window_offset(segments, gc.timestamp_begin or model.config.vocab_size)
    queue = iter(alignment)
    for segment, tokens in zip(segments, per_segment):
        words, taken = [], 0
        while taken < len(tokens):
            w = next(queue, None)
            if w is None:
                break
            if w["word"]:
                words.append(dict(word=w["word"], start=round(time_offset + w["start"], 2),
                                  end=round(time_offset + w["end"], 2),
                                  probability=w["probability"]))
            taken += len(w["tokens"])
        if words:
            _fit_segment(segment, words, median, last_speech_timestamp)
            last_speech_timestamp = segment["end"]
        segment["words"] = words


def _fit_segment(segment: dict, words: list[dict], median: float, last_speech: float) -> None:
    """openai-whisper's boundary rules: after a pause (more than 4 median word durations since
    ``last_speech``) a first word, or first two, longer than twice the median are shortened;
    the segment's start and end follow its words unless the word there is too long (then the
    word is cut to the segment's timestamp instead)."""
    longest = 2 * median
    first = words[0]
    if first["end"] - last_speech > 4 * median and (
            first["end"] - first["start"] > longest
            or (len(words) > 1 and words[1]["end"] - first["start"] > 2 * longest)):
        if len(words) > 1 and words[1]["end"] - words[1]["start"] > longest:
            boundary = max(words[1]["end"] / 2, words[1]["end"] - longest)
            first["end"] = words[1]["start"] = boundary
        first["start"] = max(0, first["end"] - longest)
    if segment["start"] < first["end"] and segment["start"] - 0.5 > first["start"]:
        first["start"] = max(0, min(first["end"] - median, segment["start"]))
    else:
        segment["start"] = first["start"]
    last = words[-1]
    if segment["end"] > last["start"] and segment["end"] + 0.5 < last["end"]:
        last["end"] = max(last["start"] + median, segment["end"])
    else:
        segment["end"] = last["end"]
