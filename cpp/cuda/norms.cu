// RMSNorm / LayerNorm on the GPU: one thread block per row.
//
// v1 (this file's first version, kept as the reference): each thread strides over the row,
// accumulates its partial sums, then a shared-memory tree reduction gives the row statistics;
// a second sweep writes y.  Later versions add warp-shuffle reductions and float4 loads.
#include "runtime.h"
#include "norms_cuda.h"

namespace pyworkloads::cuda {

namespace {
constexpr int kThreads = 256;

__device__ float block_sum(float v, float* shared) {
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

__global__ void rms_norm_v1(const float* x, const float* w, float* y, int64_t D, float eps) {
    __shared__ float shared[kThreads];
    const float* xr = x + blockIdx.x * D;
    float* yr = y + blockIdx.x * D;
    float ss = 0.f;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) ss += xr[j] * xr[j];
    const float inv = rsqrtf(block_sum(ss, shared) / D + eps);
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) yr[j] = xr[j] * inv * w[j];
}

__global__ void layer_norm_v1(const float* x, const float* w, const float* b, float* y, int64_t D, float eps) {
    __shared__ float shared[kThreads];
    const float* xr = x + blockIdx.x * D;
    float* yr = y + blockIdx.x * D;
    float s = 0.f;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) s += xr[j];
    const float mu = block_sum(s, shared) / D;
    float v = 0.f;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) v += (xr[j] - mu) * (xr[j] - mu);
    const float inv = rsqrtf(block_sum(v, shared) / D + eps);
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
        yr[j] = (xr[j] - mu) * inv * (w ? w[j] : 1.f) + (b ? b[j] : 0.f);
}
}  // namespace

void rms_norm_device(const float* x, const float* w, float* y, int64_t rows, int64_t D, float eps, cudaStream_t stream) {
    if (rows == 0 || D == 0) return;
    rms_norm_v1<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, w, y, D, eps);
    check(cudaGetLastError(), "rms_norm kernel launch");
}

void layer_norm_device(const float* x, const float* w, const float* b, float* y, int64_t rows, int64_t D, float eps,
                       cudaStream_t stream) {
    if (rows == 0 || D == 0) return;
    layer_norm_v1<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, w, b, y, D, eps);
    check(cudaGetLastError(), "layer_norm kernel launch");
}

}  // namespace pyworkloads::cuda
