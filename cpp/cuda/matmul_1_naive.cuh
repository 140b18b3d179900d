// Matmul version 1, naive: one thread per element of C, a K-long dot product read straight from
// global memory.  Every element of A is read N times and every element of B M times, all from DRAM
// (or L2): the kernel is the definition of the product, written so that a reader can check the
// index arithmetic the faster versions share -- the broadcast batch offsets, the row strides lda and
// ldb, the float32 accumulation and the one rounding to the storage type at the end.  It also
// defines what every version uses: batch_offsets() and note_kernel().
// algo="naive"; never chosen by auto (matmul.cu).
#pragma once
#include <algorithm>
#include <cstdint>

#include "device_utils.cuh"
#include "ops_cuda.h"
#include "runtime.h"

namespace pyworkloads::cuda {

namespace {

// The algorithm whose kernel the calling thread's last matmul launched ("" before any, or when the
// last call launched nothing): what auto and the fallbacks actually chose.
thread_local const char* g_last_kernel = "";
void note_kernel(const char* algo) { g_last_kernel = algo; }

__device__ __forceinline__ void batch_offsets(const MatmulProblem& p, int64_t z, int64_t& oa, int64_t& ob) {
    oa = 0;
    ob = 0;
    for (int d = p.batch_ndim - 1; d >= 0; --d) {
        const int64_t i = z % p.batch_shape[d];
        z /= p.batch_shape[d];
        oa += i * p.batch_stride_a[d];
        ob += i * p.batch_stride_b[d];
    }
}

constexpr int kNaiveTile = 16;

template <class T>
__global__ void matmul_naive(MatmulProblem p) {
    const int64_t col = int64_t(blockIdx.x) * kNaiveTile + threadIdx.x;
    const int64_t row = int64_t(blockIdx.y) * kNaiveTile + threadIdx.y;
    if (row >= p.M || col >= p.N) return;
    for (int64_t z = blockIdx.z; z < p.batch; z += gridDim.z) {
        int64_t oa, ob;
        batch_offsets(p, z, oa, ob);
        const T* A = static_cast<const T*>(p.a) + oa + row * p.lda;
        const T* B = static_cast<const T*>(p.b) + ob + col;
        float acc = 0.f;
        for (int64_t k = 0; k < p.K; ++k) acc += to_float(A[k]) * to_float(B[k * p.ldb]);
        static_cast<T*>(p.c)[(z * p.M + row) * p.N + col] = from_float<T>(acc);
    }
}

template <class T>
void launch_naive(const MatmulProblem& p, cudaStream_t stream) {
    const unsigned gz = static_cast<unsigned>(std::min<int64_t>(p.batch, 65535));
    const dim3 grid(grid_dim((p.N + kNaiveTile - 1) / kNaiveTile, INT32_MAX, "matmul N"),
                    grid_dim((p.M + kNaiveTile - 1) / kNaiveTile, 65535, "matmul M"), gz);
    matmul_naive<T><<<grid, dim3(kNaiveTile, kNaiveTile), 0, stream>>>(p);
    check_launch("matmul_naive");
    note_kernel("naive");
}

}  // namespace

}  // namespace pyworkloads::cuda
