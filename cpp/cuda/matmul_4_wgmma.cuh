// Matmul version 4, wgmma: Hopper's warpgroup MMA (float16 / bfloat16, sm_90a builds on a compute
// capability 9.0 device).  Over version 3 it replaces mma.sync by wgmma.m64n256k16: a 128-thread
// warpgroup issues one asynchronous instruction that reads both operands straight from shared
// memory through descriptors (no ldmatrix, no operand registers) at about twice mma.sync's rate.  A
// 256-thread block (2 warpgroups) owns version 3's 128x256 tile of C, each warpgroup 64x256 in 128
// float32 accumulators a thread.  K steps of 64 (one 128-byte row per operand row) stream through a
// 4-slot cp.async ring laid out in the 128-byte swizzle the descriptors describe (chunk c of row r
// at c ^ (r % 8): conflict-free without padding).  Each step's wgmma batch stays in flight while the
// next step is waited for and issued, so the tensor cores are not idle across the barrier; loads
// therefore run two steps ahead, not three, since the slot before may still be read.  B comes in
// one of two layouts:
//   * algo="wgmma": B [K, N] is first transposed into a K-major [N, K] scratch copy
//     (matmul_transpose_b, K padded to 8: whole 16-byte rows, whatever B's row alignment) -- the
//     layout wgmma reads most simply, for 2 K N elements of extra traffic;
//   * algo="wgmma_direct": B's row-major tile goes to shared memory as it lies, as 4 n-atoms of
//     [64 k][64 n] in the MN-major swizzled layout, read with imm-trans-b = 1 (wgmma.cuh); no
//     scratch, but B's rows must be 16-byte aligned.
// dev/cuda/emulate_matmul_wgmma.py replays the swizzled stores against the descriptors' addressing
// and the accumulator layout.  Auto runs these where version 5 cannot take the problem (matmul.cu).
#pragma once
#include "matmul_3_mma.cuh"
#include "wgmma.cuh"

namespace pyworkloads::cuda {

namespace {

// wgmma.m64n256k16 from 128-byte-swizzled shared memory (wgmma.cuh).
constexpr int kWgBM = 128, kWgBN = 256, kWgBK = 64, kWgThreads = 256, kWgStages = 4;
constexpr int kWgStageA = kWgBM * kWgBK * 2, kWgStageB = kWgBN * kWgBK * 2;   // bytes per ring slot
constexpr size_t kWgSmemBytes = size_t(kWgStages) * (kWgStageA + kWgStageB) + 1024;   // + alignment slack
static_assert(kWgBM == kMmaBM && kWgBN == kMmaBN, "version 4 reuses version 3's block rasterisation");

// Whether this module's code for the running device has the wgmma kernel (an sm_90a cubin): read
// once per device with cudaMemcpyFromSymbol, which reads the copy the driver loaded.
#if defined(PYW_HAS_WGMMA)
__device__ int g_wgmma_compiled = 1;
#else
__device__ int g_wgmma_compiled = 0;
#endif

constexpr int kWgInFlight = 1;  // wgmma batches still running when the next step's barrier is reached

#if defined(PYW_HAS_WGMMA)
constexpr uint32_t kWgAtomN = kWgBK * 128;   // MN-major B tile: bytes from one 64-wide n-atom to the next

// A warpgroup's 64x256 accumulator tile to C [M, N] (row-major, dtype T): d[4 j + e] is row
// r0 + 8 (e / 2), column c0 + 8 j + e % 2, with r0 = its first row + 16 warp + lane / 4 and
// c0 = its first column + 2 (lane % 4); each column pair leaves as one 4-byte store when C's rows
// allow (c_pairs), element by element at the right edge.
template <class T>
__device__ __forceinline__ void store_wgmma_tile(T* C, const float (&d)[128], int64_t M, int64_t N, int64_t r0,
                                                 int64_t c0, bool c_pairs) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int64_t r = r0 + half * 8;
        if (r >= M) continue;
#pragma unroll
        for (int j = 0; j < 32; ++j) {
            const int64_t c = c0 + j * 8;
            const float lo = d[4 * j + 2 * half], hi = d[4 * j + 2 * half + 1];
            if (c_pairs && c + 1 < N) {
                *reinterpret_cast<uint32_t*>(C + r * N + c) = pack2<T>(lo, hi);
            } else {
                if (c < N) C[r * N + c] = from_float<T>(lo);
                if (c + 1 < N) C[r * N + c + 1] = from_float<T>(hi);
            }
        }
    }
}

// The byte offset of 16-byte chunk `chunk` (0..7) of row `row` in a 128-byte-swizzled tile.
__device__ __forceinline__ uint32_t swizzle128(int row, int chunk) {
    return uint32_t(row) * 128u + (uint32_t(chunk ^ (row & 7)) << 4);
}
#endif

// bt[z][n][k] = B[z][k][n] for k < K, zero for K <= k < kp (kp = K rounded up to 8, so every row
// of bt is whole 16-byte chunks); z runs over the distinct B matrices (1 when B is broadcast).
template <class T>
__global__ void matmul_transpose_b(MatmulProblem p, T* bt, int64_t kp, int64_t nbt) {
    __shared__ T tile[32][34];
    const int tx = threadIdx.x, ty = threadIdx.y;                 // 32 x 8 threads
    const int64_t k0 = int64_t(blockIdx.x) * 32, n0 = int64_t(blockIdx.y) * 32;
    for (int64_t z = blockIdx.z; z < nbt; z += gridDim.z) {
        int64_t oa, ob;
        batch_offsets(p, z, oa, ob);
        const T* B = static_cast<const T*>(p.b) + ob;
#pragma unroll
        for (int i = 0; i < 4; ++i) {                              // coalesced along n
            const int64_t k = k0 + ty + 8 * i, n = n0 + tx;
            tile[ty + 8 * i][tx] = k < p.K && n < p.N ? B[k * p.ldb + n] : from_float<T>(0.f);
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < 4; ++i) {                              // coalesced along k
            const int64_t n = n0 + ty + 8 * i, k = k0 + tx;
            if (n < p.N && k < kp) bt[z * p.N * kp + n * kp + k] = tile[tx][ty + 8 * i];
        }
        __syncthreads();
    }
}

// kDirectB false (algo="wgmma"): B's tiles come K-major from bt, z's copy bt_stride elements from
// the first (0 when B is broadcast).  kDirectB true (algo="wgmma_direct"): from B itself, MN-major.
template <class T, bool kDirectB>
__global__ void __launch_bounds__(kWgThreads, 1)
    matmul_wgmma(MatmulProblem p, const T* bt, int64_t kp, int64_t bt_stride, bool c_pairs) {
#if defined(PYW_HAS_WGMMA)
    constexpr int kAhead = kWgStages - 1 - kWgInFlight;   // steps loaded ahead of the one being multiplied
    extern __shared__ unsigned char wg_smem[];
    const uint32_t base = (smem_addr(wg_smem) + 1023u) & ~1023u;   // swizzle atoms are 1024-byte aligned
    const uint32_t a_smem = base, b_smem = base + kWgStages * kWgStageA;
    const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;
    int64_t m0, n0;
    block_origin(p, m0, n0);
    const int64_t ktiles = (p.K + kWgBK - 1) / kWgBK;

    for (int64_t z = blockIdx.z; z < p.batch; z += gridDim.z) {
        int64_t oa, ob;
        batch_offsets(p, z, oa, ob);
        const T* A = static_cast<const T*>(p.a) + oa;
        const T* Bt = bt + (bt_stride ? z * bt_stride : 0);          // K-major B^T (unused when kDirectB)
        const T* B = static_cast<const T*>(p.b) + ob;                 // row-major B (kDirectB)
        // Chunk c = tid + 256 i of a slot: row c / 8, 16-byte chunk c % 8 of that row's 64 k values
        // (A: 4 chunks per thread, 128 rows; Bt: 8 per thread, 256 rows).  8 consecutive threads
        // fill one 128-byte row, i.e. 8 distinct bank groups after the swizzle.
        auto load_tile = [&](int64_t t) {
            const int s = int(t % kWgStages);
            const int64_t k0 = t * kWgBK;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int c = tid + kWgThreads * i, r = c >> 3, ch = c & 7;
                const int64_t row = m0 + r, col = k0 + ch * 8;
                cp_async_chunk(a_smem + s * kWgStageA + swizzle128(r, ch), A + row * p.lda + col, A,
                               row < p.M ? p.K - col : 0);
            }
            if constexpr (kDirectB) {
                // chunk c = tid + 256 i: k-row c / 32 of the step, 8 n-values 8 (c % 32) -> n-atom
                // (c % 32) / 8, chunk (c % 8) ^ (k % 8) of that atom's 128-byte k-row.
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    const int c = tid + kWgThreads * i, r = c >> 5, c8 = c & 31;
                    const int64_t k = k0 + r, col = n0 + c8 * 8;
                    cp_async_chunk(b_smem + s * kWgStageB + (c8 >> 3) * kWgAtomN + swizzle128(r, c8 & 7),
                                   B + k * p.ldb + col, B, k < p.K ? p.N - col : 0);
                }
            } else {
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    const int c = tid + kWgThreads * i, r = c >> 3, ch = c & 7;
                    const int64_t n = n0 + r, col = k0 + ch * 8;
                    const bool inside = n < p.N && col < kp;          // kp % 8 == 0: whole chunks
                    cp_async16(b_smem + s * kWgStageB + swizzle128(r, ch), inside ? Bt + n * kp + col : Bt,
                               inside ? 16 : 0);
                }
            }
        };

        float d[128];
#pragma unroll
        for (int i = 0; i < 128; ++i) d[i] = 0.f;

#pragma unroll
        for (int t = 0; t < kAhead; ++t) {            // one commit group per step, possibly empty
            if (t < ktiles) load_tile(t);
            cp_async_commit();
        }
        for (int64_t t = 0; t < ktiles; ++t) {
            cp_async_wait<kAhead - 1>();               // step t has landed for this thread ...
            fence_proxy_async_shared();                // ... is visible to wgmma's (async-proxy) reads ...
            __syncthreads();                           // ... for every thread; batch t-1-kWgInFlight is done
            if (t + kAhead < ktiles) load_tile(t + kAhead);   // into the slot batch t-1-kWgInFlight read
            cp_async_commit();
            const int s = int(t % kWgStages);
            const uint32_t sa = a_smem + s * kWgStageA + wg * 64 * 128;   // this warpgroup's 64 rows
            const uint32_t sb = b_smem + s * kWgStageB;
            wgmma_fence_operands(d);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < kWgBK / 16; ++kk) {  // 16 k: 32 bytes along a K-major row, 2 k-groups MN-major
                if constexpr (kDirectB)
                    wgmma_m64n256k16<T, 1>(d, wgmma_desc_sw128(sa + kk * 32),
                                           wgmma_desc_sw128(sb + kk * 2048, kWgAtomN, 1024));
                else wgmma_m64n256k16<T, 0>(d, wgmma_desc_sw128(sa + kk * 32), wgmma_desc_sw128(sb + kk * 32));
            }
            wgmma_commit();
            wgmma_wait<kWgInFlight>();
            wgmma_fence_operands(d);
        }
        wgmma_wait<0>();                               // the accumulators are final
        wgmma_fence_operands(d);
        cp_async_wait<0>();
        __syncthreads();                               // the next z reuses the ring

        store_wgmma_tile(static_cast<T*>(p.c) + z * p.M * p.N, d, p.M, p.N, m0 + wg * 64 + warp * 16 + (lane >> 2),
                         n0 + (lane & 3) * 2, c_pairs);
    }
#else
    __trap();                                          // never launched: wgmma_available() is false
#endif
}

template <class T, bool kDirectB>
void launch_wgmma(const MatmulProblem& p, cudaStream_t stream) {
    check(
        cudaFuncSetAttribute(matmul_wgmma<T, kDirectB>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kWgSmemBytes)),
        "matmul_wgmma shared memory opt-in");
    const int64_t tiles = ((p.M + kWgBM - 1) / kWgBM) * ((p.N + kWgBN - 1) / kWgBN);
    const dim3 grid(grid_dim(tiles, INT32_MAX, "matmul M x N"), 1,
                    static_cast<unsigned>(std::min<int64_t>(p.batch, 65535)));
    const bool c_pairs = p.N % 2 == 0 && reinterpret_cast<uintptr_t>(p.c) % 4 == 0;
    if constexpr (kDirectB) {                          // B as it lies: no scratch, no transpose
        matmul_wgmma<T, true><<<grid, kWgThreads, kWgSmemBytes, stream>>>(p, nullptr, 0, 0, c_pairs);
        check_launch("matmul_wgmma");
        note_kernel("wgmma_direct");
        return;
    }
    const int64_t kp = (p.K + 7) / 8 * 8;
    bool broadcast_b = true;
    for (int d = 0; d < p.batch_ndim; ++d) broadcast_b = broadcast_b && p.batch_stride_b[d] == 0;
    const int64_t nbt = broadcast_b ? 1 : p.batch;
    void* bt = nullptr;
    const size_t bt_bytes = size_t(nbt) * size_t(p.N) * size_t(kp) * sizeof(T);   // 0 when K == 0: no scratch
    if (bt_bytes) check(cudaMallocAsync(&bt, bt_bytes, stream), "matmul: B^T scratch");
    try {
        const dim3 tgrid(grid_dim((kp + 31) / 32, INT32_MAX, "matmul K"), grid_dim((p.N + 31) / 32, 65535, "matmul N"),
                         static_cast<unsigned>(std::min<int64_t>(nbt, 65535)));
        matmul_transpose_b<T><<<tgrid, dim3(32, 8), 0, stream>>>(p, static_cast<T*>(bt), kp, nbt);
        check_launch("matmul_transpose_b");
        matmul_wgmma<T, false><<<grid, kWgThreads, kWgSmemBytes, stream>>>(p, static_cast<const T*>(bt), kp,
                                                                           broadcast_b ? 0 : p.N * kp, c_pairs);
        check_launch("matmul_wgmma");
        note_kernel("wgmma");
    } catch (...) {
        if (bt) cudaFreeAsync(bt, stream);
        throw;
    }
    if (bt) check(cudaFreeAsync(bt, stream), "matmul: freeing the B^T scratch");  // after the kernel, in stream order
}

}  // namespace

}  // namespace pyworkloads::cuda
