"""Word timestamps (pyworkloads/models/whisper/timing.py): DTW against a brute-force search and
transformers' own DTW, the median filter against transformers', token timestamps against
transformers' generate(return_token_timestamps=True), word grouping against transformers'
tokenizer, openai-whisper's alignment recipe against one assembled from transformers' attention
maps, and clear errors for bad input."""
from __future__ import annotations

import copy
import itertools
import sys
import warnings

import numpy as np
import pytest
from conftest import FIXTURES, require_transformers

from pyworkloads.models import whisper as W
from pyworkloads.models.whisper import timing as T

sys.path.insert(0, str(FIXTURES))
import make_whisper_fixture as F  # noqa: E402

HEADS = [[1, 0], [1, 2], [0, 3]]                 # deliberately not sorted by layer
N_FRAMES = 200                                   # max_source_positions 100: 2-s windows


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random checkpoint whose generation_config.json lists alignment heads."""
    cfg = F.tiny_config(max_source_positions=N_FRAMES // 2)
    gen = W.make_generation_config(F.N_TEXT, suppress_text=(5, 17, 40),
                                   begin_suppress_text=(220,))
    gen["alignment_heads"] = HEADS
    weights = F.tiny_weights(cfg, seed=11, timestamp_scale=0.6)
    return F.write_checkpoint(tmp_path_factory.mktemp("align") / "ckpt", cfg, weights,
                              generation=gen)


@pytest.fixture(scope="module")
def ours(checkpoint):
    return W.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def hf(checkpoint):
    torch, _ = require_transformers()
    n = torch.get_num_threads()
    torch.set_num_threads(1)                     # tiny models: threads only add contention
    model = F.load_hf(checkpoint)
    model.set_attn_implementation("eager")       # attention maps are returned by eager only
    yield model
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def hf_tokenizer(checkpoint):
    require_transformers()
    from transformers import WhisperTokenizer
    return WhisperTokenizer.from_pretrained(str(checkpoint))


def _features(seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.5, (1, 80, N_FRAMES)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# DTW and the median filter
# ---------------------------------------------------------------------------------------------
def _all_paths(n, m):
    """Every monotone path from (0, 0) to (n-1, m-1) with steps (1, 0), (0, 1), (1, 1)."""
    if (n, m) == (1, 1):
        yield [(0, 0)]
        return
    for di, dj in ((1, 0), (0, 1), (1, 1)):
        if n - di >= 1 and m - dj >= 1:
            for p in _all_paths(n - di, m - dj):
                yield p + [(n - 1, m - 1)]


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (4, 1), (2, 3), (3, 4), (4, 6), (5, 5)])
def test_dtw_finds_the_cheapest_path(shape):
    """Against a search over every monotone path: the path found costs the minimum, and is the
    unique cheapest one when that is clear of the runner-up."""
    x = np.random.default_rng(sum(shape)).standard_normal(shape)
    costs = sorted((sum(x[i, j] for i, j in p), p) for p in _all_paths(*shape))
    rows, cols = T.dtw(x)
    path = list(zip(rows.tolist(), cols.tolist()))
    assert path[0] == (0, 0) and path[-1] == (shape[0] - 1, shape[1] - 1)
    steps = {(b[0] - a[0], b[1] - a[1]) for a, b in zip(path, path[1:])}
    assert steps <= {(1, 0), (0, 1), (1, 1)}
    assert abs(sum(x[i, j] for i, j in path) - costs[0][0]) <= 1e-5
    if len(costs) == 1 or costs[1][0] - costs[0][0] > 1e-4:
        assert path == costs[0][1]


@pytest.mark.parametrize("kind", ["normal", "ties"])
def test_dtw_vectorised_equals_loops_and_transformers(kind):
    """The diagonal-at-a-time DTW equals the plain loops and transformers'
    _dynamic_time_warping, ties included (small integer costs make many)."""
    require_transformers()
    from transformers.models.whisper.generation_whisper import _dynamic_time_warping
    rng = np.random.default_rng(5)
    for shape in [(1, 7), (6, 1), (3, 9), (12, 40), (30, 25)]:
        x = rng.standard_normal(shape) if kind == "normal" else rng.integers(-2, 3, shape) * 1.0
        got, ref = T.dtw(x), T.dtw_reference(x)
        hf_rows, hf_cols = _dynamic_time_warping(x)
        for a, b, c in zip(got, ref, (hf_rows, hf_cols)):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)


def test_median_filter_matches_transformers():
    torch, _ = require_transformers()
    from transformers.models.whisper.generation_whisper import _median_filter
    rng = np.random.default_rng(0)
    for length in (3, 4, 7, 30):                 # 3: too short to filter, returned unchanged
        x = rng.standard_normal((2, 3, 5, length)).astype(np.float32)
        ref = _median_filter(torch.tensor(x), 7).numpy()
        np.testing.assert_array_equal(T.median_filter(x, 7), ref)
    assert not np.array_equal(T.median_filter(x, 7), x)


# ---------------------------------------------------------------------------------------------
# the decoder's cross-attention maps
# ---------------------------------------------------------------------------------------------
def test_decoder_attention_maps_match_transformers(ours, hf):
    """decoder(..., attention_heads=) returns the heads' softmax(q kᵀ / √Dh), sorted by (layer,
    head), as transformers' eager attention outputs them; the logits are those of the plain
    call."""
    torch, _ = require_transformers()
    feats = _features(3)
    ids = np.array([[301, 302, 403, 405, 267, 80, 84, 291, 11]])
    cfg = ours.config
    cross = W.cross_attention_kv(ours.encode(feats), ours.weights, cfg)
    logits, maps = W.decoder(ids, cross, ours.weights, cfg, attention_heads=HEADS)
    np.testing.assert_array_equal(logits, W.decoder(ids, cross, ours.weights, cfg))
    with torch.no_grad():
        out = hf(input_features=torch.tensor(feats), decoder_input_ids=torch.tensor(ids),
                 output_attentions=True)
    ref = np.stack([out.cross_attentions[layer][0, h].numpy() for layer, h in sorted(HEADS)])
    assert maps.shape == (1, 3, ids.shape[1], cfg.max_source_positions)
    # probabilities from float32 products of length Dh = 16 over 100 positions; measured 3e-8
    np.testing.assert_allclose(maps[0], ref, atol=1e-6)
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-5)
    assert maps.max() > 3.0 / cfg.max_source_positions          # not uniform


# ---------------------------------------------------------------------------------------------
# token timestamps: transformers' generate(return_token_timestamps=True)
# ---------------------------------------------------------------------------------------------
TOKEN_CASES = {
    "no-timestamps": dict(language="en", max_new_tokens=20),
    "timestamps": dict(language="en", return_timestamps=True, max_new_tokens=30),
    "audio-mask": dict(language="fr", max_new_tokens=25, frames=130),
    "timestamps-audio-mask": dict(language="en", return_timestamps=True, max_new_tokens=40,
                                  frames=150),
}


@pytest.mark.parametrize("case", list(TOKEN_CASES))
def test_token_timestamps_match_transformers(ours, hf, case):
    """The same tokens (transformers' generated sequence, prompt included) through our pass:
    identical times.  ``frames`` passes attention_mask, which transformers reads as the number
    of mel frames holding audio."""
    torch, _ = require_transformers()
    kw = dict(TOKEN_CASES[case])
    frames = kw.pop("frames", None)
    if frames is not None:
        kw["attention_mask"] = torch.tensor((np.arange(N_FRAMES) < frames)[None].astype(int))
    distinct = 0
    for seed in (0, 2):
        feats = _features(seed)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = hf.generate(torch.tensor(feats), return_token_timestamps=True,
                              return_segments=True, **kw)
        result = out["segments"][0][0]["result"]            # the whole window, prompt included
        seq, ref = result["sequences"].numpy(), result["token_timestamps"].numpy()
        n_prompt = 3 if kw.get("return_timestamps") else 4  # sot, language, task (, notimestamps)
        got = T.token_timestamps(ours, feats, seq, n_prompt, frames, alignment_heads=HEADS)
        assert got.dtype == np.float32 and got.shape == seq.shape
        np.testing.assert_array_equal(got, ref)
        # generate's own output: the entries after the prompt, for the tokens it returns
        n = out["sequences"].shape[1]
        np.testing.assert_array_equal(got[n_prompt:n_prompt + n], out["token_timestamps"][0])
        distinct = max(distinct, len(np.unique(ref)))
    assert distinct >= 5                         # times that actually move along the audio


def test_alignment_heads_come_from_the_generation_config(ours):
    """Read from generation_config.alignment_heads when not passed (the field transformers
    reads); without it token timestamps are refused, as transformers does, while word
    timestamps fall back to openai-whisper's default: every head of the last half of layers."""
    model = copy.copy(ours)
    model.generation_config = copy.copy(ours.generation_config)
    model.generation_config.alignment_heads = HEADS
    assert T.get_alignment_heads(model) == [tuple(h) for h in HEADS]
    model.generation_config.alignment_heads = None
    with pytest.raises(ValueError, match="alignment_heads"):
        T.token_timestamps(model, _features(0), [301, 302, 403, 405, 267, 300], 4)
    cfg = ours.config
    assert T.get_alignment_heads(model, fallback=True) == [
        (1, h) for h in range(cfg.decoder_attention_heads)]      # 2 layers: the second


# ---------------------------------------------------------------------------------------------
# words
# ---------------------------------------------------------------------------------------------
WORD_TEXTS = {
    "english": (" Hello, world. (quick) \"brown\" fox - it's a test!", "en", "english"),
    "accents": (" café déjà-vu, naïve «quotes» über.", "fr", "french"),
    "japanese": ("日本語のテキスト、です。", "ja", "japanese"),
}


@pytest.mark.parametrize("name", list(WORD_TEXTS))
def test_word_grouping_matches_transformers(ours, hf_tokenizer, name):
    """Split at spaces or complete characters, punctuation merged: transformers' tokenizer
    (_combine_tokens_into_words) with openai-whisper's punctuation sets."""
    from transformers.models.whisper.tokenization_whisper import _combine_tokens_into_words
    text, code, language = WORD_TEXTS[name]
    ids = hf_tokenizer.encode(text, add_special_tokens=False)
    assert ids == ours.tokenizer.encode(text, add_special_tokens=False).ids
    ids = [*ids, ours.generation_config.eos_token_id]
    words, _, indices = _combine_tokens_into_words(hf_tokenizer, ids, language,
                                                   T.PREPEND_PUNCTUATIONS, T.APPEND_PUNCTUATIONS)
    got = T.group_words(ours, ids, code)
    assert [w["word"] for w in got] == words
    assert [w["indices"] for w in got] == indices
    assert len(words) >= 4 and any(len(i) > 1 for i in indices)


def test_words_from_token_timestamps_match_pipeline(ours, hf_tokenizer):
    """Timestamp tokens, text, times per token -> words with times: transformers' pipeline
    post-processing (the tokenizer's _decode_asr with return_timestamps="word")."""
    torch, _ = require_transformers()
    tb = ours.generation_config.timestamp_begin
    def enc(text):
        return hf_tokenizer.encode(text, add_special_tokens=False)

    tokens = [tb + 3, *enc(" Hello, world."), tb + 40, tb + 40, *enc(" (quick) fox! Said"),
              *enc(" she."), tb + 90]
    times = np.sort(np.random.default_rng(1).uniform(0, 2, len(tokens))).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, ref = hf_tokenizer._decode_asr(
            [{"tokens": torch.tensor([tokens]), "token_timestamps": torch.tensor([times])}],
            return_timestamps="word", return_language=False, time_precision=0.02)
    got = T.words_from_token_timestamps(ours, tokens, times, "en")
    assert [(w["word"], (w["start"], w["end"])) for w in got] == [
        (c["text"], c["timestamp"]) for c in ref["chunks"]]
    assert [w["word"] for w in got] == [" Hello,", " world.", " (quick)", " fox!", " Said",
                                        " she."]


def _openai_alignment_from_transformers(hf, hf_tokenizer, feats, tokens, n_sot, n_frames):
    """openai-whisper's find_alignment assembled from transformers' pieces: the HF model's
    cross-attention maps and logits, its median filter, DTW and word split."""
    import torch
    from transformers.models.whisper.generation_whisper import (
        _dynamic_time_warping,
        _median_filter,
    )
    from transformers.models.whisper.tokenization_whisper import _split_tokens_on_spaces
    with torch.no_grad():
        out = hf(input_features=torch.tensor(feats), decoder_input_ids=torch.tensor([tokens]),
                 output_attentions=True)
    w = torch.stack([out.cross_attentions[layer][0, h] for layer, h in HEADS])   # [n, T, S]
    w = w[..., :n_frames // 2]
    w = w / w.sum(-1, keepdim=True)
    std, mean = torch.std_mean(w, dim=-2, keepdim=True, unbiased=False)
    matrix = _median_filter((w - mean) / std, 7).mean(0)[n_sot:-1]
    rows, cols = _dynamic_time_warping(-matrix.double().numpy())
    jumps = np.pad(np.diff(rows), (1, 0), constant_values=1).astype(bool)
    starts = cols[jumps] * 0.02
    eot = tokens[-1]
    text = tokens[n_sot + 1:-1]
    probs = out.logits[0, n_sot:, :eot].double().softmax(-1).numpy()
    token_probs = probs[np.arange(len(text)), text]
    words, word_tokens, _ = _split_tokens_on_spaces(hf_tokenizer, text + [eot])
    bounds = np.cumsum([0] + [len(t) for t in word_tokens[:-1]])
    return [(w_, starts[a], starts[b], token_probs[a:b].mean())
            for w_, a, b in zip(words, bounds[:-1], bounds[1:])]


def test_find_alignment_matches_openai_recipe_on_transformers(ours, hf, hf_tokenizer):
    require_transformers()
    feats = _features(0)
    sot = [301, 302, 403]                                       # sot, <|en|>, <|transcribe|>
    text = ours.tokenizer.encode(" the quick brown fox, jumps over the lazy dog.").ids
    eot = ours.generation_config.eos_token_id
    notimestamps = ours.generation_config.no_timestamps_token_id
    for n_frames in (N_FRAMES, 120):
        ref = _openai_alignment_from_transformers(hf, hf_tokenizer, feats,
                                                  [*sot, notimestamps, *text, eot], 3, n_frames)
        got = T.find_alignment(ours, text, feats, n_frames, sot, "en", HEADS)
        assert [w["word"] for w in got] == [r[0] for r in ref]
        assert [(w["start"], w["end"]) for w in got] == [(r[1], r[2]) for r in ref]
        np.testing.assert_allclose([w["probability"] for w in got], [r[3] for r in ref],
                                   rtol=1e-5)
        assert len({w["start"] for w in got}) >= 3      # the words spread over the audio
        assert got[-1]["end"] <= n_frames // 2 * 0.02


# ---------------------------------------------------------------------------------------------
# add_word_timestamps: one window of transcription
# ---------------------------------------------------------------------------------------------
def _window_segments(model, feats):
    """Decode a window with timestamps: its prompt and segments (start, end, tokens)."""
    prompt = model.init_tokens(feats, language="en", return_timestamps=True)[0]
    _, segments = model.generate(feats, language="en", return_timestamps=True,
                                 return_segments=True, max_new_tokens=40)
    return prompt, segments[0]


def test_add_word_timestamps_on_a_window(ours):
    feats = _features(1)
    prompt, segments = _window_segments(ours, feats)
    original = copy.deepcopy(segments)
    eot = ours.generation_config.eos_token_id
    assert sum(t < eot for s in segments for t in s["tokens"]) >= 5
    # a <|startofprev|> text prompt before <|startoftranscript|> does not change the alignment
    prev = [ours.generation_config.prev_sot_token_id, 267, 80]
    with_prev = copy.deepcopy(segments)
    T.add_word_timestamps(ours, segments, feats, prompt, 170)
    T.add_word_timestamps(ours, with_prev, feats, [*prev, *prompt], 170)
    assert with_prev == segments
    words = [w for s in segments for w in s["words"]]
    text = ours.tokenizer.decode([t for s in segments for t in s["tokens"] if t < eot])
    assert "".join(w["word"] for w in words) == text
    assert all(0 <= w["start"] <= w["end"] and 0 < w["probability"] <= 1 for w in words)
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)
    assert len({w["start"] for w in words}) >= 3
    # the same window 30 s into the audio, after speech that ended at 30 s: the same words,
    # 30 s later (the offset read from the first segment's opening timestamp)
    later = copy.deepcopy(original)
    for s in later:
        s["start"] += 30.0
        s["end"] += 30.0
    T.add_word_timestamps(ours, later, feats, prompt, 170, last_speech_timestamp=30.0)
    for a, b in zip(segments, later):
        assert [w["word"] for w in a["words"]] == [w["word"] for w in b["words"]]
        np.testing.assert_allclose([w["start"] + 30 for w in a["words"]],
                                   [w["start"] for w in b["words"]], atol=1e-9)


def test_add_word_timestamps_corrections(ours, monkeypatch):
    """openai-whisper's corrections, worked by hand on a given alignment.  Word durations 2.5,
    2, 1.5, .5, .5, .5, .5: median 0.5 s, so the longest allowed word is 1 s.
    - " a" (1.5 s) follows a sentence end: it keeps its end and starts 1 s before it, 4.5;
    - "." joins " Hi" (which keeps its own times, 0.5 to 3.0);
    - " Hi." ends 3 s after the last speech (0), more than 4 x 0.5, and is longer than 1 s: it
      now starts 1 s before its end, at 2.0;
    - each segment's start and end move to its first word's start and last word's end."""
    times = [(" Hi", 0.5, 3.0), (".", 3.0, 5.0), (" a", 4.0, 5.5), (" b", 5.5, 6.0),
             (" c", 6.0, 6.5), (" d", 6.5, 7.0), (" e", 7.0, 7.5)]
    alignment = [dict(word=w, tokens=[i + 1], start=a, end=b, probability=0.5)
                 for i, (w, a, b) in enumerate(times)]
    monkeypatch.setattr(T, "find_alignment", lambda *a, **k: copy.deepcopy(alignment))
    tb = ours.generation_config.timestamp_begin
    segments = [dict(start=0.0, end=5.0, tokens=[tb, 1, 2, tb + 250]),
                dict(start=4.9, end=7.2, tokens=[tb + 245, 3, 4, 5, 6, 7, tb + 360])]
    T.add_word_timestamps(ours, segments, _features(0), [301, 302, 403], 200)
    assert [(w["word"], w["start"], w["end"]) for w in segments[0]["words"]] == [
        (" Hi.", 2.0, 3.0)]
    assert [(w["word"], w["start"], w["end"]) for w in segments[1]["words"]] == [
        (" a", 4.5, 5.5), (" b", 5.5, 6.0), (" c", 6.0, 6.5), (" d", 6.5, 7.0),
        (" e", 7.0, 7.5)]
    assert [(s["start"], s["end"]) for s in segments] == [(2.0, 3.0), (4.5, 7.5)]


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def test_bad_inputs(ours):
    feats = _features(0)
    seq = [301, 302, 403, 405, 267, 80, 300]
    with pytest.raises(ValueError, match="alignment_heads"):
        T.token_timestamps(ours, feats, seq, 4, alignment_heads=[[2, 0]])     # layer 2 of 2
    with pytest.raises(ValueError, match="alignment_heads"):
        T.token_timestamps(ours, feats, seq, 4, alignment_heads=[[1, 0, 1]])
    with pytest.raises(ValueError, match="alignment_heads"):
        T.token_timestamps(ours, feats, seq, 4, alignment_heads=[])
    with pytest.raises(ValueError, match=r"window features .*\[1, 80, 200\]"):
        T.token_timestamps(ours, feats[:, :, :100], seq, 4, alignment_heads=HEADS)
    with pytest.raises(ValueError, match="tokens"):
        T.token_timestamps(ours, feats, [seq], 4, alignment_heads=HEADS)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        T.token_timestamps(ours, feats, [*seq, 10 ** 6], 4, alignment_heads=HEADS)
    with pytest.raises(ValueError, match="num_input_ids"):
        T.token_timestamps(ours, feats, seq, 0, alignment_heads=HEADS)
    with pytest.raises(ValueError, match="num_frames must be an integer >= 2"):
        T.token_timestamps(ours, feats, seq, 4, 1, alignment_heads=HEADS)
    with pytest.raises(ValueError, match="num_frames must be an integer <= 200"):
        T.token_timestamps(ours, feats, seq, 4, 201, alignment_heads=HEADS)
    with pytest.raises(ValueError, match="n_frames must be an integer"):
        T.add_word_timestamps(ours, [dict(start=0.0, end=1.0, tokens=[267, 80])], feats,
                              [301], 0.5, alignment_heads=HEADS)
    with pytest.raises(ValueError, match="2-D"):
        T.dtw(np.zeros(5))
    with pytest.raises(ValueError, match="2-D"):
        T.dtw(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="odd"):
        T.median_filter(np.zeros((2, 9)), 4)
    with pytest.raises(ValueError, match="attention_heads"):
        W.decoder(np.array([[301]]), [(None, None)] * 2, ours.weights, ours.config,
                  attention_heads=[(0, 4)])
    segs = [dict(start=0.0, end=1.0, tokens=[267, 80])]
    with pytest.raises(ValueError, match="startoftranscript"):
        T.add_word_timestamps(ours, segs, feats, [302, 403], 200)
    with pytest.raises(TypeError, match="segments"):
        T.add_word_timestamps(ours, segs[0], feats, [301], 200)
    with pytest.raises(ValueError, match="one time per token"):
        T.words_from_token_timestamps(ours, [267, 80], [0.1])
    bare = W.Whisper(ours.config, ours.weights, ours.generation_config)        # no tokenizer
    with pytest.raises(ValueError, match="tokenizer"):
        T.add_word_timestamps(bare, segs, feats, [301], 200, alignment_heads=HEADS)


def test_empty_and_textless_windows(ours):
    T.add_word_timestamps(ours, [], _features(0), [301], 200)             # nothing to do
    tb = ours.generation_config.timestamp_begin
    segs = [dict(start=0.0, end=1.0, tokens=[tb, tb + 50])]
    T.add_word_timestamps(ours, segs, _features(0), [301], 200)
    assert segs[0]["words"] == [] and (segs[0]["start"], segs[0]["end"]) == (0.0, 1.0)
    # two tokens, prompt and one generated: nothing was fed back, all times 0
    np.testing.assert_array_equal(
        T.token_timestamps(ours, _features(0), [301, 302, 403, 405, 267], 4,
                           alignment_heads=HEADS), np.zeros(5, np.float32))


def test_all_pairs_helper_is_complete():
    """The brute-force search above enumerates every path: Delannoy numbers D(2, 3) = 25."""
    assert len(list(_all_paths(3, 4))) == 25
    assert len({tuple(p) for p in _all_paths(3, 4)}) == 25
    assert list(itertools.islice(_all_paths(1, 1), 2)) == [[(0, 0)]]
