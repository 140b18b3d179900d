// Kernel-time comparison of norm_rows team shapes (norms_3_rows.cuh, version 3) for bf16 [16384, 4096] on the
// current GPU, with a device-to-device copy of the same bytes as the practical bandwidth ceiling.
// Not part of the package: it includes norms.cu itself to reach the kernels in its anonymous
// namespace.  benchmarks/README.md ("norms") quotes one run.
//   nvcc -std=c++17 -O3 --expt-relaxed-constexpr -gencode arch=compute_90a,code=sm_90a \
//        -Icpp -Icpp/cuda dev/cuda/norm_variants.cu -o /tmp/norm_variants && /tmp/norm_variants
#include "cuda/norms.cu"
#include <cstdio>
#include <vector>
#include <algorithm>
using namespace pyworkloads::cuda;
using bf = __nv_bfloat16;

template <class F>
float time_ms(F&& launch) {
    for (int i = 0; i < 3; ++i) launch();
    cudaDeviceSynchronize();
    std::vector<float> t;
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    for (int i = 0; i < 25; ++i) {
        cudaEventRecord(a);
        launch();
        cudaEventRecord(b);
        cudaEventSynchronize(b);
        float ms;
        cudaEventElapsedTime(&ms, a, b);
        t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) {
        printf("CUDA error %s\n", cudaGetErrorString(e));
        exit(1);
    }
    return t[t.size() / 2];
}

template <class K>
void info(const char* name, K kernel, int threads) {
    cudaFuncAttributes at;
    cudaFuncGetAttributes(&at, kernel);
    int blocks = 0;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, 0);
    printf("  %-28s regs %3d local %3zu B  blocks/SM %2d (%4d threads)", name, at.numRegs, at.localSizeBytes, blocks,
           blocks * threads);
}

int main() {
    const int64_t R = 16384, D = 4096;
    const double bytes16 = 2.0 * R * D * 2, bytes32 = 2.0 * R * D * 4;
    void *x, *y, *w, *bb;
    cudaMalloc(&x, R * D * 4);
    cudaMalloc(&y, R * D * 4);
    cudaMalloc(&w, D * 4);
    cudaMalloc(&bb, D * 4);
    cudaMemset(x, 0x3c, R * D * 4);
    cudaMemset(w, 0x3c, D * 4);
    cudaMemset(bb, 0, D * 4);
    float ms = time_ms([&] { cudaMemcpyAsync(y, x, R * D * 2, cudaMemcpyDeviceToDevice); });
    printf("memcpy D2D 128 MiB (same bytes as bf16)  %.4f ms  %.0f GB/s\n", ms, bytes16 / ms / 1e6);
    ms = time_ms([&] { cudaMemcpyAsync(y, x, R * D * 4, cudaMemcpyDeviceToDevice); });
    printf("memcpy D2D 256 MiB (same bytes as fp32)  %.4f ms  %.0f GB/s\n", ms, bytes32 / ms / 1e6);
    for (int rms = 1; rms >= 0; --rms) {
        NormProblem p;
        p.dtype = DType::BF16;
        p.x = x;
        p.y = y;
        p.w = w;
        p.b = rms ? nullptr : bb;
        p.rows = R;
        p.D = D;
        p.eps = 1e-5f;
        p.rms = rms;
        printf("%s bf16 %lldx%lld\n", rms ? "rms_norm" : "layer_norm", (long long)R, (long long)D);
#define RUN(name, kern, threads, grid)                          \
    do {                                                        \
        info(name, kern, threads);                              \
        float t = time_ms([&] { kern<<<grid, threads>>>(p); }); \
        printf("  %.4f ms  %.0f GB/s\n", t, bytes16 / t / 1e6); \
    } while (0)
        RUN("rows block 64x8", (norm_rows<bf, 8, 8, false>), 64, unsigned(R));
        RUN("rows block 128x4 (auto)", (norm_rows<bf, 8, 4, false>), 128, unsigned(R));
        RUN("rows block 256x2", (norm_rows<bf, 8, 2, false>), 256, unsigned(R));
        RUN("rows warp 32x16", (norm_rows<bf, 8, 16, true>), 256, unsigned(R / 8));
        RUN("v2 warp 256", (norm_warp<bf, 8>), 256, unsigned(R));
        p.dtype = DType::F32;
        info("fp32 rows block 128x8", norm_rows<float, 4, 8, false>, 128);
        float t = time_ms([&] { norm_rows<float, 4, 8, false><<<unsigned(R), 128>>>(p); });
        printf("  %.4f ms  %.0f GB/s\n", t, bytes32 / t / 1e6);
    }
    return 0;
}
