// Attention version 1, simt: the flash-attention loop in plain float32 FMAs (any dtype, head widths
// up to 256).  A block of 4 warps owns 16 query rows, 4 per warp.  Each K/V tile of 32 keys is
// converted to float in shared memory; for the scores lane j takes key j (a full dot product
// against the broadcast query row; K rows padded by one float so the 32 lanes read 32 banks), the
// warp takes the tile max and the exponentials, then lane c accumulates output columns c, c + 32,
// ... with the probabilities passed along the warp by shuffles.  The output rows stay in registers.
// It also defines what every version uses: the mask and bias rules (allowed, bias_at) and the last
// key tile a causal query tile can see (kv_end).
// algo="simt"; auto for float32 and for head widths over 128 (ops_cuda.h).
#pragma once
#include <cmath>
#include <cstdint>

#include "device_utils.cuh"
#include "ops_cuda.h"
#include "runtime.h"

namespace pyworkloads::cuda {

namespace {

constexpr float kNegInf = -INFINITY;

// Is key `col` allowed for query `row`, and the additive bias there (0 when none)?
template <class T>
__device__ __forceinline__ bool allowed(const AttnProblem& p, int64_t b, int64_t h, int64_t row, int64_t col) {
    if (row >= p.Tq || col >= p.Tk) return false;
    if (p.causal && col > row + (p.Tk - p.Tq)) return false;
    if (p.mask) {
        const int64_t* s = p.mask_stride;
        if (!p.mask[b * s[0] + h * s[1] + row * s[2] + col * s[3]]) return false;
    }
    return true;
}

template <class T>
__device__ __forceinline__ float bias_at(const AttnProblem& p, int64_t b, int64_t h, int64_t row, int64_t col) {
    const int64_t* s = p.bias_stride;
    return to_float(static_cast<const T*>(p.bias)[b * s[0] + h * s[1] + row * s[2] + col * s[3]]);
}

// out = o / l at the end of a row.  l == 0: no allowed key, every weight was 0, and o holds 0 -- or
// NaN, from a NaN or inf v row, which the reference multiplies by that 0 weight too.  A NaN l (a
// NaN or +inf score) gives NaN.  Rows that come out NaN or inf are recomputed afterwards
// (attention_exact_rows in attention.cu).
__device__ __forceinline__ float finish_row(float o, float l, float inv) { return l == 0.f ? o * 0.f : o * inv; }

// Key tiles [0, kv_end) can hold an allowed key for query rows [q0, q0 + rows).
__device__ __forceinline__ int64_t kv_end(const AttnProblem& p, int64_t q0, int rows) {
    if (!p.causal) return p.Tk;
    const int64_t last = q0 + rows - 1 + (p.Tk - p.Tq);   // the last row's last visible key
    return last + 1 < p.Tk ? last + 1 : p.Tk;
}

// A block of 4 warps owns 16 query rows, 4 per warp.  For the scores, lane j takes key j of the
// 32-key tile (a full dot product against the broadcast query row; K rows padded by one float so
// the 32 lanes read 32 banks); for the output, lane c takes columns c, c + 32, ... and the
// probabilities are passed along the warp with shuffles.
constexpr int kSimtWarps = 4, kSimtRowsPerWarp = 4, kSimtRows = kSimtWarps * kSimtRowsPerWarp, kSimtKeys = 32;

template <int kD>
constexpr size_t simt_smem_bytes() {
    return (size_t(kSimtRows) * kD + size_t(kSimtKeys) * (kD + 1) + size_t(kSimtKeys) * kD) * sizeof(float);
}

template <class T, int kD>
__global__ void __launch_bounds__(kSimtWarps * 32) attention_simt(AttnProblem p) {
    constexpr int kPer = kD / 32;                  // output columns per lane
    extern __shared__ float smem[];
    float* Qs = smem;                              // [kSimtRows][kD]
    float* Ks = Qs + kSimtRows * kD;               // [kSimtKeys][kD + 1]
    float* Vs = Ks + kSimtKeys * (kD + 1);         // [kSimtKeys][kD]
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int64_t q0 = int64_t(gridDim.x - 1 - blockIdx.x) * kSimtRows;   // heavy causal tiles first
    const int64_t h = blockIdx.y, b = blockIdx.z, hk = h / (p.Hq / p.Hkv);
    const T* Q = static_cast<const T*>(p.q.ptr) + b * p.q.sb + h * p.q.sh;
    const T* K = static_cast<const T*>(p.k.ptr) + b * p.k.sb + hk * p.k.sh;
    const T* V = static_cast<const T*>(p.v.ptr) + b * p.v.sb + hk * p.v.sh;

    for (int e = tid; e < kSimtRows * kD; e += kSimtWarps * 32) {
        const int r = e / kD, d = e % kD;
        const int64_t qi = q0 + r;
        Qs[e] = (qi < p.Tq && d < p.Dh) ? to_float(Q[qi * p.q.st + d]) : 0.f;
    }

    float o[kSimtRowsPerWarp][kPer];
    float m[kSimtRowsPerWarp], l[kSimtRowsPerWarp];   // l: this lane's share of the denominator
#pragma unroll
    for (int rr = 0; rr < kSimtRowsPerWarp; ++rr) {
        m[rr] = kNegInf;
        l[rr] = 0.f;
#pragma unroll
        for (int i = 0; i < kPer; ++i) o[rr][i] = 0.f;
    }
    const int64_t end = kv_end(p, q0, kSimtRows);

    for (int64_t k0 = 0; k0 < end; k0 += kSimtKeys) {
        __syncthreads();                           // the previous tile is consumed (and Qs written)
        for (int e = tid; e < kSimtKeys * kD; e += kSimtWarps * 32) {
            const int j = e / kD, d = e % kD;
            const int64_t kj = k0 + j;
            Ks[j * (kD + 1) + d] = (kj < p.Tk && d < p.Dh) ? to_float(K[kj * p.k.st + d]) : 0.f;
            Vs[e] = (kj < p.Tk && d < p.Dv) ? to_float(V[kj * p.v.st + d]) : 0.f;
        }
        __syncthreads();
        const int64_t col = k0 + lane;
        const float* krow = Ks + lane * (kD + 1);
#pragma unroll
        for (int rr = 0; rr < kSimtRowsPerWarp; ++rr) {
            const int r = warp * kSimtRowsPerWarp + rr;
            const int64_t row = q0 + r;
            if (row >= p.Tq) continue;             // warp-uniform
            const float* qrow = Qs + r * kD;
            float dot = 0.f;
#pragma unroll 8
            for (int d = 0; d < kD; ++d) dot = fmaf(qrow[d], krow[d], dot);
            float x = dot * p.scale;
            const bool ok = allowed<T>(p, b, h, row, col);
            if (ok && p.bias) x += bias_at<T>(p, b, h, row, col);
            x = ok ? x : kNegInf;
            const float m_new = max_nan(m[rr], warp_max(x));
            // Nothing allowed yet: subtract 0, so the weights are exp(-inf) = 0 and still meet the
            // tile's v rows (0 · NaN is NaN, as in the reference).
            const float base = m_new == kNegInf ? 0.f : m_new;
            const float corr = expf(m[rr] - base);
            const float pj = expf(x - base);
            l[rr] = l[rr] * corr + pj;
            m[rr] = m_new;
#pragma unroll
            for (int i = 0; i < kPer; ++i) o[rr][i] *= corr;
#pragma unroll 4
            for (int j = 0; j < kSimtKeys; ++j) {
                const float pk = __shfl_sync(0xffffffffu, pj, j);
                const float* vrow = Vs + j * kD + lane;
#pragma unroll
                for (int i = 0; i < kPer; ++i) o[rr][i] = fmaf(pk, vrow[32 * i], o[rr][i]);
            }
        }
    }

#pragma unroll
    for (int rr = 0; rr < kSimtRowsPerWarp; ++rr) {
        const int64_t row = q0 + warp * kSimtRowsPerWarp + rr;
        if (row >= p.Tq) continue;
        const float total = warp_sum(l[rr]), inv = 1.f / total;
        T* out = static_cast<T*>(p.out) + ((b * p.Hq + h) * p.Tq + row) * p.Dv;
#pragma unroll
        for (int i = 0; i < kPer; ++i) {
            const int d = lane + 32 * i;
            if (d < p.Dv) out[d] = from_float<T>(finish_row(o[rr][i], total, inv));
        }
    }
}

template <class T, int kD>
void launch_simt(const AttnProblem& p, cudaStream_t stream) {
    constexpr size_t bytes = simt_smem_bytes<kD>();
    auto kernel = attention_simt<T, kD>;
    if (bytes > 48 * 1024)
        check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
              "attention_simt shared memory opt-in");
    const dim3 grid(grid_dim((p.Tq + kSimtRows - 1) / kSimtRows, INT32_MAX, "attention Tq"),
                    grid_dim(p.Hq, 65535, "attention heads"), grid_dim(p.B, 65535, "attention batch"));
    kernel<<<grid, kSimtWarps * 32, bytes, stream>>>(p);
    check_launch("attention_simt");
}

}  // namespace

}  // namespace pyworkloads::cuda
