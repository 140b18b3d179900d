// A thin SIMD vocabulary for the CPU kernels, picked from the compiler's target macros.  CMakeLists.txt
// compiles the kernels once per ISA level, so each module gets one of these (and
// pyworkloads/_kernels.py loads the best module the CPU runs):
//
//   AVX-512F       vf = __m512   (16 floats)   -- the avx512 module (-march=x86-64-v4)
//   AVX2 + FMA     vf = __m256   (8 floats)    -- the avx2 module (-march=x86-64-v3)
//   portable       vf = struct of 8 floats with plain loops (the compiler vectorises what it can)
//
// The kernels are written once against these few functions (load/store, partial load/store for
// row tails, broadcast, fused multiply-add, horizontal sum/max, exp), so the blocking logic is
// shared and only the register width changes.  `vexp` is the Cephes single-precision exp
// (range reduction by ln 2, degree-5 polynomial; max relative error about 2 ulp on [-87, 88]),
// returning exactly 0 below -87.3 so that -inf scores (masked keys) contribute nothing, and NaN for
// NaN (the clamps keep a NaN operand: the max/min instructions return their second operand when
// either is NaN).  `vmax_nan` is the maximum that keeps a NaN from either side, for the softmax's
// running maximum: a NaN score must make its row NaN, as in the NumPy reference.
// `vneg_inf_to_zero` replaces -inf lanes by 0 (the maximum of a row with no allowed key yet).
// For block-quantized weights (qmatmul.cpp): `vi` is VL int32 lanes, `vload_u8` widens VL unsigned
// bytes into them, a few shifts and masks (shift counts and masks as template arguments: they are
// immediates) pick bit fields out, `vcvt_i32` converts to floats; `vcvt_i8` widens VL signed bytes
// to floats; all exact.  `half_to_float` converts an IEEE binary16 bit pattern to float exactly --
// F16C's vcvtph2ps on the AVX2 and AVX-512 builds (x86-64-v3 includes F16C), bit manipulation on
// the portable one -- subnormals, infinities and NaN included.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace pyworkloads {
namespace simd {

#if defined(__AVX512F__)
constexpr int VL = 16;
using vf = __m512;
inline const char* name() { return "avx512"; }
inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, vf a) { _mm512_storeu_ps(p, a); }
inline vf vload_n(const float* p, int n) { return _mm512_maskz_loadu_ps(__mmask16((1u << n) - 1), p); }
inline void vstore_n(float* p, vf a, int n) { _mm512_mask_storeu_ps(p, __mmask16((1u << n) - 1), a); }
inline vf vset1(float x) { return _mm512_set1_ps(x); }
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
inline vf vmax_nan(vf a, vf b) {
    return _mm512_mask_mov_ps(_mm512_max_ps(a, b), _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), a);
}
inline vf vdiv(vf a, vf b) { return _mm512_div_ps(a, b); }
inline vf vneg_inf_to_zero(vf a) {
    return _mm512_mask_mov_ps(a, _mm512_cmp_ps_mask(a, vset1(-__builtin_inff()), _CMP_EQ_OQ), vzero());
}
inline float vhsum(vf a) { return _mm512_reduce_add_ps(a); }
inline float vhmax(vf a) { return _mm512_reduce_max_ps(a); }
inline vf vexp(vf x) {
    const vf lo = vset1(-87.3f);
    const __mmask16 underflow = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    x = _mm512_min_ps(vset1(88.7f), _mm512_max_ps(lo, x));
    const vf n =
        _mm512_roundscale_ps(vmul(x, vset1(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf r = vfma(n, vset1(-0.693359375f), x);
    r = vfma(n, vset1(2.12194440e-4f), r);
    vf p = vset1(1.9875691500e-4f);
    p = vfma(p, r, vset1(1.3981999507e-3f));
    p = vfma(p, r, vset1(8.3334519073e-3f));
    p = vfma(p, r, vset1(4.1665795894e-2f));
    p = vfma(p, r, vset1(1.6666665459e-1f));
    p = vfma(p, r, vset1(5.0000001201e-1f));
    vf y = vadd(vfma(p, vmul(r, r), r), vset1(1.0f));
    y = _mm512_scalef_ps(y, n);                     // y * 2^n
    return _mm512_mask_mov_ps(y, underflow, vzero());
}
// In-register 16 x 16 transpose: r[i] = row i in, r[c] = column c out (unpack, 64-bit shuffle,
// then two 128-bit-lane shuffles): packs a transposed GEMM operand, transposes attention bias tiles.
inline void transpose16(__m512 r[16]) {
    __m512 t[16], u[16], v[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {
        u[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 4; ++j) {
            v[8 * i + j] = _mm512_shuffle_f32x4(u[8 * i + j], u[8 * i + 4 + j], 0x88);
            v[8 * i + 4 + j] = _mm512_shuffle_f32x4(u[8 * i + j], u[8 * i + 4 + j], 0xdd);
        }
    for (int j = 0; j < 8; ++j) {
        r[j] = _mm512_shuffle_f32x4(v[j], v[8 + j], 0x88);
        r[8 + j] = _mm512_shuffle_f32x4(v[j], v[8 + j], 0xdd);
    }
}
// The build's VL x VL transpose, for code written once for both SIMD widths.
#define PYW_SIMD_TRANSPOSE 1
inline void vtranspose(vf r[VL]) { transpose16(r); }
inline vf vcvt_i8(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
using vi = __m512i;
inline vi vload_u8(const uint8_t* p) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
template <int M>
inline vi vand_c(vi a) {
    return _mm512_and_si512(a, _mm512_set1_epi32(M));
}
template <int S>
inline vi vsrl_c(vi a) {
    return _mm512_srli_epi32(a, S);
}
template <int S>
inline vi vsll_c(vi a) {
    return _mm512_slli_epi32(a, S);
}
template <int C>
inline vi vsub_c(vi a) {
    return _mm512_sub_epi32(a, _mm512_set1_epi32(C));
}
inline vi vor_i(vi a, vi b) { return _mm512_or_si512(a, b); }
inline vf vcvt_i32(vi a) { return _mm512_cvtepi32_ps(a); }
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int VL = 8;
using vf = __m256;
inline const char* name() { return "avx2+fma"; }
inline __m256i tail_mask(int n) {
    alignas(32) static const int32_t m[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + 8 - n));
}
inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, vf a) { _mm256_storeu_ps(p, a); }
inline vf vload_n(const float* p, int n) { return _mm256_maskload_ps(p, tail_mask(n)); }
inline void vstore_n(float* p, vf a, int n) { _mm256_maskstore_ps(p, tail_mask(n), a); }
inline vf vset1(float x) { return _mm256_set1_ps(x); }
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
inline vf vmax_nan(vf a, vf b) { return _mm256_blendv_ps(_mm256_max_ps(a, b), a, _mm256_cmp_ps(a, a, _CMP_UNORD_Q)); }
inline vf vdiv(vf a, vf b) { return _mm256_div_ps(a, b); }
inline vf vneg_inf_to_zero(vf a) {
    return _mm256_blendv_ps(a, vzero(), _mm256_cmp_ps(a, vset1(-__builtin_inff()), _CMP_EQ_OQ));
}
inline float vhsum(vf a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
inline float vhmax(vf a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
inline vf vexp(vf x) {
    const vf lo = vset1(-87.3f);
    const vf underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_min_ps(vset1(88.7f), _mm256_max_ps(lo, x));
    const vf n = _mm256_round_ps(vmul(x, vset1(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf r = vfma(n, vset1(-0.693359375f), x);
    r = vfma(n, vset1(2.12194440e-4f), r);
    vf p = vset1(1.9875691500e-4f);
    p = vfma(p, r, vset1(1.3981999507e-3f));
    p = vfma(p, r, vset1(8.3334519073e-3f));
    p = vfma(p, r, vset1(4.1665795894e-2f));
    p = vfma(p, r, vset1(1.6666665459e-1f));
    p = vfma(p, r, vset1(5.0000001201e-1f));
    vf y = vadd(vfma(p, vmul(r, r), r), vset1(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    y = vmul(y, _mm256_castsi256_ps(e));            // y * 2^n (n in [-126, 128) after the clamp)
    return _mm256_andnot_ps(underflow, y);
}
// In-register 8 x 8 transpose, the AVX2 form of transpose16: unpack pairs of rows, 64-bit
// shuffles, then one 128-bit-lane permute.  r[i] = row i in, r[c] = column c out.
inline void transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; ++i) {
        u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int j = 0; j < 4; ++j) {
        r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
        r[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
    }
}
#define PYW_SIMD_TRANSPOSE 1
inline void vtranspose(vf r[VL]) { transpose8(r); }
inline vf vcvt_i8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
using vi = __m256i;
inline vi vload_u8(const uint8_t* p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}
template <int M>
inline vi vand_c(vi a) {
    return _mm256_and_si256(a, _mm256_set1_epi32(M));
}
template <int S>
inline vi vsrl_c(vi a) {
    return _mm256_srli_epi32(a, S);
}
template <int S>
inline vi vsll_c(vi a) {
    return _mm256_slli_epi32(a, S);
}
template <int C>
inline vi vsub_c(vi a) {
    return _mm256_sub_epi32(a, _mm256_set1_epi32(C));
}
inline vi vor_i(vi a, vi b) { return _mm256_or_si256(a, b); }
inline vf vcvt_i32(vi a) { return _mm256_cvtepi32_ps(a); }
#else
constexpr int VL = 8;
struct vf {
    float v[VL];
};
inline const char* name() { return "portable"; }
inline vf vload(const float* p) {
    vf r;
    std::memcpy(r.v, p, sizeof r.v);
    return r;
}
inline void vstore(float* p, vf a) { std::memcpy(p, a.v, sizeof a.v); }
inline vf vload_n(const float* p, int n) {
    vf r{};
    std::memcpy(r.v, p, sizeof(float) * n);
    return r;
}
inline void vstore_n(float* p, vf a, int n) { std::memcpy(p, a.v, sizeof(float) * n); }
inline vf vset1(float x) {
    vf r;
    for (int i = 0; i < VL; ++i) r.v[i] = x;
    return r;
}
inline vf vzero() { return vset1(0.f); }
#define PYW_LANEWISE(name, expr)                      \
    inline vf name(vf a, vf b) {                      \
        vf r;                                         \
        for (int i = 0; i < VL; ++i) r.v[i] = (expr); \
        return r;                                     \
    }
PYW_LANEWISE(vadd, a.v[i] + b.v[i])
PYW_LANEWISE(vsub, a.v[i] - b.v[i])
PYW_LANEWISE(vmul, a.v[i] * b.v[i])
PYW_LANEWISE(vmax, a.v[i] > b.v[i] ? a.v[i] : b.v[i])
PYW_LANEWISE(vmax_nan, (a.v[i] != a.v[i] || a.v[i] > b.v[i]) ? a.v[i] : b.v[i])
PYW_LANEWISE(vdiv, a.v[i] / b.v[i])
#undef PYW_LANEWISE
inline vf vneg_inf_to_zero(vf a) {
    for (int i = 0; i < VL; ++i) a.v[i] = a.v[i] == -__builtin_inff() ? 0.f : a.v[i];
    return a;
}
inline vf vfma(vf a, vf b, vf c) {
    vf r;
    for (int i = 0; i < VL; ++i) r.v[i] = a.v[i] * b.v[i] + c.v[i];
    return r;
}
inline float vhsum(vf a) {
    float s = 0;
    for (int i = 0; i < VL; ++i) s += a.v[i];
    return s;
}
inline float vhmax(vf a) {
    float s = a.v[0];
    for (int i = 1; i < VL; ++i) s = a.v[i] > s ? a.v[i] : s;
    return s;
}
inline vf vexp(vf x) {
    vf r;
    for (int i = 0; i < VL; ++i) r.v[i] = x.v[i] < -87.3f ? 0.f : __builtin_expf(x.v[i]);
    return r;
}
inline vf vcvt_i8(const int8_t* p) {
    vf r;
    for (int i = 0; i < VL; ++i) r.v[i] = float(p[i]);
    return r;
}
struct vi {
    int32_t v[VL];
};
inline vi vload_u8(const uint8_t* p) {
    vi r;
    for (int i = 0; i < VL; ++i) r.v[i] = p[i];
    return r;
}
#define PYW_INT_LANEWISE(name, expr)                  \
    template <int C>                                  \
    inline vi name(vi a) {                            \
        for (int i = 0; i < VL; ++i) a.v[i] = (expr); \
        return a;                                     \
    }
PYW_INT_LANEWISE(vand_c, a.v[i] & C)
PYW_INT_LANEWISE(vsrl_c, int32_t(uint32_t(a.v[i]) >> C))
PYW_INT_LANEWISE(vsll_c, int32_t(uint32_t(a.v[i]) << C))
PYW_INT_LANEWISE(vsub_c, a.v[i] - C)
#undef PYW_INT_LANEWISE
inline vi vor_i(vi a, vi b) {
    for (int i = 0; i < VL; ++i) a.v[i] |= b.v[i];
    return a;
}
inline vf vcvt_i32(vi a) {
    vf r;
    for (int i = 0; i < VL; ++i) r.v[i] = float(a.v[i]);
    return r;
}
#endif

// ---- int8 dot products (qmatmul.cpp's version 4; the AVX2 and AVX-512 builds) -------------------
// Integer dot products of a weight block's small integers with x quantized to int8, 32 bytes (one
// 32-weight block) in a __m256i on both builds.  `vmaddubs` is vpmaddubsw: unsigned bytes times
// signed bytes, adjacent products summed to int16 (saturating: the callers keep |u·s + u'·s'| <=
// 32767); `vmaddubs_s8` the same for two signed operands by llama.cpp's sign trick (|w| as the
// unsigned operand, w's sign moved onto x: |−128|·127·2 still fits); `vsum_pairs` adds adjacent
// int16 to int32 (vpmaddwd by ones), `vmadd_i16` the same weighted by int16 factors.  vf8 is eight
// floats (a __m256 on the AVX-512 build too) for the per-block scaling of those int32 sums.
#if defined(__AVX2__) && defined(__FMA__)
#define PYW_SIMD_INT8 1
using vb = __m256i;
using vf8 = __m256;
inline vb vb_load(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline vb vb_set1(int8_t c) { return _mm256_set1_epi8(c); }
inline void vb_store(void* p, vb a) { _mm256_storeu_si256(static_cast<__m256i*>(p), a); }
// 16 bytes -> their 16 low nibbles, then their 16 high nibbles, as 32 bytes (the bytes loaded into
// both halves, the upper half shifted right by 4, one mask)
inline vb vb_nibbles(const uint8_t* p) {
    const __m256i q = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_and_si256(_mm256_srlv_epi32(q, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)), _mm256_set1_epi8(15));
}
// The n <= 8 fp16 values at p, p + S, ..., p + (n − 1)·S as floats (lanes from n on 0): the scales of
// n consecutive blocks of S bytes, converted by one vcvtph2ps.
template <int S>
inline vf8 vload_f16_strided(const uint8_t* p, int n) {
    uint16_t h[8] = {};
    for (int i = 0; i < 8; ++i)
        if (i < n) std::memcpy(h + i, p + i * S, 2);
    return _mm256_cvtph_ps(_mm_setr_epi16(short(h[0]), short(h[1]), short(h[2]), short(h[3]), short(h[4]), short(h[5]),
                                          short(h[6]), short(h[7])));
}
// Byte-wise masks and shifts (x86 shifts 16-bit lanes: the mask after a shift drops the bits that
// crossed from the neighbouring byte).
template <int M>
inline vb vb_and_c(vb a) {
    return _mm256_and_si256(a, _mm256_set1_epi8(static_cast<char>(M)));
}
template <int S>
inline vb vb_srl16_c(vb a) {
    return _mm256_srli_epi16(a, S);
}
template <int S>
inline vb vb_sll16_c(vb a) {
    return _mm256_slli_epi16(a, S);
}
inline vb vb_or(vb a, vb b) { return _mm256_or_si256(a, b); }
inline vb vmaddubs(vb u, vb s) { return _mm256_maddubs_epi16(u, s); }
inline vb vmaddubs_s8(vb w, vb x) { return _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w)); }
inline vb vsub_i16(vb a, vb b) { return _mm256_sub_epi16(a, b); }
inline vb vmadd_i16(vb a, vb b) { return _mm256_madd_epi16(a, b); }
inline vb vsum_pairs(vb a) { return _mm256_madd_epi16(a, _mm256_set1_epi16(1)); }
inline vf8 vcvt8(vb a) { return _mm256_cvtepi32_ps(a); }
inline vf8 vload8(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore8(float* p, vf8 a) { _mm256_storeu_ps(p, a); }
inline vf8 vset8(float x) { return _mm256_set1_ps(x); }
inline vf8 vzero8() { return _mm256_setzero_ps(); }
inline vf8 vmul8(vf8 a, vf8 b) { return _mm256_mul_ps(a, b); }
inline vf8 vadd8(vf8 a, vf8 b) { return _mm256_add_ps(a, b); }
inline vf8 vfma8(vf8 a, vf8 b, vf8 c) { return _mm256_fmadd_ps(a, b, c); }
inline float vhsum8(vf8 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
// Quantizes the 32 floats at x to int8 as Q8_0 does (round to nearest even of x·127/max|x|) into
// q; returns max|x| (0 for an all-zero block), or a NaN when an element is NaN or infinite.  *sum
// gets Σ q.
inline float vquantize32(const float* x, int8_t* q, int32_t* sum) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 v[4], amax = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        const __m256 a = _mm256_and_ps(v[i], abs_mask);
        amax = _mm256_max_ps(amax, a);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, _mm256_set1_ps(3.40282347e38f), _CMP_NLE_UQ));
    }
    if (_mm256_movemask_ps(bad)) return __builtin_nanf("");
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    const float mx = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
    const __m256 id = _mm256_set1_ps(mx > 0.f ? 127.f / mx : 0.f);
    __m256i i32[4];
    for (int i = 0; i < 4; ++i) i32[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], id));
    const __m256i s = _mm256_add_epi32(_mm256_add_epi32(i32[0], i32[1]), _mm256_add_epi32(i32[2], i32[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    *sum = _mm_cvtsi128_si32(_mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1)));
    // packs interleave the two 128-bit lanes; the permute puts the 32 bytes back in order
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i32[0], i32[1]), _mm256_packs_epi32(i32[2], i32[3]));
    vb_store(q, _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    return mx;
}

// Two 32-weight units per 512-bit register (the AVX-512 build; qmatmul.cpp's version 4 for the
// 32-weight formats): the same integer dot products as above, on a pair of consecutive blocks at
// once, so every instruction of the loop does twice the work.  vb2 holds the 64 bytes of units u
// (low half) and u + 1 (high half), vf16 their 16 int32 sums as floats.
#if defined(__AVX512BW__) && defined(__AVX512DQ__)
#define PYW_SIMD_INT8_512 1
using vb2 = __m512i;
using vf16 = __m512;
inline vb2 vb2_load(const void* p) { return _mm512_loadu_si512(p); }
// the N <= 64 bytes at p, zeros after them (a masked load: nothing past p + N is touched)
template <int N>
inline vb2 vb2_load_n(const uint8_t* p) {
    return _mm512_maskz_loadu_epi8(N >= 64 ? ~__mmask64(0) : (__mmask64(1) << (N % 64)) - 1, p);
}
// 32 bytes at p0 (low half) and 32 at p1 (high half)
inline vb2 vb2_load2(const uint8_t* p0, const uint8_t* p1) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(vb_load(p0)), vb_load(p1), 1);
}
// Two blocks' packed nibbles in the layout of vb_nibbles: the 16 bytes starting at 16-bit word w0
// of t give the low half (their low nibbles, then their high ones), the 16 at word w1 the high half
inline vb2 vb2_nibbles_words(vb2 t, int w0, int w1) {
    const __m512i lane = _mm512_setr_epi32(0x00010000, 0x00030002, 0x00050004, 0x00070006, 0x00010000, 0x00030002,
                                           0x00050004, 0x00070006, 0x00010000, 0x00030002, 0x00050004, 0x00070006,
                                           0x00010000, 0x00030002, 0x00050004, 0x00070006);
    const __m512i idx =
        _mm512_add_epi16(lane, _mm512_mask_set1_epi16(_mm512_set1_epi16(short(w0)), 0xFFFF0000u, short(w1)));
    const __m512i q = _mm512_permutexvar_epi16(idx, t);
    return _mm512_and_si512(_mm512_srlv_epi64(q, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4)), _mm512_set1_epi8(15));
}
// The fp16 values at 16-bit words w0 and w1 of t as floats, [t[w0] x 8, t[w1] x 8]
inline vf16 vpair_f16(vb2 t, int w0, int w1) {
    const __m512i idx = _mm512_mask_set1_epi16(_mm512_set1_epi16(short(w0)), 0xFF00u, short(w1));
    return _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(idx, t)));
}
inline vb2 vmaddubs2(vb2 u, vb2 s) { return _mm512_maddubs_epi16(u, s); }
// signed times signed (Q8_0): |w| as the unsigned operand, x negated where w < 0 (AVX-512 has no
// vpsignb; a masked subtraction does it)
inline vb2 vmaddubs2_s8(vb2 w, vb2 x) {
    const __mmask64 neg = _mm512_movepi8_mask(w);
    return _mm512_maddubs_epi16(_mm512_abs_epi8(w), _mm512_mask_sub_epi8(x, neg, _mm512_setzero_si512(), x));
}
inline vb2 vsum_pairs2(vb2 a) { return _mm512_madd_epi16(a, _mm512_set1_epi16(1)); }
inline vf16 vcvt16(vb2 a) { return _mm512_cvtepi32_ps(a); }
inline vf16 vzero16() { return _mm512_setzero_ps(); }
inline vf16 vfma16(vf16 a, vf16 b, vf16 c) { return _mm512_fmadd_ps(a, b, c); }
// [s[2k] x 8, s[2k + 1] x 8]: the scales of pair k of the eight blocks in s
// the two halves added: 16 lanes -> 8
inline vf8 vfold16(vf16 a) { return _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1)); }
#endif
#endif

inline float half_to_float(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    const uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 31u, man = h & 1023u;
    if (exp == 0) {                                  // zero or subnormal: man * 2^-24, exact in float
        const float f = float(man) * 0x1p-24f;
        return sign ? -f : f;
    }
    // infinity and NaN (payload kept, as NumPy's float16 -> float32 does), else rebias 15 -> 127
    const uint32_t bits = sign | (exp == 31 ? 0x7f800000u : (exp + 112) << 23) | man << 13;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
#endif
}

}  // namespace simd
}  // namespace pyworkloads
