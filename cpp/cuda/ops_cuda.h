// The host-side interface of the CUDA kernels: plain structs describing one problem each, and
// the launchers (defined in the .cu files) that run it on the current device and stream.
//
// Everything here is ordinary C++ (no pybind11, no device code), so the bindings and the kernels
// compile separately, and every problem is fully described -- pointers, sizes, strides, dtype --
// before anything reaches the GPU.  Strides are in elements, not bytes.
//
// ---- algo="auto": which version runs -----------------------------------------------------------
// Each op keeps every version a reader should learn from callable by name (algo=...); "auto" runs
// the fastest one that can take the problem.  Part of the choice depends only on the dtype and is
// made before any CUDA call (matmul_resolve, attention_resolve: they validate the request); the rest
// depends on the device and on alignment and is made by each op's launch() when it starts a kernel.
//
//   matmul (matmul.cu)
//     float32            2 tiled.  The tensor-core versions take 16-bit inputs only.
//     float16, bfloat16  5 wgmma_tma, where it can run: a Hopper GPU with the sm_90a code loaded
//                        (wgmma_available), A's rows 16-byte aligned, and one matrix -- or a batch
//                        that folds into one (B shared, A's batches back to back).  Otherwise, still
//                        on Hopper: 4 wgmma_direct for a batch that does not fold, 4 wgmma (B
//                        transposed first) where B's rows are not 16-byte aligned (the TMA's and
//                        cp.async's stride rule).  Off Hopper, or with A's rows unaligned: 3 mma.
//     1 naive is never chosen: it is the definition, kept for reading and as an oracle.
//     matmul_last_kernel() names the kernel that ran.
//   attention (attention.cu)
//     float16, bfloat16 with head widths <= 128: 3 mma_async, or 2 mma where q/k/v rows are not
//                        16-byte aligned or Dh, Dv are not multiples of 8 (its cp.async chunks).
//     float32, or head widths 129..256: 1 simt.
//   rms_norm, layer_norm (norms.cu)
//     3 rows where the row fits its registers and 16-byte accesses apply (kVec divides D, every
//     pointer 16-byte aligned, at most 2048 packs of 16 bytes a row: bf16/fp16 D <= 16384, fp32
//     D <= 8192); otherwise 2 warp.  1 block is never chosen: it is the plain reference.
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
// The versions, in the order matmul.cu lists them: 1 naive, 2 tiled, 3 mma (tensor cores), 4 wgmma
// (Hopper; B transposed first) and wgmma_direct (B read as it lies), 5 wgmma_tma (fed by the TMA).
enum class MatmulAlgo : int { Auto = 0, Naive = 1, Tiled = 2, Mma = 3, Wgmma = 4, WgmmaDirect = 5, WgmmaTma = 6 };
// Versions 4 and 5 (Hopper wgmma): sm_90a code on a compute-capability-9.0 device.
inline bool is_wgmma(MatmulAlgo a) { return a >= MatmulAlgo::Wgmma && a <= MatmulAlgo::WgmmaTma; }
// The name users pass as algo= (the bindings parse these names).
inline const char* matmul_algo_name(MatmulAlgo a) {
    constexpr const char* names[] = {"auto", "naive", "tiled", "mma", "wgmma", "wgmma_direct", "wgmma_tma"};
    return names[int(a)];
}
// The algorithm Auto resolves to; throws std::invalid_argument for an impossible request.
MatmulAlgo matmul_resolve(const MatmulProblem& p, MatmulAlgo requested);
void matmul_device(const MatmulProblem& p, MatmulAlgo algo, cudaStream_t stream);
// Versions 4 and 5 (wgmma) can run on the current device: compute capability 9.0, sm_90a code in
// this build, and PYWORKLOADS_NO_WGMMA unset.  Calls CUDA (needs a device).
bool wgmma_available();
// The algorithm whose kernel this thread's last matmul_device call launched (after auto and the
// fallbacks: wgmma -> mma without sm_90a code, wgmma_tma -> wgmma_direct for a batch that does not
// fold into one matrix), "" if it launched none.
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
// The versions, in the order attention.cu lists them: 1 simt (FP32 FMAs, any dtype), 2 mma
// (FlashAttention-2 on mma.sync), 3 mma_async (2's math with ldmatrix and a cp.async K/V pipeline).
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
// The versions, in the order norms.cu lists them: 1 block (scalar, a tree reduction), 2 warp
// (16-byte accesses, shuffle reductions), 3 rows (the row held in registers, read from DRAM once).
enum class NormAlgo : int { Auto = 0, Block = 1, Warp = 2, Rows = 3 };
void norm_device(const NormProblem& p, NormAlgo algo, cudaStream_t stream);

}  // namespace pyworkloads::cuda
