// Norm version 1, block: the plain parallel reduction.  One 256-thread block per row; each thread
// strides over the row accumulating its partial sum, then a shared-memory tree reduction (log2(256)
// rounds, a __syncthreads each) gives the row statistic, and a final sweep writes y.  Scalar loads
// and stores.  LayerNorm takes the mean first and then the variance of the centred values (two
// passes, as the reference: no cancellation for large means).
// algo="block"; never chosen by auto: it is the reference the others are read against (ops_cuda.h).
#pragma once
#include <cstdint>

#include "device_utils.cuh"
#include "ops_cuda.h"
#include "runtime.h"

namespace pyworkloads::cuda {

namespace {

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

template <class T>
void launch_block(const NormProblem& p, cudaStream_t stream) {
    norm_block<T><<<grid_dim(p.rows, INT32_MAX, "norm rows"), kBlockThreads, 0, stream>>>(p);
    check_launch("norm_block");
}

}  // namespace

}  // namespace pyworkloads::cuda
