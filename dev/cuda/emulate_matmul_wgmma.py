"""A NumPy transcription of matmul versions 4 and 5 (cpp/cuda/matmul_4_wgmma.cuh,
matmul_5_wgmma_tma.cuh)
and the B-transpose pre-pass, at the level of shared-memory bytes, wgmma descriptors and accumulator
fragments, run against np.matmul in float64.

What it replays, given the PTX ISA's definitions (modelled below, see wgmma.cuh):
  * matmul_transpose_b: bt[z][n][k] = B[z][k][n] with zero padding to kp = K rounded up to 8, over
    the distinct B matrices (one when B is broadcast over the batch);
  * the block rasterisation (version 3's mma_tile_of) and the cp.async ring: slot t % 4, loads
    issued two steps ahead with one wgmma batch in flight (no load may overwrite a slot that batch
    still reads), chunk -> (row, 16-byte chunk) of the loader, zero-fill past M, N and K;
  * algo="wgmma": the 128-byte swizzle of the stores (swizzle128) against the way the hardware
    reads a K-major, 128B-swizzled operand through a descriptor (start address + 32 bytes per
    16-wide k slice, SBO = 1024 between 8-row groups, the XOR of address bits 4-6 with bits 7-9):
    every element a wgmma reads must be the A / B^T element the math wants;
  * algo="wgmma_direct": B's row-major tile stored as 4 n-atoms of [64 k][64 n] (chunk c of k-row
    r at c ^ (r % 8)) against the MN-major descriptor model (LBO = 8192 between n-atoms, SBO = 1024
    between 8-row k-groups, +2048 bytes per 16-wide k slice, imm-trans-b 1);
  * algo="wgmma_tma": the mbarrier protocol (full/empty barriers, phase parities, one batch in
    flight, thread 0 refilling a slot after both warpgroups released it) under random interleavings
    of the warpgroups, the TMA unit and the tensor cores, and planted bugs (TMA_MUTATIONS) the check
    must catch.  Its shared-memory layouts are those of wgmma_direct, which the TMA's 128-byte
    swizzle produces by construction (a 64-element box row is one 128-byte row, chunks XORed with
    the row within 1024-byte atoms);
  * fold_batch: a batch whose B is shared and whose A batches lie back to back becomes one matrix
    (checked on strided views of one buffer, folding and refusing);
  * the accumulator layout d[4 j + e] -> (row, column) of the epilogue, each C element written once;
  * that the ring's slots and the atoms are 1024-byte aligned, and that the 8 threads filling a row
    hit 8 distinct bank groups.
It cannot check the hardware's own reading of a descriptor -- that is the model, taken from the PTX
ISA and the LBO 16 / SBO 1024 / 128B-swizzle convention of the TMA-based Hopper kernels.
Usage: python dev/cuda/emulate_matmul_wgmma.py
"""

import numpy as np

BM, BN, BK, THREADS, STAGES = 128, 256, 64, 256, 4
STAGE_A, STAGE_B = BM * BK * 2, BN * BK * 2  # bytes
GROUP_M = 8
ES = 2  # bytes per element


def tile_of(i, tiles_m, tiles_n):  # version 3's mma_tile_of, shared by 4 and 5
    per_group = GROUP_M * tiles_n
    first_m = (i // per_group) * GROUP_M
    rows = min(tiles_m - first_m, GROUP_M)
    return first_m + (i % per_group) % rows, (i % per_group) // rows


def swizzle128(row, chunk):
    return row * 128 + ((chunk ^ (row & 7)) << 4)


ATOM_N = BK * 128  # MN-major B: bytes from one 64-wide n-atom to the next


def hw_address_mn(start, n, k, lbo=ATOM_N, sbo=1024):
    """The byte the hardware reads for element (n, k) of an MN-major SW128 operand (imm-trans-b 1,
    n < 256, k < 16): n-atoms of 64 at LBO, k-groups of 8 rows at SBO, 128-byte k-rows, XOR swizzle.
    """
    addr = start + (n // 64) * lbo + (k // 8) * sbo + (k % 8) * 128 + (n % 64) * ES
    return addr ^ (((addr >> 7) & 7) << 4)


def hw_address(start, m, k):
    """The byte the hardware reads for element (m, k) of a K-major SW128 operand (m < 64 or 256,
    k < 16) whose descriptor starts at `start` (LBO unused, SBO 1024)."""
    addr = start + (m // 8) * 1024 + (m % 8) * 128 + k * ES
    return addr ^ (((addr >> 7) & 7) << 4)


class Smem:
    """Shared memory as float64 values per 2-byte element address (NaN = never written)."""

    def __init__(self, nbytes):
        self.v = np.full(nbytes // ES, np.nan)

    def cp_async16(self, dst, values, nbytes):
        assert dst % 16 == 0, "cp.async destination not 16-byte aligned"
        chunk = np.zeros(8)
        n = nbytes // ES
        chunk[:n] = values[:n]
        self.v[dst // ES : dst // ES + 8] = chunk

    def read(self, addr):
        return self.v[addr // ES]


def transpose_b(B, K, N, kp):
    """matmul_transpose_b for one B matrix [K, N] -> [N, kp] (32x32 tiles, 32x8 threads)."""
    bt = np.full((N, kp), np.nan)
    for bx in range((kp + 31) // 32):
        for by in range((N + 31) // 32):
            k0, n0 = bx * 32, by * 32
            tile = np.full((32, 34), np.nan)
            for ty in range(8):
                for tx in range(32):
                    for i in range(4):
                        k, n = k0 + ty + 8 * i, n0 + tx
                        tile[ty + 8 * i, tx] = B[k, n] if k < K and n < N else 0.0
            for ty in range(8):
                for tx in range(32):
                    for i in range(4):
                        n, k = n0 + ty + 8 * i, k0 + tx
                        if n < N and k < kp:
                            bt[n, k] = tile[tx, ty + 8 * i]
    assert not np.isnan(bt).any(), "bt has unwritten elements"
    return bt


def block(A, bt, Bm, M, N, K, kp, m0, n0, C, written, stats, in_flight, direct):
    ktiles = (K + BK - 1) // BK
    sm = Smem(1024 + STAGES * (STAGE_A + STAGE_B))
    base = 1024  # any 1024-aligned base: the rule is relative
    a_smem, b_smem = base, base + STAGES * STAGE_A
    assert a_smem % 1024 == 0 and b_smem % 1024 == 0 and STAGE_A % 1024 == 0 and STAGE_B % 1024 == 0

    def load_tile(t):
        s, k0 = t % STAGES, t * BK
        for tid in range(THREADS):
            for i in range(4):
                c = tid + THREADS * i
                r, ch = c >> 3, c & 7
                row, col = m0 + r, k0 + ch * 8
                left = K - col if row < M else 0
                nbytes = max(0, min(left, 8)) * ES
                vals = A[row, col : col + 8] if nbytes else np.zeros(8)
                sm.cp_async16(a_smem + s * STAGE_A + swizzle128(r, ch), vals, nbytes)
            for i in range(8):
                c = tid + THREADS * i
                if direct:  # B [K, N] as it lies: k-row c/32, n-chunk c%32
                    r, c8 = c >> 5, c & 31
                    k, col = k0 + r, n0 + c8 * 8
                    left = N - col if k < K else 0
                    nbytes = max(0, min(left, 8)) * ES
                    sm.cp_async16(
                        b_smem + s * STAGE_B + (c8 >> 3) * ATOM_N + swizzle128(r, c8 & 7),
                        Bm[k, col : col + 8] if nbytes else np.zeros(8),
                        nbytes,
                    )
                    continue
                r, ch = c >> 3, c & 7
                n, col = n0 + r, k0 + ch * 8
                inside = n < N and col < kp
                sm.cp_async16(
                    b_smem + s * STAGE_B + swizzle128(r, ch),
                    bt[n, col : col + 8] if inside else np.zeros(8),
                    16 if inside else 0,
                )
        # bank groups of the 8 threads that fill one row (tid 8q .. 8q+7, first chunk each)
        for q in range(0, THREADS, 8):
            groups = {(swizzle128((q + j) >> 3, (q + j) & 7) >> 4) & 7 for j in range(8)}
            stats["store_phases"] += 1
            stats["store_conflicts"] += len(groups) != 8

    d = np.zeros((2, 4, 32, 128))  # [warpgroup, warp, lane, accumulator]
    ahead = STAGES - 1 - in_flight  # kAhead: steps loaded ahead of the one multiplied
    for t in range(ahead):  # prologue
        if t < ktiles:
            load_tile(t)
    for t in range(ktiles):
        # cp_async_wait<ahead-1> with ahead + t groups committed: steps <= t have landed (the replay
        # loads eagerly).  Batches that may still be reading shared memory now: t-1 when one batch
        # stays in flight (wgmma_wait<1> at the end of step t-1), none otherwise.
        if t + ahead < ktiles:
            busy = {(t - 1) % STAGES} if in_flight and t >= 1 else set()
            slot = (t + ahead) % STAGES
            assert slot not in busy, "a load overwrites a slot an in-flight wgmma batch reads"
            assert slot != t % STAGES, "a load overwrites the slot about to be read"
            load_tile(t + ahead)  # issued before step t's wgmmas, as in the kernel
        s = t % STAGES
        k0 = t * BK
        for wg in range(2):
            sa = a_smem + s * STAGE_A + wg * 64 * 128
            sb = b_smem + s * STAGE_B
            for kk in range(BK // 16):
                # the operands as the hardware reads them through the descriptors
                a_op = np.array(
                    [
                        [sm.read(hw_address(sa + kk * 32, m, k)) for k in range(16)]
                        for m in range(64)
                    ]
                )
                if direct:
                    b_op = np.array(
                        [
                            [sm.read(hw_address_mn(sb + kk * 2048, n, k)) for k in range(16)]
                            for n in range(256)
                        ]
                    )
                else:
                    b_op = np.array(
                        [
                            [sm.read(hw_address(sb + kk * 32, n, k)) for k in range(16)]
                            for n in range(256)
                        ]
                    )
                assert not np.isnan(a_op).any() and not np.isnan(b_op).any(), (
                    "wgmma read unwritten shared memory"
                )
                # ... are the elements the math wants (zero past the edges)
                want_a = np.zeros((64, 16))
                for m in range(64):
                    row = m0 + wg * 64 + m
                    for k in range(16):
                        col = k0 + kk * 16 + k
                        if row < M and col < K:
                            want_a[m, k] = A[row, col]
                want_b = np.zeros((256, 16))
                for n in range(256):
                    for k in range(16):
                        col = k0 + kk * 16 + k
                        if n0 + n < N and col < kp:
                            want_b[n, k] = (
                                Bm[col, n0 + n]
                                if direct and col < K
                                else (0.0 if direct else bt[n0 + n, col])
                            )
                assert np.array_equal(a_op, want_a), f"A operand mismatch (t={t}, wg={wg}, kk={kk})"
                assert np.array_equal(b_op, want_b), f"B operand mismatch (t={t}, wg={wg}, kk={kk})"
                prod = a_op @ b_op.T  # [64, 256]
                # accumulator d[4j+e] of (warp w, lane l): row 16w + l/4 + 8(e/2), col 8j + 2(l%4) +
                # e%2
                for w in range(4):
                    for lane in range(32):
                        for i in range(128):
                            j, e = i // 4, i % 4
                            d[wg, w, lane, i] += prod[
                                16 * w + lane // 4 + 8 * (e // 2), 8 * j + 2 * (lane % 4) + e % 2
                            ]
    # epilogue
    for wg in range(2):
        for w in range(4):
            for lane in range(32):
                for half in range(2):
                    r = m0 + wg * 64 + w * 16 + (lane >> 2) + half * 8
                    if r >= M:
                        continue
                    for j in range(32):
                        c = n0 + j * 8 + (lane & 3) * 2
                        lo, hi = (
                            d[wg, w, lane, 4 * j + 2 * half],
                            d[wg, w, lane, 4 * j + 2 * half + 1],
                        )
                        if c < N:
                            C[r, c] = lo
                            written[r, c] += 1
                        if c + 1 < N:
                            C[r, c + 1] = hi
                            written[r, c + 1] += 1


def matmul(A, B, stats, in_flight=0, direct=False):
    """A [batch, M, K] (or [M, K]), B [K, N] broadcast or [batch, K, N]."""
    A3 = A if A.ndim == 3 else A[None]
    B3 = B if B.ndim == 3 else B[None]
    batch, M, K = A3.shape
    N = B3.shape[-1]
    kp = (K + 7) // 8 * 8
    bts = [transpose_b(Bz, K, N, kp) for Bz in B3]  # nbt = 1 when B is broadcast
    tiles_m, tiles_n = (M + BM - 1) // BM, (N + BN - 1) // BN
    seen = sorted(tile_of(i, tiles_m, tiles_n) for i in range(tiles_m * tiles_n))
    assert seen == [(a, b) for a in range(tiles_m) for b in range(tiles_n)], (
        "rasterisation is not a bijection"
    )
    out = np.full((batch, M, N), np.nan)
    for z in range(batch):
        bt = bts[z if len(bts) > 1 else 0]
        written = np.zeros((M, N), int)
        for i in range(tiles_m * tiles_n):
            tm, tn = tile_of(i, tiles_m, tiles_n)
            Bm = B3[z if len(B3) > 1 else 0]
            block(
                A3[z],
                bt,
                Bm,
                M,
                N,
                K,
                kp,
                tm * BM,
                tn * BN,
                out[z],
                written,
                stats,
                in_flight,
                direct,
            )
        assert (written == 1).all(), "an element of C was written zero or several times"
    return out if A.ndim == 3 else out[0]


class _Bar:
    """An mbarrier: a phase completes when `count` arrivals and the expected bytes are in;
    try_wait.parity P succeeds once the phase with parity P has completed -- so on a fresh barrier
    (phase 0 running) parity 1 passes at once, which is how a producer's first pass over the ring
    needs no wait."""

    def __init__(self, count):
        self.count, self.arrived, self.tx, self.phase = count, 0, 0, 0  # phase = completed phases

    def arrive(self, expect_tx=0):
        self.arrived += 1
        self.tx += expect_tx
        self._maybe_complete()

    def complete_tx(self, n):
        self.tx -= n
        self._maybe_complete()

    def _maybe_complete(self):
        if self.arrived == self.count and self.tx == 0:
            self.phase += 1
            self.arrived = 0

    def done(self, parity):
        return self.phase % 2 != parity


# Deliberate bugs the protocol checks must catch (tests/kernels/test_cuda_emulation.py plants each).
TMA_MUTATIONS = ("no_empty_wait", "empty_parity_flipped", "empty_count_1", "wait_group_2")


class _TmaRing:
    """The TMA kernel's state on `ctas` CTAs (1 for wgmma_tma): per CTA a ring of S slots with
    full/empty
    barriers, the parts a slot's step arrives in (A from this CTA's producer; B whole, or, with a
    pair, half r from CTA r's producer multicast to both), the wgmma batches in flight per consumer
    warpgroup and the batches that may still read each slot; TMA boxes land one at a time, in any
    order, in each of their destinations.  A CTA exits when its three programs have finished, after
    which nothing may land on it or arrive on its barriers."""

    def __init__(self, ctas, empty_count):
        self.ctas = ctas
        self.parts = ("A", "B") if ctas == 1 else ("A",) + tuple(f"B{r}" for r in range(ctas))
        self.full = [[_Bar(1) for _ in range(STAGES)] for _ in range(ctas)]
        self.empty = [[_Bar(empty_count) for _ in range(STAGES)] for _ in range(ctas)]
        self.holds = [[dict.fromkeys(self.parts) for _ in range(STAGES)] for _ in range(ctas)]
        self.readers = [[set() for _ in range(STAGES)] for _ in range(ctas)]
        self.batches = {(c, wg): [] for c in range(ctas) for wg in (0, 1)}
        self.landing = []  # (destination CTA, slot, part, step)
        self.exited = set()

    def issue(self, c, g, expect_units):  # CTA c's producer issues step g
        sl = g % STAGES
        boxes = [(c, "A")] + (
            [(c, "B")] if self.ctas == 1 else [(d, f"B{c}") for d in range(self.ctas)]
        )
        for d, part in boxes:
            assert d not in self.exited, f"CTA {c} writes into CTA {d}, which has exited"
            assert not self.readers[d][sl], (
                f"slot {sl} of CTA {d} refilled (step {g}) while {self.readers[d][sl]} may read it"
            )
            self.holds[d][sl][part] = None
            self.landing.append((d, sl, part, g))
        self.full[c][sl].arrive(expect_tx=expect_units)

    def land(self, i):
        d, sl, part, g = self.landing.pop(i)
        assert d not in self.exited, f"a box lands in CTA {d}, which has exited"
        self.holds[d][sl][part] = g
        self.full[d][sl].complete_tx(1)

    def start(self, c, wg, g):  # consumer wg of CTA c issues step g's batch
        sl = g % STAGES
        held = self.holds[c][sl]
        assert all(v == g for v in held.values()), (
            f"CTA {c} wg{wg} step {g} reads slot {sl} holding {held}"
        )
        self.batches[(c, wg)].append(g)
        self.readers[c][sl].add((wg, g))

    def finish_batch(self, key):
        g = self.batches[key].pop(0)
        self.readers[key[0]][g % STAGES].discard((key[1], g))

    def arrive_empty(self, c_to, sl):
        assert c_to not in self.exited, f"an arrival on CTA {c_to}'s empty[{sl}] after it exited"
        self.empty[c_to][sl].arrive()


def _simulate(st, progs, rng, what):
    """Interleave the programs (generators of ("do", fn) / ("wait", predicate), keyed (cta, name)),
    the TMA boxes landing (one at a time, in any order) and the tensor cores (a warpgroup's batches
    finish in order) at random until all is done; a state where nothing can move is a deadlock.  A
    CTA exits when all its programs have finished."""
    cur = {k: next(v, None) for k, v in progs.items()}
    live = {k for k, v in cur.items() if v is not None}
    while live or st.landing or any(st.batches.values()):
        options = [("prog", k) for k in sorted(live, key=str) if cur[k][0] == "do" or cur[k][1]()]
        options += [("land", i) for i in range(len(st.landing))]
        options += [("mma", k) for k, b in st.batches.items() if b]
        assert options, f"deadlock ({what})"
        kind, arg = options[rng.integers(len(options))]
        if kind == "prog":
            k, fn = cur[arg]
            if k == "do":
                fn()
            cur[arg] = next(progs[arg], None)
            if cur[arg] is None:
                live.discard(arg)
                if not any(k2[0] == arg[0] for k2 in live):
                    st.exited.add(arg[0])
        elif kind == "land":
            st.land(arg)
        else:
            st.finish_batch(arg)


def check_tma_protocol(ktiles, rng, trials=200, mutation=None):
    """matmul_wgmma_tma's mbarrier protocol under random interleavings of its two warpgroups, the
    TMA unit and the tensor cores: no deadlock, no slot overwritten while a batch may read it, and
    every batch reads its own step's data after it has landed.  full[s]: 1 arrival (+ the bytes),
    empty[s]: 2 arrivals.  Thread 0 of warpgroup 0 is also the producer: it fills every slot up
    front, then refills slot (t-1) % S for step t-1+S once both warpgroups have released it."""
    assert mutation in (None,) + TMA_MUTATIONS
    S = STAGES
    pending = 2 if mutation == "wait_group_2" else 1
    for _ in range(trials):
        st = _TmaRing(1, empty_count=1 if mutation == "empty_count_1" else 2)

        def program(wg):
            if wg == 0:
                for t in range(min(S, ktiles)):
                    yield ("do", lambda t=t: st.issue(0, t, 2))
            for t in range(ktiles):
                sl = t % S
                yield ("wait", lambda sl=sl, t=t: st.full[0][sl].done((t // S) & 1))
                yield ("do", lambda t=t: st.start(0, wg, t))
                yield ("wait", lambda: len(st.batches[(0, wg)]) <= pending)  # wgmma_wait<1>
                if t >= 1:
                    sp = (t - 1) % S
                    yield ("do", lambda sp=sp: st.arrive_empty(0, sp))
                    if wg == 0 and t - 1 + S < ktiles:
                        if mutation != "no_empty_wait":
                            parity = ((t - 1) // S) & 1
                            if mutation == "empty_parity_flipped":
                                parity ^= 1
                            yield (
                                "wait",
                                lambda sp=sp, parity=parity: st.empty[0][sp].done(parity),
                            )
                        yield ("do", lambda t=t: st.issue(0, t - 1 + S, 2))
            yield ("wait", lambda: not st.batches[(0, wg)])  # wgmma_wait<0>

        _simulate(st, {(0, 0): program(0), (0, 1): program(1)}, rng, f"wgmma_tma, ktiles={ktiles}")
    return True


def fold_batch(M, lda, batch_shape, stride_a, stride_b):
    """matmul_5_wgmma_tma.cuh's fold_batch: (True, batch M) when B is shared by every batch and A's
    batches lie
    one after another at M rows of lda, so the batch folds into M; else (False, M)."""
    batch = int(np.prod(batch_shape)) if len(batch_shape) else 1
    if batch <= 1:
        return batch == 1, M
    want = M * lda
    for d in range(len(batch_shape) - 1, -1, -1):
        if stride_b[d] != 0 and batch_shape[d] != 1:
            return False, M
        if batch_shape[d] != 1 and stride_a[d] != want:
            return False, M
        want *= batch_shape[d]
    return True, M * batch


def check_fold_batch(rng):
    """For strided A views over one buffer: where fold_batch says yes, the [batch M, K] matrix of
    row stride lda read from A's base is exactly A's batches stacked (and B is one matrix); where it
    says no, stacking would read the wrong rows or B differs between batches.  Returns the number of
    cases of each kind."""
    folded = refused = 0
    cases = [  # (batch shape, A's batch strides in elements, B's batch strides, M, K, lda)
        ((3,), (5 * 8,), (0,), 5, 8, 8),  # x [3, 5, 8] contiguous, B shared: folds
        (
            (2, 3),
            (3 * 4 * 16, 4 * 16),
            (0, 0),
            4,
            8,
            16,
        ),  # padded rows (lda 16 > K 8), two batch dims
        ((2, 1, 3), (3 * 6 * 8, 7, 6 * 8), (0, 5, 0), 6, 8, 8),  # size-1 dims: any stride
        ((3,), (5 * 8,), (64,), 5, 8, 8),  # B batched: no
        ((3,), (0,), (0,), 5, 8, 8),  # A broadcast: no
        ((2, 3), (5 * 8, 3 * 5 * 8), (0, 0), 5, 8, 8),  # batch dims transposed: no
        ((3,), (6 * 8,), (0,), 5, 8, 8),  # a gap between batches: no
    ]
    for shape, sa, sb, M, K, lda in cases:
        buf = rng.standard_normal(4096)
        ok, m_total = fold_batch(M, lda, shape, sa, sb)
        z_all = list(np.ndindex(*shape))
        stacked = np.concatenate(
            [
                np.stack(
                    [buf[sum(i * st for i, st in zip(z, sa)) + r * lda :][:K] for r in range(M)]
                )
                for z in z_all
            ]
        )
        b_differs = any(st != 0 and n != 1 for n, st in zip(shape, sb))
        if ok:
            flat = np.stack([buf[r * lda :][:K] for r in range(m_total)])
            assert m_total == M * len(z_all) and np.array_equal(flat, stacked) and not b_differs, (
                f"fold_batch folded {shape}, {sa}, {sb} wrongly"
            )
            folded += 1
        else:
            flat = np.stack([buf[r * lda :][:K] for r in range(M * len(z_all))])
            assert b_differs or not np.array_equal(flat, stacked), (
                f"fold_batch refused foldable {shape}, {sa}"
            )
            refused += 1
    return folded, refused


def main():
    rng_p = np.random.default_rng(1)
    for kt in (1, 2, 3, 4, 5, 9, 17):
        check_tma_protocol(kt, rng_p)
    print(
        "wgmma_tma mbarrier protocol: no deadlock, no early refill, every batch reads its own "
        "landed step "
        "(ktiles 1..17, random interleavings)"
    )
    folded, refused = check_fold_batch(rng_p)
    print(
        f"fold_batch: {folded} batched problems folded into one matrix exactly, {refused} refused "
        "correctly"
    )
    rng = np.random.default_rng(0)
    stats = {"store_phases": 0, "store_conflicts": 0}
    worst = 0.0
    cases = [  # (batch or None, M, K, N, B batched?)
        (None, 1, 1, 1, False),  # the smallest: one zero-filled chunk each
        (None, 130, 72, 260, False),  # ragged M and N tiles, K past one 64-step
        (None, 64, 200, 40, False),  # K = 200: 4 steps, the ring fills, partial chunk
        (None, 40, 520, 24, False),  # K = 520: 9 steps, the ring wraps twice
        (2, 33, 17, 9, False),  # batch with B broadcast, K not a multiple of 8
        (2, 20, 24, 300, True),  # batched B: one transposed copy per batch
    ]
    for batch, M, K, N, b_batched in cases:
        A = rng.standard_normal((batch, M, K) if batch else (M, K))
        B = rng.standard_normal((batch, K, N) if b_batched else (K, N))
        want = np.matmul(A, B)
        for name, in_flight, direct in (("wgmma", 1, False), ("wgmma_direct", 1, True)):
            got = matmul(A, B, stats, in_flight, direct)
            err = float(np.abs(got - want).max())
            worst = max(worst, err)
            print(
                f"{name:<13}: batch={batch} M={M} K={K} N={N} B batched={b_batched}: max abs err "
                f"{err:.1e}"
            )
            assert err < 1e-12, "mismatch against np.matmul"
    print(
        f"cp.async row phases: {stats['store_phases']}, with a bank conflict: "
        f"{stats['store_conflicts']}"
    )
    assert stats["store_conflicts"] == 0
    print(f"all cases match np.matmul, worst error (max abs) {worst:.1e}")


if __name__ == "__main__":
    main()
