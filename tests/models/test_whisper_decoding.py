"""Whisper's decoding options against transformers' ``WhisperForConditionalGeneration.generate``
on a tiny random checkpoint written to disk and loaded by both sides: beam search (num_beams,
length_penalty, early_stopping; short-form, batched, long-form, with and without timestamps),
conditioning on previous windows, prompt_ids, no-speech skipping and temperature fallback with
deterministic outcomes, token for token; the fallback statistics against transformers' own
functions on identical inputs; sampling against the distribution transformers samples from; the
generation config's defaults; transcribe()'s openai-whisper arguments; bad arguments."""
from __future__ import annotations

import json
import sys
import types
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import FIXTURES, require_transformers

from pyworkloads.models import whisper as W
from pyworkloads.models.whisper import decoding as D

sys.path.insert(0, str(FIXTURES))
import make_whisper_fixture as F  # noqa: E402

torch, transformers = require_transformers()

LONG_FRAMES = 1200               # 6 windows of this model's 200 frames (2 s)
LONG_NEW_TOKENS = 12             # per window: it closes a segment or two and moves on


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models on a shared machine: torch's thread pool only adds contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(ours, transformers', checkpoint folder): 2-s windows (max_source_positions 100), so
    that 12 s of features are several windows; the weights of the greedy parity tests, which end
    windows early with timestamps and end-of-text, with the timestamps after 2 s made unlikely
    (their embeddings shrunk), so that segments stay inside their window."""
    cfg = F.tiny_config(max_source_positions=100)
    weights = F.tiny_weights(cfg, 11, timestamp_scale=0.6)
    tb = cfg.vocab_size - W.N_TIMESTAMPS
    weights["model.decoder.embed_tokens.weight"][tb + 100:] *= 0.1
    path = F.write_checkpoint(tmp_path_factory.mktemp("dec") / "tiny", cfg, weights)
    return W.from_pretrained(path), F.load_hf(path), path


def _features(config, batch=1, frames=None, seed=0):
    """Log-mel-like inputs: noise, then a constant (padding-like silence), then weaker noise."""
    rng = np.random.default_rng(seed)
    n = frames or config.n_audio_frames
    x = rng.uniform(-1.0, 1.5, (batch, config.num_mel_bins, n))
    x[:, :, n // 2:2 * n // 3] = -0.8
    x[:, :, 2 * n // 3:] *= 0.3
    return x.astype(np.float32)


def _hf(hf, feats, **kw):
    if "prompt_ids" in kw:
        kw["prompt_ids"] = torch.tensor(kw["prompt_ids"])
    with torch.no_grad():
        out = hf.generate(torch.tensor(feats), **kw)
    return out


def _same_as_transformers(ours, hf, feats, **kw):
    """Our generate() and transformers' on the same features -> our tokens (and segments for
    long-form), asserted equal to transformers' token for token (segment times to 1e-9 s)."""
    long_form = feats.shape[2] > ours.config.n_audio_frames
    if not long_form:
        got = ours.generate(feats, **kw)
        np.testing.assert_array_equal(got, _hf(hf, feats, **kw).numpy(), err_msg=str(kw))
        return got
    kw = dict(return_timestamps=True, max_new_tokens=LONG_NEW_TOKENS, **kw)
    ref = _hf(hf, feats, return_segments=True, **kw)
    got, segs = ours.generate(feats, return_segments=True, **kw)
    np.testing.assert_array_equal(got, ref["sequences"].numpy(), err_msg=str(kw))
    assert len(segs[0]) == len(ref["segments"][0])
    for s, r in zip(segs[0], ref["segments"][0]):
        assert s["tokens"] == r["tokens"].tolist()
        assert abs(s["start"] - float(r["start"])) < 1e-9 and abs(s["end"] - float(r["end"])) < 1e-9
    return got


def _ours(ours, feats, **kw):
    """Our tokens alone, with the long-form settings of :func:`_same_as_transformers`."""
    if feats.shape[2] > ours.config.n_audio_frames:
        kw = dict(return_timestamps=True, max_new_tokens=LONG_NEW_TOKENS, **kw)
    return ours.generate(feats, **kw)


def _differ(a, b) -> bool:
    return a.shape != b.shape or bool((a != b).any())


# ---------------------------------------------------------------------------------------------
# beam search
# ---------------------------------------------------------------------------------------------
SHORT_BEAM_CASES = {
    "2-beams": dict(language="en", num_beams=2),
    "3-beams-penalty-0.5": dict(language="en", num_beams=3, length_penalty=0.5),
    "3-beams-detect-penalty-minus-1": dict(num_beams=3, length_penalty=-1.0),
    "2-beams-timestamps": dict(language="en", num_beams=2, return_timestamps=True),
    "3-beams-timestamps": dict(language="en", num_beams=3, return_timestamps=True),
    "3-beams-timestamps-penalty-0": dict(language="en", num_beams=3, length_penalty=0.0,
                                         return_timestamps=True),
    "2-beams-timestamps-penalty-2": dict(num_beams=2, length_penalty=2.0, return_timestamps=True),
    "2-beams-early-stopping": dict(language="de", num_beams=2, early_stopping=True),
    "3-beams-never-stop-early": dict(language="de", num_beams=3, early_stopping="never",
                                     return_timestamps=True),
    "2-beams-max-new-tokens": dict(language="en", num_beams=2, max_new_tokens=6),
}


@pytest.mark.parametrize("case", list(SHORT_BEAM_CASES))
def test_beam_search_short_form_matches_transformers(model, case):
    """A batch of two inputs of one window each (every row searched on its own): hypotheses end
    at end-of-text after a few tokens or run to max_length; shorter rows are right-padded."""
    ours, hf, _ = model
    _same_as_transformers(ours, hf, _features(ours.config, batch=2), **SHORT_BEAM_CASES[case])


def test_beams_and_length_penalty_change_the_tokens(model):
    """The cases above are not greedy in disguise: beams change the tokens, and so does the
    length penalty (checked on our side; the parity is tested above)."""
    ours, _, _ = model
    feats = _features(ours.config, batch=2)
    run = {c: ours.generate(feats, **SHORT_BEAM_CASES[c])
           for c in ("2-beams", "3-beams-timestamps", "3-beams-timestamps-penalty-0")}
    assert _differ(run["2-beams"], ours.generate(feats, language="en"))
    assert _differ(run["3-beams-timestamps"],
                   ours.generate(feats, language="en", return_timestamps=True))
    assert _differ(run["3-beams-timestamps"], run["3-beams-timestamps-penalty-0"])


def test_beam_search_long_form_matches_transformers(model):
    """12 s of features, window after window: beam search with timestamps in each window."""
    ours, hf, _ = model
    feats = _features(ours.config, frames=LONG_FRAMES, seed=2)
    beams2 = _same_as_transformers(ours, hf, feats, language="en", num_beams=2)
    beams3 = _same_as_transformers(ours, hf, feats, language="en", num_beams=3,
                                   length_penalty=0.5)
    greedy = _ours(ours, feats, language="en")
    assert _differ(beams2, greedy) and _differ(beams3, greedy)


def test_reorder_cache_moves_rows():
    cache = W.decoder_cache(W.PRESETS["whisper-tiny-random"], 3, capacity=5)
    for i, k in enumerate(cache.k + cache.v):
        k[...] = np.arange(3)[:, None, None, None] + 10 * i
    cache.advance(2)
    D.reorder_cache(cache, np.array([2, 0, 0]))
    for i, k in enumerate(cache.k + cache.v):
        np.testing.assert_array_equal(k[:, 0, :2, 0], [[2 + 10 * i] * 2, [10 * i] * 2,
                                                       [10 * i] * 2])
        np.testing.assert_array_equal(k[:, 0, 2:, 0], [[10 * i + r] * 3 for r in range(3)])


# ---------------------------------------------------------------------------------------------
# conditioning, prompts, no-speech, fallback (long-form)
# ---------------------------------------------------------------------------------------------
def test_condition_on_prev_tokens_matches_transformers(model):
    ours, hf, _ = model
    feats = _features(ours.config, frames=LONG_FRAMES, seed=2)
    cond = _same_as_transformers(ours, hf, feats, language="en", condition_on_prev_tokens=True)
    cond_beams = _same_as_transformers(ours, hf, feats, language="en", num_beams=2,
                                       condition_on_prev_tokens=True)
    assert _differ(cond, _ours(ours, feats, language="en")) and _differ(cond_beams, cond)


def _prompt(ours):
    return [ours.generation_config.prev_sot_token_id, 40, 41, 200, 7, 120]


def test_prompt_ids_match_transformers(model):
    """prompt_ids before every short-form window (batch of two, greedy and beams) and in long
    form: 'first-segment' with and without conditioning, 'all-segments'."""
    ours, hf, _ = model
    prompt = _prompt(ours)
    feats = _features(ours.config, batch=2, seed=3)
    short = _same_as_transformers(ours, hf, feats, language="en", prompt_ids=prompt)
    assert _differ(short, ours.generate(feats, language="en"))
    _same_as_transformers(ours, hf, feats, language="en", prompt_ids=prompt, num_beams=2,
                          return_timestamps=True)
    feats = _features(ours.config, frames=LONG_FRAMES, seed=2)
    outs = [_same_as_transformers(ours, hf, feats, language="en", prompt_ids=prompt, **kw)
            for kw in (dict(), dict(condition_on_prev_tokens=True),
                       dict(condition_on_prev_tokens=True, prompt_condition_type="all-segments"))]
    assert _differ(outs[0], _ours(ours, feats, language="en")) and _differ(outs[0], outs[1])


def test_no_speech_skipping_matches_transformers(model):
    """logprob_threshold 0 (every window counts as unlikely): the windows whose <|nospeech|>
    probability exceeds the threshold are skipped, the others kept.  (transformers needs a
    temperature with logprob_threshold; 0 is greedy, our default.)"""
    ours, hf, _ = model
    feats = _features(ours.config, frames=LONG_FRAMES, seed=2)
    got = _same_as_transformers(ours, hf, feats, language="en", logprob_threshold=0.0,
                                no_speech_threshold=2.5e-4, temperature=0.0)
    assert 0 < got.shape[1] and _differ(got, _ours(ours, feats, language="en"))


FALLBACK_CASES = {
    # beams fail on repetition -> the (deterministic) near-zero-temperature retry; transformers
    # then keeps beam search off for the rest of the call
    "compression-beams": dict(num_beams=2, compression_ratio_threshold=0.5,
                              temperature=(0.0, 1e-6)),
    "logprob-conditioned": dict(num_beams=2, logprob_threshold=-5.0,
                                condition_on_prev_tokens=True, temperature=[0.0, 0.0, 1e-6]),
    "no-speech-after-fallback": dict(num_beams=3, logprob_threshold=-5.0,
                                     no_speech_threshold=2.5e-4, temperature=(0.0, 1e-6)),
}


@pytest.mark.parametrize("case", list(FALLBACK_CASES))
def test_temperature_fallback_matches_transformers(model, case):
    """Schedules whose every step is deterministic (temperature 0, or so close to 0 that the
    softmax is one-hot): the same windows fall back, to the same results.  (Without beams such a
    fallback would give the greedy tokens again: each case has beams, or skips windows.)"""
    ours, hf, _ = model
    feats = _features(ours.config, frames=LONG_FRAMES, seed=2)
    kw = FALLBACK_CASES[case]
    got = _same_as_transformers(ours, hf, feats, language="en", **kw)
    no_thresholds = {k: v for k, v in kw.items() if "threshold" not in k}
    assert _differ(got, _ours(ours, feats, language="en", **no_thresholds))


def test_no_conditioning_after_a_high_temperature_window(model, monkeypatch):
    """transformers' rule (openai-whisper's too): a window kept at a temperature >= 0.5 does not
    prompt the next window with its text; one kept below 0.5 does.  (Sampled, so checked on the
    prompts, not against transformers' tokens.)"""
    from pyworkloads.models.whisper import transcribe as T
    ours, _, _ = model
    prompts, decode = [], T.decode_with_fallback
    monkeypatch.setattr(T, "decode_with_fallback",
                        lambda m, cross, prompt, *a: prompts.append(prompt) or decode(m, cross,
                                                                                  prompt, *a))
    feats = _features(ours.config, frames=LONG_FRAMES, seed=2)
    for temperature, conditioned in ((0.4, True), (0.6, False)):
        prompts.clear()
        # two tokens a window: no segment is closed, each window moves on by its full length
        ours.generate(feats, language="en", return_timestamps=True, max_new_tokens=2, seed=0,
                      condition_on_prev_tokens=True, temperature=(0.0, temperature),
                      logprob_threshold=0.0)                          # every window fails
        assert len(prompts) == LONG_FRAMES // ours.config.n_audio_frames
        prev_sot = ours.generation_config.prev_sot_token_id
        assert [p[0] == prev_sot for p in prompts] == [False] + [conditioned] * (len(prompts) - 1)


# ---------------------------------------------------------------------------------------------
# the fallback statistics against transformers' own functions
# ---------------------------------------------------------------------------------------------
def _scores(rng, steps, vocab=400):
    """Processed logits as the logit rules leave them: random, with suppressed (-inf) entries."""
    s = rng.normal(0.0, 2.0, (steps, vocab)).astype(np.float32)
    s[rng.random((steps, vocab)) < 0.3] = -np.inf
    return s


def test_compression_ratio_and_avg_logprob_match_transformers(model):
    _, hf, _ = model
    rng = np.random.default_rng(0)
    for tokens in ([5] * 40, list(rng.integers(0, 200, 50)), [1, 2, 1, 2, 1, 2, 3], [7]):
        for vocab in (200, 1909, 51866, 70000):           # 1, 2, 2 and 3 bytes a token
            ref = hf._retrieve_compression_ratio(torch.tensor(tokens), vocab)
            assert D.compression_ratio(tokens, vocab) == pytest.approx(ref, rel=1e-12)
    warpers = transformers.generation.logits_process
    for temperature, top_k in ((0.0, None), (0.7, 50), (1.3, 7)):
        scores = _scores(rng, 12)
        tokens = [int(rng.choice(np.flatnonzero(np.isfinite(r)))) for r in scores]
        stored = torch.tensor(scores)               # what transformers keeps: after the warpers
        if temperature > 0:
            stored = warpers.TemperatureLogitsWarper(temperature)(None, stored)
            stored = warpers.TopKLogitsWarper(top_k)(None, stored)
            tokens = [int(rng.choice(np.flatnonzero(np.isfinite(r.numpy()))))
                      for r in stored]                                 # inside the top-k
        ref = hf._retrieve_avg_logprobs(list(stored), torch.tensor(tokens), temperature)
        ours = np.mean([D.token_logprob(r, t, top_k) for r, t in zip(scores, tokens)])
        assert ours == pytest.approx(float(ref), abs=1e-5)


def test_fallback_decisions_match_transformers(model):
    """needs_fallback against transformers' _need_fallback on identical candidates: every
    combination of thresholds below, above and between the candidates' statistics."""
    _, hf, _ = model
    rng = np.random.default_rng(1)
    no_speech = transformers.generation.logits_process.WhisperNoSpeechDetection(406, 4)
    seen = set()
    for tokens in ([5, 6] * 20 + [300], list(rng.integers(0, 300, 30)) + [300]):
        scores = _scores(rng, len(tokens))
        scores[np.arange(len(tokens)), tokens] = rng.normal(0, 2, len(tokens))
        cand = D.Candidate(tokens, float(np.mean([D.token_logprob(r, t)
                                                  for r, t in zip(scores, tokens)])))
        outputs = [{"scores": list(torch.tensor(scores))}]
        for ns_prob in (0.1, 0.7):
            no_speech._no_speech_prob = torch.tensor([ns_prob])
            for cr, lp, ns in np.array(np.meshgrid([None, 1.0, 3.0, 100.0],
                                                    [None, -20.0, cand.avg_logprob + 0.01, 0.0],
                                                    [None, 0.05, 0.5]), object).T.reshape(-1, 3):
                if ns is not None and lp is None:
                    continue                        # transformers fails; we refuse (see below)
                cfg = SimpleNamespace(compression_ratio_threshold=cr, logprob_threshold=lp,
                                      no_speech_threshold=ns)
                ref = hf._need_fallback(torch.tensor(tokens), outputs, 0, [no_speech], cfg, 1909,
                                        0.0)
                opts = D.DecodingOptions(timestamps=False, compression_ratio_threshold=cr,
                                         logprob_threshold=lp, no_speech_threshold=ns)
                got = D.needs_fallback(cand, ns_prob, opts, 1909)
                assert got == tuple(bool(x) for x in ref), (cr, lp, ns, ns_prob)
                seen.add(got)
    assert seen == {(False, False), (True, False), (False, True)}


def test_no_speech_probability_matches_transformers(model):
    """P(<|nospeech|>) at <|startoftranscript|>, behind a prompt, as WhisperNoSpeechDetection
    computes it on the first step."""
    ours, hf, _ = model
    feats = _features(ours.config, seed=4)
    init = [int(t) for t in ours.init_tokens(feats, language="en")[0]]
    for prefix in ([], _prompt(ours)):
        ids = prefix + init
        det = transformers.generation.logits_process.WhisperNoSpeechDetection(
            ours.generation_config.no_timestamps_token_id - 1, len(init))
        det.set_model(hf)
        det.set_begin_index(len(ids))
        det.set_inputs({"inputs": torch.tensor(feats), "input_ids": torch.tensor([ids])})
        with torch.no_grad():
            det(torch.tensor([ids]), torch.zeros(1, ours.config.vocab_size))
        cross = W.cross_attention_kv(ours.encode(feats), ours.weights, ours.config)
        got = D.no_speech_probability(cross, ids, len(prefix), ours.weights, ours.config,
                                      ours.generation_config)
        assert got == pytest.approx(float(det.no_speech_prob[0]), rel=1e-4)


# ---------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------
def test_sampled_first_tokens_follow_transformers_distribution(model):
    """1500 first tokens drawn by our sampling loop at temperature 1.5: their frequencies
    against softmax(top-50(rules(logits)) / 1.5) from transformers' own logits and processors
    (chi-square, merged bins of >= 5 expected draws); nothing outside the top 50."""
    from scipy import stats
    ours, hf, _ = model
    gc, lp = ours.generation_config, transformers.generation.logits_process
    feats = _features(ours.config, seed=5)
    prompt = [int(t) for t in ours.init_tokens(feats, language="en")[0]]
    with torch.no_grad():
        logits = hf(input_features=torch.tensor(feats),
                    decoder_input_ids=torch.tensor([prompt])).logits[:, -1]
    ids = torch.tensor([prompt])
    for proc in (lp.SuppressTokensAtBeginLogitsProcessor(gc.begin_suppress_tokens, len(prompt)),
                 lp.SuppressTokensLogitsProcessor(gc.suppress_tokens),
                 lp.TemperatureLogitsWarper(1.5), lp.TopKLogitsWarper(50)):
        logits = proc(ids, logits)
    expected = torch.softmax(logits, -1)[0].double().numpy()                        # [V]
    expected /= expected.sum()
    cross = W.cross_attention_kv(ours.encode(feats), ours.weights, ours.config)
    rng, n = np.random.default_rng(0), 1500
    draws = [D.sample(cross, prompt, ours.weights, ours.config, gc, len(prompt) + 1, False,
                      1.5, 50, rng).tokens[0] for _ in range(n)]
    counts = np.bincount(draws, minlength=expected.size)
    assert counts[expected == 0].sum() == 0 and (expected > 0).sum() == 50
    big = expected * n >= 5
    f_obs, f_exp = counts[big], expected[big] * n
    if expected[~big].sum() > 0:
        f_obs = np.append(f_obs, counts[~big].sum())
        f_exp = np.append(f_exp, expected[~big].sum() * n)
    assert big.sum() >= 10                           # a spread distribution, not one token
    assert stats.chisquare(f_obs, f_exp).pvalue > 1e-3


def test_sampling_is_reproducible_with_a_seed(model):
    ours, _, _ = model
    feats = _features(ours.config, seed=6)
    kw = dict(language="en", temperature=1.0, max_new_tokens=10)
    a = ours.generate(feats, seed=3, **kw)
    np.testing.assert_array_equal(a, ours.generate(feats, generator=np.random.default_rng(3),
                                                   **kw))
    assert _differ(a, ours.generate(feats, seed=4, **kw))
    assert _differ(a, ours.generate(feats, language="en", max_new_tokens=10))


# ---------------------------------------------------------------------------------------------
# the generation config's defaults
# ---------------------------------------------------------------------------------------------
def test_generation_config_fields_are_defaults(model, tmp_path):
    """num_beams, length_penalty, condition_on_prev_tokens and compression_ratio_threshold in
    generation_config.json apply when generate() leaves them unset, as in transformers (and
    without a warning); arguments override them.  logprob_threshold and no_speech_threshold
    from the config apply too (transformers 5.25 fails on them unless they are arguments: it
    keeps no scores for them), checked against passing them as arguments."""
    ours, _, path = model
    d = tmp_path / "configured"
    d.mkdir()
    for f in path.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    gen = json.loads((path / "generation_config.json").read_text())
    gen.update(num_beams=3, length_penalty=0.5, condition_on_prev_tokens=True,
               compression_ratio_threshold=0.5)
    (d / "generation_config.json").write_text(json.dumps(gen))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        configured = W.from_pretrained(d)
    hf = F.load_hf(d)
    short = _features(ours.config, batch=2)
    got = _same_as_transformers(configured, hf, short, language="en")
    np.testing.assert_array_equal(got, ours.generate(short, language="en", num_beams=3,
                                                     length_penalty=0.5))
    np.testing.assert_array_equal(configured.generate(short, language="en", num_beams=1,
                                                      length_penalty=1.0),
                                  ours.generate(short, language="en"))
    feats = _features(ours.config, frames=LONG_FRAMES, seed=2)
    _same_as_transformers(configured, hf, feats, language="en", temperature=(0.0, 1e-6))
    configured.generation_config.logprob_threshold = -5.0
    configured.generation_config.no_speech_threshold = 2.5e-4
    np.testing.assert_array_equal(
        _ours(configured, feats, language="en"),
        _ours(ours, feats, language="en", num_beams=3, length_penalty=0.5,
              condition_on_prev_tokens=True, compression_ratio_threshold=0.5,
              logprob_threshold=-5.0, no_speech_threshold=2.5e-4))


# ---------------------------------------------------------------------------------------------
# transcribe(): openai-whisper's argument names, the text prompt, word timestamps
# ---------------------------------------------------------------------------------------------
def _audio(seconds=8.0):
    """The committed speech clip between stretches of noise, as 16-kHz samples."""
    speech = W.load_audio(FIXTURES / "whisper" / "speech.wav")
    rng = np.random.default_rng(0)
    noise = 0.05 * rng.standard_normal(int(16000 * seconds) - 2 * speech.size)
    return np.concatenate([speech, noise, speech]).astype(np.float32)


def test_transcribe_arguments_match_transformers(model):
    """beam_size, condition_on_previous_text and a text initial_prompt (tokenized as
    transformers' WhisperTokenizerFast.get_prompt_ids does) give transformers' long-form
    generate() on the same log-mel."""
    ours, hf, path = model
    audio = _audio()
    text = "the quick brown fox"
    tok = transformers.WhisperTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    prompt_ids = tok.get_prompt_ids(text, return_tensors="pt")
    feats = W.log_mel_spectrogram(audio, n_samples=None)[None]                # [1, 80, frames]
    assert feats.shape[2] > ours.config.n_audio_frames
    with torch.no_grad():
        ref = hf.generate(torch.tensor(feats), language="en", return_timestamps=True,
                          return_segments=True, num_beams=2, condition_on_prev_tokens=True,
                          prompt_ids=prompt_ids)
    res = ours.transcribe(audio, language="en", beam_size=2, condition_on_previous_text=True,
                          initial_prompt=text, progress=False)
    np.testing.assert_array_equal(res.tokens, ref["sequences"][0].numpy())
    assert [s.tokens for s in res.segments] == [r["tokens"].tolist() for r in ref["segments"][0]]
    assert len(res.segments) > 1
    assert all(s.words is None for s in res.segments)
    plain = ours.transcribe(audio, language="en", progress=False)
    assert not np.array_equal(plain.tokens, res.tokens)


class _FakeTiming(types.ModuleType):
    """Stands in for timing.py: records each call and gives every segment one word."""

    def __init__(self):
        super().__init__("pyworkloads.models.whisper.timing")
        self.calls = []

    def add_word_timestamps(self, model, segments, window_features, prompt, n_frames, **kw):
        self.calls.append((segments, window_features.shape, list(prompt), n_frames, kw))
        for i, s in enumerate(segments):
            s["words"] = [dict(word=f" w{len(self.calls)}.{i}", start=s["start"], end=s["end"],
                               probability=0.5)]


def test_word_timestamps_are_asked_per_window(model, monkeypatch):
    """word_timestamps=True hands each decoded window's segments, log-mel, decoder prompt, frame
    count and time offset to timing.add_word_timestamps; the segments, and transcribe()'s
    Segment objects, keep the words it adds."""
    ours, _, _ = model
    fake = _FakeTiming()
    monkeypatch.setitem(sys.modules, "pyworkloads.models.whisper.timing", fake)
    feats = _features(ours.config, frames=LONG_FRAMES, seed=2)
    _, segs = ours.generate(feats, language="en", return_timestamps=True, return_segments=True,
                            max_new_tokens=LONG_NEW_TOKENS, condition_on_prev_tokens=True,
                            word_timestamps=True)
    assert len(fake.calls) > 1 and sum(len(c[0]) for c in fake.calls) == len(segs[0])
    n_win = ours.config.n_audio_frames
    init = [int(t) for t in ours.init_tokens(feats[:, :, :n_win], language="en",
                                             return_timestamps=True)[0]]
    prev = None
    for k, (segments, shape, prompt, n_frames, kw) in enumerate(fake.calls):
        assert shape == (1, ours.config.num_mel_bins, n_win) and 0 < n_frames <= n_win
        assert prompt[-len(init):] == init and (k == 0) == (prompt == init)
        assert kw["time_offset"] <= segments[0]["start"]
        assert prev is None or kw["time_offset"] > prev
        prev = kw["time_offset"]
    assert all(len(s["words"]) == 1 for s in segs[0])
    n_calls = len(fake.calls)
    res = ours.transcribe(_audio(), language="en", word_timestamps=True, progress=False)
    assert [s.words for s in res.segments] == [s["words"] for c in fake.calls[n_calls:]
                                               for s in c[0]]


def test_word_timestamps_with_timing_module(model):
    pytest.importorskip("pyworkloads.models.whisper.timing", reason="timing.py not yet present")
    ours, _, _ = model
    audio = _audio()
    res = ours.transcribe(audio, language="en", word_timestamps=True, progress=False)
    words = [w for s in res.segments for w in s.words]
    assert words
    for w in words:
        assert set(w) == {"word", "start", "end", "probability"}
        assert 0.0 <= w["start"] <= w["end"] <= audio.size / 16000 + 30.0
        assert 0.0 <= w["probability"] <= 1.0


# ---------------------------------------------------------------------------------------------
# bad arguments
# ---------------------------------------------------------------------------------------------
BAD_GENERATE = [
    (dict(num_beams=0), ValueError, "num_beams"),
    (dict(num_beams=2.0), ValueError, "num_beams"),
    (dict(num_beams=True), ValueError, "num_beams"),
    (dict(length_penalty=float("nan")), ValueError, "length_penalty"),
    (dict(early_stopping="sometimes"), ValueError, "early_stopping"),
    (dict(temperature=-0.2), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(temperature=(0.0, float("inf"))), ValueError, r"temperature\[1\]"),
    (dict(temperature=()), ValueError, "temperature"),
    (dict(temperature="hot"), ValueError, "temperature"),
    (dict(compression_ratio_threshold=float("nan")), ValueError, "compression_ratio_threshold"),
    (dict(logprob_threshold=float("nan")), ValueError, "logprob_threshold"),
    (dict(no_speech_threshold=1.5, logprob_threshold=-1.0), ValueError, "no_speech_threshold"),
    (dict(no_speech_threshold=0.6), ValueError, "logprob_threshold"),
    (dict(condition_on_prev_tokens="yes"), ValueError, "condition_on_prev_tokens"),
    (dict(prompt_ids=[405, 5000]), ValueError, "prompt_ids"),
    (dict(prompt_ids=[[405, 7]]), ValueError, "prompt_ids"),
    (dict(prompt_ids=[405.0, 7.0]), TypeError, "prompt_ids"),
    (dict(prompt_ids="hello"), TypeError, "prompt_ids"),
    (dict(prompt_ids=[405] * 70), ValueError, "context"),
    (dict(prompt_condition_type="every-segment"), ValueError, "prompt_condition_type"),
    (dict(prompt_condition_type="all-segments"), ValueError, "condition_on_prev_tokens"),
    (dict(seed=1, generator=np.random.default_rng(1)), ValueError, "seed or generator"),
    (dict(generator=1), TypeError, "generator"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(word_timestamps=1), ValueError, "word_timestamps"),
]


@pytest.mark.parametrize("kw, exc, match", BAD_GENERATE, ids=[m for _, _, m in BAD_GENERATE])
def test_bad_generate_arguments(model, kw, exc, match):
    ours, _, _ = model
    with pytest.raises(exc, match=match):
        ours.generate(_features(ours.config), language="en", **kw)


def test_bad_transcribe_arguments(model):
    ours, _, _ = model
    audio = np.zeros(16000, np.float32)
    with pytest.raises(ValueError, match="beam_size"):
        ours.transcribe(audio, num_beams=3, beam_size=2, progress=False)
    with pytest.raises(ValueError, match="condition_on_previous_text"):
        ours.transcribe(audio, condition_on_prev_tokens=True, condition_on_previous_text=False,
                        progress=False)
    with pytest.raises(TypeError, match="initial_prompt"):
        ours.transcribe(audio, initial_prompt=[1, 2], progress=False)
    with pytest.raises(ValueError, match="special token"):
        ours.transcribe(audio, initial_prompt="hello <|en|>", progress=False)
    bare = W.Whisper(ours.config, ours.weights, ours.generation_config)           # no tokenizer
    with pytest.raises(ValueError, match="tokenizer"):
        bare.transcribe(audio, initial_prompt="hello", progress=False)
