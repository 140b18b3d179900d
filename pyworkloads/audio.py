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
def _as_waveform(audio, argname: str = "audio") -> np.ndarray:
    """Check a mono waveform: 1-D, non-empty, finite, real numbers -> float32 [samples]."""
    if isinstance(audio, (str, os.PathLike)):
        raise TypeError(f"{argname} must be an array of samples; to read a file use "
                        f"load_audio({str(audio)!r})")
    arr = np.asarray(audio)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{argname} must hold real numbers (float or integer samples), "
                        f"got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{argname} must be 1-D mono samples [N], got shape {arr.shape} "
                         "(mix channels down with load_audio first)")
    if arr.size == 0:
        raise ValueError(f"{argname} is empty: it has no samples")
    if arr.dtype.kind in "iu":
        arr = _int_to_float(arr)
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{argname} contains {bad} non-finite samples (NaN or Inf)")
    return arr


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
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{argname} must be a positive integer sample rate in Hz, got {value!r}")
    return int(value)


def load_audio(path_or_array, sr: int = SAMPLE_RATE, orig_sr: int | None = None) -> np.ndarray:
    """Audio -> mono float32 samples at ``sr`` Hz, shape [samples].

    path_or_array: a file soundfile can read (WAV of any rate, bit depth and channel count;
      FLAC, OGG ...), or an array: 1-D mono or 2-D [samples, channels] (soundfile's layout),
      float in [-1, 1] or PCM integers.  ``orig_sr`` is the array's sample rate (default:
      already ``sr``); files carry their own.  Channels are averaged; the rate is converted with
      an anti-aliased polyphase filter.
    """
    sr = _check_rate(sr, "sr")
    if isinstance(path_or_array, (str, os.PathLike)):
        if orig_sr is not None:
            raise ValueError("orig_sr is only for arrays; an audio file carries its own "
                             "sample rate")
        data, orig_sr = _read_file(Path(path_or_array))
        source = f"{path_or_array}"
    else:
        data = np.asarray(path_or_array)
        orig_sr = sr if orig_sr is None else _check_rate(orig_sr, "orig_sr")
        source = "audio array"
        if data.dtype.kind not in "fiu":
            raise TypeError(f"load_audio: the array must hold real numbers, got dtype {data.dtype}")
        if data.dtype.kind in "iu":
            data = _int_to_float(data)
    if data.ndim == 2:
        if data.shape[1] == 0:
            raise ValueError(f"{source}: has no channels (shape {data.shape})")
        data = data.astype(np.float32, copy=False).mean(axis=1)   # [samples, channels] -> [samples]
    elif data.ndim != 1:
        raise ValueError(f"{source}: expected 1-D mono [N] or 2-D [N, channels] samples, "
                         f"got shape {data.shape}")
    wav = _as_waveform(data, argname=source)
    return _as_waveform(_resample(wav, orig_sr, sr), argname=source)


def _read_file(path: Path):
    """soundfile read -> (float32 [samples, channels], rate), with errors that name the file."""
    import soundfile as sf
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such audio file")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not an audio file")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)       # [samples, channels]
    except (RuntimeError, sf.LibsndfileError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read audio ({exc}); expected a format libsndfile reads "
                         "(WAV, FLAC, OGG, ...)") from None
    return data, int(rate)


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
    if not isinstance(n_mels, int) or n_mels < 1:
        raise ValueError(f"n_mels must be a positive integer, got {n_mels!r}")
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
    if isinstance(n_mels, bool) or not isinstance(n_mels, (int, np.integer)) or n_mels < 1:
        raise ValueError(f"n_mels must be a positive integer (80, or 128 for large-v3), "
                         f"got {n_mels!r}")
    if pad_mode not in ("reflect", "constant"):
        raise ValueError(f"pad_mode must be 'reflect' (Whisper) or 'constant', got {pad_mode!r}")
    if dynamic_range is not None and not (isinstance(dynamic_range, (int, float))
                                          and dynamic_range > 0):
        raise ValueError(f"dynamic_range must be a positive number of log10 units or None, "
                         f"got {dynamic_range!r}")
    wav = _as_waveform(audio)
    if n_samples is not None:
        if (isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer))
                or n_samples < HOP_LENGTH):
            raise ValueError(f"n_samples must be an integer >= {HOP_LENGTH} or None, "
                             f"got {n_samples!r}")
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
