// Scaled dot-product attention, fused ("flash") forward on the CPU.
//
//   out[b, h, i, :] = Σ_j softmax_j(scale · q_i·k_j + bias_ij, masked) · v_j
//   q [B, Hq, Tq, Dh], k [B, Hkv, Tk, Dh], v [B, Hkv, Tk, Dv]; query head h reads kv head
//   h / (Hq / Hkv) (grouped-query attention, K/V are never repeated or copied); causal masking is
//   bottom-right aligned (query i sees keys j <= i + Tk - Tq); bias (additive) and mask (boolean,
//   True = attend) broadcast to [B, Hq, Tq, Tk] and are read through strides (0 along broadcast axes).
//   rel_pos = (rel_h, rel_w) is a bias given in the decomposed form of MViTv2 / SAM's relative
//   positions -- the keys lie on a kh x kw grid, key j = (j / kw, j % kw), and
//       bias[b, h, i, j] = rel_h[b, h, i, j / kw] + rel_w[b, h, i, j % kw]
//   (rel_h, rel_w broadcast to [B, Hq, Tq, kh] and [B, Hq, Tq, kw]) -- added tile by tile, so the
//   [Tq, Tk] bias (805 MB for SAM's global attention on a 64 x 64 grid) is never formed.
//
// Three numbered versions, each section below opening with what it adds over the one before:
//
//   1. naive   per query row: all Tk scores, max, exp, sum, weighted sum of V (the test oracle)
//   2. tiled   the FlashAttention recurrence over blocks of queries and keys, SIMD, threaded
//   3. decode  Tq == 1: one pass over the KV cache for all query heads of a kv group
//
// version="naive" runs 1; version="fast" runs 3 for Tq == 1 and 2 otherwise (the dispatch at the
// end of the file).  Memory: O(threads · (BK·BQ + Dh·BQ + BQ·Dv + Tk)) scratch for version 2 and
// O(group·Tk) for version 3, never a T² buffer.
//
// NaN and infinities behave exactly as in the NumPy reference (kernels/reference.py), which
// computes the scores s = scale·q·kᵀ + bias in float32, sets masked ones to -inf, takes
// p = softmax(s) (a row whose allowed scores hold a NaN or +inf is NaN throughout; a row with no
// allowed key is all zeros) and returns p·v over *all* keys -- so a masked key's v row is
// multiplied by 0, which keeps a NaN and turns an infinity into NaN.  Version 1 computes exactly
// that (row_exact).  Versions 2 and 3 are arranged so that a row's result is finite only when the
// reference's is: the running maximum keeps NaN (vmax_nan), exp keeps NaN, masked keys still meet
// their v rows with weight 0, and v rows that causal block skipping never reads are checked for
// NaN/inf; any row that comes out with a NaN or an infinity (or overflowed: the unnormalised sum
// of a few 3e38 values is inf where their average is not) is recomputed by row_exact.  Finite rows
// never take that path, so ordinary inputs cost nothing extra.
// Inputs: float32 (anything else raises TypeError -- no silent casting), mask bool; arbitrary
// strides are read in place as long as the last axis of q/k/v is unit-stride (else one copy).
#include "common.h"
#include "simd.h"
#include "strided.h"

#include <algorithm>
#include <limits>

namespace pyworkloads {

using namespace simd;

namespace {

constexpr int NVEC = 4;                 // vectors per row of Sᵀ
constexpr int BQ = NVEC * VL;           // queries per task (64 with AVX-512): one row of Sᵀ
// tile_mac's width in vectors: its 6 x TV accumulators, TV right-hand vectors and a broadcast
// must fit the register file (AVX-512: 24 + 4 + 1 of 32 zmm; AVX2: 12 + 2 + 1 of 16 ymm)
constexpr int TV = VL == 16 ? 4 : 2;
constexpr int BK = 48;                  // keys per block: 8 tiles of the 6-row kernel
constexpr float NEG_INF = -std::numeric_limits<float>::infinity();

struct Qkv {                            // 4-D strided views (element strides), last axis unit-stride
    const float* p;
    int64_t s0, s1, s2;
    const float* row(int64_t b, int64_t h, int64_t t) const { return p + b * s0 + h * s1 + t * s2; }
};

struct Extra {                          // bias / mask, broadcast over [B, Hq, Tq, Tk] through strides
    const void* p = nullptr;
    int64_t s[4] = {0, 0, 0, 0};
    const float* frow(int64_t b, int64_t h, int64_t i) const {
        return static_cast<const float*>(p) + b * s[0] + h * s[1] + i * s[2];
    }
    const uint8_t* mrow(int64_t b, int64_t h, int64_t i) const {
        return static_cast<const uint8_t*>(p) + b * s[0] + h * s[1] + i * s[2];
    }
};

struct Problem {
    int64_t B, Hq, Hkv, Tq, Tk, Dh, Dv;
    Qkv q, k, v;
    Extra bias, mask;
    Extra rel_h, rel_w;                  // the decomposed bias (rel_pos), or p == nullptr
    int64_t kh = 0, kw = 0;              // its key grid: Tk = kh · kw
    bool causal;
    float scale;
    float* out;                          // [B, Hq, Tq, Dv] contiguous
    int64_t group() const { return Hq / Hkv; }
    // last key index + 1 that query i may see (causal, bottom-right aligned)
    int64_t key_limit(int64_t i) const { return causal ? std::min(Tk, i + Tk - Tq + 1) : Tk; }
    // the decomposed bias of query i and key j
    float rel(int64_t b, int64_t h, int64_t i, int64_t j) const {
        return rel_h.frow(b, h, i)[j / kw * rel_h.s[3]] + rel_w.frow(b, h, i)[j % kw * rel_w.s[3]];
    }
};

// Adds bias, applies causal/mask (-inf) to one row of scores s[0:n) for query i, keys j0..j0+n.
inline void bias_and_mask_row(const Problem& P, int64_t b, int64_t h, int64_t i, int64_t j0, int64_t n, float* s) {
    if (P.bias.p) {
        const float* br = P.bias.frow(b, h, i) + j0 * P.bias.s[3];
        if (P.bias.s[3] == 1) {
            int64_t j = 0;
            for (; j + VL <= n; j += VL) vstore(s + j, vadd(vload(s + j), vload(br + j)));
            if (j < n) vstore_n(s + j, vadd(vload_n(s + j, int(n - j)), vload_n(br + j, int(n - j))), int(n - j));
        } else {
            for (int64_t j = 0; j < n; ++j) s[j] += br[j * P.bias.s[3]];
        }
    }
    if (P.rel_h.p)
        for (int64_t j = 0; j < n; ++j) s[j] += P.rel(b, h, i, j0 + j);
    if (P.mask.p) {
        const uint8_t* mr = P.mask.mrow(b, h, i) + j0 * P.mask.s[3];
        for (int64_t j = 0; j < n; ++j)
            if (!mr[j * P.mask.s[3]]) s[j] = NEG_INF;
    }
    const int64_t lim = P.key_limit(i);
    for (int64_t j = std::max<int64_t>(0, lim - j0); j < n; ++j) s[j] = NEG_INF;
}

// =============================================================================================
// 1. naive: the definition, one query row at a time, in the reference's arithmetic -- the Tk scores
// (float32 dot products, times the scale, plus the bias, -inf where masked), their maximum (NaN if
// one is NaN; 0 if all are -inf), the exponentials and their sum, the weights p = e / sum (0 when
// the sum is 0), then out = Σ_j p_j · v_j over every key, accumulated in double.  O(Tk) memory per
// row, no blocking, no SIMD, no threads.  Kept for reading, as the oracle the tests check
// version="fast" against, and as the fast versions' fallback for rows that are not finite.
// =============================================================================================
void row_exact(const Problem& P, int64_t b, int64_t h, int64_t i, float* s, float* out) {
    const int64_t hk = h / P.group(), lim = P.key_limit(i);
    const float* q = P.q.row(b, h, i);
    for (int64_t j = 0; j < P.Tk; ++j) {
        const float* kr = P.k.row(b, hk, j);
        float dot = 0.f;
        for (int64_t d = 0; d < P.Dh; ++d) dot += q[d] * kr[d];
        float x = dot * P.scale;
        if (P.bias.p) x += P.bias.frow(b, h, i)[j * P.bias.s[3]];
        if (P.rel_h.p) x += P.rel(b, h, i, j);
        const bool allowed = j < lim && (!P.mask.p || P.mask.mrow(b, h, i)[j * P.mask.s[3]]);
        s[j] = allowed ? x : NEG_INF;
    }
    float mx = NEG_INF;
    for (int64_t j = 0; j < P.Tk; ++j) mx = std::isnan(s[j]) || std::isnan(mx) ? NAN : std::max(mx, s[j]);
    if (mx == NEG_INF) mx = 0.f;                                   // no allowed key: weights 0
    double sum = 0;
    for (int64_t j = 0; j < P.Tk; ++j) sum += s[j] = std::exp(s[j] - mx);
    const float l = float(sum);
    for (int64_t j = 0; j < P.Tk; ++j) s[j] = l == 0.f ? 0.f : s[j] / l;
    for (int64_t d = 0; d < P.Dv; ++d) {
        double acc = 0;
        for (int64_t j = 0; j < P.Tk; ++j) acc += double(s[j]) * P.v.row(b, hk, j)[d];
        out[d] = float(acc);
    }
}

void attention_naive(const Problem& P) {
    std::vector<float> s(P.Tk);
    for (int64_t b = 0; b < P.B; ++b)
        for (int64_t h = 0; h < P.Hq; ++h)
            for (int64_t i = 0; i < P.Tq; ++i)
                row_exact(P, b, h, i, s.data(), P.out + ((b * P.Hq + h) * P.Tq + i) * P.Dv);
}

// Whether out[0:n) holds a NaN or an infinity.
inline bool nonfinite(const float* x, int64_t n) {
    vf acc = vzero();                                              // Σ (x - x): 0, or NaN
    int64_t d = 0;
    for (; d + VL <= n; d += VL) acc = vadd(acc, vsub(vload(x + d), vload(x + d)));
    if (d < n) acc = vadd(acc, vsub(vload_n(x + d, int(n - d)), vload_n(x + d, int(n - d))));
    return std::isnan(vhsum(acc));
}

// Whether v rows [j0, j1) of kv head hk hold a NaN or an infinity.
bool v_rows_nonfinite(const Problem& P, int64_t b, int64_t hk, int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j)
        if (nonfinite(P.v.row(b, hk, j), P.Dv)) return true;
    return false;
}

// =============================================================================================
// 2. tiled (Tq > 1): the FlashAttention recurrence.  Over version 1 it never forms a row of Tk
// scores: a task is one (b, h, block of BQ queries) and walks the key blocks of BK keys,
//
//       S   = scale · Q_blk · K_blkᵀ (+ bias, masked -> -inf)        [BQ x BK], in L1
//       m'  = max(m, rowmax S);  P = exp(S - m');  α = exp(m - m')
//       l   = α·l + rowsum P;    O = α·O + P · V_blk                 running max m, sum l, output O
//
// and finally out = O / l (rows with no allowed key keep l = 0 and give zeros, like the reference).
// The scores are kept transposed, Sᵀ [keys x queries] with one SIMD lane per query (BQ = 4
// vectors), so the running max / sum / rescale of all BQ queries are plain vector ops, and both
// products use one register-tiled kernel (tile_mac: 6 rows x TV vectors of accumulators, broadcast
// the left operand, FMA with unit-stride rows of the right one): Sᵀ = K_blk · Qᵀ reads K rows in
// place against Qᵀ (packed once per task, Dh·BQ floats), and O += P · V reads V rows in place.
// With causal masking, key blocks entirely above the diagonal are skipped (about half the work)
// and only blocks crossing it are masked element by element.  Tasks (B·Hq·⌈Tq/BQ⌉) are spread
// over threads dynamically, longest (last query blocks) first, since causal tasks differ.
// =============================================================================================

// C[R x w] (+)= A[R x K] · B[K x w] for w < TV·VL (tile edges), lanes past w masked.  Kept apart
// from tile_mac: its accumulators are indexed by the run-time vector count, which would make the
// compiler keep tile_mac's whole tile in memory.
template <int R>
void tile_mac_edge(int64_t K, const float* A, int64_t ars, int64_t acs, const float* B, int64_t ldb, float* C,
                   int64_t ldc, int w, bool accumulate) {
    vf c[R][TV];
    const int nv = (w + VL - 1) / VL;
    auto width = [&](int v) { return std::min(VL, w - v * VL); };
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < nv; ++v) c[r][v] = accumulate ? vload_n(C + r * ldc + v * VL, width(v)) : vzero();
    for (int64_t k = 0; k < K; ++k)
        for (int v = 0; v < nv; ++v) {
            const vf b = vload_n(B + k * ldb + v * VL, width(v));
            for (int r = 0; r < R; ++r) c[r][v] = vfma(vset1(A[r * ars + k * acs]), b, c[r][v]);
        }
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < nv; ++v) vstore_n(C + r * ldc + v * VL, c[r][v], width(v));
}

// C[R x TV·VL] (+)= A[R x K] · B[K x TV·VL]; A(r, k) = A[r·ars + k·acs]; rows of B and C are ldb
// and ldc floats apart.  The accumulators live in registers (every index a constant once the
// loops unroll).
template <int R>
inline void tile_mac(int64_t K, const float* A, int64_t ars, int64_t acs, const float* B, int64_t ldb, float* C,
                     int64_t ldc, bool accumulate) {
    vf c[R][TV];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < TV; ++v) c[r][v] = accumulate ? vload(C + r * ldc + v * VL) : vzero();
    for (int64_t k = 0; k < K; ++k) {
        vf b[TV];
#pragma GCC unroll 4
        for (int v = 0; v < TV; ++v) b[v] = vload(B + k * ldb + v * VL);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            const vf a = vset1(A[r * ars + k * acs]);
#pragma GCC unroll 4
            for (int v = 0; v < TV; ++v) c[r][v] = vfma(a, b[v], c[r][v]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < TV; ++v) vstore(C + r * ldc + v * VL, c[r][v]);
}

template <int R>
inline void tile_any(int64_t K, const float* A, int64_t ars, int64_t acs, const float* B, int64_t ldb, float* C,
                     int64_t ldc, int w, bool accumulate) {
    if (w == TV * VL) tile_mac<R>(K, A, ars, acs, B, ldb, C, ldc, accumulate);
    else tile_mac_edge<R>(K, A, ars, acs, B, ldb, C, ldc, w, accumulate);
}

// C[rows x w] (+)= A · B for any rows / w, in 6-row x (TV·VL)-column tiles.
void block_mac(int64_t rows, int64_t w, int64_t K, const float* A, int64_t ars, int64_t acs, const float* B,
               int64_t ldb, float* C, int64_t ldc, bool accumulate) {
    for (int64_t c0 = 0; c0 < w; c0 += TV * VL) {
        const int cw = static_cast<int>(std::min<int64_t>(TV * VL, w - c0));
        for (int64_t r0 = 0; r0 < rows; r0 += 6) {
            const float* a = A + r0 * ars;
            float* c = C + r0 * ldc + c0;
            switch (std::min<int64_t>(6, rows - r0)) {
                case 6: tile_any<6>(K, a, ars, acs, B + c0, ldb, c, ldc, cw, accumulate); break;
                case 5: tile_any<5>(K, a, ars, acs, B + c0, ldb, c, ldc, cw, accumulate); break;
                case 4: tile_any<4>(K, a, ars, acs, B + c0, ldb, c, ldc, cw, accumulate); break;
                case 3: tile_any<3>(K, a, ars, acs, B + c0, ldb, c, ldc, cw, accumulate); break;
                case 2: tile_any<2>(K, a, ars, acs, B + c0, ldb, c, ldc, cw, accumulate); break;
                default: tile_any<1>(K, a, ars, acs, B + c0, ldb, c, ldc, cw, accumulate); break;
            }
        }
    }
}

struct Scratch {
    float *qt, *st, *o, *m, *l, *alpha, *exact, *rel_ht, *rel_wt;
    static size_t floats(const Problem& P) {
        const int64_t dvp = (P.Dv + VL - 1) / VL * VL;
        return static_cast<size_t>(P.Dh * BQ + BK * BQ + BQ * dvp + 3 * BQ + P.Tk + (P.kh + P.kw) * BQ);
    }
    Scratch(float* base, const Problem& P) {
        const int64_t dvp = (P.Dv + VL - 1) / VL * VL;
        qt = base;
        st = qt + P.Dh * BQ;
        o = st + BK * BQ;
        m = o + BQ * dvp;
        l = m + BQ;
        alpha = l + BQ;
        exact = alpha + BQ;                                      // row_exact's Tk scores
        rel_ht = exact + P.Tk;                                   // rel_hᵀ [kh x BQ], rel_wᵀ [kw x BQ]
        rel_wt = rel_ht + P.kh * BQ;
    }
};

// One task: queries [i0, i1) of head h in batch b.  Scores are kept transposed, Sᵀ [keys x queries],
// so the softmax statistics of the BQ queries are vectors (one lane per query) and Q·Kᵀ needs only
// Qᵀ, packed once per task, while K and V are read in place.
void flash_block(const Problem& P, int64_t b, int64_t h, int64_t i0, int64_t i1, Scratch& w) {
    const int64_t hk = h / P.group(), nq = i1 - i0;
    const int64_t dvp = (P.Dv + VL - 1) / VL * VL;
    for (int64_t d = 0; d < P.Dh; ++d) {                          // Qᵀ [Dh x BQ], zero-padded
        for (int64_t r = 0; r < nq; ++r) w.qt[d * BQ + r] = P.q.row(b, h, i0 + r)[d];
        for (int64_t r = nq; r < BQ; ++r) w.qt[d * BQ + r] = 0.f;
    }
    if (P.rel_h.p) {                                              // rel_hᵀ, rel_wᵀ, zero-padded
        for (int64_t r = 0; r < BQ; ++r) {
            const float* rh = r < nq ? P.rel_h.frow(b, h, i0 + r) : nullptr;
            const float* rw = r < nq ? P.rel_w.frow(b, h, i0 + r) : nullptr;
            for (int64_t y = 0; y < P.kh; ++y) w.rel_ht[y * BQ + r] = rh ? rh[y * P.rel_h.s[3]] : 0.f;
            for (int64_t x = 0; x < P.kw; ++x) w.rel_wt[x * BQ + r] = rw ? rw[x * P.rel_w.s[3]] : 0.f;
        }
    }
    std::fill(w.o, w.o + BQ * dvp, 0.f);
    std::fill(w.m, w.m + BQ, NEG_INF);
    std::fill(w.l, w.l + BQ, 0.f);
    const int64_t kend = P.key_limit(i1 - 1);                    // keys any query of the block may see
    const int64_t shift = P.Tk - P.Tq;                            // causal: key j needs query i >= j - shift
    const vf vscale = vset1(P.scale), vninf = vset1(NEG_INF);
    for (int64_t j0 = 0; j0 < kend; j0 += BK) {
        const int64_t nk = std::min<int64_t>(BK, kend - j0);
        // Sᵀ = K_blk · Qᵀ  [nk x BQ]
        block_mac(nk, BQ, P.Dh, P.k.row(b, hk, j0), P.k.s2, 1, w.qt, BQ, w.st, BQ, false);
        for (int64_t jj = 0; jj < nk; ++jj)
            for (int v = 0; v < NVEC; ++v)
                vstore(w.st + jj * BQ + v * VL, vmul(vload(w.st + jj * BQ + v * VL), vscale));
        if (P.rel_h.p) {                                          // Sᵀ[jj] += rel_hᵀ[y] + rel_wᵀ[x]
            for (int64_t jj = 0; jj < nk; ++jj) {
                const int64_t y = (j0 + jj) / P.kw, x = (j0 + jj) % P.kw;
                for (int v = 0; v < NVEC; ++v) {
                    float* sp = w.st + jj * BQ + v * VL;
                    vstore(sp,
                           vadd(vload(sp), vadd(vload(w.rel_ht + y * BQ + v * VL), vload(w.rel_wt + x * BQ + v * VL))));
                }
            }
        }
        if (P.bias.p || P.mask.p) {
            int64_t r_done = 0;
#if defined(PYW_SIMD_TRANSPOSE)
            if (P.bias.p && P.bias.s[3] == 1) {            // VL x VL bias tiles, transposed in registers
                for (; r_done + VL <= nq; r_done += VL) {
                    int64_t jj = 0;
                    for (; jj + VL <= nk; jj += VL) {
                        vf t[VL];
                        for (int i = 0; i < VL; ++i) t[i] = vload(P.bias.frow(b, h, i0 + r_done + i) + j0 + jj);
                        vtranspose(t);
                        for (int c = 0; c < VL; ++c) {
                            float* sp = w.st + (jj + c) * BQ + r_done;
                            vstore(sp, vadd(vload(sp), t[c]));
                        }
                    }
                    for (int64_t i = 0; i < VL; ++i) {
                        const float* br = P.bias.frow(b, h, i0 + r_done + i) + j0;
                        for (int64_t j = jj; j < nk; ++j) w.st[j * BQ + r_done + i] += br[j];
                    }
                }
            }
#endif
            for (int64_t r = 0; r < nq; ++r) {
                if (P.bias.p && r >= r_done) {
                    const float* br = P.bias.frow(b, h, i0 + r) + j0 * P.bias.s[3];
                    for (int64_t jj = 0; jj < nk; ++jj) w.st[jj * BQ + r] += br[jj * P.bias.s[3]];
                }
                if (P.mask.p) {
                    const uint8_t* mr = P.mask.mrow(b, h, i0 + r) + j0 * P.mask.s[3];
                    for (int64_t jj = 0; jj < nk; ++jj)
                        if (!mr[jj * P.mask.s[3]]) w.st[jj * BQ + r] = NEG_INF;
                }
            }
        }
        if (P.causal && j0 + nk > P.key_limit(i0)) {                // the diagonal crosses this block
            for (int64_t jj = 0; jj < nk; ++jj) {
                const int64_t first = std::clamp<int64_t>(j0 + jj - shift - i0, 0, BQ);
                std::fill(w.st + jj * BQ, w.st + jj * BQ + first, NEG_INF);
            }
        }
        // online softmax, one lane per query; a NaN score makes m, and with it the row, NaN
        for (int v = 0; v < NVEC; ++v) {
            vf mx = vninf;
            for (int64_t jj = 0; jj < nk; ++jj) mx = vmax_nan(vload(w.st + jj * BQ + v * VL), mx);
            const vf m_old = vload(w.m + v * VL);
            const vf m_new = vmax_nan(m_old, mx);
            // a query with no allowed key so far keeps m = -inf; subtract 0 instead (-inf - -inf
            // would be NaN): its weights are exp(-inf) = 0, which still meet the block's v rows
            // (0 · NaN is NaN, as in the reference).  Only -inf is replaced: a finite maximum
            // as low as -3.4e38 (a huge negative scale) is a real score whose key gets weight 1.
            const vf m_use = vneg_inf_to_zero(m_new);
            vf sum = vzero();
            for (int64_t jj = 0; jj < nk; ++jj) {
                float* sp = w.st + jj * BQ + v * VL;
                const vf p = vexp(vsub(vload(sp), m_use));
                vstore(sp, p);
                sum = vadd(sum, p);
            }
            const vf alpha = vexp(vsub(m_old, m_use));
            vstore(w.alpha + v * VL, alpha);
            vstore(w.l + v * VL, vfma(vload(w.l + v * VL), alpha, sum));
            vstore(w.m + v * VL, m_new);
        }
        for (int64_t r = 0; r < nq; ++r) {
            const float a = w.alpha[r];
            if (a == 1.f) continue;
            float* o = w.o + r * dvp;
            const vf va = vset1(a);
            for (int64_t d = 0; d < dvp; d += VL) vstore(o + d, vmul(vload(o + d), va));
        }
        // O += P · V_blk with P(r, jj) = Sᵀ[jj][r]
        block_mac(nq, P.Dv, nk, w.st, 1, BQ, P.v.row(b, hk, j0), P.v.s2, w.o, dvp, true);
    }
    // Keys past kend were skipped: masked for every query of the block, their v rows still count
    // (times 0) in the reference.  Rows that are not finite are recomputed the reference's way.
    const bool skipped_nonfinite = kend < P.Tk && v_rows_nonfinite(P, b, hk, kend, P.Tk);
    for (int64_t r = 0; r < nq; ++r) {
        float* out = P.out + ((b * P.Hq + h) * P.Tq + i0 + r) * P.Dv;
        const float l = w.l[r];
        const float* o = w.o + r * dvp;
        if (skipped_nonfinite || !std::isfinite(l) || nonfinite(o, P.Dv)) {
            row_exact(P, b, h, i0 + r, w.exact, out);
            continue;
        }
        const float inv = l > 0.f ? 1.f / l : 0.f;
        for (int64_t d = 0; d < P.Dv; ++d) out[d] = o[d] * inv;
    }
}

// =============================================================================================
// 3. decode (Tq == 1, a generation step): over version 2 it serves the query heads of a kv group
// together, so each K/V row is streamed from memory once for all of them (not once per query head):
// one pass of Tk dot products (vectorised along Dh), the softmax over all keys at once (O(group·Tk)
// scratch), and one weighted pass over V.  Parallel over (b, kv head).
// =============================================================================================

// Tq == 1: the query heads of one kv group together (each K/V row is read once for all of them),
// scores for all keys at once (O(group·Tk) scratch), then one weighted pass over V.
int64_t decode_stride(const Problem& P) { return (P.Tk + VL - 1) / VL * VL + VL; }

void decode_group(const Problem& P, int64_t b, int64_t hk, float* s) {
    const int64_t g = P.group(), h0 = hk * g, sn = decode_stride(P);
    const int64_t n = P.key_limit(0);
    const int64_t dv = P.Dh / VL * VL;
    const int tail = static_cast<int>(P.Dh - dv);
    for (int64_t j = 0; j < n; ++j) {
        const float* kr = P.k.row(b, hk, j);
        for (int64_t gi = 0; gi < g; ++gi) {
            const float* q = P.q.row(b, h0 + gi, 0);
            vf acc = vzero();
            for (int64_t d = 0; d < dv; d += VL) acc = vfma(vload(q + d), vload(kr + d), acc);
            if (tail) acc = vfma(vload_n(q + dv, tail), vload_n(kr + dv, tail), acc);
            s[gi * sn + j] = vhsum(acc) * P.scale;
        }
    }
    float* l = s + g * sn;                                         // per-head softmax sums
    for (int64_t gi = 0; gi < g; ++gi) {
        float* sr = s + gi * sn;
        if (P.bias.p || P.mask.p || P.rel_h.p) bias_and_mask_row(P, b, h0 + gi, 0, 0, n, sr);
        float mx = NEG_INF;
        bool nan = false;
        for (int64_t j = 0; j < n; ++j) {
            nan |= std::isnan(sr[j]);
            mx = std::max(mx, sr[j]);
        }
        if (nan || mx == INFINITY) {                               // a NaN row: recomputed below
            std::fill(sr, sr + n, 0.f);
            l[gi] = NAN;
            continue;
        }
        if (mx == NEG_INF) {                                       // no allowed key: weights 0
            std::fill(sr, sr + n, 0.f);
            l[gi] = 0.f;
            continue;
        }
        int64_t j = 0;
        vf vsum = vzero();
        for (; j + VL <= n; j += VL) {
            const vf p = vexp(vsub(vload(sr + j), vset1(mx)));
            vstore(sr + j, p);
            vsum = vadd(vsum, p);
        }
        if (j < n) {
            vstore_n(sr + j, vexp(vsub(vload_n(sr + j, int(n - j)), vset1(mx))), int(n - j));
            vsum = vadd(vsum, vload_n(sr + j, int(n - j)));
        }
        l[gi] = vhsum(vsum);
    }
    float* out = P.out + (b * P.Hq + h0) * P.Dv;                   // the group's rows, Dv apart
    block_mac(g, P.Dv, n, s, sn, 1, P.v.row(b, hk, 0), P.v.s2, out, P.Dv, false);
    float* exact = l + g + VL;                                     // row_exact's Tk scores
    for (int64_t gi = 0; gi < g; ++gi) {
        float* o = out + gi * P.Dv;
        if (!std::isfinite(l[gi]) || nonfinite(o, P.Dv)) {        // the reference's NaN/inf
            row_exact(P, b, h0 + gi, 0, exact, o);
            continue;
        }
        const float inv = l[gi] > 0.f ? 1.f / l[gi] : 0.f;
        for (int64_t d = 0; d < P.Dv; ++d) o[d] *= inv;
    }
}

// ---- arguments ------------------------------------------------------------------------------
// A q/k/v argument: float32, 4-D, read in place when its last axis is unit-stride.
StridedF32 qkv_view(const py::handle& obj, const char* name) {
    StridedF32 a = strided_f32(obj, name);
    if (a.ndim() != 4)
        throw py::value_error(std::string("attention: ") + name + " must be 4-D [B, H, T, D], got shape " +
                              shape_str(a.arr));
    if (a.st(3) != 1 && a.dim(3) > 1) a = strided_f32(py::array_t<float, py::array::c_style>::ensure(a.arr), name);
    return a;
}

// bias / mask: at most 4-D, each axis 1 or the full size; returns broadcast strides (in elements).
Extra extra_view(const py::array& a, const void* data, const char* name, const int64_t full[4], int64_t itemsize) {
    Extra e;
    const int nd = static_cast<int>(a.ndim());
    if (nd > 4)
        throw py::value_error(std::string("attention: ") + name + " must have at most 4 dimensions, got " +
                              std::to_string(nd));
    for (int d = 0; d < nd; ++d) {
        const int fd = 4 - nd + d;
        const int64_t n = a.shape(d);
        if (n != 1 && n != full[fd])
            throw py::value_error(std::string("attention: ") + name + " shape " + shape_str(a) +
                                  " does not broadcast to [B, Hq, Tq, Tk] = (" + std::to_string(full[0]) + ", " +
                                  std::to_string(full[1]) + ", " + std::to_string(full[2]) + ", " +
                                  std::to_string(full[3]) + ")");
        if (n != 1 && a.strides(d) % itemsize != 0)
            throw py::value_error(std::string("attention: ") + name + " has strides that are not whole elements");
        e.s[fd] = n == 1 ? 0 : a.strides(d) / itemsize;
    }
    e.p = data;
    return e;
}

}  // namespace

// The dispatch: version="naive" runs version 1; "fast" runs version 3 when Tq == 1 and version 2
// otherwise, on one thread below ~1e6 multiply-adds (a fork costs more), else on all of them.
py::array_t<float> attention(py::handle q_obj, py::handle k_obj, py::handle v_obj, bool causal, py::object scale_obj,
                             py::object bias_obj, py::object mask_obj, py::object rel_pos_obj,
                             const std::string& version) {
    StridedF32 q = qkv_view(q_obj, "q"), k = qkv_view(k_obj, "k"), v = qkv_view(v_obj, "v");
    if (version != "fast" && version != "naive")
        throw py::value_error("attention: version must be 'fast' or 'naive', got '" + version + "'");
    Problem P{};
    P.B = q.dim(0);
    P.Hq = q.dim(1);
    P.Tq = q.dim(2);
    P.Dh = q.dim(3);
    P.Hkv = k.dim(1);
    P.Tk = k.dim(2);
    P.Dv = v.dim(3);
    if (k.dim(0) != P.B || v.dim(0) != P.B)
        throw py::value_error("attention: batch sizes differ: q " + shape_str(q.arr) + ", k " + shape_str(k.arr) +
                              ", v " + shape_str(v.arr));
    if (v.dim(1) != P.Hkv || v.dim(2) != P.Tk)
        throw py::value_error("attention: k" + shape_str(k.arr) + " and v" + shape_str(v.arr) +
                              " must share heads and length");
    if (P.Hkv == 0 || P.Hq % P.Hkv != 0)
        throw py::value_error("attention: query heads (" + std::to_string(P.Hq) +
                              ") must be a multiple of key/value heads (" + std::to_string(P.Hkv) + ")");
    if (k.dim(3) != P.Dh)
        throw py::value_error("attention: q and k head widths differ (" + std::to_string(P.Dh) + " vs " +
                              std::to_string(k.dim(3)) + ")");
    if (causal && P.Tq > P.Tk)
        throw py::value_error("attention: causal needs Tq <= Tk (bottom-right alignment), got Tq=" +
                              std::to_string(P.Tq) + ", Tk=" + std::to_string(P.Tk));
    if (P.Dh == 0)    // the default scale 1/sqrt(Dh) would be inf, and every score 0 · inf = NaN
        throw py::value_error("attention: q and k need a head width Dh >= 1, got 0");
    P.causal = causal;
    if (scale_obj.is_none()) {
        P.scale = float(1.0 / std::sqrt(double(P.Dh)));
    } else {
        if (!PyNumber_Check(scale_obj.ptr()) || PyBool_Check(scale_obj.ptr()))
            throw py::type_error("attention: scale must be a number or None");
        const double s = py::float_(scale_obj);
        if (!std::isfinite(s) || std::fabs(s) > std::numeric_limits<float>::max())
            throw py::value_error("attention: scale must be a finite float32 number (|scale| <= 3.4028235e38), got " +
                                  std::string(py::repr(scale_obj)));
        P.scale = float(s);
    }
    const int64_t full[4] = {P.B, P.Hq, P.Tq, P.Tk};
    StridedF32 bias;
    if (!bias_obj.is_none()) {
        bias = strided_f32(bias_obj, "bias");
        P.bias = extra_view(bias.arr, bias.data, "bias", full, sizeof(float));
    }
    py::array mask;
    if (!mask_obj.is_none()) {
        if (!py::isinstance<py::array>(mask_obj))
            throw py::type_error("attention: mask must be a boolean NumPy array (True = attend)");
        mask = py::reinterpret_borrow<py::array>(mask_obj);
        if (!mask.dtype().is(py::dtype::of<bool>()))
            throw py::type_error("attention: mask must be a boolean array (True = attend), got dtype " +
                                 std::string(py::str(mask.dtype())));
        P.mask = extra_view(mask, mask.data(), "mask", full, 1);
    }
    StridedF32 rel_h, rel_w;
    if (!rel_pos_obj.is_none()) {
        if (!py::isinstance<py::tuple>(rel_pos_obj) || py::len(rel_pos_obj) != 2)
            throw py::type_error("attention: rel_pos must be a pair (rel_h, rel_w) of float32 arrays or None");
        const py::tuple pair = py::reinterpret_borrow<py::tuple>(rel_pos_obj);
        rel_h = strided_f32(pair[0], "rel_pos[0]");
        rel_w = strided_f32(pair[1], "rel_pos[1]");
        if (rel_h.ndim() < 1 || rel_w.ndim() < 1)
            throw py::value_error("attention: rel_pos arrays need at least 1 dimension (the key grid's side)");
        P.kh = rel_h.dim(-1);
        P.kw = rel_w.dim(-1);
        if (P.kh * P.kw != P.Tk || P.kw == 0)
            throw py::value_error("attention: rel_pos's key grid kh x kw = " + std::to_string(P.kh) + " x " +
                                  std::to_string(P.kw) + " must hold the Tk = " + std::to_string(P.Tk) + " keys");
        const int64_t full_h[4] = {P.B, P.Hq, P.Tq, P.kh}, full_w[4] = {P.B, P.Hq, P.Tq, P.kw};
        P.rel_h = extra_view(rel_h.arr, rel_h.data, "rel_pos[0]", full_h, sizeof(float));
        P.rel_w = extra_view(rel_w.arr, rel_w.data, "rel_pos[1]", full_w, sizeof(float));
    }
    P.q = {q.data, q.st(0), q.st(1), q.st(2)};
    P.k = {k.data, k.st(0), k.st(1), k.st(2)};
    P.v = {v.data, v.st(0), v.st(1), v.st(2)};
    py::array_t<float> out = outputs::new_array({P.B, P.Hq, P.Tq, P.Dv});
    P.out = out.mutable_data();
    if (out.size() == 0) return out;
    if (P.Tk == 0) {                                          // nothing to attend to: zeros
        std::fill(P.out, P.out + out.size(), 0.f);
        return out;
    }
    const int nt_max = kernel_threads();
    const int64_t nqb = (P.Tq + BQ - 1) / BQ;
    const int64_t ntasks = P.Tq == 1 ? P.B * P.Hkv : P.B * P.Hq * nqb;
    const double work = double(P.B) * P.Hq * P.Tq * P.Tk * (P.Dh + P.Dv);
    const int nt = int(std::min<int64_t>(ntasks, work < 1e6 ? 1 : nt_max));
    const size_t per_thread =
        P.Tq == 1 ? static_cast<size_t>(P.group() * (decode_stride(P) + 1) + VL + P.Tk) : Scratch::floats(P);
    float* ws = version == "naive" ? nullptr : thread_scratch(1, per_thread * nt);
    {
        py::gil_scoped_release nogil;
        if (version == "naive") {
            attention_naive(P);
        } else if (P.Tq == 1) {
#pragma omp parallel for num_threads(nt) schedule(dynamic) if (nt > 1)
            for (int64_t t = 0; t < ntasks; ++t) decode_group(P, t / P.Hkv, t % P.Hkv, ws + thread_id() * per_thread);
        } else {
#pragma omp parallel num_threads(nt) if (nt > 1)
            {
                Scratch w(ws + thread_id() * per_thread, P);
#pragma omp for schedule(dynamic)
                for (int64_t t = 0; t < ntasks; ++t) {
                    // longest causal tasks (last query blocks) first
                    const int64_t qb = nqb - 1 - t % nqb, bh = t / nqb;
                    const int64_t i0 = qb * BQ, i1 = std::min(P.Tq, i0 + BQ);
                    flash_block(P, bh / P.Hq, bh % P.Hq, i0, i1, w);
                }
            }
        }
    }
    return out;
}

void bind_attention(py::module_& m) {
    m.def("attention", &attention, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("causal") = false,
          py::arg("scale") = py::none(), py::arg("bias") = py::none(), py::arg("mask") = py::none(),
          py::arg("rel_pos") = py::none(), py::arg("version") = "fast",
          "Fused multi-head attention (float32). q [B,Hq,Tq,Dh], k [B,Hkv,Tk,Dh], v [B,Hkv,Tk,Dv], Hq % Hkv == 0;\n"
          "causal is bottom-right aligned; bias (float32, additive) and mask (bool, True = attend) broadcast to\n"
          "[B,Hq,Tq,Tk]; rel_pos = (rel_h, rel_w) adds the decomposed bias rel_h[..., j // kw] + rel_w[..., j % kw]\n"
          "(broadcasting to [B,Hq,Tq,kh] and [B,Hq,Tq,kw], kh * kw = Tk) without forming it; scale defaults to\n"
          "1/sqrt(Dh). Rows with no allowed key give zeros. Non-float32 inputs\n"
          "raise TypeError. version: 'fast' (tiled online softmax, threaded) or 'naive'.");
}

}  // namespace pyworkloads
