// Matmul version 2, tiled: shared memory and register blocking.  Over version 1 it adds reuse: a
// 256-thread block owns a 128x128 tile of C and walks K in steps of 8; each step stages A[128x8]
// (transposed, so a thread reads a column of A as a float4) and B[8x128] in shared memory, so an
// element loaded from DRAM is used 128 times, and each thread keeps an 8x8 block of C in registers
// (16 FMAs per 4 shared-memory loads).  The next K step is fetched into registers while the current
// one is multiplied (float4 loads where rows are 16-byte aligned) and shared memory is
// double-buffered, so there is one __syncthreads per step.  Plain FP32 FMAs, any dtype.
// algo="tiled"; auto for float32 (matmul.cu).
#pragma once
#include <type_traits>

#include "matmul_1_naive.cuh"

namespace pyworkloads::cuda {

namespace {

constexpr int kBM = 128, kBN = 128, kBK = 8, kThreads = 256;

template <class T>
__global__ void __launch_bounds__(kThreads, 2) matmul_tiled(MatmulProblem p) {
    // +4 floats per row of the transposed A tile: the two loader halves (k and k+4) then land in
    // different banks, and rows stay 16-byte aligned for the float4 reads.
    __shared__ __align__(16) float As[2][kBK][kBM + 4];
    __shared__ __align__(16) float Bs[2][kBK][kBN];
    const int tid = threadIdx.x;
    const int64_t m0 = int64_t(blockIdx.y) * kBM, n0 = int64_t(blockIdx.x) * kBN;
    const int ar = tid >> 1, ac = (tid & 1) * 4;      // loader: A row ar, k columns ac..ac+3
    const int br = tid >> 5, bc = (tid & 31) * 4;     // loader: B row br, columns bc..bc+3
    const int ty = tid >> 4, tx = tid & 15;           // this thread's C rows {ty*4+i, 64+ty*4+i}, cols likewise
    const int64_t ktiles = (p.K + kBK - 1) / kBK;

    for (int64_t z = blockIdx.z; z < p.batch; z += gridDim.z) {
        int64_t oa, ob;
        batch_offsets(p, z, oa, ob);
        const T* A = static_cast<const T*>(p.a) + oa;
        const T* B = static_cast<const T*>(p.b) + ob;
        float ra[4], rb[4];
        // This thread's loader rows, fixed for the whole K loop (few live 64-bit values: the
        // 8x8 accumulators need the registers).
        const T* a_src = A + (m0 + ar) * p.lda + ac;  // + k0
        const T* b_src = B + int64_t(br) * p.ldb + n0 + bc;   // + k0 * ldb
        const bool a_ok = m0 + ar < p.M;
        const int64_t b_left = p.N - (n0 + bc);       // columns of this thread's 4 inside B
        auto fetch = [&](int64_t k0) {
            const int64_t a_left = a_ok ? p.K - (k0 + ac) : 0;   // k columns inside A
            const bool b_ok = k0 + br < p.K;
            const T* a = a_src + k0;
            const T* b = b_src + k0 * p.ldb;
            if constexpr (std::is_same_v<T, float>) {  // one 16-byte load where the 4 lie inside and aligned
                if (p.a_vec && a_left >= 4) {
                    const float4 v = *reinterpret_cast<const float4*>(a);
                    ra[0] = v.x, ra[1] = v.y, ra[2] = v.z, ra[3] = v.w;
                } else {
#pragma unroll
                    for (int i = 0; i < 4; ++i) ra[i] = i < a_left ? a[i] : 0.f;
                }
                if (p.b_vec && b_ok && b_left >= 4) {
                    const float4 v = *reinterpret_cast<const float4*>(b);
                    rb[0] = v.x, rb[1] = v.y, rb[2] = v.z, rb[3] = v.w;
                } else {
#pragma unroll
                    for (int i = 0; i < 4; ++i) rb[i] = (b_ok && i < b_left) ? b[i] : 0.f;
                }
            } else {
#pragma unroll
                for (int i = 0; i < 4; ++i) ra[i] = i < a_left ? to_float(a[i]) : 0.f;
#pragma unroll
                for (int i = 0; i < 4; ++i) rb[i] = (b_ok && i < b_left) ? to_float(b[i]) : 0.f;
            }
        };
        auto stash = [&](int s) {
#pragma unroll
            for (int i = 0; i < 4; ++i) As[s][ac + i][ar] = ra[i];
            *reinterpret_cast<float4*>(&Bs[s][br][bc]) = make_float4(rb[0], rb[1], rb[2], rb[3]);
        };

        float acc[8][8];
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;

        if (ktiles > 0) {
            fetch(0);
            stash(0);
        }
        __syncthreads();
        for (int64_t t = 0; t < ktiles; ++t) {
            const int s = int(t & 1);
            if (t + 1 < ktiles) fetch((t + 1) * kBK);    // in flight while we multiply
#pragma unroll 2           // fully unrolled, the hoisted loads spill past 128 registers
            for (int k = 0; k < kBK; ++k) {
                const float4 a0 = *reinterpret_cast<const float4*>(&As[s][k][ty * 4]);
                const float4 a1 = *reinterpret_cast<const float4*>(&As[s][k][64 + ty * 4]);
                const float4 b0 = *reinterpret_cast<const float4*>(&Bs[s][k][tx * 4]);
                const float4 b1 = *reinterpret_cast<const float4*>(&Bs[s][k][64 + tx * 4]);
                const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
                const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
                for (int i = 0; i < 8; ++i)
#pragma unroll
                    for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            }
            if (t + 1 < ktiles) stash(s ^ 1);            // stage s^1 was last read before the previous sync
            __syncthreads();
        }

        T* C = static_cast<T*>(p.c) + z * p.M * p.N;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int64_t r = m0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + i - 4);
            if (r >= p.M) continue;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const int64_t c = n0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + j - 4);
                if (c < p.N) C[r * p.N + c] = from_float<T>(acc[i][j]);
            }
        }
    }
}

template <class T>
void launch_tiled(const MatmulProblem& p, cudaStream_t stream) {
    const unsigned gz = static_cast<unsigned>(std::min<int64_t>(p.batch, 65535));
    const dim3 grid(grid_dim((p.N + kBN - 1) / kBN, INT32_MAX, "matmul N"),
                    grid_dim((p.M + kBM - 1) / kBM, 65535, "matmul M"), gz);
    matmul_tiled<T><<<grid, kThreads, 0, stream>>>(p);
    check_launch("matmul_tiled");
    note_kernel("tiled");
}

}  // namespace

}  // namespace pyworkloads::cuda
