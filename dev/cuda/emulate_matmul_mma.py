"""A NumPy transcription of matmul_mma (matmul_3_mma.cuh, version 3) at the level of warp lanes,
shared-memory addresses and MMA fragments, run against np.matmul in float64.

It checks the kernel's bookkeeping, given the PTX ISA's definitions of ldmatrix (.x4, .trans) and
of the mma.m16n8k16 fragment layouts (both emulated below):
  * the block rasterisation (mma_tile_of) covers every tile exactly once;
  * the loader chunks (rows, columns, zero-fill past M, N and K) and the cp.async ring slots;
  * the ldmatrix row addresses of A and B, and the order of the registers they return;
  * the epilogue's (row, column) of every accumulator;
  * that every 8-lane ldmatrix phase touches 8 distinct 16-byte bank groups (no conflicts), and
    that every cp.async destination is 16-byte aligned.
It does not run the CUDA code: keep it in step with the kernel when either changes.
Usage: python dev/cuda/emulate_matmul_mma.py
"""

import numpy as np

# the kernel's constants
BM, BN, BK, THREADS = 128, 256, 32, 256
LDA, LDB = BK + 8, BN + 8
STAGE_A, STAGE_B = BM * LDA, BK * LDB
GROUP_M = 8
LANES = np.arange(32)
G, TG = LANES >> 2, LANES & 3


def tile_of(i, tiles_m, tiles_n):
    per_group = GROUP_M * tiles_n
    first_m = (i // per_group) * GROUP_M
    rows = min(tiles_m - first_m, GROUP_M)
    return first_m + (i % per_group) % rows, (i % per_group) // rows


def copy_chunk(smem, dst, src_mat, row, col, left):
    """8 elements of src_mat[row, col:] into smem[dst:dst+8]; `left` of them inside (cp.async
    zero-fills past src-size, the element path writes zeros)."""
    assert dst % 8 == 0, "cp.async destination not 16-byte aligned"
    n = int(max(0, min(left, 8)))
    smem[dst : dst + 8] = 0.0
    if n:
        smem[dst : dst + n] = src_mat[row, col : col + n]


def ldmatrix_x4(smem, addr, trans=False):
    """addr[32]: each lane's row address (in elements).  Returns regs [32, 4, 2]."""
    regs = np.zeros((32, 4, 2))
    for i in range(4):
        rows = [smem[addr[8 * i + r] : addr[8 * i + r] + 8] for r in range(8)]  # matrix i, row r
        mat = np.stack(rows)  # [8, 8]
        for lane in range(32):
            r, c = lane >> 2, 2 * (lane & 3)
            regs[lane, i] = mat[c : c + 2, r] if trans else mat[r, c : c + 2]
    return regs


def check_banks(addr, elem_bytes=2):
    for i in range(4):
        units = [(int(a) * elem_bytes // 16) % 8 for a in addr[8 * i : 8 * i + 8]]
        assert len(set(units)) == 8, f"ldmatrix phase {i} bank conflict: 16-byte units {units}"
        assert all(int(a) * elem_bytes % 16 == 0 for a in addr[8 * i : 8 * i + 8]), (
            "ldmatrix row not 16-byte aligned"
        )


def mma(c, a, b0, b1):
    """c[32,4] += A[16x16] B[16x8] with the m16n8k16 fragment layouts (a [32,4,2], b [32,2])."""
    A = np.zeros((16, 16))
    B = np.zeros((16, 8))
    for k in range(2):
        A[G, TG * 2 + k] = a[:, 0, k]
        A[G + 8, TG * 2 + k] = a[:, 1, k]
        A[G, TG * 2 + 8 + k] = a[:, 2, k]
        A[G + 8, TG * 2 + 8 + k] = a[:, 3, k]
        B[TG * 2 + k, G] = b0[:, k]
        B[TG * 2 + 8 + k, G] = b1[:, k]
    C = A @ B
    c[:, 0] += C[G, TG * 2]
    c[:, 1] += C[G, TG * 2 + 1]
    c[:, 2] += C[G + 8, TG * 2]
    c[:, 3] += C[G + 8, TG * 2 + 1]


def kernel(A, B, stages=3):
    M, K = A.shape
    N = B.shape[1]
    C = np.full((M, N), np.nan)
    tiles_m, tiles_n = -(-M // BM), -(-N // BN)
    seen = set()
    for bid in range(tiles_m * tiles_n):
        tm, tn = tile_of(bid, tiles_m, tiles_n)
        assert 0 <= tm < tiles_m and 0 <= tn < tiles_n and (tm, tn) not in seen
        seen.add((tm, tn))
        m0, n0 = tm * BM, tn * BN
        ktiles = -(-K // BK)
        As = np.zeros(stages * STAGE_A)
        Bs = np.zeros(stages * STAGE_B)

        def load_tile(t):
            s, k0 = t % stages, t * BK
            for tid in range(THREADS):
                for i in range(2):
                    c = tid + THREADS * i
                    r, col = c >> 2, (c & 3) * 8
                    row = m0 + r
                    copy_chunk(
                        As,
                        s * STAGE_A + r * LDA + col,
                        A,
                        row,
                        k0 + col,
                        K - (k0 + col) if row < M else 0,
                    )
                for i in range(4):
                    c = tid + THREADS * i
                    r, col = c >> 5, (c & 31) * 8
                    k = k0 + r
                    copy_chunk(
                        Bs,
                        s * STAGE_B + r * LDB + col,
                        B,
                        k,
                        n0 + col,
                        N - (n0 + col) if k < K else 0,
                    )

        acc = np.zeros((8, 4, 8, 32, 4))  # [warp, i, j, lane, e]
        for t in range(stages - 1):
            if t < ktiles:
                load_tile(t)
        for t in range(ktiles):
            if t + stages - 1 < ktiles:
                load_tile(t + stages - 1)  # must not clobber slot t % stages
            for warp in range(8):
                wm, wn = warp >> 2, warp & 3
                a_off = (wm * 64 + (LANES & 15)) * LDA + (LANES >> 4) * 8
                b_off = (LANES & 15) * LDB + wn * 64 + (LANES >> 4) * 8
                sa, sb = (t % stages) * STAGE_A, (t % stages) * STAGE_B
                for kk in range(0, BK, 16):
                    af = []
                    for i in range(4):
                        addr = sa + a_off + i * 16 * LDA + kk
                        check_banks(addr)
                        af.append(ldmatrix_x4(As, addr))
                    bf = [None] * 8
                    for j in range(4):
                        addr = sb + b_off + kk * LDB + j * 16
                        check_banks(addr)
                        r = ldmatrix_x4(Bs, addr, trans=True)
                        bf[2 * j] = (r[:, 0], r[:, 1])
                        bf[2 * j + 1] = (r[:, 2], r[:, 3])
                    for i in range(4):
                        for j in range(8):
                            mma(acc[warp, i, j], af[i], *bf[j])
        for warp in range(8):
            wm, wn = warp >> 2, warp & 3
            for i in range(4):
                for half in range(2):
                    rows = m0 + wm * 64 + i * 16 + G + half * 8
                    for j in range(8):
                        cols = n0 + wn * 64 + j * 8 + TG * 2
                        for e in range(2):
                            ok = (rows < M) & (cols + e < N)
                            assert np.all(np.isnan(C[rows[ok], cols[ok] + e])), (
                                "an element written twice"
                            )
                            C[rows[ok], cols[ok] + e] = acc[warp, i, j, ok, 2 * half + e]
    assert len(seen) == tiles_m * tiles_n
    return C


def main():
    rng = np.random.default_rng(0)
    # the stage strides keep 128-byte alignment, so the bank pattern of stage 0 holds for all
    assert (STAGE_A * 2) % 128 == 0 and (STAGE_B * 2) % 128 == 0
    for g_tiles in [
        (1, 1),
        (3, 5),
        (9, 2),
        (17, 3),
        (8, 8),
        (20, 1),
    ]:  # rasterisation is a bijection
        tm_, tn_ = g_tiles
        got = {tile_of(i, tm_, tn_) for i in range(tm_ * tn_)}
        assert got == {(a, b) for a in range(tm_) for b in range(tn_)}, g_tiles
    worst = 0.0
    for (M, N, K), stages in [
        ((1, 1, 1), 3),
        ((5, 7, 3), 4),
        ((128, 256, 32), 3),
        ((129, 257, 33), 3),
        ((130, 264, 100), 4),
        ((64, 8, 200), 3),
        ((200, 300, 72), 4),
    ]:
        A = rng.standard_normal((M, K))
        B = rng.standard_normal((K, N))
        got = kernel(A, B, stages)
        err = float(np.max(np.abs(got - A @ B))) if got.size else 0.0
        assert not np.isnan(got).any(), "an output element was never written"
        assert err < 1e-9, (M, N, K, err)
        worst = max(worst, err)
        print(f"M={M:4d} N={N:4d} K={K:4d} stages={stages}: max |err| = {err:.1e}")
    print(
        f"matmul_mma emulation matches np.matmul (worst {worst:.1e}); ldmatrix phases conflict-free"
    )


if __name__ == "__main__":
    main()
