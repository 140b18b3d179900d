"""Whisper's decoding, as transformers' ``WhisperForConditionalGeneration.generate`` does it:
the checkpoint's generation settings (``generation_config.json``), the vocabulary's special
tokens, the decoder prompt, language detection, the logit rules (suppression and the timestamp
grammar) and greedy decoding with the KV cache.

Long audio (window after window, segments) is in ``transcribe.py``; the network in ``model.py``.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, fields

import numpy as np

from .model import N_TIMESTAMPS, Config, cross_attention_kv, decoder, decoder_cache, encoder

# Whisper's languages in token order (<|en|> is the first language token, <|yue|> the 100th,
# added by large-v3).  Names as in OpenAI's tokenizer.py; a few aliases follow.
LANGUAGES = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian",
    "ko": "korean", "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish",
    "pl": "polish", "ca": "catalan", "nl": "dutch", "ar": "arabic", "sv": "swedish",
    "it": "italian", "id": "indonesian", "hi": "hindi", "fi": "finnish", "vi": "vietnamese",
    "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay", "cs": "czech",
    "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian",
    "la": "latin", "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak", "te": "telugu",
    "fa": "persian", "lv": "latvian", "bn": "bengali", "sr": "serbian", "az": "azerbaijani",
    "sl": "slovenian", "kn": "kannada", "et": "estonian", "mk": "macedonian", "br": "breton",
    "eu": "basque", "is": "icelandic", "hy": "armenian", "ne": "nepali", "mn": "mongolian",
    "bs": "bosnian", "kk": "kazakh", "sq": "albanian", "sw": "swahili", "gl": "galician",
    "mr": "marathi", "pa": "punjabi", "si": "sinhala", "km": "khmer", "sn": "shona", "yo": "yoruba",
    "so": "somali", "af": "afrikaans", "oc": "occitan", "ka": "georgian", "be": "belarusian",
    "tg": "tajik", "sd": "sindhi", "gu": "gujarati", "am": "amharic", "yi": "yiddish", "lo": "lao",
    "uz": "uzbek", "fo": "faroese", "ht": "haitian creole", "ps": "pashto", "tk": "turkmen",
    "nn": "nynorsk", "mt": "maltese", "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar",
    "bo": "tibetan", "tl": "tagalog", "mg": "malagasy", "as": "assamese", "tt": "tatar",
    "haw": "hawaiian", "ln": "lingala", "ha": "hausa", "ba": "bashkir", "jw": "javanese",
    "su": "sundanese", "yue": "cantonese",
}
TO_LANGUAGE_CODE = {
    **{name: code for code, name in LANGUAGES.items()},
    "burmese": "my", "valencian": "ca", "flemish": "nl", "haitian": "ht", "letzeburgesch": "lb",
    "pushto": "ps", "panjabi": "pa", "moldavian": "ro", "moldovan": "ro", "sinhalese": "si",
    "castilian": "es", "mandarin": "zh",
}
TASKS = ("transcribe", "translate")

# generation-config settings that change what transformers' Whisper generate decodes and that this
# implementation does not have (the OpenAI checkpoints leave them unset; temperature fallback is an
# argument of generate, not read from the config, and is not offered here either)
_UNSUPPORTED_DECODING = {"condition_on_prev_tokens": bool, "no_speech_threshold": lambda v: True,
                         "num_beams": lambda v: v > 1}


# =============================================================================================
# generation settings (generation_config.json)
# =============================================================================================
@dataclass
class GenerationConfig:
    """The decoding settings of a Whisper checkpoint (``generation_config.json``), field names
    as there."""
    decoder_start_token_id: int
    eos_token_id: int
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    no_timestamps_token_id: int | None = None
    lang_to_id: dict | None = None          # {"<|en|>": 50259, ...}; absent on English-only models
    task_to_id: dict | None = None          # {"transcribe": 50359, "translate": 50358}
    is_multilingual: bool | None = None
    suppress_tokens: list | None = None     # never generated
    begin_suppress_tokens: list | None = None   # not generated as the first token
    forced_decoder_ids: list | None = None  # legacy [[position, token], ...] after the start token
    max_length: int | None = 20             # transformers' GenerationConfig default
    max_new_tokens: int | None = None
    max_initial_timestamp_index: int | None = None
    prev_sot_token_id: int | None = None
    return_timestamps: bool | None = None

    @classmethod
    def from_dict(cls, d: dict) -> GenerationConfig:
        if not isinstance(d, dict):
            raise TypeError(f"generation config must be a dict, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for key in ("decoder_start_token_id", "eos_token_id"):
            if kw.get(key) is None:
                raise ValueError(f"generation config needs {key!r}")
        if isinstance(kw["eos_token_id"], list):
            kw["eos_token_id"] = kw["eos_token_id"][0]
        unsupported = {k: d[k] for k, is_set in _UNSUPPORTED_DECODING.items()
                       if d.get(k) is not None and is_set(d[k])}
        if unsupported:
            warnings.warn(f"generation config sets {unsupported}: pyworkloads decodes greedily "
                          "without beams, no-speech skipping or conditioning on previous windows, "
                          "so its tokens may differ from transformers' for this configuration",
                          stacklevel=2)
        return cls(**kw)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @property
    def timestamp_begin(self) -> int | None:
        return None if self.no_timestamps_token_id is None else self.no_timestamps_token_id + 1


def special_token_ids(n_text: int, n_languages: int = 100) -> dict:
    """Whisper's vocabulary layout: ``n_text`` byte-level BPE tokens, then <|endoftext|>,
    <|startoftranscript|>, the language tokens, <|translate|>, <|transcribe|>, <|startoflm|>,
    <|startofprev|>, <|nospeech|>, <|notimestamps|> and the 1501 timestamps."""
    eot = n_text
    sot = eot + 1
    translate = sot + 1 + n_languages
    return dict(eot=eot, sot=sot, languages=list(range(sot + 1, translate)), translate=translate,
                transcribe=translate + 1, startoflm=translate + 2, startofprev=translate + 3,
                nospeech=translate + 4, notimestamps=translate + 5, timestamp_begin=translate + 6,
                vocab_size=translate + 6 + N_TIMESTAMPS)


def make_generation_config(n_text: int, n_languages: int = 100, multilingual: bool = True,
                           suppress_text: tuple = (), begin_suppress_text: tuple = (),
                           max_length: int = 448,
                           max_initial_timestamp_index: int | None = 50) -> dict:
    """A ``generation_config.json`` dict in the layout of OpenAI's checkpoints on the Hub
    (the format transformers' ``WhisperForConditionalGeneration.generate`` reads).

    suppress_text / begin_suppress_text: text-token ids to add to the suppressed lists (the real
    checkpoints suppress a set of symbols, and a leading space at the start)."""
    ids = special_token_ids(n_text, n_languages)
    langs = list(LANGUAGES)[:n_languages]
    cfg = {
        "decoder_start_token_id": ids["sot"], "eos_token_id": ids["eot"],
        "pad_token_id": ids["eot"], "bos_token_id": ids["eot"],
        "no_timestamps_token_id": ids["notimestamps"], "prev_sot_token_id": ids["startofprev"],
        "is_multilingual": multilingual, "max_length": max_length,
        "begin_suppress_tokens": [*begin_suppress_text, ids["eot"]],
        # the last two are <|startofprev|> and <|nospeech|>, as on the Hub (transformers reads
        # <|startofprev|> from suppress_tokens[-2] when prev_sot_token_id is missing)
        "suppress_tokens": sorted(set(suppress_text)) + [
            ids["sot"], ids["translate"], ids["transcribe"], ids["startoflm"], ids["startofprev"],
            ids["nospeech"]],
        "return_timestamps": False,
    }
    if max_initial_timestamp_index is not None:
        cfg["max_initial_timestamp_index"] = max_initial_timestamp_index
    if multilingual:
        cfg["lang_to_id"] = {f"<|{c}|>": i for c, i in zip(langs, ids["languages"])}
        cfg["task_to_id"] = {"translate": ids["translate"], "transcribe": ids["transcribe"]}
        cfg["forced_decoder_ids"] = [[1, None], [2, ids["transcribe"]]]
    else:
        cfg["forced_decoder_ids"] = [[1, ids["notimestamps"]]]
    return cfg


def default_generation_config(config: Config) -> GenerationConfig:
    """Generation settings for a model without generation_config.json (presets): the standard
    layout inferred from the vocabulary size (51864 English-only, 51865 with 99 languages, 51866
    with 100; anything else: 100 languages after a smaller text vocabulary)."""
    n_lang = 99 if config.vocab_size in (51864, 51865) else 100
    n_text = config.vocab_size - 2 - n_lang - 6 - N_TIMESTAMPS
    if n_text < 1:
        raise ValueError(f"vocab_size {config.vocab_size} is too small for Whisper's special "
                         f"tokens (needs more than {2 + n_lang + 6 + N_TIMESTAMPS}); supply a "
                         "generation_config.json")
    space = (220,) if n_text >= 50256 else ()
    return GenerationConfig.from_dict(make_generation_config(
        n_text, n_lang, multilingual=config.vocab_size != 51864, begin_suppress_text=space,
        max_length=config.max_target_positions))


# =============================================================================================
# the prompt and the language
# =============================================================================================
def language_id(language: str, gc: GenerationConfig) -> int:
    """'en', 'english' or '<|en|>' -> the language token's id (as transformers accepts them)."""
    if not gc.lang_to_id:
        raise ValueError("this checkpoint has no language tokens (generation_config.lang_to_id): "
                         "it is English-only")
    if not isinstance(language, str):
        raise TypeError(f"language must be a string such as 'en' or 'english', "
                        f"got {type(language).__name__}")
    lang = language.lower()
    if lang in gc.lang_to_id:
        token = lang
    elif lang in TO_LANGUAGE_CODE:
        token = f"<|{TO_LANGUAGE_CODE[lang]}|>"
    elif lang in LANGUAGES:
        token = f"<|{lang}|>"
    else:
        raise ValueError(f"language {language!r} is unknown; use a code such as 'en' or a name "
                         "such as 'english'")
    if token not in gc.lang_to_id:
        raise ValueError(f"language {token} is not among this checkpoint's languages "
                         "(generation_config.lang_to_id)")
    return gc.lang_to_id[token]


def detect_language(input_features, weights, config: Config, gc: GenerationConfig) -> np.ndarray:
    """Most likely language token per example: the decoder's logits after
    <|startoftranscript|>, restricted to the language tokens.  log-mel [B, Mel, 3000] -> int [B]."""
    if not gc.lang_to_id:
        raise ValueError("this checkpoint has no language tokens (lang_to_id); it is English-only")
    sot = np.full((input_features.shape[0], 1), gc.decoder_start_token_id, np.int64)   # [B, 1]
    cross = cross_attention_kv(encoder(input_features, weights, config), weights, config)
    logits = decoder(sot, cross, weights, config, last_only=True)[:, -1]                # [B, V]
    lang_ids = np.array(sorted(gc.lang_to_id.values()))
    masked = np.full_like(logits, -np.inf)
    masked[:, lang_ids] = logits[:, lang_ids]
    return masked.argmax(-1)


def _check_prompt_arguments(batch: int, language, task, gc: GenerationConfig) -> None:
    if gc.is_multilingual is False and (task is not None or language is not None):
        raise ValueError("this is an English-only checkpoint: language and task cannot be set")
    if language is not None and not gc.lang_to_id:
        raise ValueError("language= needs generation_config.lang_to_id, which this checkpoint "
                         "lacks")
    if task is not None:
        if not gc.task_to_id:
            raise ValueError("task= needs generation_config.task_to_id, which this checkpoint "
                             "lacks")
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if isinstance(language, (list, tuple)):                    # one language per example
        if len(language) != batch or not all(isinstance(x, str) for x in language):
            raise ValueError(f"a list of languages needs one string per example ({batch}), "
                             f"got {language!r}")
    elif language is not None and not isinstance(language, str):
        raise TypeError(f"language must be a string such as 'en' or 'english', "
                        f"got {type(language).__name__}")


def _forced_prefix(gc: GenerationConfig) -> list:
    """<|startoftranscript|> and the legacy forced_decoder_ids at positions 1, 2, ... (a None
    language left for detection)."""
    init = [gc.decoder_start_token_id]
    forced = [list(f) for f in gc.forced_decoder_ids or []]
    if forced and forced[0][0] == 1:
        pos = 1
        while forced and forced[0][0] == pos:
            init.append(forced.pop(0)[1])
            pos += 1
        if forced:
            raise ValueError(f"generation_config.forced_decoder_ids {gc.forced_decoder_ids} do "
                             "not follow Whisper's prompt pattern (consecutive positions from 1)")
    return init


def init_tokens(batch: int, gc: GenerationConfig, language=None, task=None,
                return_timestamps: bool = False, detect=None) -> np.ndarray:
    """The decoder prompt per example, as transformers builds it: <|startoftranscript|>, the
    language (given, from legacy forced_decoder_ids, or detected by calling ``detect()`` -> int
    [B]), the task, and <|notimestamps|> unless timestamps are requested.  -> int [B, n_init]."""
    _check_prompt_arguments(batch, language, task, gc)
    init = [gc.decoder_start_token_id]
    if task is None and language is None:
        init = _forced_prefix(gc)
    lang_undefined = len(init) <= 1 or init[1] is None
    lang_ids = None
    if language is not None:
        langs = language if isinstance(language, (list, tuple)) else [language] * batch
        lang_ids = [language_id(x, gc) for x in langs]
    elif gc.lang_to_id is not None and lang_undefined:
        lang_ids = detect().tolist()
    notimestamps = gc.no_timestamps_token_id
    rows = []
    for r in range(batch):
        row = list(init)
        if lang_ids is not None:
            row[1:2] = [lang_ids[r]]                           # replace or append position 1
        if task is not None:
            row.append(gc.task_to_id[task])
        elif language is not None and gc.task_to_id:
            if not any(t in row for t in gc.task_to_id.values()):
                row.append(gc.task_to_id["transcribe"])
        if not return_timestamps and notimestamps is not None and row[-1] != notimestamps:
            row.append(notimestamps)
        elif return_timestamps and row[-1] == notimestamps:
            row = row[:-1]
        rows.append([t for t in row if t is not None])
    return np.array(rows, dtype=np.int64)


# =============================================================================================
# the logit rules and greedy decoding
# =============================================================================================
def timestamp_rules(scores, seq, first: bool, gc: GenerationConfig) -> None:
    """Whisper's timestamp grammar (OpenAI's ApplyTimestampRules, as transformers'
    WhisperTimeStampLogitsProcessor): <|notimestamps|> never; timestamps come in pairs (after a
    pair text must follow, after a lone timestamp another timestamp or end-of-text); timestamps
    never decrease; the first token is a timestamp no later than max_initial_timestamp_index; and
    when the timestamps together are likelier than any single other token, a timestamp is taken.
    scores float [V] (modified in place); seq: the tokens generated so far in this window."""
    tb = gc.timestamp_begin
    eot = gc.eos_token_id if gc.eos_token_id is not None else gc.bos_token_id
    scores[gc.no_timestamps_token_id] = -np.inf
    last_ts = len(seq) >= 1 and seq[-1] >= tb
    penultimate_ts = len(seq) < 2 or seq[-2] >= tb
    if last_ts:
        if penultimate_ts:
            scores[tb:] = -np.inf                       # a pair just closed: text next
        else:
            scores[:eot] = -np.inf                      # a lone timestamp: close the pair or end
    stamps = [t for t in seq if t >= tb]
    lowest = tb
    if stamps:
        lowest = stamps[-1] if (last_ts and not penultimate_ts) else stamps[-1] + 1
    scores[tb:lowest] = -np.inf
    if first:
        scores[:tb] = -np.inf
        if gc.max_initial_timestamp_index is not None:
            scores[tb + gc.max_initial_timestamp_index + 1:] = -np.inf
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = scores.astype(np.float64)
        m = np.max(s)
        logprobs = s - (m + np.log(np.sum(np.exp(s - m))))
        ts = logprobs[tb:]
        ts_max = np.max(ts)
        ts_logprob = (ts_max + np.log(np.sum(np.exp(ts - ts_max))) if np.isfinite(ts_max)
                      else -np.inf)
        if ts_logprob > np.max(logprobs[:tb]):
            scores[:tb] = -np.inf


def process_logits(scores, tokens, begin_index: int, timestamps: bool, gc: GenerationConfig):
    """transformers' Whisper logit rules, in its order: begin-suppression, suppression,
    timestamp rules.  scores float [V] (modified in place), tokens: the row so far."""
    first = len(tokens) == begin_index
    if first and gc.begin_suppress_tokens:
        scores[np.asarray(gc.begin_suppress_tokens)] = -np.inf
    if gc.suppress_tokens:
        scores[np.asarray(gc.suppress_tokens)] = -np.inf
    if timestamps:
        timestamp_rules(scores, tokens[begin_index:], first, gc)
    return scores


def greedy(audio_features, prompt, weights, config: Config, gc: GenerationConfig,
           max_length: int, timestamps: bool) -> list[int]:
    """Greedy decoding of one example: audio features [1, S, D], prompt int [n] -> the generated
    tokens (with the final <|endoftext|> if one was produced), stopping at end-of-text or
    ``max_length`` total tokens.  The prompt goes through the decoder in one call, then one
    token per call; each call computes the logits of its last position only."""
    cross = cross_attention_kv(audio_features, weights, config)
    cache = decoder_cache(config, 1, capacity=max(max_length, len(prompt)))
    tokens = [int(t) for t in prompt]
    step_in = np.asarray(tokens, np.int64)[None]                                   # [1, n]
    out: list[int] = []
    while len(tokens) < max_length:
        logits = decoder(step_in, cross, weights, config, cache, last_only=True)   # [1, 1, V]
        scores = process_logits(logits[0, -1].astype(np.float32), tokens, len(prompt),
                                timestamps, gc)                                     # [V]
        nxt = int(np.argmax(scores))
        tokens.append(nxt)
        out.append(nxt)
        if nxt == gc.eos_token_id:
            break
        step_in = np.array([[nxt]], np.int64)                                       # [1, 1]
    return out
