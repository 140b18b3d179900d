"""A NumPy transcription of attention_mma (attention_2_mma.cuh, version 2) at the level of warp
lanes and MMA fragments, run against the reference.  It checks the kernel's index bookkeeping --
Q/K/V fragment addresses, the reuse of the S accumulators as the A operand of P V, the
transposed V tile, the mask coordinates of each accumulator element and the quad reductions --
given the m16n8k16 fragment layouts of the PTX ISA (emulated by `mma`).  It does not run the
CUDA code: keep it in step with the kernel when either changes.  Usage: python
dev/cuda/emulate_attention_mma.py
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pyworkloads.kernels import reference  # noqa: E402

LANES = np.arange(32)
G, TG = LANES >> 2, LANES & 3


def mma(c, a, b0, b1):
    # c [32,4]; a [32,4,2] pairs; b0,b1 [32,2]
    A = np.zeros((16, 16))
    B = np.zeros((16, 8))
    for L in range(32):
        g, tg = L >> 2, L & 3
        for i in range(2):
            A[g, tg * 2 + i] = a[L, 0, i]
            A[g + 8, tg * 2 + i] = a[L, 1, i]
            A[g, tg * 2 + 8 + i] = a[L, 2, i]
            A[g + 8, tg * 2 + 8 + i] = a[L, 3, i]
            B[tg * 2 + i, g] = b0[L, i]
            B[tg * 2 + 8 + i, g] = b1[L, i]
    C = A @ B
    out = c.copy()
    for L in range(32):
        g, tg = L >> 2, L & 3
        out[L, 0] += C[g, tg * 2]
        out[L, 1] += C[g, tg * 2 + 1]
        out[L, 2] += C[g + 8, tg * 2]
        out[L, 3] += C[g + 8, tg * 2 + 1]
    return out


def shfl_xor(x, m):
    return x[LANES ^ m]


def kernel(q, k, v, causal, scale, mask, kD=64):
    Tq, Dh = q.shape
    Tk, Dv = v.shape
    out = np.zeros((Tq, Dv))
    for q0 in range(0, Tq, 64):
        Qs = np.zeros((64, kD))
        n = min(64, Tq - q0)
        Qs[:n, :Dh] = q[q0 : q0 + n]
        last = q0 + 63 + (Tk - Tq)
        end = min(Tk, last + 1) if causal else Tk
        for w in range(4):
            qa = np.zeros((32, kD // 16, 4, 2))
            for ks in range(kD // 16):
                r, c = w * 16 + G, ks * 16 + TG * 2
                for i in range(2):
                    qa[:, ks, 0, i] = Qs[r, c + i]
                    qa[:, ks, 1, i] = Qs[r + 8, c + i]
                    qa[:, ks, 2, i] = Qs[r, c + 8 + i]
                    qa[:, ks, 3, i] = Qs[r + 8, c + 8 + i]
            o = np.zeros((32, kD // 8, 4))
            m = np.full((32, 2), -np.inf)
            lsum = np.zeros((32, 2))
            rows = [q0 + w * 16 + G, q0 + w * 16 + G + 8]
            for k0 in range(0, end, 64):
                Ks = np.zeros((64, kD))
                nk = min(64, Tk - k0)
                Ks[:nk, :Dh] = k[k0 : k0 + nk]
                Vt = np.zeros((kD, 64))
                Vt[:Dv, :nk] = v[k0 : k0 + nk].T
                s = np.zeros((32, 8, 4))
                for nt in range(8):
                    for ks in range(kD // 16):
                        kr, kc = nt * 8 + G, ks * 16 + TG * 2
                        b0 = np.stack([Ks[kr, kc], Ks[kr, kc + 1]], 1)
                        b1 = np.stack([Ks[kr, kc + 8], Ks[kr, kc + 9]], 1)
                        s[:, nt] = mma(s[:, nt], qa[:, ks], b0, b1)
                tmax = np.full((32, 2), -np.inf)
                for nt in range(8):
                    for e in range(4):
                        row = rows[e >> 1]
                        col = k0 + nt * 8 + TG * 2 + (e & 1)
                        ok = (row < Tq) & (col < Tk)
                        if causal:
                            ok &= col <= row + (Tk - Tq)
                        if mask is not None:
                            ok &= mask[np.minimum(row, Tq - 1), np.minimum(col, Tk - 1)]
                        x = s[:, nt, e] * scale
                        s[:, nt, e] = np.where(ok, x * np.log2(np.e), -np.inf)
                        tmax[:, e >> 1] = np.fmax(tmax[:, e >> 1], s[:, nt, e])
                for rr in range(2):
                    mx = tmax[:, rr]
                    mx = np.fmax(mx, shfl_xor(mx, 1))
                    mx = np.fmax(mx, shfl_xor(mx, 2))
                    m_new = np.fmax(m[:, rr], mx)
                    base = np.where(m_new == -np.inf, 0, m_new)
                    corr = np.exp2(m[:, rr] - base)
                    m[:, rr] = m_new
                    lsum[:, rr] *= corr
                    o[:, :, 2 * rr] *= corr[:, None]
                    o[:, :, 2 * rr + 1] *= corr[:, None]
                    for nt in range(8):
                        s[:, nt, 2 * rr] = np.exp2(s[:, nt, 2 * rr] - base)
                        s[:, nt, 2 * rr + 1] = np.exp2(s[:, nt, 2 * rr + 1] - base)
                        lsum[:, rr] += s[:, nt, 2 * rr] + s[:, nt, 2 * rr + 1]
                for kk in range(4):
                    pa = np.zeros((32, 4, 2))
                    pa[:, 0] = s[:, 2 * kk, 0:2]
                    pa[:, 1] = s[:, 2 * kk, 2:4]
                    pa[:, 2] = s[:, 2 * kk + 1, 0:2]
                    pa[:, 3] = s[:, 2 * kk + 1, 2:4]
                    for dt in range(kD // 8):
                        vr, vc = dt * 8 + G, kk * 16 + TG * 2
                        b0 = np.stack([Vt[vr, vc], Vt[vr, vc + 1]], 1)
                        b1 = np.stack([Vt[vr, vc + 8], Vt[vr, vc + 9]], 1)
                        o[:, dt] = mma(o[:, dt], pa, b0, b1)
            for rr in range(2):
                tot = lsum[:, rr]
                tot = tot + shfl_xor(tot, 1)
                tot = tot + shfl_xor(tot, 2)
                inv = np.where(tot > 0, 1 / np.where(tot > 0, tot, 1), 0)
                for L in range(32):
                    row = rows[rr][L]
                    if row >= Tq:
                        continue
                    for dt in range(kD // 8):
                        for e in range(2):
                            col = dt * 8 + TG[L] * 2 + e
                            if col < Dv:
                                out[row, col] = o[L, dt, 2 * rr + e] * inv[L] if inv[L] != 0 else 0
    return out


def main():
    rng = np.random.default_rng(0)
    worst = 0.0
    cases = [
        (70, 130, 64, 64, True, False),
        (33, 90, 40, 24, False, True),
        (64, 64, 64, 64, True, True),
        (5, 3, 16, 16, False, False),
    ]
    for Tq, Tk, Dh, Dv, causal, use_mask in cases:
        q, k, v = (
            rng.standard_normal((Tq, Dh)),
            rng.standard_normal((Tk, Dh)),
            rng.standard_normal((Tk, Dv)),
        )
        mask = rng.random((Tq, Tk)) > 0.3 if use_mask else None
        if mask is not None:
            mask[2] = False  # a fully masked row: zeros
        scale = 1 / np.sqrt(Dh)
        got = kernel(q, k, v, causal, scale, mask)
        want = reference.attention(
            q[None, None], k[None, None], v[None, None], causal=causal, mask=mask
        )[0, 0]
        err = np.abs(got - want).max()
        worst = max(worst, err)
        print(
            f"Tq={Tq} Tk={Tk} Dh={Dh} Dv={Dv} causal={causal} mask={use_mask}: max error {err:.1e}"
        )
    assert worst < 1e-12, worst


if __name__ == "__main__":
    main()
