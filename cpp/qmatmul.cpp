// Weight-only quantized matrix multiplication, y = x · dequantize(W)ᵀ, with W [N, K] stored in the
// block formats of llama.cpp's GGUF files (ggml's Q8_0, Q4_0, Q4_1, Q4_K, Q6_K) and x [M, K] in
// float32, as four numbered versions, each section below opening with what it adds over the one
// before:
//
//   1. naive    decode a row of W to floats (scalar, the format's definition), dot it with x
//   2. gemv     M <= GEMV_M (decode, a few rows): blocks decoded in registers, FMA with the float
//               activations, each thread streaming a contiguous range of W's rows once
//   3. gemm     larger M (prefill): W decoded panel by panel straight into the packed B panels of
//               matmul.cpp's blocked GEMM (gemm.h), which then runs as for float32 weights
//   4. int8     M <= GEMV_M on the AVX2 and AVX-512 builds: x rounded to int8 per block of 32 (as
//               Q8_0), integer dot products with the weights' raw integers, one float FMA per 32
//               (llama.cpp's way; adds x's rounding error, bounded in the section)
//
// version="naive" runs 1; version="fast" runs 4 (2 on the portable build) for M <= GEMV_M and 3
// otherwise ("gemv", "gemm" and "int8" force 2, 3 or 4 at any M, for tests and measurements;
// "int8" is refused by the portable build, which has no integer path).  `dequantize` decodes whole rows with the
// decoder of versions 2 and 3 (embedding rows, tests), in the reference's order of operations.
//
// The formats.  Each row of W is K / block blocks of `type_size` bytes; a block holds its weights as
// small integers q and one or more scales (IEEE binary16, little-endian).  Element order within a
// block is ggml's (gguf's gguf/quants.py spells the same layouts in NumPy):
//
//   Q8_0  34 B / 32:  d, qs[32] int8                     w[j] = d·qs[j]
//   Q4_0  18 B / 32:  d, qs[16]                          w[j] = d·((qs[j] & 15) − 8), w[j+16] from qs[j] >> 4
//   Q4_1  20 B / 32:  d, m, qs[16]                       w[j] = d·(qs[j] & 15) + m,   w[j+16] from qs[j] >> 4
//   Q4_K 144 B / 256: d, dmin, scales[12], qs[128]       sub-block s of 32: w = (d·sc[s])·q − dmin·mn[s], eight
//                     6-bit (sc, mn) pairs packed in scales[12]; bytes qs[32c..32c+31] give sub-block 2c
//                     their low nibbles and 2c+1 their high ones
//   Q6_K 210 B / 256: ql[128], qh[64], scales[16] int8, d   group g of 16: w = (d·scales[g])·(q − 32), q six
//                     bits: four of ql, two of qh (two halves of 128 weights; see Q6_K)
//
// Exactness.  Every product in these formulas is exact in float32: an fp16 scale has 11 significant
// bits, the integers at most 8 (q, sc, mn, int8 scales), and the largest product, Q6_K's
// d·scale·(q − 32), is an integer of at most 2047·128·32 < 2^24 times a power of two.  Only the one
// addition of Q4_1 and Q4_K rounds -- so any grouping of the products, and a fused multiply-add
// for the addition, give bit for bit the float32 weights of gguf.quants.dequantize; `dequantize`
// is tested for equality with it.  A non-finite scale decodes as in the reference (inf·0 = NaN for
// a zero q), and the products with x are formed weight by weight as in x @ W.T (no scale factored
// out of a block's sum, no padding of K), so NaN and inf in x or W reach y as they would there.
#include "common.h"
#include "gemm.h"
#include "simd.h"
#include "strided.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

namespace pyworkloads {

namespace {

using namespace simd;
using gemm::Mat;
using gemm::NR;

constexpr int64_t GEMV_M = 8;        // x rows up to which version 2 or 4 runs (measured: see the header of 2)
constexpr int MAX_ROWS = 8;          // x rows per pass over a W row in versions 2, 4 (register accumulators)
constexpr int PREFETCH_BYTES = 1024;  // how far ahead of the block being decoded the stream is fetched

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

float f16(const uint8_t* p) { return half_to_float(static_cast<uint16_t>(p[0] | p[1] << 8)); }

#if defined(PYW_SIMD_INT8)
// Rows of x quantized for version 4 (see there): per row K int8 q, and per 32-weight block its
// scale dx, dx·Σq (for the formats with a min) and the 16 int16 X_OFF·(q[2i] + q[2i+1]) (for the
// formats whose q carry an offset: the offset's share of vpmaddubsw's pair sums).
struct XQ {
    const int8_t* q;
    const float* d;
    const float* s;
    const int16_t* p;
    int64_t K, nb;                       // nb: 32-weight blocks per row
    // the AVX-512 pair path (row_dot_i8_512), eight lanes per block: X_OFF2 times the sums of
    // the qx that meet in each int32 lane of a block's dot product, dx, and dx times those sums
    const int32_t* o;
    const float* dl;
    const float* sl;
    vb qv(int m, int64_t u) const { return vb_load(q + m * K + 32 * u); }
#if defined(PYW_SIMD_INT8_512)
    vb2 qv2(int m, int64_t u) const { return vb2_load(q + m * K + 32 * u); }   // units u and u + 1
    vb2 o2(int m, int64_t u) const { return vb2_load(o + (m * nb + u) * 8); }
    vf16 dl2(int m, int64_t u) const { return _mm512_loadu_ps(dl + (m * nb + u) * 8); }
    vf16 sl2(int m, int64_t u) const { return _mm512_loadu_ps(sl + (m * nb + u) * 8); }
#endif
};
#endif

// ---- the formats ------------------------------------------------------------------------------
// Per format: its block geometry; `decode_ref`, the definition written out one weight at a time
// (version 1); and `decode<EXACT>`, the same decoding VL weights at a time in registers (versions 2
// and 3): the packed bits widened to int32 lanes (vload_u8), picked apart with shifts and masks,
// converted to float and scaled, each group of VL weights handed to emit(e, w) for the block's
// elements [e, e + VL).  The loops have constant trip counts and unroll fully, so e is a constant
// where emit is inlined.  EXACT = false folds the offset of Q4_0 (−8) and Q6_K (−32) into the FMA
// with the scale, d·q − 8d: exact (the true result is a float, see the header) when d is finite,
// one instruction fewer per VL weights; with an infinite or NaN d the block is decoded the exact way
// (inf·(q − 8) is ±inf or NaN as in the reference, inf·q − 8·inf always NaN).  `dequantize` uses
// EXACT = true, bit for bit gguf's weights (the fold can turn a −0 into +0).  On the AVX2 and
// AVX-512 builds each format also has version 4's integer dot products (int8_weights / int8_dot for
// the 32-weight formats, dot_i8 for the K-quants; see section 4).
struct Q8_0 {
    static constexpr const char* name = "Q8_0";
    static constexpr int BLOCK = 32, BYTES = 34;
    static void decode_ref(const uint8_t* b, float* w) {
        const float d = f16(b);
        for (int j = 0; j < 32; ++j) w[j] = d * float(static_cast<int8_t>(b[2 + j]));
    }
    template <bool EXACT, class Emit>
    static void decode(const uint8_t* b, Emit&& emit) {
        const vf d = vset1(f16(b));
#pragma GCC unroll 4
        for (int e = 0; e < 32; e += VL) emit(e, vmul(d, vcvt_i8(reinterpret_cast<const int8_t*>(b + 2 + e))));
    }
#if defined(PYW_SIMD_INT8)
    // Version 4: Σ qs·qx per block (int32 lanes), both signed, so the sign trick (vmaddubs_s8).
    static constexpr int X_OFF = 0;
    static constexpr bool HAS_MIN = false;
    static vb int8_weights(const uint8_t* b) { return vb_load(b + 2); }
    static vb int8_dot(vb w, vb qx, const int16_t*) { return vsum_pairs(vmaddubs_s8(w, qx)); }
#endif
#if defined(PYW_SIMD_INT8_512)
    static constexpr bool PAIRS = true;
    static constexpr int X_OFF2 = 0;
    static constexpr bool MIN2 = false;
    // a pair is 68 bytes: the scales from its first 64, the weights as two 32-byte loads
    static vb2 int8_pair(const uint8_t* b, vf16& d, vf16&) {
        d = vpair_f16(vb2_load_n<64>(b), 0, BYTES / 2);
        return vb2_load2(b + 2, b + 2 + BYTES);
    }
    static vb2 int8_dot2(vb2 w, vb2 qx) { return vsum_pairs2(vmaddubs2_s8(w, qx)); }
#endif
};

struct Q4_0 {
    static constexpr const char* name = "Q4_0";
    static constexpr int BLOCK = 32, BYTES = 18;
    static void decode_ref(const uint8_t* b, float* w) {
        const float d = f16(b);
        for (int j = 0; j < 16; ++j) {
            w[j] = d * float((b[2 + j] & 15) - 8);
            w[j + 16] = d * float((b[2 + j] >> 4) - 8);
        }
    }
    template <bool EXACT, class Emit>
    static void decode(const uint8_t* b, Emit&& emit) {
        const float d = f16(b);
        if (!EXACT && !std::isfinite(d)) return decode<true>(b, emit);
        const vf dv = vset1(d), off = vset1(-8.f * d);
#pragma GCC unroll 4
        for (int j = 0; j < 16; j += VL) {
            const vi q = vload_u8(b + 2 + j);
            if (EXACT) {
                emit(j, vmul(dv, vcvt_i32(vsub_c<8>(vand_c<15>(q)))));
                emit(16 + j, vmul(dv, vcvt_i32(vsub_c<8>(vsrl_c<4>(q)))));
            } else {
                emit(j, vfma(dv, vcvt_i32(vand_c<15>(q)), off));
                emit(16 + j, vfma(dv, vcvt_i32(vsrl_c<4>(q)), off));
            }
        }
    }
#if defined(PYW_SIMD_INT8)
    // Version 4: Σ (q − 8)·qx = Σ q·qx − 8·Σ qx, the unsigned q through vmaddubs, the 8·Σ qx pairs
    // kept with x (px) subtracted in int16.
    static constexpr int X_OFF = 0;
    static constexpr bool HAS_MIN = true;                  // the offset −8 as a min of −8·d
    static vf8 mins(const uint8_t*, int, vf8 d) { return vmul8(d, vset8(-8.f)); }
    static vb int8_weights(const uint8_t* b) { return vb_nibbles(b + 2); }
    static vb int8_dot(vb w, vb qx, const int16_t*) { return vsum_pairs(vmaddubs(w, qx)); }
#endif
#if defined(PYW_SIMD_INT8_512)
    static constexpr bool PAIRS = true;
    static constexpr int X_OFF2 = 8;                       // Σ (q − 8)·qx = Σ q·qx − 8·Σ qx, per lane
    static constexpr bool MIN2 = false;
    static vb2 int8_pair(const uint8_t* b, vf16& d, vf16&) {   // one 36-byte load: d0 qs0 d1 qs1
        const vb2 t = vb2_load_n<2 * BYTES>(b);
        d = vpair_f16(t, 0, BYTES / 2);
        return vb2_nibbles_words(t, 1, 1 + BYTES / 2);
    }
    static vb2 int8_dot2(vb2 w, vb2 qx) { return vsum_pairs2(vmaddubs2(w, qx)); }
#endif
};

struct Q4_1 {
    static constexpr const char* name = "Q4_1";
    static constexpr int BLOCK = 32, BYTES = 20;
    static void decode_ref(const uint8_t* b, float* w) {
        const float d = f16(b), m = f16(b + 2);
        for (int j = 0; j < 16; ++j) {
            w[j] = d * float(b[4 + j] & 15) + m;
            w[j + 16] = d * float(b[4 + j] >> 4) + m;
        }
    }
    template <bool EXACT, class Emit>
    static void decode(const uint8_t* b, Emit&& emit) {
        const vf d = vset1(f16(b)), m = vset1(f16(b + 2));
#pragma GCC unroll 4
        for (int j = 0; j < 16; j += VL) {
            const vi q = vload_u8(b + 4 + j);
            emit(j, vfma(d, vcvt_i32(vand_c<15>(q)), m));
            emit(16 + j, vfma(d, vcvt_i32(vsrl_c<4>(q)), m));
        }
    }
#if defined(PYW_SIMD_INT8)
    // Version 4: Σ q·qx (the min's term m·dx·Σ qx is added in float, eight blocks at a time).
    static constexpr int X_OFF = 0;
    static constexpr bool HAS_MIN = true;
    static vf8 mins(const uint8_t* b, int n, vf8) { return vload_f16_strided<BYTES>(b + 2, n); }
    static vb int8_weights(const uint8_t* b) { return vb_nibbles(b + 4); }
    static vb int8_dot(vb w, vb qx, const int16_t*) { return vsum_pairs(vmaddubs(w, qx)); }
#endif
#if defined(PYW_SIMD_INT8_512)
    static constexpr bool PAIRS = true;
    static constexpr int X_OFF2 = 0;
    static constexpr bool MIN2 = true;
    static vb2 int8_pair(const uint8_t* b, vf16& d, vf16& m) {   // one 40-byte load: d0 m0 qs0 d1 m1 qs1
        const vb2 t = vb2_load_n<2 * BYTES>(b);
        d = vpair_f16(t, 0, BYTES / 2);
        m = vpair_f16(t, 1, 1 + BYTES / 2);
        return vb2_nibbles_words(t, 2, 2 + BYTES / 2);
    }
    static vb2 int8_dot2(vb2 w, vb2 qx) { return vsum_pairs2(vmaddubs2(w, qx)); }
#endif
};

struct Q4_K {
    static constexpr const char* name = "Q4_K";
    static constexpr int BLOCK = 256, BYTES = 144;
    // llama.cpp's get_scale_min_k4: sub-blocks 0-3 keep their 6 bits in the low bits of scales[s]
    // (scale) and scales[s+4] (min); 4-7 in the nibbles of scales[s+4] plus the top two bits of
    // scales[s-4] (scale) and scales[s] (min).
    static void scale_min(const uint8_t* sc, uint8_t* scale, uint8_t* mn) {
        for (int s = 0; s < 4; ++s) {
            scale[s] = sc[s] & 63;
            mn[s] = sc[s + 4] & 63;
        }
        for (int s = 4; s < 8; ++s) {
            scale[s] = static_cast<uint8_t>((sc[s + 4] & 15) | (sc[s - 4] >> 6) << 4);
            mn[s] = static_cast<uint8_t>((sc[s + 4] >> 4) | (sc[s] >> 6) << 4);
        }
    }
    static void decode_ref(const uint8_t* b, float* w) {
        const float d = f16(b), dmin = f16(b + 2);
        uint8_t scale[8], mn[8];
        scale_min(b + 4, scale, mn);
        for (int s = 0; s < 8; ++s) {
            const uint8_t* qs = b + 16 + 32 * (s / 2);
            const float ds = d * float(scale[s]), dm = dmin * float(mn[s]);
            for (int l = 0; l < 32; ++l) w[32 * s + l] = ds * float(s % 2 ? qs[l] >> 4 : qs[l] & 15) - dm;
        }
    }
    // t[s] = d·sc[s], t[8 + s] = −dmin·mn[s].  On AVX2/AVX-512 the unpacking runs four scales at a
    // time in 32-bit words (llama.cpp's trick) and the products as two 8-lane vectors: done one by
    // one, the 16 conversions, multiplies and broadcasts cost the FP pipes a third of the block.
    static void scales(const uint8_t* b, float* t) {
        const float d = f16(b), dmin = f16(b + 2);
#if defined(__AVX2__)
        uint32_t u[3];
        std::memcpy(u, b + 4, sizeof u);
        const uint32_t sc_lo = u[0] & 0x3F3F3F3Fu, mn_lo = u[1] & 0x3F3F3F3Fu;
        const uint32_t sc_hi = (u[2] & 0x0F0F0F0Fu) | (u[0] >> 2 & 0x30303030u);
        const uint32_t mn_hi = (u[2] >> 4 & 0x0F0F0F0Fu) | (u[1] >> 2 & 0x30303030u);
        const __m128i bytes = _mm_set_epi32(int(mn_hi), int(mn_lo), int(sc_hi), int(sc_lo));
        const __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
        const __m256 mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(bytes, bytes)));
        _mm256_store_ps(t, _mm256_mul_ps(_mm256_set1_ps(d), sc));
        _mm256_store_ps(t + 8, _mm256_mul_ps(_mm256_set1_ps(-dmin), mn));
#else
        uint8_t sc[8], mn[8];
        scale_min(b + 4, sc, mn);
        for (int s = 0; s < 8; ++s) {
            t[s] = d * float(sc[s]);
            t[8 + s] = -dmin * float(mn[s]);
        }
#endif
    }
    // w = (d·sc)·q − dmin·mn as fma(d·sc, q, −dmin·mn): both products exact, one rounding.
    template <bool EXACT, class Emit>
    static void decode(const uint8_t* b, Emit&& emit) {
        alignas(32) float t[16];
        scales(b, t);
        const uint8_t* qs = b + 16;
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) {
            const vf s0 = vset1(t[2 * c]), m0 = vset1(t[8 + 2 * c]);
            const vf s1 = vset1(t[2 * c + 1]), m1 = vset1(t[8 + 2 * c + 1]);
#pragma GCC unroll 4
            for (int j = 0; j < 32; j += VL) {
                const vi q = vload_u8(qs + 32 * c + j);
                emit(64 * c + j, vfma(s0, vcvt_i32(vand_c<15>(q)), m0));
                emit(64 * c + 32 + j, vfma(s1, vcvt_i32(vsrl_c<4>(q)), m1));
            }
        }
    }
#if defined(PYW_SIMD_INT8)
    // Version 4: Σ_s (d·sc[s]·dx_s)·Σ q·qx − Σ_s dmin·mn[s]·(dx_s·Σ qx): the eight factors
    // d·sc[s]·dx_s of a row in one 8-lane multiply, the eight mins' terms in one 8-lane multiply;
    // the sub-blocks' products alternate between two chains (one FMA chain would be the bound at
    // M = 1).
    static constexpr int X_OFF = 0;
    template <int MM>
    static void dot_i8(const uint8_t* b, const XQ& x, int64_t u, vf8* acc) {
        alignas(32) float t[16], ds[MM][8];
        scales(b, t);
        vf8 lo[MM], hi[MM];
#pragma GCC unroll 8
        for (int m = 0; m < MM; ++m) {
            vstore8(ds[m], vmul8(vload8(t), vload8(x.d + m * x.nb + u)));
            lo[m] = vmul8(vload8(t + 8), vload8(x.s + m * x.nb + u));
            hi[m] = vzero8();
        }
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) {
            const vb q = vb_load(b + 16 + 32 * c);
            const vb q0 = vb_and_c<15>(q), q1 = vb_and_c<15>(vb_srl16_c<4>(q));
#pragma GCC unroll 8
            for (int m = 0; m < MM; ++m) {
                lo[m] = vfma8(vcvt8(vsum_pairs(vmaddubs(q0, x.qv(m, u + 2 * c)))), vset8(ds[m][2 * c]), lo[m]);
                hi[m] = vfma8(vcvt8(vsum_pairs(vmaddubs(q1, x.qv(m, u + 2 * c + 1)))), vset8(ds[m][2 * c + 1]), hi[m]);
            }
        }
#pragma GCC unroll 8
        for (int m = 0; m < MM; ++m) acc[m] = vadd8(acc[m], vadd8(lo[m], hi[m]));
    }
#endif
#if defined(PYW_SIMD_INT8_512)
    // No pair path: the chunks are pairs of units already, but spreading each unit's scale and min
    // over its lanes cost as much as the pairing saved (measured: the same ns per weight).
    static constexpr bool PAIRS = false;
#endif
};

struct Q6_K {
    static constexpr const char* name = "Q6_K";
    static constexpr int BLOCK = 256, BYTES = 210;
    // The 128 weights of half h: ql advances 64 bytes, qh 32 per half; weights l (< 32), l + 32,
    // l + 64, l + 96 take the low nibble of ql[l], of ql[l+32], the high nibble of ql[l], of
    // ql[l+32], and bits 0-1, 2-3, 4-5, 6-7 of qh[l] above them.
    static int q6(const uint8_t* b, int i) {
        const int h = i / 128, l = i % 32, k = i % 128 / 32;
        const uint8_t* ql = b + 64 * h;
        const uint8_t* qh = b + 128 + 32 * h;
        const int low = k % 2 ? ql[l + 32] : ql[l];
        return ((k < 2 ? low & 15 : low >> 4) | (qh[l] >> 2 * k & 3) << 4) - 32;
    }
    static void decode_ref(const uint8_t* b, float* w) {
        const float d = f16(b + 208);
        for (int i = 0; i < 256; ++i) w[i] = d * float(static_cast<int8_t>(b[192 + i / 16])) * float(q6(b, i));
    }
    // w = (d·scales[g])·(q − 32); with EXACT = false, fma(d·scales[g], q, −32·d·scales[g]).
    template <bool EXACT, class Emit>
    static void decode(const uint8_t* b, Emit&& emit) {
        const float d = f16(b + 208);
        if (!EXACT && !std::isfinite(d)) return decode<true>(b, emit);
        alignas(64) float scale[16], off[16];             // d·scales[g], −32·d·scales[g] (vectors, as Q4_K's)
#pragma GCC unroll 2
        for (int g = 0; g < 16; g += VL) {
            const vf f = vcvt_i8(reinterpret_cast<const int8_t*>(b + 192 + g));
            vstore(scale + g, vmul(vset1(d), f));
            if (!EXACT) vstore(off + g, vmul(vset1(-32.f * d), f));
        }
        auto out = [&](int e, vi q) {
            const vf s = vset1(scale[e / 16]);
            if (EXACT) emit(e, vmul(s, vcvt_i32(vsub_c<32>(q))));
            else emit(e, vfma(s, vcvt_i32(q), vset1(off[e / 16])));
        };
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
            const uint8_t* ql = b + 64 * h;
            const uint8_t* qh = b + 128 + 32 * h;
#pragma GCC unroll 4
            for (int l = 0; l < 32; l += VL) {
                const vi a = vload_u8(ql + l), c = vload_u8(ql + 32 + l), hb = vload_u8(qh + l);
                out(128 * h + l, vor_i(vand_c<15>(a), vand_c<0x30>(vsll_c<4>(hb))));
                out(128 * h + l + 32, vor_i(vand_c<15>(c), vand_c<0x30>(vsll_c<2>(hb))));
                out(128 * h + l + 64, vor_i(vsrl_c<4>(a), vand_c<0x30>(hb)));
                out(128 * h + l + 96, vor_i(vsrl_c<4>(c), vand_c<0x30>(vsrl_c<2>(hb))));
            }
        }
    }
#if defined(PYW_SIMD_INT8)
    // Version 4: Σ_u d·dx_u·Σ_g scales[g]·Σ (q − 32)·qx over the eight 32-weight units u, two groups
    // g of 16 each: the unsigned q through vmaddubs, 32·Σqx's pairs (x.p) subtracted in int16
    // (|63·127·2 − 32·(−127)·2| < 32767), the int8 group scales applied in the int16 -> int32 step
    // (vpmaddwd by [scales[2u] x 8, scales[2u+1] x 8]), one float FMA per unit, two chains as Q4_K's.
    static constexpr int X_OFF = 32;
    template <int MM>
    static void dot_i8(const uint8_t* b, const XQ& x, int64_t u, vf8* acc) {
        const __m128i sc = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 192));
        alignas(32) float ds[MM][8];                 // d·dx of the eight units, per row
        vf8 part[2][MM];
#pragma GCC unroll 8
        for (int m = 0; m < MM; ++m) {
            vstore8(ds[m], vmul8(vset8(f16(b + 208)), vload8(x.d + m * x.nb + u)));
            part[0][m] = part[1][m] = vzero8();
        }
        auto unit = [&](int k, vb q) {               // k: the unit (0..7) within the block
            const int g = 2 * k;
            const vb s16 = _mm256_cvtepi8_epi16(
                _mm_shuffle_epi8(sc, _mm_set_epi64x(int64_t(0x0101010101010101ull * uint64_t(g + 1)),
                                                    int64_t(0x0101010101010101ull * uint64_t(g)))));
#pragma GCC unroll 8
            for (int m = 0; m < MM; ++m) {
                const vb p = vsub_i16(vmaddubs(q, x.qv(m, u + k)), vb_load(x.p + (m * x.nb + u + k) * 16));
                part[k % 2][m] = vfma8(vcvt8(vmadd_i16(p, s16)), vset8(ds[m][k]), part[k % 2][m]);
            }
        };
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
            const vb a = vb_load(b + 64 * h), c = vb_load(b + 64 * h + 32), hb = vb_load(b + 128 + 32 * h);
            unit(4 * h + 0, vb_or(vb_and_c<15>(a), vb_and_c<0x30>(vb_sll16_c<4>(hb))));
            unit(4 * h + 1, vb_or(vb_and_c<15>(c), vb_and_c<0x30>(vb_sll16_c<2>(hb))));
            unit(4 * h + 2, vb_or(vb_and_c<15>(vb_srl16_c<4>(a)), vb_and_c<0x30>(hb)));
            unit(4 * h + 3, vb_or(vb_and_c<15>(vb_srl16_c<4>(c)), vb_and_c<0x30>(vb_srl16_c<2>(hb))));
        }
#pragma GCC unroll 8
        for (int m = 0; m < MM; ++m) acc[m] = vadd8(acc[m], vadd8(part[0][m], part[1][m]));
    }
#endif
#if defined(PYW_SIMD_INT8_512)
    // The AVX-512 pair path (row_dot_i8_512): the 64 bytes ql[64h..] in one register give units
    // 4h and 4h + 1 their low four bits (low nibbles) and units 4h + 2, 4h + 3 theirs (high
    // nibbles); qh's 32 bytes, copied into both halves, give the top two bits with a different
    // shift per half.  A pair's four group scales are spread over its 32 int16 lanes.
    static constexpr bool PAIRS = true;
    static constexpr int X_OFF2 = 0;
    static constexpr bool MIN2 = false;
    template <int MM, int C>
    static void dot_i8_512(const uint8_t* b, const XQ& x, int64_t u, vf16 (*acc)[MM]) {
        const vf16 d = _mm512_set1_ps(f16(b + 208));
        const __m256i sc = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 192)));
        const vb2 m15 = _mm512_set1_epi8(15), m30 = _mm512_set1_epi8(0x30);
        auto pair = [&](int j, vb2 q) {              // units 2j, 2j + 1: groups 4j .. 4j + 3
            const uint64_t g = 0x0101010101010101ull * uint64_t(4 * j);
            const vb2 s16 = _mm512_cvtepi8_epi16(_mm256_shuffle_epi8(
                sc, _mm256_setr_epi64x(int64_t(g), int64_t(g + 0x0101010101010101ull),
                                       int64_t(g + 0x0202020202020202ull), int64_t(g + 0x0303030303030303ull))));
#pragma GCC unroll 8
            for (int m = 0; m < MM; ++m) {
                const vb2 p =
                    _mm512_sub_epi16(vmaddubs2(q, x.qv2(m, u + 2 * j)), vb2_load(x.p + (m * x.nb + u + 2 * j) * 16));
                acc[j % C][m] =
                    vfma16(vcvt16(_mm512_madd_epi16(p, s16)), _mm512_mul_ps(d, x.dl2(m, u + 2 * j)), acc[j % C][m]);
            }
        };
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
            const vb2 ac = vb2_load(b + 64 * h);
            const vb2 hb = _mm512_broadcast_i64x4(vb_load(b + 128 + 32 * h));
            pair(2 * h, _mm512_or_si512(
                            _mm512_and_si512(ac, m15),
                            _mm512_and_si512(_mm512_sllv_epi64(hb, _mm512_setr_epi64(4, 4, 4, 4, 2, 2, 2, 2)), m30)));
            pair(2 * h + 1,
                 _mm512_or_si512(
                     _mm512_and_si512(_mm512_srli_epi16(ac, 4), m15),
                     _mm512_and_si512(_mm512_srlv_epi64(hb, _mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2)), m30)));
        }
    }
#endif
};

// Runs f(QT{}) for the format named qtype (the names were checked by the binding).
template <class F>
void with_format(int index, F&& f) {
    switch (index) {
        case 0: f(Q8_0{}); break;
        case 1: f(Q4_0{}); break;
        case 2: f(Q4_1{}); break;
        case 3: f(Q4_K{}); break;
        default: f(Q6_K{}); break;
    }
}

// =============================================================================================
// 1. naive: the definition.  Each row of W is decoded to floats one weight at a time (decode_ref,
// the formulas of the header), then dotted with each row of x in a plain float loop.  No SIMD, no
// threads.  Kept for reading and as a second oracle beside gguf's decoder.
// =============================================================================================
template <class QT>
void qmatmul_naive(int64_t M, int64_t N, int64_t K, const float* x, const uint8_t* W, float* y) {
    const int64_t nb = K / QT::BLOCK;
    std::vector<float> row(static_cast<size_t>(K));
    for (int64_t n = 0; n < N; ++n) {
        for (int64_t b = 0; b < nb; ++b) QT::decode_ref(W + (n * nb + b) * QT::BYTES, row.data() + b * QT::BLOCK);
        for (int64_t m = 0; m < M; ++m) {
            float s = 0.f;
            for (int64_t k = 0; k < K; ++k) s += x[m * K + k] * row[k];
            y[m * N + n] = s;
        }
    }
}

// =============================================================================================
// 2. gemv (M <= GEMV_M, decode): over version 1 the decoded weights never leave the registers.  A
// decode step reads each weight matrix once: at 4.5 bits a weight (Q4_K), LLaMA-7B's largest is
// 25 MB instead of 180 in float32, so the time is the weight stream's -- as long as decoding keeps
// up with memory.  Each block is decoded VL weights at a time (the formats' `decode`): the packed
// bytes widened into int32 lanes (one load-and-extend serves the low and the high nibbles), masked
// and shifted, converted, scaled with one FMA (bias or folded offset) -- about 4 vector
// instructions per VL weights, 4.5 for Q4_K, 7 for Q6_K's six-bit fields -- and each group of VL
// weights feeds one FMA per row of x.  (Unpacking the block into an int8 buffer first, with byte
// shifts and masks, is no cheaper: x86 has no byte shifts, and GCC turned those loops into scalar
// code.)  Accumulators: four per row for one row (an FMA chain of four-cycle latency would
// otherwise bound the loop), two for two rows, one from three rows on; blocks of 32 weights go two
// at a time so the four chains all advance.  Threads split W's rows in contiguous ranges, so each
// thread reads one sequential stream, fetched PREFETCH_BYTES ahead.  For M > 1 every decoded group
// serves all rows of x in the pass (up to MAX_ROWS = 8, their accumulators in registers; the forced
// version "gemv" with more rows passes over each W row again, from L1).  GEMV_M = 8: from about 12
// rows on version 3 is faster (2-core AVX-512 machine, K = N = 4096).
//
// How close this comes to memory speed depends on the format: one AVX-512 core decodes and
// multiplies ~31 G weights/s of Q8_0, ~23 of Q4_K and ~18 of Q6_K (cache-resident, M = 1), so
// two cores keep up with a ~40 GB/s stream for Q8_0 (1.06 bytes a weight) but not for the 4-bit
// formats (0.56 bytes: ~64 G weights/s needed) or Q6_K (0.82: ~44) -- benchmarks/bench_qmatmul.py
// measures the fraction.  Closing that gap takes integer dot products (llama.cpp's way: x
// quantized to int8 per block of 32, vpmaddubsw on the raw q, one float scale per block), at the
// cost of x's rounding error: version 4.
// =============================================================================================
template <class QT>
inline void prefetch_block(const uint8_t* blk) {
#pragma GCC unroll 4
    for (int o = 0; o < QT::BYTES; o += 64) __builtin_prefetch(blk + PREFETCH_BYTES + o);
}

// y[m * ldy] = Σ_k x[m * K + k] · w[k] for m < MM, w the nb blocks at `row`.
template <class QT, int MM>
void row_dot(int64_t nb, const float* x, int64_t K, const uint8_t* row, float* y, int64_t ldy) {
    constexpr int A = MM == 1 ? 4 : MM == 2 ? 2 : 1;       // accumulators per row of x
    constexpr int VPB = QT::BLOCK / VL;                     // lane groups per block
    constexpr int UB = A > VPB ? A / VPB : 1;               // blocks per step
    vf acc[MM][A];
    for (int m = 0; m < MM; ++m)
        for (int a = 0; a < A; ++a) acc[m][a] = vzero();
    auto step = [&](int64_t b, auto ub) {
        constexpr int U = decltype(ub)::value;
#pragma GCC unroll 2
        for (int u = 0; u < U; ++u) {
            const uint8_t* blk = row + (b + u) * QT::BYTES;
            prefetch_block<QT>(blk);
            const float* xb = x + (b + u) * QT::BLOCK;
            QT::template decode<false>(blk, [&](int e, vf w) {
                const int a = (u * VPB + e / VL) % A;
#pragma GCC unroll 8
                for (int m = 0; m < MM; ++m) acc[m][a] = vfma(vload(xb + m * K + e), w, acc[m][a]);
            });
        }
    };
    int64_t b = 0;
    for (; b + UB <= nb; b += UB) step(b, std::integral_constant<int, UB>{});
    for (; b < nb; ++b) step(b, std::integral_constant<int, 1>{});
    for (int m = 0; m < MM; ++m) {
        vf s = acc[m][0];
        for (int a = 1; a < A; ++a) s = vadd(s, acc[m][a]);
        y[m * ldy] = vhsum(s);
    }
}

// Rows [n0, n1) of y = x · Wᵀ (y [M, N]), x rows MAX_ROWS at a time per W row.
template <class QT>
void gemv_rows(int64_t M, int64_t N, int64_t K, const float* x, const uint8_t* W, float* y, int64_t n0, int64_t n1) {
    const int64_t nb = K / QT::BLOCK, row_bytes = nb * QT::BYTES;
    for (int64_t n = n0; n < n1; ++n)
        for (int64_t m0 = 0; m0 < M; m0 += MAX_ROWS) {
            const float* xm = x + m0 * K;
            const uint8_t* row = W + n * row_bytes;
            float* ym = y + m0 * N + n;
            switch (std::min<int64_t>(MAX_ROWS, M - m0)) {
                case 1: row_dot<QT, 1>(nb, xm, K, row, ym, N); break;
                case 2: row_dot<QT, 2>(nb, xm, K, row, ym, N); break;
                case 3: row_dot<QT, 3>(nb, xm, K, row, ym, N); break;
                case 4: row_dot<QT, 4>(nb, xm, K, row, ym, N); break;
                case 5: row_dot<QT, 5>(nb, xm, K, row, ym, N); break;
                case 6: row_dot<QT, 6>(nb, xm, K, row, ym, N); break;
                case 7: row_dot<QT, 7>(nb, xm, K, row, ym, N); break;
                default: row_dot<QT, 8>(nb, xm, K, row, ym, N); break;
            }
        }
}

// The nb blocks at `blocks` decoded to floats at `out`.
template <class QT, bool EXACT>
void decode_row(const uint8_t* blocks, int64_t nb, float* out) {
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = blocks + b * QT::BYTES;
        prefetch_block<QT>(blk);
        float* o = out + b * QT::BLOCK;
        QT::template decode<EXACT>(blk, [&](int e, vf w) { vstore(o + e, w); });
    }
}

// =============================================================================================
// 3. gemm (M > GEMV_M, prefill): over version 2 each decoded weight is reused from cache for many
// rows of x, as in a float GEMM -- because it is one: matmul.cpp's blocked GEMM (version 2 there,
// declared in gemm.h) with a B packer that decodes.  For each kc x nc block of Wᵀ, each thread takes
// its share of the NR-column panels, decodes the NR rows of W over the block's K range (kc is a
// whole number of blocks: Blocking::kalign) into a thread's NR x kc buffer, and packs that buffer
// as matmul packs a float W.T (the AVX-512 16 x 16 register transpose).  Decoding costs ~4 vector
// instructions per VL weights once per (N, K) block, the GEMM M/VL FMAs per weight, so with M in
// the hundreds the product runs at the float GEMM's speed (and from ~12 rows on it beats version 2,
// which decodes once per pass of 8 rows).
// =============================================================================================
template <class QT>
struct PanelSource {
    const uint8_t* W;
    int64_t row_bytes;
    float* tmp;              // NR x kc floats per thread of the team
    size_t tmp_stride;
};

template <class QT>
void pack_quantized(const void* ctx, int64_t pc, int64_t kc, int64_t jc, int64_t nc, int64_t q0, int64_t q1,
                    float* Bp) {
    const auto& src = *static_cast<const PanelSource<QT>*>(ctx);
    float* tmp = src.tmp + static_cast<size_t>(thread_id()) * src.tmp_stride;
    for (int64_t q = q0; q < q1; ++q) {
        const int64_t jr = q * NR;
        const int nr = static_cast<int>(std::min<int64_t>(NR, nc - jr));
        for (int j = 0; j < nr; ++j)
            decode_row<QT, false>(src.W + (jc + jr + j) * src.row_bytes + pc / QT::BLOCK * QT::BYTES, kc / QT::BLOCK,
                                  tmp + j * kc);
        gemm::pack_b(kc, nr, 0, 1, Mat{tmp, 1, kc}, Bp + jr * kc);
    }
}

// =============================================================================================
// 4. int8 (M <= GEMV_M, decode; the AVX2 and AVX-512 builds): over version 2 the weights are never
// converted to float.  llama.cpp's (and llama2.c runq.c's) way: each row of x is quantized once per
// call as Q8_0 would quantize it -- per block of 32, dx = max|x| / 127 and qx = round(x / dx) --
// and a weight block's raw integers are dotted with the qx in integer arithmetic: vpmaddubsw
// (unsigned 4- or 6-bit q times int8 qx, adjacent products summed to int16: 15·127·2 and 63·127·2
// cannot saturate; Q8_0's signed q by the sign trick) then vpmaddwd to int32, 32 weights per
// instruction pair where version 2 converts and multiplies VL, and one float FMA per 32 weights
// applies d·dx.  Offsets and mins come out of sums of qx kept with x: Q4_0's offset as a min of
// −8·d and Q4_1's and Q4_K's mins as m·(dx·Σ qx) in float, eight blocks at a time, Q6_K's −32 as
// 32·Σ qx in int16 (the formats' int8_weights / int8_dot / dot_i8).  Each step covers 256 weights:
// a K-quant block, or eight 32-weight blocks whose fp16 scales are converted by one instruction and
// multiplied by the eight dx together (one at a time, the scalar conversions cost as much as the
// integer dot products).  The registers are 256 bits, one 32-weight unit each -- on the AVX2 build.
// The AVX-512 build puts two units in each 512-bit register (row_dot_i8_512, all
// formats but Q4_K): the per-lane x-side terms it needs (dx, the offsets, the min sums) are laid out by the
// quantization of x, so the loop only loads them.
//
// Accuracy: x is replaced by x̃ = dx·qx with |x − x̃| <= dx/2 per element (round to nearest, plus
// float rounding of dx and of x·127/max|x|), and the rest is exact integer arithmetic and a float
// dot product over the blocks, so each output differs from x·w by at most Σ_blocks dx/2·Σ |w|, plus
// float32 rounding relative to |x̃|·|w| (to |x̃|·(|d·q| + |m|) for Q4_1, Q4_K and Q4_0 (m = 8·d),
// whose scale and min terms are summed separately) -- a block's share of error is at most 0.4 % of its max|x| times
// its Σ|w|, typically ~10 times less; the tests check exactly that bound.  Rows of x holding NaN or
// inf, or a block whose max|x| is below 2^-100 but not 0 (dx would be subnormal, qx imprecise), go
// through version 2 whole, so non-finite values of x propagate as in x @ W.T.  A non-finite fp16
// scale or min of W makes the int8 sum non-finite (d·dx·Σ is ±inf, or NaN as inf·0), and every
// output that comes out non-finite is computed again by version 2, whose products reproduce
// x @ W.T's NaN and inf exactly -- no per-block test in the loop.  Threads split W's rows as in
// version 2; x is quantized once, by the calling thread, before them (M·K values).
// =============================================================================================
#if defined(PYW_SIMD_INT8)
// Σ over n <= 8 consecutive 32-weight blocks at b (Q8_0, Q4_0, Q4_1; x blocks u, u + 1, ...) of
// d·dx·(the format's int8_dot), added to acc[m] for MM rows: the n fp16 scales (and mins) converted
// by one instruction and multiplied by the rows' dx eight at a time, the blocks alternating between
// two FMA chains (one chain's latency would be the bound at M = 1).
template <class QT, int MM>
void dot_i8_32(const uint8_t* b, const XQ& x, int64_t u, vf8* acc, int n) {
    const vf8 d = vload_f16_strided<QT::BYTES>(b, n);
    vf8 mn = vzero8();
    if constexpr (QT::HAS_MIN) mn = QT::mins(b, n, d);
    vf8 ds[MM], part[2][MM];
#pragma GCC unroll 8
    for (int m = 0; m < MM; ++m) {
        ds[m] = vmul8(d, vload8(x.d + m * x.nb + u));                 // d·dx of the n blocks
        part[0][m] = vzero8();
        part[1][m] = QT::HAS_MIN ? vmul8(mn, vload8(x.s + m * x.nb + u)) : vzero8();   // m·dx·Σqx
    }
    alignas(32) float dsa[MM][8];
#pragma GCC unroll 8
    for (int m = 0; m < MM; ++m) vstore8(dsa[m], ds[m]);
#pragma GCC unroll 8
    for (int k = 0; k < n; ++k) {
        const vb w = QT::int8_weights(b + k * QT::BYTES);
#pragma GCC unroll 8
        for (int m = 0; m < MM; ++m) {
            const vb i = QT::int8_dot(w, x.qv(m, u + k), x.p + (m * x.nb + u + k) * 16);
            part[k % 2][m] = vfma8(vcvt8(i), vset8(dsa[m][k]), part[k % 2][m]);
        }
    }
#pragma GCC unroll 8
    for (int m = 0; m < MM; ++m) acc[m] = vadd8(acc[m], vadd8(part[0][m], part[1][m]));
}

// The int8 products of MM quantized rows of x (x) with one row of W (`row`, nb blocks) into
// out[0..MM), 256 weights a step; an output that comes out NaN or inf is computed again by version 2
// from the row's floats xf[m] (the header).
template <class QT, int MM>
void row_dot_i8(int64_t nb, const XQ& x, const float* const* xf, const uint8_t* row, float* out) {
    constexpr int G = 256 / QT::BLOCK;                        // blocks per step
    constexpr int GB = G * QT::BYTES;                          // bytes per step
    vf8 acc[MM];
    for (int m = 0; m < MM; ++m) acc[m] = vzero8();
    int64_t b = 0;
    for (; b + G <= nb; b += G) {
        const uint8_t* g = row + b * QT::BYTES;
#pragma GCC unroll 8
        for (int o = 0; o < GB; o += 64) __builtin_prefetch(g + PREFETCH_BYTES + o);
        if constexpr (QT::BLOCK == 32) dot_i8_32<QT, MM>(g, x, b, acc, G);
        else QT::template dot_i8<MM>(g, x, b * (QT::BLOCK / 32), acc);
    }
    if constexpr (QT::BLOCK == 32)
        if (b < nb) dot_i8_32<QT, MM>(row + b * QT::BYTES, x, b, acc, int(nb - b));
    for (int m = 0; m < MM; ++m) {
        out[m] = vhsum8(acc[m]);
        if (!std::isfinite(out[m])) row_dot<QT, 1>(nb, xf[m], nb * QT::BLOCK, row, out + m, 1);
    }
}

#if defined(PYW_SIMD_INT8_512)
// row_dot_i8 for the 32-weight formats on the AVX-512 build: blocks taken in pairs, two per 512-bit
// register, so every instruction does the work of two.  A pair is read with one load where it fits
// in 64 bytes (Q4_0's 36, Q4_1's 40; masked, so nothing past the pair is touched), and one 16-bit
// permutation picks each block's packed weights out of it into the layout of vb_nibbles, another its
// fp16 scale spread over the block's eight lanes (vpair_f16).  Per lane of a block, the integer dot
// product needs the x-side sums only the quantization of x computes: X_OFF2·Σ qx to take off
// (Q4_0's −8), dx, and dx·Σ qx for the min (Q4_1): loaded from XQ beside qx.  The accumulators
// stay 512 bits wide to the end of the row; an odd last block goes through dot_i8_32.
template <class QT, int MM>
void row_dot_i8_512(int64_t nb, const XQ& x, const float* const* xf, const uint8_t* row, float* out) {
    constexpr int C = MM <= 2 ? 2 : 1;                               // FMA chains per row
    vf16 acc[2][MM];
    for (int m = 0; m < MM; ++m) acc[0][m] = acc[1][m] = vzero16();
    int64_t b = 0;
    vf8 tail[MM];
    for (int m = 0; m < MM; ++m) tail[m] = vzero8();
    if constexpr (QT::BLOCK == 32) {
        auto pair = [&](int64_t u, int c) {                          // blocks u, u + 1 into chain c
            const uint8_t* blk = row + u * QT::BYTES;
            __builtin_prefetch(blk + PREFETCH_BYTES);
            if constexpr (2 * QT::BYTES > 64) __builtin_prefetch(blk + PREFETCH_BYTES + 64);
            vf16 d, mn = vzero16();
            const vb2 w = QT::int8_pair(blk, d, mn);                     // 64 weights, 2 x 8 scales
#pragma GCC unroll 8
            for (int m = 0; m < MM; ++m) {
                vb2 i = QT::int8_dot2(w, x.qv2(m, u));                   // 16 int32 lane sums
                if constexpr (QT::X_OFF2 != 0) i = _mm512_sub_epi32(i, x.o2(m, u));
                acc[c][m] = vfma16(vcvt16(i), _mm512_mul_ps(d, x.dl2(m, u)), acc[c][m]);
                if constexpr (QT::MIN2) acc[c][m] = vfma16(x.sl2(m, u), mn, acc[c][m]);
            }
        };
        for (; b + 4 <= nb; b += 4) {
            pair(b, 0);
            pair(b + 2, C - 1);
        }
        if (b + 2 <= nb) {
            pair(b, 0);
            b += 2;
        }
        if (b < nb) dot_i8_32<QT, MM>(row + b * QT::BYTES, x, b, tail, int(nb - b));
    } else {
        for (; b < nb; ++b) {                                        // the K-quants: a block is 4 pairs
            const uint8_t* blk = row + b * QT::BYTES;
#pragma GCC unroll 4
            for (int o = 0; o < QT::BYTES; o += 64) __builtin_prefetch(blk + PREFETCH_BYTES + o);
            QT::template dot_i8_512<MM, C>(blk, x, b * (QT::BLOCK / 32), acc);
        }
    }
    for (int m = 0; m < MM; ++m) {
        out[m] = vhsum8(vadd8(tail[m], vfold16(C == 2 ? _mm512_add_ps(acc[0][m], acc[1][m]) : acc[0][m])));
        if (!std::isfinite(out[m])) row_dot<QT, 1>(nb, xf[m], nb * QT::BLOCK, row, out + m, 1);
    }
}
#endif

// row_dot_i8, or its pair version where the build and the format have one.
template <class QT, int MM>
void row_dot_int8(int64_t nb, const XQ& x, const float* const* xf, const uint8_t* row, float* out) {
#if defined(PYW_SIMD_INT8_512)
    if constexpr (QT::PAIRS) {
        row_dot_i8_512<QT, MM>(nb, x, xf, row, out);
        return;
    }
#endif
    row_dot_i8<QT, MM>(nb, x, xf, row, out);
}

// x's rows quantized (section 4's header): the rows that qualify packed at the front of the
// buffers, their indices in `rows`; the others (non-finite, or a tiny block) listed in `frows`.
struct QuantizedX {
    std::vector<int8_t> q;
    std::vector<float> d, s;
    std::vector<int16_t> p;
    std::vector<int32_t> o;
    std::vector<float> dl, sl;
    std::vector<int64_t> rows, frows;
    XQ view(int64_t K) const {
        return XQ{q.data(), d.data(), s.data(), p.data(), K, K / 32, o.data(), dl.data(), sl.data()};
    }
};

template <class QT>
void quantize_x(int64_t M, int64_t K, const float* x, QuantizedX& out) {
    const int64_t nb = K / 32;
    out.rows.clear();
    out.frows.clear();
    out.q.resize(size_t(M * K));
    out.d.assign(size_t(M * nb + 8), 0.f);                          // + 8: whole-vector loads at the end
    out.s.assign(size_t(M * nb + 8), 0.f);
    out.p.resize(QT::X_OFF ? size_t(M * nb * 16) : 16);
#if defined(PYW_SIMD_INT8_512)
    constexpr bool PAIRS = QT::PAIRS;
    if constexpr (PAIRS) {
        out.o.resize(QT::X_OFF2 ? size_t(M * nb * 8) : 16);
        out.dl.resize(size_t(M * nb * 8));
        out.sl.resize(QT::MIN2 ? size_t(M * nb * 8) : 16);
    }
#endif
    for (int64_t m = 0, slot = 0; m < M; ++m) {
        bool ok = true;
        for (int64_t u = 0; u < nb && ok; ++u) {
            int8_t* q = out.q.data() + slot * K + 32 * u;
            int32_t sum = 0;
            const float mx = vquantize32(x + m * K + 32 * u, q, &sum);
            ok = mx == 0.f || mx >= 0x1p-100f;                    // false for NaN too
            const float dx = mx / 127.f;
            out.d[size_t(slot * nb + u)] = dx;
            out.s[size_t(slot * nb + u)] = dx * float(sum);
            if (QT::X_OFF) vb_store(out.p.data() + (slot * nb + u) * 16, vmaddubs(vb_set1(QT::X_OFF), vb_load(q)));
#if defined(PYW_SIMD_INT8_512)
            if constexpr (PAIRS) {                                  // the lanes of row_dot_i8_512
                const size_t at = size_t((slot * nb + u) * 8);
                const vb lanes = vsum_pairs(vmaddubs(vb_set1(1), vb_load(q)));   // Σ of 4 qx per lane
                if (QT::X_OFF2) vb_store(out.o.data() + at, _mm256_mullo_epi32(lanes, _mm256_set1_epi32(QT::X_OFF2)));
                vstore8(out.dl.data() + at, vset8(dx));
                if (QT::MIN2) vstore8(out.sl.data() + at, vmul8(vset8(dx), vcvt8(lanes)));
            }
#endif
        }
        (ok ? out.rows : out.frows).push_back(m);
        slot += ok;
    }
}

// Rows [n0, n1) of y = x · Wᵀ: the quantized rows of x MAX_ROWS at a time, the others by version 2.
template <class QT>
void int8_rows(int64_t N, int64_t K, const float* x, const QuantizedX& xq, const uint8_t* W, float* y, int64_t n0,
               int64_t n1) {
    const int64_t nb = K / QT::BLOCK, row_bytes = nb * QT::BYTES, Mq = int64_t(xq.rows.size());
    struct Pass {                        // up to MAX_ROWS quantized rows: their views, floats and outputs
        XQ x;
        int mm;
        const float* xf[MAX_ROWS];
        float* y[MAX_ROWS];
    };
    std::vector<Pass> passes;
    for (int64_t m0 = 0; m0 < Mq; m0 += MAX_ROWS) {
        Pass p{xq.view(K), int(std::min<int64_t>(MAX_ROWS, Mq - m0)), {}, {}};
        p.x.q += m0 * K;
        p.x.d += m0 * p.x.nb;
        p.x.s += m0 * p.x.nb;
        if (QT::X_OFF) p.x.p += m0 * p.x.nb * 16;
#if defined(PYW_SIMD_INT8_512)
        if constexpr (QT::PAIRS) {
            if (QT::X_OFF2) p.x.o += m0 * p.x.nb * 8;
            p.x.dl += m0 * p.x.nb * 8;
            if (QT::MIN2) p.x.sl += m0 * p.x.nb * 8;
        }
#endif
        for (int i = 0; i < p.mm; ++i) {
            p.xf[i] = x + xq.rows[size_t(m0 + i)] * K;
            p.y[i] = y + xq.rows[size_t(m0 + i)] * N;
        }
        passes.push_back(p);
    }
    for (int64_t n = n0; n < n1; ++n) {
        const uint8_t* row = W + n * row_bytes;
        for (const Pass& p : passes) {
            float out[MAX_ROWS];
            switch (p.mm) {
                case 1: row_dot_int8<QT, 1>(nb, p.x, p.xf, row, out); break;
                case 2: row_dot_int8<QT, 2>(nb, p.x, p.xf, row, out); break;
                case 3: row_dot_int8<QT, 3>(nb, p.x, p.xf, row, out); break;
                case 4: row_dot_int8<QT, 4>(nb, p.x, p.xf, row, out); break;
                case 5: row_dot_int8<QT, 5>(nb, p.x, p.xf, row, out); break;
                case 6: row_dot_int8<QT, 6>(nb, p.x, p.xf, row, out); break;
                case 7: row_dot_int8<QT, 7>(nb, p.x, p.xf, row, out); break;
                default: row_dot_int8<QT, 8>(nb, p.x, p.xf, row, out); break;
            }
            for (int i = 0; i < p.mm; ++i) p.y[i][n] = out[i];
        }
        for (const int64_t m : xq.frows) row_dot<QT, 1>(nb, x + m * K, K, row, y + m * N + n, N);
    }
}
#endif
constexpr bool HAS_INT8 =
#if defined(PYW_SIMD_INT8)
    true;
#else
    false;
#endif

// =============================================================================================
// the dispatch
// =============================================================================================
enum class Path { gemv, gemm, int8 };

template <class QT>
void qmatmul_fast(int64_t M, int64_t N, int64_t K, const float* x, const uint8_t* W, float* y, Path path) {
    const int nt_max = kernel_threads();
    // versions 2 and 4: each thread one contiguous range [n0, n1) of W's rows; a stream under
    // ~64 K weights is over before a second thread has started
    auto split_rows = [&](auto&& rows) {
        const int nt = double(N) * K < 65536.0 ? 1 : nt_max;
#pragma omp parallel num_threads(nt) if (nt > 1)
        {
            const int team = team_size(), t = thread_id();
            const int64_t step = ceil_div(N, team);
            const int64_t n0 = std::min(N, t * step), n1 = std::min(N, n0 + step);
            rows(n0, n1);
        }
    };
#if defined(PYW_SIMD_INT8)
    if (path == Path::int8) {
        thread_local QuantizedX buffers;                // grow-only: no allocation per token
        QuantizedX& xq = buffers;                       // (the caller's: the team shares it by reference)
        quantize_x<QT>(M, K, x, xq);
        split_rows([&](int64_t n0, int64_t n1) { int8_rows<QT>(N, K, x, xq, W, y, n0, n1); });
        return;
    }
#endif
    if (path != Path::gemm) {
        split_rows([&](int64_t n0, int64_t n1) { gemv_rows<QT>(M, N, K, x, W, y, n0, n1); });
        return;
    }
    gemm::Blocking blk = gemm::current_blocking();
    blk.kalign = QT::BLOCK;
    const int nt = 2.0 * M * N * K < 2e6 ? 1 : nt_max;
    const gemm::GemmPlan space = gemm::plan_gemm(M, N, K, 1, blk);
    float* ws = thread_scratch(0, space.workspace_floats(nt));
    const size_t tmp_stride = static_cast<size_t>(NR) * space.kc;
    float* tmp = thread_scratch(2, tmp_stride * nt);
    const PanelSource<QT> src{W, K / QT::BLOCK * QT::BYTES, tmp, tmp_stride};
    const gemm::PackB packb{pack_quantized<QT>, &src};
#pragma omp parallel num_threads(nt) if (nt > 1)
    gemm::gemm_team(M, N, K, Mat{x, K, 1}, packb, y, N, blk, ws, space.ap_floats);
}

// ---- the bindings' argument checks --------------------------------------------------------------
constexpr const char* QTYPES[] = {"Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K"};

int qtype_index(const std::string& qtype, const char* fn) {
    for (int i = 0; i < 5; ++i)
        if (qtype == QTYPES[i]) return i;
    throw py::value_error(std::string(fn) + ": qtype must be one of 'Q8_0', 'Q4_0', 'Q4_1', 'Q4_K', 'Q6_K', got '" +
                          qtype + "'");
}

struct Geometry {
    int block, bytes;
};

Geometry geometry(int index) {
    Geometry g{};
    with_format(index, [&](auto f) { g = {decltype(f)::BLOCK, decltype(f)::BYTES}; });
    return g;
}

// w: a C-contiguous uint8 [N, K / block * type_size] array (read in place, never written: it may be
// a read-only view of a mapped file).
py::array require_blocks(const py::handle& obj, const char* fn, const std::string& qtype, int64_t K) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(std::string(fn) + ": w must be a uint8 NumPy array of " + qtype + " blocks, got " +
                             std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
    auto w = py::reinterpret_borrow<py::array>(obj);
    if (!w.dtype().is(py::dtype::of<uint8_t>()))
        throw py::type_error(std::string(fn) + ": w must have dtype uint8 (the raw " + qtype + " blocks), got " +
                             std::string(py::str(w.dtype())));
    if (w.ndim() != 2)
        throw py::value_error(std::string(fn) + ": w must be 2-D [N, bytes per row], got shape " + shape_str(w));
    if (!(w.flags() & py::array::c_style))
        throw py::value_error(std::string(fn) +
                              ": w must be C-contiguous (the blocks of a row side by side; "
                              "np.ascontiguousarray(w) makes a copy that is)");
    const Geometry g = geometry(qtype_index(qtype, fn));
    if (K % g.block != 0)
        throw py::value_error(std::string(fn) + ": K (" + std::to_string(K) + ") must be a multiple of " + qtype +
                              "'s block of " + std::to_string(g.block) + " weights");
    int64_t row_bytes = 0;
    if (__builtin_mul_overflow(K / g.block, int64_t(g.bytes), &row_bytes))
        throw py::value_error(std::string(fn) + ": K = " + std::to_string(K) + " is too large");
    if (w.shape(1) != row_bytes)
        throw py::value_error(std::string(fn) + ": w must have K / " + std::to_string(g.block) + " * " +
                              std::to_string(g.bytes) + " = " + std::to_string(row_bytes) + " bytes per row for K = " +
                              std::to_string(K) + " in " + qtype + ", got shape " + shape_str(w));
    return w;
}

// The float32 output [rows, cols], refusing a size that overflows.
py::array_t<float> output(int64_t rows, int64_t cols, const char* fn) {
    int64_t n = 0, bytes = 0;
    if (__builtin_mul_overflow(rows, cols, &n) || __builtin_mul_overflow(n, int64_t(sizeof(float)), &bytes))
        throw py::value_error(std::string(fn) + ": the output [" + std::to_string(rows) + ", " + std::to_string(cols) +
                              "] is too large");
    return outputs::new_array({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(cols)});
}

}  // namespace

py::array_t<float> qmatmul(py::handle x_obj, py::handle w_obj, const std::string& qtype, const std::string& version) {
    const int index = qtype_index(qtype, "qmatmul");
    if (version != "fast" && version != "naive" && version != "gemv" && version != "gemm" && version != "int8")
        throw py::value_error("qmatmul: version must be 'fast', 'naive', 'gemv', 'gemm' or 'int8', got '" + version +
                              "'");
    if (version == "int8" && !HAS_INT8)
        throw py::value_error(std::string("qmatmul: version 'int8' needs the avx2 or avx512 build of the kernels, this "
                                          "is ") +
                              simd::name());
    const f32array x = require_f32(x_obj, "x");
    if (x.ndim() != 2) throw py::value_error("qmatmul: x must be 2-D [M, K], got shape " + shape_str(x));
    const int64_t M = x.shape(0), K = x.shape(1);
    const py::array w = require_blocks(w_obj, "qmatmul", qtype, K);
    const int64_t N = w.shape(0);
    py::array_t<float> out = output(M, N, "qmatmul");
    if (M == 0 || N == 0) return out;
    float* y = out.mutable_data();
    const float* xp = x.data();
    const auto* W = static_cast<const uint8_t*>(w.data());
    {
        py::gil_scoped_release nogil;
        if (K == 0) std::fill(y, y + M * N, 0.f);
        else if (version == "naive") with_format(index, [&](auto f) { qmatmul_naive<decltype(f)>(M, N, K, xp, W, y); });
        else {
            const bool small = version == "fast" && M <= GEMV_M;
            const Path path = version == "int8" || (small && HAS_INT8) ? Path::int8
                              : version == "gemv" || small             ? Path::gemv
                                                                       : Path::gemm;
            with_format(index, [&](auto f) { qmatmul_fast<decltype(f)>(M, N, K, xp, W, y, path); });
        }
    }
    return out;
}

py::array_t<float> dequantize(py::handle w_obj, const std::string& qtype, int64_t K) {
    const int index = qtype_index(qtype, "dequantize");
    if (K < 0) throw py::value_error("dequantize: K must be >= 0, got " + std::to_string(K));
    const py::array w = require_blocks(w_obj, "dequantize", qtype, K);
    const int64_t N = w.shape(0);
    py::array_t<float> out = output(N, K, "dequantize");
    if (N == 0 || K == 0) return out;
    float* y = out.mutable_data();
    const auto* W = static_cast<const uint8_t*>(w.data());
    {
        py::gil_scoped_release nogil;
        with_format(index, [&](auto f) {
            using QT = decltype(f);
            const int64_t nb = K / QT::BLOCK;
            const int nt = double(N) * K < 65536.0 ? 1 : kernel_threads();
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
            for (int64_t n = 0; n < N; ++n) decode_row<QT, true>(W + n * nb * QT::BYTES, nb, y + n * K);
        });
    }
    return out;
}

void bind_qmatmul(py::module_& m) {
    m.def("qmatmul", &qmatmul, py::arg("x"), py::arg("w"), py::arg("qtype"), py::arg("version") = "fast",
          "x @ dequantize(w).T in float32: x float32 [M, K], w uint8 [N, K / block * type_size], the rows of a\n"
          "GGUF weight in qtype 'Q8_0', 'Q4_0', 'Q4_1', 'Q4_K' or 'Q6_K' (w is read in place, never written).\n"
          "version: 'fast' (M <= 8: 'int8' on the avx2/avx512 builds, else 'gemv'; larger M: 'gemm'),\n"
          "'naive' (decode a row, dot it with x), 'gemv' (decode in registers, float FMA), 'gemm' (a packed\n"
          "GEMM over decoded panels) or 'int8' (x rounded to int8 per block of 32, integer dot products;\n"
          "error <= sum over blocks of max|x|/254 * sum|w|; not on the portable build).");
    m.def("dequantize", &dequantize, py::arg("w"), py::arg("qtype"), py::arg("K"),
          "The float32 [N, K] weights of the uint8 [N, K / block * type_size] GGUF blocks w in qtype (the\n"
          "decoder qmatmul uses; equal to gguf.quants.dequantize).");
    m.attr("QMATMUL_GEMV_M") = GEMV_M;
    m.attr("QMATMUL_INT8") = HAS_INT8;
}

}  // namespace pyworkloads
