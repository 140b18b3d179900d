// Matmul version 5, wgmma fed by the Tensor Memory Accelerator (float16 / bfloat16, Hopper).  The
// tiles, shared-memory layouts and wgmmas of version 4's wgmma_direct, with the data movement taken
// off the threads: thread 0 alone issues one bulk tensor copy for A's 128x64 tile and four for B's
// four 64x64 n-atoms (the TMA writes the 128-byte swizzle itself and zero-fills past the matrix
// edges), and mbarriers replace __syncthreads -- full[s] completes when slot s's bytes have landed,
// empty[s] when both warpgroups' wgmmas have finished reading it.  No thread spends issue slots on
// address arithmetic or cp.async, and a warpgroup waits only for its own data.  The TMA addresses
// one matrix: a batch runs here only when it folds into one (fold_batch: B shared, A's batches back
// to back), and rows must be 16-byte aligned (the TMA's stride rule).  The tensor maps are encoded
// on the host with the driver's cuTensorMapEncodeTiled, fetched at run time (no libcuda link).
// dev/cuda/emulate_matmul_wgmma.py checks the mbarrier protocol under random interleavings.
// algo="wgmma_tma"; auto for float16/bfloat16 on Hopper (matmul.cu).
#pragma once
#include <cuda.h>  // CUtensorMap and its enums (the encoder is fetched at run time: no libcuda link)

#include <string>

#include "matmul_4_wgmma.cuh"

namespace pyworkloads::cuda {

namespace {

#if defined(PYW_HAS_WGMMA)
// The shared-memory ring of the TMA kernels: kWgStages A slots then kWgStages B slots from the
// first 1024-byte boundary of the dynamic shared memory (TMA's 128-byte swizzle works in 1024-byte
// atoms), and the barriers full[0..S) then empty[0..S) in `bars` (2 S words).  Thread 0 initialises
// full[s] for 1 arrival (the producer's arrive.expect_tx, plus the bytes) and empty[s] for 2 (one
// per warpgroup that reads slot s's data); every thread of the block must call it (it ends in a
// barrier).
struct TmaRing {
    uint32_t a_smem, b_smem, full0, empty0;
};
__device__ __forceinline__ TmaRing tma_ring(unsigned char* dynamic_smem, uint64_t* bars) {
    const uint32_t base = (smem_addr(dynamic_smem) + 1023u) & ~1023u;
    const TmaRing r{base, base + kWgStages * kWgStageA, smem_addr(bars), smem_addr(bars) + 8 * kWgStages};
    if (threadIdx.x == 0) {
#pragma unroll
        for (int s = 0; s < kWgStages; ++s) {
            mbar_init(r.full0 + 8 * s, 1);
            mbar_init(r.empty0 + 8 * s, 2);
        }
        fence_mbarrier_init();
    }
    __syncthreads();
    return r;
}
#endif

template <class T>
__global__ void __launch_bounds__(kWgThreads, 1)
    matmul_wgmma_tma(const __grid_constant__ CUtensorMap tma_a, const __grid_constant__ CUtensorMap tma_b,
                     MatmulProblem p, bool c_pairs) {
#if defined(PYW_HAS_WGMMA)
    extern __shared__ unsigned char wg_smem[];
    __shared__ __align__(8) uint64_t bars[2 * kWgStages];
    const TmaRing ring = tma_ring(wg_smem, bars);
    const uint32_t a_smem = ring.a_smem, b_smem = ring.b_smem, full0 = ring.full0, empty0 = ring.empty0;
    const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;
    int64_t m0, n0;
    block_origin(p, m0, n0);
    const int64_t ktiles = (p.K + kWgBK - 1) / kWgBK;
    auto issue = [&](int64_t t) {                      // thread 0: step t into slot t % S
        const int s = int(t % kWgStages);
        const uint32_t full = full0 + 8 * s;
        mbar_arrive_expect_tx(full, kWgStageA + kWgStageB);
        tma_load_2d(a_smem + s * kWgStageA, &tma_a, int32_t(t * kWgBK), int32_t(m0), full);
#pragma unroll
        for (int j = 0; j < 4; ++j)
            tma_load_2d(b_smem + s * kWgStageB + j * kWgAtomN, &tma_b, int32_t(n0 + 64 * j), int32_t(t * kWgBK), full);
    };
    if (tid == 0)
        for (int64_t t = 0; t < kWgStages && t < ktiles; ++t) issue(t);   // every slot starts free

    float d[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) d[i] = 0.f;
    for (int64_t t = 0; t < ktiles; ++t) {
        const int s = int(t % kWgStages);
        mbar_wait(full0 + 8 * s, uint32_t((t / kWgStages) & 1));   // the (t / S)-th fill of slot s
        const uint32_t sa = a_smem + s * kWgStageA + wg * 64 * 128, sb = b_smem + s * kWgStageB;
        wgmma_fence_operands(d);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kWgBK / 16; ++kk)
            wgmma_m64n256k16<T, 1>(d, wgmma_desc_sw128(sa + kk * 32), wgmma_desc_sw128(sb + kk * 2048, kWgAtomN, 1024));
        wgmma_commit();
        wgmma_wait<1>();                               // step t-1's batch is done (step t's in flight)
        wgmma_fence_operands(d);
        if (t >= 1) {
            const int sp = int((t - 1) % kWgStages);
            if ((tid & 127) == 0) mbar_arrive(empty0 + 8 * sp);   // this warpgroup no longer reads slot sp
            if (tid == 0 && t - 1 + kWgStages < ktiles) {
                mbar_wait(empty0 + 8 * sp, uint32_t(((t - 1) / kWgStages) & 1));   // nor does the other one
                issue(t - 1 + kWgStages);
            }
            __syncwarp();                              // warp 0 reconverges before the next (aligned) wgmma
        }
    }
    wgmma_wait<0>();
    wgmma_fence_operands(d);

    store_wgmma_tile(static_cast<T*>(p.c), d, p.M, p.N, m0 + wg * 64 + warp * 16 + (lane >> 2), n0 + (lane & 3) * 2,
                     c_pairs);                         // batch 1 only (the launcher checks)
#else
    __trap();                                          // never launched: wgmma_available() is false
#endif
}

// cuTensorMapEncodeTiled from the driver (null when the driver has none).
using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                   const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                   CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
EncodeTiledFn encode_tiled() {
    static const EncodeTiledFn fn = [] {
        void* f = nullptr;
        cudaDriverEntryPointQueryResult found{};
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &found) !=
                cudaSuccess ||
            found != cudaDriverEntryPointSuccess) {
            cudaGetLastError();
            f = nullptr;
        }
        return reinterpret_cast<EncodeTiledFn>(f);
    }();
    return fn;
}

// A row-major [outer, inner] matrix (row stride row_bytes) read in boxes of box_outer x box_inner
// elements with the 128-byte swizzle; past the edges the TMA fills zeros.
template <class T>
CUtensorMap tensor_map_2d(const void* ptr, int64_t inner, int64_t outer, int64_t row_bytes, uint32_t box_inner,
                          uint32_t box_outer) {
    CUtensorMap map;
    const cuuint64_t dims[2] = {cuuint64_t(inner), cuuint64_t(outer)};
    const cuuint64_t strides[1] = {cuuint64_t(row_bytes)};
    const cuuint32_t box[2] = {box_inner, box_outer}, elem_strides[2] = {1, 1};
    const CUresult r = encode_tiled()(
        &map, std::is_same_v<T, __half> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2,
        const_cast<void*>(ptr), dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
        CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS)
        throw std::runtime_error("matmul: cuTensorMapEncodeTiled failed with CUresult " + std::to_string(int(r)));
    return map;
}

// Whether version 5 takes this problem: one matrix (no batch), aligned rows, sizes the 32-bit TMA
// coordinates can address, and a driver with the encoder.
bool tma_fits(const MatmulProblem& p) {
    constexpr int64_t kLimit = (int64_t(1) << 31) - 512;  // every tile origin fits an int32 coordinate
    return p.batch == 1 && p.a_vec && p.b_vec && p.K > 0 && p.M < kLimit && p.N < kLimit && p.K < kLimit &&
           encode_tiled() != nullptr;
}

template <class T>
void launch_wgmma_tma(const MatmulProblem& p, cudaStream_t stream) {
    const int64_t es = sizeof(T);
    const CUtensorMap ta = tensor_map_2d<T>(p.a, p.K, p.M, p.lda * es, kWgBK, kWgBM);  // A [M, K]: 64 k x 128 rows
    const CUtensorMap tb =
        tensor_map_2d<T>(p.b, p.N, p.K, p.ldb * es, 64, kWgBK);  // B [K, N]: 64 n x 64 k (one n-atom)
    check(cudaFuncSetAttribute(matmul_wgmma_tma<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kWgSmemBytes)),
          "matmul_wgmma_tma shared memory opt-in");
    const int64_t tiles = ((p.M + kWgBM - 1) / kWgBM) * ((p.N + kWgBN - 1) / kWgBN);
    const bool c_pairs = p.N % 2 == 0 && reinterpret_cast<uintptr_t>(p.c) % 4 == 0;
    matmul_wgmma_tma<T>
        <<<grid_dim(tiles, INT32_MAX, "matmul M x N"), kWgThreads, kWgSmemBytes, stream>>>(ta, tb, p, c_pairs);
    check_launch("matmul_wgmma_tma");
    note_kernel("wgmma_tma");
}

// A batched problem as one matrix where that is the same computation: B shared by every batch
// (all its batch strides 0) and A's batches lying one after another at M rows of lda (z's offset
// z M lda), so the rows of all batches form one [batch M, K] matrix -- and C, [batch, M, N]
// contiguous, is [batch M, N].  The models' x @ W.T with x [B, T, D] is such a problem.  Returns
// false (p unchanged) otherwise.
bool fold_batch(MatmulProblem& p) {
    if (p.batch <= 1) return p.batch == 1;
    int64_t want = p.M * p.lda;  // stride of the innermost batch dimension
    for (int d = p.batch_ndim - 1; d >= 0; --d) {
        if (p.batch_stride_b[d] != 0 && p.batch_shape[d] != 1) return false;
        if (p.batch_shape[d] != 1 && p.batch_stride_a[d] != want) return false;
        want *= p.batch_shape[d];
    }
    p.M *= p.batch;
    p.batch = 1;
    p.batch_ndim = 0;
    return true;
}

}  // namespace

}  // namespace pyworkloads::cuda
