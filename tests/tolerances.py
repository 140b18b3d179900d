"""Float32 error bounds for tests that compare floats.

A bound tuned by trial on one machine fails on the next: AVX2 and AVX-512 builds, OpenBLAS and
MKL, torch and NumPy sum in different orders.  These helpers state the bound from the arithmetic
instead: ``n`` roundings of relative size at most ``U32`` on quantities of magnitude ``scale``
move a result by at most ``gamma(n) * scale`` (Higham, *Accuracy and Stability of Numerical
Algorithms*, §3.1).
"""
from __future__ import annotations

import numpy as np

U32 = 2.0 ** -24          # unit roundoff of float32 (half an ulp of 1.0)
LN10 = float(np.log(10.0))


def gamma(n, u: float = U32):
    """γ_n = n·u / (1 - n·u): the relative error bound of n floating-point operations in a chain
    (a sum of n terms, a dot product of length n)."""
    n = np.asarray(n, dtype=np.float64)
    return n * u / (1.0 - n * u)


def log_mel_tolerance(power: np.ndarray, filters: np.ndarray, n_fft: int,
                      dynamic_range: float = 8.0, fft_constant: float = 5.0) -> np.ndarray:
    """The most a float32 evaluation of Whisper's log-mel can differ from the exact value,
    element by element.  power float64 [F, K] is the exact |STFT|² of the frames, filters
    [M, K] the mel bank.

    - the float32 FFT has a normwise error ||ΔX||₂ <= c·log2(N)·u·||X||₂ (Higham §24.1, c a small
      constant; 5 covers the window's rounding too); each bin moves at most by that norm, so its
      power by 2|X_k|·ε + ε²;
    - the mel sum of K non-negative float32 terms adds at most γ_{K+2} relative;
    - log10 is 1/ln10-Lipschitz in the relative error, the clamp at 1e-10 and the floor at
      max - dynamic_range only flatten it, and the output divides by 4;
    - log10, the floor, +4 and /4 in float32 add a few ulps of the output (|out| <= 3)."""
    X = np.sqrt(power)                                                     # [F, K] |X_k|
    eps = fft_constant * np.log2(n_fft) * U32 * np.sqrt(power.sum(axis=1, keepdims=True))   # [F, 1]
    d_power = 2.0 * X * eps + eps ** 2                                     # [F, K]
    mel = filters @ power.T                                                # [M, F]
    d_mel = filters @ d_power.T + gamma(filters.shape[1] + 2) * mel        # [M, F]
    floor = max(float(np.log10(max(mel.max(), 1e-10))) - dynamic_range, -10.0)
    mel_eff = np.maximum(mel, 10.0 ** floor)                               # flat below the floor
    return d_mel / (mel_eff * LN10 * 4.0) + 8 * U32 * 3.0
