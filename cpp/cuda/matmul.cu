// Batched matrix multiply on the GPU: C[z] = A[z] @ B[z], np.matmul semantics (broadcast batch).
//
// Every version reads A [M, K] and B [K, N] through a row stride (lda, ldb) with unit column
// stride, finds the batch offsets of grid slice z from the broadcast batch shape, accumulates in
// float32 and writes C [batch, M, N] contiguous in the input dtype.  The versions, one file each,
// each opening with what it adds over the one before:
//
//   matmul_1_naive.cuh      1. naive         one thread per element of C, from global memory
//   matmul_2_tiled.cuh      2. tiled         shared-memory tiles and an 8x8 register block a thread
//   matmul_3_mma.cuh        3. mma           tensor cores: mma.sync, ldmatrix and a cp.async ring
//   matmul_4_wgmma.cuh      4. wgmma         Hopper's warpgroup MMA from swizzled shared memory
//                              wgmma_direct  (B read as it lies instead of transposed first)
//   matmul_5_wgmma_tma.cuh  5. wgmma_tma     version 4 fed by the Tensor Memory Accelerator
//
// This file is the dispatch: which kernel runs for each algo= and where each falls back.  What
// auto picks, for matmul, attention and norms, is explained in one place: ops_cuda.h.
#include <cstdlib>
#include <string>

#include "matmul_5_wgmma_tma.cuh"

namespace pyworkloads::cuda {

// Hopper (compute capability 9.0) with the sm_90a code loaded, unless PYWORKLOADS_NO_WGMMA is set
// (a switch for comparing against version 3 and for ruling 4 and 5 out when something looks wrong).
bool wgmma_available() {
    static int cached[64] = {};                        // 0 unknown, 1 yes, 2 no
    int dev = 0;
    check(cudaGetDevice(&dev), "cudaGetDevice");
    if (dev < 0 || dev >= 64) return false;
    if (!cached[dev]) {
        int major = 0, minor = 0, compiled = 0;
        check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "compute capability");
        check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev), "compute capability");
        const char* off = std::getenv("PYWORKLOADS_NO_WGMMA");
        if (major == 9 && minor == 0 && !(off && *off && std::string(off) != "0"))
            check(cudaMemcpyFromSymbol(&compiled, g_wgmma_compiled, sizeof(int)), "reading g_wgmma_compiled");
        cached[dev] = compiled == 1 ? 1 : 2;
    }
    return cached[dev] == 1;
}

namespace {

// The fallbacks, in order: the TMA kernel (5) where the problem is one matrix, or a batch that
// folds into one, with 16-byte aligned rows; else version 4 (direct where B's rows are 16-byte
// aligned, else through the transposed copy); without wgmma (no sm_90a code for the device, A's
// rows not 16-byte aligned, too little shared memory) version 3.  The results are the same.
template <class T>
void launch(const MatmulProblem& p, MatmulAlgo algo, cudaStream_t stream) {
    if (algo == MatmulAlgo::Naive) return launch_naive<T>(p, stream);
    if (algo == MatmulAlgo::Tiled) return launch_tiled<T>(p, stream);
    if constexpr (!std::is_same_v<T, float>) {
        if (is_wgmma(algo)) {
            if (p.a_vec && wgmma_available() && max_optin_smem() >= int(kWgSmemBytes)) {
                if (algo == MatmulAlgo::WgmmaTma) {
                    MatmulProblem q = p;               // one matrix where the batch folds into M
                    if (fold_batch(q) && tma_fits(q)) return launch_wgmma_tma<T>(q, stream);
                }
                if (algo == MatmulAlgo::Wgmma || !p.b_vec) return launch_wgmma<T, false>(p, stream);
                return launch_wgmma<T, true>(p, stream);   // direct B needs 16-byte aligned B rows too
            }
            algo = MatmulAlgo::Mma;
        }
        if (algo == MatmulAlgo::Mma) {                 // 4 stages where the device allows 106 KiB (sm_80, sm_90)
            if (max_optin_smem() >= int(mma_smem_bytes(4))) return launch_mma<T, 4>(p, stream);
            return launch_mma<T, 3>(p, stream);
        }
    }
    throw std::invalid_argument("matmul: the tensor-core kernels need float16 or bfloat16 inputs");
}

}  // namespace

MatmulAlgo matmul_resolve(const MatmulProblem& p, MatmulAlgo requested) {
    if (p.dtype != DType::F32 && p.dtype != DType::F16 && p.dtype != DType::BF16)
        throw std::invalid_argument(std::string("matmul: unsupported dtype ") + dtype_name(p.dtype));
    // Auto is resolved by dtype only: the device and the alignment are known at launch, where
    // launch() takes the fallbacks, and this function must not touch CUDA (it validates before any
    // call).
    if (requested == MatmulAlgo::Auto) return p.dtype == DType::F32 ? MatmulAlgo::Tiled : MatmulAlgo::WgmmaTma;
    const bool tensor_cores = requested == MatmulAlgo::Mma || is_wgmma(requested);
    if (tensor_cores && p.dtype == DType::F32)
        throw std::invalid_argument(std::string("matmul: algo='") + matmul_algo_name(requested) +
                                    "' needs float16 or bfloat16 inputs, got float32");
    return requested;
}

const char* matmul_last_kernel() { return g_last_kernel; }

void matmul_device(const MatmulProblem& p, MatmulAlgo algo, cudaStream_t stream) {
    g_last_kernel = "";
    algo = matmul_resolve(p, algo);
    if (p.batch == 0 || p.M == 0 || p.N == 0) return;
    switch (p.dtype) {
        case DType::F32: return launch<float>(p, algo, stream);
        case DType::F16: return launch<__half>(p, algo, stream);
        case DType::BF16: return launch<__nv_bfloat16>(p, algo, stream);
        default: throw std::invalid_argument("matmul: unsupported dtype");
    }
}

}  // namespace pyworkloads::cuda
