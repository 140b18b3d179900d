"""Parity with transformers' WhisperForConditionalGeneration on tiny random checkpoints written to
disk and loaded by both sides: logits, greedy generate (prompt building, language detection,
suppression, timestamp rules, max length) and long-form transcription; exact parameter counts."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import FIXTURES, require_transformers

from pyworkloads.models import whisper as W

sys.path.insert(0, str(FIXTURES))
import make_whisper_fixture as F  # noqa: E402

torch, transformers = require_transformers()


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models on a shared machine: torch's thread pool only adds contention (20x slower
    here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _checkpoint(tmp_path, name, config, seed, generation=None, timestamp_scale=1.0):
    weights = F.tiny_weights(config, seed, timestamp_scale=timestamp_scale)
    path = F.write_checkpoint(tmp_path / name, config, weights, generation=generation)
    return W.from_pretrained(path), F.load_hf(path)


def _features(config, batch=1, seed=0):
    """Log-mel-like inputs (the encoder only sees numbers): values in the range real log-mels
    take."""
    rng = np.random.default_rng(seed)
    shape = (batch, config.num_mel_bins, config.n_audio_frames)
    return rng.uniform(-1.0, 1.5, shape).astype(np.float32)


def _hf_generate(hf, feats, **kw):
    with torch.no_grad():
        out = hf.generate(torch.tensor(feats), **kw)
    return out.numpy()


# ---------------------------------------------------------------------------------------------
# parameters and configs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in W.PRESETS])
def test_param_count_matches_transformers(name):
    cfg = W.PRESETS[name]
    with torch.device("meta"):
        hf_config = transformers.WhisperConfig(**cfg.to_hf())
        model = transformers.WhisperForConditionalGeneration(hf_config)
    assert W.count_params(cfg) == sum(p.numel() for p in model.parameters())
    # the checkpoint's tensors: everything but the tied proj_out
    hf_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "proj_out.weight"}
    assert hf_shapes == W.weight_shapes(cfg)


def test_config_from_transformers():
    hf = transformers.WhisperConfig(d_model=256, encoder_layers=3, decoder_layers=2,
                                    encoder_attention_heads=4, decoder_attention_heads=8,
                                    num_mel_bins=128, vocab_size=51866)
    cfg = W.Config.from_hf(hf.to_dict())
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.decoder_attention_heads,
            cfg.num_mel_bins, cfg.vocab_size, cfg.max_source_positions,
            cfg.max_target_positions) == (256, 3, 2, 8, 128, 51866, 1500, 448)


# ---------------------------------------------------------------------------------------------
# logits
# ---------------------------------------------------------------------------------------------
LOGIT_CONFIGS = {
    "80mels-enc2x4h-dec1x2h": dict(num_mel_bins=80, encoder_layers=2, encoder_attention_heads=4,
                                   decoder_layers=1, decoder_attention_heads=2,
                                   max_source_positions=100),
    "128mels-enc1x2h-dec3x8h": dict(num_mel_bins=128, encoder_layers=1, encoder_attention_heads=2,
                                    decoder_layers=3, decoder_attention_heads=8,
                                    decoder_ffn_dim=96, max_source_positions=50),
    "80mels-d48-enc3x3h-dec2x6h": dict(num_mel_bins=80, d_model=48, encoder_layers=3,
                                       encoder_attention_heads=3, encoder_ffn_dim=80,
                                       decoder_layers=2, decoder_attention_heads=6,
                                       max_source_positions=64),
}


@pytest.mark.parametrize("name", list(LOGIT_CONFIGS))
def test_logits_match_transformers(tmp_path, name):
    cfg = F.tiny_config(**LOGIT_CONFIGS[name])
    ours, hf = _checkpoint(tmp_path, name, cfg, seed=3)
    feats = _features(cfg, batch=2, seed=1)
    rng = np.random.default_rng(2)
    ids = rng.integers(0, cfg.vocab_size, (2, 12))
    ids[:, 0] = cfg.decoder_start_token_id
    got = ours(feats, ids)
    with torch.no_grad():
        ref = hf(input_features=torch.tensor(feats),
                 decoder_input_ids=torch.tensor(ids)).logits.numpy()
        enc = hf.model.encoder(torch.tensor(feats)).last_hidden_state.numpy()
    assert got.shape == ref.shape == (2, 12, cfg.vocab_size)
    # the same float32 network summed in torch's order and ours: a few layers of dot products of
    # length <= 3·128 = 384 (γ_384 ≈ 2.3e-5 relative, worst case) on encoder outputs and logits
    # of magnitude <= 5; measured <= 3.5e-6
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    assert np.abs(ours.encode(feats) - enc).max() <= 1e-4
    assert np.abs(got).max() > 1.0                      # not a trivially flat model


# ---------------------------------------------------------------------------------------------
# greedy generate
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gen_model(tmp_path_factory):
    cfg = F.tiny_config(max_source_positions=100)
    return _checkpoint(tmp_path_factory.mktemp("gen"), "gen", cfg, seed=11, timestamp_scale=0.6)


GENERATE_CASES = {
    "en-transcribe": dict(language="en", task="transcribe", return_timestamps=False),
    "german-name-translate": dict(language="german", task="translate"),
    "fr-token-timestamps": dict(language="<|fr|>", return_timestamps=True),
    "detect-language": dict(),
    "detect-language-timestamps": dict(return_timestamps=True),
    "task-only-detects-language": dict(task="transcribe", return_timestamps=True),
    "max-new-tokens": dict(language="es", max_new_tokens=5),
    "max-new-tokens-timestamps": dict(language="es", max_new_tokens=7, return_timestamps=True),
    "max-length": dict(language="en", max_length=12),
    "max-length-timestamps": dict(max_length=9, return_timestamps=True),
}


@pytest.mark.parametrize("case", list(GENERATE_CASES))
def test_generate_matches_transformers(gen_model, case):
    ours, hf = gen_model
    kw = GENERATE_CASES[case]
    for seed in (0, 1):
        feats = _features(ours.config, batch=1, seed=seed)
        ref = _hf_generate(hf, feats, **kw)
        got = ours.generate(feats, **kw)
        np.testing.assert_array_equal(got, ref, err_msg=f"{case}, seed {seed}")
        gc = ours.generation_config
        assert not np.isin(got, gc.suppress_tokens).any()


def test_generate_batch_matches_transformers(gen_model):
    """A batch of different inputs: per-row language detection, rows finishing at different steps
    (right-padded with pad_token_id)."""
    ours, hf = gen_model
    feats = _features(ours.config, batch=3, seed=5)
    for kw in (dict(), dict(return_timestamps=True), dict(language="en", max_new_tokens=9),
               dict(language=["en", "de", "japanese"], return_timestamps=True)):
        np.testing.assert_array_equal(ours.generate(feats, **kw), _hf_generate(hf, feats, **kw),
                                      err_msg=str(kw))


def test_detect_language_matches_transformers(gen_model):
    ours, hf = gen_model
    feats = _features(ours.config, batch=4, seed=9)
    with torch.no_grad():
        ref = hf.detect_language(torch.tensor(feats)).numpy()
    np.testing.assert_array_equal(ours.detect_language(feats), ref)


@pytest.mark.parametrize("variant", ["english-only", "no-initial-timestamp-limit",
                                     "legacy-forced-ids", "suppress-more", "128-mels"])
def test_generate_generation_config_variants(tmp_path, variant):
    """Other generation_config.json layouts: an English-only checkpoint (no lang_to_id, prompt
    from forced_decoder_ids), no max_initial_timestamp_index, explicit legacy forced language,
    more suppressed tokens, a 128-mel model."""
    cfg = F.tiny_config(max_source_positions=80)
    gen = W.make_generation_config(F.N_TEXT, suppress_text=(5, 17, 40), begin_suppress_text=(220,))
    if variant == "english-only":
        gen = W.make_generation_config(F.N_TEXT, multilingual=False, suppress_text=(3, 4))
    elif variant == "no-initial-timestamp-limit":
        del gen["max_initial_timestamp_index"]
    elif variant == "legacy-forced-ids":
        gen["forced_decoder_ids"] = [[1, gen["lang_to_id"]["<|de|>"]],
                                     [2, gen["task_to_id"]["translate"]]]
    elif variant == "suppress-more":
        gen["suppress_tokens"] = list(range(0, 300, 3)) + gen["suppress_tokens"]
        gen["begin_suppress_tokens"] = list(range(1, 300, 2)) + gen["begin_suppress_tokens"]
    elif variant == "128-mels":
        cfg = F.tiny_config(max_source_positions=80, num_mel_bins=128, decoder_layers=3,
                            decoder_attention_heads=2)
    ours, hf = _checkpoint(tmp_path, variant, cfg, seed=21, generation=gen, timestamp_scale=0.6)
    feats = _features(cfg, batch=2, seed=4)
    for kw in (dict(), dict(return_timestamps=True)):
        np.testing.assert_array_equal(ours.generate(feats, **kw), _hf_generate(hf, feats, **kw),
                                      err_msg=f"{variant} {kw}")
    if variant == "english-only":
        with pytest.raises(ValueError):
            hf.generate(torch.tensor(feats), language="en")     # transformers refuses as we do
        with pytest.raises(ValueError, match="English-only"):
            ours.generate(feats, language="en")


# ---------------------------------------------------------------------------------------------
# long-form
# ---------------------------------------------------------------------------------------------
def test_long_form_matches_transformers(tmp_path):
    """A 75-s clip (speech, noise, silence, speech): transformers' sequential long-form generate on
    its own features vs our transcribe() from the waveform -- same tokens, same segments, and the
    decoding walks through every 30-s window to the end."""
    from transformers import WhisperFeatureExtractor
    cfg = F.tiny_config(decoder_layers=1, encoder_layers=1)
    ours, hf = _checkpoint(tmp_path, "long", cfg, seed=5)
    speech = W.load_audio(FIXTURES / "whisper" / "speech.wav")
    rng = np.random.default_rng(0)
    parts = [speech, 0.05 * rng.standard_normal(16000 * 30), np.zeros(16000 * 10), speech,
             0.02 * rng.standard_normal(16000 * 27), speech]
    audio = np.concatenate(parts).astype(np.float32)
    duration = audio.size / 16000
    assert duration > 60
    feats = WhisperFeatureExtractor()(audio, sampling_rate=16000, truncation=False,
                                      padding="longest", return_tensors="pt").input_features
    with torch.no_grad():
        ref = hf.generate(feats, return_timestamps=True, return_segments=True)
    res = ours.transcribe(audio, progress=False)
    np.testing.assert_array_equal(res.tokens, ref["sequences"][0].numpy())
    ref_segs = ref["segments"][0]
    assert len(res.segments) == len(ref_segs) > 3
    for s, r in zip(res.segments, ref_segs):
        assert s.tokens == r["tokens"].tolist()
        # both sides add multiples of 10 ms and 20 ms in double precision (rounding ~1e-14 s)
        assert abs(s.start - float(r["start"])) < 1e-9 and abs(s.end - float(r["end"])) < 1e-9
    lang = ours.generation_config.lang_to_id
    with torch.no_grad():
        detected = int(hf.detect_language(feats[:, :, :3000])[0])
    assert f"<|{res.language}|>" in lang and lang[f"<|{res.language}|>"] == detected
    # every 30-s window of the clip was decoded: segments reach into each of them
    starts = sorted(s.start for s in res.segments)
    for k in range(int(np.ceil(duration / 30))):
        assert any(k * 30 <= t < (k + 1) * 30 for t in starts), f"no segment starts in window {k}"
    # and generate() on our own features gives the same tokens as transcribe()
    mel = W.log_mel_spectrogram(audio, n_samples=None)[None]
    np.testing.assert_array_equal(ours.generate(mel, return_timestamps=True)[0], res.tokens)


def test_make_generation_config_is_accepted_by_transformers(tmp_path):
    gen = W.make_generation_config(F.N_TEXT)
    (tmp_path / "generation_config.json").write_text(json.dumps(gen))
    g = transformers.GenerationConfig.from_pretrained(str(tmp_path))
    assert g.no_timestamps_token_id == gen["no_timestamps_token_id"]
    assert g.lang_to_id == gen["lang_to_id"]
