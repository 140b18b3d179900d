// Norm version 3, rows: the row held in registers.  Over version 2 it reads x from DRAM once and
// never again from L2: each thread loads its share of the row once, as 16-byte packs in a fully
// unrolled compile-time array (kPacks <= 8 packs a thread, so they stay in registers), takes the
// statistics from those registers (LayerNorm: still the mean, then the variance of the centred
// values) and writes y from them.  Rows of at most 32*8 packs (bf16/fp16 D <= 2048, fp32 D <= 1024)
// get one warp each -- 8 rows per 256-thread block, shuffle reductions only, no __syncthreads at
// all; longer rows (up to 256*8 packs: bf16/fp16 D <= 16384, fp32 D <= 8192) get one block of 128
// threads with 4 packs each, or of 128..256 threads with 8, and version 2's block_sum.  The packs
// stay in registers as their stored 16 bytes (4 registers, converted to float at each use), so a
// bf16 pack costs what an fp32 one does.  Each thread issues all its 16-byte loads back to back, so
// many more bytes are in flight per thread than in version 2.  Weight and bias are read per pack
// in the final sweep (they are small and stay in L2).  It needs what version 2's vector path needs
// (kVec divides D, every pointer 16-byte aligned) and a row that fits the registers; otherwise
// algo="rows" runs version 2.  dev/cuda/emulate_norms_rows.py replays the pack ownership, the
// launch shapes and the reductions.  algo="rows"; auto wherever it applies (ops_cuda.h).
#pragma once
#include "norms_2_warp.cuh"

namespace pyworkloads::cuda {

namespace {

// A pack kept as its stored bits: one uint4 (4 registers) whatever T is, converted to float where
// it is used.  Version 3 holds a row's share in these: 8 bf16/fp16 packs as floats would take 64
// registers, as raw bits 32.
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
    auto row_sum = [&](float v) {
        if constexpr (kWarpRow) return warp_sum(v);
        else return block_sum(v, slots);
    };

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

// per_row: the row's 16-byte packs, at most kRowsThreads * kRowsMaxPacks.
template <class T, int kVec>
void launch_rows(const NormProblem& p, int64_t per_row, cudaStream_t stream) {
    if (per_row <= 32 * kRowsMaxPacks) return launch_warp_rows<T, kVec>(p, per_row, stream);
    // block per row: 128 threads with 4 packs each where that covers the row (per_row <= 512),
    // else 128 or 256 threads with 8 (benchmarks/README.md, "norms", compares the team shapes).
    const unsigned grid = grid_dim(p.rows, INT32_MAX, "norm rows");
    if (per_row <= 128 * 4) norm_rows<T, kVec, 4, false><<<grid, 128, 0, stream>>>(p);
    else norm_rows<T, kVec, kRowsMaxPacks, false><<<grid, per_row <= 128 * kRowsMaxPacks ? 128 : 256, 0, stream>>>(p);
    check_launch("norm_rows (block per row)");
}

}  // namespace

}  // namespace pyworkloads::cuda
