// The host-side interface of the CUDA kernels: plain structs describing one problem each, and
// the launchers (defined in the .cu files) that run it on the current device and stream.
//
// Everything here is ordinary C++ (no pybind11, no device code), so the bindings and the kernels
// compile separately, and every problem is fully described -- pointers, sizes, strides, dtype --
// before anything reaches the GPU.  Strides are in elements, not bytes.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace pyworkloads::cuda {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2, Bool = 3 };

inline int dtype_size(DType t) { return t == DType::F32 ? 4 : t == DType::Bool ? 1 : 2; }
inline const char* dtype_name(DType t) {
    switch (t) {
        case DType::F32: return "float32";
        case DType::F16: return "float16";
        case DType::BF16: return "bfloat16";
        case DType::Bool: return "bool";
    }
    return "?";
}

// ---- copies (copy.cu) -----------------------------------------------------------------------
constexpr int kMaxDims = 8;
struct StridedLayout {                 // a strided view to be packed into a C-contiguous buffer
    int ndim = 0;
    int64_t shape[kMaxDims] = {};
    int64_t stride[kMaxDims] = {};     // source strides, elements (negative and 0 allowed)
};
void strided_copy_device(const void* src, void* dst, int elem_size, const StridedLayout& layout, cudaStream_t stream);

// ---- matmul (matmul.cu) ---------------------------------------------------------------------
constexpr int kMaxBatchDims = 6;
struct MatmulProblem {
    DType dtype = DType::F32;          // of a, b and c (f32, f16, bf16)
    const void* a = nullptr;           // [..., M, K], unit stride along K, row stride lda
    const void* b = nullptr;           // [..., K, N], unit stride along N, row stride ldb
    void* c = nullptr;                 // [batch, M, N] C-contiguous
    int64_t batch = 1, M = 0, N = 0, K = 0, lda = 0, ldb = 0;
    int batch_ndim = 0;                // broadcast batch index: batch = prod(batch_shape)
    int64_t batch_shape[kMaxBatchDims] = {};
    int64_t batch_stride_a[kMaxBatchDims] = {};   // 0 where a is broadcast
    int64_t batch_stride_b[kMaxBatchDims] = {};
    bool a_vec = false, b_vec = false; // 16-byte aligned rows (base, lda and batch strides): cp.async ok
};
// TensorCore: WMMA 16x16x16 fragments (the readable tensor-core version); Mma: mma.sync m16n8k16 with
// ldmatrix and a multi-stage cp.async pipeline (the fast one).
enum class MatmulAlgo : int { Auto = 0, Naive = 1, Tiled = 2, TensorCore = 3, Mma = 4, Wgmma = 5, WgmmaOverlap = 6,
                              WgmmaDirect = 7, WgmmaTma = 8, WgmmaWs = 9, WgmmaWsKMajor = 10,
                              WgmmaWsMc = 11, WgmmaWsKMajorMc = 12 };
// The v5 (Hopper wgmma) family: sm_90a code on a compute-capability-9.0 device.
inline bool is_wgmma(MatmulAlgo a) { return a >= MatmulAlgo::Wgmma && a <= MatmulAlgo::WgmmaWsKMajorMc; }
// The name users pass as algo= (the bindings parse these names).
inline const char* matmul_algo_name(MatmulAlgo a) {
    constexpr const char* names[] = {"auto", "naive", "tiled", "tensorcore", "mma", "wgmma", "wgmma_overlap",
                                     "wgmma_direct", "wgmma_tma", "wgmma_ws", "wgmma_ws_kmajor", "wgmma_ws_mc",
                                     "wgmma_ws_kmajor_mc"};
    return names[int(a)];
}
// The algorithm Auto resolves to; throws std::invalid_argument for an impossible request.
MatmulAlgo matmul_resolve(const MatmulProblem& p, MatmulAlgo requested);
void matmul_device(const MatmulProblem& p, MatmulAlgo algo, cudaStream_t stream);
// v5 (wgmma) can run on the current device: compute capability 9.0, sm_90a code in this build, and
// PYWORKLOADS_NO_WGMMA unset.  Calls CUDA (needs a device).
bool wgmma_available();
// The algorithm whose kernel this thread's last matmul_device call launched (after auto and the
// fallbacks: v5 -> v4 without sm_90a code, TMA kernels -> cp.async ones for batched problems), ""
// if it launched none.
const char* matmul_last_kernel();

// ---- attention (attention.cu) ---------------------------------------------------------------
struct AttnOperand {                   // [B, H, T, D] with unit stride along D
    const void* ptr = nullptr;
    int64_t sb = 0, sh = 0, st = 0;
};
struct AttnProblem {
    DType dtype = DType::F32;          // of q, k, v, bias and out
    AttnOperand q, k, v;
    void* out = nullptr;               // [B, Hq, Tq, Dv] C-contiguous
    int64_t B = 0, Hq = 0, Hkv = 0, Tq = 0, Tk = 0, Dh = 0, Dv = 0;
    float scale = 1.f;
    bool causal = false;
    const void* bias = nullptr;        // additive, dtype as q, strides over [B, Hq, Tq, Tk] (0 = broadcast)
    int64_t bias_stride[4] = {};
    const uint8_t* mask = nullptr;     // bool (1 byte), True = attend, strides as bias
    int64_t mask_stride[4] = {};
    bool vec = false;                  // q/k/v rows 16-byte aligned and Dh, Dv multiples of 8
};
// Mma: FlashAttention-2 on mma.sync, fragments from 32-bit shared loads, register prefetch;
// MmaAsync: the same math with ldmatrix fragments and a cp.async double-buffered K/V pipeline.
enum class AttnAlgo : int { Auto = 0, Simt = 1, Mma = 2, MmaAsync = 3 };
constexpr int64_t kMaxHeadDim = 256;
AttnAlgo attention_resolve(const AttnProblem& p, AttnAlgo requested);
void attention_device(const AttnProblem& p, AttnAlgo algo, cudaStream_t stream);

// ---- norms (norms.cu) -----------------------------------------------------------------------
struct NormProblem {
    DType dtype = DType::F32;          // of x, weight, bias and y
    const void* x = nullptr;           // [rows, D] C-contiguous
    const void* w = nullptr;           // [D] or null (layer_norm only)
    const void* b = nullptr;           // [D] or null (layer_norm only)
    void* y = nullptr;                 // [rows, D] C-contiguous
    int64_t rows = 0, D = 0;
    float eps = 0.f;
    bool rms = true;                   // rms_norm, else layer_norm
};
enum class NormAlgo : int { Auto = 0, Block = 1, Warp = 2, Rows = 3 };
void norm_device(const NormProblem& p, NormAlgo algo, cudaStream_t stream);

}  // namespace pyworkloads::cuda
