// Norm version 2, warp: vectorised accesses and warp-shuffle reductions.  Over version 1 it reads
// and writes 16-byte packs (float4, or 8 halves) when rows and pointers are 16-byte aligned, and
// reduces in two levels -- __shfl_xor_sync inside each warp, then one shared slot per warp -- so a
// statistic costs two barriers instead of eight.  The block is sized to the row (32..256 threads)
// so short rows do not leave most threads idle.  The statistics still re-read the row (LayerNorm:
// mean, then centred variance, then the output sweep); the re-reads hit L1/L2, so DRAM traffic stays
// one read of x and one write of y.
// algo="warp"; auto runs it where version 3 cannot (ops_cuda.h).
#pragma once
#include "norms_1_block.cuh"

namespace pyworkloads::cuda {

namespace {

// blockDim.x must be a multiple of 32 (launch() uses 32, 64, 128 or 256): warp_sum's full mask
// needs every lane of every warp, and every thread must reach both barriers.
__device__ float block_sum(float v, float* slots) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) slots[warp] = v;
    __syncthreads();
    float t = lane < warps ? slots[lane] : 0.f;
    t = warp_sum(t);                                  // every warp reduces the slots itself
    __syncthreads();                                  // slots are reused by the next reduction
    return t;
}

template <class T, int kVec>
struct Pack {                                          // kVec elements, one 16-byte access when kVec > 1
    float v[kVec];
    __device__ __forceinline__ void load(const T* src) {
        if constexpr (kVec == 1) {
            v[0] = to_float(src[0]);
        } else {
            const uint4 raw = *reinterpret_cast<const uint4*>(src);
            const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
            for (int i = 0; i < kVec; ++i) v[i] = to_float(e[i]);
        }
    }
    __device__ __forceinline__ void store(T* dst) const {
        if constexpr (kVec == 1) {
            dst[0] = from_float<T>(v[0]);
        } else {
            uint4 raw;
            T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
            for (int i = 0; i < kVec; ++i) e[i] = from_float<T>(v[i]);
            *reinterpret_cast<uint4*>(dst) = raw;
        }
    }
};

template <class T, int kVec>
__global__ void norm_warp(NormProblem p) {
    __shared__ float slots[32];
    const int64_t D = p.D, n = D / kVec;              // kVec divides D (host check)
    const T* x = static_cast<const T*>(p.x) + int64_t(blockIdx.x) * D;
    T* y = static_cast<T*>(p.y) + int64_t(blockIdx.x) * D;
    const T* w = static_cast<const T*>(p.w);
    const T* bb = static_cast<const T*>(p.b);
    float mu = 0.f, acc = 0.f;
    Pack<T, kVec> a;
    if (!p.rms) {
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
            a.load(x + i * kVec);
#pragma unroll
            for (int e = 0; e < kVec; ++e) acc += a.v[e];
        }
        mu = block_sum(acc, slots) / D;
        acc = 0.f;
    }
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        a.load(x + i * kVec);
#pragma unroll
        for (int e = 0; e < kVec; ++e) acc += (a.v[e] - mu) * (a.v[e] - mu);
    }
    const float inv = rsqrtf(block_sum(acc, slots) / D + p.eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        Pack<T, kVec> wv, bv;
        a.load(x + i * kVec);
        if (w) wv.load(w + i * kVec);
        if (bb) bv.load(bb + i * kVec);
#pragma unroll
        for (int e = 0; e < kVec; ++e) a.v[e] = (a.v[e] - mu) * inv * (w ? wv.v[e] : 1.f) + (bb ? bv.v[e] : 0.f);
        a.store(y + i * kVec);
    }
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

// per_row: the accesses a row takes (D / kVec packs when vec, else D elements).
template <class T, int kVec>
void launch_warp(const NormProblem& p, bool vec, int64_t per_row, cudaStream_t stream) {
    const unsigned grid = grid_dim(p.rows, INT32_MAX, "norm rows");
    int threads = 32;                                 // a power of two in 32..256 (block_sum needs whole warps)
    while (threads < 256 && threads < per_row) threads *= 2;
    if (vec) norm_warp<T, kVec><<<grid, threads, 0, stream>>>(p);
    else norm_warp<T, 1><<<grid, threads, 0, stream>>>(p);
    check_launch("norm_warp");
}

}  // namespace

}  // namespace pyworkloads::cuda
