"""Whisper without torch: the committed fixture (transformers' outputs stored by
tests/fixtures/make_whisper_fixture.py), cache consistency, backends, profiling scopes, the
command-line hooks and clear errors for bad input."""
from __future__ import annotations

import argparse
import json
import shutil
import warnings

import numpy as np
import pytest
from conftest import FIXTURES
from tolerances import gamma, log_mel_tolerance

import pyworkloads as pw
from pyworkloads import audio as A
from pyworkloads import io
from pyworkloads.models import common
from pyworkloads.models import whisper as W

FIX = FIXTURES / "whisper"


@pytest.fixture(scope="module")
def tiny():
    return W.from_pretrained(FIX / "tiny")


@pytest.fixture(scope="module")
def expected():
    return io.load_safetensors(FIX / "expected.safetensors")


@pytest.fixture(scope="module")
def speech_features(tiny):
    audio = W.load_audio(FIX / "speech.wav")
    return W.log_mel_spectrogram(audio, tiny.config.num_mel_bins)[None]          # [1, 80, 3000]


# ---------------------------------------------------------------------------------------------
# parity with stored transformers outputs
# ---------------------------------------------------------------------------------------------
def _exact_power(audio) -> np.ndarray:
    """|STFT|² in float64 of Whisper's 3000 frames of 30 s: reflect padding, periodic Hann
    window, hop 160 -> [3000, bins], bins = n_fft / 2 + 1."""
    x = np.pad(A.pad_or_trim(audio).astype(np.float64), A.N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, A.N_FFT)[::A.HOP_LENGTH][:A.N_FRAMES]
    spec = np.fft.rfft(frames * A.hann_window(A.N_FFT), axis=-1)                # [3000, bins]
    return spec.real ** 2 + spec.imag ** 2


def test_fixture_log_mel(speech_features, expected):
    """Our log-mel of the committed clip vs transformers' (a float32 FFT), element by element
    within that FFT's float32 error bound (derived in tests/tolerances.py)."""
    head = expected["input_features_head"][0]                                       # [80, 320]
    n = head.shape[1]
    power = _exact_power(W.load_audio(FIX / "speech.wav"))                       # [3000, bins]
    tol = log_mel_tolerance(power, A.mel_filters(80), A.N_FFT)[:, :n]               # [80, 320]
    err = np.abs(speech_features[0, :, :n].astype(np.float64) - head)
    assert np.all(err <= tol), np.abs(err - tol).max()
    assert np.median(err) <= 1e-5                 # most elements agree far inside the bound


def test_fixture_logits(tiny, speech_features, expected):
    logits = tiny(speech_features, expected["decoder_input_ids"])
    assert logits.shape == expected["logits"].shape and logits.dtype == np.float32
    # the inputs differ by the log-mel error above (<= ~4e-5, normalised by every LayerNorm), and
    # the same float32 network is summed in other orders: dot products of length <= 3·80 = 240
    # (γ_240 ≈ 1.4e-5 relative, worst case) on logits |·| <= 2.3; measured ≈ 1e-6
    assert np.abs(logits - expected["logits"]).max() <= 1e-4


def test_fixture_generate(tiny, speech_features, expected):
    plain = tiny.generate(speech_features, language="en", task="transcribe",
                          return_timestamps=False)
    np.testing.assert_array_equal(plain, expected["generate_notimestamps"])
    ts = tiny.generate(speech_features, language="en", return_timestamps=True)
    np.testing.assert_array_equal(ts, expected["generate_timestamps"])


@pytest.mark.skipif("cpp" not in pw.kernels.available(),
                    reason=f"cpp backend unavailable: {pw.kernels.unavailable_reason('cpp')}")
def test_cpp_backend_matches_numpy(tiny, speech_features, expected):
    ids = expected["decoder_input_ids"]
    ref = tiny(speech_features, ids)
    with pw.use_backend("cpp"), pw.profile() as prof:
        got = tiny(speech_features, ids)
    assert {r.backend for r in prof.records if r.op == "matmul"} == {"cpp"}
    # the same float32 network summed in the cpp kernels' order: dot products of length <= 240
    # (γ_240 ≈ 1.4e-5 relative, worst case) on logits |·| <= 2.3; measured ≈ 1.5e-6
    assert np.abs(got - ref).max() <= 1e-4


# ---------------------------------------------------------------------------------------------
# structure
# ---------------------------------------------------------------------------------------------
def test_kv_cache_matches_full_decode(tiny, speech_features):
    """Decoding one token at a time with the cache gives the teacher-forced logits."""
    ids = np.array([[tiny.config.decoder_start_token_id, 258, 359, 10, 20, 30, 40]])
    full = tiny(speech_features, ids)                                                   # [1, 7, V]
    w, c = tiny.weights, tiny.config
    cross = W.cross_attention_kv(tiny.encode(speech_features), w, c)
    cache = W.decoder_cache(c, 1)
    steps = [W.decoder(ids[:, :3], cross, w, c, cache)]                         # prompt in one go
    for t in range(3, ids.shape[1]):
        steps.append(W.decoder(ids[:, t:t + 1], cross, w, c, cache))
    assert cache.length == ids.shape[1]
    # the same sums with one row per GEMM instead of seven: the decoder's dot products have
    # length <= 64 (γ_64 ≈ 3.8e-6 relative) on logits |·| <= 2.8; measured ≈ 8e-7
    assert np.abs(np.concatenate(steps, axis=1) - full).max() <= 1e-5


def test_decoder_last_only_is_the_last_row(tiny, speech_features):
    """last_only gives the last position's logits of the full call, to float32 rounding.  The
    vocabulary projection of one row and of T rows are the same length-D dot products summed in
    different orders, so each logit differs by at most 2·γ_D·Σ_i |h_i·E_vi| (Higham §3.1), h the
    final layer norm's output at the last position and E the tied embedding."""
    ids = np.array([[tiny.config.decoder_start_token_id, 258, 359, 10, 20, 30, 40],
                    [tiny.config.decoder_start_token_id, 259, 359, 11, 21, 31, 41]])
    w, c = tiny.weights, tiny.config
    feats = np.repeat(speech_features, 2, axis=0)                                   # [2, 80, 3000]
    cross = W.cross_attention_kv(tiny.encode(feats), w, c)
    full = W.decoder(ids, cross, w, c)                                                  # [2, 7, V]
    last = W.decoder(ids, cross, w, c, last_only=True)                                  # [2, 1, V]
    assert last.shape == (2, 1, c.vocab_size)
    x = W.model.decoder_embed(ids, w, 0)
    for i in range(c.decoder_layers):
        x = W.model.decoder_block(x, cross[i], w, f"model.decoder.layers.{i}", c)
    h = common.layer_norm(x[:, -1], w, "model.decoder.layer_norm", W.model.LN_EPS)     # [2, D]
    E = common.weight(w, "model.decoder.embed_tokens.weight")                           # [V, D]
    bound = 2 * gamma(c.d_model) * (np.abs(h) @ np.abs(E).T)                            # [2, V]
    assert np.all(np.abs(last[:, 0] - full[:, -1]) <= bound)
    np.testing.assert_array_equal(last[:, 0].argmax(-1), full[:, -1].argmax(-1))


def test_generation_projects_only_the_last_position(tiny, speech_features):
    """Greedy decoding multiplies one row per step by the vocabulary matrix, the prompt's step
    included."""
    with pw.profile() as prof:
        out = tiny.generate(speech_features, language="en", return_timestamps=False)
    proj = [r for r in prof.records if r.name == "proj_out" and r.op == "matmul"]
    assert len(proj) >= out.shape[1] and all(r.shapes[0][0] == 1 for r in proj)


def test_cross_attention_kv_computed_once_per_window(tiny, speech_features):
    """During generate, the cross-attention K/V projections over the 1500 audio positions run once
    per layer per window; each step only projects its own query."""
    with pw.profile() as prof:
        out, segs = tiny.generate(speech_features, language="en", return_timestamps=True,
                                  return_segments=True)
    S, D = tiny.config.max_source_positions, tiny.config.d_model
    cross = "model.decoder.layers.0.encoder_attn"
    kv = [r for r in prof.records if r.name == cross and r.op == "matmul" and r.shapes[0] == (S, D)]
    windows = sum(1 for r in prof.records if r.name == "model.encoder.conv2" and r.op == "matmul")
    assert windows >= 1 and len(kv) == 2 * windows
    steps = [r for r in prof.records if r.name == cross and r.op == "attention"]
    assert len(steps) >= out.shape[1]


def test_profile_scopes_use_hf_module_names(tiny, speech_features, expected):
    with pw.profile() as prof:
        tiny(speech_features, expected["decoder_input_ids"])
    names = {r.name for r in prof.records}
    for n in ("model.encoder.conv1", "model.encoder.conv2", "model.encoder.layers.0.self_attn",
              "model.encoder.layers.0.self_attn_layer_norm", "model.encoder.layers.0.fc1",
              "model.encoder.layers.0.fc2", "model.encoder.layer_norm",
              "model.decoder.layers.0.self_attn", "model.decoder.layers.0.encoder_attn",
              "model.decoder.layers.0.encoder_attn_layer_norm",
              "model.decoder.layers.0.final_layer_norm", "model.decoder.layer_norm", "proj_out"):
        assert n in names, n
    weights = set(tiny.weights)
    for n in names - {"proj_out"}:                  # every scope is a module whose weights exist
        assert any(k.startswith(n + ".") for k in weights), n


def test_sinusoids_closed_form():
    pe = W.sinusoids(1500, 384)
    i, c = 123, 7
    inc = np.log(10000.0) / (192 - 1)
    # float64 computation rounded once to float32: |error| <= U32 · |sin| < 6e-8
    assert abs(pe[i, c] - np.sin(i * np.exp(-inc * c))) < 1e-6
    assert abs(pe[i, 192 + c] - np.cos(i * np.exp(-inc * c))) < 1e-6


def test_special_token_layout_matches_openai_vocabularies():
    """The layout reproduces the real checkpoints' ids (OpenAI tokenizer: eot 50257, sot 50258,
    <|en|> 50259, translate 50358, transcribe 50359, notimestamps 50363 for 99 languages)."""
    ids = W.special_token_ids(50257, 99)
    assert (ids["eot"], ids["sot"], ids["languages"][0], ids["translate"], ids["transcribe"],
            ids["notimestamps"], ids["vocab_size"]) == (50257, 50258, 50259, 50358, 50359, 50363,
                                                        51865)
    assert W.special_token_ids(50257, 100)["vocab_size"] == 51866
    assert W.special_token_ids(50256, 99)["vocab_size"] == 51864
    gc = W.default_generation_config(W.PRESETS["whisper-large-v3"])
    assert gc.lang_to_id["<|yue|>"] == 50358 and gc.no_timestamps_token_id == 50364
    en = W.default_generation_config(W.PRESETS["whisper-tiny.en"])
    assert en.is_multilingual is False and en.lang_to_id is None
    assert en.decoder_start_token_id == 50257


# ---------------------------------------------------------------------------------------------
# transcription, demo, command line
# ---------------------------------------------------------------------------------------------
def test_transcribe_short_clip(tiny):
    res = tiny.transcribe(FIX / "speech.wav", progress=False)
    assert res.language in W.LANGUAGES
    assert res.segments and all(s.start <= s.end for s in res.segments)
    eot = tiny.generation_config.eos_token_id
    assert res.text == tiny.decode([t for s in res.segments for t in s.tokens if t < eot])
    again = tiny.transcribe(W.load_audio(FIX / "speech.wav"), language=res.language, progress=False)
    assert again.text == res.text and again.language == res.language


def test_demo_runs_quickly():
    out = W.demo()
    assert "whisper-tiny-random" in out and "(1, 1500, 64)" in out


def test_run_cli_prints_segments(capsys):
    parser = argparse.ArgumentParser()
    W.add_run_arguments(parser)
    args = parser.parse_args(["--model", str(FIX / "tiny"), str(FIX / "speech.wav"),
                              "--language", "en", "--no-progress"])
    assert W.run_cli(args) == 0
    out = capsys.readouterr().out
    assert "-->" in out and "language: en" in out


def test_pyworkloads_run_whisper_command(capsys):
    from pyworkloads import cli
    rc = cli.main(["run", "whisper", "--model", str(FIX / "tiny"), str(FIX / "speech.wav"),
                   "--language", "en", "--no-progress"])
    assert rc == 0
    assert "-->" in capsys.readouterr().out
    assert cli.main(["run", "whisper", "--model", str(FIX / "tiny"), str(FIX / "missing.wav")]) == 2
    assert "no such audio file" in capsys.readouterr().err


def test_long_form_walks_every_window_with_progress(tiny, capsys):
    """40 s of audio: more than one 30-s window, decoded sequentially with a progress bar; the
    segments are ordered and the windows reach the end of the clip."""
    speech = W.load_audio(FIX / "speech.wav")
    audio = np.concatenate([speech, np.zeros(16000 * 30, np.float32), speech, speech])
    res = tiny.transcribe(audio, language="en", progress=True)
    assert "transcribing" in capsys.readouterr().err                                   # tqdm's bar
    starts = [s.start for s in res.segments]
    assert starts == sorted(starts) and all(s.start <= s.end for s in res.segments)
    assert max(s.end for s in res.segments) >= 30.0                     # past the first window
    mel = W.log_mel_spectrogram(audio, n_samples=None)[None]          # [1, 80, samples / 160]
    _, segs = tiny.generate(mel, language="en", return_timestamps=True, return_segments=True)
    assert [s["tokens"] for s in segs[0]] == [s.tokens for s in res.segments]


# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------
def test_presets_and_counts():
    assert set(W.PRESETS) >= {"whisper-tiny", "whisper-tiny.en", "whisper-base", "whisper-base.en",
                              "whisper-small", "whisper-small.en", "whisper-medium",
                              "whisper-medium.en", "whisper-large-v2", "whisper-large-v3",
                              "whisper-large-v3-turbo"}
    assert W.PRESETS["whisper-large-v3"].num_mel_bins == 128
    assert W.PRESETS["whisper-large-v3-turbo"].decoder_layers == 4
    for name, c in W.PRESETS.items():
        assert W.count_params(c) == _count_params_closed_form(c), name


def _count_params_closed_form(c) -> int:
    """The parameter count from the architecture, independently of weight_shapes: the encoder's
    sinusoidal table (S x D) counted, as HF registers it as a parameter; proj_out tied."""
    D = c.d_model
    attn = 4 * D * D + 3 * D                      # q, k, v, out weights; biases on q, v, out
    enc_layer = attn + 2 * 2 * D + (D * c.encoder_ffn_dim + c.encoder_ffn_dim) \
        + (c.encoder_ffn_dim * D + D)
    dec_layer = 2 * attn + 3 * 2 * D + (D * c.decoder_ffn_dim + c.decoder_ffn_dim) \
        + (c.decoder_ffn_dim * D + D)
    encoder = (c.num_mel_bins * D * 3 + D) + (D * D * 3 + D) + c.max_source_positions * D \
        + c.encoder_layers * enc_layer + 2 * D
    decoder = c.vocab_size * D + c.max_target_positions * D + c.decoder_layers * dec_layer + 2 * D
    return encoder + decoder + (0 if c.tie_word_embeddings else c.vocab_size * D)


def test_config_from_hf_roundtrip():
    cfg = W.PRESETS["whisper-small"]
    assert W.Config.from_hf(cfg.to_hf()) == cfg
    with pytest.raises(ValueError, match="model_type"):
        W.Config.from_hf({"model_type": "llama"})
    with pytest.raises(ValueError, match="divisible"):
        W.Config(d_model=64, encoder_attention_heads=5)


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def test_bad_model_inputs(tiny, speech_features):
    ids = np.array([[tiny.config.decoder_start_token_id]])
    with pytest.raises(ValueError, match=r"\[B, 80, frames\]"):
        tiny(np.zeros((1, 128, 3000), np.float32), ids)
    with pytest.raises(ValueError, match="3000 frames"):
        tiny(np.zeros((1, 80, 2999), np.float32), ids)
    with pytest.raises(TypeError, match="float"):
        tiny(np.zeros((1, 80, 3000), np.int32), ids)
    bad = speech_features.copy()
    bad[0, 3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        tiny(bad, ids)
    with pytest.raises(ValueError, match=r"\[0, 1909\)"):
        tiny(speech_features, np.array([[5000]]))
    with pytest.raises(TypeError, match="integer"):
        tiny(speech_features, np.array([[1.0]]))
    with pytest.raises(ValueError, match="context"):
        tiny(speech_features, np.zeros((1, 65), np.int64))
    with pytest.raises(ValueError, match="unknown"):
        tiny.generate(speech_features, language="klingon")
    with pytest.raises(ValueError, match="task"):
        tiny.generate(speech_features, language="en", task="summarize")
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny.generate(speech_features, language="en", max_new_tokens=1000)
    with pytest.raises(ValueError, match="long-form"):
        tiny.generate(np.zeros((1, 80, 4000), np.float32), return_timestamps=False)
    with pytest.raises(ValueError, match="empty"):
        tiny.transcribe(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        tiny.transcribe(np.full(1000, np.nan, np.float32))
    with pytest.raises(FileNotFoundError):
        tiny.transcribe(FIX / "missing.wav")


def test_bad_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError):
        W.from_pretrained(tmp_path / "nothing")
    d = tmp_path / "ckpt"
    shutil.copytree(FIX / "tiny", d)
    st = io.load_safetensors(d / "model.safetensors")
    weights = {k: np.array(st[k]) for k in st}
    del weights["model.decoder.layers.0.fc1.bias"]
    io.save_safetensors(d / "model.safetensors", weights)
    with pytest.raises(ValueError, match="fc1.bias"):
        W.from_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["d_model"] = 48
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="shape|lack"):
        W.from_pretrained(d)
    with pytest.raises(ValueError, match="unknown Whisper preset"):
        W.from_preset("whisper-huge")


def test_english_only_checkpoint():
    m = W.from_preset("whisper-tiny-random")
    gen = W.make_generation_config(256, multilingual=False)
    m.generation_config = W.GenerationConfig.from_dict(gen)
    feats = np.zeros((1, 80, 3000), np.float32)
    with pytest.raises(ValueError, match="English-only"):
        m.generate(feats, language="en")              # as transformers: no language on .en models
    with pytest.raises(ValueError, match="English-only"):
        m.detect_language(feats)
    with pytest.raises(ValueError, match="English-only"):
        m.transcribe(np.zeros(16000, np.float32), language="german", progress=False)
    np.testing.assert_array_equal(m.init_tokens(feats), [[257, 363]])          # sot, notimestamps
    res = m.transcribe(np.zeros(16000, np.float32), language="english", progress=False)
    assert res.language == "en"


def test_unsupported_decoding_settings_warn():
    gen = W.make_generation_config(256)
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # beams, thresholds, conditioning: supported
        W.GenerationConfig.from_dict({**gen, "num_beams": 5, "condition_on_prev_tokens": True,
                                      "no_speech_threshold": 0.6, "logprob_threshold": -1.0,
                                      "temperature": 1.0})
    with pytest.warns(UserWarning, match="repetition_penalty"):
        W.GenerationConfig.from_dict({**gen, "repetition_penalty": 1.2})
    with pytest.warns(UserWarning, match="num_return_sequences"):
        W.GenerationConfig.from_dict({**gen, "num_return_sequences": 2})
