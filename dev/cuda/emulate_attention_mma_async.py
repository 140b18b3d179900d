"""A NumPy transcription of attention_mma_async (attention_3_mma_async.cuh, version 3) at the level
of warp lanes, run against the reference.

What it models, each with the kernel's own formulas (keep them in step when either changes):
  * shared memory as a flat array of 16-bit slots (values kept in float64, so the index
    bookkeeping is checked exactly), filled with NaN first: any read of a slot the kernel never
    wrote poisons the result;
  * cp.async: 16-byte chunks with the kernel's thread -> (row, chunk) map, zero-fill (src-size 0)
    outside the operand, commit groups and wait_group.  A copy may land at any time between its
    issue and the wait that covers it; the emulation runs every case twice, once with copies
    landing at issue ("early") and once at the wait ("late"), so reading a stage before its copy
    is waited for, or while the next copy overwrites it, shows up as a wrong result;
  * ldmatrix.x4 and .x4.trans: lanes 8i..8i+7 give the 8 row addresses of matrix i; lane l gets
    (row l>>2, columns 2(l&3), 2(l&3)+1) of matrix i in register i, transposed for .trans.  Every
    8-lane phase is checked for 16-byte alignment and for distinct 16-byte bank groups
    ((address / 16) mod 8: 8 rows x 16 bytes cover the 32 four-byte banks once);
  * mma.sync m16n8k16 with the PTX ISA fragment layouts (as emulate_attention_mma.py);
  * the tile loop: Q staged in stage 1, two stages alternating, causal tile skipping, the plain
    fast path, the per-row mask/bias/limit path, the quad shuffles, the paired output stores
    (each output element must be written exactly once).
It does not run the CUDA code.  Usage: python dev/cuda/emulate_attention_mma_async.py
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pyworkloads.kernels import reference  # noqa: E402

COLS, STAGES, ES = 64, 2, 2  # keys per K/V tile, ring stages, bytes per element
SHAPES = {64: (4, 2), 128: (4, 1)}  # kD -> (warps, 16-row m-tiles per warp): AsyncShape
LANES = np.arange(32)
G, TG = LANES >> 2, LANES & 3
LOG2E = 1.4426950408889634


class Stats:
    def __init__(self):
        self.ldmatrix_phases = self.ldmatrix_conflicts = 0
        self.cp_phases = self.cp_conflicts = 0
        self.plain_tiles = self.masked_tiles = 0


def distinct_groups(byte_addrs):
    return len(set(((np.asarray(byte_addrs) // 16) % 8).tolist())) == len(byte_addrs)


class Shared:
    """Shared memory (16-bit slots), the cp.async groups in flight, ldmatrix."""

    def __init__(self, n_elems, mode, stats):
        self.mem = np.full(n_elems, np.nan)
        self.mode, self.stats = mode, stats
        self.pending, self.groups = [], []

    def cp_async16(self, dst, values):
        # dst: byte address, 16-byte aligned; values: the 8 elements that land there
        assert dst % 16 == 0 and len(values) == 8
        if self.mode == "early":
            self.mem[dst // ES : dst // ES + 8] = values
        else:
            self.pending.append((dst, values))

    def commit(self):
        self.groups.append(self.pending)
        self.pending = []

    def wait_group(self, n):  # all but the n most recent groups have landed
        while len(self.groups) > n:
            for dst, values in self.groups.pop(0):
                self.mem[dst // ES : dst // ES + 8] = values

    def ldmatrix_x4(self, addrs, trans=False):
        addrs = np.asarray(addrs)
        assert addrs.shape == (32,) and np.all(addrs % 16 == 0)
        regs = np.zeros((32, 4, 2))
        for i in range(4):
            phase = addrs[8 * i : 8 * i + 8]
            self.stats.ldmatrix_phases += 1
            self.stats.ldmatrix_conflicts += not distinct_groups(phase)
            M = np.stack([self.mem[a // ES : a // ES + 8] for a in phase])  # [8 rows, 8 columns]
            if trans:
                regs[:, i, 0], regs[:, i, 1] = M[2 * TG, G], M[2 * TG + 1, G]
            else:
                regs[:, i, 0], regs[:, i, 1] = M[G, 2 * TG], M[G, 2 * TG + 1]
        return regs


def mma(c, a, b0, b1):
    """c[32,4] += A B per the m16n8k16 layouts: a [32,4,2] (pairs per register), b0/b1 [32,2]."""
    A, B = np.zeros((16, 16)), np.zeros((16, 8))
    for i in range(2):
        A[G, 2 * TG + i] = a[:, 0, i]
        A[G + 8, 2 * TG + i] = a[:, 1, i]
        A[G, 2 * TG + 8 + i] = a[:, 2, i]
        A[G + 8, 2 * TG + 8 + i] = a[:, 3, i]
        B[2 * TG + i, G] = b0[:, i]
        B[2 * TG + 8 + i, G] = b1[:, i]
    C = A @ B
    return c + np.stack([C[G, 2 * TG], C[G, 2 * TG + 1], C[G + 8, 2 * TG], C[G + 8, 2 * TG + 1]], 1)


def shfl_xor(x, m):
    return x[LANES ^ m]


def copy_rows_async(sh, dst, src, r0, rows, width, n, kD, threads):
    """copy_rows_async<T, kN=n, kD, kThreads>: rows [r0, r0+n) of src [rows, width] -> dst."""
    ld, chunks = kD + 8, kD // 8
    assert (n * chunks) % threads == 0
    copied = []
    for i in range(n * chunks // threads):
        addrs = []
        for tid in range(threads):
            c = tid + i * threads
            r, d = c // chunks, (c % chunks) * 8
            inside = r0 + r < rows and d < width
            if inside:
                assert d + 8 <= width  # p.vec: width % 8 == 0
                values = src[r0 + r, d : d + 8]
            else:
                values = np.zeros(8)  # src-size 0: zero-filled, nothing read
            a = dst + (r * ld + d) * ES
            sh.cp_async16(a, values)
            addrs.append(a)
        for ph in range(0, threads, 8):  # 16-byte stores: 8 lanes per phase
            sh.stats.cp_phases += 1
            sh.stats.cp_conflicts += not distinct_groups(addrs[ph : ph + 8])
        copied += addrs
    # every row and chunk of the tile exactly once
    assert sorted(copied) == sorted(
        dst + (rr * ld + c * 8) * ES for rr in range(n) for c in range(chunks)
    )


def kv_end(Tq, Tk, causal, q0, nrows):
    if not causal:
        return Tk
    last = q0 + nrows - 1 + (Tk - Tq)
    return min(last + 1, Tk)


def pack(x):  # pack2<T>: two floats -> one register (rounding not modelled)
    return x


def block_coords(block, tiles, Hq, B):
    """The kernel's linear grid: block -> (query tile, head, batch), query tiles slowest (longest
    first).
    """
    heads = Hq * B
    bh = block % heads
    return tiles - 1 - block // heads, bh % Hq, bh // Hq


def check_block_coords():
    """Every (tile, head, batch) is visited exactly once, and all heads' tile t before any tile t -
    1.
    """
    for tiles, Hq, B in [(1, 1, 1), (32, 16, 4), (3, 5, 2), (7, 1, 3)]:
        seen = [block_coords(i, tiles, Hq, B) for i in range(tiles * Hq * B)]
        assert sorted(seen) == [
            (t, h, b) for t in range(tiles) for h in range(Hq) for b in range(B)
        ], (tiles, Hq, B)
        assert all(x[0] >= y[0] for x, y in zip(seen, seen[1:])), "query tiles must not increase"


def kernel(q, k, v, causal, scale, mask, bias, kD, mode, stats):
    """One (batch, head): q [Tq, Dh], k [Tk, Dh], v [Tk, Dv]; mask/bias [Tq, Tk] views or None."""
    warps, MT = SHAPES[kD]
    threads, nrows, ld = warps * 32, warps * 16 * MT, kD + 8
    tile, stage_elems = COLS * ld, 2 * COLS * ld
    Tq, Dh = q.shape
    Tk, Dv = v.shape
    assert Dh % 8 == 0 and Dv % 8 == 0 and max(Dh, Dv) <= kD and nrows <= 2 * COLS
    out = np.full((Tq, Dv), np.nan)
    written = np.zeros((Tq, Dv), int)
    scale_log2 = scale * LOG2E
    grid = (Tq + nrows - 1) // nrows
    for bx in range(grid):
        q0 = (grid - 1 - bx) * nrows
        sh = Shared(STAGES * stage_elems, mode, stats)
        end = kv_end(Tq, Tk, causal, q0, nrows)
        q_lane = [
            (((w * MT * 16) + (LANES & 15)) * ld + (LANES >> 4) * 8) * ES for w in range(warps)
        ]
        k_lane = (((LANES >> 4) * 8 + (LANES & 7)) * ld + ((LANES >> 3) & 1) * 8) * ES
        v_lane = ((LANES & 15) * ld + (LANES >> 4) * 8) * ES

        copy_rows_async(sh, stage_elems * ES, q, q0, Tq, Dh, nrows, kD, threads)
        sh.commit()
        if end > 0:
            copy_rows_async(sh, 0, k, 0, Tk, Dh, COLS, kD, threads)
            copy_rows_async(sh, tile * ES, v, 0, Tk, Dv, COLS, kD, threads)
        sh.commit()
        sh.wait_group(1)  # + __syncthreads
        qa = [
            [
                [
                    sh.ldmatrix_x4(stage_elems * ES + q_lane[w] + (mt * 16 * ld + ks * 16) * ES)
                    for ks in range(kD // 16)
                ]
                for mt in range(MT)
            ]
            for w in range(warps)
        ]
        o = np.zeros((warps, MT, kD // 8, 32, 4))
        m = np.full((warps, MT, 2, 32), -np.inf)
        lsum = np.zeros((warps, MT, 2, 32))
        rows = np.array(
            [
                [[q0 + w * MT * 16 + mt * 16 + G + 8 * rr for rr in range(2)] for mt in range(MT)]
                for w in range(warps)
            ]
        )  # [warps, MT, 2, 32]

        stage, k0 = 0, 0
        while k0 < end:
            sh.wait_group(0)  # + __syncthreads
            if k0 + COLS < end:
                nxt = (stage ^ 1) * stage_elems * ES
                copy_rows_async(sh, nxt, k, k0 + COLS, Tk, Dh, COLS, kD, threads)
                copy_rows_async(sh, nxt + tile * ES, v, k0 + COLS, Tk, Dv, COLS, kD, threads)
            sh.commit()
            ks_base = stage * stage_elems * ES
            vs_base = ks_base + tile * ES
            plain = (
                scale_log2 > 0
                and mask is None
                and bias is None
                and k0 + COLS <= Tk
                and q0 + nrows <= Tq
                and (not causal or k0 + COLS - 1 <= q0 + (Tk - Tq))
            )
            mul = scale_log2 if plain else 1.0
            stats.plain_tiles += plain
            stats.masked_tiles += not plain
            for w in range(warps):
                s = np.zeros((MT, 8, 32, 4))
                for ks in range(kD // 16):
                    for np_ in range(4):
                        kb = sh.ldmatrix_x4(ks_base + k_lane + (np_ * 16 * ld + ks * 16) * ES)
                        for mt in range(MT):
                            s[mt, 2 * np_] = mma(s[mt, 2 * np_], qa[w][mt][ks], kb[:, 0], kb[:, 1])
                            s[mt, 2 * np_ + 1] = mma(
                                s[mt, 2 * np_ + 1], qa[w][mt][ks], kb[:, 2], kb[:, 3]
                            )
                for mt in range(MT):
                    tile_max = np.full((2, 32), -np.inf)
                    for rr in range(2):
                        if plain:
                            for nt in range(8):
                                for j in range(2):  # raw scores
                                    tile_max[rr] = np.fmax(tile_max[rr], s[mt, nt, :, 2 * rr + j])
                            continue
                        row, col0 = rows[w, mt, rr], k0 + TG * 2
                        last = np.full(32, Tk - 1)
                        if causal:
                            last = np.where(row + (Tk - Tq) < last, row + (Tk - Tq), last)
                        last = np.where(row >= Tq, -1, last)
                        rel = last - col0
                        lim = np.clip(rel, -1, COLS)
                        for nt in range(8):
                            for j in range(2):
                                c = nt * 8 + j
                                x = s[mt, nt, :, 2 * rr + j] * scale
                                ok = c <= lim
                                rs, cs = (
                                    np.where(ok, row, 0),
                                    np.where(ok, col0 + c, 0),
                                )  # read only where ok
                                if mask is not None:
                                    ok = ok & mask[rs, cs]
                                if bias is not None:
                                    x = np.where(ok, x + bias[rs, cs], x)
                                s[mt, nt, :, 2 * rr + j] = np.where(ok, x * LOG2E, -np.inf)
                                tile_max[rr] = np.fmax(tile_max[rr], s[mt, nt, :, 2 * rr + j])
                    for rr in range(2):
                        mx = tile_max[rr]
                        mx = np.fmax(mx, shfl_xor(mx, 1))
                        mx = np.fmax(mx, shfl_xor(mx, 2)) * mul
                        m_new = np.fmax(m[w, mt, rr], mx)
                        base = np.where(m_new == -np.inf, 0.0, m_new)
                        corr = np.exp2(m[w, mt, rr] - base)
                        m[w, mt, rr] = m_new
                        lsum[w, mt, rr] *= corr
                        o[w, mt, :, :, 2 * rr] *= corr
                        o[w, mt, :, :, 2 * rr + 1] *= corr
                        for nt in range(8):
                            s[mt, nt, :, 2 * rr] = np.exp2(s[mt, nt, :, 2 * rr] * mul - base)
                            s[mt, nt, :, 2 * rr + 1] = np.exp2(
                                s[mt, nt, :, 2 * rr + 1] * mul - base
                            )
                            lsum[w, mt, rr] += s[mt, nt, :, 2 * rr] + s[mt, nt, :, 2 * rr + 1]
                for kk in range(COLS // 16):
                    pa = np.zeros((MT, 32, 4, 2))
                    for mt in range(MT):
                        pa[mt, :, 0] = pack(s[mt, 2 * kk, :, 0:2])
                        pa[mt, :, 1] = pack(s[mt, 2 * kk, :, 2:4])
                        pa[mt, :, 2] = pack(s[mt, 2 * kk + 1, :, 0:2])
                        pa[mt, :, 3] = pack(s[mt, 2 * kk + 1, :, 2:4])
                    for dp in range(kD // 16):
                        vb = sh.ldmatrix_x4(
                            vs_base + v_lane + (kk * 16 * ld + dp * 16) * ES, trans=True
                        )
                        for mt in range(MT):
                            o[w, mt, 2 * dp] = mma(o[w, mt, 2 * dp], pa[mt], vb[:, 0], vb[:, 1])
                            o[w, mt, 2 * dp + 1] = mma(
                                o[w, mt, 2 * dp + 1], pa[mt], vb[:, 2], vb[:, 3]
                            )
            k0 += COLS
            stage ^= 1
        sh.wait_group(0)

        for w in range(warps):
            for mt in range(MT):
                for rr in range(2):
                    total = lsum[w, mt, rr]
                    total = total + shfl_xor(total, 1)
                    total = total + shfl_xor(total, 2)
                    inv = np.where(total > 0, 1 / np.where(total > 0, total, 1), 0.0)
                    for L in range(32):
                        row = rows[w, mt, rr, L]
                        if row >= Tq:
                            continue
                        for dt in range(kD // 8):
                            col = dt * 8 + TG[L] * 2
                            if col >= Dv:
                                continue
                            for e in range(2):  # the pair store: col, col + 1
                                val = o[w, mt, dt, L, 2 * rr + e]
                                out[row, col + e] = val * inv[L] if inv[L] != 0 else 0.0
                                written[row, col + e] += 1
    assert np.all(written == 1), "every output element is written exactly once"
    return out


def attention(q, k, v, causal=False, scale=None, bias=None, mask=None, mode="late", stats=None):
    """The kernel over [B, H, T, D] operands, GQA by h // (Hq // Hkv), broadcast bias / mask."""
    B, Hq, Tq, Dh = q.shape
    Hkv, Tk, Dv = k.shape[1], k.shape[2], v.shape[3]
    kD = 64 if max(Dh, Dv) <= 64 else 128
    scale = 1 / np.sqrt(Dh) if scale is None else scale
    full = (B, Hq, Tq, Tk)
    maskb = None if mask is None else np.broadcast_to(mask, full)
    biasb = None if bias is None else np.broadcast_to(bias, full)
    out = np.zeros((B, Hq, Tq, Dv))
    for b in range(B):
        for h in range(Hq):
            hk = h // (Hq // Hkv)
            out[b, h] = kernel(
                q[b, h],
                k[b, hk],
                v[b, hk],
                causal,
                scale,
                None if maskb is None else maskb[b, h],
                None if biasb is None else biasb[b, h],
                kD,
                mode,
                stats,
            )
    return out


def main():
    check_block_coords()
    rng = np.random.default_rng(0)
    stats = Stats()
    worst = 0.0
    # B, Hq, Hkv, Tq, Tk, Dh, Dv, causal, extras
    cases = [
        (1, 1, 1, 300, 300, 64, 64, True, {}),  # multi-tile ring wrap, plain + diagonal tiles
        (1, 1, 1, 260, 200, 64, 64, False, {}),  # non-causal, plain tiles, ragged Tq/Tk
        (1, 1, 1, 260, 200, 64, 64, False, {"scale": -0.2}),  # scale <= 0: no plain tiles
        (2, 4, 2, 70, 70, 64, 64, True, {}),  # GQA, tile boundary + 6
        (1, 2, 2, 50, 77, 64, 32, False, {}),  # cross attention, Dv != Dh
        (1, 1, 1, 33, 129, 80, 80, True, {}),  # kD 128, causal with Tq < Tk
        (1, 2, 1, 1, 130, 128, 128, True, {}),  # decode: one query, GQA
        (1, 1, 1, 100, 40, 64, 64, True, {}),  # Tq > Tk: the first 60 rows see nothing (the
        # bindings refuse it; the kernel copes)
        (1, 1, 1, 1, 1, 8, 8, False, {}),  # the smallest
        (1, 2, 2, 9, 9, 32, 32, False, {"scale": 0.3, "row_mask": True}),
        (2, 2, 1, 37, 90, 64, 64, False, {"bias": True, "mask": True}),
        (2, 2, 1, 37, 90, 64, 64, True, {"bias": True, "mask": True}),
        (1, 2, 2, 70, 90, 32, 32, True, {"big": True}),  # scores in the thousands
        (1, 1, 1, 150, 150, 128, 96, True, {"bias": True}),  # kD 128, bias only, several tiles
    ]
    for B, Hq, Hkv, Tq, Tk, Dh, Dv, causal, ex in cases:
        q = rng.standard_normal((B, Hq, Tq, Dh))
        k, v = rng.standard_normal((B, Hkv, Tk, Dh)), rng.standard_normal((B, Hkv, Tk, Dv))
        if ex.get("big"):
            q *= 30
        kw = {"causal": causal, "scale": ex.get("scale")}
        if ex.get("bias"):
            kw["bias"] = rng.standard_normal((1, Hq, Tq, Tk))  # broadcast over batch
        if ex.get("mask"):
            mask = rng.random((B, 1, 1, Tk)) > 0.3  # key padding
            mask[-1] = False  # last batch: zeros
            kw["mask"] = mask
        if ex.get("row_mask"):
            mask = np.ones((Tq, Tk), bool)
            mask[3] = False
            kw["mask"] = mask
        want = reference.attention(q, k, v, **kw)
        for mode in ("early", "late"):
            got = attention(q, k, v, mode=mode, stats=stats, **kw)
            assert np.all(np.isfinite(got))
            if np.any(np.isnan(want)):
                raise AssertionError("the reference gave NaN")
            err = float(np.abs(got - want).max())
            worst = max(worst, err)
            print(
                f"B={B} Hq={Hq} Hkv={Hkv} Tq={Tq} Tk={Tk} Dh={Dh} Dv={Dv} causal={causal} "
                f"{sorted(ex)} "
                f"copies land {mode}: max error {err:.1e}"
            )
    print(f"key tiles: {stats.plain_tiles} plain, {stats.masked_tiles} with per-element tests")
    print(
        f"ldmatrix phases: {stats.ldmatrix_phases}, with a bank conflict: "
        f"{stats.ldmatrix_conflicts}; "
        f"cp.async store phases: {stats.cp_phases}, with a bank conflict: {stats.cp_conflicts}"
    )
    assert stats.ldmatrix_conflicts == 0 and stats.cp_conflicts == 0
    assert worst < 1e-12, worst
    print(f"all cases match the reference, worst error {worst:.1e}")


if __name__ == "__main__":
    main()
