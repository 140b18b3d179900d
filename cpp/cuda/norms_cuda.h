#pragma once
#include <cuda_runtime.h>
#include <cstdint>

namespace pyworkloads::cuda {
// Device pointers, row-major [rows, D]; w/b may be null for layer_norm.
void rms_norm_device(const float* x, const float* w, float* y, int64_t rows, int64_t D, float eps, cudaStream_t stream = 0);
void layer_norm_device(const float* x, const float* w, const float* b, float* y, int64_t rows, int64_t D, float eps,
                       cudaStream_t stream = 0);
}  // namespace pyworkloads::cuda
