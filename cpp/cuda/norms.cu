// RMSNorm / LayerNorm on the GPU over the last axis of a contiguous [rows, D] array: one thread
// block per row (v3: one warp per short row), statistics accumulated in float32 whatever the
// storage dtype.
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
// v3 rows   register-resident: each thread loads its share of the row ONCE, as 16-byte packs held
//           in a fully unrolled compile-time array (kPacks <= 8 packs a thread, so they stay in
//           registers), takes the statistics from those registers (LayerNorm: still the mean,
//           then the variance of the centred values) and writes y from them.  Rows of at most
//           32*8 packs (bf16/fp16 D <= 2048, fp32 D <= 1024) get one warp each -- 8 rows per
//           256-thread block, shuffle reductions only, no __syncthreads at all; longer rows (up to
//           256*8 packs: bf16/fp16 D <= 16384, fp32 D <= 8192) get one block of 128 threads with 4
//           packs each, or of 128..256 threads with 8, and v2's block_sum.  The packs stay in
//           registers as their stored 16 bytes (4 registers, converted to float at each use), so
//           a bf16 pack costs what an fp32 one does: as floats, 8 bf16 packs took 118 registers a
//           thread and bf16 [16384, 4096] ran at 59-63 % of HBM on the H200 instead of 84 % for
//           fp32.  Why it beats v2: x is read from DRAM once
//           and never again from L2 (v2's LayerNorm reads it three times), the warp rows run
//           without barriers, and each thread issues all its 16-byte loads back to back, so many
//           more bytes are in flight per thread.  Weight and bias are read per pack in the final
//           sweep (they are small and stay in L2).  It needs what v2's vector path needs (kVec
//           divides D, every pointer 16-byte aligned); when that fails, or a row is too long for
//           the registers, algo="rows" runs v2 instead.  algo="auto" is v3 whenever it applies,
//           else v2; "warp" is always v2 and "block" always v1.
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

// A pack kept as its stored bits: one uint4 (4 registers) whatever T is, converted to float where
// it is used.  v3 holds a row's share in these: 8 bf16/fp16 packs as floats would take 64
// registers (118 a thread in all, 8 blocks of 64 threads an SM at most), as raw bits 32.
template <class T, int kVec>
struct RawPack {
    static_assert(kVec * sizeof(T) == 16, "a raw pack is one 16-byte access");
    uint4 raw;
    __device__ __forceinline__ void load(const T* src) { raw = *reinterpret_cast<const uint4*>(src); }
    // Converted afresh at every use: volatile asm is never merged with an earlier conversion, so
    // the compiler cannot keep all kVec floats of every pack live between LayerNorm's sweeps.
    __device__ __forceinline__ float at(int e) const {
        const uint32_t word = (&raw.x)[e * sizeof(T) / 4];
        float f;
        if constexpr (std::is_same_v<T, float>) {
            f = __uint_as_float(word);
        } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {   // bf16 is the top half of a float
            if (e % 2 == 0) asm volatile("shl.b32 %0, %1, 16;" : "=f"(f) : "r"(word));
            else asm volatile("and.b32 %0, %1, 0xffff0000;" : "=f"(f) : "r"(word));
        } else {
            const uint16_t h = e % 2 == 0 ? uint16_t(word) : uint16_t(word >> 16);
            asm volatile("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
        }
        return f;
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

// ---- v3 ---------------------------------------------------------------------------------------
// Packs of a row, n = D / kVec of them, are dealt out round-robin: thread t of the row's team
// (a warp, or the whole block) holds packs t, t + team, t + 2*team, ... in a[0..kPacks).  The
// launcher guarantees team * kPacks >= n, so every pack has exactly one owner; slots past n are
// never loaded, never counted and never stored.
constexpr int kRowsThreads = 256;       // warp rows: 8 warps, 8 rows per block
constexpr int kRowsMaxPacks = 8;        // packs a thread holds (registers: 8 * kVec floats)

template <class T, int kVec, int kPacks, bool kWarpRow>
__global__ void __launch_bounds__(kRowsThreads) norm_rows(NormProblem p) {
    __shared__ float slots[32];                       // block rows only (block_sum)
    const int n = int(p.D / kVec);                    // <= 256 * kRowsMaxPacks (host check)
    int64_t row;
    int t, team;
    if constexpr (kWarpRow) {
        row = int64_t(blockIdx.x) * (kRowsThreads / 32) + (threadIdx.x >> 5);
        t = threadIdx.x & 31;
        team = 32;
        if (row >= p.rows) return;                    // whole warps leave; no barrier follows
    } else {
        row = blockIdx.x;
        t = threadIdx.x;
        team = blockDim.x;
    }
    const T* x = static_cast<const T*>(p.x) + row * p.D;
    T* y = static_cast<T*>(p.y) + row * p.D;
    const T* w = static_cast<const T*>(p.w);
    const T* bb = static_cast<const T*>(p.b);
    auto row_sum = [&](float v) { if constexpr (kWarpRow) return warp_sum(v); else return block_sum(v, slots); };

    RawPack<T, kVec> a[kPacks];                      // the stored bits: 4 registers a pack
#pragma unroll
    for (int k = 0; k < kPacks; ++k) {               // all loads first: kPacks 16-byte loads in flight
        const int i = t + k * team;
        if (i < n) a[k].load(x + int64_t(i) * kVec);
    }
    float mu = 0.f, acc = 0.f;
    if (!p.rms) {
#pragma unroll
        for (int k = 0; k < kPacks; ++k)
            if (t + k * team < n) {
#pragma unroll
                for (int e = 0; e < kVec; ++e) acc += a[k].at(e);
            }
        mu = row_sum(acc) / p.D;
        acc = 0.f;
    }
#pragma unroll
    for (int k = 0; k < kPacks; ++k)
        if (t + k * team < n) {                       // empty slots would add mu^2 each
#pragma unroll
            for (int e = 0; e < kVec; ++e) acc += (a[k].at(e) - mu) * (a[k].at(e) - mu);
        }
    const float inv = rsqrtf(row_sum(acc) / p.D + p.eps);
#pragma unroll
    for (int k = 0; k < kPacks; ++k) {
        const int i = t + k * team;
        if (i < n) {
            Pack<T, kVec> wv, bv, out;
            if (w) wv.load(w + int64_t(i) * kVec);
            if (bb) bv.load(bb + int64_t(i) * kVec);
#pragma unroll
            for (int e = 0; e < kVec; ++e)
                out.v[e] = (a[k].at(e) - mu) * inv * (w ? wv.v[e] : 1.f) + (bb ? bv.v[e] : 0.f);
            out.store(y + int64_t(i) * kVec);
        }
    }
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

// The smallest kPacks in {1, 2, 4, 8} with 32 * kPacks >= n (warp rows).
template <class T, int kVec>
void launch_warp_rows(const NormProblem& p, int64_t n, cudaStream_t stream) {
    const unsigned grid = grid_dim((p.rows + kRowsThreads / 32 - 1) / (kRowsThreads / 32), INT32_MAX, "norm rows");
    if (n <= 32) norm_rows<T, kVec, 1, true><<<grid, kRowsThreads, 0, stream>>>(p);
    else if (n <= 64) norm_rows<T, kVec, 2, true><<<grid, kRowsThreads, 0, stream>>>(p);
    else if (n <= 128) norm_rows<T, kVec, 4, true><<<grid, kRowsThreads, 0, stream>>>(p);
    else norm_rows<T, kVec, 8, true><<<grid, kRowsThreads, 0, stream>>>(p);
    check_launch("norm_rows (warp per row)");
}

template <class T>
void launch(const NormProblem& p, NormAlgo algo, cudaStream_t stream) {
    if (algo == NormAlgo::Block) {
        norm_block<T><<<grid_dim(p.rows, INT32_MAX, "norm rows"), kBlockThreads, 0, stream>>>(p);
        check_launch("norm_block");
        return;
    }
    constexpr int kVec = 16 / sizeof(T);
    const bool vec = p.D % kVec == 0 && aligned16(p.x) && aligned16(p.y) && (!p.w || aligned16(p.w)) &&
                     (!p.b || aligned16(p.b));
    const int64_t per_row = vec ? p.D / kVec : p.D;   // accesses per row
    const bool rows_fit = vec && per_row <= int64_t(kRowsThreads) * kRowsMaxPacks;
    if ((algo == NormAlgo::Auto || algo == NormAlgo::Rows) && rows_fit) {     // v3; else v2 below
        if (per_row <= 32 * kRowsMaxPacks) return launch_warp_rows<T, kVec>(p, per_row, stream);
        // block per row: 128 threads with 4 packs each where that covers the row (per_row <= 512),
        // else 128 or 256 threads with 8.  Measured on the H200 for bf16 [16384, 4096] (per_row 512,
        // kernel time): 128x4 0.0735 ms, 64x8 0.0751, 256x2 0.0773 (rms_norm); 128x4 builds to 48
        // registers a thread (sm_90a), no spills.
        const unsigned grid = grid_dim(p.rows, INT32_MAX, "norm rows");
        if (per_row <= 128 * 4) norm_rows<T, kVec, 4, false><<<grid, 128, 0, stream>>>(p);
        else norm_rows<T, kVec, kRowsMaxPacks, false><<<grid, per_row <= 128 * kRowsMaxPacks ? 128 : 256, 0, stream>>>(p);
        check_launch("norm_rows (block per row)");
        return;
    }
    const unsigned grid = grid_dim(p.rows, INT32_MAX, "norm rows");
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
