"""Whisper's decoding, as transformers' ``WhisperForConditionalGeneration.generate`` does it:
the checkpoint's generation settings (``generation_config.json``) and the decoding options of one
``generate()`` call, the vocabulary's special tokens, the decoder prompt, language detection, the
logit rules (suppression and the timestamp grammar), the three ways of picking tokens with the KV
cache -- greedy, sampling and beam search -- and the statistics that decide a temperature
fallback (compression ratio, average log-probability, no-speech probability).

Long audio (window after window, segments, the fallback loop) is in ``transcribe.py``; the
network in ``model.py``.
"""
from __future__ import annotations

import math
import numbers
import warnings
import zlib
from dataclasses import asdict, dataclass, fields

import numpy as np

from .. import common
from ..common import KVCache
from ..llama2.generate import sample_next
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

PROMPT_CONDITION_TYPES = ("first-segment", "all-segments")

# generation-config settings that change what transformers' generate decodes and that this
# implementation does not have (no OpenAI checkpoint sets them)
_UNSUPPORTED_DECODING = {"top_p": lambda v: v < 1.0, "repetition_penalty": lambda v: v != 1.0,
                         "no_repeat_ngram_size": lambda v: v > 0,
                         "num_return_sequences": lambda v: v > 1}


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
    # decoding defaults that generate() arguments override (transformers' defaults when unset:
    # one beam, length_penalty 1, early_stopping False, top_k 50, no thresholds, no conditioning)
    num_beams: int | None = None
    length_penalty: float | None = None
    early_stopping: bool | str | None = None
    top_k: int | None = None
    compression_ratio_threshold: float | None = None
    logprob_threshold: float | None = None
    no_speech_threshold: float | None = None
    condition_on_prev_tokens: bool | None = None
    # [[layer, head], ...]: the cross-attention heads whose weights follow the speech in time,
    # chosen per checkpoint by OpenAI; word timestamps align with them (timing.py)
    alignment_heads: list | None = None

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
                       if isinstance(d.get(k), numbers.Real) and is_set(d[k])}
        if unsupported:
            warnings.warn(f"generation config sets {unsupported}, which pyworkloads does not "
                          "implement, so its tokens may differ from transformers' for this "
                          "configuration", stacklevel=2)
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
# the decoding options of one generate() call
# =============================================================================================
@dataclass
class DecodingOptions:
    """How one ``generate()`` call decodes: its arguments, and where an argument is None the
    checkpoint's generation config, then transformers' defaults (:func:`decoding_options`)."""
    timestamps: bool
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    temperatures: tuple = (0.0,)            # the fallback schedule; 0 = greedy or beam search
    top_k: int | None = 50                  # sampling draws from the top_k likeliest tokens
    compression_ratio_threshold: float | None = None
    logprob_threshold: float | None = None
    no_speech_threshold: float | None = None
    condition_on_prev_tokens: bool = False
    # transformers conditions the first window on the argument alone (a condition_on_prev_tokens
    # from the config starts with the second); it shows only with prompt_ids
    condition_first_window: bool = False
    prompt_ids: list | None = None
    prompt_condition_type: str = "first-segment"
    rng: np.random.Generator | None = None
    max_new_tokens: int | None = None
    max_length: int | None = None
    word_timestamps: bool = False


def _check_temperatures(temperature) -> tuple:
    """None, a temperature or a schedule (list/tuple) of them, each finite and >= 0 -> tuple."""
    if temperature is None:
        return (0.0,)
    if isinstance(temperature, (list, tuple)):
        if not temperature:
            raise ValueError("temperature schedule is empty; give at least one temperature")
        return tuple(common.check_number(t, f"temperature[{i}]", minimum=0)
                     for i, t in enumerate(temperature))
    return (common.check_number(temperature, "temperature", minimum=0),)


def _check_prompt_ids(prompt_ids, vocab_size: int) -> list | None:
    """None, or one sequence of token ids in the vocabulary (list, array, CPU tensor) -> list."""
    if prompt_ids is None:
        return None
    ids = common.check_token_ids(prompt_ids, "prompt_ids", vocab_size)
    if np.ndim(prompt_ids) != 1:
        raise ValueError(f"prompt_ids must be one sequence of token ids (1-D), got shape "
                         f"{np.shape(prompt_ids)}")
    return ids[0].tolist()


def _check_thresholds(gc: GenerationConfig, **given) -> dict:
    """The fallback thresholds: each argument, else the config's; finite numbers, the no-speech
    probability in [0, 1] and only together with logprob_threshold."""
    out = {}
    for key, value in given.items():
        value = getattr(gc, key) if value is None else value
        bounds = (0.0, 1.0) if key == "no_speech_threshold" else (None, None)
        out[key] = None if value is None else common.check_number(value, key, *bounds)
    if out["no_speech_threshold"] is not None and out["logprob_threshold"] is None:
        raise ValueError("no_speech_threshold needs logprob_threshold too: a window is skipped as "
                         "silence when P(<|nospeech|>) > no_speech_threshold and its average "
                         "log-probability < logprob_threshold (transformers' rule)")
    return out


def _check_rng(seed, generator) -> np.random.Generator:
    """Sampling's random stream: NumPy's default generator from ``seed``, or ``generator``."""
    if seed is not None and generator is not None:
        raise ValueError("give seed or generator, not both")
    if generator is not None:
        if not isinstance(generator, np.random.Generator):
            raise TypeError(f"generator must be a numpy.random.Generator "
                            f"(np.random.default_rng(...)), got {type(generator).__name__}")
        return generator
    return np.random.default_rng(None if seed is None else common.check_int(seed, "seed", 0))


def decoding_options(gc: GenerationConfig, config: Config, timestamps: bool, *,
                     num_beams=None, length_penalty=None, early_stopping=None, temperature=None,
                     compression_ratio_threshold=None, logprob_threshold=None,
                     no_speech_threshold=None, condition_on_prev_tokens=None, prompt_ids=None,
                     prompt_condition_type=None, seed=None, generator=None, max_new_tokens=None,
                     max_length=None, word_timestamps=False) -> DecodingOptions:
    """Check generate()'s decoding arguments; those left None come from the generation config,
    then from transformers' defaults.  Raises ValueError / TypeError naming the argument."""
    def pick(value, key, default):
        value = getattr(gc, key) if value is None else value
        return default if value is None else value

    def optional_int(value, name):
        return None if value is None else common.check_int(value, name)

    cond = pick(condition_on_prev_tokens, "condition_on_prev_tokens", False)
    top_k = gc.top_k if gc.top_k is not None else 50
    o = DecodingOptions(
        timestamps=timestamps,
        num_beams=common.check_int(pick(num_beams, "num_beams", 1), "num_beams"),
        length_penalty=common.check_number(pick(length_penalty, "length_penalty", 1.0),
                                           "length_penalty"),
        early_stopping=common.check_choice(pick(early_stopping, "early_stopping", False),
                                           "early_stopping", (False, True, "never")),
        temperatures=_check_temperatures(temperature),
        top_k=common.check_int(top_k, "generation_config.top_k", minimum=0) or None,
        **_check_thresholds(gc, compression_ratio_threshold=compression_ratio_threshold,
                            logprob_threshold=logprob_threshold,
                            no_speech_threshold=no_speech_threshold),
        condition_on_prev_tokens=common.check_bool(cond, "condition_on_prev_tokens"),
        condition_first_window=bool(condition_on_prev_tokens),
        prompt_ids=_check_prompt_ids(prompt_ids, config.vocab_size),
        prompt_condition_type=common.check_choice(prompt_condition_type or "first-segment",
                                                  "prompt_condition_type",
                                                  PROMPT_CONDITION_TYPES),
        rng=_check_rng(seed, generator),
        max_new_tokens=optional_int(max_new_tokens, "max_new_tokens"),
        max_length=optional_int(max_length, "max_length"),
        word_timestamps=common.check_bool(word_timestamps, "word_timestamps"))
    if o.prompt_condition_type == "all-segments" and not o.condition_on_prev_tokens:
        raise ValueError("prompt_condition_type='all-segments' needs condition_on_prev_tokens=True")
    return o


# =============================================================================================
# the logit rules
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


# =============================================================================================
# picking tokens: greedy, sampling, beam search
# =============================================================================================
@dataclass
class Candidate:
    """One decoding of a window: the generated tokens (with the final <|endoftext|> if one was
    produced) and their average log-probability, each token's taken under the distribution it
    was picked from (the logit rules applied, renormalised; at temperature 1, over the top_k
    tokens when sampling) -- transformers' ``_retrieve_avg_logprobs``."""
    tokens: list
    avg_logprob: float


def log_softmax(x, axis=-1):
    """log of softmax along ``axis``, stable for rows with -inf entries (float32 in, float32
    out, as torch's log_softmax)."""
    with np.errstate(invalid="ignore"):
        m = np.max(x, axis=axis, keepdims=True)
        return x - (m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)))


def token_logprob(scores, token: int, top_k: int | None = None) -> float:
    """log P(token) under softmax(scores) restricted to the ``top_k`` largest scores (ties at the
    k-th kept, as transformers' TopKLogitsWarper) or to all of them.  scores float [V]."""
    s = scores.astype(np.float64)
    if top_k is not None and top_k < s.size:
        s = np.where(s < np.partition(s, -top_k)[-top_k], -np.inf, s)
    return float(log_softmax(s)[token])


def sample(cross_kv, prompt, weights, config: Config, gc: GenerationConfig, max_length: int,
           timestamps: bool, temperature: float = 0.0, top_k: int | None = None,
           rng: np.random.Generator | None = None) -> Candidate:
    """Greedy decoding (temperature 0: the likeliest token at every step) or sampling (a draw
    from softmax(scores / temperature) over the top_k likeliest tokens, transformers' order:
    logit rules, temperature, top-k) of one example.  cross_kv: the audio's cross-attention keys
    and values (:func:`cross_attention_kv`, batch 1), prompt int [n] -> :class:`Candidate`,
    stopping at end-of-text or ``max_length`` total tokens.

    The prompt goes through the decoder in one call, then one token per call; each call
    computes the logits of its last position only."""
    cache = decoder_cache(config, 1, capacity=max(max_length, len(prompt)))
    tokens = [int(t) for t in prompt]
    step_in = np.asarray(tokens, np.int64)[None]                                   # [1, n]
    k = top_k if temperature > 0 else None
    out, logprob = [], 0.0
    while len(tokens) < max_length:
        logits = decoder(step_in, cross_kv, weights, config, cache, last_only=True)  # [1, 1, V]
        scores = process_logits(logits[0, -1].astype(np.float32), tokens, len(prompt),
                                timestamps, gc)                                     # [V]
        nxt = int(sample_next(scores[None], temperature, k, rng=rng)[0])
        logprob += token_logprob(scores, nxt, k)
        tokens.append(nxt)
        out.append(nxt)
        if nxt == gc.eos_token_id:
            break
        step_in = np.array([[nxt]], np.int64)                                       # [1, 1]
    return Candidate(out, logprob / max(len(out), 1))


def greedy(audio_features, prompt, weights, config: Config, gc: GenerationConfig,
           max_length: int, timestamps: bool) -> list[int]:
    """Greedy decoding of one example: audio features [1, S, D], prompt int [n] -> the generated
    tokens (with the final <|endoftext|> if one was produced): :func:`sample` at temperature 0."""
    cross = cross_attention_kv(audio_features, weights, config)
    return sample(cross, prompt, weights, config, gc, max_length, timestamps).tokens


def reorder_cache(cache: KVCache, rows) -> None:
    """Beam search keeps each beam's history in a batch row of the KV cache; after a step, row i
    must hold the history of the beam now in slot i, which was row ``rows[i]``."""
    n = cache.length
    for kv in cache.k + cache.v:                                  # each [beams, H, capacity, Dh]
        kv[:, :, :n] = kv[rows, :, :n]


def _best_first(x, k: int):
    """Indices of the k largest entries of x [N], largest first, ties by lower index."""
    idx = np.argpartition(-x, k - 1)[:k] if k < x.size else np.arange(x.size)
    return idx[np.lexsort((idx, -x[idx]))]


def beam_search(cross_kv, prompt, weights, config: Config, gc: GenerationConfig,
                max_length: int, timestamps: bool, num_beams: int, length_penalty: float = 1.0,
                early_stopping: bool | str = False) -> Candidate:
    """Beam search over one example, as transformers' ``_beam_search``: cross_kv of the audio
    (batch 1), prompt int [n] -> the best finished hypothesis as a :class:`Candidate`.

    ``num_beams`` partial sequences (beams, one KV-cache row each) are extended together.  A
    beam's score is the sum of its tokens' log-probabilities (log-softmax of the logits, then the
    logit rules).  Each step looks at all beams x all tokens, keeps the 2·num_beams best
    continuations, and moves those that end (end-of-text, or max_length reached) from the first
    num_beams into the finished list, scored sum / (generated length ** length_penalty); the
    num_beams best unfinished ones continue.  The search stops when no running beam can beat the
    worst of num_beams finished hypotheses (early_stopping False: judged at the current length;
    "never": at max_length when length_penalty > 0; True: as soon as num_beams are finished)."""
    n, begin, eos, NEG = num_beams, len(prompt), gc.eos_token_id, np.float32(-1e9)
    cross = [(np.repeat(k, n, axis=0), np.repeat(v, n, axis=0)) for k, v in cross_kv]   # [n, ...]
    cache = decoder_cache(config, n, capacity=max(max_length, begin))
    beams = [[int(t) for t in prompt] for _ in range(n)]              # running token sequences
    paths = [[] for _ in range(n)]               # each beam's per-token renormalised log-probs
    scores = np.full(n, NEG, np.float32)                               # [n]
    scores[0] = 0.0                  # the n start beams are copies: expand only the first
    finished = []                    # (score, tokens, path), best first, at most n
    improvable, step_in = True, np.tile(np.asarray(prompt, np.int64), (n, 1))      # [n, T]
    while len(beams[0]) < max_length:
        logits = decoder(step_in, cross, weights, config, cache, last_only=True)   # [n, 1, V]
        logp = log_softmax(logits[:, -1].astype(np.float32))                       # [n, V]
        for b in range(n):
            process_logits(logp[b], beams[b], begin, timestamps, gc)
        norm = log_softmax(logp)                     # over the allowed tokens, for avg_logprob
        total = (logp + scores[:, None]).ravel()                                   # [n·V]
        top = _best_first(total, 2 * n)                                            # [2n]
        src, tok = np.divmod(top, logp.shape[1])
        cand = total[top]                                                          # [2n]
        ends = (tok == eos) | (len(beams[0]) + 1 >= max_length)                   # [2n]
        grown = [(beams[s] + [int(t)], paths[s] + [float(norm[s, t])]) for s, t in zip(src, tok)]
        if improvable and not (early_stopping is True and len(finished) == n):
            length = np.float32((len(beams[0]) + 1 - begin) ** length_penalty)
            finished += [(float(cand[j] / length), grown[j][0][begin:], grown[j][1])
                         for j in range(n) if ends[j]]
            finished = sorted(finished, key=lambda h: -h[0])[:n]
        running = cand + ends.astype(np.float32) * NEG        # ended ones cannot continue
        keep = np.argsort(-running, kind="stable")[:n]                             # [n]
        reorder_cache(cache, src[keep])
        beams, paths = [grown[j][0] for j in keep], [grown[j][1] for j in keep]
        scores = running[keep]
        step_in = tok[keep][:, None].astype(np.int64)                              # [n, 1]
        hyp_len = (max_length if early_stopping == "never" and length_penalty > 0
                   else len(beams[0])) - begin
        worst = finished[-1][0] if len(finished) == n else NEG
        improvable = improvable and scores[0] / np.float32(hyp_len ** length_penalty) > worst
        if not improvable or ends.all() or (early_stopping is True and len(finished) == n):
            break
    if not finished:                             # the prompt already fills max_length
        return Candidate([], 0.0)
    _, tokens, path = finished[0]
    return Candidate(tokens, float(np.mean(path)))


# =============================================================================================
# the fallback decisions
# =============================================================================================
def compression_ratio(tokens, vocab_size: int) -> float:
    """Bytes of the token ids (each in the fewest whole bytes that hold vocab_size, little-endian)
    over their zlib-compressed bytes: high for repetitive output (transformers'
    ``_retrieve_compression_ratio``; openai-whisper compresses the text instead)."""
    width = int(math.log2(vocab_size) / 8) + 1
    raw = b"".join(int(t).to_bytes(width, "little") for t in tokens)
    return len(raw) / len(zlib.compress(raw))


def no_speech_probability(cross_kv, prompt, sot_index: int, weights, config: Config,
                          gc: GenerationConfig) -> float:
    """P(<|nospeech|>) from the logits at <|startoftranscript|> (position ``sot_index`` of the
    window's prompt), softmax over the whole vocabulary, no logit rules -- transformers'
    WhisperNoSpeechDetection.  cross_kv of the audio, batch 1."""
    ids = np.asarray(prompt[:sot_index + 1], np.int64)[None]                      # [1, sot + 1]
    logits = decoder(ids, cross_kv, weights, config, last_only=True)[0, -1]          # [V]
    return float(np.exp(log_softmax(logits.astype(np.float32))[gc.no_timestamps_token_id - 1]))


def needs_fallback(candidate: Candidate, no_speech_prob: float | None, opts: DecodingOptions,
                   vocab_size: int) -> tuple[bool, bool]:
    """-> (needs_fallback, should_skip) for one decoded window, transformers' ``_need_fallback``.

    A candidate that is too repetitive (compression ratio above its threshold) or too unlikely
    (average log-probability below its threshold) asks for the next temperature -- unless the
    model also found no speech (P(<|nospeech|>) above its threshold while the log-probability is
    below its own): then the window is skipped as silence."""
    fallback = False
    if opts.compression_ratio_threshold is not None:
        ratio = compression_ratio(candidate.tokens, vocab_size)
        fallback = ratio > opts.compression_ratio_threshold
    low_logprob = (opts.logprob_threshold is not None
                   and candidate.avg_logprob < opts.logprob_threshold)
    fallback = fallback or low_logprob
    if (opts.no_speech_threshold is not None and low_logprob
            and no_speech_prob > opts.no_speech_threshold):
        return False, True
    return fallback, False
