"""Audio front end: log-mel parity with transformers' WhisperFeatureExtractor, loading and
resampling checked against closed forms (pure tones), and clear errors for bad input."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from conftest import FIXTURES, require_transformers
from tolerances import U32, log_mel_tolerance

from pyworkloads import audio as A

SR = 16000


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """transformers' feature extractor runs torch.stft; on a shared machine one thread is faster."""
    try:
        import torch
    except ImportError:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SPEECH = FIXTURES / "whisper" / "speech.wav"


def _signals():
    """Several kinds of audio: synthetic speech, noise, a tone, a chirp, quiet and very quiet
    signals, silence, a clipped loud signal, a click, and clips longer than 30 s."""
    rng = np.random.default_rng(0)
    t = np.arange(SR * 7) / SR
    sig = {
        "speech": A.load_audio(SPEECH),
        "noise": 0.3 * rng.standard_normal(SR * 10),
        "tone": 0.5 * np.sin(2 * np.pi * 440 * t),
        "chirp": 0.3 * np.sin(2 * np.pi * (100 + 500 * t) * t) * np.exp(-((t - 3) ** 2)),
        "quiet": 1e-4 * rng.standard_normal(SR * 5),
        "very_quiet": 1e-6 * np.sin(2 * np.pi * 100 * t),
        "silence": np.zeros(SR * 2),
        "clipped": np.clip(3.0 * rng.standard_normal(SR * 3), -1, 1),
        "click": np.r_[np.zeros(8000), 1.0, np.zeros(8000)],
        "long_noise_45s": 0.1 * rng.standard_normal(SR * 45),
        "short_300_samples": 0.5 * rng.standard_normal(300),
    }
    return {k: np.asarray(v, np.float32) for k, v in sig.items()}


# ---------------------------------------------------------------------------------------------
# parity with transformers
# ---------------------------------------------------------------------------------------------
def _exact_power(x: np.ndarray, n_samples: int | None = A.N_SAMPLES) -> np.ndarray:
    """|STFT|² in float64 of the frames Whisper uses (an independent transcription: reflect
    padding, periodic Hann window, hop 160, the last frame dropped) -> [frames, bins]."""
    x = x.astype(np.float64)
    if n_samples is not None:
        x = np.pad(x[:n_samples], (0, max(0, n_samples - x.size)))
    padded = np.pad(x, A.N_FFT // 2, mode="reflect")
    n = x.size // A.HOP_LENGTH
    idx = np.arange(n)[:, None] * A.HOP_LENGTH + np.arange(A.N_FFT)[None, :]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(A.N_FFT) / A.N_FFT)
    spec = np.fft.rfft(padded[idx] * window, axis=-1)
    return spec.real ** 2 + spec.imag ** 2


def _assert_log_mel_close(ours, ref, x, n_mels, name, n_samples=A.N_SAMPLES):
    """|ours - ref| within the float32 error bound of the reference (transformers computes in
    float32, we in float64), element by element -- see tests/tolerances.py for the derivation."""
    tol = log_mel_tolerance(_exact_power(x, n_samples), A.mel_filters(n_mels), A.N_FFT)
    err = np.abs(ours.astype(np.float64) - ref)
    worst = np.unravel_index(np.argmax(err / tol), err.shape)
    assert np.all(err <= tol), (f"{name}: |diff| {err[worst]:.3g} at {worst} exceeds the float32 "
                                f"bound {tol[worst]:.3g} (max abs diff {err.max():.3g})")
    # the bound is tight enough to mean something: most elements must agree to ~1e-5
    assert np.median(err) <= 1e-5, f"{name}: median abs diff {np.median(err):.3g}"


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_transformers(n_mels):
    require_transformers()
    from transformers import WhisperFeatureExtractor
    fe = WhisperFeatureExtractor(feature_size=n_mels)
    for name, x in _signals().items():
        ref = fe(x, sampling_rate=SR, return_tensors="np").input_features[0]          # [Mel, 3000]
        ours = A.log_mel_spectrogram(x, n_mels)
        assert ours.shape == ref.shape == (n_mels, 3000), name
        assert ours.dtype == np.float32
        _assert_log_mel_close(ours, ref, x, n_mels, name)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_untruncated_long_clip_matches_transformers(n_mels):
    """Long-form input: the whole clip, no 30-s trim (truncation=False, padding="longest")."""
    require_transformers()
    from transformers import WhisperFeatureExtractor
    rng = np.random.default_rng(1)
    x = np.concatenate([A.load_audio(SPEECH), 0.05 * rng.standard_normal(SR * 40),
                        np.zeros(12345)]).astype(np.float32)
    ref = WhisperFeatureExtractor(feature_size=n_mels)(
        x, sampling_rate=SR, truncation=False, padding="longest",
        return_tensors="np").input_features[0]
    # chunking must not matter
    ours = A.log_mel_spectrogram(x, n_mels, n_samples=None, chunk_frames=1000)
    assert ours.shape == ref.shape == (n_mels, x.size // 160)
    _assert_log_mel_close(ours, ref, x, n_mels, "long clip", n_samples=None)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_match_transformers(n_mels):
    require_transformers()
    from transformers.audio_utils import mel_filter_bank
    ref = mel_filter_bank(num_frequency_bins=201, num_mel_filters=n_mels, min_frequency=0.0,
                          max_frequency=8000.0, sampling_rate=SR, norm="slaney",
                          mel_scale="slaney")                                       # [bins, Mel]
    # both are float64 evaluations of the same Slaney formulas, a dozen operations per weight:
    # a few ulps (2^-52 ≈ 2e-16) relative; atol covers the cancellation where a triangle's
    # sides meet zero (weights <= 0.03, so a few ulps of them are < 1e-17)
    np.testing.assert_allclose(A.mel_filters(n_mels), ref.T, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# closed forms (no torch needed)
# ---------------------------------------------------------------------------------------------
def test_hann_window_is_periodic():
    from scipy.signal import get_window
    # float64 0.5 - 0.5·cos(2πn/N) two ways, values <= 1: a few ulps (2^-53 ≈ 1.1e-16) apart
    np.testing.assert_allclose(A.hann_window(400), get_window("hann", 400, fftbins=True),
                               atol=1e-15)


def test_mel_filters_slaney_properties():
    """Slaney mel scale: linear 200/3 Hz per mel below 1 kHz, log above; area-normalised
    triangles."""
    # float64 closed forms of values <= 42: a few ulps, ~1e-14
    np.testing.assert_allclose(A._hz_to_mel(np.array([0.0, 600.0, 1000.0, 6400.0])),
                               [0.0, 9.0, 15.0, 42.0], atol=1e-12)
    # float64 log then exp: an error of a few ulps of the mel value (~1e-14) is scaled by
    # d hz / d mel = hz·ln(6.4)/27 <= 550 at 8 kHz, plus a few ulps of 8000: ≈ 1e-11 Hz
    np.testing.assert_allclose(A._mel_to_hz(A._hz_to_mel(np.linspace(0, 8000, 50))),
                               np.linspace(0, 8000, 50), atol=1e-9)
    fb = A.mel_filters(80)
    assert fb.shape == (80, 201) and fb.min() >= 0
    edges = A._mel_to_hz(np.linspace(0, A._hz_to_mel(8000.0), 82))
    freqs = np.linspace(0, 8000, 201)
    for m in (0, 10, 40, 79):           # each triangle lives between its two outer edges
        inside = (freqs > edges[m]) & (freqs < edges[m + 2])
        assert np.all(fb[m, ~inside] == 0)
        # peak height 2 / (f_hi - f_lo) at the centre (reached where a bin falls on it); both
        # sides are float64 values <= 0.03 a few roundings apart, ~1e-17
        assert fb[m].max() <= 2.0 / (edges[m + 2] - edges[m]) + 1e-12


def test_log_mel_of_a_tone_peaks_at_its_mel_channel():
    """Closed-form check independent of any reference implementation: a 1 kHz tone puts its
    energy in the channel whose triangle is centred nearest 1 kHz; silence around it sits at the
    max-8 floor."""
    t = np.arange(SR) / SR
    x = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    mel = A.log_mel_spectrogram(x)                      # [80, 3000]
    centres = A._mel_to_hz(np.linspace(0, A._hz_to_mel(8000.0), 82))[1:-1]
    assert int(np.argmax(mel[:, 50])) == int(np.argmin(np.abs(centres - 1000)))
    floor = mel.max() - 2.0                             # the max-8 floor after (x+4)/4
    # silent tail: clamped.  It is float32((M - 8 + 4) / 4) and floor is float32((M + 4) / 4) - 2
    # (exact subtraction) for the float64 maximum M: two roundings of values < 2, so at most one
    # ulp of 1 (1.2e-7) apart
    assert np.allclose(mel[:, 200:], floor, atol=1e-6)


def test_log_mel_shapes_and_padding():
    x = np.ones(100_000, np.float32) * 0.1
    assert A.log_mel_spectrogram(x).shape == (80, 3000)
    assert A.log_mel_spectrogram(x, 128).shape == (128, 3000)
    assert A.log_mel_spectrogram(x, n_samples=None).shape == (80, 625)
    long = np.zeros(A.N_SAMPLES + 5000, np.float32)
    long[:1000] = 1.0
    # trimming keeps the first 30 s: identical to computing on the trimmed clip
    np.testing.assert_array_equal(A.log_mel_spectrogram(long),
                                  A.log_mel_spectrogram(long[:A.N_SAMPLES]))
    np.testing.assert_array_equal(A.pad_or_trim(np.ones(3), 5), [1, 1, 1, 0, 0])


def test_log_mel_conventions_are_named_parameters():
    """Zero padding only changes the frames that overlap the edges; without the floor, silence
    sits at log10(1e-10) = -10, i.e. (-10 + 4) / 4 = -1.5."""
    # sound from sample 0
    x = (0.1 * np.random.default_rng(3).standard_normal(SR * 2)).astype(np.float32)
    ref = A.log_mel_spectrogram(x)
    zero = A.log_mel_spectrogram(x, pad_mode="constant")
    # frames 0 and 1 (centred on samples 0 and 160) reach 200 samples back, into the padding
    assert np.abs(zero[:, 2:] - ref[:, 2:]).max() == 0
    assert np.abs(zero[:, :2] - ref[:, :2]).min() > 0
    raw = A.log_mel_spectrogram(x, dynamic_range=None)
    assert raw.min() == np.float32(-1.5) and ref.min() > -1.5
    np.testing.assert_array_equal(np.maximum(raw, raw.max() - 2.0), ref)
    with pytest.raises(ValueError, match="pad_mode"):
        A.log_mel_spectrogram(x, pad_mode="wrap")
    with pytest.raises(ValueError, match="dynamic_range"):
        A.log_mel_spectrogram(x, dynamic_range=-1)


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_load_wav_any_bit_depth(tmp_path, subtype):
    t = np.arange(SR // 2) / SR
    x = 0.5 * np.sin(2 * np.pi * 300 * t)
    f = tmp_path / f"{subtype}.wav"
    sf.write(f, x, SR, subtype=subtype)
    y = A.load_audio(f)
    assert y.dtype == np.float32 and y.shape == x.shape
    # a b-bit PCM code: libsndfile writes round(x·(2^(b-1) - 1)) and reads code / 2^(b-1), which
    # is off by at most (|x| + 1/2)·2^(1-b) <= 2^(1-b) for |x| <= 0.5; FLOAT and DOUBLE only
    # round to float32 (<= u·|x| <= U32 / 2)
    step = {"PCM_U8": 2.0 ** -7, "PCM_16": 2.0 ** -15, "PCM_24": 2.0 ** -23, "PCM_32": 2.0 ** -31}
    tol = step.get(subtype, 0.0) + U32 / 2
    assert np.abs(y - x).max() <= tol


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_load_resamples_stereo_to_16k_mono(tmp_path, rate):
    """A 440 Hz tone recorded in stereo at another rate comes out as the same tone at 16 kHz
    (closed form), the channels averaged."""
    n = rate * 2
    t = np.arange(n) / rate
    left, right = 0.6 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 440 * t)
    f = tmp_path / "stereo.wav"
    sf.write(f, np.stack([left, right], axis=1), rate, subtype="FLOAT")
    y = A.load_audio(f)
    assert y.shape == (2 * SR,)
    ref = 0.4 * np.sin(2 * np.pi * 440 * np.arange(2 * SR) / SR)
    mid = slice(SR // 4, -SR // 4)                      # away from the filter's edges
    # resample_poly's Kaiser (β = 5) FIR is a ≈ 54 dB design: pass-band gain within 1.3e-3 of 1
    # and its stop band (the images and aliases) below 2e-3, so the tone of amplitude 0.4 is
    # within 0.4·(1.3e-3 + 2e-3) ≈ 1.3e-3
    assert np.abs(y[mid] - ref[mid]).max() < 2e-3


def test_resampling_is_anti_aliased():
    """A 12 kHz tone cannot exist at 16 kHz (Nyquist 8 kHz): it must be filtered out, not folded
    to 4 kHz."""
    t = np.arange(48000) / 48000
    y = A.load_audio(np.sin(2 * np.pi * 12000 * t).astype(np.float32), orig_sr=48000)
    mid = y[2000:-2000]
    # the 61-tap Kaiser (β = 5) FIR of resample_poly for 48 -> 16 kHz passes |H(12 kHz)| ≈ 4e-4:
    # the folded tone keeps an rms of ≈ 4e-4 / √2 ≈ 3e-4; without the filter it would be 0.71
    assert np.sqrt(np.mean(mid ** 2)) < 1e-3


def test_load_array_forms():
    x = np.linspace(-1, 1, 1000).astype(np.float32)
    np.testing.assert_array_equal(A.load_audio(x), x)
    stereo = np.stack([x, -x], axis=1)                  # [samples, 2]: cancels
    # the channel mean (x + (-x)) / 2 is exactly 0
    np.testing.assert_allclose(A.load_audio(stereo), 0, atol=1e-7)
    pcm = np.array([0, 16384, -32768], np.int16)
    # int16 / 32768: powers of two, exact
    np.testing.assert_allclose(A.load_audio(pcm), [0, 0.5, -1.0])
    assert A.load_audio(x, sr=8000, orig_sr=16000).shape == (500,)


def test_bad_audio_inputs(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        A.log_mel_spectrogram(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        A.log_mel_spectrogram(np.array([0.1, np.nan] * 1000, np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        A.load_audio(np.array([0.1, np.inf] * 1000, np.float32))
    with pytest.raises(ValueError, match="1-D"):
        A.log_mel_spectrogram(np.zeros((2, 1000), np.float32))
    with pytest.raises(ValueError, match="1-D"):
        A.log_mel_spectrogram(np.float32(0.5))
    with pytest.raises(ValueError, match=r"\[N, channels\]"):
        A.load_audio(np.zeros((2, 3, 1000), np.float32))
    with pytest.raises(TypeError, match="real numbers"):
        A.log_mel_spectrogram(np.zeros(1000, np.complex64))
    with pytest.raises(TypeError, match="load_audio"):
        A.log_mel_spectrogram("speech.wav")
    with pytest.raises(ValueError, match="n_mels"):
        A.log_mel_spectrogram(np.zeros(1000, np.float32), n_mels=0)
    with pytest.raises(ValueError, match="sr"):
        A.load_audio(np.zeros(10, np.float32), sr=-1)
    with pytest.raises(ValueError, match="more than 200 samples"):
        A.log_mel_spectrogram(np.zeros(100, np.float32), n_samples=None)
    with pytest.raises(FileNotFoundError, match="no such audio file"):
        A.load_audio(tmp_path / "missing.wav")
    with pytest.raises(IsADirectoryError):
        A.load_audio(tmp_path)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF\x00\x00not really a wav file" * 10)
    with pytest.raises(ValueError, match="cannot read audio"):
        A.load_audio(junk)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0), SR)
    with pytest.raises(ValueError, match="empty"):
        A.load_audio(empty)
    nan_wav = tmp_path / "nan.wav"
    sf.write(nan_wav, np.array([0.0, np.nan, 0.1]), SR, subtype="FLOAT")
    with pytest.raises(ValueError, match="non-finite"):
        A.load_audio(nan_wav)


# ---------------------------------------------------------------------------------------------
# hostile headers and arrays: refused before anything is allocated
# ---------------------------------------------------------------------------------------------
def _wav(path, rate, frames=16000, channels=1):
    """A 16-bit PCM WAV of silence whose header claims ``rate`` (any 32-bit value, which
    soundfile's writer would refuse)."""
    import struct
    data = bytes(2 * frames * channels)
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * 2 * channels) & 0xFFFFFFFF,
                      2 * channels, 16)
    body = (b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", len(data)) + data)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def _peak_traced_bytes(fn):
    """fn() under tracemalloc (NumPy reports its buffers to it) -> (result or exception, peak
    bytes allocated meanwhile)."""
    import tracemalloc
    tracemalloc.start()
    try:
        try:
            out = fn()
        except Exception as exc:                          # the caller inspects it
            out = exc
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("rate", [1, 999, 768001, 2**31 - 1])
def test_file_rate_outside_the_sane_range_is_refused_before_reading(tmp_path, rate):
    """A 32 KB WAV claiming 1 Hz would become 256 M samples at 16 kHz, one claiming 2^31 - 1 Hz
    a 320 GiB filter: both refused from the header, naming the range."""
    f = _wav(tmp_path / "x.wav", rate)
    err, peak = _peak_traced_bytes(lambda: A.load_audio(f))
    assert isinstance(err, ValueError), err
    assert f"{rate} Hz" in str(err) and "1000" in str(err) and "768000" in str(err)
    assert "x.wav" in str(err)
    assert peak < 2**20                              # the 32 KB of samples were not even read


@pytest.mark.parametrize("rate", [1000, 8000, 44100, 768000])
def test_file_rates_in_range_resample_to_the_right_length(tmp_path, rate):
    f = _wav(tmp_path / "x.wav", rate, frames=rate // 10)         # 0.1 s
    assert A.load_audio(f).shape == (1600,)


@pytest.mark.parametrize("kw", [dict(orig_sr=1), dict(orig_sr=999), dict(orig_sr=2**31 - 1),
                                dict(sr=1), dict(sr=10**6), dict(orig_sr=16000.0),
                                dict(orig_sr=True), dict(sr="16000")])
def test_array_rates_outside_the_range_are_refused(kw):
    x = np.zeros(1000, np.float32)
    err, peak = _peak_traced_bytes(lambda: A.load_audio(x, **kw))
    assert isinstance(err, ValueError), err
    assert "1000" in str(err) and "768000" in str(err)
    assert peak < 2**20


def test_duration_limit_is_checked_before_reading_or_resampling(tmp_path, monkeypatch):
    """The limit (a day of audio) is a module constant; lowered to 1 s here so that a 2-s input
    shows it is checked, for files from the header and for arrays before resampling."""
    monkeypatch.setattr(A, "MAX_DURATION_S", 1.0)
    f = _wav(tmp_path / "x.wav", 8000, frames=16000)
    with pytest.raises(ValueError, match=r"last 2(\.0)? s, beyond the limit of 1(\.0)? s"):
        A.load_audio(f)
    with pytest.raises(ValueError, match=r"last 2(\.0)? s, beyond the limit of 1(\.0)? s"):
        A.load_audio(np.zeros(16000, np.float32), orig_sr=8000)
    assert A.load_audio(np.zeros(8000, np.float32), orig_sr=8000).shape == (16000,)
    assert A.MAX_DURATION_S == 1.0
    monkeypatch.undo()
    assert A.MAX_DURATION_S == 24 * 3600


def test_2d_arrays_channels_on_either_axis():
    """The shorter axis is the channels when it has at most 8 entries and the other at least 16
    times as many; channels are averaged whichever axis they are on."""
    x = np.sin(np.arange(4000) / 7.0).astype(np.float32)
    for arr in (np.stack([x, x]), np.stack([x, x], 1), x[None], x[:, None], np.stack([x] * 8),
                np.stack([x] * 8, 1)):
        # the mean of identical float32 channels, summed in float32: within 8 roundings of |x|
        np.testing.assert_allclose(A.load_audio(arr), x, rtol=0, atol=8 * U32)
    stereo = np.stack([x, -x])                          # [2, N]: the channels cancel exactly
    assert A.load_audio(stereo).shape == (4000,) and not A.load_audio(stereo).any()


@pytest.mark.parametrize("shape", [(2, 2), (3, 5), (5, 3), (8, 100), (9, 4000), (4000, 9),
                                   (100, 1000), (1, 15)])
def test_ambiguous_2d_arrays_are_refused(shape):
    with pytest.raises(ValueError, match=r"ambiguous.*at most 8 channels.*16 times"):
        A.load_audio(np.zeros(shape, np.float32))


def test_files_keep_their_channel_count(tmp_path):
    """A file says how many channels it has: 12 channels of 64 frames is read as such (the
    array rule above does not apply)."""
    f = _wav(tmp_path / "x.wav", 16000, frames=64, channels=12)
    assert A.load_audio(f).shape == (64,)


def test_float64_beyond_float32_range_is_named():
    with pytest.raises(ValueError, match="float32 range"):
        A.load_audio(np.array([0.0, 1e300, 0.5]))
    with pytest.raises(ValueError, match="non-finite"):
        A.load_audio(np.array([0.0, np.inf, 0.5]))


@pytest.mark.parametrize("kw, message", [
    (dict(n_mels=202), "201"), (dict(n_mels=10**6), "201"),
    (dict(n_samples=10**12), "limit"), (dict(chunk_frames=0), "chunk_frames"),
    (dict(chunk_frames=-1), "chunk_frames"), (dict(chunk_frames=2.5), "chunk_frames"),
    (dict(dynamic_range=float("inf")), "dynamic_range"),
    (dict(dynamic_range=float("nan")), "dynamic_range"),
])
def test_log_mel_arguments_are_bounded(kw, message):
    x = np.zeros(1000, np.float32)
    err, peak = _peak_traced_bytes(lambda: A.log_mel_spectrogram(x, **kw))
    assert isinstance(err, ValueError) and message in str(err), err
    assert peak < 2**20


# ---------------------------------------------------------------------------------------------
# transcription arguments (the tiny fixture checkpoint)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("multilingual", [True, False])
@pytest.mark.parametrize("kw, error", [(dict(language=5), TypeError),
                                       (dict(language=["en"]), TypeError),
                                       (dict(task="summarise"), ValueError),
                                       (dict(task=3), ValueError)])
def test_transcribe_arguments_are_checked_first(multilingual, kw, error):
    """The same clear error whether or not the checkpoint has language tokens (an English-only
    one never reaches language_id, which checks the language of multilingual ones)."""
    from pyworkloads.models import whisper
    m = whisper.from_pretrained(FIXTURES / "whisper" / "tiny")
    if not multilingual:
        m.generation_config.lang_to_id = None
        m.generation_config.is_multilingual = False
    with pytest.raises(error, match="language|task"):
        m.transcribe(np.zeros(1600, np.float32), progress=False, **kw)
