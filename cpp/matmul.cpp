// Matrix multiplication C = A·B in float32, np.matmul semantics ([..., M, K] @ [..., K, N], batch
// dimensions broadcast), as three numbered versions, each section below opening with what it adds
// over the one before:
//
//   1. naive    the textbook triple loop, reading A and B through their strides (the test oracle)
//   2. blocked  the GotoBLAS/BLIS GEMM: packed operands, cache blocks, a SIMD register micro-kernel
//   3. skinny   M <= SKINNY_M (the decode GEMV, x·Wᵀ or x·W): B read in place, once, as one
//               sequential stream per thread, for a few output rows
//   4. group    several skinny x·Wᵢᵀ of one x (Q/K/V, gate/up) in one parallel region
//               (``matmul_group``)
//
// version="naive" runs 1; version="fast" runs 3 where it applies and 2 otherwise (the dispatch at
// the end of the file says when, and how batches are spread over threads).  Version 2's loop nest,
// five loops around a micro-kernel:
//
//      for jc in N step NC:                 B panel  Bp = B[pc:pc+kc, jc:jc+nc]  (~L3 / shared L2)
//        for pc in K step KC:               packed once per (jc, pc) by all threads together
//          for ic in M step MC:             A block  Ap = A[ic:ic+mc, pc:pc+kc]  (per thread, L2)
//            for jr in nc step NR:          B micro-panel kc x NR stays in L1 ...
//              for ir in mc step MR:        ... while A micro-panels stream from L2
//                micro-kernel: C[MR x NR] += Ap(MR x kc) · Bp(kc x NR)
#include "common.h"
#include "gemm.h"
#include "simd.h"
#include "strided.h"

#include <algorithm>

namespace pyworkloads {

using namespace simd;
using namespace gemm;  // Mat, the micro-tile MR x NR, Blocking, PackB, GemmPlan (gemm.h: qmatmul.cpp reuses them)

namespace {

constexpr int64_t SKINNY_M = 4;
constexpr int GEMV_PREFETCH = 256;      // floats (1 KB) ahead on each weight row
constexpr int PREFETCH_K = 8;   // k steps ahead (8 x 128 B)

Blocking g_block;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// =============================================================================================
// 1. naive: the definition, C[i, j] = Σ_k A[i, k] · B[k, j].  The loops run i, k, j so the inner
// loop walks rows of B and C (unit stride when B is row-major); A and B are read through their
// strides, so any layout works, and nothing is blocked, packed, vectorised or threaded.  Kept for
// reading and as the oracle the tests check version="fast" against.
// =============================================================================================
void gemm_naive(int64_t M, int64_t N, int64_t K, Mat A, Mat B, float* C) {
    for (int64_t i = 0; i < M; ++i) {
        float* c = C + i * N;
        for (int64_t j = 0; j < N; ++j) c[j] = 0.f;
        for (int64_t k = 0; k < K; ++k) {
            const float a = A.p[i * A.rs + k * A.cs];
            for (int64_t j = 0; j < N; ++j) c[j] += a * B.p[k * B.rs + j * B.cs];
        }
    }
}

// =============================================================================================
// 2. blocked: the GotoBLAS/BLIS GEMM (the loop nest at the top of the file).  Over version 1 it
// reuses every loaded value from cache and registers instead of memory.  Packing copies each
// operand block into the exact order the micro-kernel reads it (A: MR values per k; B: NR values
// per k, zero-padded at the edges), so the micro-kernel does unit-stride loads only, whatever the
// strides of A and B were -- which is why a transposed operand costs nothing extra: `x @ W.T` with
// W a C-contiguous [N, K] weight is packed straight from W's rows.  The micro-kernel keeps an
// MR x NR tile of C in registers (AVX-512: 14 x 32 = 28 of the 32 zmm registers; AVX2: 6 x 16 = 12
// ymm; portable: 4 x 16 plain floats) and per k does NR/VL vector loads of B, MR broadcasts of A and
// MR·NR/VL FMAs; it prefetches its C tile (rows are ldc apart) and the B micro-panel a few k ahead,
// since kc x NR outgrows L1 at kc = 512.  The cache blocks (KC 512, MC 168, NC 1536) fit a core with
// 48 KB of L1d and 2 MB of L2; `_set_matmul_blocking` changes them for experiments (a tuning hook;
// each call reads them once).  Threads: the team that runs -- its size taken inside the parallel
// region, since it may be smaller than asked for -- is laid out as a tm x tn grid -- M
// split into tm contiguous ranges (balanced, MR-aligned), each nc panel's NR-columns split into tn
// ranges -- tn > 1 only when M is too short to feed every thread.  B panels are packed
// cooperatively (a share per thread, then a barrier), A blocks per thread.  A row-major B is packed
// row by row (one pass over each row of the block); a transposed B panel by panel, NR rows of W
// side by side.
// =============================================================================================

// ---- 2a. packing ------------------------------------------------------------------------------
// Ap[ir*kc + k*MR + i] = A[ir+i, k] for the mc x kc block at A; rows past mc are zero.
void pack_a(int64_t mc, int64_t kc, Mat A, float* Ap) {
    for (int64_t ir = 0; ir < mc; ir += MR) {
        const int mr = static_cast<int>(std::min<int64_t>(MR, mc - ir));
        float* dst = Ap + ir * kc;
        if (A.cs == 1 && mr == MR) {
            // k outer: MR rows are read side by side, so MR cache-line misses are in flight at once
            const float* src[MR];
            for (int i = 0; i < MR; ++i) src[i] = A.p + (ir + i) * A.rs;
            for (int64_t k = 0; k < kc; ++k)
#pragma GCC unroll 16
                for (int i = 0; i < MR; ++i) dst[k * MR + i] = src[i][k];
        } else {
            for (int64_t k = 0; k < kc; ++k)
                for (int i = 0; i < mr; ++i) dst[k * MR + i] = A.p[(ir + i) * A.rs + k * A.cs];
        }
        if (mr < MR)
            for (int64_t k = 0; k < kc; ++k)
                for (int i = mr; i < MR; ++i) dst[k * MR + i] = 0.f;
    }
}

}  // namespace

namespace gemm {
// Bp[jr*kc + k*NR + j] = B[k, jr+j] for the NR-column panels [q0, q1) of the kc x nc block at B.
void pack_b(int64_t kc, int64_t nc, int64_t q0, int64_t q1, Mat B, float* Bp) {
    if (B.cs == 1) {
        // Row-major B: walk each row of the block once, left to right, dropping NR floats into each
        // panel -- panel by panel would touch kc rows (and pages) per NR floats.
        for (int64_t k = 0; k < kc; ++k) {
            const float* src = B.p + k * B.rs;
            for (int64_t q = q0; q < q1; ++q) {
                const int64_t jr = q * NR;
                const int nr = static_cast<int>(std::min<int64_t>(NR, nc - jr));
                float* d = Bp + jr * kc + k * NR;
                if (nr == NR) {
                    for (int v = 0; v < NV; ++v) vstore(d + v * VL, vload(src + jr + v * VL));
                } else {
                    for (int j = 0; j < nr; ++j) d[j] = src[jr + j];
                    for (int j = nr; j < NR; ++j) d[j] = 0.f;
                }
            }
        }
        return;
    }
    for (int64_t q = q0; q < q1; ++q) {
        const int64_t jr = q * NR;
        const int nr = static_cast<int>(std::min<int64_t>(NR, nc - jr));
        float* dst = Bp + jr * kc;
        if (B.rs == 1 && nr == NR) {                   // transposed B (W.T): contiguous along k
            const float* src[NR];
            for (int j = 0; j < NR; ++j) src[j] = B.p + (jr + j) * B.cs;
            int64_t k = 0;
#if defined(PYW_SIMD_TRANSPOSE)
            for (; k + VL <= kc; k += VL)               // VL x VL blocks through registers
                for (int h = 0; h < NR / VL; ++h) {
                    vf r[VL];
                    for (int i = 0; i < VL; ++i) {
                        __builtin_prefetch(src[VL * h + i] + k + 64);   // 4 lines ahead on each row
                        r[i] = vload(src[VL * h + i] + k);
                    }
                    vtranspose(r);
                    for (int c = 0; c < VL; ++c) vstore(dst + (k + c) * NR + VL * h, r[c]);
                }
#endif
            for (; k < kc; ++k)
#pragma GCC unroll 32
                for (int j = 0; j < NR; ++j) dst[k * NR + j] = src[j][k];
            continue;
        }
        for (int64_t k = 0; k < kc; ++k) {
            for (int j = 0; j < nr; ++j) dst[k * NR + j] = B.p[k * B.rs + (jr + j) * B.cs];
            for (int j = nr; j < NR; ++j) dst[k * NR + j] = 0.f;
        }
    }
}

}  // namespace gemm

namespace {

// ---- 2b. micro-kernel: C[mr x nr] (=|+=) Ap(MR x kc) · Bp(kc x NR) ----------------------------
inline void micro_kernel(int64_t kc, const float* __restrict Ap, const float* __restrict Bp, float* C, int64_t ldc,
                         int mr, int nr, bool accumulate) {
    vf c[MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
        // C rows are ldc apart: fetch the tile early so its loads at the end do not stall.
        __builtin_prefetch(C + i * ldc, 1);
        __builtin_prefetch(C + i * ldc + NR - 1, 1);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) c[i][v] = vzero();
    }
#pragma GCC unroll 4
    for (int64_t k = 0; k < kc; ++k) {
        vf b[NV];
        // the B micro-panel (kc x NR) outgrows L1 for large kc: stream it in ahead of use
        __builtin_prefetch(Bp + PREFETCH_K * NR);
        __builtin_prefetch(Bp + PREFETCH_K * NR + 16);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) b[v] = vload(Bp + v * VL);
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) {
            const vf a = vset1(Ap[i]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) c[i][v] = vfma(a, b[v], c[i][v]);
        }
        Ap += MR;
        Bp += NR;
    }
    // The tile leaves the registers through constant indices only (the loops unroll fully): an
    // accumulator indexed by a run-time row count would make the compiler keep the whole tile in
    // memory and spill it on every k step.  Edge tiles go through a buffer on the stack.
    if (mr == MR && nr == NR) {
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) {
                float* dst = C + i * ldc + v * VL;
                vstore(dst, accumulate ? vadd(vload(dst), c[i][v]) : c[i][v]);
            }
        return;
    }
    alignas(64) float tile[MR * NR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) vstore(tile + i * NR + v * VL, c[i][v]);
    for (int i = 0; i < mr; ++i)
        for (int j = 0; j < nr; ++j) C[i * ldc + j] = accumulate ? C[i * ldc + j] + tile[i * NR + j] : tile[i * NR + j];
}

// ---- 2c. the loop nest and its thread grid ----------------------------------------------------
// The plan depends on the number of threads that actually run: OpenMP may grant a team smaller
// than the one asked for (OMP_THREAD_LIMIT, OMP_DYNAMIC on a loaded machine), so gemm_team plans
// for its own team, inside the region.  The workspace is sized before the region for any team of
// up to nt threads: B panels (the same for every team) plus nt A blocks of the largest size, the
// one-thread plan's (mc shrinks as the team grows).  B itself arrives through a packer (gemm.h's
// PackB): pack_b for a float B, a decoder for quantized weights (qmatmul.cpp).
}  // namespace

namespace gemm {
Blocking current_blocking() { return g_block; }

GemmPlan plan_gemm(int64_t M, int64_t N, int64_t K, int nt, const Blocking& blk) {
    GemmPlan p;
    const int64_t nkb = std::max<int64_t>(1, ceil_div(K, blk.kc));
    p.kc = round_up(std::max<int64_t>(1, ceil_div(K, nkb)), blk.kalign);    // balanced K blocks
    p.nc = std::min(round_up(std::max<int64_t>(N, 1), NR), round_up(blk.nc, NR));
    // Thread grid: split M while every thread keeps at least a few micro-panels of rows.
    p.tm = nt;
    while (p.tm > 1 && ceil_div(M, p.tm) < 4 * MR) --p.tm;
    while (nt % p.tm) --p.tm;
    p.tn = nt / p.tm;
    p.mc = std::min(round_up(blk.mc, MR), round_up(ceil_div(M, p.tm), MR));
    p.ap_floats = static_cast<size_t>(round_up(p.mc * p.kc, 16));
    p.bp_floats = static_cast<size_t>(p.kc * p.nc);
    return p;
}

// Runs inside a parallel region (or serially, a team of one); every thread of the team calls it.
// ws: the B panels, then one A block of ap_stride floats per thread.
void gemm_team(int64_t M, int64_t N, int64_t K, Mat A, const PackB& packb, float* C, int64_t ldc, const Blocking& blk,
               float* ws, size_t ap_stride) {
    const int nt = team_size(), t = thread_id();
    const GemmPlan p = plan_gemm(M, N, K, nt, blk);
    float* Bp = ws;
    float* Ap = ws + p.bp_floats + static_cast<size_t>(t) * ap_stride;
    const int ti = t / p.tn, tj = t % p.tn;
    const int64_t m_per = round_up(ceil_div(M, p.tm), MR);
    const int64_t m0 = std::min(M, ti * m_per), m1 = std::min(M, m0 + m_per);
    for (int64_t jc = 0; jc < N; jc += p.nc) {
        const int64_t nc = std::min(p.nc, N - jc);
        const int64_t npanels = ceil_div(nc, NR);
        const int64_t p_per = ceil_div(npanels, p.tn);
        const int64_t p0 = std::min(npanels, tj * p_per), p1 = std::min(npanels, p0 + p_per);
        for (int64_t pc = 0; pc < K; pc += p.kc) {
            const int64_t kc = std::min(p.kc, K - pc);
            {                                          // all threads pack a share of the B panels
                const int64_t share = ceil_div(npanels, nt);
                packb.fn(packb.ctx, pc, kc, jc, nc, std::min(npanels, t * share), std::min(npanels, (t + 1) * share),
                         Bp);
            }
#pragma omp barrier
            for (int64_t ic = m0; ic < m1; ic += p.mc) {
                const int64_t mc = std::min(p.mc, m1 - ic);
                if (p0 >= p1) break;
                pack_a(mc, kc, Mat{A.p + ic * A.rs + pc * A.cs, A.rs, A.cs}, Ap);
                for (int64_t q = p0; q < p1; ++q) {
                    const int64_t jr = q * NR;
                    const int nr = static_cast<int>(std::min<int64_t>(NR, nc - jr));
                    for (int64_t ir = 0; ir < mc; ir += MR) {
                        const int mr = static_cast<int>(std::min<int64_t>(MR, mc - ir));
                        micro_kernel(kc, Ap + ir * kc, Bp + jr * kc, C + (ic + ir) * ldc + jc + jr, ldc, mr, nr,
                                     pc > 0);
                    }
                }
            }
#pragma omp barrier
        }
    }
}
}  // namespace gemm

namespace {

// A float B read through its strides: the packer gemm_team calls for matmul.
void pack_mat(const void* ctx, int64_t pc, int64_t kc, int64_t jc, int64_t nc, int64_t q0, int64_t q1, float* Bp) {
    const Mat& B = *static_cast<const Mat*>(ctx);
    pack_b(kc, nc, q0, q1, Mat{B.p + pc * B.rs + jc * B.cs, B.rs, B.cs}, Bp);
}

void gemm_team(int64_t M, int64_t N, int64_t K, Mat A, Mat B, float* C, int64_t ldc, const Blocking& blk, float* ws,
               size_t ap_stride) {
    gemm::gemm_team(M, N, K, A, PackB{pack_mat, &B}, C, ldc, blk, ws, ap_stride);
}

// =============================================================================================
// 3. skinny (M <= SKINNY_M, the decode GEMV): B read in place, once, as one sequential stream per
// thread.  Over version 2 it drops the packing: for a handful of output rows, packing B would read
// the weights twice.  Decode is a weight stream, so what matters is how the weights are walked:
//
//   B transposed (x·Wᵀ, W[N, K] C-contiguous): W's rows [n0, n1) of a thread are one contiguous
//     block; each output is the dot product of one W row with the M rows of A, row after row, so
//     the thread reads its block front to back (A's rows stay in L1).
//   B row-major (x·W, W[K, N]): the rows [k0, k1) of W are one contiguous block, so the threads
//     split K, not N: each sweeps its rows eight at a time across all N columns, accumulating a
//     partial C (in L1/L2), and the partials are summed at the end.
//
// Splitting N for a row-major W would give each thread a narrow strip of every row: a strided
// walk, many short streams.  Side by side, several W rows (the obvious register blocking of the
// dot products) are as many streams, kilobytes apart -- the prefetchers and the cache sets like
// neither.
// =============================================================================================
// C[m, n] = Σ_k A[m, k] · W[n, k] for n in [n0, n1) (W rows ldw apart, unit stride along k).
template <int MM>
void skinny_transposed(int64_t K, const float* A, int64_t lda, const float* W, int64_t ldw, float* C, int64_t ldc,
                       int64_t n0, int64_t n1) {
    constexpr int U = 4;                                        // independent accumulators per row
    const int64_t ku = K / (U * VL) * (U * VL), kv = K / VL * VL;
    const int tail = static_cast<int>(K - kv);
    for (int64_t n = n0; n < n1; ++n) {
        const float* w = W + n * ldw;
        vf acc[MM][U];
        for (int m = 0; m < MM; ++m)
            for (int u = 0; u < U; ++u) acc[m][u] = vzero();
        int64_t k = 0;
        for (; k < ku; k += U * VL) {
#pragma GCC unroll 4
            for (int line = 0; line < U * VL / 16; ++line) __builtin_prefetch(w + k + GEMV_PREFETCH + 16 * line);
            vf wv[U];
            for (int u = 0; u < U; ++u) wv[u] = vload(w + k + u * VL);
            for (int m = 0; m < MM; ++m)
                for (int u = 0; u < U; ++u) acc[m][u] = vfma(vload(A + m * lda + k + u * VL), wv[u], acc[m][u]);
        }
        for (; k < kv; k += VL) {
            const vf wv = vload(w + k);
            for (int m = 0; m < MM; ++m) acc[m][0] = vfma(vload(A + m * lda + k), wv, acc[m][0]);
        }
        if (tail) {
            const vf wv = vload_n(w + kv, tail);
            for (int m = 0; m < MM; ++m) acc[m][1] = vfma(vload_n(A + m * lda + kv, tail), wv, acc[m][1]);
        }
        for (int m = 0; m < MM; ++m)
            C[m * ldc + n] = vhsum(vadd(vadd(acc[m][0], acc[m][1]), vadd(acc[m][2], acc[m][3])));
    }
}

// P[m, 0:N] (=|+=) Σ_{k in [k0, k1)} A[m, k] · B[k, 0:N], B row-major (rows ldb apart); P rows are
// N floats apart.  R rows of B per sweep (RB while they last, then one at a time): P is loaded and
// stored once per sweep.  The last rows are not padded with zero-weighted copies: 0 · inf is NaN.
template <int MM, int R>
void rowmajor_sweep(int64_t N, const float* A, int64_t lda, const float* B, int64_t ldb, float* P, int64_t k,
                    bool first) {
    const int64_t nv = N / VL * VL;
    const int tail = static_cast<int>(N - nv);
    vf a[MM][R];
    for (int m = 0; m < MM; ++m)
        for (int r = 0; r < R; ++r) a[m][r] = vset1(A[m * lda + k + r]);
    const float* b = B + k * ldb;
    for (int64_t j = 0; j < nv; j += VL) {
        vf bv[R];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) bv[r] = vload(b + r * ldb + j);
        for (int m = 0; m < MM; ++m) {
            float* p = P + m * N + j;
            vf c = first ? vzero() : vload(p);
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) c = vfma(a[m][r], bv[r], c);
            vstore(p, c);
        }
    }
    if (tail) {
        vf bv[R];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) bv[r] = vload_n(b + r * ldb + nv, tail);
        for (int m = 0; m < MM; ++m) {
            float* p = P + m * N + nv;
            vf c = first ? vzero() : vload_n(p, tail);
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) c = vfma(a[m][r], bv[r], c);
            vstore_n(p, c, tail);
        }
    }
}

template <int MM>
void skinny_rowmajor(int64_t N, const float* A, int64_t lda, const float* B, int64_t ldb, float* P, int64_t k0,
                     int64_t k1) {
    constexpr int RB = 8;
    int64_t k = k0;
    for (; k + RB <= k1; k += RB) rowmajor_sweep<MM, RB>(N, A, lda, B, ldb, P, k, k == k0);
    for (; k < k1; ++k) rowmajor_sweep<MM, 1>(N, A, lda, B, ldb, P, k, k == k0);
}

// Rows [n0, n1) of W for the transposed case; the K range [k0, k1) into P for the row-major one.
void skinny(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, Mat B, float* out, int64_t ldc, int64_t lo,
            int64_t hi) {
    const bool tr = B.rs == 1 || K == 1;
#define PYW_SKINNY(MM)                                                     \
    if (tr) skinny_transposed<MM>(K, A, lda, B.p, B.cs, out, ldc, lo, hi); \
    else skinny_rowmajor<MM>(N, A, lda, B.p, B.rs, out, lo, hi);
    switch (M) {
        case 1: PYW_SKINNY(1) break;
        case 2: PYW_SKINNY(2) break;
        case 3: PYW_SKINNY(3) break;
        default: PYW_SKINNY(4) break;
    }
#undef PYW_SKINNY
}

bool skinny_applies(int64_t M, Mat B) { return M <= SKINNY_M && (B.rs == 1 || B.cs == 1); }

// =============================================================================================
// the dispatch: version="fast" runs version 3 where it applies (skinny_applies: M <= SKINNY_M and
// B unit-stride along one axis) and version 2 otherwise.  Batched calls run the matrices one after
// the other with all threads each, or, when each matrix is small (under ~2e7 flops) and there are
// at least as many as threads, whole matrices per thread.  Products too small to pay for a fork
// get one thread (threads_for).
// =============================================================================================

// One matrix product with a team of threads (called from inside a parallel region).
void matmul_one(int64_t M, int64_t N, int64_t K, Mat A, Mat B, float* C, const Blocking& blk, float* ws,
                size_t ap_stride, float* arow) {
    if (M == 0 || N == 0) return;
    if (K == 0) {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < M; ++i) std::fill(C + i * N, C + (i + 1) * N, 0.f);
        return;
    }
    if (skinny_applies(M, B)) {
        const float* a = A.p;
        int64_t lda = A.rs;
        if (A.cs != 1) {                               // gather the few A rows contiguously
#pragma omp single
            for (int64_t i = 0; i < M; ++i)
                for (int64_t k = 0; k < K; ++k) arow[i * K + k] = A.p[i * A.rs + k * A.cs];
            a = arow;
            lda = K;
        }
        const int nt = team_size(), t = thread_id();
        if (B.rs == 1 || K == 1) {                     // W[N, K]: each thread a block of W's rows
            const int64_t step = round_up(ceil_div(N, nt), 16);
            const int64_t n0 = std::min(N, t * step), n1 = std::min(N, n0 + step);
            if (n0 < n1) skinny(M, N, K, a, lda, B, C, N, n0, n1);
#pragma omp barrier
            return;
        }
        // W[K, N]: each thread a block of W's rows (a range of k) into its own partial C -- thread 0
        // into C itself, the others into `parts` -- then every thread sums a range of columns.
        float* parts = arow + SKINNY_M * K;
        const int64_t kstep = round_up(ceil_div(K, nt), 8);
        const int64_t k0 = std::min(K, t * kstep), k1 = std::min(K, k0 + kstep);
        float* mine = t == 0 ? C : parts + static_cast<size_t>(t - 1) * M * N;
        if (k0 < k1) skinny(M, N, K, a, lda, B, mine, N, k0, k1);
        else std::fill(mine, mine + M * N, 0.f);
#pragma omp barrier
        if (nt > 1) {
            const int64_t cstep = round_up(ceil_div(M * N, nt), 16);
            const int64_t c0 = std::min(M * N, t * cstep), c1 = std::min(M * N, c0 + cstep);
            for (int u = 1; u < nt; ++u) {
                const float* pu = parts + static_cast<size_t>(u - 1) * M * N;
                int64_t j = c0;
                for (; j + VL <= c1; j += VL) vstore(C + j, vadd(vload(C + j), vload(pu + j)));
                for (; j < c1; ++j) C[j] += pu[j];
            }
#pragma omp barrier
        }
        return;
    }
    gemm_team(M, N, K, A, B, C, N, blk, ws, ap_stride);
}

int threads_for(int64_t M, int64_t N, int64_t K, Mat B, int nt) {
    // Below ~2 MFLOP the fork/join costs more than the second core gains -- except for the
    // memory-bound skinny products, where a second core streams the weights twice as fast.
    if (skinny_applies(M, B)) return double(N) * K * sizeof(float) < 256e3 ? 1 : nt;
    return 2.0 * M * N * K < 2e6 ? 1 : nt;
}

}  // namespace

py::array_t<float> matmul(py::handle a_obj, py::handle b_obj, const std::string& version) {
    StridedF32 a = strided_f32(a_obj, "a");
    StridedF32 b = strided_f32(b_obj, "b");
    if (version != "fast" && version != "naive")
        throw py::value_error("matmul: version must be 'fast' or 'naive', got '" + version + "'");
    if (a.ndim() < 2 || b.ndim() < 2)
        throw py::value_error("matmul: a and b need at least 2 dimensions, got a" + shape_str(a.arr) + " b" +
                              shape_str(b.arr));
    const int64_t M = a.dim(-2), K = a.dim(-1), N = b.dim(-1);
    if (b.dim(-2) != K)
        throw py::value_error("matmul: a's last dimension (" + std::to_string(K) + ") must equal b's second-to-last (" +
                              std::to_string(b.dim(-2)) + "); got a" + shape_str(a.arr) + " b" + shape_str(b.arr));
    // Broadcast the batch dimensions (right-aligned, size-1 dims stretch).
    const int nb = std::max(a.ndim(), b.ndim()) - 2;
    std::vector<int64_t> bshape(nb), sa(nb, 0), sb(nb, 0);
    for (int d = 0; d < nb; ++d) {
        const int da = d - (nb - (a.ndim() - 2)), db = d - (nb - (b.ndim() - 2));
        const int64_t na = da >= 0 ? a.shape[da] : 1, nbd = db >= 0 ? b.shape[db] : 1;
        if (na != nbd && na != 1 && nbd != 1)
            throw py::value_error("matmul: batch dimensions of a" + shape_str(a.arr) + " and b" + shape_str(b.arr) +
                                  " do not broadcast");
        bshape[d] = std::max(na, nbd);
        if (na == 0 || nbd == 0) bshape[d] = 0;
        sa[d] = da >= 0 ? a.stride[da] : 0;
        sb[d] = db >= 0 ? b.stride[db] : 0;
    }
    int64_t batch = 1;
    for (int64_t s : bshape) batch *= s;
    std::vector<py::ssize_t> oshape(bshape.begin(), bshape.end());
    oshape.push_back(M);
    oshape.push_back(N);
    py::array_t<float> out = outputs::new_array(oshape);
    if (batch == 0 || M == 0 || N == 0) return out;
    std::vector<int64_t> offa(batch), offb(batch);        // element offsets of each batch entry
    {
        std::vector<int64_t> idx(nb, 0);
        for (int64_t e = 0; e < batch; ++e) {
            int64_t oa = 0, ob = 0;
            for (int d = 0; d < nb; ++d) {
                oa += idx[d] * sa[d];
                ob += idx[d] * sb[d];
            }
            offa[e] = oa;
            offb[e] = ob;
            for (int d = nb - 1; d >= 0; --d) {
                if (++idx[d] < bshape[d]) break;
                idx[d] = 0;
            }
        }
    }
    const Mat A{a.data, a.st(-2), a.st(-1)}, B{b.data, b.st(-2), b.st(-1)};
    float* C = out.mutable_data();
    const int64_t csize = M * N;
    if (version == "naive") {
        py::gil_scoped_release nogil;
        for (int64_t e = 0; e < batch; ++e)
            gemm_naive(M, N, K, Mat{A.p + offa[e], A.rs, A.cs}, Mat{B.p + offb[e], B.rs, B.cs}, C + e * csize);
        return out;
    }
    const int nt_max = kernel_threads();
    const double flops = 2.0 * M * N * K;
    // Many small matrices: whole matrices per thread.  Otherwise: one matrix at a time, all threads.
    const bool per_thread = batch >= nt_max && nt_max > 1 && flops < 2e7;
    const int nt = per_thread ? nt_max : threads_for(M, N, K, B, nt_max);
    const Blocking blk = g_block;                              // one snapshot for sizes and plans
    const GemmPlan space = plan_gemm(M, N, K, 1, blk);         // the largest A block of any team
    const size_t ap = space.ap_floats;
    // + the gathered A rows of a skinny product and the partial C of each thread but the first
    const size_t ws_one = space.workspace_floats(per_thread ? 1 : nt) + static_cast<size_t>(SKINNY_M * K) +
                          (per_thread ? 0 : static_cast<size_t>(nt - 1) * SKINNY_M * N);
    float* ws = thread_scratch(0, ws_one * (per_thread ? nt : 1));
    {
        py::gil_scoped_release nogil;
        if (per_thread) {
#pragma omp parallel num_threads(nt)
            {
                float* my = ws + static_cast<size_t>(thread_id()) * ws_one;
#pragma omp for schedule(dynamic)
                for (int64_t e = 0; e < batch; ++e) {
                    const Mat Ae{A.p + offa[e], A.rs, A.cs}, Be{B.p + offb[e], B.rs, B.cs};
                    float* Ce = C + e * csize;
                    if (skinny_applies(M, Be) || K == 0) {
                        // single-threaded here: team_size() is 1 inside this nested region
#pragma omp parallel num_threads(1)
                        matmul_one(M, N, K, Ae, Be, Ce, blk, my, ap, my + space.workspace_floats(1));
                    } else {
#pragma omp parallel num_threads(1)
                        gemm_team(M, N, K, Ae, Be, Ce, N, blk, my, ap);
                    }
                }
            }
        } else {
#pragma omp parallel num_threads(nt) if (nt > 1)
            for (int64_t e = 0; e < batch; ++e)
                matmul_one(M, N, K, Mat{A.p + offa[e], A.rs, A.cs}, Mat{B.p + offb[e], B.rs, B.cs}, C + e * csize, blk,
                           ws, ap, ws + space.workspace_floats(nt));
        }
    }
    return out;
}

// =============================================================================================
// 4. group: C_i = A · W_iᵀ for several weights W_i [N_i, K] that read the same A [M, K], M <=
// SKINNY_M -- the Q, K, V projections of a decode step, or the gate and up projections of its
// MLP.  Version 3 run once per weight forks the threads, splits that weight's rows and meets at a
// barrier, once per weight; a small weight (K and V under grouped-query attention) gives each
// thread a short stream.  Here the weights' rows are laid end to end, rows 0 .. ΣN_i, and the
// threads split that one range evenly: each streams a contiguous run of rows, crossing from one
// weight into the next where its run does, and all of them meet once, at the end.  The products
// are version 3's, row for row (skinny_transposed), so the results are bit-identical to it.
// Other layouts and larger M run version 2/3 per weight.
// =============================================================================================
py::list matmul_group(py::handle a_obj, py::sequence bs_obj) {
    StridedF32 a = strided_f32(a_obj, "a");
    if (a.ndim() != 2) throw py::value_error("matmul_group: a must be [M, K], got a" + shape_str(a.arr));
    const int64_t M = a.dim(0), K = a.dim(1);
    const size_t G = py::len(bs_obj);
    std::vector<StridedF32> bs;
    bs.reserve(G);
    bool grouped = M >= 1 && M <= SKINNY_M && K >= 1;
    int64_t rows = 0;
    for (size_t i = 0; i < G; ++i) {
        const std::string what = "bs[" + std::to_string(i) + "]";
        bs.push_back(strided_f32(bs_obj[i], what.c_str()));
        const StridedF32& b = bs.back();
        if (b.ndim() != 2 || b.dim(0) != K)
            throw py::value_error("matmul_group: " + what + " must be [K, N] with K = a's " + std::to_string(K) +
                                  " columns, got " + shape_str(b.arr));
        grouped = grouped && b.st(0) == 1;                 // W_i [N_i, K] with unit stride along k
        rows += b.dim(1);
    }
    py::list outs;
    if (!grouped) {                                        // version 2/3, one weight at a time
        for (size_t i = 0; i < G; ++i) outs.append(matmul(a.arr, bs[i].arr, "fast"));
        return outs;
    }
    std::vector<float*> C(G);
    for (size_t i = 0; i < G; ++i) {
        py::array_t<float> o = outputs::new_array({M, bs[i].dim(1)});
        C[i] = o.mutable_data();
        outs.append(o);
    }
    const int nt_max = kernel_threads();
    const int nt = double(rows) * K * sizeof(float) < 256e3 ? 1 : nt_max;
    const float* A = a.data;
    int64_t lda = a.st(0);
    float* arow = nullptr;
    if (a.st(1) != 1) {                                    // gather the few A rows contiguously
        arow = thread_scratch(0, static_cast<size_t>(M * K));
        for (int64_t i = 0; i < M; ++i)
            for (int64_t k = 0; k < K; ++k) arow[i * K + k] = A[i * a.st(0) + k * a.st(1)];
        A = arow;
        lda = K;
    }
    {
        py::gil_scoped_release nogil;
#pragma omp parallel num_threads(nt) if (nt > 1)
        {
            const int n_team = team_size(), t = thread_id();
            const int64_t step = round_up(ceil_div(rows, n_team), 16);
            const int64_t lo = std::min(rows, t * step), hi = std::min(rows, lo + step);
            int64_t first = 0;                                 // row of W_i's first row in the range
            for (size_t i = 0; i < G; ++i) {
                const int64_t N = bs[i].dim(1);
                const int64_t n0 = std::max<int64_t>(lo - first, 0), n1 = std::min<int64_t>(hi - first, N);
                if (n0 < n1) {
                    const Mat B{bs[i].data, bs[i].st(0), bs[i].st(1)};
                    skinny(M, N, K, A, lda, B, C[i], N, n0, n1);
                }
                first += N;
            }
        }
    }
    return outs;
}

void set_matmul_blocking(int64_t kc, int64_t mc, int64_t nc) {
    if (kc < 1 || mc < 1 || nc < 1) throw py::value_error("matmul blocking sizes must be >= 1");
    g_block.kc = kc;
    g_block.mc = mc;
    g_block.nc = nc;
}

void bind_matmul(py::module_& m) {
    m.def("matmul", &matmul, py::arg("a"), py::arg("b"), py::arg("version") = "fast",
          "float32 a @ b with np.matmul semantics ([..., M, K] @ [..., K, N], batch dims broadcast).\n"
          "Inputs are read through their strides (no copy for transposed views); dtypes other than float32\n"
          "raise TypeError. version: 'fast' (packed, blocked, SIMD, threaded) or 'naive' (triple loop).");
    m.def("matmul_group", &matmul_group, py::arg("a"), py::arg("bs"),
          "[a @ b for b in bs] for a float32 a [M, K] and bs [K, N_i]: with M <= 4 and every b a transposed\n"
          "C-contiguous weight (W_i.T, W_i [N_i, K]) the products run in one parallel region over the\n"
          "weights' rows laid end to end (one fork and join for the group); otherwise matmul per b.");
    m.def("_set_matmul_blocking", &set_matmul_blocking, py::arg("kc"), py::arg("mc"), py::arg("nc"),
          "Tuning hook for benchmarks: the GEMM cache-block sizes (K, M and N blocks).");
    m.def(
        "_matmul_tile", []() { return py::make_tuple(MR, NR, g_block.kc, g_block.mc, g_block.nc); },
        "(MR, NR, KC, MC, NC) of the GEMM: micro-tile and cache blocks.");
}

}  // namespace pyworkloads
