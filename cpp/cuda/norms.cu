// RMSNorm / LayerNorm on the GPU over the last axis of a contiguous [rows, D] array: one thread
// block per row, statistics accumulated in float32 whatever the storage dtype.
//
// v1 block  each thread strides over the row and accumulates its partial sum, then a
//           shared-memory tree reduction (log2(256) rounds, a __syncthreads each) gives the row
//           statistic; a final sweep writes y.  Scalar loads.  Kept as the reference (algo="block").
// v2 warp   the same sweeps with 16-byte loads and stores (float4, or 8 halves) when rows and
//           pointers are 16-byte aligned, and a two-level reduction: __shfl_xor_sync inside
//           each warp, then one shared slot per warp -- two barriers per statistic instead of
//           eight.  The block is sized to the row (32..256 threads) so short rows do not leave
//           most threads idle.  LayerNorm takes the mean first and then the variance of the
//           centred values (two passes, as the reference: no cancellation for large means); the
//           row's re-reads hit L1/L2, so DRAM traffic stays one read of x and one write of y.
#include "device_utils.cuh"
#include "ops_cuda.h"
#include "runtime.h"

namespace pyworkloads::cuda {

namespace {

// ---- v1 ---------------------------------------------------------------------------------------
constexpr int kBlockThreads = 256;

__device__ float tree_sum(float v, float* shared) {   // blockDim.x == kBlockThreads, a power of two
    const int t = threadIdx.x;
    shared[t] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) shared[t] += shared[t + s];
        __syncthreads();
    }
    const float total = shared[0];
    __syncthreads();
    return total;
}

template <class T>
__global__ void norm_block(NormProblem p) {
    __shared__ float shared[kBlockThreads];
    const int64_t D = p.D;
    const T* x = static_cast<const T*>(p.x) + int64_t(blockIdx.x) * D;
    T* y = static_cast<T*>(p.y) + int64_t(blockIdx.x) * D;
    const T* w = static_cast<const T*>(p.w);
    const T* bb = static_cast<const T*>(p.b);
    float mu = 0.f, acc = 0.f;
    if (!p.rms) {
        for (int64_t j = threadIdx.x; j < D; j += blockDim.x) acc += to_float(x[j]);
        mu = tree_sum(acc, shared) / D;
        acc = 0.f;
    }
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
        const float c = to_float(x[j]) - mu;
        acc += c * c;
    }
    const float inv = rsqrtf(tree_sum(acc, shared) / D + p.eps);
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
        y[j] = from_float<T>((to_float(x[j]) - mu) * inv * (w ? to_float(w[j]) : 1.f) + (bb ? to_float(bb[j]) : 0.f));
}

// ---- v2 ---------------------------------------------------------------------------------------
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

template <class T>
void launch(const NormProblem& p, NormAlgo algo, cudaStream_t stream) {
    const unsigned grid = grid_dim(p.rows, INT32_MAX, "norm rows");
    if (algo == NormAlgo::Block) {
        norm_block<T><<<grid, kBlockThreads, 0, stream>>>(p);
        check_launch("norm_block");
        return;
    }
    constexpr int kVec = 16 / sizeof(T);
    const bool vec = p.D % kVec == 0 && aligned16(p.x) && aligned16(p.y) && (!p.w || aligned16(p.w)) &&
                     (!p.b || aligned16(p.b));
    const int64_t per_row = vec ? p.D / kVec : p.D;   // accesses per row
    int threads = 32;                                 // a power of two in 32..256 (block_sum needs whole warps)
    while (threads < 256 && threads < per_row) threads *= 2;
    if (vec) norm_warp<T, kVec><<<grid, threads, 0, stream>>>(p);
    else norm_warp<T, 1><<<grid, threads, 0, stream>>>(p);
    check_launch("norm_warp");
}

}  // namespace

void norm_device(const NormProblem& p, NormAlgo algo, cudaStream_t stream) {
    if (p.rows == 0 || p.D == 0) return;
    switch (p.dtype) {
        case DType::F32: return launch<float>(p, algo, stream);
        case DType::F16: return launch<__half>(p, algo, stream);
        case DType::BF16: return launch<__nv_bfloat16>(p, algo, stream);
        default: throw std::invalid_argument(std::string("norm: unsupported dtype ") + dtype_name(p.dtype));
    }
}

}  // namespace pyworkloads::cuda
