"""Audio front end of Whisper: loading and resampling, and the log-mel spectrogram.

Whisper hears 16 kHz mono audio as an 80-channel (128 for large-v3) log-mel spectrogram computed
on 25 ms windows (n_fft = 400 samples) every 10 ms (hop = 160 samples), 100 frames a second, so a
30-second window is 3000 frames.  Every step below follows OpenAI's ``whisper/audio.py`` and
Hugging Face's ``WhisperFeatureExtractor`` (which must agree with it):

1. pad with zeros / trim to 30 s (480 000 samples);
2. STFT with a *periodic* Hann window of 400 samples, hop 160, the signal reflect-padded by
   n_fft/2 on both sides (``torch.stft(center=True)``), and the **last frame dropped**
   (3001 -> 3000);
3. power spectrum |X|^2 over the 201 one-sided bins;
4. Slaney-style mel filters (librosa's default: the Slaney mel scale, linear below 1 kHz and
   logarithmic above, and area normalisation 2 / (f_hi - f_lo) per triangle) from 0 to 8 kHz;
5. log10 with a clamp at 1e-10, then a floor at ``max - 8`` (the global maximum of the whole
   spectrogram, i.e. an 80 dB dynamic range), then ``(x + 4) / 4`` to bring values near [-1, 1].

Glossary: shapes write ``Mel`` for the mel bins (n_mels: 80, or 128 for large-v3) and name the
other axes in words: samples (16 000 a second), frames (100 a second; the encoder's 30-s window
is 2S = 3000 of them, S = 1500 its audio positions) and bins, the n_fft // 2 + 1 = 201 frequency
bins of the one-sided spectrum.
"""
from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["SAMPLE_RATE", "N_FFT", "HOP_LENGTH", "CHUNK_LENGTH", "N_SAMPLES", "N_FRAMES",
           "load_audio", "pad_or_trim", "mel_filters", "hann_window", "log_mel_spectrogram"]

SAMPLE_RATE = 16000
N_FFT = 400                                  # 25 ms windows
HOP_LENGTH = 160                             # 10 ms stride
CHUNK_LENGTH = 30                            # seconds per window the encoder sees
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE       # 480 000
N_FRAMES = N_SAMPLES // HOP_LENGTH           # 3000


# ---------------------------------------------------------------------------------------------
# validation and loading
# ---------------------------------------------------------------------------------------------
# Sample rates a file or an array may declare.  The lowest rate of any audio format in use is
# 8 kHz (telephony; old formats go to 4-5.5 kHz), the highest 768 kHz (the top rate of current
# converters); 1 kHz leaves a margin below.  Outside the range a header is corrupt or hostile:
# 1 Hz would turn a 32 KB file into 256 M samples at 16 kHz, and 2^31 - 1 Hz ask for a
# 320 GiB anti-aliasing filter.  Within it the filter has at most 20 * 768000 taps (123 MB).
MIN_RATE, MAX_RATE = 1_000, 768_000
# The longest audio accepted: a day.  Whisper is run on hours of speech; a day at 16 kHz is
# 1.4 G samples (5.5 GB as float32), a bound that a resampled or padded signal cannot exceed.
MAX_DURATION_S = 24 * 3600
# A 2-D array holds [samples, channels] or [channels, samples]: the channels are the shorter
# axis when it has at most 8 entries (7.1 surround, the most channels of a common layout) and
# the other axis at least 16 times as many (even 10 ms at 8 kHz is 80 samples).
MAX_ARRAY_CHANNELS, MIN_SAMPLES_PER_CHANNEL = 8, 16
_F32_MAX = float(np.finfo(np.float32).max)


def _as_waveform(audio, argname: str = "audio") -> np.ndarray:
    """Check a mono waveform: 1-D, non-empty, finite, real numbers -> float32 [samples]."""
    if isinstance(audio, (str, os.PathLike)):
        raise TypeError(f"{argname} must be an array of samples; to read a file use "
                        f"load_audio({str(audio)!r})")
    arr = _numeric_array(audio, argname)
    if arr.ndim != 1:
        raise ValueError(f"{argname} must be 1-D mono samples [N], got shape {arr.shape} "
                         "(mix channels down with load_audio first)")
    if arr.size == 0:
        raise ValueError(f"{argname} is empty: it has no samples")
    if arr.dtype.kind in "iu":
        arr = _int_to_float(arr)
    _check_finite(arr, argname)
    return arr.astype(np.float32, copy=False)


def _numeric_array(audio, argname: str) -> np.ndarray:
    """audio as an array of real numbers (float or integer), else TypeError."""
    try:
        arr = np.asarray(audio)
    except (ValueError, TypeError) as exc:           # ragged nested lists
        raise TypeError(f"{argname} must be an array of real numbers: {exc}") from None
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{argname} must hold real numbers (float or integer samples), "
                        f"got dtype {arr.dtype}")
    return arr


def _check_finite(arr: np.ndarray, argname: str) -> None:
    """Float samples must be finite and within float32's range (the spectrogram's dtype)."""
    if arr.dtype.kind != "f":
        return
    finite = np.isfinite(arr)
    if not finite.all():
        bad = int(arr.size - np.count_nonzero(finite))
        raise ValueError(f"{argname} contains {bad} non-finite samples (NaN or Inf)")
    if arr.dtype.itemsize > 4 and arr.size and float(np.max(np.abs(arr))) > _F32_MAX:
        raise ValueError(f"{argname} has samples beyond the float32 range (|x| <= {_F32_MAX:.3g}); "
                         "audio samples are expected in [-1, 1]")


def _int_to_float(arr: np.ndarray) -> np.ndarray:
    """PCM integers -> float in [-1, 1): signed types divide by 2^(bits-1); unsigned are offset
    first (8-bit WAV stores unsigned samples centred at 128)."""
    info = np.iinfo(arr.dtype)
    if info.min == 0:
        mid = (int(info.max) + 1) // 2
        return (arr.astype(np.float64) - mid) / mid
    return arr.astype(np.float64) / (int(info.max) + 1)


def _resample(x: np.ndarray, orig_sr: int, sr: int) -> np.ndarray:
    """Polyphase resampling with scipy's anti-aliasing FIR (Kaiser window):
    x [samples] -> [samples·sr/orig_sr]."""
    if orig_sr == sr:
        return x
    from scipy.signal import resample_poly
    g = math.gcd(int(orig_sr), int(sr))
    y = resample_poly(x.astype(np.float64), int(sr) // g, int(orig_sr) // g)
    return y.astype(np.float32)


def _check_rate(value, argname: str) -> int:
    """A sample rate in Hz: an integer in [MIN_RATE, MAX_RATE]."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{argname} must be an integer sample rate in Hz "
                         f"({MIN_RATE} .. {MAX_RATE}), got {value!r}")
    if not MIN_RATE <= value <= MAX_RATE:
        raise ValueError(f"{argname} is {int(value)} Hz, outside the range of audio sample rates "
                         f"{MIN_RATE} .. {MAX_RATE} Hz")
    return int(value)


def _check_duration(n_samples: int, rate: int, source: str) -> None:
    """n_samples at rate may last at most MAX_DURATION_S (checked before reading or
    resampling, so that neither allocates more than that much audio)."""
    seconds = n_samples / rate
    if seconds > MAX_DURATION_S:
        raise ValueError(f"{source}: {n_samples} samples at {rate} Hz last {seconds:.1f} s, "
                         f"beyond the limit of {MAX_DURATION_S} s of audio (split it first)")


def _channels_to_mono(data: np.ndarray, source: str) -> np.ndarray:
    """A 2-D array [samples, channels] or [channels, samples] -> its channel mean [samples].

    The channels are the shorter axis when it has at most MAX_ARRAY_CHANNELS (8) entries and
    the longer axis at least MIN_SAMPLES_PER_CHANNEL (16) times as many; any other shape is
    ambiguous and refused."""
    short, long = min(data.shape), max(data.shape)
    if short == 0:
        raise ValueError(f"{source}: is empty (shape {data.shape})")
    if short > MAX_ARRAY_CHANNELS or long < MIN_SAMPLES_PER_CHANNEL * short:
        raise ValueError(
            f"{source}: shape {data.shape} is ambiguous: a 2-D array is read as [samples, "
            f"channels] or [channels, samples], with at most {MAX_ARRAY_CHANNELS} channels on "
            f"the shorter axis and the longer axis at least {MIN_SAMPLES_PER_CHANNEL} times as "
            "long; pass 1-D mono samples instead")
    axis = 0 if data.shape[0] == short else 1
    return data.astype(np.float32, copy=False).mean(axis=axis)


def load_audio(path_or_array, sr: int = SAMPLE_RATE, orig_sr: int | None = None) -> np.ndarray:
    """Audio -> mono float32 samples at ``sr`` Hz, shape [samples].

    path_or_array: a file soundfile can read (WAV of any rate, bit depth and channel count;
      FLAC, OGG ...), or an array: 1-D mono, or 2-D with the channels on either axis --
      [samples, channels] (soundfile's layout) or [channels, samples] -- where the channels are
      the shorter axis, which may have at most 8 entries while the other has at least 16 times
      as many (any other 2-D shape is ambiguous and refused); float in [-1, 1] or PCM integers.
      ``orig_sr`` is the array's sample rate (default: already ``sr``); files carry their own.
      Channels are averaged; the rate is converted with an anti-aliased polyphase filter.

    Sample rates (``sr``, ``orig_sr`` and a file's) must lie in 1000 .. 768000 Hz
    (``MIN_RATE``, ``MAX_RATE``) and the audio may last at most a day (``MAX_DURATION_S``);
    both are checked from a file's header before its samples are read.
    """
    sr = _check_rate(sr, "sr")
    if isinstance(path_or_array, (str, os.PathLike)):
        if orig_sr is not None:
            raise ValueError("orig_sr is only for arrays; an audio file carries its own "
                             "sample rate")
        data, orig_sr = _read_file(Path(path_or_array))                    # [samples, channels]
        source = f"{path_or_array}"
        data = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]      # [samples]
    else:
        source = "audio array"
        data = _numeric_array(path_or_array, f"load_audio: the {source}")
        orig_sr = sr if orig_sr is None else _check_rate(orig_sr, "orig_sr")
        if data.dtype.kind in "iu":
            data = _int_to_float(data)
        if data.ndim == 2:
            _check_finite(data, source)
            data = _channels_to_mono(data, source)                          # [samples]
        elif data.ndim != 1:
            raise ValueError(f"{source}: expected 1-D mono [N] or 2-D [N, channels] / "
                             f"[channels, N] samples, got shape {data.shape}")
        _check_duration(data.size, orig_sr, source)
    wav = _as_waveform(data, argname=source)
    return _as_waveform(_resample(wav, orig_sr, sr), argname=source)


def _read_file(path: Path):
    """soundfile read -> (float32 [samples, channels], rate), with errors that name the file.
    The rate and the length are checked from the header before the samples are read."""
    import soundfile as sf
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such audio file")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not an audio file")
    with open(path, "rb") as fh:                                 # PermissionError as is
        try:
            f = sf.SoundFile(fh)                                 # parses the header only
        except (RuntimeError, TypeError, ValueError, EOFError) as exc:
            raise ValueError(f"{path}: cannot read audio ({exc}); expected a format libsndfile "
                             "reads (WAV, FLAC, OGG, ...)") from None
        with f:
            rate = _check_rate(f.samplerate, f"{path}: the sample rate")
            _check_duration(f.frames, rate, str(path))
            try:
                data = f.read(dtype="float32", always_2d=True)   # [samples, channels]
            except RuntimeError as exc:
                raise ValueError(f"{path}: cannot read audio samples ({exc})") from None
    if data.shape[1] == 0:
        raise ValueError(f"{path}: has no channels")
    return data, rate


def pad_or_trim(audio: np.ndarray, length: int = N_SAMPLES) -> np.ndarray:
    """Zero-pad at the end or cut to exactly ``length`` samples (the encoder's fixed 30-s input)."""
    if audio.shape[-1] >= length:
        return audio[..., :length]
    return np.pad(audio, [(0, 0)] * (audio.ndim - 1) + [(0, length - audio.shape[-1])])


# ---------------------------------------------------------------------------------------------
# the spectrogram
# ---------------------------------------------------------------------------------------------
def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window (``torch.hann_window(n)``): the first n points of an (n+1)-point
    symmetric window, so that overlapping windows at hop n/k sum to a constant."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def _hz_to_mel(f):
    """Slaney's mel scale: 3 mels per 200 Hz up to 1 kHz (= 15 mels), then log-spaced with
    27 mels per factor 6.4 in frequency."""
    f = np.asarray(f, dtype=np.float64)
    log_step = np.log(6.4) / 27.0
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-12) / 1000.0) / log_step,
                    3.0 * f / 200.0)


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    log_step = np.log(6.4) / 27.0
    return np.where(m >= 15.0, 1000.0 * np.exp(log_step * (m - 15.0)), 200.0 * m / 3.0)


@lru_cache(maxsize=8)
def mel_filters(n_mels: int = 80, n_fft: int = N_FFT, sr: int = SAMPLE_RATE,
                f_max: float = 8000.0) -> np.ndarray:
    """Slaney-normalised triangular mel filter bank, float64 [Mel, bins], bins = n_fft // 2 + 1.

    Triangle m rises from edge f[m] to f[m+1] and falls to f[m+2], where f are n_mels + 2 points
    evenly spaced on the mel scale from 0 Hz to f_max; each is scaled by 2 / (f[m+2] - f[m]) so
    every channel carries about the same energy (librosa ``norm="slaney"``)."""
    if isinstance(n_fft, bool) or not isinstance(n_fft, int) or not 2 <= n_fft <= 2**16:
        raise ValueError(f"n_fft must be an integer in 2 .. 65536, got {n_fft!r}")
    if isinstance(n_mels, bool) or not isinstance(n_mels, int) or \
            not 1 <= n_mels <= n_fft // 2 + 1:
        raise ValueError(f"n_mels must be an integer in 1 .. {n_fft // 2 + 1} (at most one "
                         f"channel per frequency bin), got {n_mels!r}")
    sr = _check_rate(sr, "sr")
    if not (isinstance(f_max, (int, float)) and 0 < f_max <= sr / 2):
        raise ValueError(f"f_max must be a frequency in (0, {sr / 2:g}] Hz (the Nyquist "
                         f"frequency of {sr} Hz), got {f_max!r}")
    fft_freqs = np.linspace(0.0, sr // 2, n_fft // 2 + 1)                           # [bins]
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(f_max), n_mels + 2))      # [Mel + 2]
    rising = (fft_freqs[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]    # [Mel, bins]
    falling = (edges[2:, None] - fft_freqs[None, :]) / np.diff(edges)[1:, None]     # [Mel, bins]
    weights = np.maximum(0.0, np.minimum(rising, falling))                          # [Mel, bins]
    return weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]


def _power_spectrogram_frames(audio: np.ndarray, start: int, stop: int) -> np.ndarray:
    """|STFT|^2 of frames [start, stop) of the reflect-padded signal:
    -> float64 [stop - start, bins]."""
    window = hann_window(N_FFT)
    first = start * HOP_LENGTH
    seg = audio[first:(stop - 1) * HOP_LENGTH + N_FFT].astype(np.float64)   # these frames' samples
    frames = np.lib.stride_tricks.sliding_window_view(seg, N_FFT)[::HOP_LENGTH]    # [frames, n_fft]
    spec = np.fft.rfft(frames * window, axis=-1)                                    # [frames, bins]
    return spec.real ** 2 + spec.imag ** 2


def log_mel_spectrogram(audio, n_mels: int = 80, n_samples: int | None = N_SAMPLES,
                        pad_mode: str = "reflect", dynamic_range: float | None = 8.0,
                        chunk_frames: int = 6000) -> np.ndarray:
    """Whisper's log-mel spectrogram.  audio float [samples] at 16 kHz -> float32
    [Mel, n_samples // 160].

    n_samples: pad/trim the audio to this many samples first (default 30 s -> 3000 frames, what
      the encoder takes).  ``None`` keeps the whole clip (samples // 160 frames), which is how
      transformers prepares long-form input (``truncation=False``) -- note the max-8 floor then
      uses the maximum over the whole clip.
    pad_mode: how the STFT extends the signal by n_fft/2 at both ends; "reflect" is what
      ``torch.stft(center=True)`` does in OpenAI's audio.py and in transformers; "constant"
      (zeros) is librosa's default since 0.10 and changes the first and last frames.
    dynamic_range: the floor in log10 units below the global maximum (8 = 80 dB, OpenAI's
      ``log_spec.max() - 8.0``); None disables it.
    chunk_frames: frames transformed at a time, bounding memory for hour-long audio.
    """
    max_mels = N_FFT // 2 + 1
    if (isinstance(n_mels, bool) or not isinstance(n_mels, (int, np.integer))
            or not 1 <= n_mels <= max_mels):
        raise ValueError(f"n_mels must be an integer in 1 .. {max_mels} (80, or 128 for "
                         f"large-v3; at most one channel per frequency bin of the {N_FFT}-point "
                         f"FFT), got {n_mels!r}")
    if pad_mode not in ("reflect", "constant"):
        raise ValueError(f"pad_mode must be 'reflect' (Whisper) or 'constant', got {pad_mode!r}")
    if dynamic_range is not None and not (isinstance(dynamic_range, (int, float))
                                          and not isinstance(dynamic_range, bool)
                                          and 0 < dynamic_range < math.inf):
        raise ValueError(f"dynamic_range must be a positive finite number of log10 units or "
                         f"None, got {dynamic_range!r}")
    if (isinstance(chunk_frames, bool) or not isinstance(chunk_frames, (int, np.integer))
            or chunk_frames < 1):
        raise ValueError(f"chunk_frames must be a positive integer, got {chunk_frames!r}")
    max_samples = MAX_DURATION_S * SAMPLE_RATE
    if n_samples is not None:
        if (isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer))
                or not HOP_LENGTH <= n_samples <= max_samples):
            raise ValueError(f"n_samples must be an integer in {HOP_LENGTH} .. {max_samples} "
                             f"(the limit of {MAX_DURATION_S} s at {SAMPLE_RATE} Hz) or None, "
                             f"got {n_samples!r}")
    wav = _as_waveform(audio)
    if n_samples is not None:
        wav = pad_or_trim(wav, int(n_samples))
    if wav.size <= N_FFT // 2:
        raise ValueError(f"audio needs more than {N_FFT // 2} samples for the reflect padding of "
                         f"the STFT, got {wav.size}")
    padded = np.pad(wav, N_FFT // 2, mode=pad_mode)                              # [samples + n_fft]
    n_frames = wav.size // HOP_LENGTH                  # the last of 1 + samples // hop dropped
    filters = mel_filters(int(n_mels))                                              # [Mel, bins]
    mel = np.empty((int(n_mels), n_frames), dtype=np.float64)                       # [Mel, frames]
    for start in range(0, n_frames, chunk_frames):
        stop = min(start + chunk_frames, n_frames)
        power = _power_spectrogram_frames(padded, start, stop)                      # [chunk, bins]
        mel[:, start:stop] = filters @ power.T                                      # [Mel, chunk]
    log_spec = np.log10(np.maximum(mel, 1e-10))
    if dynamic_range is not None:
        log_spec = np.maximum(log_spec, log_spec.max() - dynamic_range)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)
